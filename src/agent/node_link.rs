//! The node's own network, in a task of its own: it reads the local interfaces, the strict ARP sysctls and
//! kube-proxy's mode every [`LOOK_EVERY`] and publishes them, and it binds on the VIP link what the last
//! announcement pass wants. Netlink calls, sysctl reads (and, with `--strict-arp=enforce`, writes) and the probe of
//! kube-proxy never hold up the agent's decisions: the announcement pass reads the facts last published and hands
//! over what it wants bound.
//!
//! Strict ARP matters only where a VIP is bound on the node: on the VIP link, which exists in the integrated data
//! plane only while kube-proxy runs in IPVS mode (it makes `kube-ipvs0`), and always in the direct data plane
//! (IronLB makes `ironlb0`). Where kube-proxy runs in nftables or iptables mode, nothing is bound, the kernel has no
//! VIP to answer ARP for, and the node announces whatever its ARP sysctls say; it needs strict ARP again, with no
//! restart, the moment a `kube-ipvs0` appears.
//!
//! ```text
//!  rtnetlink, /proc, ──every 2 s──▶ NodeLink ──watch<LocalFacts>──▶ Announcer::pass (a change asks for a pass)
//!  kube-proxy /proxyMode
//!                                    ▲  └────────── reconcile ──────▶ VIP link addresses
//!  Announcer::pass ──watch<Option<BindRequest>>──┘  (at once on a new request, and again at every look)
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::netif::AddressReconciler;
use crate::netif::LocalInterface;
use crate::netif::proxy_mode::{self, ProxyMode};
use crate::netif::strict_arp::{self, Ipv4Conf, StrictArpMetrics, StrictArpReport};

/// How often the node's links and sysctls are read again, and the VIP binding checked.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// What the node looks like to the announcement pass.
#[derive(Clone, Debug, Default)]
pub struct LocalFacts {
    pub interfaces: Vec<LocalInterface>,
    pub strict: Strict,
    /// kube-proxy's mode on this node, for its Node annotation; None before the first look.
    pub proxy_mode: Option<ProxyMode>,
}

/// Strict ARP on this node, as the last look found it.
#[derive(Clone, Debug, Default)]
pub enum Strict {
    /// Not looked yet: nothing is announced.
    #[default]
    Unknown,
    /// No VIP is bound on this node (no VIP link, integrated data plane), so the kernel has nothing to answer ARP for
    /// and strict ARP does not matter.
    NotNeeded,
    /// A VIP is bound here (the VIP link exists, or the data plane is direct): the verdict, or why there is none (a
    /// sysctl could not be read, or `enforce` could not write one), and then nothing is announced.
    Checked(Result<StrictArpReport, Arc<strict_arp::Error>>),
}

impl LocalFacts {
    /// Whether strict ARP lets this node announce: it holds, or nothing is bound here that needs it.
    pub fn strict_allowed(&self) -> bool {
        match &self.strict {
            Strict::NotNeeded => true,
            Strict::Checked(Ok(report)) => report.announce_allowed(),
            Strict::Checked(Err(_)) | Strict::Unknown => false,
        }
    }

    /// Why this node may not announce, in words for its `ironlb.io/cannot-answer` and its Event; None when it may.
    pub fn cannot_answer(&self) -> Option<String> {
        match &self.strict {
            _ if self.strict_allowed() => None,
            Strict::Checked(Ok(report)) => Some(format!(
                "strict ARP is not effective: {}",
                report.status.problems.join("; ")
            )),
            Strict::Checked(Err(error)) => {
                Some(format!("strict ARP cannot be made effective: {error}"))
            }
            Strict::NotNeeded | Strict::Unknown => {
                Some("strict ARP has not been checked yet".into())
            }
        }
    }

    /// Whether `next` differs from these facts in anything an announcement pass depends on.
    fn moves_plan(&self, next: &LocalFacts) -> bool {
        self.interfaces != next.interfaces
            || self.strict_allowed() != next.strict_allowed()
            || self.proxy_mode != next.proxy_mode
    }
}

/// What the last announcement pass wants bound on the VIP link, and the pools, whose addresses there are the
/// agent's to remove.
#[derive(Clone, Debug)]
pub struct BindRequest {
    pub wanted: BTreeSet<IpAddr>,
    pub pools: Vec<crate::config::Pool>,
}

pub struct NodeLink {
    handle: rtnetlink::Handle,
    vip_link: String,
    /// The direct data plane: the VIP link is IronLB's and VIPs are always bound.
    direct: bool,
    /// kube-proxy's metrics address, asked for its mode; None asks nothing.
    kube_proxy: Option<std::net::SocketAddr>,
    strict_mode: strict_arp::StrictArpMode,
    strict_metrics: StrictArpMetrics,
    facts: watch::Sender<LocalFacts>,
    requests: watch::Receiver<Option<BindRequest>>,
    /// What was last bound successfully; None makes the next look reconcile.
    bound: Option<BTreeSet<IpAddr>>,
}

