//! Configuration as users write it, end to end in the lab: objects applied with the real `kubectl`, real agents in
//! node namespaces, and `arping` from the client namespace. Needs root; CI runs as root.
//!
//! The pool addresses sit in the lab's node subnet (192.0.2.0/24), so that a node is eligible to announce them.

mod netns_support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ironlb::lab::cluster::Lab;
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{Api, ListParams};
use netns_support::{Logs, skip, wait_until};

const SETTLE: Duration = Duration::from_secs(30);

/// Applies YAML with the real kubectl against the lab's API server.
fn kubectl(lab: &Lab, args: &[&str], stdin_yaml: Option<&str>) {
    let dir = &lab.options().dir;
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(&lab.kubeconfig).args(args);
    if let Some(yaml) = stdin_yaml {
        let file = dir.join(format!("apply-{}.yaml", std::process::id()));
        std::fs::write(&file, yaml).expect("writing the manifest");
        cmd.arg("-f").arg(&file);
    }
    let out = cmd
        .output()
        .expect("running kubectl (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn ingress(lab: &Lab, name: &str) -> Vec<String> {
    let svc: Service = Api::namespaced(lab.client.clone(), "default")
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
    let prefix = "ilb-cfg";
    let mut lab = Lab::start(netns_support::options(prefix, 2, 0, "enforce", &[]))
        .await
        .unwrap();
    let _logs = Logs::of(&lab);
    // The lab's own configuration goes; the documented one and the unusable objects come in, with kubectl.
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
        !ingress(&lab, "doc").await.is_empty()
    })
    .await;
    let ips = ingress(&lab, "doc").await;
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
    assert_eq!(ingress(&lab, "doc").await, ips, "the restart moved no IP");
}
