//! The real control plane for the real-API tier: [`ironlb::lab::control_plane`], shared by the tests of one binary,
//! with its binaries found or built by `scripts/build-control-plane`.

#![allow(dead_code)]

pub mod fault_proxy;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
pub use ironlb::lab::control_plane::*;

/// How long a build of the binaries may take, when the test has to run it itself (scripts/setup normally has).
const BUILD_LIMIT: Duration = Duration::from_secs(60 * 60);

/// The control plane the tests of one binary share while any of them holds it, or `None` (with the reason printed)
/// when the tier cannot run here: not root, so the cache in /var/cache is out of reach, and no
/// `IRONLB_CONTROL_PLANE_BIN` or `IRONLB_CONTROL_PLANE_DIR` to use instead; or the binaries cannot be built. In CI
/// (`CI=true`) either panics instead: CI runs as root and scripts/setup builds the binaries.
///
/// Tests that run at the same time get the same control plane; one that starts after the last holder finished gets a
/// new one. Tests must therefore not rely on each other's objects, and should use their own namespaces.
pub fn shared() -> Option<Arc<ControlPlane>> {
    static SHARED: Mutex<Weak<ControlPlane>> = Mutex::new(Weak::new());
    let mut slot = SHARED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(running) = slot.upgrade() {
        return Some(running);
    }
    let bin = bin_dir_or_skip()?;
    let started = Arc::new(ControlPlane::start_with(bin).expect("start the real control plane"));
    *slot = Arc::downgrade(&started);
    Some(started)
}

/// MetalLB's own CRD manifests, from `../shared/compat/metallb/crds`, in file-name order.
pub fn metallb_crds() -> Result<Crds> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/compat/metallb/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    ensure!(!files.is_empty(), "no CRD manifests in {}", dir.display());
    files.sort();
    Ok(Crds::Files(files))
}

/// The bin dir, or `None` with the reason printed when the tier may be skipped (see [`shared`]).
pub fn bin_dir_or_skip() -> Option<PathBuf> {
    let overridden = std::env::var_os("IRONLB_CONTROL_PLANE_BIN").is_some()
        || std::env::var_os("IRONLB_CONTROL_PLANE_DIR").is_some();
    let found = if !nix::unistd::geteuid().is_root() && !overridden {
        Err(anyhow::anyhow!(
            "needs root for the control-plane cache in /var/cache (or set IRONLB_CONTROL_PLANE_DIR or \
             IRONLB_CONTROL_PLANE_BIN)"
        ))
    } else {
        bin_dir().context("the real control plane's binaries cannot be built here")
    };
    match found {
        Ok(bin) => Some(bin),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI runs the real-API tier, but: {e:#}")
        }
        Err(e) => {
            println!("skipped: {e:#}");
            None
        }
    }
}

/// The directory holding kube-apiserver, etcd, kube-proxy and kubectl: `IRONLB_CONTROL_PLANE_BIN`, or the last line
/// of what `scripts/build-control-plane` prints (which builds them on the first run and reuses them after).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("IRONLB_CONTROL_PLANE_BIN") {
        return Ok(bin.into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-control-plane");
    // Its stderr (a line per binary built, the log's tail on failure) goes straight to the terminal: a cold build
    // takes minutes and should say so as it goes.
    let out = run_bounded_with(Command::new(&script), None, BUILD_LIMIT, Stdio::inherit())
        .with_context(|| format!("run {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{} failed ({})",
        script.display(),
        out.status
    );
    let bin = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .context("scripts/build-control-plane printed no bin dir")?;
    ensure!(
        bin.join("kube-apiserver").is_file(),
        "{} has no kube-apiserver",
        bin.display()
    );
    Ok(bin)
}

/// `base` on the real control plane with IronLB's CRDs, or `None` (said why) when the binaries cannot be had here
/// (see [`bin_dir_or_skip`]).
pub fn on_real_api(
    base: ironlb::lab::cluster::LabOptions,
) -> Option<ironlb::lab::cluster::LabOptions> {
    Some(ironlb::lab::cluster::LabOptions {
        api: ironlb::lab::cluster::ApiChoice::Real {
            bin: bin_dir_or_skip()?,
            crds: Crds::Ours,
        },
        ..base
    })
}
