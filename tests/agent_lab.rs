//! netns tier, multi-agent lab: real `ironlb agent` processes (node-1..N) against the lab API server, driven with
//! the real `kubectl` and a kube-rs client, on loopback only.
//!
//! Each test has its own API server, temp dir and agents; agents are killed when the test ends, and their logs are
//! printed when it fails. Times are printed as figures, never asserted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::{Lab, holds_for, ingress_of, svc, wait_for};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// After allocation settled, no Service is written for `window`: the allocator is idempotent.
async fn assert_steady(lab: &Lab, window: Duration) -> Result<()> {
    let before = lab.service_versions().await?;
    tokio::time::sleep(window).await;
    let after = lab.service_versions().await?;
    ensure!(
        before == after,
        "Services were written in steady state:\nbefore {before:#?}\nafter {after:#?}"
    );
    Ok(())
}

fn in_pool_public(ip: &str) -> bool {
    let ip: std::net::IpAddr = ip.parse().expect("an IP");
    let v4: ipnet::IpNet = "192.0.2.0/25".parse().unwrap();
    let v6: ipnet::IpNet = "2001:db8:0:1::/64".parse().unwrap();
    v4.contains(&ip) || v6.contains(&ip)
}

/// (a) kubectl creates a Service; it gets an IP from the pool, an IPAllocated Event that `kubectl describe` shows,
/// and the pool annotations. Then nothing is written any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_gets_an_ip_and_an_event() -> Result<()> {
    let lab = Lab::with_agents(2, &[]).await?;
    lab.wait_for_leader(SETTLE).await?;
    lab.apply_yaml(
        "web",
        r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#,
    )
    .await?;
    let ips = lab.wait_for_ip("default", "web", SETTLE).await?;
    assert_eq!(
        ips,
        vec!["192.0.2.1".to_string()],
        "the lowest usable IP of pool public"
    );
    let event = lab
        .wait_for_event("default", "web", "IPAllocated", SETTLE)
        .await?;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert!(
        event.message.as_deref().unwrap_or("").contains("192.0.2.1"),
        "{event:?}"
    );
    let svc = lab.services("default").get("web").await?;
    let annotations = svc.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get("ironlb.io/pool").map(String::as_str),
        Some("public")
    );
    assert_eq!(
        annotations
            .get("metallb.io/ip-allocated-from-pool")
            .map(String::as_str),
        Some("public")
    );
    let wide = lab
        .kubectl_ok(&["get", "svc", "web", "-o", "wide", "--no-headers"])
        .await?;
    assert!(wide.contains("192.0.2.1"), "EXTERNAL-IP column: {wide}");
    let described = lab.kubectl_ok(&["describe", "svc", "web"]).await?;
    assert!(
        described.contains("IPAllocated"),
        "kubectl describe shows the Event:\n{described}"
    );
    assert_steady(&lab, Duration::from_secs(3)).await?;
    // Exactly one Event: a repeated pass must not repeat it.
    let allocated = lab
        .events_for("default", "web")
        .await?
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("IPAllocated"))
        .count();
    assert_eq!(allocated, 1, "one IPAllocated Event");
    lab.passed();
    Ok(())
}

