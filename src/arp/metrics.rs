//! The responder's Prometheus metrics. It only counts; what to count is decided in the responder.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Address family of a gratuitous announcement.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum FamilyLabel {
    ipv4,
    ipv6,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabels {
    pub family: FamilyLabel,
}

/// MetalLB's label for its per-VIP Layer 2 counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IpLabels {
    pub ip: String,
}

/// MetalLB's Layer 2 counters, under MetalLB's names and labels so its dashboards keep working. MetalLB's names
/// carry no `_total`, and OpenMetrics adds that suffix to every counter, so they are exposed as gauges that only
/// rise: the series name is what queries use, and `rate()` reads them the same.
#[derive(Clone, Default)]
pub struct MetallbLayer2 {
    pub requests_received: Family<IpLabels, Gauge>,
    pub responses_sent: Family<IpLabels, Gauge>,
    pub gratuitous_sent: Family<IpLabels, Gauge>,
}

impl MetallbLayer2 {
    fn count(family: &Family<IpLabels, Gauge>, ip: std::net::IpAddr) {
        family.get_or_create(&IpLabels { ip: ip.to_string() }).inc();
    }
}

/// Failover latency buckets in seconds: the design's target is one second, MetalLB's typical figure about ten.
const FAILOVER_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The ARP/NDP responder's metrics.
#[derive(Clone)]
pub struct ArpMetrics {
    pub arp_requests: Counter,
    pub arp_replies: Counter,
    pub ndp_solicitations: Counter,
    pub ndp_advertisements: Counter,
    pub gratuitous: Family<FamilyLabels, Counter>,
    pub malformed: Counter,
    /// Frames dropped unread because they queued while the process was stopped.
    pub stale: Counter,
    /// VIPs this node stopped answering for when the node taking them over announced them.
    pub yielded: Counter,
    pub failover_seconds: Histogram,
    pub metallb: MetallbLayer2,
}

impl Default for ArpMetrics {
    fn default() -> Self {
        ArpMetrics {
            arp_requests: Counter::default(),
            arp_replies: Counter::default(),
            ndp_solicitations: Counter::default(),
            ndp_advertisements: Counter::default(),
            gratuitous: Family::default(),
            malformed: Counter::default(),
            stale: Counter::default(),
            yielded: Counter::default(),
            failover_seconds: Histogram::new(FAILOVER_BUCKETS),
            metallb: MetallbLayer2::default(),
        }
    }
}

impl ArpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ArpMetrics::default();
        registry.register(
            "ironlb_arp_requests",
            "ARP requests seen for VIPs this node announces",
            m.arp_requests.clone(),
        );
        registry.register(
            "ironlb_arp_replies",
            "ARP replies sent for VIPs this node announces",
            m.arp_replies.clone(),
        );
        registry.register(
            "ironlb_ndp_solicitations",
            "Neighbour solicitations seen for VIPs this node announces",
            m.ndp_solicitations.clone(),
        );
        registry.register(
            "ironlb_ndp_advertisements",
            "Solicited neighbour advertisements sent for VIPs this node announces",
            m.ndp_advertisements.clone(),
        );
        registry.register(
            "ironlb_gratuitous",
            "Gratuitous ARP packets and unsolicited neighbour advertisements sent",
            m.gratuitous.clone(),
        );
        registry.register(
            "ironlb_arp_malformed_frames",
            "ARP or NDP frames dropped as malformed",
            m.malformed.clone(),
        );
        registry.register(
            "ironlb_arp_stale_frames",
            "ARP or NDP frames dropped unanswered because they queued while this agent was stopped (SIGSTOP, a paused \
             VM): the VIPs may have moved meanwhile",
            m.stale.clone(),
        );
        registry.register(
            "ironlb_arp_yielded",
            "VIPs this node stopped answering for the moment another station announced them, while handing them \
             over or kept only for want of news from its peers",
            m.yielded.clone(),
        );
        registry.register(
            "ironlb_failover_seconds",
            "From the change that made this node a VIP's owner to its first announcement",
            m.failover_seconds.clone(),
        );
        registry.register(
            "metallb_layer2_requests_received",
            "Number of layer2 requests received for owned IPs",
            m.metallb.requests_received.clone(),
        );
        registry.register(
            "metallb_layer2_responses_sent",
            "Number of layer2 responses sent for owned IPs in response to requests",
            m.metallb.responses_sent.clone(),
        );
        registry.register(
            "metallb_layer2_gratuitous_sent",
            "Number of gratuitous layer2 packets sent for owned IPs as a result of failovers",
            m.metallb.gratuitous_sent.clone(),
        );
        m
    }

    pub(crate) fn gratuitous_sent(&self, vip: std::net::IpAddr) {
        let family = if vip.is_ipv4() {
            FamilyLabel::ipv4
        } else {
            FamilyLabel::ipv6
        };
        self.gratuitous
            .get_or_create(&FamilyLabels { family })
            .inc();
        MetallbLayer2::count(&self.metallb.gratuitous_sent, vip);
    }

    /// An ARP request or neighbour solicitation for `vip`, which this node owns, was answered (`sent`) or not.
    pub(crate) fn request_for(&self, vip: std::net::IpAddr, sent: bool) {
        let arp = vip.is_ipv4();
        if arp {
            self.arp_requests.inc();
        } else {
            self.ndp_solicitations.inc();
        }
        MetallbLayer2::count(&self.metallb.requests_received, vip);
        if sent {
            if arp {
                self.arp_replies.inc();
            } else {
                self.ndp_advertisements.inc();
            }
            MetallbLayer2::count(&self.metallb.responses_sent, vip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_its_name() {
        let mut registry = Registry::default();
        let m = ArpMetrics::register(&mut registry);
        m.gratuitous_sent("2001:db8::1".parse().unwrap());
        m.request_for("192.0.2.1".parse().unwrap(), true);
        m.request_for("192.0.2.1".parse().unwrap(), false);
        m.failover_seconds.observe(0.2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for name in [
            "ironlb_arp_requests_total 2",
            "ironlb_arp_replies_total 1",
            "ironlb_ndp_solicitations_total 0",
            "ironlb_ndp_advertisements_total 0",
            "ironlb_gratuitous_total{family=\"ipv6\"} 1",
            "ironlb_arp_malformed_frames_total 0",
            "ironlb_failover_seconds_count 1",
            "ironlb_failover_seconds_bucket{le=\"0.25\"} 1",
            // MetalLB's names, per VIP, with no `_total`.
            "metallb_layer2_requests_received{ip=\"192.0.2.1\"} 2",
            "metallb_layer2_responses_sent{ip=\"192.0.2.1\"} 1",
            "metallb_layer2_gratuitous_sent{ip=\"2001:db8::1\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
