//! The lab API server against the real kube-rs 5 client, the one the agent uses: list, watch (raw and through
//! `kube::runtime::watcher`), status patches, optimistic concurrency on Leases, server-side apply, and errors.
//! Everything runs on loopback.

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use ironlb::lab::api::{ApiServer, write_kubeconfig};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STEP: Duration = Duration::from_secs(10);

/// A server on a free loopback port and a kube-rs client built from the kubeconfig it writes.
async fn lab() -> Result<(ApiServer, Client, tempfile::TempDir)> {
    let server = ApiServer::start("127.0.0.1:0".parse()?).await?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("kubeconfig");
    write_kubeconfig(&path, &server.url())?;
    let kubeconfig = Kubeconfig::read_from(&path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok((server, Client::try_from(config)?, dir))
}

fn service(name: &str) -> Result<Service> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }))?)
}

fn api_code(err: &kube::Error) -> Option<(u16, String)> {
    match err {
        kube::Error::Api(status) => Some((status.code, status.reason.clone())),
        _ => None,
    }
}

#[tokio::test]
async fn lists_initial_namespaces_and_filters_by_label() -> Result<()> {
    let (_server, client, _dir) = lab().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for want in ["default", "kube-system", "metallb-system", "ironlb-system"] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let services: Api<Service> = Api::namespaced(client, "default");
    for name in ["a", "b", "c"] {
        services
            .create(&PostParams::default(), &service(name)?)
            .await?;
    }
    let listed = |sel: &str| {
        let services = services.clone();
        let lp = ListParams::default().labels(sel);
        async move {
            let list = services.list(&lp).await?;
            Ok::<_, anyhow::Error>(
                list.items
                    .into_iter()
                    .filter_map(|s| s.metadata.name)
                    .collect::<Vec<_>>(),
            )
        }
    };
    assert_eq!(listed("app in (a,c)").await?, vec!["a", "c"]);
    assert_eq!(listed("app!=a").await?, vec!["b", "c"]);
    assert_eq!(listed("!app").await?, Vec::<String>::new());
    let by_name = services
        .list(&ListParams::default().fields("metadata.name=b"))
        .await?;
    assert_eq!(by_name.items.len(), 1);
    let bad = services
        .list(&ListParams::default().labels("app in (a"))
        .await;
    assert_eq!(
        api_code(&bad.unwrap_err()),
        Some((400, "BadRequest".into()))
    );
    Ok(())
}

