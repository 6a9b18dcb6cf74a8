//! Server-side printing: `meta.k8s.io/v1` Tables, which kubectl asks for (`Accept: ...;as=Table`) whenever it
//! prints human-readable output.
//!
//! kubectl 1.32 has no printers of its own for built-in kinds; without a Table it shows only NAME and AGE. The
//! columns here follow the API server's printers for the kinds people look at in the lab (Services, with
//! EXTERNAL-IP, Events, Nodes, Namespaces); every other kind gets NAME and AGE, like a CRD without printer columns.

use serde_json::{Value, json};

/// What each row carries besides its cells, from the `includeObject` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn from_query(value: Option<&str>) -> Self {
        match value {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an `Accept` header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Kubernetes' `duration.HumanDuration`, as kubectl shows ages.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => match s % 60 {
            0 => format!("{m}m"),
            r => format!("{m}m{r}s"),
        },
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if h < 192 => match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        },
        _ if d < 730 => format!("{d}d"),
        _ if d < 2920 => match d % 365 {
            0 => format!("{}y", d / 365),
            r => format!("{}y{r}d", d / 365),
        },
        _ => format!("{}y", d / 365),
    }
}

fn age_of(timestamp: Option<&str>) -> String {
    let Some(t) = timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "<unknown>".into();
    };
    human_duration(jiff::Timestamp::now().as_second() - t.as_second())
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

fn column(name: &str, kind: &str, priority: u8, description: &str) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority})
}

fn none_if_empty(parts: Vec<String>) -> String {
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn service_cells(svc: &Value) -> Vec<Value> {
    let spec = svc.get("spec").cloned().unwrap_or_default();
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let cluster_ip = match spec.get("clusterIP").and_then(Value::as_str) {
        Some(ip) if !ip.is_empty() => ip.to_owned(),
        _ => "<none>".into(),
    };
    let external: Vec<String> = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let ingress: Vec<String> = svc
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i.get("ip")
                .or_else(|| i.get("hostname"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let external_ip = match kind {
        "LoadBalancer" if ingress.is_empty() && external.is_empty() => "<pending>".into(),
        "LoadBalancer" => [ingress, external].concat().join(","),
        "ExternalName" => spec
            .get("externalName")
            .and_then(Value::as_str)
            .unwrap_or("<none>")
            .to_owned(),
        _ => none_if_empty(external),
    };
    let ports: Vec<String> = spec
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let port = p.get("port").map(Value::to_string).unwrap_or_default();
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) if np != 0 => format!("{port}:{np}/{proto}"),
                _ => format!("{port}/{proto}"),
            }
        })
        .collect();
    let mut selector: Vec<String> = spec
        .get("selector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    selector.sort();
    vec![
        json!(str_at(svc, "/metadata/name")),
        json!(kind),
        json!(cluster_ip),
        json!(external_ip),
        json!(none_if_empty(ports)),
        json!(age_of(str_at(svc, "/metadata/creationTimestamp"))),
        json!(none_if_empty(selector)),
    ]
}

fn event_cells(ev: &Value) -> Vec<Value> {
    let last = str_at(ev, "/lastTimestamp")
        .or_else(|| str_at(ev, "/eventTime"))
        .or_else(|| str_at(ev, "/firstTimestamp"))
        .or_else(|| str_at(ev, "/metadata/creationTimestamp"));
    let object = format!(
        "{}/{}",
        str_at(ev, "/involvedObject/kind")
            .unwrap_or_default()
            .to_lowercase(),
        str_at(ev, "/involvedObject/name").unwrap_or_default()
    );
    vec![
        json!(age_of(last)),
        json!(str_at(ev, "/type").unwrap_or_default()),
        json!(str_at(ev, "/reason").unwrap_or_default()),
        json!(object),
        json!(str_at(ev, "/message").unwrap_or_default()),
    ]
}

