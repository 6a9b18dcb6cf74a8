//! The kube clients every part of IronLB talks to the API server through: the agent's pair and the one request
//! client of the commands. It owns their timeouts, retries and User-Agent, and nothing that uses them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Client;

/// The User-Agent of the agent's API requests, so that audit logs (and the lab's RBAC test) can tell them apart.
pub const USER_AGENT: &str = concat!("ironlb/", env!("CARGO_PKG_VERSION"), " (agent)");

/// How long one API request (not a watch) may take, from its first byte sent to its whole answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a connection to the API server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The agent's two clients. Requests and watches need different timeouts: a request must fail within
/// [`REQUEST_TIMEOUT`], while a watch is a long poll that is quiet for minutes when nothing changes (kube's
/// watcher has an idle timeout of its own). Neither retries inside the client: kube's default layer retries
/// 429/503/504 up to 15 times with backoff growing to minutes, which would hold the elector past its renew
/// deadline. Every caller retries at its own pace instead (the elector every second, the writer on its next
/// pass, the watcher with its backoff).
#[derive(Clone)]
pub struct Clients {
    pub request: Client,
    pub watch: Client,
    /// What `request` and `watch` were built from, for [`Clients::anew`].
    configs: (kube::Config, kube::Config),
}

impl Clients {
    pub async fn new(kubeconfig: Option<&Path>) -> Result<Clients> {
        let config = config(kubeconfig).await?;
        let mut request = config.clone();
        request.read_timeout = Some(REQUEST_TIMEOUT);
        // Count the timeout from when the request is written, not from when its pooled connection went idle.
        request.reset_reader_on_write = true;
        Clients::build((request, config))
    }

    fn build(configs: (kube::Config, kube::Config)) -> Result<Clients> {
        Ok(Clients {
            request: Client::try_from(configs.0.clone()).map_err(Error::Client)?,
            watch: Client::try_from(configs.1.clone()).map_err(Error::Client)?,
            configs,
        })
    }

    /// The same pair built again, with connections of their own, on the runtime this is called from. A client's
    /// requests pass through a task on the runtime that built it, so a task on a thread of its own (the elector, the
    /// node Lease) needs clients built there, or its requests wait for whatever holds the agent's main thread.
    pub fn anew(&self) -> Result<Clients> {
        Clients::build(self.configs.clone())
    }

    /// Runs `task` on clients built anew on the calling runtime ([`Clients::anew`]), for a task on a thread of its
    /// own. If they cannot be built, says so naming `what` and returns, so the caller sees its task end.
    pub async fn run_anew<F: std::future::Future<Output = ()>>(
        self,
        what: &'static str,
        task: impl FnOnce(Clients) -> F,
    ) {
        match self.anew() {
            Ok(own) => task(own).await,
            Err(error) => {
                tracing::error!(%error, task = what, "cannot build the task's API clients")
            }
        }
    }
}

/// A client for requests (not watches) from `kubeconfig`, or from the environment (in-cluster, then
/// `~/.kube/config`), with the agent's timeouts and no retries of its own.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    Ok(Clients::new(kubeconfig).await?.request)
}

async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Client(kube::Error::InferConfig(e)))?,
    };
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(USER_AGENT),
    ));
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.default_retry = false;
    Ok(config)
}
