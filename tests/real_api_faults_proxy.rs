//! Tier: the real control plane (tests/real_api_support) behind our fault proxy (real_api_support::fault_proxy). The
//! proxy itself is checked here, with kubectl and kube-rs as its clients and a ServiceAccount token for
//! credentials: it must pass requests through untouched (RBAC stays the caller's), and each fault must reach the
//! client as the client would meet it from a real API server in trouble, and be counted, so that the agent
//! scenarios built on it can trust "the fault happened".
//!
//! Every test has its own namespace and its own proxy, and is bounded by [`TEST_LIMIT`].

mod real_api_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};
use real_api_support::ControlPlane;
use real_api_support::fault_proxy::{Fault, FaultProxy, RequestMatch};

/// How long one test may take from the moment its fixture is ready.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// How long one awaited step (an event, a response) may take.
const STEP_LIMIT: Duration = Duration::from_secs(15);

/// A namespace with the ConfigMap `seen`, the ServiceAccount `reader` allowed to get, list and watch ConfigMaps there
/// (and nothing else), and a proxy in front of the API server with a kubeconfig of `reader` pointing at it.
struct Fixture {
    ns: String,
    proxied: PathBuf,
    proxy: FaultProxy,
    plane: Arc<ControlPlane>,
}

fn fixture(test: &str) -> Result<Option<Fixture>> {
    let Some(plane) = real_api_support::shared() else {
        return Ok(None);
    };
    let ns = format!("ilb-{}-fp-{test}", std::process::id());
    let direct = plane.service_account_kubeconfig(&ns, "reader")?;
    plane.kubectl_ok(&[
        "create",
        "role",
        "configmap-reader",
        "--verb=get,list,watch",
        "--resource=configmaps",
        "-n",
        &ns,
    ])?;
    plane.kubectl_ok(&[
        "create",
        "rolebinding",
        "configmap-reader",
        "--role=configmap-reader",
        &format!("--serviceaccount={ns}:reader"),
        "-n",
        &ns,
    ])?;
    plane.kubectl_ok(&[
        "create",
        "configmap",
        "seen",
        "--from-literal=key=value",
        "-n",
        &ns,
    ])?;
    let proxy = FaultProxy::start(&plane)?;
    let proxied = proxy.kubeconfig_for(&direct)?;
    Ok(Some(Fixture {
        ns,
        proxied,
        proxy,
        plane,
    }))
}

impl Fixture {
    /// A kube-rs client through the proxy, with kube-rs' retries of 429/503/504 on or off.
    async fn client(&self, retry: bool) -> Result<kube::Client> {
        let mut config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::read_from(&self.proxied)?,
            &KubeConfigOptions::default(),
        )
        .await?;
        config.default_retry = retry;
        Ok(kube::Client::try_from(config)?)
    }

    async fn configmaps(&self, retry: bool) -> Result<Api<ConfigMap>> {
        Ok(Api::namespaced(self.client(retry).await?, &self.ns))
    }
}

/// Runs `test` on a runtime of its own, failing it after [`TEST_LIMIT`].
fn run(test: impl std::future::Future<Output = Result<()>>) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(async {
            tokio::time::timeout(TEST_LIMIT, test)
                .await
                .with_context(|| format!("the test did not finish within {TEST_LIMIT:?}"))?
        })
}

