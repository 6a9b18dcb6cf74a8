//! Tier: real API. The lab API server kept honest: one black-box suite of the requests the agent (kube-rs) and users
//! (kubectl) make, run once against the lab's in-process server and once against the real kube-apiserver and etcd
//! of tests/real_api_support, with the same kubectl binary (the real server's release) for both.
//!
//! Every check records what it saw as normalized observations (status codes, reasons, key fields; never raw
//! resourceVersions, UIDs or ages), so the two runs can be compared key by key. The real server is the reference:
//! every expectation must hold there. On the lab, every observation must equal the real server's or be listed in
//! [`KNOWN_DIFFERENCES`] with its reason; a new difference fails the test with both values, and so does a listed
//! one that no longer differs. `cargo test --test api_conformance known_differences -- --nocapture` prints the list
//! as the table the README carries.
//!
//! Both runs work in a fresh namespace `ilb-conf-<pid>`: the real server has no namespace controller, so a
//! namespace is never reused, and no controller-manager, so nothing but this test writes EndpointSlices. Every
//! kubectl run, every check and every watch is bounded in time.

mod real_api_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{Stream, StreamExt};
use ironlb::k8s::events::{Note, publish};
use ironlb::lab::api::{ApiServer, write_kubeconfig};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event as EventsV1Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// How long one kubectl run may take before it is killed.
const KUBECTL_LIMIT: Duration = Duration::from_secs(30);
/// How long one check may take, all its requests together.
const CHECK_LIMIT: Duration = Duration::from_secs(90);
/// How long a watch may take to deliver what a check waits for.
const WATCH_LIMIT: Duration = Duration::from_secs(20);
/// How long the real server may take to serve CRD kinds in discovery once they are Established.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(20);

/// The ingress address the status patch writes: a documentation address, never used on any interface.
const INGRESS_IP: &str = "192.0.2.10";

/// Every check, in the order it runs, with what it does.
const CHECKS: &[(&str, &str)] = &[
    (
        "namespace",
        "kubectl apply of a Namespace (JSON); it reads back Active with its default label and finalizer; \
         kubectl create namespace (protobuf)",
    ),
    (
        "crds",
        "kubectl apply --server-side of deploy/crds/metallb.io.yaml, kubectl wait for Established, discovery",
    ),
    (
        "metallb_objects",
        "kubectl apply of an IPAddressPool, an L2Advertisement without spec and a BGPAdvertisement with \
         localPref -1; kube-rs get and list; kubectl get and delete; 404 after",
    ),
    (
        "service",
        "kubectl apply of a LoadBalancer Service; kube-rs get, patch_status (merge), merge patch of annotations, \
         replace (stale resourceVersion: 409); kubectl patch and annotate",
    ),
    (
        "lease",
        "coordination.k8s.io/v1 Lease as the leader elector writes it: create, get, replace, stale replace (409)",
    ),
    (
        "event",
        "core/v1 Event as the agent publishes it; list by involvedObject field selectors; events.k8s.io view; \
         kubectl describe",
    ),
    (
        "watch",
        "kube::runtime::watcher on Services (list-watch and streaming list): Init, InitApply, InitDone, then \
         an Apply for a change",
    ),
    (
        "selectors",
        "ConfigMap lists by label and field selectors (metadata.name=config as the agent's watch); bad selectors",
    ),
    (
        "not_found",
        "get of missing objects, kinds and namespaces through kube-rs and kubectl: 404 Status, NotFound",
    ),
    (
        "endpointslice",
        "discovery.k8s.io/v1 EndpointSlice create and list by kubernetes.io/service-name; kubectl get",
    ),
    (
        "kubectl_wide",
        "kubectl get svc -o wide: columns, CLUSTER-IP, EXTERNAL-IP from the status patch, PORT(S)",
    ),
    (
        "kubectl_create_list",
        "kubectl create -f of a kind: List of ConfigMaps, a Service and an IPAddressPool; of three documents, one \
         ill-typed and one with an unknown field",
    ),
    (
        "kubectl_create_service",
        "kubectl create service loadbalancer web2 --tcp=80:8080 (kubectl sends protobuf)",
    ),
];

/// A difference between the lab and the real server that is known and accepted, with why.
struct Known {
    check: &'static str,
    key: &'static str,
    reason: &'static str,
}

/// Every accepted difference, keyed by check and observation. Each is a place where the lab is simpler than
/// Kubernetes; its reason says what the lab does instead and why the agent does not mind. Fixing one in the lab
/// means deleting its entry here (the test fails until then).
const KNOWN_DIFFERENCES: &[Known] = &[
    Known {
        check: "metallb_objects",
        key: "IPAddressPool spec",
        reason: "the lab stores custom resources as sent, without the CRD schema's defaults (autoAssign true, \
            avoidBuggyIPs false); the agent's config decoding applies the same defaults",
    },
    Known {
        check: "metallb_objects",
        key: "BGPAdvertisement spec",
        reason: "no CRD schema defaults in the lab (aggregationLength 32, aggregationLengthV6 128); the agent's \
            config decoding applies the same defaults",
    },
    Known {
        check: "metallb_objects",
        key: "kubectl get ipaddresspools",
        reason: "the lab's Tables ignore a CRD's additionalPrinterColumns and show NAME and AGE only",
    },
    Known {
        check: "service",
        key: "metadata.generation on create, after status and metadata writes",
        reason: "the lab keeps metadata.generation on every kind; kube-apiserver leaves it unset on Services",
    },
    Known {
        check: "event",
        key: "events.k8s.io/v1 list",
        reason: "the lab stores core/v1 and events.k8s.io/v1 Events apart; kube-apiserver serves one store through \
            both, and the agent writes and reads core/v1 only",
    },
    Known {
        check: "selectors",
        key: "fields data.config=x (unsupported field)",
        reason: "the lab's field selectors take any field path; kube-apiserver allows only the fields each kind \
            declares and answers 400 BadRequest",
    },
    Known {
        check: "endpointslice",
        key: "kubectl get endpointslices",
        reason: "the lab has no Table printer for EndpointSlices and shows NAME and AGE only",
    },
];

/// What one check saw on one server.
#[derive(Debug, Default)]
struct Finding {
    check: &'static str,
    /// Observations in the order made; keys are unique within a check.
    observed: Vec<(String, String)>,
    /// Expectations that did not hold: any of these on the real server fails the test.
    unmet: Vec<String>,
    /// Why the check stopped early, if it did.
    error: Option<String>,
}

impl Finding {
    fn new(check: &'static str) -> Finding {
        Finding {
            check,
            ..Finding::default()
        }
    }

    fn note(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        assert!(
            self.value(key).is_none(),
            "{}: observation {key} recorded twice",
            self.check
        );
        self.observed.push((key.to_owned(), value));
    }

    /// Records an observation that every Kubernetes API server must make equal to `want`.
    fn expect(&mut self, key: &str, value: impl Into<String>, want: &str) {
        let value = value.into();
        if value != want {
            self.unmet
                .push(format!("{key}: expected {want:?}, got {value:?}"));
        }
        self.note(key, value);
    }