/// (b) SIGKILL of the allocator: another agent takes the Lease when it expires and allocates. SIGTERM: the Lease is
/// released, so the next agent takes it at its next look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocator_fails_over() -> Result<()> {
    let mut lab = Lab::with_agents(3, &["--lease-duration", "2"]).await?;
    let first = lab.wait_for_leader(SETTLE).await?;
    lab.create_service(&svc("default", "before").build())
        .await?;
    let before = lab.wait_for_ip("default", "before", SETTLE).await?;

    // SIGKILL: the Lease stays held by a dead agent until it expires.
    let killed_at = Instant::now();
    lab.agent(&first).kill();
    lab.create_service(&svc("default", "after-kill").build())
        .await?;
    let second = lab.wait_for_leader(SETTLE).await?;
    let lease_takeover = killed_at.elapsed();
    assert_ne!(second, first, "a killed agent cannot hold the Lease");
    let after_kill = lab.wait_for_ip("default", "after-kill", SETTLE).await?;
    let ip_takeover = killed_at.elapsed();
    println!(
        "SIGKILL of {first} (lease 2 s): new holder {second} after {}, new Service's IP after {}",
        secs(lease_takeover),
        secs(ip_takeover)
    );
    assert_ne!(after_kill, before, "a new Service gets a new IP");
    assert_eq!(lab.ingress("default", "before").await?, before);

    // SIGTERM: the agent releases the Lease before it exits.
    let termed_at = Instant::now();
    let exit = lab.agent(&second).terminate(Duration::from_secs(10))?;
    let exited = termed_at.elapsed();
    assert!(exit.success(), "agent exits cleanly on SIGTERM: {exit}");
    let holder = lab.lease_holder().await?;
    assert_ne!(
        holder.as_deref(),
        Some(second.as_str()),
        "the Lease was released, not left to expire"
    );
    let log = std::fs::read_to_string(&lab.agent(&second).log)?;
    assert!(
        log.contains("released the allocator lease"),
        "the agent says it released the Lease"
    );
    lab.create_service(&svc("default", "after-term").build())
        .await?;
    let third = lab.wait_for_leader(SETTLE).await?;
    let lease_takeover = termed_at.elapsed();
    assert_ne!(third, second);
    let after_term = lab.wait_for_ip("default", "after-term", SETTLE).await?;
    let ip_takeover = termed_at.elapsed();
    println!(
        "SIGTERM of {second}: exited after {}, new holder {third} after {}, new Service's IP after {}",
        secs(exited),
        secs(lease_takeover),
        secs(ip_takeover)
    );
    let all: BTreeSet<_> = [&before, &after_kill, &after_term]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(all.len(), 3, "three Services, three IPs");

    // The killed agent comes back as a follower and changes nothing.
    lab.start_agent(&first)?;
    let versions = lab.service_versions().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(lab.lease_holder().await?.as_deref(), Some(third.as_str()));
    assert_eq!(lab.service_versions().await?, versions);
    lab.passed();
    Ok(())
}

/// (c) Restarting every agent moves no IP: status is the only record, and fresh agents adopt it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_all_agents_moves_no_ip() -> Result<()> {
    let mut lab = Lab::with_agents(2, &["--lease-duration", "2"]).await?;
    lab.wait_for_leader(SETTLE).await?;
    let mut names = Vec::new();
    for i in 0..9 {
        let name = format!("svc-{i}");
        lab.create_service(&svc("default", &name).build()).await?;
        names.push(name);
    }
    lab.create_service(&svc("default", "dual").dual_stack().build())
        .await?;
    names.push("dual".into());
    // Delete one in the middle, so the free set has a hole the restarted allocator must not fill by moving others.
    let mut before = BTreeMap::new();
    for name in &names {
        before.insert(
            name.clone(),
            lab.wait_for_ip("default", name, SETTLE).await?,
        );
    }
    let dual = &before["dual"];
    assert_eq!(
        dual.len(),
        2,
        "PreferDualStack gets one IP per family: {dual:?}"
    );
    assert!(dual.iter().any(|ip| ip.contains(':')), "{dual:?}");
    assert!(dual.iter().all(|ip| in_pool_public(ip)), "{dual:?}");
    lab.services("default")
        .delete("svc-3", &Default::default())
        .await?;
    before.remove("svc-3");

    lab.kill_all();
    lab.start_agents(2, &["--lease-duration", "2"])?;
    lab.create_service(&svc("default", "probe").build()).await?;
    let probe = lab.wait_for_ip("default", "probe", SETTLE).await?;
    let mut after = BTreeMap::new();
    for name in before.keys() {
        after.insert(name.clone(), lab.ingress("default", name).await?);
    }
    assert_eq!(before, after, "no assigned IP changed across a restart");
    let held: BTreeSet<&String> = before.values().flatten().collect();
    assert!(
        probe.iter().all(|ip| !held.contains(ip)),
        "the new Service {probe:?} got an IP nobody holds"
    );
    assert_steady(&lab, Duration::from_secs(3)).await?;
    lab.passed();
    Ok(())
}

