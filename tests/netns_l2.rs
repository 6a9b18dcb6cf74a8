//! Layer 2 announcement in the lab, with real packets: real `ironlb agent` processes in node namespaces, and
//! `arping`, `ndisc6`, `ip neigh` and TCP from a client namespace. Needs root; CI runs as root.
//!
//! The labs of these tests run one at a time (each has three agents, and the machines have two cores), and each is
//! torn down by its own drop, even when a test fails.

mod netns_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ironlb::lab::cluster::{Lab, LabOptions};
use ironlb::lab::demo::{failover_steps, heal, measure_failover};
use ironlb::lab::topology::{UPLINK, run_in};
use k8s_openapi::api::core::v1::{Event, Node, Secret};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use netns_support::{Logs, skip, wait_until};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options(tag: &str, nodes: usize, services: usize, strict_arp: &str) -> LabOptions {
    netns_support::options(&format!("ilb-l2-{tag}"), nodes, services, strict_arp, &[])
}

/// Every reply `arping -c count` got, as MACs.
fn arping_replies(lab: &Lab, vip: IpAddr, count: u32) -> Vec<String> {
    let out = run_in(
        &lab.topology.client,
        &[
            "arping",
            "-c",
            &count.to_string(),
            "-w",
            &(count + 2).to_string(),
            "-I",
            UPLINK,
            &vip.to_string(),
        ],
    );
    let text = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).to_string(),
        // arping exits 1 when nothing answered.
        Err(_) => return Vec::new(),
    };
    text.lines()
        .filter(|l| l.contains("reply from"))
        .filter_map(ironlb::lab::cluster::parse_mac)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arp_and_ndp_are_answered_by_the_owner_alone_and_visibility_matches() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = Lab::start(options("own", 3, 3, "enforce")).await.unwrap();
    let _logs = Logs::of(&lab);
    lab.wait_announced(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rows = lab.status().await.unwrap();
    assert_eq!(rows.len(), 3);

    let nodes: Api<Node> = Api::all(lab.client.clone());
    let mut annotated: BTreeMap<String, String> = BTreeMap::new();
    for node in nodes.list(&ListParams::default()).await.unwrap() {
        let vips = node
            .metadata
            .annotations
            .unwrap_or_default()
            .get("ironlb.io/vips")
            .cloned()
            .unwrap_or_default();
        annotated.insert(node.metadata.name.unwrap(), vips);
    }
    for row in &rows {
        assert_eq!(row.owners.len(), 1, "{row:?}");
        let owner = lab.node(&row.owners[0]).unwrap();
        for vip in &row.vips {
            let ip: IpAddr = vip.parse().unwrap();
            // The node annotation of the owner, and only of the owner, lists the VIP.
            for (node, vips) in &annotated {
                let listed = vips.split(',').any(|v| v == vip);
                assert_eq!(
                    listed,
                    *node == owner.name,
                    "{vip} in ironlb.io/vips of {node}: {vips:?}"
                );
            }
            match ip {
                IpAddr::V4(_) => {
                    let replies = arping_replies(&lab, ip, 3);
                    assert_eq!(
                        replies.len(),
                        3,
                        "exactly one reply per request for {vip}: {replies:?}"
                    );
                    assert!(
                        replies.iter().all(|m| *m == owner.mac),
                        "{vip}: replies {replies:?}, owner {}",
                        owner.mac
                    );
                }
                IpAddr::V6(_) => {
                    assert_eq!(
                        lab.resolve_from_client(ip).as_deref(),
                        Some(owner.mac.as_str()),
                        "ndisc6 {vip}"
                    );
                }
            }
            let reply = lab.connect_from_client(ip, Duration::from_secs(2)).unwrap();
            assert_eq!(reply, format!("hello from {}", owner.name), "TCP to {vip}");
        }
    }
    assert_metallbs_metrics_tell_the_same(&lab, &rows);
    assert_status_objects_name_the_owners(&lab, &rows).await;
    assert_the_gossip_key_never_leaks(&lab).await;
}

