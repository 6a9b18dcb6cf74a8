//! `ironlb status --watch` against the lab API server: the real binary as a child process, the changes made by a
//! kube client the way agents make them (status and annotation patches). Every wait is bounded, and the child is
//! killed on drop.

use std::process::Stdio;
use std::time::Duration;

use ironlb::lab::api::{ApiServer, write_kubeconfig};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const LINE_LIMIT: Duration = Duration::from_secs(10);

async fn client(kubeconfig: &std::path::Path) -> kube::Client {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
    }))
    .unwrap()
}

/// The next line the watch prints, or a panic naming what was expected.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>, waiting_for: &str) -> String {
    match tokio::time::timeout(LINE_LIMIT, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        other => panic!(
            "no line from `ironlb status --watch` within {LINE_LIMIT:?} while waiting for {waiting_for}: {other:?}"
        ),
    }
}

/// Reads lines until one contains every part of `want` (the report's table comes first), returning it.
async fn line_with(lines: &mut Lines<BufReader<ChildStdout>>, want: &[&str]) -> String {
    let mut seen = Vec::new();
    for _ in 0..20 {
        let line = next_line(lines, &format!("{want:?}; seen {seen:?}")).await;
        if want.iter().all(|w| line.contains(w)) {
            return line;
        }
        seen.push(line);
    }
    panic!("no line with {want:?} in {seen:?}");
}

#[tokio::test]
async fn watch_prints_the_report_then_each_change_with_its_cause() {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server.url()).unwrap();
    let client = client(&kubeconfig).await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client);
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "node-1"}})).unwrap(),
        )
        .await
        .unwrap();
    services
        .create(&PostParams::default(), &service("steady"))
        .await
        .unwrap();
    let ingress = |ip: &str| json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
    services
        .patch_status(
            "steady",
            &PatchParams::default(),
            &Patch::Merge(&ingress("192.0.2.10")),
        )
        .await
        .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ironlb"))
        .args(["status", "--watch", "--kubeconfig"])
        .arg(&kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The report first: the table, then the load line.
    assert!(
        next_line(&mut lines, "the table's header")
            .await
            .starts_with("SERVICE")
    );
    line_with(
        &mut lines,
        &["default/steady", "192.0.2.10", "(not announced)"],
    )
    .await;
    line_with(&mut lines, &["Layer 2 VIPs per node: node-1 0"]).await;

    // A new Service gets its IP and an owner.
    services
        .create(&PostParams::default(), &service("web"))
        .await
        .unwrap();
    services
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&ingress("192.0.2.11")),
        )
        .await
        .unwrap();
    line_with(&mut lines, &["added", "default/web", "192.0.2.11"]).await;
    let owner = |node: &str, cause: &str| json!({"metadata": {"annotations": {"ironlb.io/announced-by": node, "ironlb.io/announced-cause": cause}}});
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&owner("node-1", "new")),
        )
        .await
        .unwrap();
    let first = line_with(
        &mut lines,
        &["moved", "default/web", "(not announced) -> node-1", "(new)"],
    )
    .await;
    // Each change line starts with the time it was seen.
    assert!(
        first.split_whitespace().next().unwrap().ends_with('Z'),
        "{first}"
    );

    // The owner dies; another node takes over and says why.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(&owner("node-2", "owner-gone")),
        )
        .await
        .unwrap();
    line_with(
        &mut lines,
        &["moved", "default/web", "node-1 -> node-2", "(owner-gone)"],
    )
    .await;

    // A BGP session comes up on a node.
    let peers = |v: &str| json!({"metadata": {"annotations": {"ironlb.io/bgp-peers": v}}});
    nodes
        .patch(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(&peers("192.0.2.1=Active")),
        )
        .await
        .unwrap();
    line_with(
        &mut lines,
        &["bgp", "node-1", "192.0.2.1", "(none) -> Active"],
    )
    .await;
    nodes
        .patch(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(&peers("192.0.2.1=Established")),
        )
        .await
        .unwrap();
    line_with(
        &mut lines,
        &["bgp", "node-1", "192.0.2.1", "Active -> Established"],
    )
    .await;

    // The Service goes away.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    line_with(&mut lines, &["removed", "default/web", "192.0.2.11"]).await;

    // Nothing else changed, so nothing else was printed about the steady Service.
    child.start_kill().unwrap();
    let rest = tokio::time::timeout(LINE_LIMIT, async {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(line);
        }
        rest
    })
    .await
    .expect("the watch ends once killed");
    assert!(rest.iter().all(|l| !l.contains("steady")), "{rest:?}");
    let _ = tokio::time::timeout(LINE_LIMIT, child.wait()).await;
}
