//! A TLS reverse proxy of ours in front of the real kube-apiserver, so the real-API tier injects API faults
//! (latency, stalls, 429/500/503, connection resets, 410 on watch resume, cut watch streams) without touching the
//! agent: the agent's kubeconfig points at the proxy, and the test flips faults on the [`FaultProxy`] at run time.
//!
//! It owns its listener, its connections and a small tokio runtime of its own, so it serves whatever runtime (or
//! none) the test and the agent run on, including a test blocked in a kubectl run; dropping the proxy shuts that
//! runtime down, which drops the accept loop, every connection and every request it holds. It never edits the control
//! plane's objects and adds no credentials of its own: a request reaches the API server with the caller's headers,
//! `Authorization` included, and no client certificate, so RBAC stays the caller's.
//!
//! Client certificates cannot pass a TLS-terminating proxy, so callers authenticate with a bearer token: a
//! ServiceAccount kubeconfig from [`ControlPlane::service_account_kubeconfig`], rewritten by
//! [`FaultProxy::kubeconfig_for`]. The admin kubeconfig (client certificate) is refused there.
//!
//! ```text
//!  client ──TLS──▶ accept loop ──▶ connection task ──▶ handle(request)
//!                                        ▲                 │ rules (Mutex) decide: delay, then forward or a fault
//!            reset Notify (SO_LINGER 0) ─┘                 ▼
//!                                                    forward: one upstream TLS connection per request
//!                                                          │ response body relayed frame by frame;
//!                    cut_watches() ── watch<u64> ──────────┘ a watch's relay ends when the generation moves
//!                    clear() ─────── watch<u64> ──▶ stalled requests are released (their connection reset)
//! ```
//!
//! Upgrades (exec, port-forward) and HTTP/2 are not proxied: the proxy offers only `http/1.1` in ALPN.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ControlPlane;

/// How long a TCP connect or a TLS handshake (either side) may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// How long the API server may take to send a response head. Its own request timeout is 60 s; a watch sends its
/// head at once.
const RESPONSE_HEAD_LIMIT: Duration = Duration::from_secs(70);
/// Client connections held at once; the accept loop waits for a free slot beyond this.
const MAX_CONNECTIONS: usize = 512;
/// The seed of the fault dice until [`FaultProxy::reseed`]: a fixed one, so a run's random faults repeat.
const DEFAULT_SEED: u64 = 0x1b1b_5eed;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Which requests a fault applies to. Every condition set must hold; [`RequestMatch::any`] sets none.
#[derive(Clone, Debug, Default)]
pub struct RequestMatch {
    method: Option<Method>,
    path: Option<String>,
    user_agent: Option<String>,
    watch: Option<bool>,
}

impl RequestMatch {
    /// Every request.
    pub fn any() -> RequestMatch {
        RequestMatch::default()
    }

    /// Requests with this HTTP method (`"GET"`, `"PUT"`, ...; case does not matter).
    pub fn method(mut self, method: &str) -> RequestMatch {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .unwrap_or_else(|_| panic!("{method:?} is not an HTTP method"));
        self.method = Some(method);
        self
    }

    /// Requests whose path and query contain `substring` (for example `"/configmaps"`, `"/leases/"`).
    pub fn path(mut self, substring: &str) -> RequestMatch {
        self.path = Some(substring.to_owned());
        self
    }

    /// Requests whose `User-Agent` contains `substring`.
    pub fn user_agent(mut self, substring: &str) -> RequestMatch {
        self.user_agent = Some(substring.to_owned());
        self
    }

    /// Only watches (`true`) or only other requests (`false`). A watch is a request with `watch=true` or `watch=1`
    /// in its query, or one on the old `/watch/` paths.
    pub fn watch(mut self, is_watch: bool) -> RequestMatch {
        self.watch = Some(is_watch);
        self
    }

    fn matches(&self, request: &RequestFacts) -> bool {
        self.method.as_ref().is_none_or(|m| *m == request.method)
            && self
                .path
                .as_deref()
                .is_none_or(|p| request.path_and_query.contains(p))
            && self
                .user_agent
                .as_deref()
                .is_none_or(|ua| request.user_agent.contains(ua))
            && self.watch.is_none_or(|w| w == request.watch)
    }
}