/// (d) An overlapping pool is reported on that pool; existing Services keep their IPs and pool, and allocation goes
/// on. `pool` is the new pool's name: validation takes pools in name order, so both a name sorting after the
/// existing pool and one sorting before it are tried.
async fn overlapping_pool(pool: &str) -> Result<()> {
    let lab = Lab::with_agents(2, &[]).await?;
    lab.wait_for_leader(SETTLE).await?;
    lab.create_service(&svc("default", "one").build()).await?;
    // Outside the new pool's range, so a Service would lose it if `public` were dropped.
    lab.create_service(
        &svc("default", "high")
            .annotation("metallb.io/loadBalancerIPs", "192.0.2.100")
            .build(),
    )
    .await?;
    let one = lab.wait_for_ip("default", "one", SETTLE).await?;
    let high = lab.wait_for_ip("default", "high", SETTLE).await?;
    assert_eq!(high, vec!["192.0.2.100".to_string()]);
    // The older pool wins an overlap. creationTimestamp has one-second resolution, as in Kubernetes, so the new
    // pool is created in a later second than `public`, as it would be when someone adds it to a running cluster.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    lab.apply_yaml(
        "overlap",
        &format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: {pool}, namespace: metallb-system}}\nspec:\n  addresses: [192.0.2.0/28]\n"
        ),
    )
    .await?;
    let warning = wait_for(
        &format!("a Warning Event about the overlap on IPAddressPool {pool}"),
        SETTLE,
        POLL,
        || async {
            Ok(lab
                .events_for("metallb-system", pool)
                .await?
                .into_iter()
                .find(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.message.as_deref().unwrap_or("").contains("overlaps")
                }))
        },
    )
    .await?;
    println!(
        "overlap: {:?}: {:?}",
        warning.reason,
        warning.message.as_deref()
    );
    assert_eq!(
        warning.involved_object.kind.as_deref(),
        Some("IPAddressPool")
    );
    assert!(
        matches!(
            warning.reason.as_deref(),
            Some("InvalidConfiguration" | "ConfigurationWarning")
        ),
        "{warning:?}"
    );
    let on_public = lab.events_for("metallb-system", "public").await?;
    assert!(
        on_public.is_empty(),
        "the existing pool is not blamed: {on_public:?}"
    );
    lab.create_service(&svc("default", "three").build()).await?;
    let three = lab.wait_for_ip("default", "three", SETTLE).await?;
    assert!(three.iter().all(|ip| in_pool_public(ip)), "{three:?}");
    assert_eq!(lab.ingress("default", "one").await?, one);
    assert_eq!(lab.ingress("default", "high").await?, high);
    for name in ["one", "high", "three"] {
        let svc = lab.services("default").get(name).await?;
        assert_eq!(
            svc.metadata
                .annotations
                .unwrap_or_default()
                .get("ironlb.io/pool")
                .map(String::as_str),
            Some("public"),
            "{name} stays in pool public"
        );
    }
    assert_steady(&lab, Duration::from_secs(3)).await?;
    let overlaps = lab
        .events_for("metallb-system", pool)
        .await?
        .into_iter()
        .filter(|e| e.message.as_deref().unwrap_or("").contains("overlaps"))
        .count();
    assert_eq!(overlaps, 1, "the warning is said once, not on every pass");
    lab.passed();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_pool_named_after_the_existing_one_is_reported() -> Result<()> {
    overlapping_pool("zz-overlap").await
}