    /// Records an observation that must satisfy `holds`, described by `want`.
    fn expect_that(
        &mut self,
        key: &str,
        value: impl Into<String>,
        want: &str,
        holds: impl FnOnce(&str) -> bool,
    ) {
        let value = value.into();
        if !holds(&value) {
            self.unmet
                .push(format!("{key}: expected {want}, got {value:?}"));
        }
        self.note(key, value);
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.observed
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Observations as a map, with the early stop (if any) as the observation `error`.
    fn as_map(&self) -> BTreeMap<&str, &str> {
        let mut map: BTreeMap<&str, &str> = self
            .observed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if let Some(error) = &self.error {
            map.insert("error", error);
        }
        map
    }
}

/// One server under test: how kubectl and kube-rs reach it, and the namespace the run works in.
struct Target {
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    client: kube::Client,
    namespace: String,
    /// kubectl's HOME and discovery cache, fresh per target, so one server's discovery never answers for the
    /// other's.
    home: tempfile::TempDir,
}

/// One kubectl run.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// `exit N` and what kubectl said: stdout lines on success, stderr lines (without client-side klog lines) on
    /// failure.
    /// The exit status and the non-empty, non-klog lines of stdout on success, of stderr on failure.
    fn summary(&self) -> String {
        let text = if self.ok() {
            &self.stdout
        } else {
            &self.stderr
        };
        self.summarize(text.lines())
    }

    /// The exit status and the non-empty, non-klog lines of stdout, then stderr.
    fn summary_both(&self) -> String {
        self.summarize(self.stdout.lines().chain(self.stderr.lines()))
    }

    fn summarize<'a>(&self, lines: impl Iterator<Item = &'a str>) -> String {
        let lines: Vec<&str> = lines
            .map(str::trim)
            .filter(|l| !l.is_empty() && !is_klog_line(l))
            .collect();
        format!(
            "exit {}: {}",
            self.code.map_or("killed".into(), |c| c.to_string()),
            lines.join(" | ")
        )
    }
}

/// client-go's own log lines (`W0102 15:04:05.000000 ...`), which carry times and pids.
fn is_klog_line(line: &str) -> bool {
    let mut chars = line.chars();
    matches!(chars.next(), Some('I' | 'W' | 'E' | 'F')) && chars.take(4).all(|c| c.is_ascii_digit())
}

impl Target {
    async fn new(kubeconfig: &Path, kubectl: &Path, namespace: &str) -> Result<Target> {
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(kubeconfig)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        Ok(Target {
            kubeconfig: kubeconfig.to_owned(),
            kubectl: kubectl.to_owned(),
            client: kube::Client::try_from(config)?,
            namespace: namespace.to_owned(),
            home: tempfile::tempdir()?,
        })
    }

    fn ns(&self) -> &str {
        &self.namespace
    }

    /// [`Ran::summary`] with this run's namespace written `<ns>`.
    fn summary(&self, ran: &Ran) -> String {
        ran.summary().replace(self.ns(), "<ns>")
    }

    /// [`Target::summary`] of stdout and stderr both, stdout first.
    fn summary_both(&self, ran: &Ran) -> String {
        ran.summary_both().replace(self.ns(), "<ns>")
    }

    /// Runs kubectl with `input` on stdin, killed after [`KUBECTL_LIMIT`].
    async fn kubectl_in(&self, args: &[&str], input: Option<&str>) -> Result<Ran> {
        let mut command = tokio::process::Command::new(&self.kubectl);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.home.path().join("cache"))
            .args(args)
            .env("HOME", self.home.path())
            .env("KUBECTL_KUBERC", "false")
            .env_remove("KUBECONFIG")
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("start {}", self.kubectl.display()))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input.as_bytes()).await?;
        }
        let out = tokio::time::timeout(KUBECTL_LIMIT, child.wait_with_output())
            .await
            .with_context(|| format!("kubectl {args:?} ran longer than {KUBECTL_LIMIT:?}"))??;
        Ok(Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn kubectl(&self, args: &[&str]) -> Result<Ran> {
        self.kubectl_in(args, None).await
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), self.ns())
    }

    fn metallb(&self, kind: &str, plural: &str) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("metallb.io", "v1beta1", kind);
        Api::namespaced_with(
            self.client.clone(),
            self.ns(),
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        )
    }
}

/// `ok`, or the Status code and reason of an API error.
fn outcome<T>(result: &Result<T, kube::Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(kube::Error::Api(status)) => format!("{} {}", status.code, status.reason),
        Err(e) => format!("error: {e}"),
    }
}

/// A JSON value as text with object keys sorted, whatever order the server sent them in.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let map: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, sorted(v))).collect();
                json!(map)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A ClusterIP as a class: the real server allocates from [`real_api_support::SERVICE_CLUSTER_IP_RANGE`], the
/// addresses themselves differ from run to run.
fn cluster_ip_class(ip: Option<&str>) -> String {
    match ip {
        None => "absent".into(),
        Some("") => "empty".into(),
        Some("None") => "None".into(),
        Some("<none>") => "<none>".into(),
        Some(ip) if ip.starts_with("198.51.100.") => "an address in the service range".into(),
        Some(other) => format!("outside the service range: {other}"),
    }
}

