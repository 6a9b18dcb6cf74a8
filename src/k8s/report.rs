//! `ironlb status`: where every VIP is announced, read back from the annotations the agents write.
//!
//! The owner of a VIP writes `ironlb.io/announced-by`, `ironlb.io/announced-on` and `ironlb.io/announced-since` on
//! its Service when it takes the VIP over, so this report needs nothing but read access to Services: it shows what
//! the cluster records, the same thing `kubectl get svc -o yaml` would.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use serde::Serialize;

use super::status::{POOL_ANNOTATION, ingress_ips};

use crate::plan::visibility::{
    ANNOUNCED_BY_ANNOTATION as ANNOUNCED_BY, ANNOUNCED_ON_ANNOTATION as ANNOUNCED_ON,
    ANNOUNCED_SINCE_ANNOTATION as ANNOUNCED_SINCE,
};

#[derive(clap::Args, Clone, Debug)]
pub struct StatusArgs {
    /// A kubeconfig; without it, the usual lookup (KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// `table` or `json`.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusRow {
    pub service: String,
    pub vips: Vec<String>,
    pub pool: Option<String>,
    pub owners: Vec<String>,
    pub interfaces: Vec<String>,
    pub since: Option<String>,
}

fn list(value: Option<&String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// One row per Service holding an ingress IP, in namespace/name order.
pub fn rows(services: &[Service]) -> Vec<StatusRow> {
    let mut rows: Vec<StatusRow> = services
        .iter()
        .filter_map(|svc| {
            let ips = ingress_ips(svc);
            if ips.is_empty() {
                return None;
            }
            let annotations = svc.metadata.annotations.clone().unwrap_or_default();
            Some(StatusRow {
                service: format!(
                    "{}/{}",
                    svc.metadata.namespace.as_deref().unwrap_or("default"),
                    svc.metadata.name.as_deref().unwrap_or("")
                ),
                vips: ips.iter().map(ToString::to_string).collect(),
                pool: annotations.get(POOL_ANNOTATION).cloned(),
                owners: list(annotations.get(ANNOUNCED_BY)),
                interfaces: list(annotations.get(ANNOUNCED_ON)),
                since: annotations.get(ANNOUNCED_SINCE).cloned(),
            })
        })
        .collect();
    rows.sort_by(|a, b| a.service.cmp(&b.service));
    rows
}

/// The rows as an aligned table.
pub fn render_table(rows: &[StatusRow]) -> String {
    let dash = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    let mut lines = vec![
        ["SERVICE", "VIP", "POOL", "OWNER", "INTERFACE", "SINCE"]
            .map(str::to_string)
            .to_vec(),
    ];
    for r in rows {
        lines.push(vec![
            r.service.clone(),
            r.vips.join(","),
            r.pool.clone().unwrap_or_else(|| "-".into()),
            if r.owners.is_empty() {
                "(not announced)".into()
            } else {
                r.owners.join(",")
            },
            dash(&r.interfaces),
            r.since.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] crate::agent::Error),
    #[error("listing Services")]
    List(#[source] kube::Error),
    #[error("encoding JSON")]
    Json(#[from] serde_json::Error),
}

/// Reads every Service and returns the report as text.
pub async fn run(args: &StatusArgs) -> Result<String, Error> {
    let client = crate::agent::client(args.kubeconfig.as_deref()).await?;
    let services = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(Error::List)?
        .items;
    let rows = rows(&services);
    Ok(if args.output == "json" {
        serde_json::to_string_pretty(&rows)? + "\n"
    } else {
        render_table(&rows)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, ips: &[&str], annotations: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "status": {"loadBalancer": {"ingress": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}}
        }))
        .unwrap()
    }

    #[test]
    fn rows_show_owner_interface_and_since_from_annotations() {
        let services = vec![
            svc(
                "web",
                &["192.0.2.10", "2001:db8::10"],
                json!({POOL_ANNOTATION: "public", ANNOUNCED_BY: "node-2", ANNOUNCED_ON: "eth0",
                       ANNOUNCED_SINCE: "2026-11-22T03:00:00Z"}),
            ),
            svc("idle", &["192.0.2.11"], json!({POOL_ANNOTATION: "public"})),
            svc("pending", &[], json!({})),
        ];
        let rows = rows(&services);
        assert_eq!(rows.len(), 2, "a Service without an IP has no row");
        assert_eq!(rows[0].service, "shop/idle");
        assert!(rows[0].owners.is_empty());
        assert_eq!(rows[1].vips, vec!["192.0.2.10", "2001:db8::10"]);
        assert_eq!(rows[1].owners, vec!["node-2"]);
        assert_eq!(rows[1].interfaces, vec!["eth0"]);
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SERVICE"));
        assert!(lines[1].contains("(not announced)"));
        assert!(
            lines[2].contains("node-2") && lines[2].contains("2026-11-22T03:00:00Z"),
            "{table}"
        );
        let parsed: serde_json::Value = serde_json::to_value(&rows).unwrap();
        assert_eq!(parsed[1]["owners"][0], "node-2");
    }
}
