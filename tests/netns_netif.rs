//! netns tier of `netif`: real rtnetlink and real procfs, in network namespaces these tests create.
//!
//! The host kernel has no dummy links, so `kube-ipvs0` is an empty bridge here (TESTING.md); `tests/vm_netif.rs`
//! runs the same binding scenario on a real dummy link in the VM tier. Every check reads the kernel back through a
//! tool other than the code under test: `ip -j` for addresses and links, procfs for sysctls.

mod netif_support;

use std::collections::BTreeSet;

use ipnet::IpNet;
use ironlb::netif::bind::{self, Applied, EnsuredLink};
use ironlb::netif::links::list_interfaces;
use ironlb::netif::strict_arp::{self, FIX_COMMAND, Ipv4Conf, StrictArpMode};
use ironlb::netif::{AddressReconciler, AddressRequest, LinkKind};
use netif_support::{Netns, handle, ip, ips, is_root, nets};

#[test]
fn vip_binding_on_bridge_stand_in() {
    if !is_root() {
        return;
    }
    let guard = Netns::new();
    let ns = guard.at.clone();
    guard.enter(move || async move {
        let h = handle();

        let created = bind::ensure_link(&h, "kube-ipvs0", LinkKind::Bridge)
            .await
            .unwrap();
        assert!(
            matches!(created, EnsuredLink::Created { .. }),
            "{created:?}"
        );
        let again = bind::ensure_link(&h, "kube-ipvs0", LinkKind::Bridge)
            .await
            .unwrap();
        assert_eq!(
            again,
            EnsuredLink::Existed {
                index: created.index()
            }
        );
        assert!(
            ns.ip(&["-d", "link", "show", "kube-ipvs0"])
                .contains("bridge")
        );

        // Not ours: a wider prefix an operator added, and a host address outside our pools (as kube-proxy binds
        // ClusterIPs on kube-ipvs0).
        ns.ip(&["addr", "add", "203.0.113.99/24", "dev", "kube-ipvs0"]);
        ns.ip(&["addr", "add", "198.51.100.77/32", "dev", "kube-ipvs0"]);
        let foreign = nets(&["203.0.113.99/24", "198.51.100.77/32"]);

        let pools = vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        ];
        let vips = AddressReconciler::for_pools(h.clone(), "kube-ipvs0", pools);

        let first = vips
            .reconcile(&ips(&["192.0.2.10", "2001:db8::10"]))
            .await
            .unwrap();
        assert!(first.failed.is_empty(), "{:?}", first.failed);
        assert_eq!(first.already_done, 0);
        assert_eq!(
            first.requests,
            [
                AddressRequest::Add(ip("192.0.2.10")),
                AddressRequest::Add(ip("2001:db8::10"))
            ]
        );
        let mut want = nets(&["192.0.2.10/32", "2001:db8::10/128"]);
        want.extend(&foreign);
        assert_eq!(ns.addresses("kube-ipvs0"), want);

        // IPv6 went in with nodad: not tentative, never dadfailed.
        let shown = ns.ip(&["-6", "addr", "show", "dev", "kube-ipvs0"]);
        let line = shown
            .lines()
            .find(|l| l.contains("2001:db8::10/128"))
            .unwrap();
        assert!(line.contains("nodad"), "{line}");
        assert!(
            !line.contains("tentative") && !line.contains("dadfailed"),
            "{line}"
        );

        let second = vips
            .reconcile(&ips(&["192.0.2.10", "2001:db8::10"]))
            .await
            .unwrap();
        assert!(
            second.requests.is_empty(),
            "second reconcile: {:?}",
            second.requests
        );

        let third = vips.reconcile(&ips(&["192.0.2.10"])).await.unwrap();
        assert_eq!(third.requests, [AddressRequest::Del(ip("2001:db8::10"))]);
        let mut want = nets(&["192.0.2.10/32"]);
        want.extend(&foreign);
        assert_eq!(ns.addresses("kube-ipvs0"), want);

        let last = vips.reconcile(&BTreeSet::new()).await.unwrap();
        assert_eq!(last.requests, [AddressRequest::Del(ip("192.0.2.10"))]);
        assert_eq!(ns.addresses("kube-ipvs0"), foreign);
        assert!(
            vips.reconcile(&BTreeSet::new())
                .await
                .unwrap()
                .requests
                .is_empty()
        );

        // The executor on its own: the kernel's EEXIST and "not there" answers are success.
        let index = created.index();
        for vip in ["192.0.2.20", "2001:db8::20"] {
            let add = AddressRequest::Add(ip(vip));
            let del = AddressRequest::Del(ip(vip));
            assert_eq!(
                bind::execute(&h, "kube-ipvs0", index, add).await.unwrap(),
                Applied::Done
            );
            assert_eq!(
                bind::execute(&h, "kube-ipvs0", index, add).await.unwrap(),
                Applied::AlreadyDone
            );
            assert_eq!(
                bind::execute(&h, "kube-ipvs0", index, del).await.unwrap(),
                Applied::Done
            );
            assert_eq!(
                bind::execute(&h, "kube-ipvs0", index, del).await.unwrap(),
                Applied::AlreadyDone
            );
        }
        // Deleting our /32 of an address that exists only at a wider prefix must not remove the wider one.
        let wide = AddressRequest::Del(ip("203.0.113.99"));
        assert_eq!(
            bind::execute(&h, "kube-ipvs0", index, wide).await.unwrap(),
            Applied::AlreadyDone
        );
        assert_eq!(ns.addresses("kube-ipvs0"), foreign);

        let missing = AddressReconciler::for_pools(h.clone(), "nope0", vec![]);
        assert!(matches!(
            missing.reconcile(&BTreeSet::new()).await,
            Err(bind::Error::LinkNotFound { .. })
        ));
    });
}