/// What the proxy does to a request a [`Rule`] matches.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Wait this long before going on. Latencies of every matching rule add up; the request then goes on to the
    /// first matching fault below, or to the API server.
    Latency(Duration),
    /// Read the request and never answer, until [`FaultProxy::clear`] (which then resets the connection, when the
    /// client still waits on it) or the proxy's drop.
    Stall,
    /// Answer with this status and a `Status` body as the API server writes one; 429 and 503 carry
    /// `Retry-After: 1`, as the API server's max-in-flight filter sends.
    Status(u16),
    /// Close the connection with a TCP reset, without answering.
    Reset,
    /// Answer a watch that resumes from a resourceVersion (neither empty nor `"0"`) as kube-apiserver answers one
    /// whose revision etcd has compacted: HTTP 200 and a single `ERROR` watch event carrying a `Status` of code 410
    /// and reason `Expired`, then the end of the stream. (The watch cache and the etcd watch both report it this way
    /// "to match the uncached watch implementation", k8s.io/apiserver cacher.go.) Other requests pass this rule by.
    GoneOnWatch,
    /// As [`Fault::GoneOnWatch`], but as an HTTP 410 response with that `Status`, which kube-apiserver does not send
    /// for a watch; for a client's other error path. kube-runtime 5's watcher retries such a watch from the same
    /// resourceVersion instead of listing again.
    GoneStatusOnWatch,
}

impl Fault {
    /// A rule applying this fault to the requests `when` matches.
    pub fn when(self, when: RequestMatch) -> Rule {
        Rule::from(self).when(when)
    }

    /// A rule applying this fault to every request, with probability `p`.
    pub fn probability(self, p: f64) -> Rule {
        Rule::from(self).probability(p)
    }

    /// A rule applying this fault to the next `n` requests only.
    pub fn times(self, n: u64) -> Rule {
        Rule::from(self).times(n)
    }

    /// Whether the fault has any meaning for this request, whatever the rule's matcher says.
    fn applies_to(&self, request: &RequestFacts) -> bool {
        match self {
            Fault::GoneOnWatch | Fault::GoneStatusOnWatch => {
                // resourceVersion "0" means "any version" and is served from the cache; an empty one means "from
                // now". Neither can be compacted away.
                request.watch
                    && request
                        .resource_version
                        .as_deref()
                        .is_some_and(|rv| !rv.is_empty() && rv != "0")
            }
            _ => true,
        }
    }
}

/// A fault, the requests it applies to, how likely it fires, and how many times it may.
#[derive(Clone, Debug)]
pub struct Rule {
    fault: Fault,
    when: RequestMatch,
    probability: f64,
    remaining: Option<u64>,
}

impl From<Fault> for Rule {
    fn from(fault: Fault) -> Rule {
        Rule {
            fault,
            when: RequestMatch::any(),
            probability: 1.0,
            remaining: None,
        }
    }
}

impl Rule {
    /// Only requests `when` matches.
    pub fn when(mut self, when: RequestMatch) -> Rule {
        self.when = when;
        self
    }

    /// Fires for a matching request with probability `p` (0.0..=1.0), from the proxy's seeded dice.
    pub fn probability(mut self, p: f64) -> Rule {
        assert!((0.0..=1.0).contains(&p), "probability {p} is not in 0..=1");
        self.probability = p;
        self
    }

    /// Fires `n` times, then lets requests by.
    pub fn times(mut self, n: u64) -> Rule {
        self.remaining = Some(n);
        self
    }
}

/// What the proxy has seen and done since it started. Counts only grow, except `open_watches`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests read from clients.
    pub requests: u64,
    /// Requests sent on to the API server that got a response head back.
    pub forwarded: u64,
    /// Requests held back by a latency rule.
    pub delayed: u64,
    /// Requests stalled.
    pub stalled: u64,
    /// Injected status answers, by code.
    pub statuses: BTreeMap<u16, u64>,
    /// Connections reset by a [`Fault::Reset`] or by the release of a stalled request. A stalled request whose
    /// client closed its connection first is dropped with it, and has nothing left to reset.
    pub resets: u64,
    /// Watches answered with a 410 `ERROR` event ([`Fault::GoneOnWatch`]).
    pub gone: u64,
    /// Watches answered with HTTP 410 ([`Fault::GoneStatusOnWatch`]).
    pub gone_statuses: u64,
    /// Watch streams ended by [`FaultProxy::cut_watches`].
    pub watches_cut: u64,
    /// Watch streams being relayed now.
    pub open_watches: u64,
    /// Requests the API server could not be reached for (answered 502 by the proxy).
    pub upstream_errors: u64,
    /// The last of those errors, for a failing test to print.
    pub last_upstream_error: Option<String>,
}

