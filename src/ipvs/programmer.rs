//! Reconciles the IPVS services IronLB wants against the kernel's table.
//!
//! `diff` is pure: wanted table, actual table, scope and drain state in; a list of [`TableChange`] values out. The
//! [`Programmer`] is the thin shell around it: dump, diff, hand the changes to the one executor, and count what it
//! sent. It never touches a service outside its scope, so kube-proxy's services (and an operator's) stay as they
//! are. EEXIST on an add and ENOENT on a delete mean the kernel already is where we wanted it, so they count as
//! success.
//!
//! Graceful removal: a real server that is no longer wanted but still has active connections is first set to
//! weight 0 (no new connections are scheduled to it) and deleted once it has none or the grace period has passed.
//! Time is an input (`now`), so the drain is a pure state machine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::codec::{
    Dest, DestId, DestSpec, IpvsAttr, IpvsCmd, IpvsMessage, Service, ServiceId, ServiceSpec,
};
use super::socket::{self, IpvsSocket};

/// What IronLB wants: every service in scope, with its real servers.
pub type WantedTable = BTreeMap<ServiceId, (ServiceSpec, BTreeMap<DestId, DestSpec>)>;
/// What the kernel has, with connection counters.
pub type ActualTable = BTreeMap<ServiceId, (ServiceSpec, BTreeMap<DestId, Dest>)>;

/// One change to the kernel's IPVS table, as a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableChange {
    AddService(ServiceSpec),
    UpdateService(ServiceSpec),
    AddDest(ServiceId, DestSpec),
    UpdateDest(ServiceId, DestSpec),
    DelDest(ServiceId, DestId),
    DelService(ServiceId),
}

impl TableChange {
    /// The request that carries this change. Like ipvsadm, no NLM_F_CREATE/EXCL: the IPVS family ignores them.
    pub fn to_message(&self) -> IpvsMessage {
        let svc = |id: &ServiceId| IpvsAttr::Service(id.to_attrs());
        match self {
            Self::AddService(s) => {
                IpvsMessage::new(IpvsCmd::NewService, vec![IpvsAttr::Service(s.to_attrs())])
            }
            Self::UpdateService(s) => {
                IpvsMessage::new(IpvsCmd::SetService, vec![IpvsAttr::Service(s.to_attrs())])
            }
            Self::DelService(id) => IpvsMessage::new(IpvsCmd::DelService, vec![svc(id)]),
            Self::AddDest(id, d) => IpvsMessage::new(
                IpvsCmd::NewDest,
                vec![svc(id), IpvsAttr::Dest(d.to_attrs())],
            ),
            Self::UpdateDest(id, d) => IpvsMessage::new(
                IpvsCmd::SetDest,
                vec![svc(id), IpvsAttr::Dest(d.to_attrs())],
            ),
            Self::DelDest(id, d) => IpvsMessage::new(
                IpvsCmd::DelDest,
                vec![svc(id), IpvsAttr::Dest(DestSpec::id_attrs(d))],
            ),
        }
    }

    fn is_add(&self) -> bool {
        matches!(self, Self::AddService(_) | Self::AddDest(..))
    }
    fn is_del(&self) -> bool {
        matches!(self, Self::DelService(_) | Self::DelDest(..))
    }
}

/// Real servers being drained: when each was first set to weight 0.
#[derive(Clone, Debug)]
pub struct Drain {
    pub grace: Duration,
    since: BTreeMap<(ServiceId, DestId), Instant>,
}

impl Drain {
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            since: BTreeMap::new(),
        }
    }

    /// Real servers currently draining.
    pub fn draining(&self) -> impl Iterator<Item = &(ServiceId, DestId)> {
        self.since.keys()
    }

    /// The step for one unwanted real server: delete it, set it to weight 0, or leave it draining.
    fn step(&mut self, svc: ServiceId, dest: &Dest, now: Instant) -> Option<TableChange> {
        let key = (svc, dest.spec.id);
        if dest.active_conns == 0 {
            self.since.remove(&key);
            return Some(TableChange::DelDest(svc, dest.spec.id));
        }
        let since = *self.since.entry(key).or_insert(now);
        if now.saturating_duration_since(since) >= self.grace {
            self.since.remove(&key);
            Some(TableChange::DelDest(svc, dest.spec.id))
        } else if dest.spec.weight != 0 {
            Some(TableChange::UpdateDest(
                svc,
                DestSpec {
                    weight: 0,
                    ..dest.spec
                },
            ))
        } else {
            None
        }
    }

    /// Forgets servers that are wanted again or gone.
    fn retain(&mut self, keep: impl Fn(&ServiceId, &DestId) -> bool) {
        self.since.retain(|(s, d), _| keep(s, d));
    }
}

