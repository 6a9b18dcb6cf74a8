//! The network-namespace lab on the real control plane (`ironlb lab --api real`): real `ironlb agent` processes in
//! node namespaces, each running as the shipped manifest's ServiceAccount against a real etcd and kube-apiserver with
//! RBAC enforced, reached through the lab's relay in the switch namespace. This is the tier where the paths the
//! host-loopback real-API tests cannot take run under real RBAC: ARP and the visibility annotations, the node Leases,
//! `ironlb status` and `ironlb verify` from a node, the direct data plane's read of kube-proxy's ConfigMap, and BGP
//! sessions whose password Secret becomes unreadable for a minute while every API connection is cut.
//!
//! Needs root (network namespaces), the control plane's binaries (scripts/setup builds them) and gobgpd for the BGP
//! test. A request RBAC refuses fails the test, naming it from the agent's log.

mod netns_support;
mod real_api_support;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use ironlb::lab::bgp::{Daemon, PeerRoute, Router, RouterConfig, node_neighbors};
use ironlb::lab::cluster::{Lab, LabOptions};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Secret, Service};
use kube::api::{Api, ListParams, PostParams};
use netns_support::{Logs, skip, wait_until};
use serde_json::json;

/// The lab's options on the real control plane, or `None` when the tier cannot run here (said why).
fn options(tag: &str, nodes: usize, services: usize, agent_args: &[&str]) -> Option<LabOptions> {
    if skip() {
        return None;
    }
    real_api_support::on_real_api(netns_support::options(
        tag, nodes, services, "enforce", agent_args,
    ))
}

/// Fails naming every request RBAC refused, from the agents' logs.
fn assert_nothing_forbidden(lab: &Lab) {
    for node in lab.node_names() {
        let log = std::fs::read_to_string(lab.agent_log(&node)).unwrap_or_default();
        let refused: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("forbidden") || l.contains("Forbidden"))
            .collect();
        assert!(
            refused.is_empty(),
            "the agent of {node} was refused by RBAC:\n{}",
            refused.join("\n")
        );
    }
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> String {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key).cloned())
        .unwrap_or_default()
}

