//! The `ironlb check` and `ironlb migrate` commands, as functions `main` calls with its arguments and stdout.
//!
//! They load, validate or convert, and print; the exit status is the caller's, from the returned bool. Nothing
//! here decides anything that [`super::validate()`] or [`super::legacy`] do not already decide.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::legacy;
use super::load::{self, LoadError, Sources};
use super::validate::{Validated, validate};

/// Why a command could not run at all (as opposed to finding the config invalid).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{}: cannot convert the legacy ConfigMap", path.display())]
    Migrate {
        path: PathBuf,
        #[source]
        source: legacy::Error,
    },
    #[error("cannot write the output")]
    Write(#[from] std::io::Error),
}

/// Loads and validates `paths` as the agent reading `namespace` would. Prints a summary and the warnings and returns
/// true when the configuration is valid; otherwise prints every error as `Kind/name: field: message` and returns
/// false.
pub fn check(paths: &[PathBuf], namespace: &str, out: &mut impl Write) -> Result<bool, Error> {
    let mut sources = Sources::from_documents(load::load_paths(paths)?);
    let elsewhere = sources.take_other_namespaces(namespace);
    let mut validated = validate(&sources);
    validated.errors.splice(0..0, elsewhere);
    report(&sources, &validated, out)?;
    Ok(validated.is_valid())
}

fn report(sources: &Sources, v: &Validated, out: &mut impl Write) -> Result<(), Error> {
    if !v.errors.is_empty() {
        writeln!(out, "{} error(s):", v.errors.len())?;
        for e in &v.errors {
            writeln!(out, "{e}")?;
        }
        if !v.warnings.is_empty() {
            writeln!(out, "{} warning(s):", v.warnings.len())?;
            for w in &v.warnings {
                writeln!(out, "warning: {w}")?;
            }
        }
        return Ok(());
    }
    let c = &v.config;
    writeln!(out, "Pools ({}):", c.pools.len())?;
    for p in c.pools.values() {
        let ranges: Vec<String> = p.ranges.iter().map(ToString::to_string).collect();
        let (v4, v6) = p.size_per_family();
        writeln!(
            out,
            "  {}: {}; IPv4 addresses: {v4}, IPv6 addresses: {v6}; autoAssign: {}{}",
            p.name,
            ranges.join(", "),
            p.auto_assign,
            if p.avoid_buggy_ips {
                "; avoidBuggyIPs"
            } else {
                ""
            },
        )?;
    }
    let list = |s: &mut dyn Iterator<Item = &String>| {
        let v: Vec<&str> = s.map(String::as_str).collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    writeln!(out, "L2 advertisements ({}):", c.l2_advertisements.len())?;
    for a in c.l2_advertisements.values() {
        writeln!(
            out,
            "  {}: pools: {}; nodes: {}; interfaces: {}",
            a.name,
            list(&mut a.pools.iter()),
            if a.node_selectors.is_empty() {
                "all".to_string()
            } else {
                format!("{} selector(s)", a.node_selectors.len())
            },
            if a.interfaces.is_empty() {
                "all".to_string()
            } else {
                a.interfaces.join(", ")
            },
        )?;
    }
    writeln!(out, "BGP advertisements ({}):", c.bgp_advertisements.len())?;
    for a in c.bgp_advertisements.values() {
        let communities: Vec<String> = a.communities.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "  {}: pools: {}; aggregation /{} /{}; localPref: {}; communities: {}; peers: {}",
            a.name,
            list(&mut a.pools.iter()),
            a.aggregation_length,
            a.aggregation_length_v6,
            a.local_pref.map_or("none".to_string(), |l| l.to_string()),
            if communities.is_empty() {
                "none".to_string()
            } else {
                communities.join(", ")
            },
            if a.peers.is_empty() {
                "all".to_string()
            } else {
                a.peers.join(", ")
            },
        )?;
    }
    writeln!(out, "Peers ({}):", c.peers.len())?;
    for p in c.peers.values() {
        let remote = match p.remote_asn {
            super::RemoteAsn::Fixed(a) => format!("AS{a}"),
            super::RemoteAsn::Internal => "internal AS".to_string(),
            super::RemoteAsn::External => "external AS".to_string(),
        };
        let endpoint = match &p.endpoint {
            super::PeerEndpoint::Address(ip) => std::net::SocketAddr::new(*ip, p.port).to_string(),
            super::PeerEndpoint::Interface(i) => format!("interface {i}"),
        };
        let vrf = p
            .vrf
            .as_ref()
            .map(|v| format!(" in VRF {v}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {}: AS{} -> {remote} at {endpoint}{vrf}",
            p.name, p.my_asn
        )?;
    }
    if !c.bfd_profiles.is_empty() {
        writeln!(
            out,
            "BFD profiles ({}): {}",
            c.bfd_profiles.len(),
            list(&mut c.bfd_profiles.keys())
        )?;
    }
    if !c.communities.is_empty() {
        writeln!(
            out,
            "Community aliases ({}): {}",
            c.communities.len(),
            list(&mut c.communities.keys())
        )?;
    }
    if !v.warnings.is_empty() {
        writeln!(out, "{} warning(s):", v.warnings.len())?;
        for w in &v.warnings {
            writeln!(out, "warning: {w}")?;
        }
    }
    for note in &sources.ignored {
        writeln!(out, "skipped: {note}")?;
    }
    Ok(())
}

/// Converts the legacy ConfigMap (object or bare payload) at `path` into metallb.io YAML on `out`. The result is
/// validated; its errors and warnings are written as leading YAML comments, so the output stays appliable, and the
/// return value says whether it is free of errors.
pub fn migrate_file(path: &Path, namespace: &str, out: &mut impl Write) -> Result<bool, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let migration_error = |source| Error::Migrate {
        path: path.to_path_buf(),
        source,
    };
    let migration = legacy::convert(&text, namespace).map_err(migration_error)?;
    let yaml = legacy::to_yaml(&migration).map_err(migration_error)?;
    let sources = Sources {
        pools: migration.pools.clone(),
        l2_advertisements: migration.l2_advertisements.clone(),
        bgp_advertisements: migration.bgp_advertisements.clone(),
        communities: migration.communities.clone(),
        bfd_profiles: migration.bfd_profiles.clone(),
        peers: migration.peers.clone(),
        ..Default::default()
    };
    let validated = validate(&sources);
    for e in &validated.errors {
        writeln!(out, "# error: {e}")?;
    }
    for w in &validated.warnings {
        writeln!(out, "# warning: {w}")?;
    }
    out.write_all(yaml.as_bytes())?;
    Ok(validated.is_valid())
}
