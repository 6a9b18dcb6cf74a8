//! Configuration as users write it, end to end in the lab: objects applied with the real `kubectl`, real agents in
//! node namespaces, and `arping` from the client namespace. Needs root; CI runs as root.
//!
//! The pool addresses sit in the lab's node subnet (192.0.2.0/24), so that a node is eligible to announce them.

mod netns_support;
mod real_api_support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ironlb::lab::cluster::{ApiChoice, Lab};
use k8s_openapi::api::core::v1::{Event, Service};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use netns_support::{Logs, skip, wait_until};
use serde::Deserialize;

const SETTLE: Duration = Duration::from_secs(30);

/// Runs the real kubectl against the lab's API server, with `yaml` as its `-f` file; panics on failure.
fn kubectl(lab: &Lab, args: &[&str], yaml: Option<&str>) {
    if let Err(why) = try_kubectl(lab, args, yaml) {
        panic!("{why}");
    }
}

/// A lab of two agents whose own pool and L2Advertisement are gone, for a test to apply its configuration.
async fn lab_without_config(prefix: &str) -> Lab {
    lab_without_config_on(prefix, ApiChoice::Embedded).await
}

/// [`lab_without_config`] on the given API server.
async fn lab_without_config_on(prefix: &str, api: ApiChoice) -> Lab {
    let options = ironlb::lab::cluster::LabOptions {
        api,
        ..netns_support::options(prefix, 2, 0, "enforce", &[])
    };
    let lab = Lab::start(options).await.unwrap();
    kubectl(
        &lab,
        &[
            "-n",
            "metallb-system",
            "delete",
            "l2advertisement,ipaddresspool",
            "lab",
        ],
        None,
    );
    lab
}

async fn ingress(lab: &Lab, name: &str, namespace: &str) -> Vec<String> {
    let svc: Service = Api::namespaced(lab.client.clone(), namespace)
        .get(name)
        .await
        .expect("the Service");
    svc.status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .collect()
}

fn log_of(lab: &Lab, node: &str) -> String {
    std::fs::read_to_string(lab.agent_log(node)).unwrap_or_default()
}

/// The configuration of MetalLB's Layer 2 documentation: an L2Advertisement with no `spec` (every pool, every node).
const DOCUMENTED: &str = "\
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: doc, namespace: metallb-system}
spec: {addresses: [192.0.2.210-192.0.2.240]}
---
apiVersion: metallb.io/v1beta1
kind: L2Advertisement
metadata: {name: doc, namespace: metallb-system}
";

