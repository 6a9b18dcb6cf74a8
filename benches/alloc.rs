//! Allocator benchmarks, each run against IronLB's allocator and against a baseline that finds a free address the
//! way MetalLB's allocator does: walk the pool's addresses from the start, checking a hash map of used IPs.
//!
//! (a) 10,000 Services, two thirds IPv4 and one third IPv6, one in five with a sharing key (four Services per
//!     key, on different ports), allocated from empty over a 2^20-address IPv4 pool and an IPv6 /64 pool.
//! (b) one allocation (and its release, to keep the state unchanged) in a 2^20-address pool that is 90% full.
//! (c) the leader's allocation pass at 10,000 Services that hold their IPs, per change: a Service created, planned,
//!     its status landing, planned again, then deleted and planned (four passes, each after one change), against the
//!     full pass every change cost before passes became incremental (the pass of a new leader, in the same run).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ironlb::alloc::{Allocator, FamilyPolicy, LbRequest, ServiceKey, ServicePort};
use ironlb::config::model::{from_u128, to_u128};
use ironlb::config::{Family, IpRange, Labels, Pool};

const SERVICES: usize = 10_000;

fn pool(name: &str, cidr: &str) -> Pool {
    Pool {
        name: name.into(),
        ranges: vec![IpRange::from_cidr(cidr.parse().expect("cidr"))],
        auto_assign: true,
        avoid_buggy_ips: false,
        service_allocation: None,
    }
}

fn pools() -> Vec<Pool> {
    // A 2^20-address IPv4 pool needs a /12, which no documentation range offers; these addresses are only data for
    // the allocator and never reach an interface.
    vec![pool("v4", "10.0.0.0/12"), pool("v6", "2001:db8::/64")]
}

fn request(i: usize) -> LbRequest {
    let family = if i.is_multiple_of(3) {
        Family::V6
    } else {
        Family::V4
    };
    let shares = i.is_multiple_of(5);
    LbRequest {
        service: ServiceKey::new("bench", format!("svc-{i}")),
        requested_ips: vec![],
        pool: None,
        sharing_key: shares.then(|| format!("key-{}", i / 20)),
        ports: vec![ServicePort {
            protocol: "TCP".into(),
            port: if shares { 80 + (i / 5 % 4) as i32 } else { 80 },
        }],
        traffic_local: false,
        selector: Labels::new(),
        family_policy: FamilyPolicy::SingleStack,
        families: vec![family],
        labels: Labels::new(),
        namespace_labels: Labels::new(),
        status_ips: vec![],
        deprecated_annotations: vec![],
    }
}

/// MetalLB's way: for each pool, for each address from the start, try it against a map of used IPs.
struct LinearScan {
    pools: Vec<Pool>,
    used: HashMap<IpAddr, (Option<String>, Vec<ServicePort>)>,
}

impl LinearScan {
    fn new(pools: Vec<Pool>) -> LinearScan {
        LinearScan {
            pools,
            used: HashMap::new(),
        }
    }

    fn fits(&self, ip: &IpAddr, r: &LbRequest) -> bool {
        match self.used.get(ip) {
            None => true,
            Some((key, ports)) => {
                key.is_some() && *key == r.sharing_key && r.ports.iter().all(|p| !ports.contains(p))
            }
        }
    }

    fn allocate(&mut self, r: &LbRequest) -> Option<IpAddr> {
        let family = r.families[0];
        for p in &self.pools {
            for range in p.ranges.iter().filter(|range| range.family() == family) {
                let (start, end) = (to_u128(range.start()), to_u128(range.end()));
                let mut n = start;
                loop {
                    let ip = from_u128(family, n);
                    if self.fits(&ip, r) {
                        let entry = self
                            .used
                            .entry(ip)
                            .or_insert((r.sharing_key.clone(), vec![]));
                        entry.1.extend(r.ports.iter().cloned());
                        return Some(ip);
                    }
                    if n == end {
                        break;
                    }
                    n += 1;
                }
            }
        }
        None
    }

    fn release(&mut self, ip: &IpAddr) {
        self.used.remove(ip);
    }
}

