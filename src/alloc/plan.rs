//! The migration plan: what IronLB would assign to every Service of a cluster, computed offline.
//!
//! `ironlb migrate` feeds it the pools converted from a MetalLB configuration and the output of
//! `kubectl get svc -A -o yaml`, and exits 2 when [`moves_any`] says a VIP would move. This module owns that
//! computation and its rendering; it does no I/O and must not write anything back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;

use crate::config::{Labels, Pool};

use super::allocator::{Allocator, Ips};
use super::service::{LbRequest, ServiceKey};

/// What happens to one Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It keeps the VIPs in its status.
    Kept,
    /// It had none and gets some.
    New,
    /// It had `from` and gets other VIPs (or more of them).
    Changed { from: Vec<IpAddr> },
    /// It gets nothing, for this reason.
    Pending(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Kept => f.write_str("kept"),
            Outcome::New => f.write_str("new"),
            Outcome::Changed { from } => write!(f, "changed(from {})", Ips(from)),
            Outcome::Pending(reason) => write!(f, "pending({reason})"),
        }
    }
}

/// One LoadBalancer Service of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanRow {
    pub service: ServiceKey,
    /// The VIPs it would hold.
    pub ips: Vec<IpAddr>,
    pub pool: Option<String>,
    pub outcome: Outcome,
    /// The VIPs in its status today.
    pub previous: Vec<IpAddr>,
}

impl PlanRow {
    fn columns(&self) -> [String; 4] {
        [
            self.service.to_string(),
            if self.ips.is_empty() {
                "-".into()
            } else {
                Ips(&self.ips).to_string()
            },
            self.pool.clone().unwrap_or_else(|| "-".into()),
            self.outcome.to_string(),
        ]
    }
}

impl fmt::Display for PlanRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.columns().join("  "))
    }
}