/// Objects among the valid ones that IronLB cannot use: one that does not even decode (the lab API server does no
/// schema validation, so it stores it), and one MetalLB's schema admits whose value is no LOCAL_PREF.
const UNUSABLE: &str = "\
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: broken, namespace: metallb-system}
spec: {addresses: 192.0.2.250}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: negative-pref, namespace: metallb-system}
spec: {localPref: -1}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallbs_documented_l2_config_works_and_an_unusable_object_is_named_not_fatal() {
    if skip() {
        return;
    }
    let mut lab = lab_without_config("ilb-cfg").await;
    let _logs = Logs::of(&lab);
    // The documented configuration and the unusable objects come in with kubectl.
    kubectl(
        &lab,
        &["apply"],
        Some(&format!("{DOCUMENTED}---\n{UNUSABLE}")),
    );

    let created = Instant::now();
    lab.create_demo_service("doc", false, false, None)
        .await
        .unwrap();
    let took = wait_until("an IP for default/doc", SETTLE, || async {
        !ingress(&lab, "doc", "default").await.is_empty()
    })
    .await;
    let ips = ingress(&lab, "doc", "default").await;
    println!("Service create -> IP in status: {} ms", took.as_millis());
    let vip: IpAddr = ips[0].parse().unwrap();
    assert!(
        matches!(vip, IpAddr::V4(v) if (210..=240).contains(&v.octets()[3])),
        "{ips:?} is from pool doc"
    );
    let rows = lab.wait_announced(SETTLE).await.unwrap();
    let owner = rows[0].owners[0].clone();
    let owner_mac = lab.node(&owner).unwrap().mac.clone();
    println!(
        "announced by {owner} {} ms after the Service was created",
        created.elapsed().as_millis()
    );
    assert_eq!(
        lab.resolve_from_client(vip).as_deref(),
        Some(owner_mac.as_str()),
        "ARP for {vip} is answered by its owner"
    );

    // The unusable objects are named: a Warning Event on each (the allocator's), a log line and a metric on every
    // agent.
    let events: Api<Event> = Api::namespaced(lab.client.clone(), "metallb-system");
    for (kind, name, field) in [
        ("IPAddressPool", "broken", "spec.addresses"),
        ("BGPAdvertisement", "negative-pref", "spec.localPref"),
    ] {
        wait_until(
            &format!("a Warning Event on {kind}/{name}"),
            SETTLE,
            || async {
                events
                    .list(&ListParams::default())
                    .await
                    .map(|l| {
                        l.items.iter().any(|e| {
                            e.involved_object.kind.as_deref() == Some(kind)
                                && e.involved_object.name.as_deref() == Some(name)
                                && e.reason.as_deref() == Some("InvalidConfiguration")
                                && e.message.as_deref().unwrap_or("").contains(field)
                        })
                    })
                    .unwrap_or(false)
            },
        )
        .await;
        for node in lab.node_names() {
            let log = log_of(&lab, &node);
            assert!(
                log.lines()
                    .any(|l| l.contains(&format!("{kind}/{name}: {field}"))),
                "the log of {node} names {kind}/{name} and {field}"
            );
            let metrics = lab.metrics(&node).unwrap();
            let line = format!("ironlb_config_objects_invalid{{kind=\"{kind}\"}} 1");
            assert!(
                metrics.lines().any(|l| l == line),
                "{node} exports {line:?}"
            );
        }
    }

    // Every agent's ConfigurationState (MetalLB's speaker-<node>) says Invalid and names both objects.
    let states: Api<DynamicObject> = Api::namespaced_with(
        lab.client.clone(),
        "ironlb-system",
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "metallb.io",
            "v1beta1",
            "ConfigurationState",
        )),
    );
    for node in lab.node_names() {
        let name = format!("speaker-{node}");
        wait_until(
            &format!("ConfigurationState {name} Invalid, naming both objects"),
            SETTLE,
            || async {
                states.get(&name).await.is_ok_and(|s| {
                    let status = &s.data["status"];
                    let summary = status["errorSummary"].as_str().unwrap_or("");
                    status["result"] == "Invalid"
                        && status["conditions"][0]["reason"] == "ConfigurationError"
                        && summary.contains("IPAddressPool/broken: spec.addresses")
                        && summary.contains("BGPAdvertisement/negative-pref: spec.localPref")
                        && s.metadata
                            .labels
                            .unwrap_or_default()
                            .get("metallb.io/node-name")
                            == Some(&node)
                })
            },
        )
        .await;
    }

    // A rolling restart: every agent starts afresh against the unusable objects, and the VIP is announced again.
    // No agent of before is left, so an answer proves a restarted agent announces.
    for node in lab.node_names() {
        lab.kill_agent(&node);
    }
    for node in lab.node_names() {
        lab.start_agent(&node).unwrap();
    }
    let took = wait_until(
        "ARP for the VIP after every agent restarted",
        SETTLE,
        || async { lab.resolve_from_client(vip).is_some() },
    )
    .await;
    println!(
        "announced again {} ms after all agents restarted",
        took.as_millis()
    );
    assert_eq!(
        ingress(&lab, "doc", "default").await,
        ips,
        "the restart moved no IP"
    );
}

/// One runnable example of `tests/fixtures/metallb-docs/scenarios.yaml`.
#[derive(serde::Deserialize, Debug)]
struct Scenario {
    file: String,
    mode: String,
    #[serde(default)]
    extra: String,
    service: ScenarioService,
    #[serde(default)]
    node_labels: BTreeMap<String, String>,
    expect_pool: String,
    /// False when the example's own Service is one Kubernetes would refuse; the scenario's Service stands in.
    #[serde(default = "yes")]
    file_services: bool,
    /// What a real API server says when it refuses one of the example's objects (the lab's accepts them).
    #[serde(default)]
    real_server_refuses: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(serde::Deserialize, Debug)]
struct ScenarioService {
    namespace: String,
    #[serde(default)]
    namespace_labels: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    dual_stack: bool,
}

/// The L2Advertisements of these examples announce only on interfaces the lab's nodes do not have (eth3, eno1,
/// ens18): their Services get an IP, and rightly no announcement.
const NO_LAB_INTERFACE: &[&str] = &[
    "metallb-docs/configuration-advanced-l2-07-interfaces-and-node-selector.yaml",
    "metallb-docs/configuration-advanced-l2-08-interfaces-union.yaml",
];

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The example's text with its addresses moved into documentation ranges, as TESTING.md requires of every test
/// that touches the network (address-map.txt, longest first).
fn mapped(text: &str) -> String {
    let map = std::fs::read_to_string(fixtures().join("metallb-docs/address-map.txt")).unwrap();
    let text = map
        .lines()
        .filter_map(|l| l.split_once(' '))
        .fold(text.to_string(), |t, (from, to)| t.replace(from, to));
    // advanced-bgp-01 aggregates its /24 pool into one /24 route; mapped, the pool is a /27, and an aggregate shorter
    // than the pool's prefix is refused (by MetalLB and IronLB alike): keep the meaning, one aggregate of the pool.
    text.replace("aggregationLength: 24", "aggregationLength: 27")
}

