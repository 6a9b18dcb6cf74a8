//! The real `kubectl` (v1.32, /usr/bin/kubectl) against the lab API server, over loopback: CRD and manifest
//! apply, `get -o wide` columns, EXTERNAL-IP after a status patch, `describe` with Events, `annotate`,
//! `patch --type=merge`, `get -w`, `delete`, and errors.
//!
//! Every kubectl run is a child process bounded by a timeout and killed on drop. No `--validate=false` is needed:
//! the server's skeletal OpenAPI v3 lets kubectl validate server-side.

use anyhow::{Context, Result, bail, ensure};
use ironlb::lab::api::{ApiServer, write_kubeconfig};
use k8s_openapi::api::core::v1::{Event, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const KUBECTL: &str = "/usr/bin/kubectl";
const RUN_LIMIT: Duration = Duration::from_secs(30);

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: ipaddresspools.metallb.io
spec:
  group: metallb.io
  names:
    kind: IPAddressPool
    listKind: IPAddressPoolList
    plural: ipaddresspools
    singular: ipaddresspool
  scope: Namespaced
  versions:
  - name: v1beta1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    subresources:
      status: {}
"#;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  labels:
    app: web
spec:
  type: LoadBalancer
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
---
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: docs
  namespace: metallb-system
spec:
  addresses:
  - 192.0.2.0/24
"#;

struct Lab {
    server: ApiServer,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

#[derive(Debug)]
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Lab {
    async fn start() -> Result<Self> {
        let server = ApiServer::start("127.0.0.1:0".parse()?).await?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        write_kubeconfig(&kubeconfig, &server.url())?;
        Ok(Lab {
            server,
            dir,
            kubeconfig,
        })
    }

    async fn client(&self) -> Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env("HOME", self.dir.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs kubectl to completion within [`RUN_LIMIT`].
    async fn run(&self, args: &[&str]) -> Result<Output> {
        let child = self.command(args).output();
        let out = tokio::time::timeout(RUN_LIMIT, child)
            .await
            .with_context(|| format!("kubectl {args:?} timed out"))??;
        Ok(Output {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs kubectl and requires success.
    async fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args).await?;
        ensure!(
            out.code == Some(0),
            "kubectl {args:?} exited {:?}\nstdout: {}\nstderr: {}",
            out.code,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    async fn apply(&self, manifest: &str, file: &str) -> Result<String> {
        let path = self.dir.path().join(file);
        std::fs::write(&path, manifest)?;
        let path = path.to_str().context("temp path is not UTF-8")?.to_owned();
        self.ok(&["apply", "-f", &path]).await
    }
}

/// Splits `kubectl get` output into the header and rows, each as whitespace-separated cells.
fn table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let split = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let header = lines.next().map(split).unwrap_or_default();
    (header, lines.map(split).collect())
}

fn cell(text: &str, row: usize, column: &str) -> Result<String> {
    let (header, rows) = table(text);
    let i = header
        .iter()
        .position(|h| h == column)
        .with_context(|| format!("no column {column} in {header:?}"))?;
    rows.get(row)
        .and_then(|r| r.get(i))
        .cloned()
        .with_context(|| format!("no row {row} in {text}"))
}

#[tokio::test]
async fn kubectl_drives_the_lab_api() -> Result<()> {
    let lab = Lab::start().await?;
    let client = lab.client().await?;

    // Discovery and short names.
    let namespaces = lab.ok(&["get", "ns"]).await?;
    for ns in ["default", "kube-system", "metallb-system", "ironlb-system"] {
        ensure!(namespaces.contains(ns), "{ns} missing:\n{namespaces}");
    }
    let resources = lab.ok(&["api-resources"]).await?;
    ensure!(
        resources.contains("ipaddresspools") && resources.contains("svc"),
        "{resources}"
    );

    // A CRD manifest, then a Service and a metallb.io pool.
    let out = lab.apply(CRD, "crd.yaml").await?;
    ensure!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/ipaddresspools.metallb.io created"
        ),
        "{out}"
    );
    ensure!(
        lab.ok(&["get", "crd"])
            .await?
            .contains("ipaddresspools.metallb.io")
    );
    let out = lab.apply(MANIFEST, "manifest.yaml").await?;
    ensure!(out.contains("service/web created"), "{out}");
    ensure!(
        out.contains("ipaddresspool.metallb.io/docs created"),
        "{out}"
    );
    let out = lab.apply(MANIFEST, "manifest.yaml").await?;
    ensure!(out.contains("service/web unchanged"), "{out}");
    let pools = lab
        .ok(&["get", "ipaddresspools", "-n", "metallb-system"])
        .await?;
    ensure!(cell(&pools, 0, "NAME")? == "docs", "{pools}");

    // `get -o wide` prints the API server's Service columns.
    let wide = lab.ok(&["get", "svc", "-o", "wide"]).await?;
    let (header, _) = table(&wide);
    ensure!(
        header
            == [
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
                "SELECTOR"
            ],
        "{wide}"
    );
    ensure!(cell(&wide, 0, "TYPE")? == "LoadBalancer", "{wide}");
    ensure!(cell(&wide, 0, "EXTERNAL-IP")? == "<pending>", "{wide}");
    // A ClusterIP from the lab's service range and a NodePort, as kube-apiserver gives a LoadBalancer Service.
    ensure!(cell(&wide, 0, "CLUSTER-IP")? == "198.51.100.1", "{wide}");
    ensure!(cell(&wide, 0, "PORT(S)")? == "80:30000/TCP", "{wide}");
    ensure!(cell(&wide, 0, "SELECTOR")? == "app=web", "{wide}");

    // kubectl's typed commands send protobuf; the lab decodes it for the built-in kinds they make.
    let out = lab
        .ok(&[
            "create",
            "service",
            "loadbalancer",
            "typed",
            "--tcp=80:8080",
        ])
        .await?;
    ensure!(out.contains("service/typed created"), "{out}");
    let typed = lab.ok(&["get", "svc", "typed", "-o", "wide"]).await?;
    ensure!(cell(&typed, 0, "CLUSTER-IP")? == "198.51.100.2", "{typed}");
    ensure!(cell(&typed, 0, "PORT(S)")? == "80:30001/TCP", "{typed}");
    ensure!(cell(&typed, 0, "SELECTOR")? == "app=typed", "{typed}");
    for args in [
        &["create", "namespace", "typed-ns"][..],
        &["create", "configmap", "typed-cm", "--from-literal=k=v"],
        &[
            "create",
            "secret",
            "generic",
            "typed-secret",
            "--from-literal=password=p",
        ],
    ] {
        let out = lab.ok(args).await?;
        ensure!(out.contains("created"), "{args:?}: {out}");
    }
    let secret = lab
        .ok(&[
            "get",
            "secret",
            "typed-secret",
            "-o",
            "jsonpath={.data.password}",
        ])
        .await?;
    ensure!(
        secret.trim() == "cA==",
        "the secret's bytes in base64: {secret}"
    );
    // A requested NodePort that is taken is refused as kube-apiserver refuses it, and takes nothing.
    let taken = lab
        .run(&[
            "create",
            "service",
            "nodeport",
            "clash",
            "--tcp=80",
            "--node-port=30000",
        ])
        .await?;
    ensure!(
        taken.code != Some(0) && taken.stderr.contains("provided port is already allocated"),
        "{taken:?}"
    );
    lab.ok(&["delete", "svc", "typed"]).await?;

    // What the allocator will do: set the ingress IP through the status subresource.
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = services
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}})),
        )
        .await?;
    let wide = lab.ok(&["get", "svc", "web", "-o", "wide"]).await?;
    ensure!(cell(&wide, 0, "EXTERNAL-IP")? == "192.0.2.10", "{wide}");

    // An Event about the Service shows in `describe`.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event: Event = serde_json::from_value(json!({
        "metadata": {"generateName": "web."},
        "involvedObject": {
            "apiVersion": "v1", "kind": "Service", "name": "web", "namespace": "default",
            "uid": svc.metadata.uid.clone().unwrap_or_default(),
        },
        "reason": "IPAllocated",
        "message": "Assigned IP [\"192.0.2.10\"]",
        "type": "Normal",
        "source": {"component": "ironlb"},
        "count": 1,
    }))?;
    events.create(&PostParams::default(), &event).await?;
    let describe = lab.ok(&["describe", "svc", "web"]).await?;
    ensure!(
        describe.contains("LoadBalancer Ingress:     192.0.2.10 (VIP)"),
        "{describe}"
    );
    let after_events = describe
        .split("Events:")
        .nth(1)
        .context(format!("no Events in\n{describe}"))?;
    ensure!(
        after_events.contains("IPAllocated")
            && after_events.contains("Assigned IP [\"192.0.2.10\"]"),
        "{describe}"
    );
    let ev = lab.ok(&["get", "ev"]).await?;
    // "LAST SEEN" holds a space, so check the row as a whole.
    ensure!(ev.starts_with("LAST SEEN   TYPE     REASON"), "{ev}");
    ensure!(
        ev.lines()
            .nth(1)
            .is_some_and(|r| r.contains("IPAllocated") && r.contains("service/web")),
        "{ev}"
    );

    // annotate and patch --type=merge.
    let out = lab
        .ok(&["annotate", "svc", "web", "ironlb.io/pool=docs"])
        .await?;
    ensure!(out.contains("service/web annotated"), "{out}");
    let pool = lab
        .ok(&[
            "get",
            "svc",
            "web",
            "-o",
            r"jsonpath={.metadata.annotations.ironlb\.io/pool}",
        ])
        .await?;
    ensure!(pool == "docs", "{pool}");
    let out = lab
        .ok(&[
            "patch",
            "svc",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"externalIPs":["203.0.113.5"]}}"#,
        ])
        .await?;
    ensure!(out.contains("service/web patched"), "{out}");
    let wide = lab.ok(&["get", "svc", "web", "-o", "wide"]).await?;
    ensure!(
        cell(&wide, 0, "EXTERNAL-IP")? == "192.0.2.10,203.0.113.5",
        "{wide}"
    );

    // A changed manifest is a strategic merge patch that keeps what kubectl does not own, including status.
    let changed = MANIFEST.replace("targetPort: 8080", "targetPort: 9090");
    let out = lab.apply(&changed, "manifest.yaml").await?;
    ensure!(out.contains("service/web configured"), "{out}");
    let ports = lab
        .ok(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.ports[0].targetPort} {.spec.ports[0].name} {.metadata.generation}",
        ])
        .await?;
    ensure!(ports == "9090 http 3", "{ports}");
    let wide = lab.ok(&["get", "svc", "web", "-o", "wide"]).await?;
    ensure!(
        cell(&wide, 0, "EXTERNAL-IP")? == "192.0.2.10,203.0.113.5",
        "{wide}"
    );

    // `get -w` prints the current row, then a row per change.
    let mut watch = lab
        .command(&["get", "svc", "web", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = watch.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + RUN_LIMIT;
    while seen.len() < 3 {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .context(format!("kubectl get -w printed only {seen:?}"))??
            .context("kubectl get -w exited early")?;
        seen.push(line);
        if seen.len() == 2 {
            lab.ok(&["label", "svc", "web", "tier=front"]).await?;
        }
    }
    ensure!(seen[0].starts_with("NAME"), "{seen:?}");
    ensure!(
        seen[1].starts_with("web") && seen[2].starts_with("web"),
        "{seen:?}"
    );
    watch.kill().await?;

    // Errors: a missing object, a duplicate create.
    let missing = lab.run(&["get", "svc", "nope"]).await?;
    ensure!(missing.code != Some(0), "get of a missing object succeeded");
    ensure!(
        missing.stderr.contains("(NotFound)")
            && missing.stderr.contains(r#"services "nope" not found"#),
        "{}",
        missing.stderr
    );
    let path = lab.dir.path().join("manifest.yaml");
    let dup = lab
        .run(&["create", "-f", path.to_str().context("path")?])
        .await?;
    ensure!(
        dup.code != Some(0) && dup.stderr.contains("(AlreadyExists)"),
        "{}",
        dup.stderr
    );

    // delete, then the object is gone.
    let out = lab.ok(&["delete", "svc", "web"]).await?;
    ensure!(out.contains(r#"service "web" deleted"#), "{out}");
    let gone = lab.run(&["get", "svc", "web"]).await?;
    ensure!(
        gone.code != Some(0) && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    let out = lab
        .ok(&["delete", "ipaddresspool", "docs", "-n", "metallb-system"])
        .await?;
    ensure!(out.contains("deleted"), "{out}");
    if lab.ok(&["get", "svc"]).await?.contains("web") {
        bail!("web still listed after delete");
    }
    lab.server.shutdown().await?;
    Ok(())
}
