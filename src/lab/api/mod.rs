//! The lab's Kubernetes API server: in-process, plain HTTP, in-memory, for the lab and the tests only.
//!
//! The real kube-apiserver and etcd (built from their Go modules for the real-API tiers) take seconds to start; this
//! server starts in milliseconds, so `ironlb lab` and most test tiers run one per lab. It implements just enough of
//! the Kubernetes REST API (discovery, CRUD, patch, watch, the `status` subresource, selectors, Tables, JSON and
//! the protobuf kubectl's typed commands send) for the IronLB agent (kube-rs) and a real `kubectl` to work against
//! it, and gives Services what kube-apiserver fills in (ClusterIPs, NodePorts, defaults). tests/api_conformance.rs
//! compares it with the real server. It has no authentication, no admission, no CRD schema validation (built-in
//! objects must decode as their kind), no garbage collection and no finalizers: never expose it beyond loopback or
//! a lab network namespace, and never use it in production.
//!
//! Submodules: [`store`] holds objects and change history, [`server`] speaks HTTP, [`patch`] applies the PATCH
//! flavours, [`protobuf`] decodes what kubectl's typed commands send, [`validate`] refuses what does not decode as
//! its kind, [`service_network`] fills in ClusterIPs and NodePorts, [`selector`] parses label and field selectors,
//! [`table`] prints for kubectl, [`discovery`], [`openapi`] and [`resources`] describe what is served.

pub mod discovery;
pub mod openapi;
pub mod patch;
pub mod protobuf;
pub mod resources;
pub mod selector;
pub mod server;
pub mod service_network;
pub mod store;
pub mod table;
pub mod validate;

use service_network::ServiceNetwork;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no listener to serve on")]
    NoListener,
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(#[source] std::io::Error),
    #[error("lab API server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("cannot write kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode kubeconfig: {0}")]
    KubeconfigEncode(#[source] serde_yaml::Error),
    #[error("cannot wait for Ctrl-C: {0}")]
    Signal(#[source] std::io::Error),
    #[error("lab API server task failed: {0}")]
    Join(#[source] tokio::task::JoinError),
    #[error(transparent)]
    ServiceCidrs(#[from] service_network::CidrError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Flags of `ironlb lab api`.
#[derive(Clone, Debug, clap::Args)]
pub struct ApiArgs {
    /// Address to serve the lab Kubernetes API on (plain HTTP, no authentication: keep it on loopback).
    #[arg(long, env = "IRONLB_LAB_API_LISTEN", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Where to write a kubeconfig pointing at the server, for kubectl and the agents.
    #[arg(
        long,
        env = "IRONLB_LAB_KUBECONFIG",
        default_value = "ironlb-lab.kubeconfig"
    )]
    pub kubeconfig: PathBuf,
    /// Service ClusterIP ranges, as kube-apiserver's `--service-cluster-ip-range`: one CIDR, or one per family
    /// separated by a comma, the primary family first.
    #[arg(long, env = "IRONLB_LAB_SERVICE_CIDRS", default_value = service_network::DEFAULT_SERVICE_CIDRS)]
    pub service_cidrs: String,
}

impl ApiArgs {
    /// Serves until Ctrl-C; see [`run`].
    pub async fn run(self) -> Result<()> {
        let network = ServiceNetwork::parse(&self.service_cidrs)?;
        run(self.listen, self.kubeconfig, network).await
    }
}

/// Serves the lab API on `listener` until `shutdown` completes. Open watches end at shutdown, so this returns
/// promptly.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    network: ServiceNetwork,
) -> Result<()> {
    serve_logged(vec![listener], shutdown, Arc::default(), network).await
}

/// [`serve`] on several listeners at once, all over the same objects, recording every request into `requests`,
/// with Services given ClusterIPs and NodePorts from `network`.
/// The lab listens both inside its switch namespace, for the agents, and on the host's loopback, for the user.
pub async fn serve_logged(
    listeners: Vec<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    requests: Arc<server::RequestLog>,
    network: ServiceNetwork,
) -> Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut lab = server::ApiState::with_service_network(stop_rx.clone(), network);
    lab.requests = requests;
    let lab = Arc::new(lab);
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let lab = lab.clone();
        async move { server::handle(lab, req).await }
    });
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let addr = listener.local_addr().map_err(Error::LocalAddr)?;
        tracing::info!(%addr, "lab API server listening");
        let mut stopped = stop_rx.clone();
        servers.spawn(
            axum::serve(listener, app.clone())
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .into_future(),
        );
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    while let Some(joined) = servers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(Error::Serve(e)),
            Err(e) => result = Err(Error::Join(e)),
        }
    }
    result
}