/// The minimal changes that take `actual` to `wanted` within `scope`. Services outside the scope are never
/// touched, whether wanted or not.
pub fn diff(
    wanted: &WantedTable,
    actual: &ActualTable,
    scope: &dyn Fn(&ServiceId) -> bool,
    drain: &mut Drain,
    now: Instant,
) -> Vec<TableChange> {
    let mut changes = Vec::new();
    for (id, (spec, dests)) in wanted.iter().filter(|(id, _)| scope(id)) {
        let empty = BTreeMap::new();
        let have = match actual.get(id) {
            None => {
                changes.push(TableChange::AddService(spec.clone()));
                &empty
            }
            Some((have_spec, have)) => {
                if have_spec != spec {
                    changes.push(TableChange::UpdateService(spec.clone()));
                }
                have
            }
        };
        for (did, d) in dests {
            match have.get(did) {
                None => changes.push(TableChange::AddDest(*id, *d)),
                Some(h) if h.spec != *d => changes.push(TableChange::UpdateDest(*id, *d)),
                Some(_) => {}
            }
        }
        for (did, h) in have {
            if !dests.contains_key(did) {
                changes.extend(drain.step(*id, h, now));
            }
        }
    }
    for (id, (_, have)) in actual
        .iter()
        .filter(|(id, _)| scope(id) && !wanted.contains_key(id))
    {
        // A whole service goes once none of its servers still holds connections within the grace period.
        let steps: Vec<Option<TableChange>> =
            have.values().map(|h| drain.step(*id, h, now)).collect();
        if steps
            .iter()
            .all(|c| matches!(c, Some(TableChange::DelDest(..))))
        {
            changes.push(TableChange::DelService(*id));
        } else {
            // Idle servers go now; the service stays until its busy ones are drained.
            changes.extend(steps.into_iter().flatten());
        }
    }
    drain.retain(|s, d| {
        let unwanted = wanted.get(s).is_none_or(|(_, ds)| !ds.contains_key(d));
        let present = actual.get(s).is_some_and(|(_, ds)| ds.contains_key(d));
        unwanted && present
    });
    // The kernel applies a batch in order: a service must exist before its servers, servers go before their
    // service. Sorting by kind keeps each kind's (deterministic) map order.
    changes.sort_by_key(|c| match c {
        TableChange::AddService(_) => 0,
        TableChange::UpdateService(_) => 1,
        TableChange::AddDest(..) => 2,
        TableChange::UpdateDest(..) => 3,
        TableChange::DelDest(..) => 4,
        TableChange::DelService(_) => 5,
    });
    changes
}

/// Errors of the programmer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Socket(#[from] socket::Error),
    #[error("undecodable IPVS {what} in dump")]
    Decode {
        what: &'static str,
        #[source]
        source: netlink_packet_core::DecodeError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one reconcile did.
#[derive(Debug, Default)]
pub struct Report {
    /// Every change computed and sent.
    pub changes: Vec<TableChange>,
    /// Changes the kernel refused (other than EEXIST on add / ENOENT on delete), with its error.
    pub failed: Vec<(TableChange, std::io::Error)>,
}

/// Requests sent to the kernel, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// Requests that change the table (NEW/SET/DEL).
    pub changes: u64,
    /// Dump requests (GET_SERVICE, GET_DEST).
    pub dumps: u64,
}

/// Reconciles IPVS over a genetlink socket, within a scope.
pub struct Programmer {
    socket: IpvsSocket,
    scope: Box<dyn Fn(&ServiceId) -> bool + Send>,
    drain: Drain,
    calls: Calls,
}

impl Programmer {
    pub fn new(
        socket: IpvsSocket,
        scope: Box<dyn Fn(&ServiceId) -> bool + Send>,
        grace: Duration,
    ) -> Self {
        Self {
            socket,
            scope,
            drain: Drain::new(grace),
            calls: Calls::default(),
        }
    }

