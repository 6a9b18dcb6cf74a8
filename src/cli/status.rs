//! `ironlb status`: lists every Service and Node and prints [`crate::k8s::report::StatusReport`], as a table or JSON;
//! with `--watch`, then one line per change as it happens. Reading the annotations the agents write is the report's
//! business, and so is telling what changed; this module only fetches and prints.

use std::path::PathBuf;

use std::future::Future;
use std::io::Write;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};

use crate::k8s::index::ObjectIndex;
use crate::k8s::report::{self, StatusReport};

#[derive(clap::Args, Clone, Debug)]
pub struct StatusArgs {
    /// A kubeconfig; without it, the usual lookup (KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `table` or `json`.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    /// Print the report, then one line per change as it happens, like `kubectl get -w`: a VIP added, removed or
    /// renumbered, its owner moved (with the cause), a BGP session's state. With `-o json`, one JSON object per line.
    /// Runs until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] crate::k8s::client::Error),
    #[error("listing Services")]
    List(#[source] kube::Error),
    #[error("listing Nodes")]
    ListNodes(#[source] kube::Error),
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
    #[error("writing to stdout")]
    Write(#[from] std::io::Error),
}

/// Reads every Service and Node and returns the report as text.
pub async fn run(args: &StatusArgs) -> Result<String, Error> {
    let client = crate::k8s::client::client(args.kubeconfig.as_deref()).await?;
    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::List)?
        .items;
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(Error::ListNodes)?
        .items;
    let report = StatusReport::new(&services, &nodes);
    Ok(if args.output == "json" {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.render_table()
    })
}

/// `ironlb status --watch`: the report once both watches have listed everything, then each change, each line
/// stamped with the UTC time it was seen, until `stop` resolves. A watch that fails says so on stderr and is retried
/// with backoff; the report holds still meanwhile. Each change rebuilds the report from both indexes (a copy of every
/// Service): cheap for a person watching, not meant for 10^4 Services churning.
pub async fn watch(
    args: &StatusArgs,
    out: &mut impl Write,
    stop: impl Future<Output = ()>,
) -> Result<(), Error> {
    let clients = crate::k8s::client::Clients::new(args.kubeconfig.as_deref()).await?;
    let services = watcher(
        Api::<Service>::all(clients.watch.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map_ok(|event| Watched::Service(Box::new(event)));
    let nodes = watcher(Api::<Node>::all(clients.watch), watcher::Config::default())
        .default_backoff()
        .map_ok(|event| Watched::Node(Box::new(event)));
    let mut events = std::pin::pin!(futures::stream::select(services, nodes));
    let (mut service_index, mut node_index) = (
        ObjectIndex::<Service>::default(),
        ObjectIndex::<Node>::default(),
    );
    let mut shown: Option<StatusReport> = None;
    let json = args.output == "json";
    let mut stop = std::pin::pin!(stop);
    loop {
        let event = tokio::select! {
            () = &mut stop => return Ok(()),
            event = events.next() => event,
        };
        let changed = match event {
            None => return Ok(()),
            Some(Err(error)) => {
                eprintln!(
                    "ironlb status: watch failed, retrying: {}",
                    crate::error_chain(&error)
                );
                continue;
            }
            Some(Ok(Watched::Service(event))) => service_index.handle(*event),
            Some(Ok(Watched::Node(event))) => node_index.handle(*event),
        };
        if !(service_index.is_synced() && node_index.is_synced()) || (shown.is_some() && !changed) {
            continue;
        }
        let services: Vec<Service> = service_index.values().cloned().collect();
        let nodes: Vec<Node> = node_index.values().cloned().collect();
        let now = StatusReport::new(&services, &nodes);
        match &shown {
            None if json => writeln!(out, "{}", serde_json::to_string(&now)?)?,
            None => write!(out, "{}", now.render_table())?,
            Some(before) => {
                let at = Timestamp::now().strftime("%H:%M:%S%.3fZ").to_string();
                for change in report::changes(before, &now) {
                    if json {
                        let mut value = serde_json::to_value(&change)?;
                        value["at"] = Timestamp::now().to_string().into();
                        writeln!(out, "{value}")?;
                    } else {
                        writeln!(out, "{at}  {change}")?;
                    }
                }
            }
        }
        out.flush()?;
        shown = Some(now);
    }
}

enum Watched {
    Service(Box<watcher::Event<Service>>),
    Node(Box<watcher::Event<Node>>),
}