/// The cells of a kubectl table line: kubectl pads columns with at least two spaces, and headers such as
/// `AUTO ASSIGN` hold one.
fn columns(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A kubectl table as `header / row / ...`, cells joined by `|`, without the AGE column, which differs from run
/// to run.
fn table_without_age(ran: &Ran) -> String {
    let mut lines = ran.stdout.lines().map(columns);
    let header = lines.next().unwrap_or_default();
    let age = header.iter().position(|h| h == "AGE");
    std::iter::once(header)
        .chain(lines)
        .map(|mut cells| {
            if let Some(age) = age.filter(|a| *a < cells.len()) {
                cells.remove(age);
            }
            cells.join("|")
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

/// kubectl's `PORT(S)` cell with each allocated NodePort replaced by `<nodePort>`.
fn ports_cell(cell: &str) -> String {
    cell.split(',')
        .map(|port| match port.split_once(':') {
            Some((service_port, rest)) => {
                let proto = rest.split_once('/').map_or("", |(_, p)| p);
                format!("{service_port}:<nodePort>/{proto}")
            }
            None => port.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn names<K: kube::Resource>(items: &[K]) -> String {
    let mut names: Vec<String> = items
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect();
    names.sort();
    names.join(",")
}

/// Runs every check against `target`, in order. Later checks use what earlier ones made (the Service `web`).
async fn conformance(target: &Target) -> Vec<Finding> {
    let mut findings = Vec::new();
    macro_rules! run {
        ($name:literal, $check:ident) => {{
            let mut finding = Finding::new($name);
            match tokio::time::timeout(CHECK_LIMIT, $check(target, &mut finding)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => finding.error = Some(format!("{e:#}")),
                Err(_) => finding.error = Some(format!("did not finish within {CHECK_LIMIT:?}")),
            }
            findings.push(finding);
        }};
    }
    run!("namespace", check_namespace);
    run!("crds", check_crds);
    run!("metallb_objects", check_metallb_objects);
    run!("service", check_service);
    run!("lease", check_lease);
    run!("event", check_event);
    run!("watch", check_watch);
    run!("selectors", check_selectors);
    run!("not_found", check_not_found);
    run!("endpointslice", check_endpointslice);
    run!("kubectl_wide", check_kubectl_wide);
    run!("kubectl_create_list", check_kubectl_create_list);
    run!("kubectl_create_service", check_kubectl_create_service);
    findings
}

async fn check_namespace(t: &Target, f: &mut Finding) -> Result<()> {
    // kubectl apply sends JSON; `kubectl create namespace` (below) sends protobuf.
    let applied = t
        .kubectl_in(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n",
                t.ns()
            )),
        )
        .await?;
    f.expect(
        "kubectl apply of a Namespace",
        t.summary(&applied),
        "exit 0: namespace/<ns> created",
    );
    let ns = Api::<Namespace>::all(t.client.clone()).get(t.ns()).await?;
    f.expect(
        "status.phase",
        ns.status.and_then(|s| s.phase).unwrap_or_default(),
        "Active",
    );
    f.note(
        "metadata.labels",
        canonical(&to_json(&ns.metadata.labels)).replace(t.ns(), "<ns>"),
    );
    f.note(
        "spec.finalizers",
        canonical(&to_json(&ns.spec.and_then(|s| s.finalizers))),
    );
    let typed = format!("{}-typed", t.ns());
    let created = t.kubectl(&["create", "namespace", &typed]).await?;
    f.expect(
        "kubectl create namespace",
        t.summary(&created),
        "exit 0: namespace/<ns>-typed created",
    );
    Ok(())
}

async fn check_crds(t: &Target, f: &mut Finding) -> Result<()> {
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds/metallb.io.yaml");
    // Every CRD IronLB generates: the configuration kinds and MetalLB's status kinds.
    let ours = ironlb::config::crd::crds()?;
    let count = ours.len();
    let mut plurals: Vec<String> = ours
        .iter()
        .map(|c| format!("{}.metallb.io", c.spec.names.plural))
        .collect();
    plurals.sort();
    let applied = t.kubectl(&["apply", "--server-side", "-f", crds]).await?;
    f.expect_that(
        "kubectl apply --server-side",
        t.summary(&applied),
        &format!("exit 0 and {count} CRDs serverside-applied"),
        |s| s.starts_with("exit 0:") && s.matches("serverside-applied").count() == count,
    );
    let waited = t
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=20s",
            "-f",
            crds,
        ])
        .await?;
    f.expect_that(
        "kubectl wait --for=condition=Established",
        t.summary(&waited),
        &format!("exit 0 and {count} conditions met"),
        |s| s.starts_with("exit 0:") && s.matches("condition met").count() == count,
    );
    let listed = Api::<CustomResourceDefinition>::all(t.client.clone())
        .list(&ListParams::default())
        .await?;
    let mut names_accepted = BTreeSet::new();
    for crd in listed.items.iter().filter(|c| c.spec.group == "metallb.io") {
        let conditions: Vec<String> = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.status == "True")
            .map(|c| c.type_.clone())
            .collect();
        names_accepted.insert(format!("{}: {}", crd.spec.names.kind, conditions.join(",")));
    }
    f.note(
        "status.conditions that are True",
        names_accepted.into_iter().collect::<Vec<_>>().join(" | "),
    );
    // Discovery of the new kinds lags Established a little on the real server: poll, bounded.
    let start = Instant::now();
    let resources = loop {
        let ran = t
            .kubectl(&["api-resources", "--api-group=metallb.io", "-o", "name"])
            .await?;
        let mut names: Vec<&str> = ran.stdout.lines().map(str::trim).collect();
        names.sort();
        let names = names.join(",");
        if names.split(',').count() == count || start.elapsed() > DISCOVERY_LIMIT {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    f.expect(
        "kubectl api-resources --api-group=metallb.io",
        resources,
        &plurals.join(","),
    );
    Ok(())
}

async fn check_metallb_objects(t: &Target, f: &mut Finding) -> Result<()> {
    let ns = t.ns();
    let manifest = format!(
        "apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: docs
  namespace: {ns}
spec:
  addresses:
  - 203.0.113.0/28
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata:
  name: everywhere
  namespace: {ns}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata:
  name: low-pref
  namespace: {ns}
spec:
  localPref: -1
"
    );
    let applied = t.kubectl_in(&["apply", "-f", "-"], Some(&manifest)).await?;
    f.expect(
        "kubectl apply",
        t.summary(&applied),
        "exit 0: ipaddresspool.metallb.io/docs created | l2advertisement.metallb.io/everywhere created | \
         bgpadvertisement.metallb.io/low-pref created",
    );
    let pools = t.metallb("IPAddressPool", "ipaddresspools");
    let l2 = t.metallb("L2Advertisement", "l2advertisements");
    let bgp = t.metallb("BGPAdvertisement", "bgpadvertisements");
    for (label, api, name) in [
        ("IPAddressPool", &pools, "docs"),
        ("L2Advertisement", &l2, "everywhere"),
        ("BGPAdvertisement", &bgp, "low-pref"),
    ] {
        let got = api.get(name).await;
        f.expect(&format!("{label} get"), outcome(&got), "ok");
        if let Ok(obj) = got {
            f.note(
                &format!("{label} spec"),
                canonical(obj.data.get("spec").unwrap_or(&Value::Null)),
            );
            f.note(
                &format!("{label} status"),
                canonical(obj.data.get("status").unwrap_or(&Value::Null)),
            );
            f.expect(
                &format!("{label} metadata.generation"),
                format!("{:?}", obj.metadata.generation),
                "Some(1)",
            );
        }
    }
    if let Some(spec) = f.value("BGPAdvertisement spec").map(str::to_owned) {
        let local_pref = serde_json::from_str::<Value>(&spec)?["localPref"].clone();
        f.expect("BGPAdvertisement localPref", local_pref.to_string(), "-1");
    }
    let listed = pools.list(&ListParams::default()).await?;
    f.expect("IPAddressPool list", names(&listed.items), "docs");
    f.note(
        "IPAddressPool list metadata.resourceVersion set",
        listed
            .metadata
            .resource_version
            .is_some_and(|rv| !rv.is_empty())
            .to_string(),
    );
    let table = t.kubectl(&["get", "ipaddresspools", "-n", ns]).await?;
    f.note("kubectl get ipaddresspools", table_without_age(&table));
    let deleted = t
        .kubectl(&[
            "delete",
            "-n",
            ns,
            "ipaddresspool/docs",
            "l2advertisement/everywhere",
            "bgpadvertisement/low-pref",
        ])
        .await?;
    f.expect(
        "kubectl delete",
        t.summary(&deleted),
        "exit 0: ipaddresspool.metallb.io \"docs\" deleted from <ns> namespace | \
         l2advertisement.metallb.io \"everywhere\" deleted from <ns> namespace | \
         bgpadvertisement.metallb.io \"low-pref\" deleted from <ns> namespace",
    );
    f.expect(
        "IPAddressPool get after delete",
        outcome(&pools.get("docs").await),
        "404 NotFound",
    );
    f.expect(
        "IPAddressPool list after delete",
        names(&pools.list(&ListParams::default()).await?.items),
        "",
    );
    Ok(())
}

fn web_manifest(ns: &str) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
  labels:
    app: web
spec:
  type: LoadBalancer
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
"
    )
}

async fn check_service(t: &Target, f: &mut Finding) -> Result<()> {
    let ns = t.ns();
    let applied = t
        .kubectl_in(&["apply", "-f", "-"], Some(&web_manifest(ns)))
        .await?;
    f.expect(
        "kubectl apply",
        t.summary(&applied),
        "exit 0: service/web created",
    );
    let api: Api<Service> = t.api();
    let first = api.get("web").await?;
    let spec = first.spec.clone().unwrap_or_default();
    let port = spec
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .next()
        .unwrap_or_default();
    f.expect(
        "spec.type",
        spec.type_.clone().unwrap_or_default(),
        "LoadBalancer",
    );
    // Grouped by what the server does to make them, so that one known difference covers one behaviour.
    f.note(
        "ClusterIP allocation: clusterIP, clusterIPs, ipFamilies, ipFamilyPolicy",
        format!(
            "{} | {} | {:?} | {:?}",
            cluster_ip_class(spec.cluster_ip.as_deref()),
            spec.cluster_ips
                .as_deref()
                .unwrap_or_default()
                .iter()
                .map(|ip| cluster_ip_class(Some(ip)))
                .collect::<Vec<_>>()
                .join(","),
            spec.ip_families,
            spec.ip_family_policy
        ),
    );
    f.note(
        "NodePort allocation: ports[0].nodePort, allocateLoadBalancerNodePorts",
        format!(
            "{} | {:?}",
            match port.node_port {
                Some(p) if (30000..=32767).contains(&p) => "allocated in 30000-32767".to_owned(),
                other => format!("{other:?}"),
            },
            spec.allocate_load_balancer_node_ports
        ),
    );
    f.note(
        "traffic policy defaults: externalTrafficPolicy, internalTrafficPolicy",
        format!(
            "{:?} | {:?}",
            spec.external_traffic_policy, spec.internal_traffic_policy
        ),
    );
    f.note(
        "spec.sessionAffinity",
        format!("{:?}", spec.session_affinity),
    );
    f.note("spec.ports[0].protocol", format!("{:?}", port.protocol));
    f.note(
        "spec.ports[0].targetPort",
        canonical(&to_json(&port.target_port)),
    );
    f.note("status on create", canonical(&to_json(&first.status)));
    f.note(
        "metadata.uid and creationTimestamp set",
        (first.metadata.uid.is_some() && first.metadata.creation_timestamp.is_some()).to_string(),
    );

    // The agent's status write: a merge patch through the status subresource.
    let params = PatchParams::default();
    let status_patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": INGRESS_IP}]}}});
    let patched = api
        .patch_status("web", &params, &Patch::Merge(&status_patch))
        .await;
    f.expect("patch_status (merge)", outcome(&patched), "ok");
    let patched = patched?;
    f.note(
        "status after patch_status",
        canonical(&to_json(&patched.status)),
    );
    f.expect(
        "patch_status changes resourceVersion",
        (patched.metadata.resource_version != first.metadata.resource_version).to_string(),
        "true",
    );
    f.expect(
        "patch_status leaves spec alone",
        (patched.spec == first.spec).to_string(),
        "true",
    );
    // Through the status subresource, spec changes are dropped.
    let sneaky = json!({
        "spec": {"sessionAffinity": "ClientIP"},
        "status": {"loadBalancer": {"ingress": [{"ip": INGRESS_IP}]}},
    });
    let sneaked = api
        .patch_status("web", &params, &Patch::Merge(&sneaky))
        .await;
    f.expect(
        "patch_status carrying a spec change",
        outcome(&sneaked),
        "ok",
    );
    f.note(
        "spec.sessionAffinity after patch_status carrying a spec change",
        format!(
            "{:?}",
            sneaked
                .ok()
                .and_then(|s| s.spec)
                .and_then(|s| s.session_affinity)
        ),
    );

    // The agent's metadata write: a merge patch of the main resource.
    let annotation_patch = json!({"metadata": {"annotations": {"ironlb.io/conformance": "yes"}}});
    let annotated = api
        .patch("web", &params, &Patch::Merge(&annotation_patch))
        .await;
    f.expect("patch (merge) of annotations", outcome(&annotated), "ok");
    let annotated = annotated?;
    f.expect(
        "annotation patch changes resourceVersion",
        (annotated.metadata.resource_version != patched.metadata.resource_version).to_string(),
        "true",
    );
    f.note(
        "metadata.generation on create, after status and metadata writes",
        format!(
            "{:?}, {:?}",
            first.metadata.generation, annotated.metadata.generation
        ),
    );
    let read = api.get("web").await?;
    f.expect(
        "annotation read back",
        read.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("ironlb.io/conformance"))
            .cloned()
            .unwrap_or_default(),
        "yes",
    );
    f.expect(
        "ingress read back",
        read.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|i| i.first())
            .and_then(|i| i.ip.clone())
            .unwrap_or_default(),
        INGRESS_IP,
    );

    // Optimistic concurrency: a replace of what was read before the writes above must be refused.
    let mut stale = first.clone();
    stale
        .metadata
        .labels
        .get_or_insert_default()
        .insert("stale".into(), "yes".into());
    let refused = api.replace("web", &PostParams::default(), &stale).await;
    f.expect(
        "replace with a stale resourceVersion",
        outcome(&refused),
        "409 Conflict",
    );
    // A replace of the current object succeeds; a replace of the main resource cannot change status.
    let mut current = read.clone();
    current
        .metadata
        .labels
        .get_or_insert_default()
        .insert("fresh".into(), "yes".into());
    current.status = None;
    let replaced = api.replace("web", &PostParams::default(), &current).await;
    f.expect(
        "replace with the current resourceVersion",
        outcome(&replaced),
        "ok",
    );
    if let Ok(replaced) = replaced {
        f.expect(
            "replace changes resourceVersion",
            (replaced.metadata.resource_version != read.metadata.resource_version).to_string(),
            "true",
        );
        f.expect(
            "a replace without status leaves status alone",
            (replaced.status == read.status).to_string(),
            "true",
        );
    }

    // Users' writes.
    let kubectl_patched = t
        .kubectl(&[
            "patch",
            "service",
            "web",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"patched":"yes"}}}"#,
        ])
        .await?;
    f.expect(
        "kubectl patch --type=merge",
        t.summary(&kubectl_patched),
        "exit 0: service/web patched",
    );
    let annotated = t
        .kubectl(&[
            "annotate",
            "service",
            "web",
            "-n",
            ns,
            "ironlb.io/by=kubectl",
        ])
        .await?;
    f.expect(
        "kubectl annotate",
        t.summary(&annotated),
        "exit 0: service/web annotated",
    );
    let labels = api.get("web").await?.metadata.labels.unwrap_or_default();
    f.expect(
        "labels after the writes",
        labels.keys().cloned().collect::<Vec<_>>().join(","),
        "app,fresh,patched",
    );
    Ok(())
}