/// Polls `holds` every 20 ms until it is true, failing after [`STEP_LIMIT`].
async fn wait_until(what: &str, mut holds: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !holds() {
        if start.elapsed() >= STEP_LIMIT {
            bail!("timed out after {STEP_LIMIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The next watch event other than a bookmark, or `None` when the stream ended, within [`STEP_LIMIT`].
async fn next_event(
    stream: &mut (impl Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
) -> Result<Option<WatchEvent<ConfigMap>>> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        let next = tokio::time::timeout_at(deadline.into(), stream.try_next())
            .await
            .context("no watch event in time")??;
        if !matches!(next, Some(WatchEvent::Bookmark(_))) {
            return Ok(next);
        }
    }
}

/// The receiver as a stream.
fn tokio_stream_of<T>(receiver: tokio::sync::mpsc::Receiver<T>) -> impl Stream<Item = T> + Unpin {
    Box::pin(futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ))
}

/// Runs `f` when dropped, even when the test panics.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// The next item of `stream`, within [`STEP_LIMIT`].
async fn next_item<S: Stream + Unpin>(stream: &mut S) -> Result<Option<S::Item>> {
    tokio::time::timeout(STEP_LIMIT, stream.next())
        .await
        .context("nothing from the stream in time")
}

/// Whether the request failed because the peer reset the connection (a TCP RST, not an answer or a clean close).
fn was_reset(error: &kube::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

fn name(cm: &ConfigMap) -> &str {
    cm.metadata.name.as_deref().unwrap_or("")
}

fn api_code(result: &kube::Result<impl std::fmt::Debug>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

#[test]
fn requests_pass_through_and_rbac_stays_the_callers() -> Result<()> {
    let Some(f) = fixture("pass")? else {
        return Ok(());
    };
    let ns = f.ns.as_str();
    assert_eq!(
        f.plane.kubectl_as_ok(
            &f.proxied,
            &[
                "get",
                "configmap",
                "seen",
                "-n",
                ns,
                "-o",
                "jsonpath={.data.key}"
            ],
        )?,
        "value"
    );
    // The proxy adds no credentials: what the token may not do, it may not do through the proxy either.
    let can = f.plane.kubectl_as(
        &f.proxied,
        &["auth", "can-i", "create", "configmaps", "-n", ns],
    )?;
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");
    let create = f.plane.kubectl_as(
        &f.proxied,
        &["create", "configmap", "not-allowed", "-n", ns],
    )?;
    let stderr = String::from_utf8_lossy(&create.stderr);
    assert!(!create.status.success(), "create went through the proxy");
    assert!(
        stderr.contains("forbidden")
            && stderr.contains(&format!("system:serviceaccount:{ns}:reader")),
        "{stderr}"
    );
    assert!(
        f.proxy.kubeconfig_for(f.plane.kubeconfig_path()).is_err(),
        "a client-certificate kubeconfig cannot pass the proxy and must be refused"
    );

    run(async {
        let api = f.configmaps(false).await?;
        let seen = api.get("seen").await?;
        assert_eq!(seen.data.unwrap_or_default()["key"], "value");
        let created = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(serde_json::json!({
                    "metadata": { "name": "not-allowed" },
                }))?,
            )
            .await;
        assert_eq!(api_code(&created), Some(403), "{created:?}");

        let counts = f.proxy.counts();
        assert!(counts.requests >= 5, "{counts:?}");
        assert_eq!(counts.forwarded, counts.requests, "{counts:?}");
        assert_eq!(counts.faults(), 0, "{counts:?}");
        assert_eq!(counts.upstream_errors, 0, "{counts:?}");
        Ok(())
    })
}

#[test]
fn injected_statuses_reach_the_client_and_are_counted() -> Result<()> {
    let Some(f) = fixture("status")? else {
        return Ok(());
    };
    run(async {
        let client = f.client(false).await?;
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &f.ns);
        let forwarded = f.proxy.counts().forwarded;

        f.proxy.status(503, 1.0);
        match api.get("seen").await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 503);
                assert_eq!(status.reason, "ServiceUnavailable");
            }
            other => panic!("expected a 503 Status, got {other:?}"),
        }
        let counts = f.proxy.counts();
        assert_eq!(counts.status(503), 1, "{counts:?}");
        assert_eq!(counts.forwarded, forwarded, "the 503 came from the proxy");

        // The headers and body a client decides its retry on.
        let path = format!("/api/v1/namespaces/{}/configmaps/seen", f.ns);
        for (code, reason, retry_after) in [
            (429, "TooManyRequests", Some("1")),
            (500, "InternalError", None),
            (503, "ServiceUnavailable", Some("1")),
        ] {
            f.proxy.clear();
            f.proxy.status(code, 1.0);
            let response = client
                .send(hyper::Request::get(&path).body(kube::client::Body::empty())?)
                .await?;
            assert_eq!(response.status().as_u16(), code);
            assert_eq!(
                response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()),
                retry_after,
                "Retry-After of {code}"
            );
            let status: serde_json::Value =
                serde_json::from_slice(&response.into_body().collect_bytes().await?)?;
            assert_eq!(status["kind"], "Status");
            assert_eq!(status["code"], code);
            assert_eq!(status["reason"], reason);
        }
        let counts = f.proxy.counts();
        assert_eq!(
            (counts.status(429), counts.status(500), counts.status(503)),
            (1, 1, 2),
            "{counts:?}"
        );

        f.proxy.clear();
        api.get("seen").await?;
        Ok(())
    })
}

#[test]
fn random_503s_at_ten_percent_fail_some_gets_and_kube_rs_retries_ride_them_out() -> Result<()> {
    let Some(f) = fixture("random")? else {
        return Ok(());
    };
    run(async {
        f.proxy.add(
            Fault::Status(503)
                .probability(0.1)
                .when(RequestMatch::any().method("get").path("/configmaps/seen")),
        );
        let api = f.configmaps(false).await?;
        let mut failed = 0;
        for _ in 0..100 {
            match api.get("seen").await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 503 => failed += 1,
                Err(e) => return Err(e.into()),
            }
        }
        assert_eq!(f.proxy.counts().status(503), failed);
        assert!(
            (1..30).contains(&failed),
            "{failed} of 100 GETs failed at p = 0.1"
        );

        // kube-rs retries a 503 after its Retry-After (1 s): every GET succeeds, while faults keep being injected.
        let api = f.configmaps(true).await?;
        let before = f.proxy.counts().status(503);
        let mut gets = 0;
        while f.proxy.counts().status(503) - before < 3 {
            ensure!(
                gets < 300,
                "3 faults not injected in {gets} GETs at p = 0.1"
            );
            api.get("seen").await?;
            gets += 1;
        }
        Ok(())
    })
}

