//! Absurd configuration and Services through validation and the allocator, as the agent runs them: a /0 pool,
//! 10^6 pools, 64 KiB annotations, a Service with 10^4 ports. Each gets a clear message naming the object, or works,
//! and the unrelated pool and Services keep their IPs. No root, no network. Times are printed, not asserted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use ironlb::alloc::plan::{Outcome, PlanRow, plan_services};
use ironlb::config::crd::{IPAddressPool, IPAddressPoolSpec};
use ironlb::config::{Document, Sources, validate};
use k8s_openapi::api::core::v1::Service;
use kube::api::ObjectMeta;
use serde_json::json;

fn pool(name: &str, addresses: &[&str], auto_assign: bool) -> IPAddressPool {
    IPAddressPool {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("metallb-system".into()),
            ..Default::default()
        },
        spec: IPAddressPoolSpec {
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: Some(auto_assign),
            avoid_buggy_ips: None,
            service_allocation: None,
        },
        status: None,
    }
}

fn service(name: &str, annotations: serde_json::Value, ports: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "annotations": annotations,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "LoadBalancer", "ports": ports,
                 "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"},
    }))
    .expect("a valid Service")
}

fn port80() -> serde_json::Value {
    json!([{"port": 80, "protocol": "TCP"}])
}

fn plan(sources: &Sources, services: &[Service]) -> BTreeMap<String, PlanRow> {
    let validated = validate(sources);
    plan_services(
        validated.config.pools.into_values().collect(),
        services,
        &BTreeMap::new(),
        None,
    )
    .into_iter()
    .map(|r| (r.service.to_string(), r))
    .collect()
}

fn sources(pools: Vec<IPAddressPool>) -> Sources {
    Sources::from_documents(pools.into_iter().map(Document::IPAddressPool))
}

/// A pool of the whole address space, IPv4 and IPv6: accepted (MetalLB accepts it too), and it hands out addresses
/// like any other pool without overflowing its size arithmetic; an unrelated pool named by a Service is unaffected.
#[test]
fn a_slash_zero_pool_is_handled_and_leaves_other_pools_alone() {
    let s = sources(vec![
        pool("everything", &["0.0.0.0/0", "::/0"], false),
        pool("lab", &["192.0.2.0/28"], true),
    ]);
    let validated = validate(&s);
    println!("errors: {:?}", validated.errors);
    println!("warnings: {:?}", validated.warnings);
    // Overlapping the /0, the younger-by-name pool is rejected, and the message names both.
    let lab_error = validated
        .errors
        .iter()
        .find(|d| d.name == "lab")
        .expect("the /0 pool overlaps pool lab, which is rejected with a message");
    assert!(
        lab_error.to_string().contains("IPAddressPool/everything"),
        "{lab_error}"
    );
    let everything = validated
        .config
        .pools
        .get("everything")
        .expect("a /0 pool is accepted");
    let sizes: Vec<u128> = everything.ranges.iter().map(|r| r.size()).collect();
    assert_eq!(sizes, vec![1u128 << 32, u128::MAX], "sizes saturate");

    let services = vec![
        service(
            "v4",
            json!({"metallb.io/address-pool": "everything"}),
            port80(),
        ),
        service(
            "pinned",
            json!({"metallb.io/loadBalancerIPs": "203.0.113.7"}),
            port80(),
        ),
    ];
    let rows = plan(&s, &services);
    assert_eq!(rows["default/v4"].outcome, Outcome::New);
    assert_eq!(
        rows["default/v4"].ips,
        vec!["0.0.0.0".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        rows["default/pinned"].ips,
        vec!["203.0.113.7".parse::<IpAddr>().unwrap()]
    );
}

/// 10^6 pools (IPv6 /120s in the documentation prefix) through validation and the allocator, plus one overlapping
/// pool rejected by name. Validation must stay near-linear: it was a scan of every accepted pool per new range.
#[test]
fn a_million_pools_validate_and_allocate() {
    const POOLS: u32 = 1_000_000;
    const SERVICES: usize = 1000;
    let started = Instant::now();
    let mut pools: Vec<IPAddressPool> = (0..POOLS)
        .map(|i| {
            let cidr = format!("2001:db8:{:x}:{:x}::/120", i >> 16, i & 0xffff);
            pool(&format!("p{i:07}"), &[&cidr], true)
        })
        .collect();
    // Named last, so it is the one rejected; it overlaps p0000100.
    pools.push(pool(
        "zz-overlap",
        &["2001:db8:0:64::10-2001:db8:0:64::20"],
        true,
    ));
    let s = sources(pools);
    let built = started.elapsed();
    let t = Instant::now();
    let validated = validate(&s);
    let validation = t.elapsed();
    assert_eq!(validated.config.pools.len(), POOLS as usize);
    assert_eq!(validated.errors.len(), 1, "{:?}", validated.errors.first());
    let error = validated.errors[0].to_string();
    assert!(
        error.starts_with("IPAddressPool/zz-overlap:") && error.contains("IPAddressPool/p0000100"),
        "{error}"
    );

    let pools: Vec<ironlb::config::Pool> = validated.config.pools.into_values().collect();
    let t = Instant::now();
    drop(ironlb::alloc::Allocator::new(pools.clone()));
    let index = t.elapsed();
    let t = Instant::now();
    let services: Vec<Service> = (0..SERVICES)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {"name": format!("s{i:04}"), "namespace": "default"},
                "spec": {"type": "LoadBalancer", "ports": port80(),
                         "ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"},
            }))
            .unwrap()
        })
        .collect();
    let rows = plan_services(pools, &services, &BTreeMap::new(), None);
    let allocation = t.elapsed();
    let ips: BTreeSet<IpAddr> = rows.iter().flat_map(|r| r.ips.clone()).collect();
    assert_eq!(ips.len(), SERVICES, "one distinct IP per Service");
    assert!(rows.iter().all(|r| r.outcome == Outcome::New));
    println!(
        "10^6 pools: built in {built:?}, validated in {validation:?}, indexed by the allocator in {index:?}; \
         {SERVICES} Services planned over them (indexing included) in {allocation:?}"
    );
}

