//! MetalLB's metric names, exported beside IronLB's own, so that the dashboards and alert rules written for MetalLB
//! keep working after the switch: the allocator (`metallb_allocator_*`), Kubernetes client (`metallb_k8s_client_*`)
//! and speaker (`metallb_speaker_announced`) families here; the Layer 2 families live with the responder
//! (`crate::arp::metrics`) and the BGP ones with the speaker (`super::bgp`).
//!
//! Same names, same labels, same meaning, with two differences the README states:
//! - MetalLB's controller is one pod, so its allocator series come from one place; here only the agent holding the
//!   allocator Lease exports them, and drops them when it loses the Lease.
//! - MetalLB keeps the whole previous configuration when a new one fails to load (`config_stale_bool` 1); IronLB
//!   leaves out only the invalid objects and runs the rest, so `config_stale_bool` is 1 while any object is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::alloc::ServiceKey;
use crate::config::Family as IpFamily;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
}

/// An IPv6 pool easily holds more addresses than an i64 counts, as MetalLB's float gauges allow.
type Addresses = Family<PoolLabel, Gauge<f64, AtomicU64>>;

/// How one pool stands, for [`AllocatorFamilies::record`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PoolCounts {
    /// Usable addresses per family (after `avoidBuggyIPs`): IPv4, IPv6.
    pub usable: [u128; 2],
    /// Distinct addresses held by Services, per family: IPv4, IPv6.
    pub in_use: [usize; 2],
    /// Services holding at least one address of the pool.
    pub services: usize,
}

/// `metallb_allocator_*`, per pool.
#[derive(Clone, Default)]
pub struct AllocatorFamilies {
    addresses: Addresses,
    ipv4_addresses: Addresses,
    ipv6_addresses: Addresses,
    in_use: Addresses,
    ipv4_in_use: Addresses,
    ipv6_in_use: Addresses,
    services: Addresses,
}