fn service_yaml(name: &str, s: &ScenarioService) -> String {
    let svc = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": s.namespace, "labels": s.labels, "annotations": s.annotations},
        "spec": {
            "type": "LoadBalancer",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "ipFamilyPolicy": if s.dual_stack { "PreferDualStack" } else { "SingleStack" },
            "ipFamilies": if s.dual_stack { serde_json::json!(["IPv4", "IPv6"]) } else { serde_json::json!(["IPv4"]) },
        },
    });
    serde_yaml::to_string(&svc).unwrap()
}

/// An EndpointSlice for the Service with one ready endpoint per lab node.
fn endpoint_slice(lab: &Lab, namespace: &str, service: &str) -> String {
    let endpoints: Vec<_> = lab
        .topology
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({"addresses": [n.ipv4.to_string()], "nodeName": n.name,
                "conditions": {"ready": true, "serving": true, "terminating": false}})
        })
        .collect();
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-lab"), "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    });
    serde_yaml::to_string(&slice).unwrap()
}

/// Runs kubectl; returns its error text instead of panicking, so one example's failure is reported with the others.
fn try_kubectl(lab: &Lab, args: &[&str], yaml: Option<&str>) -> Result<(), String> {
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(&lab.kubeconfig).args(args);
    if let Some(yaml) = yaml {
        let file = lab.options().dir.join("kubectl-input.yaml");
        std::fs::write(&file, yaml).map_err(|e| e.to_string())?;
        cmd.arg("-f").arg(&file);
    }
    let out = cmd.output().map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// What one example gave: the Services it checked, or why it failed.
async fn run_example(lab: &Lab, scenario: &Scenario) -> Result<Vec<String>, String> {
    let text = mapped(
        &std::fs::read_to_string(fixtures().join(&scenario.file))
            .map_err(|e| format!("reading {}: {e}", scenario.file))?,
    );
    // The metallb.io objects (and Services) of the example; other kinds (a Deployment) are not the lab's business.
    let mut config = Vec::new();
    let mut services = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&format!("{text}\n---\n{}", scenario.extra)) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| e.to_string())?;
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let out = serde_yaml::to_string(&value).map_err(|e| e.to_string())?;
        if api_version.starts_with("metallb.io/") {
            config.push(out);
        } else if kind == "Service" && scenario.file_services {
            let name = value["metadata"]["name"].as_str().unwrap_or_default();
            services.push((name.to_string(), out));
        }
    }
    let s = &scenario.service;
    if s.namespace != "default" {
        let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": s.namespace, "labels": s.namespace_labels}});
        try_kubectl(lab, &["apply"], Some(&serde_yaml::to_string(&ns).unwrap()))?;
    }
    for node in lab.node_names() {
        for (k, v) in &scenario.node_labels {
            let label = format!("{k}={v}");
            try_kubectl(lab, &["label", "node", &node, "--overwrite", &label], None)?;
        }
    }
    try_kubectl(lab, &["apply"], Some(&config.join("---\n")))?;
    // The example's own Services when it has some (they may ask for IPs that a second Service could not share),
    // otherwise one Service as the scenario describes.
    if services.is_empty() {
        services.push(("example".into(), service_yaml("example", s)));
    }
    let namespace = if services.len() > 1 || services[0].0 != "example" {
        "default"
    } else {
        s.namespace.as_str()
    };
    for (name, yaml) in &services {
        try_kubectl(lab, &["apply", "-n", namespace], Some(yaml))?;
        // A ready endpoint on every node, as kube-controller-manager would publish for running pods: a Service
        // without one is not announced.
        try_kubectl(lab, &["apply"], Some(&endpoint_slice(lab, namespace, name)))?;
    }
    let api: Api<Service> = Api::namespaced(lab.client.clone(), namespace);
    let mut checked = Vec::new();
    for (name, _) in &services {
        let limit = Instant::now() + Duration::from_secs(10);
        let svc = loop {
            let svc = api.get(name).await.map_err(|e| e.to_string())?;
            let pool = svc.annotations().get("ironlb.io/pool").cloned();
            let announced = svc.annotations().get("ironlb.io/announced-by").cloned();
            let wants_owner =
                scenario.mode == "l2" && !NO_LAB_INTERFACE.contains(&scenario.file.as_str());
            if pool.is_some() && (!wants_owner || announced.is_some()) {
                break svc;
            }
            if Instant::now() > limit {
                return Err(format!(
                    "{namespace}/{name}: after 10 s pool {pool:?}, announced by {announced:?}, status {:?}",
                    svc.status
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let pool = svc
            .annotations()
            .get("ironlb.io/pool")
            .cloned()
            .unwrap_or_default();
        if pool != scenario.expect_pool {
            return Err(format!(
                "{namespace}/{name}: pool {pool}, expected {}",
                scenario.expect_pool
            ));
        }
        let owner = svc.annotations().get("ironlb.io/announced-by").cloned();
        checked.push(format!(
            "{namespace}/{name} {:?} from {pool}, announced by {owner:?}",
            ingress(lab, name, namespace).await
        ));
    }
    for node in lab.node_names() {
        let metrics = lab.metrics(&node).map_err(|e| e.to_string())?;
        if let Some(line) = metrics
            .lines()
            .find(|l| l.starts_with("ironlb_config_objects_invalid{"))
        {
            return Err(format!(
                "the agent of {node} left configuration out: {line}"
            ));
        }
    }
    Ok(checked)
}

/// Undoes an example: its objects, Services, namespace and node labels.
fn reset(lab: &Lab, scenario: &Scenario) {
    let kinds =
        "ipaddresspools,l2advertisements,bgpadvertisements,bgppeers,communities,bfdprofiles";
    let _ = try_kubectl(
        lab,
        &["-n", "metallb-system", "delete", kinds, "--all"],
        None,
    );
    let _ = try_kubectl(
        lab,
        &[
            "-n",
            "default",
            "delete",
            "services,endpointslices",
            "--all",
        ],
        None,
    );
    if scenario.service.namespace != "default" {
        let _ = try_kubectl(
            lab,
            &[
                "-n",
                &scenario.service.namespace,
                "delete",
                "services,endpointslices",
                "--all",
            ],
            None,
        );
        // On the real server, with no controller-manager to empty it, a deleted namespace would stay Terminating and
        // refuse the next example's objects; it is kept, and the next `apply` of it replaces its labels.
        if lab.api.real().is_none() {
            let _ = try_kubectl(
                lab,
                &["delete", "namespace", &scenario.service.namespace],
                None,
            );
        }
    }
    for node in lab.node_names() {
        for k in scenario.node_labels.keys() {
            let _ = try_kubectl(lab, &["label", "node", &node, &format!("{k}-")], None);
        }
        // The node keeps the hostname label Kubernetes gives it.
        let hostname = format!("kubernetes.io/hostname={node}");
        let _ = try_kubectl(
            lab,
            &["label", "node", &node, "--overwrite", &hostname],
            None,
        );
    }
}

/// Every object of MetalLB's configsamples and every configuration example of MetalLB's documentation, applied
/// with kubectl to a running lab one example at a time: its Service gets an IP from the expected pool, Layer 2
/// examples are announced (`ironlb.io/announced-by`), and the agent leaves nothing out. BGP examples are checked up
/// to allocation: their peers are addresses with no router behind them here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallbs_samples_and_documentation_examples_work_through_kubectl() {
    if skip() {
        return;
    }
    run_corpus(lab_without_config("ilb-cfgdoc").await).await;
}

/// The same examples on a real kube-apiserver holding MetalLB's own CRDs, as a user who keeps them would: the
/// server validates every object against MetalLB's schema and applies its defaults, and the agents run as the
/// manifest's ServiceAccount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallbs_examples_work_on_the_real_api_server_with_metallbs_crds() {
    if skip() {
        return;
    }
    let Some(bin) = real_api_support::bin_dir_or_skip() else {
        return;
    };
    let api = ApiChoice::Real {
        bin,
        crds: real_api_support::metallb_crds().unwrap(),
    };
    run_corpus(lab_without_config_on("ilb-cfgreal", api).await).await;
}

async fn run_corpus(lab: Lab) {
    let _logs = Logs::of(&lab);
    let scenarios: Vec<Scenario> = serde_yaml::from_str(
        &std::fs::read_to_string(fixtures().join("metallb-docs/scenarios.yaml")).unwrap(),
    )
    .unwrap();
    assert!(scenarios.len() >= 50, "{} examples", scenarios.len());
    let mut failures = Vec::new();
    let real = lab.api.real().is_some();
    for scenario in &scenarios {
        let refusal = scenario.real_server_refuses.as_deref().filter(|_| real);
        match (run_example(&lab, scenario).await, refusal) {
            (Ok(checked), None) => println!("ok   {}: {}", scenario.file, checked.join("; ")),
            (Err(why), Some(expected)) if why.contains(expected) => {
                println!("ok   {}: refused as expected: {why}", scenario.file)
            }
            (Ok(checked), Some(expected)) => {
                let why =
                    format!("the real server should have refused it ({expected}): {checked:?}");
                println!("FAIL {}: {why}", scenario.file);
                failures.push(format!("{}: {why}", scenario.file));
            }
            (Err(why), _) => {
                println!("FAIL {}: {why}", scenario.file);
                failures.push(format!("{}: {why}", scenario.file));
            }
        }
        reset(&lab, scenario);
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n{}",
        failures.len(),
        scenarios.len(),
        failures.join("\n")
    );
}
