//! Running code inside a lab network namespace.
//!
//! A thread can move itself into a namespace with setns(2); sockets it opens there stay in that namespace for
//! their whole life, whichever thread later uses them. So the lab opens a socket on a short-lived thread that
//! entered the namespace and hands it back.

use std::fs::File;

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open network namespace {ns}: {source}")]
    Open {
        ns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {ns}: {source}")]
    Enter {
        ns: String,
        #[source]
        source: nix::Error,
    },
    #[error("the thread working in network namespace {ns} panicked")]
    Panicked { ns: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs `f` on a new thread inside network namespace `ns` (a name under /run/netns) and returns its result.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let file = File::open(format!("/run/netns/{ns}")).map_err(|source| Error::Open {
        ns: ns.to_string(),
        source,
    })?;
    let name = ns.to_string();
    let handle = std::thread::spawn(move || -> Result<T> {
        setns(&file, CloneFlags::CLONE_NEWNET)
            .map_err(|source| Error::Enter { ns: name, source })?;
        Ok(f())
    });
    handle
        .join()
        .map_err(|_| Error::Panicked { ns: ns.to_string() })?
}