/// 64 KiB annotations: a loadBalancerIPs list, a pool name, a sharing key. The Service with the bad request is left
/// without an IP and a short message naming it (an Event's note is limited to 1 KiB by the API server); the one with
/// the long sharing key is served; the unrelated Service keeps its IP.
#[test]
fn sixty_four_kib_annotations_get_a_short_message_naming_the_service() {
    let junk: String = "x".repeat(64 * 1024);
    let many_ips: String = (0..6000)
        .map(|i| format!("203.0.113.{}", i % 250))
        .collect::<Vec<_>>()
        .join(",");
    assert!(many_ips.len() > 64 * 1024);
    let s = sources(vec![pool("lab", &["192.0.2.0/28"], true)]);
    let services = vec![
        service("a-good", json!({}), port80()),
        service(
            "bad-ip",
            json!({"metallb.io/loadBalancerIPs": junk}),
            port80(),
        ),
        service(
            "many-ips",
            json!({"metallb.io/loadBalancerIPs": many_ips}),
            port80(),
        ),
        service(
            "bad-pool",
            json!({"metallb.io/address-pool": junk}),
            port80(),
        ),
        service(
            "long-key",
            json!({"metallb.io/allow-shared-ip": junk}),
            port80(),
        ),
    ];
    let rows = plan(&s, &services);
    assert_eq!(
        rows["default/a-good"].ips,
        vec!["192.0.2.0".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(rows["default/long-key"].outcome, Outcome::New);
    for name in ["bad-ip", "many-ips", "bad-pool"] {
        let row = &rows[&format!("default/{name}")];
        let Outcome::Pending(reason) = &row.outcome else {
            panic!("{name}: {:?}", row.outcome);
        };
        println!("{name}: {reason}");
        assert!(row.ips.is_empty(), "{name}: {:?}", row.ips);
        assert!(
            reason.len() <= 1024,
            "{name}: a {} byte message: {}…",
            reason.len(),
            &reason[..200]
        );
    }
    // The messages about the request name the Service; the one about the pool names the pool it asked for.
    for name in ["bad-ip", "many-ips"] {
        let Outcome::Pending(reason) = &rows[&format!("default/{name}")].outcome else {
            unreachable!()
        };
        assert!(reason.contains(&format!("default/{name}")), "{reason}");
    }
}

/// A Service with 10^4 ports gets an IP; a second Service sharing its VIP with one overlapping port is refused with
/// a message naming the port, and one without overlap shares it.
#[test]
fn ten_thousand_ports() {
    let ports: Vec<serde_json::Value> = (0..10_000)
        .map(|i| json!({"name": format!("p{i}"), "port": 10_000 + i, "protocol": "TCP"}))
        .collect();
    let s = sources(vec![pool("lab", &["192.0.2.0/28"], true)]);
    let shared =
        json!({"metallb.io/allow-shared-ip": "k", "metallb.io/loadBalancerIPs": "192.0.2.5"});
    let services = vec![
        service("big", shared.clone(), json!(ports)),
        service(
            "clash",
            shared.clone(),
            json!([{"port": 15_000, "protocol": "TCP"}]),
        ),
        service("fits", shared, json!([{"port": 80, "protocol": "TCP"}])),
    ];
    let t = Instant::now();
    let rows = plan(&s, &services);
    println!("10^4 ports: planned in {:?}", t.elapsed());
    let vip: IpAddr = "192.0.2.5".parse().unwrap();
    assert_eq!(rows["default/big"].ips, vec![vip]);
    assert_eq!(rows["default/fits"].ips, vec![vip]);
    let Outcome::Pending(reason) = &rows["default/clash"].outcome else {
        panic!("{:?}", rows["default/clash"]);
    };
    println!("clash: {reason}");
    assert!(reason.len() <= 1024, "{} bytes", reason.len());
}
