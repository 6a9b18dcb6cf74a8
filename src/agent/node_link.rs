//! The node's own network, in a task of its own: it reads the local interfaces and the strict ARP sysctls every
//! [`LOOK_EVERY`] and publishes them, and it binds on the VIP link what the last announcement pass wants. Netlink
//! calls and sysctl reads (and, with `--strict-arp=enforce`, writes) never hold up the agent's decisions: the
//! announcement pass reads the facts last published and hands over what it wants bound.
//!
//! ```text
//!  rtnetlink, /proc ──every 2 s──▶ NodeLink ──watch<LocalFacts>──▶ Announcer::pass (a change asks for a pass)
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
use crate::netif::strict_arp::{self, Ipv4Conf, StrictArpMetrics, StrictArpReport};

/// How often the node's links and sysctls are read again, and the VIP binding checked.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// What the node looks like to the announcement pass.
#[derive(Clone, Debug, Default)]
pub struct LocalFacts {
    pub interfaces: Vec<LocalInterface>,
    /// The verdict, or why there is none (a sysctl could not be read, or `enforce` could not write one): then
    /// nothing is announced. None only before the first look.
    pub strict: Option<Result<StrictArpReport, Arc<strict_arp::Error>>>,
}

impl LocalFacts {
    /// Whether strict ARP lets this node announce.
    pub fn strict_allowed(&self) -> bool {
        matches!(&self.strict, Some(Ok(report)) if report.announce_allowed())
    }

    /// Why this node may not announce, in words for its `ironlb.io/cannot-answer` and its Event; None when it may.
    pub fn cannot_answer(&self) -> Option<String> {
        match &self.strict {
            _ if self.strict_allowed() => None,
            Some(Ok(report)) => Some(format!(
                "strict ARP is not effective: {}",
                report.status.problems.join("; ")
            )),
            Some(Err(error)) => Some(format!("strict ARP cannot be made effective: {error}")),
            None => Some("strict ARP has not been checked yet".into()),
        }
    }

    /// Whether `next` differs from these facts in anything an announcement pass depends on.
    fn moves_plan(&self, next: &LocalFacts) -> bool {
        self.interfaces != next.interfaces || self.strict_allowed() != next.strict_allowed()
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

    /// Re-reads the interfaces and the strict ARP sysctls and publishes them; the announcer is woken only when
    /// something its plan depends on changed.
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
        let strict =
            strict_arp::run(self.strict_mode, &Ipv4Conf::current_netns(), &names).map_err(Arc::new);
        match &strict {
            Ok(report) => self.strict_metrics.record(report),
            Err(error) => {
                tracing::warn!(%error, "strict ARP cannot be checked or made effective; not announcing")
            }
        }
        let next = LocalFacts {
            interfaces,
            strict: Some(strict),
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
            strict: Some(Ok(report(true))),
        };
        assert_eq!(a.cannot_answer(), None);
        let mut same_verdict = a.clone();
        if let Some(Ok(r)) = same_verdict.strict.as_mut() {
            r.applied.clear();
        }
        assert!(!a.moves_plan(&same_verdict));
        let refused = LocalFacts {
            interfaces: vec![],
            strict: Some(Ok(report(false))),
        };
        assert!(a.moves_plan(&refused));
        assert_eq!(
            refused.cannot_answer().as_deref(),
            Some("strict ARP is not effective: arp_ignore")
        );
        let unwritable = LocalFacts {
            interfaces: vec![],
            strict: Some(Err(Arc::new(strict_arp::Error::Parse {
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
}