fn from_empty(c: &mut Criterion) {
    let requests: Vec<LbRequest> = (0..SERVICES).map(request).collect();
    let mut g = c.benchmark_group("a_allocate_10k_services_from_empty");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("ironlb", |b| {
        b.iter_batched(
            || Allocator::new(pools()),
            |mut a| {
                for r in &requests {
                    black_box(a.allocate(r).expect("room"));
                }
                a
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("baseline_linear_scan", |b| {
        b.iter_batched(
            || LinearScan::new(pools()),
            |mut a| {
                for r in &requests {
                    black_box(a.allocate(r).expect("room"));
                }
                a
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn ninety_percent_full(c: &mut Criterion) {
    let pools = vec![pool("v4", "10.0.0.0/12")];
    let size = 1usize << 20;
    let full = size * 9 / 10;
    let mut ours = Allocator::new(pools.clone());
    let mut baseline = LinearScan::new(pools.clone());
    let start = to_u128("10.0.0.0".parse().expect("ip"));
    for i in 0..full {
        let mut r = request(1);
        r.service = ServiceKey::new("fill", format!("svc-{i}"));
        ours.allocate(&r).expect("room");
        baseline.used.insert(
            from_u128(Family::V4, start + i as u128),
            (None, r.ports.clone()),
        );
    }
    let probe = {
        let mut r = request(1);
        r.service = ServiceKey::new("bench", "probe");
        r
    };
    let mut g = c.benchmark_group("b_one_allocation_in_90pct_full_2^20_pool");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("ironlb", |b| {
        b.iter(|| {
            black_box(ours.allocate(&probe).expect("room"));
            ours.release(&probe.service);
        })
    });
    g.bench_function("baseline_linear_scan", |b| {
        b.iter(|| {
            let ip = black_box(baseline.allocate(&probe).expect("room"));
            baseline.release(&ip);
        })
    });
    g.finish();
}

/// 10,000 LoadBalancer Services in 100 namespaces, each holding its IP in status, as the state a leader plans from.
fn settled_cluster() -> (ironlb::k8s::state::ClusterState, ironlb::config::Validated) {
    use k8s_openapi::api::core::v1::Service;
    let validated = ironlb::config::validate(
        &ironlb::config::Sources::from_yaml(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\n\
             metadata: {name: bench, namespace: metallb-system}\nspec: {addresses: [198.18.0.0/15]}\n",
        )
        .expect("pool"),
    );
    let mut state = ironlb::k8s::state::ClusterState::default();
    for i in 0..SERVICES {
        let ip =
            std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i as u32);
        let svc: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {
                "name": format!("svc-{i}"), "namespace": format!("ns-{}", i % 100),
                "resourceVersion": "1", "creationTimestamp": "2026-12-07T10:00:00Z",
                "annotations": {"metallb.io/ip-allocated-from-pool": "bench", "ironlb.io/pool": "bench"},
            },
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}},
        }))
        .expect("a Service");
        state.services.apply(svc);
    }
    (state, validated)
}

fn pass_per_change(c: &mut Criterion) {
    use ironlb::k8s::allocation::{AllocationController, Settings};
    use k8s_openapi::api::core::v1::Service;
    let (mut state, validated) = settled_cluster();
    let mut controller = AllocationController::new(Settings::default());
    let first = controller.pass(&state, &validated);
    assert!(
        first.services.is_empty(),
        "the cluster is not settled: {} actions",
        first.services.len()
    );
    let probe: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "probe", "namespace": "ns-0", "creationTimestamp": "2026-12-07T11:00:00Z"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]},
    }))
    .expect("a Service");
    let mut version = 1u64;
    let mut g = c.benchmark_group("c_allocation_pass_per_change_10k_services");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    // One iteration is four changes, each followed by its pass: create, status lands, the reply seen, delete.
    g.bench_function("ironlb_incremental_4_changes", |b| {
        b.iter(|| {
            version += 1;
            let mut svc = probe.clone();
            svc.metadata.resource_version = Some(version.to_string());
            state.services.apply(svc.clone());
            let pass = controller.pass(&state, &validated);
            let action = pass.services.first().expect("the probe is planned");
            svc.status =
                serde_json::from_value(action.status.as_ref().expect("a status")["status"].clone())
                    .expect("status");
            version += 1;
            svc.metadata.resource_version = Some(version.to_string());
            state.services.apply(svc.clone());
            black_box(controller.pass(&state, &validated));
            black_box(controller.pass(&state, &validated));
            state.services.delete(&svc);
            black_box(controller.pass(&state, &validated));
        })
    });
    assert_eq!(
        controller.full_passes(),
        1,
        "a change fell back to a full pass"
    );
    g.bench_function("reference_full_pass", |b| {
        b.iter(|| {
            let mut leader = AllocationController::new(Settings::default());
            black_box(leader.pass(&state, &validated))
        })
    });
    g.finish();
}

criterion_group!(benches, from_empty, ninety_percent_full, pass_per_change);
criterion_main!(benches);