/// The rows as a table with a header and aligned columns, one line per row.
pub fn render_table(rows: &[PlanRow]) -> String {
    let header = ["SERVICE", "IPS", "POOL", "STATUS"].map(String::from);
    let lines: Vec<[String; 4]> = std::iter::once(header)
        .chain(rows.iter().map(PlanRow::columns))
        .collect();
    let mut widths = [0; 3];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        for (i, cell) in line.iter().enumerate() {
            if i < 3 {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// Whether applying the plan would take a VIP away from a Service that holds it.
pub fn moves_any(rows: &[PlanRow]) -> bool {
    rows.iter()
        .any(|r| r.previous.iter().any(|ip| !r.ips.contains(ip)))
}

/// One Service as the planner holds it between passes: what it asks for and what its status holds.
struct Held {
    key: ServiceKey,
    /// Its place in the order of adoption and allocation, before the key.
    order: Order,
    /// What adoption reads: the Service minus a malformed IP request. The same value as `request` when that is
    /// valid: one copy per Service, shared with the allocator.
    adoptable: Option<Arc<LbRequest>>,
    request: Result<Arc<LbRequest>, String>,
    previous: Vec<IpAddr>,
}

/// `(no creation timestamp, creation timestamp)`, then the key: Services with a timestamp first, oldest first (the
/// oldest wins a conflict), then by `namespace/name`.
type Order = (bool, Option<Time>);

impl Held {
    /// `None` for a Service that is not a LoadBalancer of ours.
    fn of(svc: &Service, ns_labels: &Labels, lb_class: Option<&str>) -> Option<Held> {
        let (adoptable, request) = match LbRequest::from_service(svc, ns_labels, lb_class) {
            Ok(None) => return None,
            Ok(Some(r)) => {
                let r = Arc::new(r);
                (Some(Arc::clone(&r)), Ok(r))
            }
            Err(e) => match LbRequest::for_adoption(svc, ns_labels, lb_class) {
                Ok(r) => (r.map(Arc::new), Err(e.to_string())),
                Err(_) => (None, Err(e.to_string())),
            },
        };
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let key = ServiceKey::new(ns, svc.metadata.name.clone().unwrap_or_default());
        let created = svc.metadata.creation_timestamp.clone();
        let previous = adoptable
            .as_ref()
            .map(|r| r.status_ips.clone())
            .unwrap_or_default();
        Some(Held {
            order: (created.is_none(), created),
            key,
            adoptable,
            request,
            previous,
        })
    }

    fn key(&self) -> &ServiceKey {
        &self.key
    }

    fn rank(&self) -> (&Order, &ServiceKey) {
        (&self.order, &self.key)
    }
}

/// An incremental update could not give the answer a full pass gives: a Service's adoption was refused because a
/// younger Service holds the IP, and a full pass would have let the older one adopt it first. The planner is left
/// half-updated: the caller replaces it with [`Planner::full`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsFullPass;

/// The plan kept between passes, so that a change replans only what it touches.
///
/// A full pass ([`Planner::full`]) is what a new leader runs: adopt every Service's status IPs, then allocate, both
/// in creation order. [`Planner::update`] reaches the same answer for a set of changed Services by redoing only them
/// and the Services whose answer a change elsewhere can alter: it releases them, adopts their status again, and
/// allocates them in creation order. The others keep their rows: with the same request and the same holdings, a
/// full pass would only confirm them. The Services always redone are the unsettled ones: those whose row is not yet
/// their status (a full pass would not see what they were given, and could give it to an older Service first), and
/// those that want more than they hold (no IP yet, or one family of a preferred dual stack), since any release may
/// give them something. Where order decides
/// (an adoption refused because a younger Service holds the IP), it gives up with [`NeedsFullPass`]. A property
/// test checks it against full passes over random histories.
pub struct Planner {
    allocator: Allocator,
    lb_class: Option<String>,
    /// Whether a pool's `serviceAllocation` reads namespace labels (else requests get none).
    reads_namespaces: bool,
    held: BTreeMap<ServiceKey, Held>,
    rows: BTreeMap<ServiceKey, PlanRow>,
    /// Services whose row is not what their status holds (a write still to land), or that want more than they hold:
    /// redone on every update.
    unsettled: BTreeSet<ServiceKey>,
}

impl Planner {
    /// Plans every LoadBalancer Service of ours among `services` from scratch, as a new leader does.
    pub fn full<'a>(
        pools: Vec<Pool>,
        services: impl IntoIterator<Item = &'a Service>,
        namespaces: &BTreeMap<String, Labels>,
        lb_class: Option<&str>,
    ) -> Planner {
        let mut planner = Planner {
            reads_namespaces: pools.iter().any(reads_namespace_labels),
            allocator: Allocator::new(pools),
            lb_class: lb_class.map(str::to_string),
            held: BTreeMap::new(),
            rows: BTreeMap::new(),
            unsettled: BTreeSet::new(),
        };
        for svc in services {
            if let Some(h) = planner.held_of(svc, namespaces) {
                planner.held.insert(h.key().clone(), h);
            }
        }
        let all: Vec<ServiceKey> = planner.held.keys().cloned().collect();
        // Adoption refusals are reported by the allocation that follows.
        let _ = planner.redo(&all, false);
        planner
    }

    /// Replans after the Services `changed` were added, replaced (`Some`, the Service now) or deleted (`None`),
    /// with the pools and namespace labels of the last pass (after a change of either, run [`Planner::full`]).
    /// Returns the Services whose row was computed again; the others' rows are what a full pass gives them.
    pub fn update<'a>(
        &mut self,
        changed: impl IntoIterator<Item = (ServiceKey, Option<&'a Service>)>,
        namespaces: &BTreeMap<String, Labels>,
    ) -> Result<BTreeSet<ServiceKey>, NeedsFullPass> {
        let mut redo: BTreeSet<ServiceKey> = self.unsettled.clone();
        for (key, svc) in changed {
            self.held.remove(&key);
            self.rows.remove(&key);
            self.unsettled.remove(&key);
            redo.remove(&key);
            self.allocator.release(&key);
            if let Some(held) = svc.and_then(|s| self.held_of(s, namespaces)) {
                self.held.insert(key.clone(), held);
                redo.insert(key);
            }
        }
        let redo: Vec<ServiceKey> = redo.into_iter().collect();
        for key in &redo {
            self.allocator.release(key);
        }
        self.redo(&redo, true)?;
        Ok(redo.into_iter().collect())
    }

    fn held_of(&self, svc: &Service, namespaces: &BTreeMap<String, Labels>) -> Option<Held> {
        static EMPTY: Labels = Labels::new();
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        let labels = if self.reads_namespaces {
            namespaces.get(ns).unwrap_or(&EMPTY)
        } else {
            &EMPTY
        };
        Held::of(svc, labels, self.lb_class.as_deref())
    }

    /// Adopts, then allocates, the Services `keys` (held, and holding nothing in the allocator) in creation order,
    /// and writes their rows. `strict`: give up where a full pass could adopt differently.
    fn redo(&mut self, keys: &[ServiceKey], strict: bool) -> Result<(), NeedsFullPass> {
        let mut order: Vec<&Held> = keys.iter().filter_map(|k| self.held.get(k)).collect();
        order.sort_by(|a, b| a.rank().cmp(&b.rank()));
        for held in &order {
            let Some(r) = &held.adoptable else {
                continue;
            };
            if let Err(refusal) = self.allocator.adopt_shared(r)
                && strict
                && refusal
                    .holder()
                    .and_then(|h| self.held.get(h))
                    .is_some_and(|holder| holder.rank() > held.rank())
            {
                return Err(NeedsFullPass);
            }
        }
        let mut rows = Vec::with_capacity(order.len());
        for held in order {
            let key = held.key();
            let result = match &held.request {
                Ok(r) => self.allocator.allocate_shared(r).map_err(|e| {
                    let text = e.to_string();
                    let prefix = format!("{key}: ");
                    text.strip_prefix(&prefix)
                        .map(str::to_string)
                        .unwrap_or(text)
                }),
                Err(e) => Err(e.clone()),
            };
            let (ips, pool, outcome) = match result {
                Ok(a) => {
                    let outcome = if held.previous.is_empty() {
                        Outcome::New
                    } else if a.ips == held.previous {
                        Outcome::Kept
                    } else {
                        Outcome::Changed {
                            from: held.previous.clone(),
                        }
                    };
                    (a.ips, Some(a.pool), outcome)
                }
                Err(reason) => {
                    // A Service with a broken request keeps what adoption gave it.
                    let kept = self.allocator.assignment(key).cloned();
                    (
                        kept.as_ref().map(|a| a.ips.clone()).unwrap_or_default(),
                        kept.map(|a| a.pool),
                        Outcome::Pending(reason),
                    )
                }
            };
            let unsettled = !matches!(outcome, Outcome::Kept)
                || held.request.as_ref().is_ok_and(|r| {
                    let (required, preferred) = r.wanted_families();
                    ips.len() < required.len().max(preferred.len())
                });
            rows.push((
                unsettled,
                PlanRow {
                    service: key.clone(),
                    ips,
                    pool,
                    outcome,
                    previous: held.previous.clone(),
                },
            ));
        }
        for (unsettled, row) in rows {
            if unsettled {
                self.unsettled.insert(row.service.clone());
            } else {
                self.unsettled.remove(&row.service);
            }
            self.rows.insert(row.service.clone(), row);
        }
        Ok(())
    }

    /// The row of one Service, if it is a LoadBalancer of ours.
    pub fn row(&self, key: &ServiceKey) -> Option<&PlanRow> {
        self.rows.get(key)
    }

    /// Every row, in `namespace/name` order.
    pub fn rows(&self) -> impl Iterator<Item = &PlanRow> {
        self.rows.values()
    }

    /// The rows of the Services that got no IP.
    pub fn pending(&self) -> impl Iterator<Item = &PlanRow> {
        self.unsettled
            .iter()
            .filter_map(|k| self.rows.get(k))
            .filter(|r| matches!(r.outcome, Outcome::Pending(_)))
    }

    pub fn into_rows(self) -> Vec<PlanRow> {
        self.rows.into_values().collect()
    }
}

/// Whether the pool's `serviceAllocation` reads namespace labels. Without such a pool, no request needs its own copy
/// of them (a B-tree node and its strings per Service).
pub fn reads_namespace_labels(pool: &Pool) -> bool {
    pool.service_allocation
        .as_ref()
        .is_some_and(|sa| !sa.namespace_selectors.is_empty())
}

/// Plans every LoadBalancer Service of ours among `services`, in `namespace/name` order.
///
/// It works as the leader does after a restart: first it adopts every Service's status IPs, then it allocates,
/// both in creation order (then `namespace/name`), so that the oldest Service wins a conflict.
pub fn plan_services<'a>(
    pools: Vec<Pool>,
    services: impl IntoIterator<Item = &'a Service>,
    namespaces: &BTreeMap<String, Labels>,
    lb_class: Option<&str>,
) -> Vec<PlanRow> {
    Planner::full(pools, services, namespaces, lb_class).into_rows()
}

/// Why a Service list cannot be read. Documents and items are numbered from 1.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("document {document}: not valid YAML: {source}")]
    Yaml {
        document: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("document {document}{}{}: not a valid Service: {source}",
        item.map(|i| format!(", item {i}")).unwrap_or_default(),
        name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default())]
    Service {
        document: usize,
        item: Option<usize>,
        name: Option<String>,
        #[source]
        source: serde_yaml::Error,
    },
}