#[test]
fn latency_delays_the_matching_requests() -> Result<()> {
    let Some(f) = fixture("latency")? else {
        return Ok(());
    };
    run(async {
        let api = f.configmaps(false).await?;
        f.proxy.latency(Duration::from_millis(300));
        let start = Instant::now();
        api.get("seen").await?;
        assert!(
            start.elapsed() >= Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(f.proxy.counts().delayed, 1);

        // Rules for another path, for watches and for kubectl leave kube-rs' GET alone.
        f.proxy.clear();
        let long = Duration::from_secs(60);
        f.proxy
            .add(Fault::Latency(long).when(RequestMatch::any().path("/secrets")));
        f.proxy
            .add(Fault::Latency(long).when(RequestMatch::any().watch(true)));
        f.proxy.add(
            Fault::Latency(Duration::from_millis(300))
                .when(RequestMatch::any().user_agent("kubectl")),
        );
        tokio::time::timeout(STEP_LIMIT, api.get("seen")).await??;
        assert_eq!(f.proxy.counts().delayed, 1);
        let start = Instant::now();
        f.plane.kubectl_as_ok(
            &f.proxied,
            &["get", "configmap", "seen", "-n", &f.ns, "-o", "name"],
        )?;
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(f.proxy.counts().delayed > 1, "{:?}", f.proxy.counts());
        Ok(())
    })
}

#[test]
fn a_stalled_get_times_out_and_clear_releases_it() -> Result<()> {
    let Some(f) = fixture("stall")? else {
        return Ok(());
    };
    run(async {
        let api = f.configmaps(false).await?;
        f.proxy.stall();
        let stalled = tokio::time::timeout(Duration::from_secs(1), api.get("seen")).await;
        assert!(stalled.is_err(), "a stalled GET answered: {stalled:?}");
        assert_eq!(f.proxy.counts().stalled, 1);

        // A client still waiting when the stall is cleared sees its connection reset, not a late answer.
        let waiting = tokio::spawn({
            let api = api.clone();
            async move { api.get("seen").await }
        });
        wait_until("a second request to stall", || {
            f.proxy.counts().stalled == 2
        })
        .await?;
        f.proxy.clear();
        let released = tokio::time::timeout(STEP_LIMIT, waiting).await??;
        assert!(
            released.as_ref().is_err_and(was_reset),
            "expected a connection reset, got {released:?}"
        );
        // The first request's client gave up and closed its connection: whether the proxy noticed before the clear
        // (and so had nothing left to reset) is a race, hence at least one.
        assert!(f.proxy.counts().resets >= 1, "{:?}", f.proxy.counts());
        assert_eq!(f.proxy.counts().forwarded, 0);

        tokio::time::timeout(STEP_LIMIT, api.get("seen")).await??;
        Ok(())
    })
}

#[test]
fn a_reset_connection_fails_the_request_without_an_answer() -> Result<()> {
    let Some(f) = fixture("reset")? else {
        return Ok(());
    };
    run(async {
        let api = f.configmaps(false).await?;
        f.proxy.reset();
        let reset = api.get("seen").await;
        assert!(
            reset.as_ref().is_err_and(was_reset),
            "expected a connection reset, got {reset:?}"
        );
        assert!(f.proxy.counts().resets >= 1);
        assert_eq!(f.proxy.counts().forwarded, 0);

        f.proxy.clear();
        api.get("seen").await?;
        Ok(())
    })
}

#[test]
fn a_watch_streams_through_the_proxy_and_cut_watches_ends_it() -> Result<()> {
    let Some(f) = fixture("cut")? else {
        return Ok(());
    };
    run(async {
        let api = f.configmaps(false).await?;
        let rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .context("a list has a resourceVersion")?;
        let params = WatchParams::default().timeout(290);
        let mut stream = api.watch(&params, &rv).await?.boxed();
        assert_eq!(f.proxy.counts().open_watches, 1);

        f.plane
            .kubectl_ok(&["create", "configmap", "fresh", "-n", &f.ns])?;
        let Some(WatchEvent::Added(fresh)) = next_event(&mut stream).await? else {
            bail!("expected the creation of `fresh`");
        };
        assert_eq!(name(&fresh), "fresh");

        f.proxy.cut_watches();
        let end = next_event(&mut stream).await?;
        assert!(end.is_none(), "the watch went on after the cut: {end:?}");
        let counts = f.proxy.counts();
        assert_eq!(
            (counts.watches_cut, counts.open_watches),
            (1, 0),
            "{counts:?}"
        );

        // The client resumes from the last version it saw, and nothing is lost.
        let rv = fresh
            .metadata
            .resource_version
            .context("a resourceVersion")?;
        let mut stream = api.watch(&params, &rv).await?.boxed();
        f.plane
            .kubectl_ok(&["create", "configmap", "after-cut", "-n", &f.ns])?;
        let Some(WatchEvent::Added(after)) = next_event(&mut stream).await? else {
            bail!("expected the creation of `after-cut`");
        };
        assert_eq!(name(&after), "after-cut");
        Ok(())
    })
}

#[test]
fn gone_on_watch_tells_a_resuming_watch_410_expired() -> Result<()> {
    let Some(f) = fixture("gone")? else {
        return Ok(());
    };
    run(async {
        let api = f.configmaps(false).await?;
        let rv = api
            .list(&ListParams::default())
            .await?
            .metadata
            .resource_version
            .context("a list has a resourceVersion")?;
        let params = WatchParams::default().timeout(290);
        f.proxy.gone_on_watch();

        // As kube-apiserver says it: HTTP 200, one ERROR event, the end.
        let mut stream = api.watch(&params, &rv).await?.boxed();
        match next_event(&mut stream).await? {
            Some(WatchEvent::Error(status)) => {
                assert_eq!(status.code, 410);
                assert_eq!(status.reason, "Expired");
            }
            other => bail!("expected a 410 ERROR event, got {other:?}"),
        }
        assert!(next_event(&mut stream).await?.is_none());
        assert_eq!(f.proxy.counts().gone, 1);

        // A watch from "any version" cannot be compacted away, and a list is no watch: both pass.
        let mut from_any = api.watch(&params, "0").await?.boxed();
        let Some(WatchEvent::Added(seen)) = next_event(&mut from_any).await? else {
            bail!("expected `seen` from a watch at resourceVersion 0");
        };
        assert_eq!(name(&seen), "seen");
        api.list(&ListParams::default()).await?;
        assert_eq!(f.proxy.counts().gone, 1);

        // The other form, an HTTP 410.
        f.proxy.clear();
        f.proxy.add(Fault::GoneStatusOnWatch);
        let refused = api.watch(&params, &rv).await.map(|_| ());
        assert_eq!(api_code(&refused), Some(410), "{refused:?}");
        assert_eq!(f.proxy.counts().gone_statuses, 1);
        Ok(())
    })
}

#[test]
fn a_kube_runtime_watcher_lists_again_after_gone_and_sees_later_changes() -> Result<()> {
    let Some(f) = fixture("watcher")? else {
        return Ok(());
    };
    run(async {
        let api = f.configmaps(false).await?;
        // The watcher opens its watch only when polled, so a task keeps polling it, as a controller would.
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        let mut watcher_task = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        let pump = tokio::spawn(async move {
            while let Some(event) = watcher_task.next().await {
                if sender.send(event).await.is_err() {
                    return;
                }
            }
        });
        let _stop_pump = scopeguard(move || pump.abort());
        let mut events = tokio_stream_of(receiver);
        loop {
            match next_item(&mut events)
                .await?
                .context("the watcher ended")??
            {
                watcher::Event::InitDone => break,
                _ => continue,
            }
        }
        wait_until("the watcher's watch through the proxy", || {
            f.proxy.counts().open_watches == 1
        })
        .await?;

        // Its watch is cut, and the revision it resumes from is gone: it must list again.
        f.proxy.add(Fault::GoneOnWatch.times(1));
        f.proxy.cut_watches();
        let mut told_gone = false;
        loop {
            match next_item(&mut events).await?.context("the watcher ended")? {
                Err(watcher::Error::WatchError(status)) if status.code == 410 => told_gone = true,
                Ok(watcher::Event::InitDone) if told_gone => break,
                Ok(_) => {}
                Err(e) => bail!("unexpected watcher error: {e}"),
            }
        }
        let counts = f.proxy.counts();
        assert_eq!((counts.watches_cut, counts.gone), (1, 1), "{counts:?}");

        f.plane
            .kubectl_ok(&["create", "configmap", "later", "-n", &f.ns])?;
        loop {
            match next_item(&mut events)
                .await?
                .context("the watcher ended")??
            {
                watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)
                    if name(&cm) == "later" =>
                {
                    break;
                }
                _ => continue,
            }
        }
        Ok(())
    })
}