/// What contradicts `rows` now, if anything: a VIP the client resolves to another node than its owner, or an
/// annotation that names another.
async fn check_owners(
    lab: &Lab,
    rows: &[ironlb::k8s::report::StatusRow],
    services: &Api<Service>,
    nodes: &Api<Node>,
) -> Option<String> {
    for row in rows {
        let Some(owner) = row.owners.first() else {
            return Some(format!("{} has no owner", row.service));
        };
        let mac = lab.node(owner).unwrap().mac.clone();
        for vip in &row.vips {
            let ip: IpAddr = vip.parse().unwrap();
            let seen = tokio::task::block_in_place(|| lab.resolve_from_client(ip));
            if seen.as_ref() != Some(&mac) {
                return Some(format!(
                    "{vip} of {} resolves to {seen:?}, not to its owner {owner} ({mac})",
                    row.service
                ));
            }
        }
        let name = row.service.trim_start_matches("default/");
        let svc = services.get(name).await.unwrap();
        let announced_by = annotation(
            &svc.metadata,
            ironlb::plan::visibility::ANNOUNCED_BY_ANNOTATION,
        );
        if &announced_by != owner {
            return Some(format!(
                "{} is announced by {announced_by:?}, not {owner}",
                row.service
            ));
        }
        let vips_on_owner = annotation(
            &nodes.get(owner).await.unwrap().metadata,
            ironlb::plan::visibility::VIPS_ANNOTATION,
        );
        if let Some(vip) = row
            .vips
            .iter()
            .find(|v| !vips_on_owner.split(',').any(|x| x == *v))
        {
            return Some(format!("{owner} lists {vips_on_owner:?}, not {vip}"));
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_announce_and_report_under_the_manifests_rbac() {
    let Some(options) = options("ilb-rapi", 3, 4, &[]) else {
        return;
    };
    let lab = Lab::start(options).await.unwrap();
    let _logs = Logs::of(&lab);
    assert!(lab.api.real().is_some(), "the lab is not on the real API");

    let rows = lab.wait_announced(Duration::from_secs(60)).await.unwrap();
    assert_eq!(rows.len(), 4, "{rows:#?}");
    // Dual-stack demo-1 got a VIP of each family: the real server allocated it a ClusterIP of each.
    let demo1 = rows.iter().find(|r| r.service == "default/demo-1").unwrap();
    assert_eq!(demo1.vips.len(), 2, "{demo1:#?}");

    // Every VIP resolves from the client to the MAC of the owner the status names, and the visibility annotations
    // (written by the agents under their ServiceAccount) agree. Owners may still move while the agents settle, so
    // this is checked against the status of the moment, until it holds (at most 15 s).
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let nodes: Api<Node> = Api::all(lab.client.clone());
    let start = Instant::now();
    let rows = loop {
        let rows = lab.status().await.unwrap();
        let mismatch = check_owners(&lab, &rows, &services, &nodes).await;
        match mismatch {
            None => break rows,
            Some(why) if start.elapsed() > Duration::from_secs(15) => panic!("{why}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };

    // Every node renews its own Lease; one agent holds the allocator's.
    let leases: Api<Lease> = Api::namespaced(lab.client.clone(), "ironlb-system");
    for node in lab.node_names() {
        let name = ironlb::k8s::node_lease::lease_name(&node);
        let lease = leases.get(&name).await.unwrap();
        assert_eq!(
            lease.spec.and_then(|s| s.holder_identity).as_deref(),
            Some(node.as_str()),
            "{name}"
        );
    }
    let holder = lab.lease_holder().await.unwrap();
    assert!(
        holder
            .as_deref()
            .is_some_and(|h| lab.node_names().iter().any(|n| n == h)),
        "allocator Lease holder {holder:?}"
    );

    // The allocator's Events reached the real server.
    let events: Api<Event> = Api::namespaced(lab.client.clone(), "default");
    let allocated: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("IPAllocated"))
        .collect();
    assert!(
        allocated.len() >= 4,
        "IPAllocated Events on the real server: {allocated:#?}"
    );

    // `ironlb status` with the user's kubeconfig shows every VIP and its owner.
    let binary = env!("CARGO_BIN_EXE_ironlb");
    let status = Command::new(binary)
        .args(["status", "--kubeconfig"])
        .arg(&lab.kubeconfig)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "ironlb status: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    for row in &rows {
        assert!(
            row.vips.iter().all(|v| text.contains(v.as_str())) && text.contains(&row.owners[0]),
            "ironlb status lacks {row:?}:\n{text}"
        );
    }

    // MetalLB's status objects, written by the agents under the manifest's RBAC, list every owner as kubectl
    // prints them (the CRD's printer columns: NAME, ALLOCATED NODE, SERVICE NAME, SERVICE NAMESPACE).
    let plane = lab.api.real().unwrap();
    let start = Instant::now();
    loop {
        let out = plane
            .kubectl(&["get", "servicel2statuses,servicebgpstatuses", "-A"])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let listed = rows.iter().all(|row| {
            let (ns, name) = row.service.split_once('/').unwrap();
            lines
                .iter()
                .any(|l| l.len() == 5 && l[2] == row.owners[0] && l[3] == name && l[4] == ns)
        });
        if out.status.success() && listed && lines.len() == rows.len() + 1 {
            assert!(text.contains("ALLOCATED NODE"), "{text}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "kubectl get servicel2statuses,servicebgpstatuses -A:\n{text}{}\nowners: {rows:#?}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every agent's ConfigurationState, as kubectl prints it (NAME, RESULT, ERRORSUMMARY, AGE): Valid.
    let start = Instant::now();
    loop {
        let out = plane
            .kubectl(&["-n", "ironlb-system", "get", "configurationstates"])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let valid = lab.node_names().iter().all(|node| {
            text.lines().any(|l| {
                l.split_whitespace()
                    .take(2)
                    .eq([format!("speaker-{node}").as_str(), "Valid"])
            })
        });
        if valid {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "kubectl get configurationstates:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The allocator wrote the pool's status under the manifest's RBAC: the IPv4 addresses the Services hold.
    let v4 = rows
        .iter()
        .flat_map(|r| r.vips.iter())
        .filter(|v| v.contains('.'))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let start = Instant::now();
    loop {
        let out = plane
            .kubectl(&[
                "-n",
                "metallb-system",
                "get",
                "ipaddresspool",
                "lab",
                "-o",
                "jsonpath={.status.assignedIPv4}",
            ])
            .unwrap();
        let assigned = String::from_utf8_lossy(&out.stdout).to_string();
        if assigned == v4.to_string() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "IPAddressPool lab status.assignedIPv4 is {assigned:?}, want {v4}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // `ironlb verify` in node-1's namespace, as the agents' ServiceAccount over the lab network: its reads of the
    // Services and EndpointSlices are allowed; what can stop it here is only a kernel without IPVS.
    let node1 = lab.node("node-1").unwrap().netns.clone();
    let verify = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node1,
            binary,
            "verify",
            "--node-name",
            "node-1",
        ])
        .arg("--kubeconfig")
        .arg(lab.options().dir.join("agents.kubeconfig"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        !said.contains("forbidden") && !said.contains("Forbidden"),
        "ironlb verify was refused by RBAC:\n{said}"
    );
    if !ironlb::lab::demo::kernel_has_ipvs() {
        assert!(
            said.contains("IPVS"),
            "without IPVS, verify should stop at reading IPVS:\n{said}"
        );
    } else {
        assert!(
            !said.contains("reading the cluster") && !said.contains("listing"),
            "{said}"
        );
    }
    assert_nothing_forbidden(&lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_data_plane_reads_kube_proxys_config_under_rbac() {
    let Some(options) = options("ilb-rapid", 1, 0, &["--dataplane", "direct"]) else {
        return;
    };
    let lab = Lab::start(options).await.unwrap();
    let _logs = Logs::of(&lab);
    // kube-proxy in IPVS mode whose cleanup spares nothing of the pools: the agent must say so, which it can only
    // after reading kube-system/kube-proxy with the Role the manifest grants for it.
    let config = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n\
                  ipvs:\n  excludeCIDRs: []\n";
    Api::<ConfigMap>::namespaced(lab.client.clone(), "kube-system")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
                "data": {"config.conf": config},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    // A second pool changes the pool ranges, which is when the agent reads kube-proxy's configuration.
    lab.apply_pool("second", &["192.0.2.160-192.0.2.169"])
        .await
        .unwrap();
    let log = lab.agent_log("node-1");
    wait_until(
        "the agent to warn about ipvs.excludeCIDRs",
        Duration::from_secs(30),
        || {
            let log = log.clone();
            async move {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("192.0.2.160-192.0.2.169")
            }
        },
    )
    .await;
    assert_nothing_forbidden(&lab);
}

/// The direct data plane on a kernel without IPVS (this host): every node says it cannot forward (its Node, a
/// Warning Event, `ironlb_ipvs_available 0`), and since none can, the VIPs are still announced but written without
/// `ipMode: Proxy`, so that kube-proxy forwards them. (With IPVS, the VM tier checks `Proxy` and IronLB's forwarding.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_data_plane_without_ipvs_says_so_and_leaves_the_vips_to_kube_proxy() {
    if ironlb::lab::demo::kernel_has_ipvs() {
        println!(
            "skipped: this kernel has IPVS (the VM tier checks the direct data plane with it)"
        );
        return;
    }
    let Some(options) = options("ilb-rapnf", 2, 2, &["--dataplane", "direct"]) else {
        return;
    };
    let lab = Lab::start(options).await.unwrap();
    let _logs = Logs::of(&lab);
    let rows = lab.wait_announced(Duration::from_secs(60)).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let nodes: Api<Node> = Api::all(lab.client.clone());
    let start = Instant::now();
    loop {
        let rows = lab.status().await.unwrap();
        match check_owners(&lab, &rows, &services, &nodes).await {
            None => break,
            Some(why) if start.elapsed() > Duration::from_secs(15) => panic!("{why}"),
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
    for node in lab.node_names() {
        let why = annotation(
            &nodes.get(&node).await.unwrap().metadata,
            ironlb::plan::input::CANNOT_FORWARD_ANNOTATION,
        );
        assert!(why.contains("IPVS"), "{node} cannot-forward: {why:?}");
        let metrics = lab.metrics(&node).unwrap();
        assert!(
            metrics.lines().any(|l| l == "ironlb_ipvs_available 0"),
            "{node}'s metrics lack ironlb_ipvs_available 0"
        );
    }
    // The first status may be written before the nodes said they cannot forward; then it is rewritten.
    let start = Instant::now();
    'written: loop {
        for row in &rows {
            let name = row.service.trim_start_matches("default/");
            let svc = services.get(name).await.unwrap();
            let ingress = svc
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .unwrap_or_default();
            assert!(!ingress.is_empty(), "{name} has no ingress");
            // The API server defaults an unset ipMode to VIP.
            if ingress.iter().any(|i| i.ip_mode.as_deref() != Some("VIP")) {
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "{name} still reports {ingress:?} although nothing forwards"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue 'written;
            }
        }
        break;
    }
    let events: Api<Event> = Api::all(lab.client.clone());
    let warned: std::collections::BTreeSet<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("CannotForward"))
        .filter_map(|e| e.involved_object.name)
        .collect();
    let all: std::collections::BTreeSet<String> = lab.node_names().into_iter().collect();
    assert_eq!(warned, all, "the Nodes with a CannotForward Event");
    assert_nothing_forbidden(&lab);
}

fn routed_from(routes: &[PeerRoute], vip: IpAddr, next_hop: Ipv4Addr) -> bool {
    routes
        .iter()
        .any(|r| r.prefix == ipnet::IpNet::from(vip) && r.next_hop == IpAddr::V4(next_hop))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_sessions_survive_a_minute_of_unreadable_password_secrets() {
    let Some(options) = options("ilb-rapib", 2, 0, &[]) else {
        return;
    };
    let lab = Lab::start(options).await.unwrap();
    let _logs = Logs::of(&lab);
    let plane = lab.api.real().unwrap();
    const PASSWORD: &str = "s3cret-md5";
    let dir = tempfile::tempdir().unwrap();
    let router = tokio::task::block_in_place(|| {
        Router::start(
            Daemon::Gobgp,
            &lab.topology.switch,
            dir.path(),
            RouterConfig {
                asn: 64496,
                router_id: Ipv4Addr::new(192, 0, 2, 1),
                neighbors: node_neighbors(&lab, 64497, Some(PASSWORD)),
                graceful_restart: false,
                bfd: false,
            },
        )
    })
    .unwrap();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "router-auth", "namespace": "ironlb-system"},
        "type": "kubernetes.io/basic-auth",
        "stringData": {"password": PASSWORD},
    }))
    .unwrap();
    Api::<Secret>::namespaced(lab.client.clone(), "ironlb-system")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    plane
        .kubectl_ok_with_input(
            &["apply", "-f", "-"],
            "apiVersion: metallb.io/v1beta2\nkind: BGPPeer\nmetadata: {name: router, namespace: metallb-system}\n\
             spec: {myASN: 64497, peerASN: 64496, peerAddress: 192.0.2.1, connectTime: 1s,\n\
             \x20 passwordSecret: {name: router-auth, namespace: ironlb-system}}\n---\n\
             apiVersion: metallb.io/v1beta1\nkind: BGPAdvertisement\n\
             metadata: {name: router, namespace: metallb-system}\nspec: {ipAddressPools: [lab]}\n",
        )
        .unwrap();
    lab.create_demo_service("web", false, false, None)
        .await
        .unwrap();
    let rows = lab.wait_announced(Duration::from_secs(60)).await.unwrap();
    let vip: IpAddr = rows[0].vips[0].parse().unwrap();
    let next_hops: Vec<Ipv4Addr> = lab.topology.nodes.iter().map(|n| n.ipv4).collect();
    let both = next_hops.clone();
    let (ok, seen) = tokio::task::block_in_place(|| {
        router.wait_routes(
            Duration::from_secs(60),
            Box::new(move |r: &[PeerRoute]| both.iter().all(|nh| routed_from(r, vip, *nh))),
        )
    });
    assert!(
        ok,
        "{vip} from both nodes over MD5 sessions: {seen:#?}\n{}",
        router.log()
    );

    // The agents lose the right to read Secrets in their namespace for a minute: the Role without its secrets rule.
    let rbac = real_api_support::manifest_rbac().unwrap();
    let role = rbac
        .split("---\n")
        .find(|d| {
            let v: serde_yaml::Value = serde_yaml::from_str(d).unwrap();
            v["kind"] == "Role" && v["metadata"]["name"] == "ironlb-leader-election"
        })
        .unwrap();
    let without_secrets = {
        let mut value: serde_yaml::Value = serde_yaml::from_str(role).unwrap();
        let rules = value["rules"].as_sequence_mut().unwrap();
        rules.retain(|r| {
            !r["resources"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|x| x == "secrets")
        });
        serde_yaml::to_string(&value).unwrap()
    };
    plane
        .kubectl_ok_with_input(&["apply", "-f", "-"], &without_secrets)
        .unwrap();
    let can_read = |plane: &real_api_support::ControlPlane| {
        plane
            .kubectl(&[
                "auth",
                "can-i",
                "get",
                "secrets",
                "-n",
                "ironlb-system",
                "--as=system:serviceaccount:ironlb-system:ironlb-agent",
            ])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes")
            .unwrap()
    };
    assert!(!can_read(plane), "the Secret read should now be refused");
    // Every connection to the API server is cut, so every watch must list again: the Secrets' list is refused.
    let relay = lab.api.relay().unwrap();
    relay.reset();

    // For 60 s, Services come and go (each change is an allocation and announcement pass, which looks up the
    // passwords), every API connection is cut every 20 s, and the router is asked twice a second: the VIP's routes
    // must never leave it.
    let services: Api<Service> = Api::namespaced(lab.client.clone(), "default");
    let start = Instant::now();
    let mut checks = 0;
    let mut churn = 0;
    while start.elapsed() < Duration::from_secs(60) {
        let routes = tokio::task::block_in_place(|| router.routes()).unwrap();
        for nh in &next_hops {
            assert!(
                routed_from(&routes, vip, *nh),
                "after {:?} of unreadable Secrets the route of {vip} via {nh} is gone: {routes:#?}",
                start.elapsed()
            );
        }
        checks += 1;
        if checks % 40 == 0 {
            relay.reset();
        }
        if checks % 4 == 0 {
            let name = format!("churn-{churn}");
            if churn % 2 == 0 {
                lab.create_demo_service(&name, false, false, None)
                    .await
                    .unwrap();
            } else {
                services
                    .delete(&format!("churn-{}", churn - 1), &Default::default())
                    .await
                    .unwrap();
            }
            churn += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(checks >= 60, "only {checks} checks in a minute");

    // The refusals were met and said, and no session went down.
    for node in lab.node_names() {
        let log = std::fs::read_to_string(lab.agent_log(&node)).unwrap_or_default();
        assert!(
            log.lines().any(|l| l.contains("watch failed")
                && l.contains("\"kind\":\"Secret\"")
                && l.contains("forbidden")),
            "{node} never said its Secrets could not be listed"
        );
        let metrics = tokio::task::block_in_place(|| lab.metrics(&node)).unwrap();
        let flaps: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("ironlb_bgp_session_flaps"))
            .collect();
        assert!(!flaps.is_empty(), "{node} exports no session flaps");
        assert!(
            flaps.iter().all(|l| l.ends_with(" 0")),
            "{node}'s sessions went down: {flaps:?}"
        );
    }

    // Readable again: the sessions are still up, with the route.
    plane
        .kubectl_ok_with_input(&["apply", "-f", "-"], role)
        .unwrap();
    assert!(can_read(plane));
    let routes = tokio::task::block_in_place(|| router.routes()).unwrap();
    assert!(next_hops.iter().all(|nh| routed_from(&routes, vip, *nh)));
}