#[tokio::test]
async fn raw_watch_sees_added_modified_deleted_in_order() -> Result<()> {
    let (_server, client, _dir) = lab().await?;
    let services: Api<Service> = Api::namespaced(client, "default");
    let created = services
        .create(&PostParams::default(), &service("w")?)
        .await?;
    let rv = created
        .metadata
        .resource_version
        .clone()
        .context("no resourceVersion")?;
    let mut stream = services
        .watch(&WatchParams::default().timeout(20), &rv)
        .await?
        .boxed();
    services
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
        )
        .await?;
    services.delete("w", &DeleteParams::default()).await?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(STEP, stream.try_next()).await?? {
            Some(WatchEvent::Modified(s)) => seen.push(("MODIFIED", s)),
            Some(WatchEvent::Deleted(s)) => seen.push(("DELETED", s)),
            Some(WatchEvent::Bookmark(_)) => {}
            other => bail!("unexpected watch event {other:?}"),
        }
    }
    assert_eq!(seen[0].0, "MODIFIED");
    assert_eq!(seen[1].0, "DELETED");
    let rv_of = |s: &Service| {
        s.metadata
            .resource_version
            .clone()
            .unwrap_or_default()
            .parse::<u64>()
            .unwrap_or(0)
    };
    assert!(rv_of(&seen[1].1) > rv_of(&seen[0].1));
    // Resuming from before the change replays it; resuming from "0" starts with a synthetic ADDED snapshot.
    services
        .create(&PostParams::default(), &service("v")?)
        .await?;
    let mut from_zero = services
        .watch(&WatchParams::default().timeout(5), "0")
        .await?
        .boxed();
    match tokio::time::timeout(STEP, from_zero.try_next()).await?? {
        Some(WatchEvent::Added(s)) => assert_eq!(s.metadata.name.as_deref(), Some("v")),
        other => bail!("expected ADDED, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn runtime_watcher_sees_apply_and_delete() -> Result<()> {
    let (_server, client, _dir) = lab().await?;
    let services: Api<Service> = Api::namespaced(client, "default");
    services
        .create(&PostParams::default(), &service("before")?)
        .await?;
    let mut events = watcher(services.clone(), watcher::Config::default().labels("app")).boxed();
    // The initial list arrives as Init, InitApply(before), InitDone.
    let mut initial = Vec::new();
    loop {
        match tokio::time::timeout(STEP, events.try_next()).await?? {
            Some(watcher::Event::Init) => {}
            Some(watcher::Event::InitApply(s)) => initial.extend(s.metadata.name),
            Some(watcher::Event::InitDone) => break,
            other => bail!("unexpected {other:?} during init"),
        }
    }
    assert_eq!(initial, vec!["before"]);
    services
        .create(&PostParams::default(), &service("after")?)
        .await?;
    services
        .patch_status(
            "after",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}})),
        )
        .await?;
    services.delete("before", &DeleteParams::default()).await?;
    let mut log = Vec::new();
    while log.len() < 3 {
        match tokio::time::timeout(STEP, events.try_next()).await?? {
            Some(watcher::Event::Apply(s)) => {
                let ip = s
                    .status
                    .and_then(|st| st.load_balancer)
                    .and_then(|lb| lb.ingress)
                    .and_then(|i| i.into_iter().next())
                    .and_then(|i| i.ip);
                log.push(format!(
                    "apply {} {}",
                    s.metadata.name.unwrap_or_default(),
                    ip.unwrap_or_default()
                ));
            }
            Some(watcher::Event::Delete(s)) => {
                log.push(format!("delete {}", s.metadata.name.unwrap_or_default()))
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        log,
        vec!["apply after ", "apply after 192.0.2.10", "delete before"]
    );
    Ok(())
}

#[tokio::test]
async fn status_subresource_is_separate_from_the_main_resource() -> Result<()> {
    let (_server, client, _dir) = lab().await?;
    let services: Api<Service> = Api::namespaced(client, "default");
    services
        .create(&PostParams::default(), &service("s")?)
        .await?;
    // A status patch sets the ingress but cannot change the spec.
    let after = services
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "spec": {"type": "ClusterIP"},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}},
            })),
        )
        .await?;
    assert_eq!(
        after.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("LoadBalancer")
    );
    // A main-resource patch cannot change the status.
    let after = services
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": []}}, "metadata": {"annotations": {"k": "v"}}})),
        )
        .await?;
    let ip = after
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .and_then(|i| i.into_iter().next())
        .and_then(|i| i.ip);
    assert_eq!(ip.as_deref(), Some("192.0.2.10"));
    assert_eq!(
        after
            .metadata
            .annotations
            .and_then(|a| a.get("k").cloned())
            .as_deref(),
        Some("v")
    );
    // JSON patch works on the status subresource too.
    let after = services
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(json!([
                {"op": "replace", "path": "/status/loadBalancer/ingress/0/ip", "value": "192.0.2.11"}
            ]))?),
        )
        .await?;
    let ip = after
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .and_then(|i| i.into_iter().next())
        .and_then(|i| i.ip);
    assert_eq!(ip.as_deref(), Some("192.0.2.11"));
    Ok(())
}

#[tokio::test]
async fn lease_updates_use_optimistic_concurrency() -> Result<()> {
    let (_server, client, _dir) = lab().await?;
    let leases: Api<Lease> = Api::namespaced(client, "ironlb-system");
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "ironlb-leader"},
        "spec": {"holderIdentity": "node-a", "leaseDurationSeconds": 15},
    }))?;
    let created = leases.create(&PostParams::default(), &lease).await?;
    let dup = leases
        .create(&PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert_eq!(api_code(&dup), Some((409, "AlreadyExists".into())));

    // Two candidates read the same version; the first replace wins, the second is a Conflict.
    let mut a = created.clone();
    a.spec.as_mut().context("spec")?.holder_identity = Some("node-a".into());
    a.spec.as_mut().context("spec")?.lease_transitions = Some(1);
    let mut b = created.clone();
    b.spec.as_mut().context("spec")?.holder_identity = Some("node-b".into());
    let won = leases
        .replace("ironlb-leader", &PostParams::default(), &a)
        .await?;
    assert_ne!(
        won.metadata.resource_version,
        created.metadata.resource_version
    );
    let lost = leases
        .replace("ironlb-leader", &PostParams::default(), &b)
        .await
        .unwrap_err();
    assert_eq!(api_code(&lost), Some((409, "Conflict".into())));
    // Retrying from the fresh version succeeds.
    let mut retry = won.clone();
    retry.spec.as_mut().context("spec")?.holder_identity = Some("node-b".into());
    let now = leases
        .replace("ironlb-leader", &PostParams::default(), &retry)
        .await?;
    assert_eq!(
        now.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("node-b")
    );

    let missing = leases.get("nope").await.unwrap_err();
    assert_eq!(api_code(&missing), Some((404, "NotFound".into())));
    let missing = leases
        .delete("nope", &DeleteParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_code(&missing), Some((404, "NotFound".into())));
    Ok(())
}

