//! Tier: real `ironlb agent` processes against the real kube-apiserver and etcd (built from their Go modules), each
//! agent running as the ServiceAccount `ironlb-system/ironlb-agent` with only the RBAC of `deploy/ironlb.yaml`:
//! allocation, status and annotations, Events, the allocator Lease and its takeover, the per-node Leases, restarts
//! that move nothing, `ironlb status`, and MetalLB's own CRDs with MetalLB's documented configuration. Every test
//! fails if the API server refused any request of an agent, and names the refused request.
//!
//! The tests run one at a time (each runs its own control plane and agents; the machines have two cores).

#[path = "real_api_support/cluster.rs"]
mod cluster;
mod real_api_support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use cluster::{Crds, RealCluster, assert_no_ip_twice, lb_service, wait_for};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

const SETTLE: Duration = Duration::from_secs(30);

fn config_example() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/examples/metallb-config.yaml").to_string()
}

fn wait_ip(cluster: &RealCluster, name: &str) -> Result<Vec<String>> {
    wait_for(&format!("an IP for default/{name}"), SETTLE, || {
        cluster
            .ingress("default", name)
            .ok()
            .filter(|ips| !ips.is_empty())
    })
}

fn annotation(cluster: &RealCluster, name: &str, key: &str) -> Result<String> {
    let path = format!(
        "jsonpath={{.metadata.annotations.{}}}",
        key.replace('.', "\\.")
    );
    Ok(cluster
        .plane
        .kubectl_ok(&["-n", "default", "get", "service", name, "-o", &path])?
        .trim()
        .to_string())
}