impl NodeLink {
    /// Reads the facts once, so that the first announcement pass has them, and returns the task (not yet started)
    /// with the channels to it.
    pub async fn start(
        handle: rtnetlink::Handle,
        vip_link: &str,
        direct: bool,
        kube_proxy: Option<std::net::SocketAddr>,
        strict_mode: strict_arp::StrictArpMode,
        strict_metrics: StrictArpMetrics,
    ) -> (
        NodeLink,
        watch::Receiver<LocalFacts>,
        watch::Sender<Option<BindRequest>>,
    ) {
        let (bind_tx, requests) = watch::channel(None);
        let (facts, facts_rx) = watch::channel(LocalFacts::default());
        let mut link = NodeLink {
            handle,
            vip_link: vip_link.to_string(),
            direct,
            kube_proxy,
            strict_mode,
            strict_metrics,
            facts,
            requests,
            bound: None,
        };
        link.look().await;
        (link, facts_rx, bind_tx)
    }

    /// Runs until `stop` resolves or the announcer is gone.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut tick = crate::task::interval(LOOK_EVERY);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                changed = self.requests.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.bind().await;
                }
                _ = tick.tick() => {
                    self.look().await;
                    // Re-check the binding even when nothing changed: kube-proxy or an operator may have removed
                    // an address meanwhile.
                    self.bound = None;
                    self.bind().await;
                }
            }
        }
    }

    /// Re-reads the interfaces, the strict ARP sysctls (where strict ARP is needed) and kube-proxy's mode, and
    /// publishes them; the announcer is woken only when something its pass depends on changed.
    async fn look(&mut self) {
        let previous = self.facts.borrow().interfaces.clone();
        let interfaces = match crate::netif::links::list_interfaces(&self.handle).await {
            Ok(list) => list,
            Err(error) => {
                tracing::warn!(%error, "listing interfaces failed; keeping the previous list");
                previous
            }
        };
        let names: Vec<&str> = interfaces
            .iter()
            .filter(|i| i.up && !i.loopback && !i.noarp && i.name != self.vip_link)
            .map(|i| i.name.as_str())
            .collect();
        let vip_link = interfaces.iter().any(|i| i.name == self.vip_link);
        let strict_needed = self.direct || vip_link;
        let strict = if strict_needed {
            let strict = strict_arp::run(self.strict_mode, &Ipv4Conf::current_netns(), &names)
                .map_err(Arc::new);
            match &strict {
                Ok(report) => self.strict_metrics.record(report),
                Err(error) => {
                    tracing::warn!(%error, "strict ARP cannot be checked or made effective; not announcing")
                }
            }
            Strict::Checked(strict)
        } else {
            Strict::NotNeeded
        };
        let reported = match self.kube_proxy {
            Some(addr) => match proxy_mode::probe(addr).await {
                Ok(mode) => Some(mode),
                Err(error) => {
                    tracing::debug!(error = %crate::error_chain(&error), "kube-proxy's mode is not known");
                    None
                }
            },
            None => None,
        };
        let kube_ipvs0 = interfaces
            .iter()
            .any(|i| i.name == crate::ipvs::KUBE_PROXY_LINK);
        let mode = ProxyMode::from_facts(reported, kube_ipvs0);
        let before = self.facts.borrow().proxy_mode.clone();
        if before.as_ref() != Some(&mode) {
            tracing::info!(
                mode = mode.name(),
                from = before
                    .as_ref()
                    .map(ProxyMode::name)
                    .unwrap_or("(first look)"),
                source = mode.source(),
                strict_arp_needed = strict_needed,
                "kube-proxy's mode on this node"
            );
        }
        let next = LocalFacts {
            interfaces,
            strict,
            proxy_mode: Some(mode),
        };
        self.facts.send_if_modified(|facts| {
            let moved = facts.moves_plan(&next);
            *facts = next;
            moved
        });
    }

    /// Binds what the last request wants, when the VIP link exists (kube-proxy in IPVS mode makes `kube-ipvs0`).
    async fn bind(&mut self) {
        let Some(request) = self.requests.borrow_and_update().clone() else {
            return;
        };
        if self.bound.as_ref() == Some(&request.wanted) {
            return;
        }
        match crate::netif::bind::link_index(&self.handle, &self.vip_link).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, link = %self.vip_link, "cannot look up the VIP link");
                return;
            }
        }
        let owned = bind_owned(&self.vip_link, request.pools);
        let reconciler = AddressReconciler::new(self.handle.clone(), self.vip_link.clone(), owned);
        match reconciler.reconcile(&request.wanted).await {
            Ok(outcome) if outcome.failed.is_empty() => {
                if !outcome.requests.is_empty() {
                    tracing::info!(link = %self.vip_link, changes = outcome.requests.len(), "VIP binding updated");
                }
                self.bound = Some(request.wanted);
            }
            Ok(outcome) => {
                for error in &outcome.failed {
                    tracing::warn!(%error, link = %self.vip_link, "binding a VIP failed; will retry");
                }
            }
            Err(error) => {
                tracing::warn!(%error, link = %self.vip_link, "VIP binding failed; will retry")
            }
        }
    }
}

