//! VM tier of `netif`: the VIP binding scenario of `tests/netns_netif.rs` on a real **dummy** `kube-ipvs0`, which
//! the host kernel cannot create. It runs only under the VM runner (`scripts/vm-test`), which sets `IRONLB_VM=1`.
//!
//! This file has its own harness (`harness = false` in Cargo.toml) so that a run outside the VM reports the test as
//! skipped (`0 passed, 0 failed, 1 skipped`) instead of counting it as a pass, as an early `return` in a libtest test
//! would. libtest's flags (`--test-threads=1`, ...) are accepted and ignored; a bare argument filters by name.

mod netif_support;

use std::collections::BTreeSet;
use std::process::ExitCode;

use ironlb::netif::bind::{self, EnsuredLink};
use ironlb::netif::links::list_interfaces;
use ironlb::netif::{AddressReconciler, AddressRequest, LinkKind};
use netif_support::{Netns, handle, ip, ips, nets};

const NAME: &str = "vm_only_dummy_binding";

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    println!("\nrunning 1 test");
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("\n0 passed, 0 failed, 1 filtered out");
        return ExitCode::SUCCESS;
    }
    if std::env::var("IRONLB_VM").as_deref() != Ok("1") {
        println!("test {NAME} ... skipped: needs the VM tier (scripts/vm-test)");
        println!("\n0 passed, 0 failed, 1 skipped");
        return ExitCode::SUCCESS;
    }
    match std::panic::catch_unwind(vm_only_dummy_binding) {
        Ok(()) => {
            println!("test {NAME} ... ok\n\n1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Err(_) => {
            println!("test {NAME} ... FAILED\n\n0 passed, 1 failed");
            ExitCode::FAILURE
        }
    }
}

fn vm_only_dummy_binding() {
    let guard = Netns::new();
    let ns = guard.at.clone();
    guard.enter(move || async move {
        let h = handle();
        let created = bind::ensure_link(&h, "kube-ipvs0", LinkKind::Dummy)
            .await
            .unwrap();
        assert!(
            matches!(created, EnsuredLink::Created { .. }),
            "{created:?}"
        );
        assert!(
            ns.ip(&["-d", "link", "show", "kube-ipvs0"])
                .contains("dummy")
        );
        let listed = list_interfaces(&h).await.unwrap();
        let link = listed.iter().find(|i| i.name == "kube-ipvs0").unwrap();
        assert_eq!(link.kind.as_deref(), Some("dummy"));
        assert!(link.noarp, "dummy links are NOARP");

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
    });
}