/// Reads Services from `kubectl get svc -A -o yaml` output (a `kind: List`) or from a multi-document stream of
/// objects. Objects of another kind are skipped, so a whole manifest can be given.
pub fn parse_services_yaml(text: &str) -> Result<Vec<Service>, ParseError> {
    let mut services = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|source| ParseError::Yaml { document, source })?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str());
        match value.get("items") {
            Some(items) if kind.is_none_or(|k| k.ends_with("List")) => {
                for (j, item) in items.as_sequence().into_iter().flatten().enumerate() {
                    if let Some(svc) = parse_service(item.clone(), document, Some(j + 1))? {
                        services.push(svc);
                    }
                }
            }
            _ => services.extend(parse_service(value, document, None)?),
        }
    }
    Ok(services)
}

fn parse_service(
    mut value: serde_yaml::Value,
    document: usize,
    item: Option<usize>,
) -> Result<Option<Service>, ParseError> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    if let Some(map) = value.as_mapping_mut() {
        match map.get("kind").and_then(|k| k.as_str()) {
            Some("Service") => {}
            Some(_) => return Ok(None),
            None => {
                map.insert("kind".into(), "Service".into());
            }
        }
        if !map.contains_key("apiVersion") {
            map.insert("apiVersion".into(), "v1".into());
        }
    }
    serde_yaml::from_value(value)
        .map(Some)
        .map_err(|source| ParseError::Service {
            document,
            item,
            name,
            source,
        })
}