impl Counts {
    /// Injected status answers with this code.
    pub fn status(&self, code: u16) -> u64 {
        self.statuses.get(&code).copied().unwrap_or(0)
    }

    /// Every fault injected, latency included.
    pub fn faults(&self) -> u64 {
        self.delayed
            + self.stalled
            + self.statuses.values().sum::<u64>()
            + self.resets
            + self.gone
            + self.gone_statuses
            + self.watches_cut
    }
}

/// The proxy; see the module documentation. Dropping it stops everything it runs.
pub struct FaultProxy {
    addr: SocketAddr,
    server: String,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Listens on a free loopback port with a serving certificate signed by the plane's CA (SAN 127.0.0.1 and
    /// localhost), forwarding to the plane's API server, with no fault set.
    pub fn start(plane: &ControlPlane) -> Result<FaultProxy> {
        let upstream_addr: SocketAddr = plane
            .server()
            .strip_prefix("https://")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("{} is not https://IP:PORT", plane.server()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(plane.ca_path())
            .with_context(|| format!("read {}", plane.ca_path().display()))?
        {
            roots.add(cert?)?;
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];

        let (cert, key) = plane.issue_serving_certificate()?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_file(&cert)?],
                PrivateKeyDer::from_pem_file(&key)?,
            )?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];

        let shared = Arc::new(Shared {
            upstream: Upstream {
                addr: upstream_addr,
                host: HeaderValue::from_str(&upstream_addr.to_string())?,
                name: ServerName::IpAddress(upstream_addr.ip().into()),
                tls: TlsConnector::from(Arc::new(client)),
            },
            rules: Mutex::new(Rules {
                list: Vec::new(),
                dice: SmallRng::seed_from_u64(DEFAULT_SEED),
            }),
            release: watch::Sender::new(0),
            cut: watch::Sender::new(0),
            counts: Mutex::new(Counts::default()),
        });

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ironlb-fault-proxy")
            .enable_all()
            .build()
            .context("start the fault proxy's runtime")?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _inside = runtime.enter();
            TcpListener::from_std(listener)?
        };
        runtime.spawn(accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(server)),
            shared.clone(),
        ));
        Ok(FaultProxy {
            addr,
            server: format!("https://{addr}"),
            shared,
            runtime: Some(runtime),
        })
    }

    /// The proxy's URL, `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Writes, beside `original`, a copy of that token kubeconfig whose clusters point at the proxy (the CA stays:
    /// it signed the proxy's certificate too). Refuses a kubeconfig with a client certificate, which cannot pass
    /// the proxy.
    pub fn kubeconfig_for(&self, original: &Path) -> Result<PathBuf> {
        let text = std::fs::read_to_string(original)
            .with_context(|| format!("read {}", original.display()))?;
        let mut config: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("parse {}", original.display()))?;
        for user in config
            .get("users")
            .and_then(|u| u.as_sequence())
            .into_iter()
            .flatten()
        {
            let user = user.get("user");
            ensure!(
                !["client-certificate", "client-certificate-data"]
                    .iter()
                    .any(|k| user.and_then(|u| u.get(k)).is_some()),
                "{} authenticates with a client certificate, which cannot pass a TLS-terminating proxy; \
                 use a token kubeconfig (ControlPlane::service_account_kubeconfig)",
                original.display()
            );
        }
        let clusters = config
            .get_mut("clusters")
            .and_then(|c| c.as_sequence_mut())
            .with_context(|| format!("{} has no clusters", original.display()))?;
        for cluster in clusters {
            let Some(cluster) = cluster.get_mut("cluster").and_then(|c| c.as_mapping_mut()) else {
                bail!("{} has a cluster without a `cluster`", original.display());
            };
            cluster.insert("server".into(), self.server.clone().into());
        }
        let stem = original
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("kubeconfig");
        let path = original.with_file_name(format!(
            "{stem}.fault-proxy-{}.kubeconfig",
            self.addr.port()
        ));
        std::fs::write(&path, serde_yaml::to_string(&config)?)
            .with_context(|| format!("write {}", path.display()))?;
        Ok(path)
    }

    /// Adds a rule after the ones already set.
    pub fn add(&self, rule: impl Into<Rule>) {
        self.shared.rules().list.push(rule.into());
    }

    /// Every request waits `delay` before going on.
    pub fn latency(&self, delay: Duration) {
        self.add(Fault::Latency(delay));
    }

    /// Every request is held unanswered until [`FaultProxy::clear`].
    pub fn stall(&self) {
        self.add(Fault::Stall);
    }

    /// Every request is answered `code` with probability `p` (0.0..=1.0).
    pub fn status(&self, code: u16, p: f64) {
        self.add(Fault::Status(code).probability(p));
    }

    /// Every request's connection is reset without an answer.
    pub fn reset(&self) {
        self.add(Fault::Reset);
    }

    /// Every watch resuming from a resourceVersion is told 410 Gone (reason `Expired`) as a compacted etcd makes
    /// kube-apiserver tell it: in an `ERROR` event (see [`Fault::GoneOnWatch`]).
    pub fn gone_on_watch(&self) {
        self.add(Fault::GoneOnWatch);
    }

    /// Ends every watch stream relayed now (each ends as the API server ends one at `timeoutSeconds`), so their
    /// clients must resume. Watches opened afterwards are not affected.
    pub fn cut_watches(&self) {
        self.shared.cut.send_modify(|generation| *generation += 1);
    }

    /// Removes every rule and resets the connections of stalled requests.
    pub fn clear(&self) {
        self.shared.rules().list.clear();
        self.shared
            .release
            .send_modify(|generation| *generation += 1);
    }

    /// Reseeds the dice of rules with a probability below 1.
    pub fn reseed(&self, seed: u64) {
        self.shared.rules().dice = SmallRng::seed_from_u64(seed);
    }

    /// What the proxy has seen and done so far.
    pub fn counts(&self) -> Counts {
        self.shared.counts().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Drops the accept loop, every connection and every held request. shutdown_background does not block, so
        // the proxy may be dropped inside the test's own runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct Shared {
    upstream: Upstream,
    rules: Mutex<Rules>,
    /// Moved by `clear`, which releases stalled requests.
    release: watch::Sender<u64>,
    /// Moved by `cut_watches`, which ends the watch relays open then.
    cut: watch::Sender<u64>,
    counts: Mutex<Counts>,
}