/// The older pool wins an overlap whatever the names: a new pool `a-overlap` must not knock out `public`, which is
/// in use, even though its name sorts first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlapping_pool_named_before_the_existing_one_is_reported() -> Result<()> {
    overlapping_pool("a-overlap").await
}

/// (e) An IP outside every pool: pending with an AllocationFailed Event that says why; assigned once a pool covers
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_outside_every_pool_waits_for_a_pool() -> Result<()> {
    let lab = Lab::with_agents(2, &[]).await?;
    lab.wait_for_leader(SETTLE).await?;
    lab.create_service(
        &svc("default", "pinned")
            .annotation("metallb.io/loadBalancerIPs", "203.0.113.50")
            .build(),
    )
    .await?;
    let failed = lab
        .wait_for_event("default", "pinned", "AllocationFailed", SETTLE)
        .await?;
    let message = failed.message.clone().unwrap_or_default();
    println!("AllocationFailed: {message}");
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert!(message.contains("203.0.113.50"), "{message}");
    assert!(
        message.to_ascii_lowercase().contains("pool"),
        "the reason names the missing pool: {message}"
    );
    assert!(lab.ingress("default", "pinned").await?.is_empty());
    lab.apply_yaml(
        "docs",
        r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata:
  name: docs
  namespace: metallb-system
spec:
  addresses:
  - 203.0.113.48/28
"#,
    )
    .await?;
    let ips = lab.wait_for_ip("default", "pinned", SETTLE).await?;
    assert_eq!(ips, vec!["203.0.113.50".to_string()]);
    let svc = lab.services("default").get("pinned").await?;
    assert_eq!(
        svc.metadata
            .annotations
            .unwrap_or_default()
            .get("ironlb.io/pool")
            .map(String::as_str),
        Some("docs")
    );
    lab.wait_for_event("default", "pinned", "IPAllocated", SETTLE)
        .await?;
    lab.passed();
    Ok(())
}

/// (f) With `--lb-class`, only Services of that class are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_load_balancer_class_is_served() -> Result<()> {
    let lab = Lab::with_agents(2, &["--lb-class", "example.com/ironlb"]).await?;
    lab.wait_for_leader(SETTLE).await?;
    lab.create_service(&svc("default", "other").class("example.com/other").build())
        .await?;
    lab.create_service(&svc("default", "classless").build())
        .await?;
    lab.create_service(&svc("default", "ours").class("example.com/ironlb").build())
        .await?;
    let ours = lab.wait_for_ip("default", "ours", SETTLE).await?;
    assert!(ours.iter().all(|ip| in_pool_public(ip)), "{ours:?}");
    holds_for(
        "Services of other classes staying without IP",
        Duration::from_secs(3),
        Duration::from_millis(200),
        || async {
            Ok(lab.ingress("default", "other").await?.is_empty()
                && lab.ingress("default", "classless").await?.is_empty())
        },
    )
    .await?;
    for name in ["other", "classless"] {
        let events = lab.events_for("default", name).await?;
        assert!(events.is_empty(), "no Events about {name}: {events:?}");
        let svc = lab.services("default").get(name).await?;
        assert!(
            !svc.metadata
                .annotations
                .unwrap_or_default()
                .contains_key("ironlb.io/pool"),
            "{name} is not annotated"
        );
    }
    lab.passed();
    Ok(())
}