/// MetalLB's ServiceL2Status objects say what status says: one per Service, by its owner, labelled as MetalLB labels
/// them; and none for BGP, which this lab does not run.
async fn assert_status_objects_name_the_owners(lab: &Lab, rows: &[ironlb::k8s::report::StatusRow]) {
    let api = |kind: &str| -> Api<DynamicObject> {
        Api::namespaced_with(
            lab.client.clone(),
            "ironlb-system",
            &ApiResource::from_gvk(&GroupVersionKind::gvk("metallb.io", "v1beta1", kind)),
        )
    };
    let want: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.service.clone(), r.owners[0].clone()))
        .collect();
    let mut last = BTreeSet::new();
    let converged = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let objects = api("ServiceL2Status")
                .list(&ListParams::default())
                .await
                .unwrap()
                .items;
            last = objects
                .iter()
                .map(|o| {
                    let labels = o.metadata.labels.clone().unwrap_or_default();
                    let status = &o.data["status"];
                    assert_eq!(
                        labels.get("metallb.io/node").map(String::as_str),
                        status["node"].as_str(),
                        "{o:?}"
                    );
                    assert_eq!(
                        labels.get("metallb.io/service-name").map(String::as_str),
                        status["serviceName"].as_str()
                    );
                    assert!(o.metadata.name.as_deref().unwrap_or("").starts_with("l2-"));
                    (
                        format!(
                            "{}/{}",
                            status["serviceNamespace"].as_str().unwrap_or("?"),
                            status["serviceName"].as_str().unwrap_or("?")
                        ),
                        status["node"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect();
            if last == want && objects.len() == want.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        converged.is_ok(),
        "ServiceL2Status objects {last:?}, owners {want:?}"
    );
    let bgp = api("ServiceBGPStatus")
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(bgp.is_empty(), "{bgp:?}");

    // Every agent's ConfigurationState says it accepted the configuration.
    let states = api("ConfigurationState");
    for node in lab.node_names() {
        let name = format!("speaker-{node}");
        let mut state = serde_json::Value::Null;
        let valid = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(s) = states.get(&name).await {
                    state = s.data["status"].clone();
                    if state["result"] == "Valid" && state["conditions"][0]["status"] == "True" {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(valid.is_ok(), "ConfigurationState {name}: {state}");
    }

    // The allocator wrote the pool's status: the addresses of each family the Services hold.
    let vips: BTreeSet<IpAddr> = rows
        .iter()
        .flat_map(|r| r.vips.iter().map(|v| v.parse().unwrap()))
        .collect();
    let v4 = vips.iter().filter(|v| v.is_ipv4()).count() as i64;
    let v6 = vips.len() as i64 - v4;
    let pools: Api<DynamicObject> = Api::namespaced_with(
        lab.client.clone(),
        "metallb-system",
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "metallb.io",
            "v1beta1",
            "IPAddressPool",
        )),
    );
    let mut status = serde_json::Value::Null;
    let written = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            status = pools.get("lab").await.unwrap().data["status"].clone();
            if status["assignedIPv4"] == v4 && status["assignedIPv6"] == v6 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(written.is_ok(), "pool lab status {status}, VIPs {vips:?}");
    assert!(
        status["availableIPv4"].as_i64().is_some_and(|n| n > 0),
        "{status}"
    );
}

/// MetalLB's metric names, scraped from the agents, say what status says: `metallb_speaker_announced` on the owner
/// alone, Layer 2 answers counted per VIP on the owner, and pool usage from the allocator alone.
fn assert_metallbs_metrics_tell_the_same(lab: &Lab, rows: &[ironlb::k8s::report::StatusRow]) {
    let scraped: BTreeMap<String, String> = lab
        .node_names()
        .into_iter()
        .map(|n| {
            let text = lab.metrics(&n).unwrap();
            (n, text)
        })
        .collect();
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    };
    for row in rows {
        let owner = &row.owners[0];
        for vip in &row.vips {
            let announced = format!(
                "metallb_speaker_announced{{service=\"{}\",protocol=\"layer2\",node=\"{owner}\",ip=\"{vip}\"}}",
                row.service
            );
            for (node, text) in &scraped {
                let expected = (node == owner).then_some(1.0);
                assert_eq!(value(text, &announced), expected, "{announced} on {node}");
            }
            if vip.parse::<IpAddr>().unwrap().is_ipv4() {
                // Three arping requests above, each answered once, plus what the client's own ARP asked.
                let answered = format!("metallb_layer2_responses_sent{{ip=\"{vip}\"}}");
                let sent = value(&scraped[owner], &answered).unwrap_or(0.0);
                assert!(sent >= 3.0, "{answered} on {owner}: {sent}");
            }
        }
    }
    let vips: BTreeSet<&String> = rows.iter().flat_map(|r| &r.vips).collect();
    let in_use: Vec<(String, f64)> = scraped
        .iter()
        .filter_map(|(node, text)| {
            let sum: f64 = text
                .lines()
                .filter(|l| l.starts_with("metallb_allocator_addresses_in_use_total{"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum();
            text.contains("metallb_allocator_addresses_in_use_total{")
                .then(|| (node.clone(), sum))
        })
        .collect();
    assert_eq!(
        in_use.len(),
        1,
        "pool usage from the allocator alone: {in_use:?}"
    );
    assert_eq!(
        in_use[0].1,
        vips.len() as f64,
        "addresses in use: {in_use:?}, VIPs {vips:?}"
    );
    for (node, text) in &scraped {
        assert_eq!(
            value(text, "metallb_k8s_client_config_loaded_bool"),
            Some(1.0),
            "{node}"
        );
        assert_eq!(
            value(text, "metallb_k8s_client_config_stale_bool"),
            Some(0.0),
            "{node}"
        );
    }
}

/// The gossip key is in no agent log, no Event and no `ironlb status` output, in any of the encodings a careless
/// log line would use: raw text, base64 (as the Secret holds it), hex, or Rust's debug form of a byte vector.
async fn assert_the_gossip_key_never_leaks(lab: &Lab) {
    use base64::Engine;
    let secrets: Api<Secret> = Api::namespaced(lab.client.clone(), "ironlb-system");
    let secret = secrets.get("ironlb-memberlist").await.unwrap();
    let key = secret.data.unwrap()["secretkey"].0.clone();
    assert!(key.len() >= 16, "the lab's key is {} bytes", key.len());
    let forms = [
        base64::engine::general_purpose::STANDARD.encode(&key),
        key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        format!("{key:?}").trim_matches(['[', ']']).to_string(),
        String::from_utf8_lossy(&key).into_owned(),
    ];
    let mut places = Vec::new();
    for node in lab.node_names() {
        let log = std::fs::read_to_string(lab.agent_log(&node)).unwrap();
        assert!(!log.is_empty(), "{node} logged nothing");
        places.push((format!("agent log of {node}"), log));
    }
    let events: Api<Event> = Api::all(lab.client.clone());
    let events = events.list(&ListParams::default()).await.unwrap();
    assert!(!events.items.is_empty(), "the lab has Events");
    places.push((
        "Events".into(),
        serde_json::to_string(&events.items).unwrap(),
    ));
    places.push((
        "ironlb status".into(),
        serde_json::to_string(&lab.status().await.unwrap()).unwrap(),
    ));
    for (place, text) in &places {
        for form in &forms {
            assert!(
                !text.contains(form.as_str()),
                "the gossip key appears in the {place}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owner_is_replaced_and_the_client_follows() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = Lab::start(options("fail", 3, 3, "enforce")).await.unwrap();
    let dir = lab.options().dir.clone();
    lab.wait_announced(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rows = lab.status().await.unwrap();
    let row = rows
        .iter()
        .find(|r| r.vips.iter().any(|v| v.contains('.')))
        .unwrap();
    let vip: IpAddr = row
        .vips
        .iter()
        .find(|v| v.contains('.'))
        .unwrap()
        .parse()
        .unwrap();
    let old = row.owners[0].clone();
    assert_eq!(
        lab.topology.client_neighbour(vip).as_deref(),
        lab.node(&old).map(|n| n.mac.as_str())
    );

    let started = k8s_openapi::jiff::Timestamp::now();
    let (elapsed, reply) = measure_failover(&mut lab, vip, &old)
        .await
        .unwrap()
        .expect("the VIP answers again through another node");
    println!(
        "failover of {vip} from {old}: {} ms ({reply})",
        elapsed.as_millis()
    );
    // The lab's timeline, from the survivors' logs: a peer declared the owner Down, then a node took the VIP over,
    // by the time the client's connection succeeded (give or take the pass that logs the takeover beside its ARP).
    let steps = failover_steps(&lab, vip, &old, started);
    for (after, what) in &steps {
        println!("  {} ms  {what}", after.as_millis());
    }
    let at = |what: &str| {
        steps
            .iter()
            .find(|(_, s)| s.contains(what))
            .map(|(t, _)| *t)
    };
    let (Some(down), Some(taken)) = (at("Down (gossip)"), at("over (owner-gone)")) else {
        panic!("the timeline lacks the Down or the takeover: {steps:?}");
    };
    assert!(
        down <= taken && taken <= elapsed + Duration::from_millis(100),
        "out of order: {steps:?}, connected at {elapsed:?}"
    );
    let new = reply.trim_start_matches("hello from ").to_string();
    assert_ne!(new, old);
    let new_mac = lab.node(&new).unwrap().mac.clone();
    assert_eq!(
        lab.topology.client_neighbour(vip),
        Some(new_mac),
        "the client's neighbour entry moved"
    );
    wait_until(
        "ironlb status to name the new owner and why it took over (owner-gone)",
        Duration::from_secs(10),
        || async {
            lab.status().await.unwrap().iter().any(|r| {
                r.vips.contains(&vip.to_string())
                    && r.owners == vec![new.clone()]
                    && r.cause.as_deref() == Some("owner-gone")
            })
        },
    )
    .await;
    heal(&mut lab, &old).unwrap();
    drop(lab);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_vips_spread_over_three_nodes() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = Lab::start(options("bal", 3, 30, "enforce")).await.unwrap();
    let _logs = Logs::of(&lab);
    lab.wait_announced(Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows = lab.status().await.unwrap();
    assert_eq!(rows.len(), 30);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for row in &rows {
        assert_eq!(row.owners.len(), 1);
        *per_node.entry(row.owners[0].clone()).or_default() += 1;
    }
    println!("VIPs per node: {per_node:?}");
    // ceil(30 / 3) + 1
    assert!(per_node.values().all(|n| *n <= 11), "{per_node:?}");
    assert_eq!(per_node.values().sum::<usize>(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_service_is_announced_where_its_endpoint_is() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let lab = Lab::start(options("local", 3, 1, "enforce")).await.unwrap();
    let _logs = Logs::of(&lab);
    lab.create_demo_service("local", false, true, Some(&["node-2"]))
        .await
        .unwrap();
    let owner_of = || async {
        lab.status()
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.service == "default/local")
            .map(|r| r.owners)
            .unwrap_or_default()
    };
    wait_until(
        "the Local Service to be announced by node-2",
        Duration::from_secs(20),
        || async { owner_of().await == vec!["node-2".to_string()] },
    )
    .await;
    lab.set_endpoints("local", &["node-3"]).await.unwrap();
    wait_until(
        "the Local Service to move to node-3",
        Duration::from_secs(20),
        || async { owner_of().await == vec!["node-3".to_string()] },
    )
    .await;
    let vip: IpAddr = lab
        .status()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.service == "default/local")
        .unwrap()
        .vips[0]
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let replies = arping_replies(&lab, vip, 2);
    let mac = lab.node("node-3").unwrap().mac.clone();
    assert!(
        !replies.is_empty() && replies.iter().all(|m| *m == mac),
        "{replies:?} vs node-3 {mac}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_mode_without_strict_arp_announces_nothing_and_says_why() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    // Fresh namespaces have arp_ignore=0 and arp_announce=0: not strict.
    let lab = Lab::start(options("check", 2, 1, "check")).await.unwrap();
    let _logs = Logs::of(&lab);
    let events: Api<Event> = Api::all(lab.client.clone());
    wait_until(
        "a StrictARPNotEffective Warning on each Node",
        Duration::from_secs(20),
        || async {
            let list = events.list(&ListParams::default()).await.unwrap();
            let nodes: std::collections::BTreeSet<_> = list
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some("StrictARPNotEffective"))
                .filter_map(|e| e.involved_object.name.clone())
                .collect();
            nodes.len() == 2
        },
    )
    .await;
    // The Events come at startup; the allocation may land a moment later.
    wait_until(
        "the Service to get its IP all the same",
        Duration::from_secs(20),
        || async { lab.status().await.unwrap().len() == 1 },
    )
    .await;
    let rows = lab.status().await.unwrap();
    assert_eq!(rows.len(), 1, "the Service still gets its IP");
    assert!(rows[0].owners.is_empty(), "nobody announces: {rows:?}");
    let vip: IpAddr = rows[0].vips[0].parse().unwrap();
    assert!(
        arping_replies(&lab, vip, 2).is_empty(),
        "nothing answers ARP for {vip}"
    );
    let event = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("StrictARPNotEffective"))
        .unwrap();
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(
        event.message.unwrap_or_default().contains("arp_ignore=1"),
        "the Event gives the fix"
    );
}

/// `preferredNodeSelectors` on the L2Advertisement, through real agents and real ARP: every VIP goes to the labelled
/// node whatever the load; when that node dies they fail over to the others; when it comes back they return to it,
/// each move counted as `not-candidate` (a preference, not a level move), and the client's ARP follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_nodes_own_the_vips_and_get_them_back() {
    if skip() {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut lab = Lab::start(options("pref", 3, 3, "enforce")).await.unwrap();
    let _logs = Logs::of(&lab);
    lab.wait_settled(Duration::from_secs(1), Duration::from_secs(30))
        .await
        .unwrap();
    let nodes: Api<Node> = Api::all(lab.client.clone());
    let label = serde_json::json!({"metadata": {"labels": {"ironlb-test/preferred": "yes"}}});
    nodes
        .patch("node-3", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let ads: Api<DynamicObject> = Api::namespaced_with(
        lab.client.clone(),
        "metallb-system",
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "metallb.io",
            "v1beta1",
            "L2Advertisement",
        )),
    );
    let prefer = serde_json::json!({"spec": {"preferredNodeSelectors": [
        {"weight": 50, "preference": {"matchLabels": {"ironlb-test/preferred": "yes"}}}
    ]}});
    ads.patch("lab", &PatchParams::default(), &Patch::Merge(&prefer))
        .await
        .unwrap();

    wait_until(
        "every VIP on the preferred node-3",
        Duration::from_secs(30),
        || all_on(&lab, "node-3"),
    )
    .await;
    let rows = lab.status().await.unwrap();
    let vip: IpAddr = rows[0].vips[0].parse().unwrap();
    let mac = |lab: &Lab, node: &str| lab.node(node).unwrap().mac.clone();
    assert_eq!(lab.resolve_from_client(vip), Some(mac(&lab, "node-3")));

    // node-3 dies: the VIPs go to the other two.
    let failover = measure_failover(&mut lab, vip, "node-3").await.unwrap();
    assert!(failover.is_some(), "no other node answered for {vip}");
    wait_until("every VIP off node-3", Duration::from_secs(30), || async {
        let rows = lab.status().await.unwrap_or_default();
        !rows.is_empty()
            && rows
                .iter()
                .all(|r| r.owners.len() == 1 && r.owners[0] != "node-3")
    })
    .await;

    // node-3 returns: every VIP goes back to it.
    heal(&mut lab, "node-3").unwrap();
    wait_until("every VIP back on node-3", Duration::from_secs(30), || {
        all_on(&lab, "node-3")
    })
    .await;
    // A gratuitous ARP round passes; nothing moves again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let rows = lab.status().await.unwrap();
    assert!(rows.iter().all(|r| r.owners == ["node-3"]), "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.cause.as_deref() == Some("not-candidate")),
        "moved back as a preference: {rows:?}"
    );
    assert_eq!(lab.resolve_from_client(vip), Some(mac(&lab, "node-3")));
    // The ServiceL2Status objects moved with them: node-3's own, and none left by the others.
    assert_status_objects_name_the_owners(&lab, &rows).await;
}

/// Every Service is announced by `node` alone.
async fn all_on(lab: &Lab, node: &str) -> bool {
    let rows = lab.status().await.unwrap_or_default();
    !rows.is_empty() && rows.iter().all(|r| r.owners == [node])
}