async fn check_lease(t: &Target, f: &mut Finding) -> Result<()> {
    let api: Api<Lease> = t.api();
    // The API server keeps MicroTime to the microsecond: round, so what is written can be compared with what is
    // read.
    let now = jiff::Timestamp::now().round(jiff::Unit::Microsecond)?;
    let spec = |holder: &str, at: jiff::Timestamp| LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(15),
        acquire_time: Some(MicroTime(at)),
        renew_time: Some(MicroTime(at)),
        lease_transitions: Some(0),
        ..Default::default()
    };
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some("ironlb-conformance".into()),
            namespace: Some(t.ns().into()),
            ..Default::default()
        },
        spec: Some(spec("node-1", now)),
    };
    let created = api.create(&PostParams::default(), &lease).await;
    f.expect("create", outcome(&created), "ok");
    let again = api.create(&PostParams::default(), &lease).await;
    f.expect("create again", outcome(&again), "409 AlreadyExists");
    let read = api.get("ironlb-conformance").await?;
    f.expect(
        "spec read back as written",
        (read.spec == lease.spec).to_string(),
        "true",
    );
    f.note(
        "renewTime on the wire",
        // Only the shape: digits replaced, so runs at different instants compare equal.
        to_json(&read.spec.as_ref().and_then(|s| s.renew_time.clone()))
            .as_str()
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_digit() { 'D' } else { c })
            .collect::<String>(),
    );
    let mut renewed = read.clone();
    renewed.spec = Some(spec("node-2", now + Duration::from_secs(2)));
    let replaced = api
        .replace("ironlb-conformance", &PostParams::default(), &renewed)
        .await;
    f.expect(
        "replace with the current resourceVersion",
        outcome(&replaced),
        "ok",
    );
    if let Ok(replaced) = &replaced {
        f.expect(
            "replace changes resourceVersion",
            (replaced.metadata.resource_version != read.metadata.resource_version).to_string(),
            "true",
        );
        f.expect(
            "holderIdentity after replace",
            replaced
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default(),
            "node-2",
        );
    }
    // Another elector that read before the replace loses: 409, which the elector takes as "lost".
    let mut contender = read.clone();
    contender.spec = Some(spec("node-3", now + Duration::from_secs(3)));
    let refused = api
        .replace("ironlb-conformance", &PostParams::default(), &contender)
        .await;
    f.expect(
        "replace with a stale resourceVersion",
        outcome(&refused),
        "409 Conflict",
    );
    let holder = api
        .get("ironlb-conformance")
        .await?
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    f.expect("holderIdentity after the refused replace", holder, "node-2");
    Ok(())
}