/// (g) IPs in a MetalLB-era status are adopted as they are, whatever annotation says where they came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallb_era_ips_are_adopted() -> Result<()> {
    let mut lab = Lab::start().await?;
    let adopted = [
        (
            "legacy",
            "metallb.universe.tf/ip-allocated-from-pool",
            "192.0.2.1",
        ),
        ("current", "metallb.io/ip-allocated-from-pool", "192.0.2.2"),
        ("high", "", "192.0.2.77"),
    ];
    for (name, annotation, ip) in adopted {
        let mut s = svc("default", name);
        if !annotation.is_empty() {
            s = s.annotation(annotation, "public");
        }
        lab.create_service(&s.build()).await?;
        lab.services("default")
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})),
            )
            .await?;
    }
    lab.apply_file(&common::repo_path("examples/metallb-config.yaml"))
        .await?;
    lab.start_agents(2, &[])?;
    lab.wait_for_leader(SETTLE).await?;
    for (name, _, _) in adopted {
        wait_for(
            &format!("{name} to be annotated with its pool"),
            SETTLE,
            POLL,
            || async {
                let svc = lab.services("default").get(name).await?;
                Ok(svc
                    .metadata
                    .annotations
                    .unwrap_or_default()
                    .get("ironlb.io/pool")
                    .filter(|p| *p == "public")
                    .map(|_| ()))
            },
        )
        .await?;
    }
    lab.create_service(&svc("default", "fresh").build()).await?;
    let fresh = lab.wait_for_ip("default", "fresh", SETTLE).await?;
    for (name, _, ip) in adopted {
        assert_eq!(
            lab.ingress("default", name).await?,
            vec![ip.to_string()],
            "{name} keeps its MetalLB IP"
        );
    }
    assert_eq!(fresh.len(), 1);
    assert!(
        adopted.iter().all(|(_, _, ip)| *ip != fresh[0]),
        "{fresh:?} is not one of the adopted IPs"
    );
    assert!(in_pool_public(&fresh[0]));
    assert_steady(&lab, Duration::from_secs(3)).await?;
    lab.passed();
    Ok(())
}

/// One request as RBAC sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Attributes {
    verb: String,
    group: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
}

/// Maps a request to RBAC attributes the way the API server's RequestInfoFactory does, or to a non-resource URL.
fn attributes(method: &str, path: &str, query: &str) -> Result<Attributes, String> {
    let query: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => return Err(path.to_string()),
    };
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let (namespace, resource, name, sub) = match rest {
        ["namespaces", ns, resource, tail @ ..] => (
            *ns,
            *resource,
            tail.first().copied().unwrap_or(""),
            tail.get(1).copied().unwrap_or(""),
        ),
        ["namespaces", ns] => ("", "namespaces", *ns, ""),
        [resource, tail @ ..] => (
            "",
            *resource,
            tail.first().copied().unwrap_or(""),
            tail.get(1).copied().unwrap_or(""),
        ),
        [] => return Err(path.to_string()),
    };
    let watch = watch_path || matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    let verb = match (method, name.is_empty()) {
        ("GET", _) if watch => "watch",
        ("GET", false) => "get",
        ("GET", true) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", false) => "delete",
        ("DELETE", true) => "deletecollection",
        _ => return Err(format!("{method} {path}")),
    };
    // A list or watch narrowed to one name by `fieldSelector=metadata.name=X` is authorized as that name.
    let mut name = name.to_string();
    if name.is_empty()
        && (verb == "list" || verb == "watch")
        && let Some(selected) = query
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .filter(|n| !n.contains(','))
    {
        name = selected.to_string();
    }
    Ok(Attributes {
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        subresource: sub.into(),
        namespace: namespace.into(),
        name,
    })
}

/// A PolicyRule, with the namespace it applies in (None: every namespace, from a ClusterRoleBinding).
#[derive(Debug)]
struct Grant {
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
}

impl Grant {
    fn allows(&self, a: &Attributes) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        self.namespace.as_deref().is_none_or(|ns| ns == a.namespace)
            && any(&self.groups, &a.group)
            && any(&self.resources, &resource)
            && any(&self.verbs, &a.verb)
            && (self.names.is_empty() || (!a.name.is_empty() && self.names.contains(&a.name)))
    }
}

