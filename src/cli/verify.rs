//! `ironlb verify`: reads the cluster, this network namespace's IPVS table and the addresses on its VIP link, and
//! prints them side by side with the drift between them. What the data plane should hold and how two states
//! differ are decided in [`crate::ipvs::verify`] (kube-proxy's data plane) and [`crate::ipvs::direct`] (IronLB's);
//! this module reads and changes nothing else.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;

use crate::ipvs::verify::{report, restrict, service_addr, wanted};
use crate::ipvs::{IpvsSocket, Mode, Programmer};
use crate::netif::bind::host_prefix;

/// `ironlb verify`.
#[derive(Clone, Debug, clap::Args)]
pub struct VerifyArgs {
    /// Kubeconfig to read the cluster from (default: in-cluster config, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The node whose network namespace this is; decides the endpoints of `externalTrafficPolicy: Local` Services.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The link kube-proxy binds LoadBalancer IPs on.
    #[arg(long, env = "IRONLB_VIP_LINK", default_value = "kube-ipvs0")]
    pub vip_link: String,
    /// kube-proxy's IPVS scheduler (`ipvs.scheduler`; kube-proxy's default is rr).
    #[arg(long, env = "IRONLB_IPVS_SCHEDULER", default_value = "rr")]
    pub scheduler: String,
    /// The data plane to check: kube-proxy's (`integrated`), or IronLB's own (`direct`: ipMode Proxy VIPs, their
    /// annotations, bound on ironlb0 unless --vip-link says otherwise).
    #[arg(long, env = "IRONLB_DATAPLANE", value_enum, default_value_t = Mode::Integrated)]
    pub dataplane: Mode,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] crate::k8s::client::Error),
    #[error("listing {what}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("reading IPVS (is the ip_vs module loaded?)")]
    Ipvs(#[source] crate::ipvs::programmer::Error),
    #[error("opening the IPVS generic-netlink socket (is the ip_vs module loaded?)")]
    IpvsSocket(#[source] crate::ipvs::socket::Error),
    #[error("opening an rtnetlink socket")]
    Netlink(#[source] std::io::Error),
    #[error("listing links and addresses")]
    Links(#[source] crate::netif::links::Error),
    #[error("writing the report")]
    Write(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads the cluster and this namespace's IPVS table and VIP link, writes the report to `out`, and returns whether
/// they agree.
pub async fn run(args: &VerifyArgs, out: &mut dyn Write) -> Result<bool> {
    let client = crate::k8s::client::client(args.kubeconfig.as_deref()).await?;
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            what: "Services",
            source,
        })?
        .items;
    let slices = Api::<EndpointSlice>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::List {
            what: "EndpointSlices",
            source,
        })?
        .items;
    let vip_link = args.dataplane.vip_link(&args.vip_link);
    let wanted = match args.dataplane {
        // Every Proxy-mode ingress IP: the pools are not read here.
        Mode::Direct => {
            crate::ipvs::direct::wanted(&services, &slices, &args.node_name, &|_| true).plane
        }
        Mode::Integrated => wanted(&services, &slices, &args.node_name, &args.scheduler),
    };
    let vips = wanted.vips();

    let (connection, handle, _) = rtnetlink::new_connection().map_err(Error::Netlink)?;
    let conn = tokio::spawn(connection);
    let links = crate::netif::links::list_interfaces(&handle)
        .await
        .map_err(Error::Links);
    conn.abort();
    let bound: BTreeSet<IpAddr> = links?
        .into_iter()
        .filter(|l| l.name == vip_link)
        .flat_map(|l| l.addresses)
        .filter(|net| net.prefix_len() == host_prefix(&net.addr()))
        .map(|net| net.addr())
        .collect();

    let scope_vips = vips.clone();
    let mut programmer = Programmer::new(
        IpvsSocket::connect().map_err(Error::IpvsSocket)?,
        Box::new(move |id| service_addr(id).is_some_and(|a| scope_vips.contains(&a))),
        Duration::ZERO,
    );
    let table = programmer.actual().map_err(Error::Ipvs)?;
    let actual = restrict(&table, &bound, &vips);

    let (text, drift) = report(&wanted, &actual, vip_link);
    out.write_all(text.as_bytes()).map_err(Error::Write)?;
    Ok(drift.is_empty())
}
