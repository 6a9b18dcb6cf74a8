//! Tier: the real kube-apiserver and etcd, built from their Go modules (scripts/build-control-plane) and run on
//! loopback by tests/real_api_support. Our CRDs must be accepted and become Established, a LoadBalancer Service must
//! round-trip through kubectl and kube-rs, and RBAC must be on, so that later tests running agents as their
//! ServiceAccount fail on a missing rule.
//!
//! Both tests share one control plane while they run at the same time, and each works in its own namespace.

mod real_api_support;

use anyhow::Result;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, ListParams};
use serde_json::Value;

fn namespace(test: &str) -> String {
    format!("ilb-{}-{test}", std::process::id())
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

#[test]
fn crds_become_established_and_a_load_balancer_service_round_trips() -> Result<()> {
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/crds/metallb.io.yaml");
    plane.kubectl_ok(&["apply", "--server-side", "-f", crds])?;
    plane.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "-f",
        crds,
    ])?;
    let listed: Value =
        serde_json::from_str(&plane.kubectl_ok(&["get", "-f", crds, "-o", "json"])?)?;
    let items = listed["items"].as_array().expect("a List of CRDs");
    assert_eq!(
        items.len(),
        ironlb::config::crd::crds()?.len(),
        "every CRD of {crds}"
    );
    for crd in items {
        let established = crd["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        assert!(
            established,
            "{} is not Established",
            crd["metadata"]["name"]
        );
    }
    // The API serves the kinds, not only the definitions.
    plane.kubectl_ok(&["get", "ipaddresspools.metallb.io", "-A"])?;

    let ns = namespace("svc");
    plane.kubectl_ok(&["create", "namespace", &ns])?;
    plane.kubectl_ok_with_input(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
spec:
  type: LoadBalancer
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 8080
"
        ),
    )?;
    let svc: Value = serde_json::from_str(
        &plane.kubectl_ok(&["get", "service", "web", "-n", &ns, "-o", "json"])?,
    )?;
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    let cluster_ip = svc["spec"]["clusterIP"].as_str().expect("a ClusterIP");
    assert!(
        cluster_ip.starts_with("198.51.100."),
        "{cluster_ip} is outside {}",
        real_api_support::SERVICE_CLUSTER_IP_RANGE
    );
    assert!(
        svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap_or(0) > 0,
        "a LoadBalancer Service gets a NodePort: {svc}"
    );

    // The same object through kube-rs, over the admin client certificate.
    block_on(async {
        let client = plane.client(plane.kubeconfig_path()).await?;
        let read = Api::<Service>::namespaced(client, &ns).get("web").await?;
        let spec = read.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.cluster_ip.as_deref(), Some(cluster_ip));
        anyhow::Ok(())
    })
}

#[test]
fn rbac_denies_a_service_account_what_it_was_not_granted() -> Result<()> {
    let Some(plane) = real_api_support::shared() else {
        return Ok(());
    };
    let ns = namespace("rbac");
    let sa = plane.service_account_kubeconfig(&ns, "agent")?;

    // The token authenticates as the ServiceAccount, not as anyone broader.
    let who = plane.kubectl_as(
        &sa,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    )?;
    assert!(who.status.success(), "auth whoami: {who:?}");
    assert_eq!(
        String::from_utf8_lossy(&who.stdout),
        format!("system:serviceaccount:{ns}:agent")
    );

    let can_i = |verb: &str, resource: &str| -> Result<String> {
        let out = plane.kubectl_as(&sa, &["auth", "can-i", verb, resource, "-n", &ns])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    assert_eq!(can_i("list", "services")?, "no");

    plane.kubectl_ok(&[
        "create",
        "role",
        "read-services",
        "-n",
        &ns,
        "--verb=get,list,watch",
        "--resource=services",
    ])?;
    plane.kubectl_ok(&[
        "create",
        "rolebinding",
        "agent-reads-services",
        "-n",
        &ns,
        "--role=read-services",
        &format!("--serviceaccount={ns}:agent"),
    ])?;
    assert_eq!(can_i("list", "services")?, "yes");
    assert_eq!(can_i("update", "services")?, "no");
    assert_eq!(can_i("list", "secrets")?, "no");

    // A request, not only a review, is refused: 403 from kube-rs over the token.
    block_on(async {
        let client = plane.client(&sa).await?;
        Api::<Service>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await?;
        match Api::<Secret>::namespaced(client, &ns)
            .list(&ListParams::default())
            .await
        {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
            other => panic!("listing Secrets as the ServiceAccount: {other:?}"),
        }
        anyhow::Ok(())
    })
}