async fn check_event(t: &Target, f: &mut Finding) -> Result<()> {
    let ns = t.ns();
    let service = t.api::<Service>().get("web").await?;
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some("web".into()),
        namespace: Some(ns.into()),
        uid: service.metadata.uid.clone(),
        resource_version: service.metadata.resource_version.clone(),
        ..Default::default()
    };
    let note = Note::normal("IPAllocated", format!("Assigned IP [\"{INGRESS_IP}\"]"));
    let published = publish(&t.client, &note, &regarding, "node-1").await;
    f.expect("publish (core/v1 create)", outcome(&published), "ok");
    let events: Api<Event> = t.api();
    let by = |selector: &str| {
        let events = events.clone();
        let params = ListParams::default().fields(selector);
        async move {
            let listed = events.list(&params).await;
            match listed {
                Ok(list) => list
                    .items
                    .iter()
                    .map(|e| {
                        format!(
                            "{}/{}/{}",
                            e.reason.as_deref().unwrap_or_default(),
                            e.type_.as_deref().unwrap_or_default(),
                            e.source
                                .as_ref()
                                .and_then(|s| s.component.as_deref())
                                .unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                Err(e) => outcome::<()>(&Err(e)),
            }
        }
    };
    f.expect(
        "list involvedObject.name=web",
        by("involvedObject.name=web").await,
        "IPAllocated/Normal/ironlb",
    );
    f.expect(
        "list involvedObject.kind=Service,involvedObject.name=web",
        by("involvedObject.kind=Service,involvedObject.name=web").await,
        "IPAllocated/Normal/ironlb",
    );
    f.expect(
        "list involvedObject.uid (as kubectl describe)",
        by(&format!(
            "involvedObject.uid={}",
            service.metadata.uid.as_deref().unwrap_or_default()
        ))
        .await,
        "IPAllocated/Normal/ironlb",
    );
    f.expect(
        "list involvedObject.name=other",
        by("involvedObject.name=other").await,
        "",
    );
    f.expect(
        "list reason=IPAllocated",
        by("reason=IPAllocated").await,
        "IPAllocated/Normal/ironlb",
    );
    let as_events_v1 = Api::<EventsV1Event>::namespaced(t.client.clone(), ns)
        .list(&ListParams::default())
        .await;
    f.note(
        "events.k8s.io/v1 list",
        match as_events_v1 {
            Ok(list) => list
                .items
                .iter()
                .map(|e| {
                    format!(
                        "{}/{}",
                        e.reason.as_deref().unwrap_or_default(),
                        e.regarding
                            .as_ref()
                            .and_then(|r| r.name.as_deref())
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join(","),
            Err(e) => outcome::<()>(&Err(e)),
        },
    );
    let described = t.kubectl(&["describe", "service", "web", "-n", ns]).await?;
    f.expect(
        "kubectl describe shows the Event",
        described
            .stdout
            .lines()
            .find(|l| l.contains("IPAllocated"))
            .map(|l| {
                // Type, Reason, Age, From, Message: all but the age.
                let mut cells = columns(l);
                if cells.len() > 2 {
                    cells.remove(2);
                }
                cells.join("|")
            })
            .unwrap_or_else(|| "no IPAllocated line".into()),
        &format!("Normal|IPAllocated|ironlb|Assigned IP [\"{INGRESS_IP}\"]"),
    );
    Ok(())
}

/// Reads `stream` until `done` says so, at most `limit` long and 20 events, and names each event.
async fn watch_until<S>(
    stream: &mut S,
    limit: Duration,
    mut done: impl FnMut(&watcher::Event<Service>) -> bool,
) -> Vec<String>
where
    S: Stream<Item = watcher::Result<watcher::Event<Service>>> + Unpin,
{
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    for _ in 0..20 {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => {
                seen.push(format!("nothing more within {limit:?}"));
                break;
            }
            Ok(None) => {
                seen.push("stream ended".into());
                break;
            }
            Ok(Some(Err(e))) => seen.push(format!("error: {e}")),
            Ok(Some(Ok(event))) => {
                let name = |s: &Service| s.metadata.name.clone().unwrap_or_default();
                seen.push(match &event {
                    watcher::Event::Init => "Init".into(),
                    watcher::Event::InitApply(s) => format!("InitApply {}", name(s)),
                    watcher::Event::InitDone => "InitDone".into(),
                    watcher::Event::Apply(s) => format!("Apply {}", name(s)),
                    watcher::Event::Delete(s) => format!("Delete {}", name(s)),
                });
                if done(&event) {
                    break;
                }
            }
        }
    }
    seen
}

async fn check_watch(t: &Target, f: &mut Finding) -> Result<()> {
    let api: Api<Service> = t.api();
    for (label, config, value) in [
        ("list-watch", watcher::Config::default(), "1"),
        (
            "streaming list",
            watcher::Config::default().streaming_lists(),
            "2",
        ),
    ] {
        let mut stream = watcher(api.clone(), config).boxed();
        let init = watch_until(&mut stream, WATCH_LIMIT, |e| {
            matches!(e, watcher::Event::InitDone)
        })
        .await;
        f.expect(
            &format!("{label}: initial events"),
            init.join(", "),
            "Init, InitApply web, InitDone",
        );
        let patch = json!({"metadata": {"annotations": {"ironlb.io/watched": value}}});
        api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let change = watch_until(&mut stream, WATCH_LIMIT, |e| match e {
            watcher::Event::Apply(s) => s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("ironlb.io/watched"))
                .is_some_and(|v| v == value),
            _ => false,
        })
        .await;
        f.expect(
            &format!("{label}: events after a change"),
            change.join(", "),
            "Apply web",
        );
    }
    Ok(())
}

async fn check_selectors(t: &Target, f: &mut Finding) -> Result<()> {
    let api: Api<ConfigMap> = t.api();
    for (name, labels) in [
        ("config", json!({"app": "ironlb", "tier": "a"})),
        ("other", json!({"app": "ironlb", "tier": "b"})),
        ("third", json!({})),
    ] {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "data": {"config": "peers: []\n"},
        }))?;
        api.create(&PostParams::default(), &cm).await?;
    }
    let list = |params: ListParams| {
        let api = api.clone();
        async move {
            match api.list(&params).await {
                Ok(list) => names(&list.items),
                Err(e) => outcome::<()>(&Err(e)),
            }
        }
    };
    let cases: &[(&str, ListParams, &str)] = &[
        (
            "fields metadata.name=config",
            ListParams::default().fields("metadata.name=config"),
            "config",
        ),
        (
            "fields metadata.name!=config",
            ListParams::default().fields("metadata.name!=config"),
            "other,third",
        ),
        (
            "fields metadata.namespace=<ns>",
            ListParams::default().fields(&format!("metadata.namespace={}", t.ns())),
            "config,other,third",
        ),
        (
            "labels app=ironlb",
            ListParams::default().labels("app=ironlb"),
            "config,other",
        ),
        (
            "labels tier in (a,b),app",
            ListParams::default().labels("tier in (a,b),app"),
            "config,other",
        ),
        (
            "labels tier!=a",
            ListParams::default().labels("tier!=a"),
            "other,third",
        ),
        (
            "labels !tier",
            ListParams::default().labels("!tier"),
            "third",
        ),
        (
            "labels app=ironlb and fields metadata.name=other",
            ListParams::default()
                .labels("app=ironlb")
                .fields("metadata.name=other"),
            "other",
        ),
        (
            "labels app in (a (malformed)",
            ListParams::default().labels("app in (a"),
            "400 BadRequest",
        ),
        (
            "fields data.config=x (unsupported field)",
            ListParams::default().fields("data.config=x"),
            "400 BadRequest",
        ),
    ];
    for (key, params, want) in cases {
        f.expect(key, list(params.clone()).await, want);
    }
    // The agent's ConfigMap watch: a watcher with the field selector.
    let mut stream = watcher(
        Api::<ConfigMap>::namespaced(t.client.clone(), t.ns()),
        watcher::Config::default().fields("metadata.name=config"),
    )
    .boxed();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WATCH_LIMIT;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, stream.next()).await {
        match event {
            Ok(watcher::Event::InitApply(cm)) => seen.push(cm.metadata.name.unwrap_or_default()),
            Ok(watcher::Event::InitDone) => break,
            Ok(_) => {}
            Err(e) => {
                seen.push(format!("error: {e}"));
                break;
            }
        }
        if seen.len() > 5 {
            break;
        }
    }
    f.expect(
        "watcher fields metadata.name=config",
        seen.join(","),
        "config",
    );
    Ok(())
}