impl AllocatorFamilies {
    pub fn register(registry: &mut Registry) -> Self {
        let m = AllocatorFamilies::default();
        for (name, help, family) in [
            (
                "metallb_allocator_addresses_total",
                "Number of usable IP addresses, per pool",
                &m.addresses,
            ),
            (
                "metallb_allocator_ipv4_addresses_total",
                "Number of usable IPV4 addresses, per pool",
                &m.ipv4_addresses,
            ),
            (
                "metallb_allocator_ipv6_addresses_total",
                "Number of usable IPV6 addresses, per pool",
                &m.ipv6_addresses,
            ),
            (
                "metallb_allocator_addresses_in_use_total",
                "Number of IP addresses in use, per pool",
                &m.in_use,
            ),
            (
                "metallb_allocator_ipv4_addresses_in_use_total",
                "Number of IPV4 addresses in use, per pool",
                &m.ipv4_in_use,
            ),
            (
                "metallb_allocator_ipv6_addresses_in_use_total",
                "Number of IPV6 addresses in use, per pool",
                &m.ipv6_in_use,
            ),
            (
                "metallb_allocator_services_allocated_total",
                "Number of services allocated, per pool",
                &m.services,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        m
    }

    /// Sets every family to `pools`; pools not listed disappear, as MetalLB deletes a removed pool's series.
    pub fn record(&self, pools: &BTreeMap<String, PoolCounts>) {
        self.clear();
        for (name, usage) in pools {
            let label = PoolLabel { pool: name.clone() };
            let [v4, v6] = usage.usable.map(|n| n as f64);
            let [used4, used6] = usage.in_use.map(|n| n as f64);
            self.addresses.get_or_create(&label).set(v4 + v6);
            self.ipv4_addresses.get_or_create(&label).set(v4);
            self.ipv6_addresses.get_or_create(&label).set(v6);
            self.in_use.get_or_create(&label).set(used4 + used6);
            self.ipv4_in_use.get_or_create(&label).set(used4);
            self.ipv6_in_use.get_or_create(&label).set(used6);
            self.services
                .get_or_create(&label)
                .set(usage.services as f64);
        }
    }

    /// Drops every series: this agent no longer allocates.
    pub fn clear(&self) {
        for family in [
            &self.addresses,
            &self.ipv4_addresses,
            &self.ipv6_addresses,
            &self.in_use,
            &self.ipv4_in_use,
            &self.ipv6_in_use,
            &self.services,
        ] {
            family.clear();
        }
    }
}

/// Pool usage as the Services' status says it now: distinct addresses per family, and Services, per pool.
pub fn pool_usage<'a>(
    pools: impl Iterator<Item = &'a crate::config::Pool>,
    ingress: impl Iterator<Item = Vec<IpAddr>>,
) -> BTreeMap<String, PoolCounts> {
    let pools: Vec<&crate::config::Pool> = pools.collect();
    let mut usage: BTreeMap<String, PoolCounts> = pools
        .iter()
        .map(|p| {
            let usable = [p.usable(IpFamily::V4), p.usable(IpFamily::V6)];
            (
                p.name.clone(),
                PoolCounts {
                    usable,
                    ..Default::default()
                },
            )
        })
        .collect();
    let mut held: BTreeMap<&str, BTreeSet<IpAddr>> = BTreeMap::new();
    for ips in ingress {
        let mut of_service = BTreeSet::new();
        for ip in ips {
            if let Some(pool) = pools.iter().find(|p| p.contains(&ip)) {
                held.entry(pool.name.as_str()).or_default().insert(ip);
                of_service.insert(pool.name.as_str());
            }
        }
        for pool in of_service {
            if let Some(u) = usage.get_mut(pool) {
                u.services += 1;
            }
        }
    }
    for (pool, ips) in held {
        if let Some(u) = usage.get_mut(pool) {
            u.in_use = [
                ips.iter().filter(|ip| ip.is_ipv4()).count(),
                ips.iter().filter(|ip| ip.is_ipv6()).count(),
            ];
        }
    }
    usage
}

/// `metallb_k8s_client_*`.
#[derive(Clone, Default)]
pub struct ClientFamilies {
    /// Watch events received (MetalLB: object updates processed).
    pub updates: Counter,
    /// Watch failures, each followed by a retry with backoff (MetalLB: updates that failed).
    pub update_errors: Counter,
    config_loaded: Gauge,
    config_stale: Gauge,
}

impl ClientFamilies {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ClientFamilies::default();
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "metallb_k8s_client_updates",
            "Number of k8s object updates that have been processed.",
            m.updates.clone(),
        );
        registry.register(
            "metallb_k8s_client_update_errors",
            "Number of k8s object updates that failed for some reason.",
            m.update_errors.clone(),
        );
        registry.register(
            "metallb_k8s_client_config_loaded_bool",
            "1 if the MetalLB configuration was successfully loaded at least once.",
            m.config_loaded.clone(),
        );
        registry.register(
            "metallb_k8s_client_config_stale_bool",
            "1 if running on a stale configuration, because the latest config failed to load.",
            m.config_stale.clone(),
        );
        m
    }

    /// After the configuration was read and validated: loaded from now on; stale while `left_out` objects are.
    pub fn config_read(&self, left_out: usize) {
        self.config_loaded.set(1);
        self.config_stale.set(i64::from(left_out > 0));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct AnnouncedLabels {
    service: String,
    protocol: &'static str,
    node: String,
    ip: String,
}

/// `metallb_speaker_announced{service, protocol, node, ip}`: 1 for each VIP of each Service this node announces.
#[derive(Clone, Default)]
pub struct SpeakerAnnounced {
    family: Family<AnnouncedLabels, Gauge>,
    /// What the family holds now, so a pass that changes nothing touches nothing.
    now: BTreeSet<AnnouncedLabels>,
}

impl SpeakerAnnounced {
    pub fn register(registry: &mut Registry) -> Self {
        let m = SpeakerAnnounced::default();
        registry.register(
            "metallb_speaker_announced",
            "Services being announced from this node. This is desired state, it does not guarantee that the routing \
             protocols have converged.",
            m.family.clone(),
        );
        m
    }

    /// Sets the series to what this node announces now, over Layer 2 and over BGP.
    pub fn record(
        &mut self,
        node: &str,
        layer2: &BTreeMap<ServiceKey, Vec<IpAddr>>,
        bgp: &BTreeMap<ServiceKey, Vec<IpAddr>>,
    ) {
        let labels = |protocol: &'static str, services: &BTreeMap<ServiceKey, Vec<IpAddr>>| {
            services
                .iter()
                .flat_map(move |(service, ips)| {
                    ips.iter().map(move |ip| AnnouncedLabels {
                        service: service.to_string(),
                        protocol,
                        node: node.to_string(),
                        ip: ip.to_string(),
                    })
                })
                .collect::<Vec<_>>()
        };
        let next: BTreeSet<AnnouncedLabels> = labels("layer2", layer2)
            .into_iter()
            .chain(labels("bgp", bgp))
            .collect();
        for gone in self.now.difference(&next) {
            self.family.remove(gone);
        }
        for new in next.difference(&self.now) {
            self.family.get_or_create(new).set(1);
        }
        self.now = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IpRange, Pool};

    fn range(text: &str) -> IpRange {
        match text.split_once('-') {
            Some((a, b)) => IpRange::new(a.parse().unwrap(), b.parse().unwrap()).unwrap(),
            None => IpRange::from_cidr(text.parse().unwrap()),
        }
    }

    fn pool(name: &str, ranges: &[&str], avoid_buggy_ips: bool) -> Pool {
        Pool {
            name: name.into(),
            ranges: ranges.iter().map(|r| range(r)).collect(),
            auto_assign: true,
            avoid_buggy_ips,
            service_allocation: None,
        }
    }

    fn text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text
    }

    #[test]
    fn pool_usage_counts_distinct_addresses_and_services_and_skips_buggy_ones() {
        let pools = [
            pool("a", &["192.0.2.0/24", "2001:db8::/120"], true),
            pool("b", &["198.51.100.10-198.51.100.19"], false),
        ];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let ingress = vec![
            vec![ip("192.0.2.1"), ip("2001:db8::1")],
            // Shares 192.0.2.1: one address in use, two Services.
            vec![ip("192.0.2.1")],
            vec![ip("198.51.100.10")],
            // Outside every pool: counted nowhere.
            vec![ip("203.0.113.5")],
        ];
        let usage = pool_usage(pools.iter(), ingress.into_iter());
        assert_eq!(
            usage["a"],
            PoolCounts {
                usable: [254, 256],
                in_use: [1, 1],
                services: 2
            }
        );
        assert_eq!(
            usage["b"],
            PoolCounts {
                usable: [10, 0],
                in_use: [1, 0],
                services: 1
            }
        );
    }

    #[test]
    fn allocator_series_have_metallbs_names_and_go_with_their_pool() {
        let mut registry = Registry::default();
        let m = AllocatorFamilies::register(&mut registry);
        let mut pools = BTreeMap::new();
        pools.insert(
            "a".to_string(),
            PoolCounts {
                usable: [254, 256],
                in_use: [1, 1],
                services: 2,
            },
        );
        m.record(&pools);
        let t = text(&registry);
        for line in [
            "metallb_allocator_addresses_total{pool=\"a\"} 510.0",
            "metallb_allocator_ipv4_addresses_total{pool=\"a\"} 254.0",
            "metallb_allocator_ipv6_addresses_total{pool=\"a\"} 256.0",
            "metallb_allocator_addresses_in_use_total{pool=\"a\"} 2.0",
            "metallb_allocator_ipv4_addresses_in_use_total{pool=\"a\"} 1.0",
            "metallb_allocator_ipv6_addresses_in_use_total{pool=\"a\"} 1.0",
            "metallb_allocator_services_allocated_total{pool=\"a\"} 2.0",
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
        m.record(&BTreeMap::new());
        assert!(!text(&registry).contains("pool=\"a\""));
        m.record(&pools);
        m.clear();
        assert!(!text(&registry).contains("pool=\"a\""));
    }

    #[test]
    fn client_series_say_loaded_and_stale() {
        let mut registry = Registry::default();
        let m = ClientFamilies::register(&mut registry);
        let t = text(&registry);
        assert!(t.contains("metallb_k8s_client_config_loaded_bool 0"), "{t}");
        m.updates.inc();
        m.config_read(2);
        let t = text(&registry);
        for line in [
            "metallb_k8s_client_updates_total 1",
            "metallb_k8s_client_update_errors_total 0",
            "metallb_k8s_client_config_loaded_bool 1",
            "metallb_k8s_client_config_stale_bool 1",
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
        m.config_read(0);
        assert!(text(&registry).contains("metallb_k8s_client_config_stale_bool 0"));
    }

    #[test]
    fn announced_series_follow_what_the_node_announces() {
        let mut registry = Registry::default();
        let mut m = SpeakerAnnounced::register(&mut registry);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let web = ServiceKey::new("default", "web");
        let db = ServiceKey::new("prod", "db");
        let layer2 = BTreeMap::from([(web.clone(), vec![ip("192.0.2.1"), ip("2001:db8::1")])]);
        let bgp = BTreeMap::from([(db.clone(), vec![ip("198.51.100.7")])]);
        m.record("node-1", &layer2, &bgp);
        let t = text(&registry);
        for line in [
            "metallb_speaker_announced{service=\"default/web\",protocol=\"layer2\",node=\"node-1\",ip=\"192.0.2.1\"} 1",
            "metallb_speaker_announced{service=\"default/web\",protocol=\"layer2\",node=\"node-1\",ip=\"2001:db8::1\"} 1",
            "metallb_speaker_announced{service=\"prod/db\",protocol=\"bgp\",node=\"node-1\",ip=\"198.51.100.7\"} 1",
        ] {
            assert!(t.contains(line), "{line} missing from\n{t}");
        }
        m.record("node-1", &BTreeMap::new(), &bgp);
        let t = text(&registry);
        assert!(!t.contains("default/web"), "{t}");
        assert!(t.contains("prod/db"), "{t}");
    }
}