#[tokio::test]
async fn server_side_apply_creates_then_merges() -> Result<()> {
    let (_server, client, _dir) = lab().await?;
    let maps: Api<ConfigMap> = Api::namespaced(client, "metallb-system");
    let pp = PatchParams::apply("ironlb-test").force();
    let first = maps
        .patch(
            "config",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config"}, "data": {"a": "1"}})),
        )
        .await?;
    assert_eq!(
        first.data.and_then(|d| d.get("a").cloned()).as_deref(),
        Some("1")
    );
    let second = maps
        .patch(
            "config",
            &pp,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config"}, "data": {"b": "2"}})),
        )
        .await?;
    let data = second.data.unwrap_or_default();
    assert_eq!(
        (
            data.get("a").map(String::as_str),
            data.get("b").map(String::as_str)
        ),
        (Some("1"), Some("2"))
    );
    // Strategic merge patch, as kubectl sends it, is accepted too.
    let third = maps
        .patch(
            "config",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"a": null}})),
        )
        .await?;
    assert!(!third.data.unwrap_or_default().contains_key("a"));
    Ok(())
}

/// Sends one raw HTTP/1.1 request and returns the whole response.
async fn raw(server: &ApiServer, request: &str) -> Result<String> {
    let mut conn = tokio::net::TcpStream::connect(server.addr()).await?;
    conn.write_all(request.as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(STEP, conn.read_to_string(&mut out)).await??;
    Ok(out)
}

#[tokio::test]
async fn bad_requests_get_status_errors_and_the_server_survives() -> Result<()> {
    let (server, client, _dir) = lab().await?;
    let garbage = "POST /api/v1/namespaces/default/services HTTP/1.1\r\nHost: lab\r\nContent-Type: application/json\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{{{[\x01";
    let reply = raw(&server, garbage).await?;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(
        reply.contains("\"kind\":\"Status\"") && reply.contains("\"reason\":\"BadRequest\""),
        "{reply}"
    );
    let bad_patch = "PATCH /api/v1/namespaces/default/services/x HTTP/1.1\r\nHost: lab\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let reply = raw(&server, bad_patch).await?;
    assert!(
        reply.starts_with("HTTP/1.1 415") || reply.starts_with("HTTP/1.1 404"),
        "{reply}"
    );
    let wrong_method = "PUT /api/v1/namespaces/default/services HTTP/1.1\r\nHost: lab\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let reply = raw(&server, wrong_method).await?;
    assert!(
        reply.starts_with("HTTP/1.1 405") && reply.contains("MethodNotAllowed"),
        "{reply}"
    );
    let unknown = "GET /apis/nope.io/v1/things HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n";
    assert!(raw(&server, unknown).await?.starts_with("HTTP/1.1 404"));
    // Still serving.
    let services: Api<Service> = Api::namespaced(client, "default");
    services
        .create(&PostParams::default(), &service("alive")?)
        .await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_open_watches() -> Result<()> {
    let (server, client, _dir) = lab().await?;
    let services: Api<Service> = Api::namespaced(client, "default");
    let mut stream = services
        .watch(&WatchParams::default().timeout(290), "0")
        .await?
        .boxed();
    tokio::time::timeout(STEP, server.shutdown()).await??;
    // The stream ends (or errors) instead of hanging.
    let next = tokio::time::timeout(STEP, stream.next()).await?;
    assert!(!matches!(next, Some(Ok(WatchEvent::Added(_)))), "{next:?}");
    Ok(())
}