async fn check_not_found(t: &Target, f: &mut Finding) -> Result<()> {
    let ns = t.ns();
    let status = |result: Result<Service, kube::Error>| -> String {
        match result {
            Err(kube::Error::Api(s)) => {
                let details = s
                    .details
                    .clone()
                    .unwrap_or_else(|| serde_json::from_value(json!({})).expect("empty details"));
                format!(
                    "{} {} | {} | details name={:?} group={:?} kind={:?}",
                    s.code, s.reason, s.message, details.name, details.group, details.kind
                )
            }
            other => outcome(&other),
        }
    };
    f.expect_that(
        "kube-rs get Service",
        status(t.api::<Service>().get("nope").await),
        "404 NotFound",
        |s| s.starts_with("404 NotFound"),
    );
    f.expect_that(
        "kube-rs get Service in a missing namespace",
        status(
            Api::<Service>::namespaced(t.client.clone(), "ilb-conf-missing")
                .get("nope")
                .await,
        ),
        "404 NotFound",
        |s| s.starts_with("404 NotFound"),
    );
    let pool = t
        .metallb("IPAddressPool", "ipaddresspools")
        .get("nope")
        .await;
    f.expect_that(
        "kube-rs get IPAddressPool",
        match pool {
            Err(kube::Error::Api(s)) => {
                let d = s.details.clone();
                format!(
                    "{} {} | {} | details name={:?} group={:?} kind={:?}",
                    s.code,
                    s.reason,
                    s.message,
                    d.as_ref().map(|d| d.name.clone()),
                    d.as_ref().map(|d| d.group.clone()),
                    d.as_ref().map(|d| d.kind.clone())
                )
            }
            other => outcome(&other),
        },
        "404 NotFound",
        |s| s.starts_with("404 NotFound"),
    );
    let got = t.kubectl(&["get", "service", "nope", "-n", ns]).await?;
    f.expect(
        "kubectl get service nope",
        t.summary(&got),
        "exit 1: Error from server (NotFound): services \"nope\" not found",
    );
    let empty = t
        .kubectl(&["get", "services", "-n", "ilb-conf-missing"])
        .await?;
    f.note(
        "kubectl get services in a missing namespace",
        format!("{} / stderr: {}", t.summary(&empty), empty.stderr.trim()),
    );
    let kind = t.kubectl(&["get", "frobnitzes", "-n", ns]).await?;
    f.expect(
        "kubectl get of an unknown kind",
        t.summary(&kind),
        "exit 1: error: the server doesn't have a resource type \"frobnitzes\"",
    );
    let deleted = t.kubectl(&["delete", "service", "nope", "-n", ns]).await?;
    f.expect(
        "kubectl delete service nope",
        t.summary(&deleted),
        "exit 1: Error from server (NotFound): services \"nope\" not found",
    );
    Ok(())
}

