//! Tier: the API misbehaving. Real agents against the real kube-apiserver, each agent's kubeconfig pointing at its
//! own fault proxy (`real_api_support::fault_proxy`), so faults are injected per agent and never by editing the
//! agent. Every scenario asserts its invariant: no IP on two Services, nothing lost, convergence after the fault.
//!
//! Scenarios run one at a time (each has its own control plane and agents; the machines have two cores).

#[path = "real_api_support/cluster.rs"]
mod cluster;
mod real_api_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use cluster::{Crds, RealCluster, assert_no_ip_twice, lb_service, wait_for};
use real_api_support::fault_proxy::{Fault, FaultProxy, RequestMatch};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

const SETTLE: Duration = Duration::from_secs(30);
/// Short, so that twenty trials of twice its length fit in CI; the rule under test does not depend on the value.
const LEASE_SECONDS: u64 = 3;

/// A pool large enough for hundreds of Services, and an L2Advertisement for it.
const BIG_POOL: &str = "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\n\
    metadata: {name: big, namespace: metallb-system}\nspec: {addresses: [192.0.2.0/24, 203.0.113.0/24]}\n---\n\
    apiVersion: metallb.io/v1beta1\nkind: L2Advertisement\nmetadata: {name: big, namespace: metallb-system}\n";

/// Every LoadBalancer Service in `default` with its ingress IPs, read straight from the API server.
fn ingress_by_service(cluster: &RealCluster) -> Result<BTreeMap<String, Vec<String>>> {
    let text = cluster
        .plane
        .kubectl_ok(&["-n", "default", "get", "services", "-o", "json"])?;
    let list: Value = serde_json::from_str(&text)?;
    let mut out = BTreeMap::new();
    for svc in list["items"].as_array().into_iter().flatten() {
        if svc["spec"]["type"] != "LoadBalancer" {
            continue;
        }
        let name = svc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ips = svc["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(str::to_string))
            .collect();
        out.insert(name, ips);
    }
    Ok(out)
}

/// The instants at which `node`'s elector logged a change of leadership to `leading`, from its JSON log.
fn leadership_changes(cluster: &RealCluster, node: &str, leading: bool) -> Vec<jiff::Timestamp> {
    cluster
        .log_text(node)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"] == "allocator leadership changed"
                && v["fields"]["leading"] == leading
        })
        .filter_map(|v| v["timestamp"].as_str()?.parse().ok())
        .collect()
}

/// Two agents, each behind its own proxy.
fn two_agents_behind_proxies(cluster: &mut RealCluster) -> Result<BTreeMap<String, FaultProxy>> {
    let mut proxies = BTreeMap::new();
    for node in ["node-1", "node-2"] {
        let proxy = FaultProxy::start(&cluster.plane)?;
        let kubeconfig = proxy.kubeconfig_for(&cluster.agent_kubeconfig.clone())?;
        cluster.start_agent_with(node, Some(Path::new(&kubeconfig)))?;
        proxies.insert(node.to_string(), proxy);
    }
    Ok(proxies)
}

/// The leader's API calls stall for twice the Lease duration, twenty times over. Each time it must step down on its
/// own clock before the other agent takes the Lease, and no IP may ever be held by two Services, although the
/// stalled leader still sees new Services on its open watches and tries to allocate them.
#[test]
fn a_stalled_leader_steps_down_before_anyone_takes_over_and_no_ip_is_held_twice() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let mut cluster = RealCluster::start(plane, Crds::Ours)?;
    cluster.apply(BIG_POOL)?;
    cluster.agent_args(&["--lease-duration", &LEASE_SECONDS.to_string()]);
    let proxies = two_agents_behind_proxies(&mut cluster)?;
    let lease = Duration::from_secs(LEASE_SECONDS);
    let mut created = 0;
    for trial in 1..=20 {
        let leader = wait_for("an allocator", SETTLE, || {
            cluster.lease_holder().ok().flatten()
        })?;
        let follower = if leader == "node-1" {
            "node-2"
        } else {
            "node-1"
        };
        let stalled_at = Instant::now();
        let stalled_wall = jiff::Timestamp::now();
        proxies[&leader].stall();
        // New Services while the leader is cut off: it sees them on its watches and may try to write.
        for _ in 0..2 {
            created += 1;
            cluster.apply(&lb_service(&format!("s{created}")))?;
        }
        let taken = wait_for("the follower to take the Lease", SETTLE, || {
            cluster
                .lease_holder()
                .ok()
                .flatten()
                .filter(|h| h == follower)
        })?;
        let takeover = stalled_at.elapsed();
        std::thread::sleep((2 * lease).saturating_sub(stalled_at.elapsed()));
        proxies[&leader].clear();

        let down = leadership_changes(&cluster, &leader, false)
            .into_iter()
            .find(|t| *t >= stalled_wall)
            .with_context(|| format!("trial {trial}: {leader} never logged stepping down"))?;
        let up = leadership_changes(&cluster, follower, true)
            .into_iter()
            .find(|t| *t >= stalled_wall)
            .with_context(|| format!("trial {trial}: {taken} never logged taking over"))?;
        ensure!(
            down < up,
            "trial {trial}: {leader} stepped down at {down}, after {follower} took over at {up}"
        );
        let ips = wait_for("every Service to have an IP", SETTLE, || {
            let ips = ingress_by_service(&cluster).ok()?;
            (ips.len() == created && ips.values().all(|v| !v.is_empty())).then_some(ips)
        })?;
        assert_no_ip_twice(&ips);
        println!(
            "trial {trial}: {leader} stalled; stepped down {} ms before {follower} took over ({} ms after the stall)",
            (up - down).get_milliseconds(),
            takeover.as_millis()
        );
    }
    let stalled: u64 = proxies.values().map(|p| p.counts().stalled).sum();
    ensure!(
        stalled > 0,
        "the proxies stalled no request: the scenario tested nothing"
    );
    cluster.assert_nothing_forbidden();
    cluster.passed();
    Ok(())
}