/// Which host-prefix addresses on the VIP link the binder may delete when they are not wanted: those inside a pool,
/// and on IronLB's own direct-mode link every one (only IronLB binds there, so a VIP whose pool was deleted while
/// the agent was down goes too). On `kube-ipvs0` the rest is kube-proxy's.
fn bind_owned(
    vip_link: &str,
    pools: Vec<crate::config::Pool>,
) -> impl Fn(&IpAddr) -> bool + Send + Sync + 'static {
    let own_link = vip_link == crate::ipvs::DIRECT_LINK;
    move |ip| own_link || pools.iter().any(|p| p.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_link_is_ironlbs_alone_kube_ipvs0_only_within_the_pools() {
        let pools = crate::config::validate(&crate::config::Sources {
            legacy: Some(crate::config::load::LegacySource {
                name: "ConfigMap/config".into(),
                namespace: None,
                payload:
                    "address-pools:\n- name: a\n  protocol: layer2\n  addresses: [192.0.2.0/28]\n"
                        .into(),
            }),
            ..Default::default()
        })
        .config
        .pools
        .into_values()
        .collect::<Vec<_>>();
        assert_eq!(pools.len(), 1);
        let inside: IpAddr = "192.0.2.5".parse().unwrap();
        let outside: IpAddr = "198.51.100.7".parse().unwrap();
        let direct = bind_owned("ironlb0", pools.clone());
        assert!(direct(&inside) && direct(&outside));
        let shared = bind_owned("kube-ipvs0", pools);
        assert!(shared(&inside));
        assert!(
            !shared(&outside),
            "an address outside the pools on kube-ipvs0 is kube-proxy's"
        );
    }

    #[test]
    fn only_what_the_plan_reads_wakes_the_announcer() {
        let report = |ok: bool| StrictArpReport {
            mode: strict_arp::StrictArpMode::Check,
            status: strict_arp::StrictArpStatus {
                ok,
                problems: if ok {
                    vec![]
                } else {
                    vec!["arp_ignore".into()]
                },
            },
            applied: vec![],
        };
        let a = LocalFacts {
            interfaces: vec![],
            strict: Strict::Checked(Ok(report(true))),
            proxy_mode: Some(ProxyMode::IpvsLink),
        };
        assert_eq!(a.cannot_answer(), None);
        let mut same_verdict = a.clone();
        if let Strict::Checked(Ok(r)) = &mut same_verdict.strict {
            r.applied.clear();
        }
        assert!(!a.moves_plan(&same_verdict));
        let refused = LocalFacts {
            interfaces: vec![],
            strict: Strict::Checked(Ok(report(false))),
            proxy_mode: Some(ProxyMode::IpvsLink),
        };
        assert!(a.moves_plan(&refused));
        assert_eq!(
            refused.cannot_answer().as_deref(),
            Some("strict ARP is not effective: arp_ignore")
        );
        let unwritable = LocalFacts {
            interfaces: vec![],
            proxy_mode: Some(ProxyMode::IpvsLink),
            strict: Strict::Checked(Err(Arc::new(strict_arp::Error::Parse {
                path: "/proc/sys/net/ipv4/conf/all/arp_ignore".into(),
                value: "x".into(),
            }))),
        };
        assert!(
            a.moves_plan(&unwritable),
            "an unusable check stops announcements"
        );
        assert!(
            unwritable
                .cannot_answer()
                .is_some_and(|why| why.starts_with("strict ARP cannot be made effective: ")),
            "the reason names the failure, not only a read"
        );
    }

    #[test]
    fn a_node_that_binds_nothing_needs_no_strict_arp_and_says_so_on_a_mode_change() {
        let nft = LocalFacts {
            interfaces: vec![],
            strict: Strict::NotNeeded,
            proxy_mode: Some(ProxyMode::Reported("nftables".into())),
        };
        assert!(nft.strict_allowed());
        assert_eq!(nft.cannot_answer(), None);
        // Before the first look, nothing is known: no announcement yet.
        assert!(!LocalFacts::default().strict_allowed());
        // The same node moved to IPVS: kube-ipvs0 appeared, and with it the need for strict ARP.
        let ipvs = LocalFacts {
            strict: Strict::Checked(Err(Arc::new(strict_arp::Error::Parse {
                path: "/proc/sys/net/ipv4/conf/all/arp_ignore".into(),
                value: "x".into(),
            }))),
            proxy_mode: Some(ProxyMode::Reported("ipvs".into())),
            ..nft.clone()
        };
        assert!(!ipvs.strict_allowed());
        assert!(nft.moves_plan(&ipvs));
        // A mode change alone wakes the announcer too: its Node annotation follows.
        let iptables = LocalFacts {
            proxy_mode: Some(ProxyMode::Reported("iptables".into())),
            ..nft.clone()
        };
        assert!(nft.moves_plan(&iptables));
    }
}