async fn check_endpointslice(t: &Target, f: &mut Finding) -> Result<()> {
    let api: Api<EndpointSlice> = t.api();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {
            "name": "web-abc12",
            "labels": {"kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "ironlb-test"},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["192.0.2.20"], "conditions": {"ready": true}, "nodeName": "node-1"},
            {"addresses": ["192.0.2.21"], "conditions": {"ready": false}, "nodeName": "node-2"},
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))?;
    let created = api.create(&PostParams::default(), &slice).await;
    f.expect("create", outcome(&created), "ok");
    let listed = api
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await?;
    f.expect(
        "list kubernetes.io/service-name=web",
        names(&listed.items),
        "web-abc12",
    );
    if let Some(read) = listed.items.first() {
        f.note("endpoints read back", canonical(&to_json(&read.endpoints)));
        f.note("ports read back", canonical(&to_json(&read.ports)));
        f.note("addressType read back", read.address_type.clone());
    }
    f.expect(
        "list kubernetes.io/service-name=other",
        names(
            &api.list(&ListParams::default().labels("kubernetes.io/service-name=other"))
                .await?
                .items,
        ),
        "",
    );
    let table = t.kubectl(&["get", "endpointslices", "-n", t.ns()]).await?;
    f.note("kubectl get endpointslices", table_without_age(&table));
    Ok(())
}

async fn check_kubectl_wide(t: &Target, f: &mut Finding) -> Result<()> {
    let ran = t
        .kubectl(&["get", "svc", "web", "-n", t.ns(), "-o", "wide"])
        .await?;
    f.expect("exit", format!("{:?}", ran.code), "Some(0)");
    let mut lines = ran.stdout.lines();
    let header = columns(lines.next().unwrap_or_default());
    let row = columns(lines.next().unwrap_or_default());
    f.expect(
        "columns",
        header.join("|"),
        "NAME|TYPE|CLUSTER-IP|EXTERNAL-IP|PORT(S)|AGE|SELECTOR",
    );
    let cell = |name: &str| -> Option<&str> {
        header
            .iter()
            .position(|h| h == name)
            .and_then(|i| row.get(i))
            .map(String::as_str)
    };
    f.expect("TYPE", cell("TYPE").unwrap_or_default(), "LoadBalancer");
    f.expect(
        "CLUSTER-IP",
        cluster_ip_class(cell("CLUSTER-IP")),
        "an address in the service range",
    );
    f.expect(
        "EXTERNAL-IP",
        cell("EXTERNAL-IP").unwrap_or_default(),
        INGRESS_IP,
    );
    f.note("PORT(S)", ports_cell(cell("PORT(S)").unwrap_or_default()));
    f.expect("SELECTOR", cell("SELECTOR").unwrap_or_default(), "app=web");
    Ok(())
}

async fn check_kubectl_create_list(t: &Target, f: &mut Finding) -> Result<()> {
    let list = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: listed-a
  data:
    k: v
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: listed-b
- apiVersion: v1
  kind: Service
  metadata:
    name: listed-svc
  spec:
    selector:
      app: listed
    ports:
    - port: 80
- apiVersion: metallb.io/v1beta1
  kind: IPAddressPool
  metadata:
    name: listed-pool
  spec:
    addresses:
    - 203.0.113.16/28
";
    let created = t
        .kubectl_in(&["create", "-n", t.ns(), "-f", "-"], Some(list))
        .await?;
    f.expect(
        "kubectl create -f (kind: List)",
        t.summary(&created),
        "exit 0: configmap/listed-a created | configmap/listed-b created | service/listed-svc created | \
         ipaddresspool.metallb.io/listed-pool created",
    );
    let got = t
        .kubectl(&[
            "get",
            "-n",
            t.ns(),
            "-o",
            "name",
            "configmap/listed-a",
            "configmap/listed-b",
            "service/listed-svc",
            "ipaddresspool/listed-pool",
        ])
        .await?;
    f.expect(
        "kubectl get -o name",
        t.summary(&got),
        "exit 0: configmap/listed-a | configmap/listed-b | service/listed-svc | \
         ipaddresspool.metallb.io/listed-pool",
    );
    let again = t
        .kubectl_in(&["create", "-n", t.ns(), "-f", "-"], Some(list))
        .await?;
    f.note("kubectl create -f (kind: List) again", t.summary(&again));

    // Several documents in one file, two of them bad: each bad one is refused with its kind named, the rest made.
    let documents = "apiVersion: v1
kind: ConfigMap
metadata: {name: doc-good}
data: {k: v}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: doc-number}
data: {k: 1}
---
apiVersion: v1
kind: Service
metadata: {name: doc-colour}
spec: {ports: [{port: 80}], colour: blue}
";
    let created = t
        .kubectl_in(&["create", "-n", t.ns(), "-f", "-"], Some(documents))
        .await?;
    f.expect(
        "kubectl create -f (three documents, two bad)",
        refusals(&t.summary_both(&created)),
        "exit 1: configmap/doc-good created | Error from server (BadRequest): error when creating \"STDIN\": \
         ConfigMap in version \"v1\" cannot be handled as a ConfigMap: (why) | Error from server (BadRequest): \
         error when creating \"STDIN\": Service in version \"v1\" cannot be handled as a Service: strict decoding \
         error: unknown field \"spec.colour\"",
    );
    Ok(())
}