fn node_cells(node: &Value) -> Vec<Value> {
    let ready = node
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
        .and_then(|c| c.get("status").and_then(Value::as_str));
    let status = match ready {
        Some("True") => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    };
    let mut roles: Vec<String> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_owned)
        })
        .collect();
    roles.sort();
    vec![
        json!(str_at(node, "/metadata/name")),
        json!(status),
        json!(none_if_empty(roles)),
        json!(age_of(str_at(node, "/metadata/creationTimestamp"))),
        json!(str_at(node, "/status/nodeInfo/kubeletVersion").unwrap_or_default()),
    ]
}

/// Fills the cells of one row.
type RowCells = fn(&Value) -> Vec<Value>;

/// Columns and the function that fills a row, per kind.
fn printer(group: &str, resource: &str) -> (Vec<Value>, RowCells) {
    let name = column(
        "Name",
        "string",
        0,
        "Name must be unique within a namespace.",
    );
    let age = column("Age", "string", 0, "Time since the object was created.");
    match (group, resource) {
        ("", "services") => (
            vec![
                name,
                column("Type", "string", 0, "The type of the service."),
                column("Cluster-IP", "string", 0, "The cluster IP of the service."),
                column(
                    "External-IP",
                    "string",
                    0,
                    "The external IPs of the service.",
                ),
                column("Port(s)", "string", 0, "The ports of the service."),
                age,
                column("Selector", "string", 1, "The selector of the service."),
            ],
            service_cells,
        ),
        ("", "events") => (
            vec![
                column(
                    "Last Seen",
                    "string",
                    0,
                    "Time since the event was last seen.",
                ),
                column("Type", "string", 0, "The type of the event."),
                column("Reason", "string", 0, "The reason of the event."),
                column("Object", "string", 0, "The object the event is about."),
                column("Message", "string", 0, "The message of the event."),
            ],
            event_cells,
        ),
        ("", "nodes") => (
            vec![
                name,
                column("Status", "string", 0, "The readiness of the node."),
                column("Roles", "string", 0, "The roles of the node."),
                age,
                column("Version", "string", 0, "The kubelet version of the node."),
            ],
            node_cells,
        ),
        ("", "namespaces") => (
            vec![
                name,
                column("Status", "string", 0, "The phase of the namespace."),
                age,
            ],
            |ns| {
                vec![
                    json!(str_at(ns, "/metadata/name")),
                    json!(str_at(ns, "/status/phase").unwrap_or("Active")),
                    json!(age_of(str_at(ns, "/metadata/creationTimestamp"))),
                ]
            },
        ),
        _ => (vec![name, age], |obj| {
            vec![
                json!(str_at(obj, "/metadata/name")),
                json!(age_of(str_at(obj, "/metadata/creationTimestamp"))),
            ]
        }),
    }
}

/// Builds a Table of `objects` (already carrying their apiVersion and kind).
pub fn table(
    group: &str,
    resource: &str,
    objects: &[Value],
    resource_version: u64,
    include: IncludeObject,
) -> Value {
    let (columns, cells) = printer(group, resource);
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(obj)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Object => row["object"] = obj.clone(),
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or_default(),
                    });
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 3600, "3d1h"),
            (30 * 86_400, "30d"),
            (-5, "<invalid>"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn service_row_shows_ingress_ports_and_selector() {
        let svc = json!({
            "metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIP": "198.51.100.7", "selector": {"app": "web"},
                     "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
        });
        let cells = service_cells(&svc);
        assert_eq!(cells[1], "LoadBalancer");
        assert_eq!(cells[2], "198.51.100.7");
        assert_eq!(cells[3], "192.0.2.10");
        assert_eq!(cells[4], "80:30080/TCP,53/UDP");
        assert_eq!(cells[6], "app=web");
        let mut pending = svc.clone();
        pending["status"] = json!({});
        assert_eq!(service_cells(&pending)[3], "<pending>");
    }

    #[test]
    fn table_rows_carry_metadata_by_default() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        let t = table(
            "",
            "configmaps",
            std::slice::from_ref(&obj),
            7,
            IncludeObject::Metadata,
        );
        assert_eq!(t["rows"][0]["cells"][0], "x");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["metadata"]["resourceVersion"], "7");
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