struct Rules {
    list: Vec<Rule>,
    dice: SmallRng,
}

/// A delay, then at most one of these per request.
enum Action {
    Stall,
    Status(StatusCode),
    Reset,
    GoneEvent(String),
    GoneStatus(String),
}

impl Shared {
    fn rules(&self) -> MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, change: impl FnOnce(&mut Counts)) {
        change(&mut self.counts());
    }

    /// Rolls the rules for one request: the summed latency of the matching latency rules, and the first matching
    /// other fault that fires. A rule that does not fire keeps its remaining count.
    fn decide(&self, request: &RequestFacts) -> (Duration, Option<Action>) {
        let mut rules = self.rules();
        let Rules { list, dice } = &mut *rules;
        let mut delay = Duration::ZERO;
        let mut action = None;
        for rule in list.iter_mut() {
            let latency = matches!(rule.fault, Fault::Latency(_));
            if (action.is_some() && !latency)
                || rule.remaining == Some(0)
                || !rule.when.matches(request)
                || !rule.fault.applies_to(request)
                || (rule.probability < 1.0 && !dice.random_bool(rule.probability))
            {
                continue;
            }
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
            let rv = || request.resource_version.clone().unwrap_or_default();
            match &rule.fault {
                Fault::Latency(d) => delay += *d,
                Fault::Stall => action = Some(Action::Stall),
                Fault::Status(code) => {
                    action = Some(Action::Status(
                        StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    ))
                }
                Fault::Reset => action = Some(Action::Reset),
                Fault::GoneOnWatch => action = Some(Action::GoneEvent(rv())),
                Fault::GoneStatusOnWatch => action = Some(Action::GoneStatus(rv())),
            }
        }
        (delay, action)
    }
}

/// What the rules look at in a request.
struct RequestFacts {
    method: Method,
    path_and_query: String,
    user_agent: String,
    watch: bool,
    resource_version: Option<String>,
}