/// A kubectl summary with the decoder's own words cut from "cannot be handled as" errors (Go's JSON decoder and
/// serde word a type error differently); strict decoding errors, worded by the API server, stay whole.
fn refusals(summary: &str) -> String {
    summary
        .split(" | ")
        .map(|line| match line.find(" cannot be handled as a ") {
            Some(at) if !line.contains("strict decoding error") => {
                let rest = &line[at..];
                match rest.find(": ") {
                    Some(colon) => format!("{}: (why)", &line[..at + colon]),
                    None => line.to_owned(),
                }
            }
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

async fn check_kubectl_create_service(t: &Target, f: &mut Finding) -> Result<()> {
    let created = t
        .kubectl(&[
            "create",
            "service",
            "loadbalancer",
            "web2",
            "--tcp=80:8080",
            "-n",
            t.ns(),
        ])
        .await?;
    f.expect(
        "kubectl create service loadbalancer",
        t.summary(&created),
        "exit 0: service/web2 created",
    );
    let read = match t.api::<Service>().get("web2").await {
        Ok(svc) => {
            let spec = svc.spec.unwrap_or_default();
            format!(
                "type={} selector={} ports={}",
                spec.type_.unwrap_or_default(),
                canonical(&to_json(&spec.selector)),
                spec.ports
                    .unwrap_or_default()
                    .iter()
                    .map(|p| format!("{}:{}", p.port, canonical(&to_json(&p.target_port))))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
        failed => outcome(&failed),
    };
    f.expect(
        "web2 read back",
        read,
        r#"type=LoadBalancer selector={"app":"web2"} ports=80:8080"#,
    );
    let dry = t
        .kubectl(&[
            "create",
            "service",
            "loadbalancer",
            "web3",
            "--tcp=80:8080",
            "-n",
            t.ns(),
            "--dry-run=server",
        ])
        .await?;
    f.note("kubectl create service --dry-run=server", t.summary(&dry));
    f.expect(
        "get after a server dry run",
        outcome(&t.api::<Service>().get("web3").await),
        "404 NotFound",
    );
    Ok(())
}

/// One observation that differs between the runs.
struct Difference<'a> {
    check: &'static str,
    key: &'a str,
    lab: Option<&'a str>,
    real: Option<&'a str>,
}

fn differences<'a>(lab: &'a [Finding], real: &'a [Finding]) -> Vec<Difference<'a>> {
    let mut out = Vec::new();
    for (l, r) in lab.iter().zip(real) {
        assert_eq!(l.check, r.check, "both runs make the checks in one order");
        let (lm, rm) = (l.as_map(), r.as_map());
        let keys: BTreeSet<&str> = lm.keys().chain(rm.keys()).copied().collect();
        // Observation order, then any the other run lacks.
        let mut ordered: Vec<&str> = r.observed.iter().map(|(k, _)| k.as_str()).collect();
        ordered.extend(
            keys.iter()
                .filter(|k| !ordered.contains(k))
                .copied()
                .collect::<Vec<_>>(),
        );
        for key in ordered {
            let (lv, rv) = (lm.get(key).copied(), rm.get(key).copied());
            if lv != rv {
                out.push(Difference {
                    check: l.check,
                    key,
                    lab: lv,
                    real: rv,
                });
            }
        }
    }
    out
}

fn known(check: &str, key: &str) -> Option<&'static Known> {
    KNOWN_DIFFERENCES
        .iter()
        .find(|k| k.check == check && k.key == key)
}

/// Both runs side by side, `=` where they agree, `~` for a known difference and `!` for a new one.
fn report(lab: &[Finding], real: &[Finding]) -> String {
    let mut out = String::new();
    for (l, r) in lab.iter().zip(real) {
        let _ = writeln!(out, "== {}", l.check);
        let (lm, rm) = (l.as_map(), r.as_map());
        let mut keys: Vec<&str> = r.observed.iter().map(|(k, _)| k.as_str()).collect();
        for k in lm.keys().chain(rm.keys()) {
            if !keys.contains(k) {
                keys.push(k);
            }
        }
        for key in keys {
            let (lv, rv) = (lm.get(key).copied(), rm.get(key).copied());
            let mark = match () {
                _ if lv == rv => '=',
                _ if known(l.check, key).is_some() => '~',
                _ => '!',
            };
            if lv == rv {
                let _ = writeln!(out, "  {mark} {key}: {}", rv.unwrap_or("<absent>"));
            } else {
                let _ = writeln!(
                    out,
                    "  {mark} {key}:\n      real: {}\n      lab:  {}",
                    rv.unwrap_or("<absent>"),
                    lv.unwrap_or("<absent>")
                );
            }
        }
        for unmet in &r.unmet {
            let _ = writeln!(out, "  REAL UNMET {unmet}");
        }
    }
    out
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

#[test]
fn lab_api_server_answers_as_the_real_one_does() -> Result<()> {
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let started = Instant::now();
    let namespace = format!("ilb-conf-{}", std::process::id());
    let kubectl = plane.bin_dir().join("kubectl");
    let (lab, real) = block_on(async {
        let server = ApiServer::start("127.0.0.1:0".parse()?).await?;
        let dir = tempfile::tempdir()?;
        let lab_kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&lab_kubeconfig, &server.url())?;
        let lab = Target::new(&lab_kubeconfig, &kubectl, &namespace).await?;
        let real = Target::new(plane.kubeconfig_path(), &kubectl, &namespace).await?;
        let (lab_findings, real_findings) = tokio::join!(conformance(&lab), conformance(&real));
        drop((lab, real));
        server.shutdown().await?;
        anyhow::Ok((lab_findings, real_findings))
    })?;
    println!(
        "lab API conformance, {} checks against both servers in {:.1?}\n{}",
        CHECKS.len(),
        started.elapsed(),
        report(&lab, &real)
    );

    let listed: Vec<&str> = CHECKS.iter().map(|(name, _)| *name).collect();
    for findings in [&lab, &real] {
        let ran: Vec<&str> = findings.iter().map(|f| f.check).collect();
        assert_eq!(
            ran, listed,
            "CHECKS lists every check, in the order they run"
        );
    }
    let mut failures = Vec::new();
    for finding in &real {
        if let Some(error) = &finding.error {
            failures.push(format!("real server, {}: stopped: {error}", finding.check));
        }
        for unmet in &finding.unmet {
            failures.push(format!("real server, {}: {unmet}", finding.check));
        }
    }
    if !failures.is_empty() {
        bail!(
            "the real API server is the reference, and it did not pass:\n{}\n--- kube-apiserver log ---\n{}",
            failures.join("\n"),
            plane.log_tail("kube-apiserver", 40)
        );
    }
    let diffs = differences(&lab, &real);
    for d in &diffs {
        if known(d.check, d.key).is_none() {
            failures.push(format!(
                "new difference in {} / {}:\n    real: {}\n    lab:  {}",
                d.check,
                d.key,
                d.real.unwrap_or("<absent>"),
                d.lab.unwrap_or("<absent>")
            ));
        }
    }
    for k in KNOWN_DIFFERENCES {
        if !diffs.iter().any(|d| d.check == k.check && d.key == k.key) {
            failures.push(format!(
                "known difference {} / {} no longer differs: remove it from KNOWN_DIFFERENCES",
                k.check, k.key
            ));
        }
    }
    if !failures.is_empty() {
        bail!(
            "the lab API server differs from the real one:\n{}",
            failures.join("\n")
        );
    }
    Ok(())
}

/// The known differences as a Markdown table, for the README. Also checks the list itself: every entry names a
/// check that exists, says why, and appears once.
#[test]
fn known_differences_table() {
    let mut seen = BTreeSet::new();
    let mut table = String::from("| check | observation | why the lab differs |\n|---|---|---|\n");
    for k in KNOWN_DIFFERENCES {
        assert!(
            CHECKS.iter().any(|(name, _)| *name == k.check),
            "KNOWN_DIFFERENCES names a check that does not exist: {}",
            k.check
        );
        assert!(
            !k.reason.trim().is_empty(),
            "{} / {} has no reason",
            k.check,
            k.key
        );
        assert!(
            seen.insert((k.check, k.key)),
            "{} / {} is listed twice",
            k.check,
            k.key
        );
        let _ = writeln!(
            table,
            "| `{}` | {} | {} |",
            k.check,
            k.key.replace('|', "\\|"),
            k.reason.replace('|', "\\|")
        );
    }
    println!("{table}");
}
