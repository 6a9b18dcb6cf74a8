//! Property test of the incremental [`Planner`]: over random histories of Service creates, updates, deletes,
//! status writes that land or fail, and statuses edited by hand, its rows after every step are the rows of a full
//! pass over the same Services (what a new leader computes), and so is the `NeedsFullPass` fallback's.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use proptest::prelude::*;
use serde_json::json;

use super::allocator::testing::{PoolExt, pool};
use super::plan::{PlanRow, Planner};
use super::service::ServiceKey;
use crate::config::{Labels, Pool};

/// Small pools, so that histories run them dry and free them again: a dual-stack one and an IPv4 one that serves
/// only Services labelled team=blue.
fn pools() -> Vec<Pool> {
    vec![
        pool("a", &["192.0.2.0-192.0.2.2", "2001:db8::-2001:db8::1"]),
        pool("b", &["198.51.100.0-198.51.100.1"]).for_service_label("team", "blue"),
    ]
}

const IPS: [&str; 6] = [
    "192.0.2.0",
    "192.0.2.1",
    "192.0.2.2",
    "198.51.100.0",
    "2001:db8::",
    "203.0.113.9",
];

/// What a Service asks for.
#[derive(Clone, Debug)]
struct Spec {
    /// 0: SingleStack IPv4, 1: IPv6, 2: PreferDualStack, 3: RequireDualStack.
    families: u8,
    requested: Option<usize>,
    pool: Option<&'static str>,
    shared: bool,
    port: u16,
    blue: bool,
    /// Seconds after a fixed epoch, few values so that ties happen; None: no timestamp.
    created: Option<u8>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..4,
        proptest::option::weighted(0.2, 0usize..IPS.len()),
        proptest::option::weighted(0.2, prop_oneof![Just("a"), Just("b"), Just("missing")]),
        any::<bool>(),
        prop_oneof![Just(80u16), Just(443u16)],
        any::<bool>(),
        proptest::option::weighted(0.9, 0u8..4),
    )
        .prop_map(
            |(families, requested, pool, shared, port, blue, created)| Spec {
                families,
                requested,
                pool,
                shared,
                port,
                blue,
                created,
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Upsert(usize, Spec),
    Delete(usize),
    /// Every Service whose status differs from its row gets its row, except where the mask's bit says the write
    /// failed.
    Write(u8),
    /// Someone writes an IP into a Service's status by hand.
    Tamper(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..7, spec()).prop_map(|(i, s)| Op::Upsert(i, s)),
        1 => (0usize..7).prop_map(Op::Delete),
        4 => any::<u8>().prop_map(Op::Write),
        1 => (0usize..7, 0usize..IPS.len()).prop_map(|(i, ip)| Op::Tamper(i, ip)),
    ]
}

fn key(i: usize) -> ServiceKey {
    ServiceKey::new(
        if i.is_multiple_of(2) { "ns1" } else { "ns2" },
        format!("svc{i}"),
    )
}

fn service(i: usize, s: &Spec, status: &[String], version: u64) -> Service {
    let k = key(i);
    let (policy, families) = match s.families {
        0 => ("SingleStack", json!(["IPv4"])),
        1 => ("SingleStack", json!(["IPv6"])),
        2 => ("PreferDualStack", json!(["IPv4", "IPv6"])),
        _ => ("RequireDualStack", json!(["IPv4", "IPv6"])),
    };
    let mut annotations = serde_json::Map::new();
    if let Some(ip) = s.requested {
        annotations.insert("metallb.io/loadBalancerIPs".into(), IPS[ip].into());
    }
    if let Some(p) = s.pool {
        annotations.insert("metallb.io/address-pool".into(), p.into());
    }
    if s.shared {
        annotations.insert("metallb.io/allow-shared-ip".into(), "k".into());
    }
    let mut metadata = json!({
        "name": k.name, "namespace": k.namespace, "resourceVersion": version.to_string(),
        "annotations": annotations,
        "labels": if s.blue { json!({"team": "blue"}) } else { json!({}) },
    });
    if let Some(c) = s.created {
        metadata["creationTimestamp"] = format!("2026-12-07T10:00:0{c}Z").into();
    }
    let ingress: Vec<_> = status.iter().map(|ip| json!({"ip": ip})).collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": metadata,
        "spec": {
            "type": "LoadBalancer", "ipFamilyPolicy": policy, "ipFamilies": families,
            "ports": [{"port": s.port, "protocol": "TCP"}],
        },
        "status": {"loadBalancer": {"ingress": ingress}},
    }))
    .expect("a Service")
}

