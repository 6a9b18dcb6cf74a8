//! `ironlb status`: lists every Service and Node and prints [`crate::k8s::report::StatusReport`], as a table or JSON.
//! Reading the annotations the agents write is the report's business; this module only fetches and prints.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams};

use crate::k8s::report::StatusReport;

#[derive(clap::Args, Clone, Debug)]
pub struct StatusArgs {
    /// A kubeconfig; without it, the usual lookup (KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `table` or `json`.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
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