/// A lab API server running in a background task; it stops when dropped.
pub struct ApiServer {
    addr: SocketAddr,
    requests: Arc<server::RequestLog>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<()>>>,
}

impl ApiServer {
    /// Binds `addr` (use port 0 for a free port) and starts serving.
    pub async fn start(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Self::from_listener(listener)
    }

    /// Starts serving on an already bound listener.
    pub fn from_listener(listener: TcpListener) -> Result<Self> {
        Self::from_listeners(vec![listener])
    }

    /// Starts serving on several bound listeners over one set of objects; [`ApiServer::addr`] is the first's.
    pub fn from_listeners(listeners: Vec<TcpListener>) -> Result<Self> {
        Self::from_listeners_with(listeners, ServiceNetwork::default())
    }

    /// [`ApiServer::from_listeners`] with Services given ClusterIPs and NodePorts from `network`.
    pub fn from_listeners_with(
        listeners: Vec<TcpListener>,
        network: ServiceNetwork,
    ) -> Result<Self> {
        let first = listeners.first().ok_or(Error::NoListener)?;
        let addr = first.local_addr().map_err(Error::LocalAddr)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let requests = Arc::<server::RequestLog>::default();
        let task = tokio::spawn(serve_logged(
            listeners,
            async move {
                let _ = stopped.await;
            },
            requests.clone(),
            network,
        ));
        Ok(ApiServer {
            addr,
            requests,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The requests served so far (at most [`server::RequestLog::CAPACITY`], the most recent), oldest first.
    pub fn requests(&self) -> Vec<server::RequestRecord> {
        self.requests.snapshot()
    }

    /// `http://ADDR`, the server URL for a kubeconfig.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(Error::Join)?,
            None => Ok(()),
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Writes a kubeconfig with one cluster, context and user named `ironlb-lab`: no credentials, plain HTTP.
/// kubectl and kube-rs both accept it.
pub fn write_kubeconfig(path: &Path, server_url: &str) -> Result<()> {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "ironlb-lab", "cluster": {"server": server_url}}],
        "users": [{"name": "ironlb-lab", "user": {}}],
        "contexts": [{"name": "ironlb-lab", "context": {"cluster": "ironlb-lab", "user": "ironlb-lab", "namespace": "default"}}],
        "current-context": "ironlb-lab",
        "preferences": {},
    });
    let text = serde_yaml::to_string(&config).map_err(Error::KubeconfigEncode)?;
    std::fs::write(path, text).map_err(|source| Error::Kubeconfig {
        path: path.to_owned(),
        source,
    })
}

/// Serves on `listen` and writes a kubeconfig for it to `kubeconfig`, until Ctrl-C. Backs `ironlb lab api`.
pub async fn run(listen: SocketAddr, kubeconfig: PathBuf, network: ServiceNetwork) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(Error::LocalAddr)?;
    write_kubeconfig(&kubeconfig, &format!("http://{addr}"))?;
    tracing::info!(%addr, kubeconfig = %kubeconfig.display(), "lab API server ready; Ctrl-C stops it");
    let (tx, rx) = oneshot::channel::<std::io::Result<()>>();
    let server = serve(
        listener,
        async move {
            let _ = tx.send(tokio::signal::ctrl_c().await);
        },
        network,
    );
    server.await?;
    match rx.await {
        Ok(Err(e)) => Err(Error::Signal(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_names_the_server() {
        let dir = std::env::temp_dir().join(format!("ironlb-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config");
        write_kubeconfig(&path, "http://127.0.0.1:1234").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:1234"
        );
        assert_eq!(parsed["current-context"], "ironlb-lab");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