    /// Requests sent so far.
    pub fn calls(&self) -> Calls {
        self.calls
    }

    /// Dumps every service and, for those in scope, its real servers.
    pub fn actual(&mut self) -> Result<ActualTable> {
        let mut table = ActualTable::new();
        for spec in self.scoped_services()? {
            let dests = self.dests(&spec.id)?;
            table.insert(spec.id, (spec, dests));
        }
        Ok(table)
    }

    /// The virtual services in scope, without their real servers: one dump, cheap enough to run every second to
    /// notice a table emptied behind the agent's back (kube-proxy's start in nftables or iptables mode flushes IPVS).
    pub fn service_ids(&mut self) -> Result<BTreeSet<ServiceId>> {
        Ok(self.scoped_services()?.into_iter().map(|s| s.id).collect())
    }

    fn scoped_services(&mut self) -> Result<Vec<ServiceSpec>> {
        self.calls.dumps += 1;
        let replies = self
            .socket
            .dump(&IpvsMessage::new(IpvsCmd::GetService, vec![]))?;
        let mut services = Vec::new();
        for reply in replies {
            let Some(attrs) = reply.service() else {
                continue;
            };
            let svc = Service::from_attrs(attrs).map_err(|source| Error::Decode {
                what: "service",
                source,
            })?;
            if (self.scope)(&svc.spec.id) {
                services.push(svc.spec);
            }
        }
        Ok(services)
    }

    fn dests(&mut self, id: &ServiceId) -> Result<BTreeMap<DestId, Dest>> {
        self.calls.dumps += 1;
        let replies = self.socket.dump(&IpvsMessage::new(
            IpvsCmd::GetDest,
            vec![IpvsAttr::Service(id.to_attrs())],
        ))?;
        let mut dests = BTreeMap::new();
        for reply in replies {
            let Some(attrs) = reply.dest() else { continue };
            let d = Dest::from_attrs(attrs, id.family()).map_err(|source| Error::Decode {
                what: "destination",
                source,
            })?;
            dests.insert(d.spec.id, d);
        }
        Ok(dests)
    }

    /// One pass: dump, diff, apply.
    pub fn reconcile(&mut self, wanted: &WantedTable, now: Instant) -> Result<Report> {
        let actual = self.actual()?;
        let changes = diff(wanted, &actual, &*self.scope, &mut self.drain, now);
        let failed = self.apply(&changes)?;
        Ok(Report { changes, failed })
    }

    /// Real servers currently draining at weight 0; they are on their way out, not drift.
    pub fn draining(&self) -> impl Iterator<Item = &(ServiceId, DestId)> {
        self.drain.draining()
    }

    /// An incremental pass: only the services whose wanted entry differs between `previous` (what the last pass
    /// applied) and `wanted` are read back (their real servers, one dump each) and reconciled. A table of thousands
    /// of services with one changed endpoint costs one dump and one change instead of a dump of everything. A
    /// service deleted behind our back makes its changes fail with ESRCH; the caller then runs a full
    /// [`reconcile`](Self::reconcile).
    pub fn reconcile_changed(
        &mut self,
        wanted: &WantedTable,
        previous: &WantedTable,
        now: Instant,
    ) -> Result<Report> {
        let touched: BTreeMap<ServiceId, Option<ServiceSpec>> = wanted
            .keys()
            .chain(previous.keys())
            .filter(|id| wanted.get(id) != previous.get(id))
            .map(|id| (*id, previous.get(id).map(|(spec, _)| spec.clone())))
            .collect();
        self.reconcile_services(wanted, &touched, now)
    }