/// The rules bound to ServiceAccount ironlb-system/ironlb-agent in deploy/agent.yaml.
fn agent_grants() -> Result<Vec<Grant>> {
    let text = std::fs::read_to_string(common::repo_path("deploy/agent.yaml"))?;
    let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).map_err(anyhow::Error::from))
        .collect::<Result<_>>()?;
    let kind = |d: &Value| d["kind"].as_str().unwrap_or("").to_string();
    let is_agent = |s: &Value| {
        s["kind"] == "ServiceAccount"
            && s["name"] == "ironlb-agent"
            && s["namespace"] == "ironlb-system"
    };
    let mut grants = Vec::new();
    for binding in docs
        .iter()
        .filter(|d| matches!(kind(d).as_str(), "RoleBinding" | "ClusterRoleBinding"))
    {
        if !binding["subjects"]
            .as_array()
            .is_some_and(|s| s.iter().any(is_agent))
        {
            continue;
        }
        let binding_ns = binding["metadata"]["namespace"]
            .as_str()
            .map(str::to_string);
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or("");
        let role_name = &binding["roleRef"]["name"];
        let role = docs
            .iter()
            .find(|d| {
                kind(d) == role_kind
                    && d["metadata"]["name"] == *role_name
                    && (role_kind == "ClusterRole"
                        || d["metadata"]["namespace"].as_str() == binding_ns.as_deref())
            })
            .with_context(|| {
                format!("binding {binding} names a role that is not in the manifest")
            })?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            grants.push(Grant {
                // A ClusterRole bound by a RoleBinding applies in the binding's namespace only.
                namespace: if kind(binding) == "ClusterRoleBinding" {
                    None
                } else {
                    binding_ns.clone()
                },
                groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                verbs: strings(&rule["verbs"]),
                names: strings(&rule["resourceNames"]),
            });
        }
    }
    ensure!(
        grants.len() >= 5,
        "too few rules bound to the agent: {grants:?}"
    );
    Ok(grants)
}

#[test]
fn the_rbac_check_itself_rejects_what_it_should() -> Result<()> {
    let grants = agent_grants()?;
    let allowed = |m: &str, p: &str, q: &str| {
        let a = attributes(m, p, q).unwrap();
        grants.iter().any(|g| g.allows(&a))
    };
    assert!(allowed(
        "PATCH",
        "/api/v1/namespaces/shop/services/web/status",
        ""
    ));
    assert!(!allowed(
        "PUT",
        "/api/v1/namespaces/shop/services/web/status",
        ""
    ));
    assert!(!allowed(
        "DELETE",
        "/api/v1/namespaces/shop/services/web",
        ""
    ));
    assert!(allowed(
        "GET",
        "/api/v1/namespaces/metallb-system/configmaps",
        "fieldSelector=metadata.name%3Dconfig&watch=true"
    ));
    assert!(!allowed(
        "GET",
        "/api/v1/namespaces/metallb-system/configmaps",
        "watch=true"
    ));
    assert!(!allowed(
        "GET",
        "/api/v1/namespaces/shop/configmaps/config",
        ""
    ));
    assert!(allowed(
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/ironlb-system/leases/ironlb-allocator",
        ""
    ));
    // The per-node Leases: any Lease of the agent's namespace, but no other namespace's.
    assert!(allowed(
        "DELETE",
        "/apis/coordination.k8s.io/v1/namespaces/ironlb-system/leases/ironlb-node-a",
        ""
    ));
    assert!(allowed(
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/ironlb-system/leases",
        "labelSelector=ironlb.io%2Fnode-lease%3Dtrue&watch=true"
    ));
    assert!(!allowed(
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/ironlb-node-a",
        ""
    ));
    assert!(!allowed(
        "DELETE",
        "/apis/coordination.k8s.io/v1/namespaces/ironlb-system/leases",
        ""
    ));
    assert!(!allowed(
        "GET",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/ironlb-allocator",
        ""
    ));
    assert!(!allowed("GET", "/api/v1/secrets", ""));
    Ok(())
}