impl RequestFacts {
    fn of<B>(request: &Request<B>) -> RequestFacts {
        let uri = request.uri();
        let mut watch = uri.path().contains("/watch/");
        let mut resource_version = None;
        for (key, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            match &*key {
                "watch" => watch |= value == "true" || value == "1",
                "resourceVersion" => resource_version = Some(value.into_owned()),
                _ => {}
            }
        }
        RequestFacts {
            method: request.method().clone(),
            path_and_query: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            user_agent: request
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned(),
            watch,
            resource_version,
        }
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Runs until the proxy's runtime shuts down.
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((tcp, _)) => {
                let (acceptor, shared) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    serve_connection(tcp, acceptor, shared).await;
                    drop(slot);
                });
            }
            // Out of descriptors, or a connection aborted before accept: wait a little rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Serves one client connection until it closes, or resets it when a request asks for that.
async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    // A second descriptor of the socket, kept here while the first goes into TLS and hyper: through it the socket
    // gets SO_LINGER 0 before its last close, so that close sends RST instead of FIN.
    let Ok(socket): std::io::Result<OwnedFd> = tcp.as_fd().try_clone_to_owned() else {
        return;
    };
    let Ok(Ok(tls)) = timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await else {
        return;
    };
    let reset = Arc::new(Notify::new());
    let service = {
        let reset = reset.clone();
        hyper::service::service_fn(move |request| handle(shared.clone(), reset.clone(), request))
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // An idle keep-alive connection stays open for as long as the client wants (bounded by the proxy's life):
        // closing it under a client's feet makes spurious errors no fault rule asked for.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        _ = connection => {}
        _ = reset.notified() => {
            let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
        }
    }
    drop(socket);
}