struct Cluster {
    specs: BTreeMap<usize, (Spec, Vec<String>)>,
    version: u64,
}

impl Cluster {
    fn services(&self) -> BTreeMap<ServiceKey, Service> {
        self.specs
            .iter()
            .map(|(i, (s, status))| (key(*i), service(*i, s, status, self.version)))
            .collect()
    }
}

fn full(services: &BTreeMap<ServiceKey, Service>) -> Planner {
    Planner::full(
        pools(),
        services.values(),
        &BTreeMap::<String, Labels>::new(),
        None,
    )
}

fn rows(p: &Planner) -> Vec<PlanRow> {
    p.rows().cloned().collect()
}

fn run(ops: Vec<Op>) -> Result<(usize, usize), TestCaseError> {
    let mut cluster = Cluster {
        specs: BTreeMap::new(),
        version: 0,
    };
    let none = BTreeMap::<String, Labels>::new();
    let mut planner = full(&cluster.services());
    let (mut updates, mut fallbacks) = (0, 0);
    for op in ops {
        cluster.version += 1;
        let mut changed: Vec<usize> = Vec::new();
        match op {
            Op::Upsert(i, s) => {
                let status = cluster
                    .specs
                    .remove(&i)
                    .map(|(_, st)| st)
                    .unwrap_or_default();
                cluster.specs.insert(i, (s, status));
                changed.push(i);
            }
            Op::Delete(i) => {
                if cluster.specs.remove(&i).is_some() {
                    changed.push(i);
                }
            }
            Op::Write(mask) => {
                for (i, (_, status)) in cluster.specs.iter_mut() {
                    let Some(row) = planner.row(&key(*i)) else {
                        continue;
                    };
                    let ips: Vec<String> = row.ips.iter().map(ToString::to_string).collect();
                    if ips != *status && mask & (1 << (i % 8)) != 0 {
                        *status = ips;
                        changed.push(*i);
                    }
                }
            }
            Op::Tamper(i, ip) => {
                if let Some((_, status)) = cluster.specs.get_mut(&i) {
                    *status = vec![IPS[ip].to_string()];
                    changed.push(i);
                }
            }
        }
        let services = cluster.services();
        let change = changed.iter().map(|i| (key(*i), services.get(&key(*i))));
        updates += 1;
        if planner.update(change, &none).is_err() {
            fallbacks += 1;
            planner = full(&services);
        }
        prop_assert_eq!(rows(&planner), rows(&full(&services)));
    }
    Ok((updates, fallbacks))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn incremental_plans_equal_full_passes(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}

#[test]
fn the_fallback_is_rare_on_ordinary_histories() {
    // Creates, writes that land, deletes: the ordinary life of Services. No full pass should be needed.
    let s = |created| Spec {
        families: 0,
        requested: None,
        pool: None,
        shared: false,
        port: 80,
        blue: false,
        created: Some(created),
    };
    let mut ops = Vec::new();
    for i in 0..7 {
        ops.push(Op::Upsert(i, s((i % 4) as u8)));
        ops.push(Op::Write(0xff));
    }
    ops.push(Op::Delete(1));
    ops.push(Op::Write(0xff));
    let (updates, fallbacks) = run(ops).unwrap();
    assert_eq!((updates, fallbacks), (16, 0));
}

#[test]
fn random_histories_take_the_incremental_path_almost_always() {
    // Equality with full passes would hold trivially if every update fell back to one: count the fallbacks over
    // 200 histories drawn with a fixed seed.
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(op(), 1..40);
    let (mut updates, mut fallbacks) = (0, 0);
    for _ in 0..200 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let (u, f) = run(ops).unwrap();
        updates += u;
        fallbacks += f;
    }
    assert!(updates > 2000, "{updates} updates");
    assert!(
        fallbacks * 100 <= updates,
        "{fallbacks} full passes in {updates} updates"
    );
}