/// Random faults at a 10 % rate on every agent request (429, 500, 503, resets), watches cut and resumed from a
/// compacted revision, while Services are created, changed and deleted. After the faults stop, every Service
/// converges within 10 s, no IP is held twice, and no Service lost or changed the IP it had.
#[test]
fn random_api_faults_while_services_churn_lose_nothing() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let minutes: f64 = std::env::var("IRONLB_FAULT_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(5.0);
    let services: usize = std::env::var("IRONLB_FAULT_SERVICES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(1000);
    let mut cluster = RealCluster::start(plane, Crds::Ours)?;
    cluster.apply(BIG_POOL)?;
    let proxies = two_agents_behind_proxies(&mut cluster)?;
    wait_for("an allocator", SETTLE, || {
        cluster.lease_holder().ok().flatten()
    })?;
    for (i, proxy) in proxies.values().enumerate() {
        proxy.reseed(42 + i as u64);
        proxy.add(Fault::Status(503).probability(0.04));
        proxy.add(Fault::Status(500).probability(0.03));
        proxy.add(Fault::Status(429).probability(0.02));
        proxy.add(Fault::Reset.probability(0.01));
        proxy.add(
            Fault::GoneOnWatch
                .when(RequestMatch::any().watch(true))
                .probability(0.2),
        );
    }
    let limit = Duration::from_secs_f64(minutes * 60.0);
    let started = Instant::now();
    // The IP each Service was first seen with: it must keep it to the end.
    let mut first_seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut deleted = 0;
    let mut changed = 0;
    let mut next_cut = Instant::now() + Duration::from_secs(20);
    for n in 0..services {
        // Spread the Services over the whole fault window.
        let due = started + limit.mul_f64(n as f64 / services as f64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let name = format!("churn-{n}");
        cluster.apply(&lb_service(&name))?;
        live.insert(name);
        // Every 7th: a change (a label that allocation ignores); every 3rd, and whenever 200 are live: the first
        // live Service by name is deleted.
        if n % 7 == 6 {
            let victim = live.iter().nth(n % live.len()).cloned().unwrap_or_default();
            cluster.plane.kubectl_ok(&[
                "-n",
                "default",
                "label",
                "service",
                &victim,
                "--overwrite",
                &format!("round={n}"),
            ])?;
            changed += 1;
        }
        // The harness's Service CIDR (198.51.100.0/24) holds 253 ClusterIPs: at most 200 Services live at once.
        while (n % 3 == 2 && live.len() > 1) || live.len() > 200 {
            let oldest = live.iter().next().cloned().unwrap_or_default();
            cluster.plane.kubectl_ok(&[
                "-n",
                "default",
                "delete",
                "service",
                &oldest,
                "--wait=false",
            ])?;
            live.remove(&oldest);
            first_seen.remove(&oldest);
            deleted += 1;
            if live.len() <= 200 {
                break;
            }
        }
        if Instant::now() >= next_cut {
            for proxy in proxies.values() {
                proxy.cut_watches();
            }
            next_cut = Instant::now() + Duration::from_secs(20);
        }
        if n % 50 == 0 {
            let ips = ingress_by_service(&cluster)?;
            assert_no_ip_twice(&ips);
            for (svc, list) in ips {
                if !list.is_empty() && live.contains(&svc) {
                    let first = first_seen
                        .entry(svc.clone())
                        .or_insert_with(|| list.clone());
                    assert_eq!(*first, list, "{svc} changed its IP under faults");
                }
            }
        }
    }
    let counts: Vec<_> = proxies.values().map(|p| p.counts()).collect();
    for proxy in proxies.values() {
        proxy.clear();
    }
    let faults: u64 = counts.iter().map(|c| c.faults()).sum();
    let requests: u64 = counts.iter().map(|c| c.requests).sum();
    ensure!(
        faults > 0,
        "no fault was injected: the scenario tested nothing"
    );
    let cleared = Instant::now();
    let ips = wait_for(
        "every live Service to have an IP after the faults",
        SETTLE,
        || {
            let ips = ingress_by_service(&cluster).ok()?;
            let done = live
                .iter()
                .all(|s| ips.get(s).is_some_and(|v| !v.is_empty()))
                && ips.len() == live.len();
            done.then_some(ips)
        },
    )?;
    let converged = cleared.elapsed();
    assert_no_ip_twice(&ips);
    for (svc, first) in &first_seen {
        assert_eq!(ips.get(svc), Some(first), "{svc} lost or changed its IP");
    }
    println!(
        "{services} Services created, {changed} changed, {deleted} deleted over {minutes} min; {faults} faults in \
         {requests} agent requests; converged {} ms after the faults stopped",
        converged.as_millis()
    );
    ensure!(
        converged <= Duration::from_secs(10),
        "convergence took {converged:?}, more than 10 s after the faults stopped"
    );
    cluster.assert_nothing_forbidden();
    cluster.passed();
    Ok(())
}

/// Event posts fail for a while: the Events of allocations made meanwhile arrive once the API recovers, each once.
#[test]
fn events_posted_while_the_api_refuses_them_arrive_once_afterwards() -> Result<()> {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let mut cluster = RealCluster::start(plane, Crds::Ours)?;
    cluster.apply(BIG_POOL)?;
    let proxy = FaultProxy::start(&cluster.plane)?;
    let kubeconfig = proxy.kubeconfig_for(&cluster.agent_kubeconfig.clone())?;
    cluster.start_agent_with("node-1", Some(Path::new(&kubeconfig)))?;
    wait_for("an allocator", SETTLE, || {
        cluster.lease_holder().ok().flatten()
    })?;
    proxy.add(Fault::Status(503).when(RequestMatch::any().method("POST").path("/events")));
    let names: Vec<String> = (0..5).map(|i| format!("ev-{i}")).collect();
    for name in &names {
        cluster.apply(&lb_service(name))?;
    }
    wait_for("IPs while Events fail", SETTLE, || {
        let ips = ingress_by_service(&cluster).ok()?;
        names
            .iter()
            .all(|n| ips.get(n).is_some_and(|v| !v.is_empty()))
            .then_some(())
    })?;
    std::thread::sleep(Duration::from_secs(3));
    let refused = proxy.counts().status(503);
    ensure!(
        refused > 0,
        "no Event post was refused: the scenario tested nothing"
    );
    proxy.clear();
    let allocated = |events: &Value, name: &str| {
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["involvedObject"]["name"] == name && e["reason"] == "IPAllocated")
            .count()
    };
    let events = wait_for(
        "every IPAllocated Event after the API recovered",
        SETTLE,
        || {
            let text = cluster
                .plane
                .kubectl_ok(&["-n", "default", "get", "events", "-o", "json"])
                .ok()?;
            let events: Value = serde_json::from_str(&text).ok()?;
            names
                .iter()
                .all(|n| allocated(&events, n) >= 1)
                .then_some(events)
        },
    )?;
    // Later retries must not add a second copy.
    std::thread::sleep(Duration::from_secs(3));
    let text = cluster
        .plane
        .kubectl_ok(&["-n", "default", "get", "events", "-o", "json"])?;
    let later: Value = serde_json::from_str(&text)?;
    for name in &names {
        assert_eq!(
            allocated(&events, name),
            1,
            "one IPAllocated Event for {name}"
        );
        assert_eq!(
            allocated(&later, name),
            1,
            "still one IPAllocated Event for {name}"
        );
    }
    println!("{refused} Event posts refused; every Event arrived once afterwards");
    cluster.assert_nothing_forbidden();
    cluster.passed();
    Ok(())
}