    /// An incremental pass over the services named in `touched`, each with the spec the kernel holds for it as
    /// far as the caller knows (None: not there). Only those are read back (their real servers, one dump each) and
    /// reconciled; the caller knows which services changed, so nothing else of the tables is compared. A service
    /// deleted behind our back makes its changes fail with ESRCH; the caller then runs a full
    /// [`reconcile`](Self::reconcile).
    pub fn reconcile_services(
        &mut self,
        wanted: &WantedTable,
        touched: &BTreeMap<ServiceId, Option<ServiceSpec>>,
        now: Instant,
    ) -> Result<Report> {
        let touched: BTreeMap<ServiceId, Option<ServiceSpec>> = touched
            .iter()
            .filter(|(id, _)| (self.scope)(id))
            .map(|(id, spec)| (*id, spec.clone()))
            .collect();
        let mut actual = ActualTable::new();
        for (id, spec) in &touched {
            let Some(spec) = spec else {
                continue;
            };
            let dests = match self.dests(id) {
                Ok(d) => d,
                Err(Error::Socket(socket::Error::Kernel { source, .. }))
                    if source.raw_os_error() == Some(ESRCH) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            };
            actual.insert(*id, (spec.clone(), dests));
        }
        // `diff` forgets drains it does not see; those of untouched services must keep their start times.
        let untouched: Vec<((ServiceId, DestId), Instant)> = self
            .drain
            .since
            .iter()
            .filter(|((s, _), _)| !touched.contains_key(s))
            .map(|(k, t)| (*k, *t))
            .collect();
        let wanted_touched: WantedTable = touched
            .keys()
            .filter_map(|id| wanted.get_key_value(id))
            .map(|(id, v)| (*id, v.clone()))
            .collect();
        let all = |_: &ServiceId| true;
        let changes = diff(&wanted_touched, &actual, &all, &mut self.drain, now);
        self.drain.since.extend(untouched);
        let failed = self.apply(&changes)?;
        Ok(Report { changes, failed })
    }

    /// The one executor: sends the changes in order and keeps the refusals that matter.
    pub fn apply(&mut self, changes: &[TableChange]) -> Result<Vec<(TableChange, std::io::Error)>> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let requests: Vec<_> = changes.iter().map(TableChange::to_message).collect();
        self.calls.changes += requests.len() as u64;
        let outcomes = self.socket.execute(&requests)?;
        Ok(changes
            .iter()
            .zip(outcomes)
            .filter_map(|(c, r)| match r {
                Ok(()) => None,
                Err(e) if c.is_add() && e.raw_os_error() == Some(EEXIST) => None,
                Err(e) if c.is_del() && matches!(e.raw_os_error(), Some(ENOENT | ESRCH)) => None,
                Err(e) => Some((c.clone(), e)),
            })
            .collect())
    }
}