async fn handle(
    shared: Arc<Shared>,
    reset: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let facts = RequestFacts::of(&request);
    // Subscribed before the rules are read, so a clear() right after cannot be missed.
    let mut released = shared.release.subscribe();
    shared.count(|c| c.requests += 1);
    let (delay, action) = shared.decide(&facts);
    if !delay.is_zero() {
        shared.count(|c| c.delayed += 1);
        tokio::time::sleep(delay).await;
    }
    let response = match action {
        None => forward(&shared, &facts, request).await,
        Some(Action::Stall) => {
            shared.count(|c| c.stalled += 1);
            let _ = released.changed().await;
            shared.count(|c| c.resets += 1);
            match reset_connection(&reset).await {}
        }
        Some(Action::Reset) => {
            shared.count(|c| c.resets += 1);
            match reset_connection(&reset).await {}
        }
        Some(Action::Status(code)) => {
            shared.count(|c| *c.statuses.entry(code.as_u16()).or_default() += 1);
            status_response(code, &injected_message(code))
        }
        Some(Action::GoneStatus(rv)) => {
            shared.count(|c| c.gone_statuses += 1);
            status_response(StatusCode::GONE, &too_old(&rv))
        }
        Some(Action::GoneEvent(rv)) => {
            shared.count(|c| c.gone += 1);
            let event = serde_json::json!({
                "type": "ERROR",
                "object": status_json(StatusCode::GONE, &too_old(&rv)),
            });
            let mut response = Response::new(full(format!("{event}\n")));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
    };
    Ok(response)
}

/// Asks the connection task to reset the connection, which drops this request; never returns.
async fn reset_connection(reset: &Notify) -> Infallible {
    reset.notify_one();
    std::future::pending().await
}

async fn forward(
    shared: &Arc<Shared>,
    facts: &RequestFacts,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let (response, driver) = match shared.upstream.send(request).await {
        Ok(sent) => sent,
        Err(e) => {
            shared.count(|c| {
                c.upstream_errors += 1;
                c.last_upstream_error = Some(format!("{e:#}"));
            });
            return status_response(
                StatusCode::BAD_GATEWAY,
                &format!("fault proxy: the API server cannot be reached: {e:#}"),
            );
        }
    };
    shared.count(|c| c.forwarded += 1);
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let watch = facts.watch && parts.status.is_success();
    let relay = Relay {
        body,
        _driver: driver,
        cut: watch.then(|| shared.cut.subscribe()),
        _open: watch.then(|| OpenWatch::new(shared.clone())),
        shared: shared.clone(),
    };
    Response::from_parts(parts, relay.into_body())
}

/// The API server's address, and how to reach it.
struct Upstream {
    addr: SocketAddr,
    host: HeaderValue,
    name: ServerName<'static>,
    tls: TlsConnector,
}

impl Upstream {
    /// Sends `request` on a new TLS connection and returns the response head, and the task driving that connection
    /// (aborted when its guard drops, with the relayed body).
    async fn send(&self, request: Request<Incoming>) -> Result<(Response<Incoming>, AbortOnDrop)> {
        let tcp = timeout(HANDSHAKE_LIMIT, TcpStream::connect(self.addr))
            .await
            .context("connect timed out")??;
        tcp.set_nodelay(true)?;
        let tls = timeout(HANDSHAKE_LIMIT, self.tls.connect(self.name.clone(), tcp))
            .await
            .context("TLS handshake timed out")??;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let (mut parts, body) = request.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // Authorization and every end-to-end header pass as they came; only Host names the API server now.
        parts.headers.insert(header::HOST, self.host.clone());
        parts.uri = Uri::try_from(parts.uri.path_and_query().map_or("/", |p| p.as_str()))?;
        parts.version = Version::HTTP_11;
        let response = timeout(
            RESPONSE_HEAD_LIMIT,
            sender.send_request(Request::from_parts(parts, body)),
        )
        .await
        .context("no response head in time")??;
        Ok((response, driver))
    }
}

/// A response body relayed from the API server, frame by frame as it arrives, so a watch streams through. A watch's
/// relay ends cleanly when `cut` moves.
struct Relay {
    body: Incoming,
    _driver: AbortOnDrop,
    cut: Option<watch::Receiver<u64>>,
    _open: Option<OpenWatch>,
    shared: Arc<Shared>,
}

impl Relay {
    fn into_body(self) -> ProxyBody {
        let frames = futures::stream::unfold(Some(self), |relay| async move {
            let mut relay = relay?;
            let next = match relay.cut.as_mut() {
                Some(cut) => tokio::select! {
                    biased;
                    _ = cut.changed() => {
                        relay.shared.count(|c| c.watches_cut += 1);
                        return None;
                    }
                    frame = relay.body.frame() => frame,
                },
                None => relay.body.frame().await,
            };
            match next {
                Some(Ok(frame)) => Some((Ok::<Frame<Bytes>, BoxError>(frame), Some(relay))),
                Some(Err(e)) => Some((Err(e.into()), None)),
                None => None,
            }
        });
        UnsyncBoxBody::new(StreamBody::new(frames))
    }
}

/// Counts a watch as open while its relay lives.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: Arc<Shared>) -> OpenWatch {
        shared.count(|c| c.open_watches += 1);
        OpenWatch(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.count(|c| c.open_watches -= 1);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes the headers that belong to one connection (RFC 9110 section 7.6.1), including those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&[
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]) {
        headers.remove(name);
    }
}

fn full(body: String) -> ProxyBody {
    UnsyncBoxBody::new(Full::new(Bytes::from(body)).map_err(|never| match never {}))
}

/// The `reason` the API server puts in a `Status` of this code (k8s.io/apimachinery `StatusReason`).
fn reason(code: StatusCode) -> &'static str {
    match code.as_u16() {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        409 => "Conflict",
        410 => "Expired",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

fn injected_message(code: StatusCode) -> String {
    match code.as_u16() {
        429 => "Too many requests, please try again later.".into(),
        _ => format!("fault proxy: injected {code}"),
    }
}

/// The message kube-apiserver gives for a compacted revision.
fn too_old(rv: &str) -> String {
    match rv.parse::<u64>() {
        Ok(n) => format!("too old resource version: {n} ({})", n + 1),
        Err(_) => format!("too old resource version: {rv}"),
    }
}

/// A `Status` as the API server writes one; 429 and 503 carry `retryAfterSeconds`, as its max-in-flight filter
/// writes them.
fn status_json(code: StatusCode, message: &str) -> serde_json::Value {
    let mut status = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason(code),
        "code": code.as_u16(),
    });
    if retries(code) {
        status["details"] = serde_json::json!({ "retryAfterSeconds": 1 });
    }
    status
}

fn retries(code: StatusCode) -> bool {
    matches!(
        code,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    )
}

fn status_response(code: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(status_json(code, message).to_string()));
    *response.status_mut() = code;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if retries(code) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}