fn read_proc(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

#[test]
fn strict_arp_check_then_enforce_in_namespace() {
    if !is_root() {
        return;
    }
    let host_before = (
        read_proc("/proc/sys/net/ipv4/conf/all/arp_ignore"),
        read_proc("/proc/sys/net/ipv4/conf/all/arp_announce"),
    );
    let ns = Netns::new();
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.enter(|| async {
        let set = |path: &str, v: &str| std::fs::write(path, v).unwrap();
        // A new namespace copies init_net's `all` values (net.core.devconf_inherit_init_net=0), so the kernel
        // defaults are set explicitly rather than assumed.
        set("/proc/sys/net/ipv4/conf/all/arp_ignore", "0");
        set("/proc/sys/net/ipv4/conf/all/arp_announce", "0");
        let conf = Ipv4Conf::current_netns();

        let check = strict_arp::run(StrictArpMode::Check, &conf, &["v0"]).unwrap();
        assert!(!check.status.ok);
        assert!(!check.announce_allowed());
        assert_eq!(
            check.status.problems.len(),
            2,
            "{:?}",
            check.status.problems
        );
        for problem in &check.status.problems {
            assert!(problem.starts_with("v0: effective arp_"), "{problem}");
            assert!(problem.contains(FIX_COMMAND), "{problem}");
            assert!(problem.contains("strictARP: true"), "{problem}");
        }
        assert_eq!(
            read_proc("/proc/sys/net/ipv4/conf/all/arp_ignore"),
            "0",
            "check wrote"
        );

        let enforce = strict_arp::run(StrictArpMode::Enforce, &conf, &["v0"]).unwrap();
        assert!(enforce.status.ok, "{:?}", enforce.status.problems);
        assert_eq!(enforce.applied.len(), 2);
        assert_eq!(read_proc("/proc/sys/net/ipv4/conf/all/arp_ignore"), "1");
        assert_eq!(read_proc("/proc/sys/net/ipv4/conf/all/arp_announce"), "2");

        let again = strict_arp::run(StrictArpMode::Enforce, &conf, &["v0"]).unwrap();
        assert!(again.applied.is_empty(), "{:?}", again.applied);

        // A stricter value is never lowered.
        set("/proc/sys/net/ipv4/conf/all/arp_ignore", "8");
        let stricter = strict_arp::run(StrictArpMode::Enforce, &conf, &["v0"]).unwrap();
        assert!(stricter.applied.is_empty() && stricter.status.ok);
        assert_eq!(read_proc("/proc/sys/net/ipv4/conf/all/arp_ignore"), "8");

        // An interface's own loose value wins the max; enforce reports it with its own fix instead of hiding it.
        set("/proc/sys/net/ipv4/conf/v0/arp_announce", "3");
        let loose = strict_arp::run(StrictArpMode::Enforce, &conf, &["v0", "v9"]).unwrap();
        assert!(loose.applied.is_empty());
        assert_eq!(
            loose.status.problems.len(),
            2,
            "{:?}",
            loose.status.problems
        );
        assert!(loose.status.problems[0].contains("sysctl -w net.ipv4.conf.v0.arp_announce=2"));
        assert!(loose.status.problems[1].starts_with("v9: no /proc/sys/net/ipv4/conf/v9"));
    });
    let host_after = (
        read_proc("/proc/sys/net/ipv4/conf/all/arp_ignore"),
        read_proc("/proc/sys/net/ipv4/conf/all/arp_announce"),
    );
    assert_eq!(host_before, host_after, "the host's sysctls changed");
}

#[test]
fn link_listing_sees_veth_mac_flags_and_addresses() {
    if !is_root() {
        return;
    }
    let ns = Netns::new();
    ns.ip(&[
        "link",
        "add",
        "v0",
        "address",
        "02:00:00:00:53:01",
        "type",
        "veth",
        "peer",
        "name",
        "v1",
    ]);
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "v0"]);
    ns.ip(&["addr", "add", "198.51.100.2/24", "dev", "v0"]);
    ns.ip(&[
        "-6",
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        "v0",
        "nodad",
    ]);
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["link", "set", "v1", "arp", "off"]);
    ns.ip(&["link", "add", "kube-ipvs0", "type", "bridge"]);

    let interfaces = ns.enter(|| async { list_interfaces(&handle()).await.unwrap() });
    let find = |name: &str| {
        interfaces
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {interfaces:?}"))
    };

    let v0 = find("v0");
    assert_eq!(v0.mac.unwrap().to_string(), "02:00:00:00:53:01");
    assert_eq!(v0.kind.as_deref(), Some("veth"));
    assert!(v0.up && !v0.noarp && !v0.loopback);
    let global: BTreeSet<IpNet> = v0
        .addresses
        .iter()
        .copied()
        .filter(|n| !matches!(n, IpNet::V6(v6) if v6.addr().is_unicast_link_local()))
        .collect();
    assert_eq!(
        global,
        nets(&["198.51.100.1/24", "198.51.100.2/24", "2001:db8:1::1/64"])
    );
    assert!(v0.subnets.contains(&"198.51.100.0/24".parse().unwrap()));
    assert!(v0.subnets.contains(&"2001:db8:1::/64".parse().unwrap()));
    assert_eq!(v0.addresses, {
        let mut shown: Vec<IpNet> = ns.addresses("v0").into_iter().collect();
        shown.extend(v0.addresses.iter().filter(|n| !global.contains(n)));
        shown.sort();
        shown
    });

    let v1 = find("v1");
    assert!(v1.noarp && !v1.up);
    assert!(find("lo").loopback);
    assert_eq!(find("kube-ipvs0").kind.as_deref(), Some("bridge"));
    assert_eq!(v0.index, {
        let json: serde_json::Value =
            serde_json::from_str(&ns.ip(&["-j", "link", "show", "v0"])).unwrap();
        json[0]["ifindex"].as_u64().unwrap() as u32
    });
}