// Linux errno values.
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
/// IPVS answers a request naming a service that does not exist with ESRCH.
const ESRCH: i32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipvs::codec::{AddressFamily, FwdMethod};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn svc(vip: &str, port: u16) -> ServiceSpec {
        ServiceSpec::new(ServiceId::tcp(ip(vip), port), "rr")
    }
    fn dest(addr: &str, port: u16, weight: u32) -> DestSpec {
        DestSpec::new(ip(addr), port, FwdMethod::Masq, weight)
    }
    fn actual_dest(d: DestSpec, active: u32) -> Dest {
        Dest {
            spec: d,
            active_conns: active,
            inact_conns: 0,
            persist_conns: 0,
            stats: Default::default(),
        }
    }
    fn wanted(entries: &[(ServiceSpec, Vec<DestSpec>)]) -> WantedTable {
        entries
            .iter()
            .map(|(s, ds)| (s.id, (s.clone(), ds.iter().map(|d| (d.id, *d)).collect())))
            .collect()
    }
    /// What the kernel would hold after applying `w` exactly.
    fn as_actual(w: &WantedTable) -> ActualTable {
        w.iter()
            .map(|(id, (s, ds))| {
                (
                    *id,
                    (
                        s.clone(),
                        ds.iter().map(|(k, d)| (*k, actual_dest(*d, 0))).collect(),
                    ),
                )
            })
            .collect()
    }
    fn all(_: &ServiceId) -> bool {
        true
    }

    #[test]
    fn empty_kernel_gets_services_before_their_servers() {
        let w = wanted(&[(svc("192.0.2.10", 80), vec![dest("198.51.100.2", 8080, 1)])]);
        let mut drain = Drain::new(Duration::from_secs(30));
        let c = diff(&w, &ActualTable::new(), &all, &mut drain, Instant::now());
        assert_eq!(
            c,
            vec![
                TableChange::AddService(svc("192.0.2.10", 80)),
                TableChange::AddDest(
                    ServiceId::tcp(ip("192.0.2.10"), 80),
                    dest("198.51.100.2", 8080, 1)
                ),
            ]
        );
    }

    #[test]
    fn second_pass_is_empty() {
        let w = wanted(&[
            (
                svc("192.0.2.10", 80),
                vec![dest("198.51.100.2", 8080, 1), dest("198.51.100.3", 8080, 2)],
            ),
            (
                ServiceSpec::new(
                    ServiceId::Fwmark {
                        family: AddressFamily::V6,
                        mark: 7,
                    },
                    "wrr",
                )
                .persistent(300),
                vec![],
            ),
        ]);
        let mut drain = Drain::new(Duration::from_secs(30));
        assert!(diff(&w, &as_actual(&w), &all, &mut drain, Instant::now()).is_empty());
    }

    #[test]
    fn changed_weight_and_scheduler_are_updates() {
        let w = wanted(&[(svc("192.0.2.10", 80), vec![dest("198.51.100.2", 8080, 5)])]);
        let mut a = as_actual(&wanted(&[(
            svc("192.0.2.10", 80),
            vec![dest("198.51.100.2", 8080, 1)],
        )]));
        a.values_mut().next().unwrap().0.scheduler = "wrr".into();
        let mut drain = Drain::new(Duration::from_secs(30));
        let id = ServiceId::tcp(ip("192.0.2.10"), 80);
        assert_eq!(
            diff(&w, &a, &all, &mut drain, Instant::now()),
            vec![
                TableChange::UpdateService(svc("192.0.2.10", 80)),
                TableChange::UpdateDest(id, dest("198.51.100.2", 8080, 5))
            ]
        );
    }

    #[test]
    fn out_of_scope_services_are_never_touched() {
        // kube-proxy's service on 203.0.113.1 is present and unwanted; ours on 192.0.2.10 is wanted.
        let theirs = svc("203.0.113.1", 443);
        let a = as_actual(&wanted(&[(
            theirs.clone(),
            vec![dest("198.51.100.9", 443, 1)],
        )]));
        let mut w = wanted(&[(svc("192.0.2.10", 80), vec![])]);
        // Wanting an out-of-scope service does not create it either.
        w.insert(
            ServiceId::tcp(ip("203.0.113.2"), 80),
            (svc("203.0.113.2", 80), BTreeMap::new()),
        );
        let scope = |id: &ServiceId| matches!(id, ServiceId::Addr { addr: IpAddr::V4(a), .. } if a.octets()[..3] == [192, 0, 2]);
        let mut drain = Drain::new(Duration::from_secs(30));
        assert_eq!(
            diff(&w, &a, &scope, &mut drain, Instant::now()),
            vec![TableChange::AddService(svc("192.0.2.10", 80))]
        );
    }

    #[test]
    fn idle_unwanted_server_is_deleted_at_once() {
        let w = wanted(&[(svc("192.0.2.10", 80), vec![])]);
        let a = as_actual(&wanted(&[(
            svc("192.0.2.10", 80),
            vec![dest("198.51.100.2", 8080, 1)],
        )]));
        let mut drain = Drain::new(Duration::from_secs(30));
        let id = ServiceId::tcp(ip("192.0.2.10"), 80);
        assert_eq!(
            diff(&w, &a, &all, &mut drain, Instant::now()),
            vec![TableChange::DelDest(
                id,
                DestId::new(ip("198.51.100.2"), 8080)
            )]
        );
    }

    #[test]
    fn busy_server_drains_at_weight_zero_then_goes_after_grace() {
        let id = ServiceId::tcp(ip("192.0.2.10"), 80);
        let did = DestId::new(ip("198.51.100.2"), 8080);
        let w = wanted(&[(svc("192.0.2.10", 80), vec![])]);
        let mut a = as_actual(&wanted(&[(
            svc("192.0.2.10", 80),
            vec![dest("198.51.100.2", 8080, 3)],
        )]));
        a.get_mut(&id)
            .unwrap()
            .1
            .get_mut(&did)
            .unwrap()
            .active_conns = 4;
        let mut drain = Drain::new(Duration::from_secs(30));
        let t0 = Instant::now();

        // First pass: weight 0, not deleted.
        let c = diff(&w, &a, &all, &mut drain, t0);
        assert_eq!(
            c,
            vec![TableChange::UpdateDest(id, dest("198.51.100.2", 8080, 0))]
        );
        a.get_mut(&id).unwrap().1.get_mut(&did).unwrap().spec.weight = 0;

        // Within grace and still busy: nothing to do.
        assert!(diff(&w, &a, &all, &mut drain, t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(drain.draining().count(), 1);

        // Grace over: deleted even with connections.
        let c = diff(&w, &a, &all, &mut drain, t0 + Duration::from_secs(30));
        assert_eq!(c, vec![TableChange::DelDest(id, did)]);
        assert_eq!(drain.draining().count(), 0);
    }

    #[test]
    fn draining_server_goes_as_soon_as_it_is_idle() {
        let id = ServiceId::tcp(ip("192.0.2.10"), 80);
        let did = DestId::new(ip("198.51.100.2"), 8080);
        let w = wanted(&[(svc("192.0.2.10", 80), vec![])]);
        let mut a = as_actual(&wanted(&[(
            svc("192.0.2.10", 80),
            vec![dest("198.51.100.2", 8080, 0)],
        )]));
        a.get_mut(&id)
            .unwrap()
            .1
            .get_mut(&did)
            .unwrap()
            .active_conns = 1;
        let mut drain = Drain::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(diff(&w, &a, &all, &mut drain, t0).is_empty());
        a.get_mut(&id)
            .unwrap()
            .1
            .get_mut(&did)
            .unwrap()
            .active_conns = 0;
        assert_eq!(
            diff(&w, &a, &all, &mut drain, t0 + Duration::from_secs(1)),
            vec![TableChange::DelDest(id, did)]
        );
    }

    #[test]
    fn server_wanted_again_while_draining_gets_its_weight_back() {
        let id = ServiceId::tcp(ip("192.0.2.10"), 80);
        let did = DestId::new(ip("198.51.100.2"), 8080);
        let mut a = as_actual(&wanted(&[(
            svc("192.0.2.10", 80),
            vec![dest("198.51.100.2", 8080, 3)],
        )]));
        a.get_mut(&id)
            .unwrap()
            .1
            .get_mut(&did)
            .unwrap()
            .active_conns = 2;
        let mut drain = Drain::new(Duration::from_secs(30));
        let t0 = Instant::now();
        diff(
            &wanted(&[(svc("192.0.2.10", 80), vec![])]),
            &a,
            &all,
            &mut drain,
            t0,
        );
        a.get_mut(&id).unwrap().1.get_mut(&did).unwrap().spec.weight = 0;
        let back = wanted(&[(svc("192.0.2.10", 80), vec![dest("198.51.100.2", 8080, 3)])]);
        assert_eq!(
            diff(&back, &a, &all, &mut drain, t0 + Duration::from_secs(1)),
            vec![TableChange::UpdateDest(id, dest("198.51.100.2", 8080, 3))]
        );
        assert_eq!(drain.draining().count(), 0);
    }

    #[test]
    fn unwanted_service_waits_for_its_busy_servers() {
        let id = ServiceId::tcp(ip("192.0.2.10"), 80);
        let did = DestId::new(ip("198.51.100.2"), 8080);
        let mut a = as_actual(&wanted(&[(
            svc("192.0.2.10", 80),
            vec![dest("198.51.100.2", 8080, 3)],
        )]));
        a.get_mut(&id)
            .unwrap()
            .1
            .get_mut(&did)
            .unwrap()
            .active_conns = 2;
        let mut drain = Drain::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let none = WantedTable::new();
        assert_eq!(
            diff(&none, &a, &all, &mut drain, t0),
            vec![TableChange::UpdateDest(id, dest("198.51.100.2", 8080, 0))]
        );
        a.get_mut(&id).unwrap().1.get_mut(&did).unwrap().spec.weight = 0;
        assert!(diff(&none, &a, &all, &mut drain, t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(
            diff(&none, &a, &all, &mut drain, t0 + Duration::from_secs(10)),
            vec![TableChange::DelService(id)]
        );
    }

    #[test]
    fn change_messages_carry_full_attribute_sets() {
        let id = ServiceId::tcp(ip("192.0.2.10"), 80);
        let m = TableChange::AddService(svc("192.0.2.10", 80)).to_message();
        assert_eq!(m.cmd, IpvsCmd::NewService);
        assert_eq!(m.service().unwrap().len(), 8);
        let m = TableChange::DelDest(id, DestId::new(ip("198.51.100.2"), 8080)).to_message();
        assert_eq!(m.cmd, IpvsCmd::DelDest);
        assert_eq!(m.dest().unwrap().len(), 3);
    }
}