fn events(cluster: &RealCluster, namespace: &str) -> Result<Vec<Value>> {
    let text = cluster
        .plane
        .kubectl_ok(&["-n", namespace, "get", "events", "-o", "json"])?;
    let list: Value = serde_json::from_str(&text)?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// The resource version of every object the agents write: the Services, MetalLB's status objects and the pools
/// (whose status the allocator writes).
fn resource_versions(cluster: &RealCluster) -> Result<String> {
    cluster.plane.kubectl_ok(&[
        "get",
        "-A",
        "services,servicel2statuses,servicebgpstatuses,configurationstates,ipaddresspools",
        "-o",
        "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion} {end}",
    ])
}

#[test]
fn agents_allocate_elect_and_report_as_their_service_account() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let mut cluster = RealCluster::start(plane, Crds::Ours)?;
    cluster
        .plane
        .kubectl_ok(&["apply", "-f", &config_example()])?;
    // A BGP peer with an MD5 password from a Secret, so the agents read it under their ServiceAccount. The peer is
    // a closed port on loopback: the session never comes up, which is not what this test is about.
    cluster.apply(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: bgp-auth, namespace: ironlb-system}\n\
         type: kubernetes.io/basic-auth\nstringData: {password: s3cret}\n---\n\
         apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: loopback, namespace: metallb-system}\n\
         spec: {myASN: 64512, peerASN: 64512, peerAddress: 127.0.0.1, peerPort: 9, passwordSecret: {name: bgp-auth}}\n\
         ---\napiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: loopback, namespace: metallb-system}\n\
         ---\napiVersion: v1\nkind: Node\nmetadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}\n\
         ---\napiVersion: v1\nkind: Node\nmetadata: {name: node-2, labels: {kubernetes.io/hostname: node-2}}\n",
    )?;
    cluster.start_agent("node-1")?;
    cluster.start_agent("node-2")?;
    let leader = wait_for("an allocator", SETTLE, || {
        cluster.lease_holder().ok().flatten()
    })?;
    println!("allocator: {leader}");

    let created = Instant::now();
    cluster.apply(&lb_service("web"))?;
    let ips = wait_ip(&cluster, "web")?;
    println!(
        "Service create -> IP in status on the real API server: {} ms",
        created.elapsed().as_millis()
    );
    ensure!(
        ips.iter().any(|ip| ip.starts_with("192.0.2.")),
        "{ips:?} from pool public"
    );
    assert_eq!(annotation(&cluster, "web", "ironlb.io/pool")?, "public");
    assert_eq!(
        annotation(&cluster, "web", "metallb.io/ip-allocated-from-pool")?,
        "public"
    );
    let allocated = wait_for("the IPAllocated Event", SETTLE, || {
        events(&cluster, "default")
            .ok()?
            .into_iter()
            .find(|e| e["involvedObject"]["name"] == "web" && e["reason"] == "IPAllocated")
    })?;
    println!("Event: {}", allocated["message"]);

    // Each agent keeps its own node Lease, written under its ServiceAccount.
    for node in ["node-1", "node-2"] {
        wait_for(&format!("the node Lease of {node}"), SETTLE, || {
            cluster
                .plane
                .kubectl_ok(&[
                    "-n",
                    "ironlb-system",
                    "get",
                    "lease",
                    &format!("ironlb-node-{node}"),
                ])
                .ok()
        })?;
    }

    // `ironlb status` reads the same Services through the real server.
    let status = std::process::Command::new(cluster::AGENT)
        .args(["status", "-o", "json", "--kubeconfig"])
        .arg(cluster.plane.kubeconfig_path())
        .output()?;
    ensure!(
        status.status.success(),
        "ironlb status: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let rows: Value = serde_json::from_slice(&status.stdout)?;
    let row = rows["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["service"] == "default/web")
        .cloned();
    ensure!(
        row.as_ref()
            .is_some_and(|r| r["vips"][0] == ips[0].as_str()),
        "ironlb status shows default/web with {}: {rows}",
        ips[0]
    );

    // Each agent read the password (a session starts only with it).
    for node in ["node-1", "node-2"] {
        wait_for(&format!("{node} to start its BGP session"), SETTLE, || {
            cluster
                .log_text(node)
                .contains("starting BGP session")
                .then_some(())
        })?;
    }

    // In steady state nothing is written.
    // The status objects are written just after the Service (each agent's ConfigurationState, the pools' status):
    // the window opens once a second has passed with no write at all, which a write loop never allows.
    let mut before = resource_versions(&cluster)?;
    wait_for("a second with no write", SETTLE, || {
        std::thread::sleep(Duration::from_secs(1));
        let now = resource_versions(&cluster).ok()?;
        let quiet = now == before;
        before = now;
        quiet.then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        resource_versions(&cluster)?,
        before,
        "writes in steady state"
    );
    cluster.assert_nothing_forbidden();
    cluster.passed();
    Ok(())
}

#[test]
fn the_allocator_is_taken_over_after_sigkill_and_sigterm_and_restarts_move_no_ip() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let mut cluster = RealCluster::start(plane, Crds::Ours)?;
    cluster
        .plane
        .kubectl_ok(&["apply", "-f", &config_example()])?;
    for node in ["node-1", "node-2"] {
        cluster.start_agent(node)?;
    }
    let first = wait_for("an allocator", SETTLE, || {
        cluster.lease_holder().ok().flatten()
    })?;
    let mut ips = std::collections::BTreeMap::new();
    for name in ["a", "b", "c"] {
        cluster.apply(&lb_service(name))?;
    }
    for name in ["a", "b", "c"] {
        ips.insert(name.to_string(), wait_ip(&cluster, name)?);
    }

    // SIGKILL: the others wait out the Lease as they saw it renewed.
    let killed = Instant::now();
    cluster.kill_agent(&first);
    let second = wait_for("a new allocator after SIGKILL", SETTLE, || {
        cluster
            .lease_holder()
            .ok()
            .flatten()
            .filter(|h| *h != first)
    })?;
    println!(
        "takeover after the allocator's SIGKILL: {} ms (Lease duration 5 s)",
        killed.elapsed().as_millis()
    );
    cluster.apply(&lb_service("d"))?;
    ips.insert("d".into(), wait_ip(&cluster, "d")?);
    cluster.start_agent(&first)?;

    // SIGTERM: the holder releases the Lease; the other takes it at its next look.
    std::thread::sleep(Duration::from_secs(2));
    let stopped = Instant::now();
    cluster.stop_agent(&second, Duration::from_secs(10))?;
    let third = wait_for("a new allocator after SIGTERM", SETTLE, || {
        cluster
            .lease_holder()
            .ok()
            .flatten()
            .filter(|h| *h != second)
    })?;
    println!(
        "takeover after the allocator's SIGTERM: {} ms (to {third})",
        stopped.elapsed().as_millis()
    );
    cluster.start_agent(&second)?;

    // Every agent restarts: adoption before allocation moves nothing.
    for node in cluster.running() {
        cluster.kill_agent(&node);
    }
    for node in ["node-1", "node-2"] {
        cluster.start_agent(node)?;
    }
    wait_for("an allocator after the restart", SETTLE, || {
        cluster.lease_holder().ok().flatten()
    })?;
    cluster.apply(&lb_service("e"))?;
    wait_ip(&cluster, "e")?;
    for (name, before) in &ips {
        assert_eq!(
            &cluster.ingress("default", name)?,
            before,
            "{name} kept its IP"
        );
    }
    assert_no_ip_twice(&ips);
    cluster.assert_nothing_forbidden();
    cluster.passed();
    Ok(())
}

/// A user who keeps MetalLB's own CRDs: MetalLB's documented L2Advertisement without `spec` works, and an object
/// MetalLB's schema admits but IronLB cannot use (a negative `localPref`; the schema says int32 with no minimum) is
/// named in a Warning Event while everything else works, also for an agent that starts after it.
#[test]
fn metallbs_own_crds_with_its_documented_config_and_an_unusable_object() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let mut cluster = RealCluster::start(plane, Crds::MetalLbs)?;
    cluster.apply(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: lab, namespace: metallb-system}\n\
         spec: {addresses: [192.0.2.210-192.0.2.240]}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: lab, namespace: metallb-system}\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\nmetadata: {name: negative-pref, namespace: metallb-system}\n\
         spec: {localPref: -1}\n",
    )?;
    cluster.start_agent("node-1")?;
    wait_for("an allocator", SETTLE, || {
        cluster.lease_holder().ok().flatten()
    })?;
    let created = Instant::now();
    cluster.apply(&lb_service("doc"))?;
    let ips = wait_ip(&cluster, "doc")?;
    println!(
        "with MetalLB's CRDs: Service create -> IP {ips:?} in {} ms",
        created.elapsed().as_millis()
    );
    let warning = wait_for(
        "a Warning Event on BGPAdvertisement/negative-pref",
        SETTLE,
        || {
            events(&cluster, "metallb-system")
                .ok()?
                .into_iter()
                .find(|e| {
                    e["involvedObject"]["kind"] == "BGPAdvertisement"
                        && e["involvedObject"]["name"] == "negative-pref"
                        && e["reason"] == "InvalidConfiguration"
                        && e["message"]
                            .as_str()
                            .unwrap_or("")
                            .contains("spec.localPref")
                })
        },
    )?;
    println!("Event: {}", warning["message"]);

    // A restarted agent lists the same objects, becomes ready and allocates.
    cluster.kill_agent("node-1");
    cluster.start_agent("node-1")?;
    cluster.apply(&lb_service("after-restart"))?;
    wait_ip(&cluster, "after-restart")?;
    assert_eq!(
        cluster.ingress("default", "doc")?,
        ips,
        "the restart moved no IP"
    );
    cluster.assert_nothing_forbidden();
    cluster.passed();
    Ok(())
}

/// The check every test above ends with can fail: an agent whose ServiceAccount has no rules is refused, and the
/// refusal names the request.
#[test]
fn a_missing_rule_is_caught_and_named() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let mut cluster = RealCluster::start(plane, Crds::Ours)?;
    let no_rights = cluster
        .plane
        .service_account_kubeconfig("ironlb-system", "no-rights")?;
    cluster.start_agent_with("node-1", Some(&no_rights))?;
    let refused = wait_for("a refused request in the agent's log", SETTLE, || {
        let refused = cluster.forbidden();
        (!refused.is_empty()).then_some(refused)
    })?;
    println!("refused: {}", refused[0]);
    assert!(
        refused
            .iter()
            .any(|l| l.contains("system:serviceaccount:ironlb-system:no-rights")),
        "the refusal names the identity: {refused:?}"
    );
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cluster.assert_nothing_forbidden()
    }));
    assert!(
        caught.is_err(),
        "assert_nothing_forbidden let a refusal pass"
    );
    cluster.passed();
    Ok(())
}