/// Why `ironlb plan` could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the configuration")]
    Config(#[from] crate::config::LoadError),
    #[error("reading {path}")]
    ReadServices {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    ParseServices {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    #[error("writing the plan")]
    Write(#[from] std::io::Error),
}

/// `ironlb plan`: loads the configuration and the Service dump, prints the plan table, and returns whether an
/// assigned IP would move. Configuration errors are printed too, and the valid rest of the configuration is used, as
/// the agent would use it. Namespace labels are not in a Service dump, so `namespaceSelectors` match no namespace
/// here; pools that use them are shown as the agent would see them in a namespace without labels.
pub fn run(
    config: &[PathBuf],
    services: &Path,
    lb_class: Option<&str>,
    out: &mut impl std::io::Write,
) -> Result<bool, RunError> {
    let sources = crate::config::Sources::from_documents(crate::config::load_paths(config)?);
    let validated = crate::config::validate(&sources);
    for error in &validated.errors {
        writeln!(out, "config error (object left out): {error}")?;
    }
    let text = std::fs::read_to_string(services).map_err(|source| RunError::ReadServices {
        path: services.to_path_buf(),
        source,
    })?;
    let services = parse_services_yaml(&text).map_err(|source| RunError::ParseServices {
        path: services.to_path_buf(),
        source,
    })?;
    let pools = validated.config.pools.values().cloned().collect();
    let rows = plan_services(pools, &services, &BTreeMap::new(), lb_class);
    out.write_all(render_table(&rows).as_bytes())?;
    let moved = moves_any(&rows);
    let pending = rows
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Pending(_)))
        .count();
    writeln!(
        out,
        "{} Service(s): {} kept, {} new, {} changed, {pending} pending{}",
        rows.len(),
        rows.iter().filter(|r| r.outcome == Outcome::Kept).count(),
        rows.iter().filter(|r| r.outcome == Outcome::New).count(),
        rows.iter()
            .filter(|r| matches!(r.outcome, Outcome::Changed { .. }))
            .count(),
        if moved {
            "; an assigned IP would move"
        } else {
            ""
        },
    )?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alloc::allocator::testing::*;
    use crate::alloc::service::testing::*;

    fn plan(pools: Vec<Pool>, services: &[Service]) -> Vec<PlanRow> {
        plan_services(pools, services, &BTreeMap::new(), None)
    }

    #[test]
    fn namespace_selectors_see_the_namespace_labels() {
        let namespaces: BTreeMap<String, Labels> = [
            (
                "prod".to_string(),
                [("env".to_string(), "prod".to_string())].into(),
            ),
            (
                "dev".to_string(),
                [("env".to_string(), "dev".to_string())].into(),
            ),
        ]
        .into();
        let pools = vec![
            pool("a-prod", &["192.0.2.0/30"]).for_namespace_label("env", "prod"),
            pool("b-open", &["198.51.100.0/30"]),
        ];
        let services = [
            svc("web").ns("prod").created(1),
            svc("web").ns("dev").created(2),
        ];
        let rows = plan_services(pools.clone(), &services, &namespaces, None);
        let got: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            got,
            [
                "dev/web  198.51.100.0  b-open  new",
                "prod/web  192.0.2.0  a-prod  new"
            ]
        );
        // Without a namespace selector the labels are not read, and nothing else changes.
        let open: Vec<Pool> = pools.into_iter().skip(1).collect();
        let rows = plan_services(open, &services, &namespaces, None);
        let got: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            got,
            [
                "dev/web  198.51.100.1  b-open  new",
                "prod/web  198.51.100.0  b-open  new"
            ]
        );
    }

    #[test]
    fn adopts_everything_before_allocating_anything() {
        // "new" is older and sorts first, yet it must not take the address "old" holds.
        let services = [
            svc("new").created(1),
            svc("old").created(2).status(&["192.0.2.0"]),
            svc("moved").created(3).status(&["203.0.113.251"]),
            svc("other").kind("ClusterIP"),
        ];
        let rows = plan(vec![pool("p", &["192.0.2.0/30"])], &services);
        let got: Vec<String> = rows.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            got,
            [
                "default/moved  192.0.2.2  p  changed(from 203.0.113.251)",
                "default/new  192.0.2.1  p  new",
                "default/old  192.0.2.0  p  kept",
            ]
        );
        assert!(moves_any(&rows));
        assert!(!moves_any(&rows[1..]));
    }

    #[test]
    fn conflicts_go_to_the_oldest_and_failures_are_pending() {
        let services = [
            svc("b").created(1).status(&["192.0.2.0"]),
            svc("a").created(2).status(&["192.0.2.0"]),
            svc("c").created(3).lb_ip("192.0.2.0"),
            svc("d").created(4).lb_ips("bogus").status(&["192.0.2.1"]),
        ];
        let rows = plan(vec![pool("p", &["192.0.2.0/30"])], &services);
        let by_name = |n: &str| rows.iter().find(|r| r.service.name == n).unwrap();
        assert_eq!(by_name("b").outcome, Outcome::Kept);
        assert_eq!(by_name("a").ips, vec![ip("192.0.2.2")]);
        assert!(
            matches!(&by_name("c").outcome, Outcome::Pending(r) if r.contains("in use by default/b"))
        );
        // A broken annotation is reported, but the VIP it holds stays protected.
        let d = by_name("d");
        assert!(
            matches!(&d.outcome, Outcome::Pending(r) if r.contains("bogus")),
            "{d}"
        );
        assert_eq!(d.ips, vec![ip("192.0.2.1")]);
    }

    #[test]
    fn table_is_aligned_with_a_header() {
        let rows = plan(
            vec![pool("pool-a", &["192.0.2.0/30"])],
            &[svc("a-long-name").created(1), svc("b").ns("x").created(2)],
        );
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "SERVICE              IPS        POOL    STATUS");
        assert_eq!(lines[1], "default/a-long-name  192.0.2.0  pool-a  new");
        assert_eq!(lines[2], "x/b                  192.0.2.1  pool-a  new");
    }

    #[test]
    fn parses_kubectl_lists_and_multi_document_streams() {
        let list = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: x, creationTimestamp: "2024-01-02T03:04:05Z"}
  spec: {type: LoadBalancer, ports: [{port: 80, protocol: TCP}]}
  status: {loadBalancer: {ingress: [{ip: 192.0.2.1}]}}
metadata: {resourceVersion: ""}
"#;
        let svcs = parse_services_yaml(list).unwrap();
        assert_eq!(svcs.len(), 1);
        assert_eq!(svcs[0].metadata.name.as_deref(), Some("a"));
        let stream = "---\nkind: Service\nmetadata: {name: a}\n---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\nmetadata: {name: b}\nspec: {type: LoadBalancer}\n";
        let names: Vec<_> = parse_services_yaml(stream)
            .unwrap()
            .into_iter()
            .map(|s| s.metadata.name.unwrap())
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn parse_errors_name_the_document() {
        let e = parse_services_yaml("kind: Service\nmetadata: {name: a}\n---\nkind: Service\nmetadata: {name: bad}\nspec: {ports: 7}\n")
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("document 2 (bad): not a valid Service"),
            "{e}"
        );
        let e = parse_services_yaml("kind: List\nitems:\n- metadata: {name: x}\n  spec: []\n")
            .unwrap_err();
        assert!(e.to_string().starts_with("document 1, item 1 (x)"), "{e}");
        let e = parse_services_yaml("a: [\n").unwrap_err();
        assert!(matches!(e, ParseError::Yaml { document: 1, .. }), "{e}");
    }
}