/// Every request the agents make while allocating, failing over and reporting is allowed by deploy/agent.yaml.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_stay_within_their_rbac() -> Result<()> {
    let grants = agent_grants()?;
    let mut lab = Lab::with_agents(2, &["--lease-duration", "2"]).await?;
    let first = lab.wait_for_leader(SETTLE).await?;
    // (a)
    lab.create_service(&svc("default", "web").build()).await?;
    lab.wait_for_event("default", "web", "IPAllocated", SETTLE)
        .await?;
    // (e) in another namespace: Events go there.
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(lab.client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}}))?,
        )
        .await?;
    lab.create_service(
        &svc("shop", "pinned")
            .annotation("metallb.io/loadBalancerIPs", "203.0.113.50")
            .build(),
    )
    .await?;
    lab.wait_for_event("shop", "pinned", "AllocationFailed", SETTLE)
        .await?;
    // (d)
    lab.apply_yaml(
        "overlap",
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {name: overlap, namespace: metallb-system}\nspec:\n  addresses: [192.0.2.0/28]\n",
    )
    .await?;
    wait_for(
        "a Warning on the overlapping pool",
        SETTLE,
        POLL,
        || async {
            Ok((!lab
                .events_for("metallb-system", "overlap")
                .await?
                .is_empty())
            .then_some(()))
        },
    )
    .await?;
    // Leader changes: SIGKILL, then SIGTERM, with a Service allocated after each.
    lab.agent(&first).kill();
    lab.start_agent(&first)?;
    let second = lab.wait_for_leader(SETTLE).await?;
    lab.create_service(&svc("default", "after-kill").build())
        .await?;
    lab.wait_for_ip("default", "after-kill", SETTLE).await?;
    lab.agent(&second).terminate(Duration::from_secs(10))?;
    lab.create_service(&svc("default", "after-term").build())
        .await?;
    lab.wait_for_ip("default", "after-term", SETTLE).await?;
    let pinned: Service = lab.services("shop").get("pinned").await?;
    assert!(ingress_of(&pinned).is_empty());

    let requests = lab.server.requests();
    let mut denied = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut agent_requests = 0;
    for r in &requests {
        let ua = r.user_agent.as_str();
        if ua == common::TEST_USER_AGENT || ua.starts_with("kubectl") {
            continue;
        }
        assert_eq!(
            ua,
            ironlb::agent::USER_AGENT,
            "a request from an unknown client: {r:?}"
        );
        agent_requests += 1;
        match attributes(&r.method, &r.path, &r.query) {
            Ok(a) => {
                if !grants.iter().any(|g| g.allows(&a)) {
                    denied.insert(format!("{a:?} <- {} {}?{}", r.method, r.path, r.query));
                }
                let resource = if a.subresource.is_empty() {
                    a.resource.clone()
                } else {
                    format!("{}/{}", a.resource, a.subresource)
                };
                seen.insert((a.verb.clone(), resource));
            }
            Err(url) => {
                denied.insert(format!("non-resource URL {url}"));
            }
        }
    }
    println!(
        "{agent_requests} agent requests of {} in all; (verb, resource) pairs: {seen:?}",
        requests.len()
    );
    assert!(denied.is_empty(), "requests RBAC would deny: {denied:#?}");
    for (verb, resource) in [
        ("watch", "services"),
        ("list", "services"),
        ("watch", "endpointslices"),
        ("watch", "nodes"),
        ("watch", "namespaces"),
        ("watch", "configmaps"),
        ("watch", "ipaddresspools"),
        ("watch", "bfdprofiles"),
        ("get", "leases"),
        ("create", "leases"),
        ("update", "leases"),
        ("list", "leases"),
        ("watch", "leases"),
        ("delete", "leases"),
        ("patch", "services"),
        ("patch", "services/status"),
        ("create", "events"),
    ] {
        assert!(
            seen.contains(&(verb.to_string(), resource.to_string())),
            "the window saw no {verb} {resource}: the check would prove little"
        );
    }
    assert!(
        seen.len() >= 25,
        "only {} distinct (verb, resource) pairs",
        seen.len()
    );
    lab.passed();
    Ok(())
}
