//! `ironlb webhook`: the validating admission webhook for the metallb.io kinds, so that `kubectl apply` of a
//! configuration MetalLB (and `ironlb config check`) would refuse is refused at the API server, with the same words.
//!
//! It runs as its own Deployment, apart from the agents: it needs no host network and no privileges, and the API
//! server reaches it through a Service. For each request it lists the metallb.io objects of the configuration
//! namespace (with the usual request timeout) and lets [`admit::admit`] judge the change against them. When the list
//! fails the request is answered with an error, and the configuration's `failurePolicy` decides: `Fail` refuses the
//! change, `Ignore` lets it through.
//!
//! The certificate comes from [`cert`]: issued and rotated by the webhook in a Secret, or read from files that
//! cert-manager (or anyone) keeps current. The listener starts once a certificate is in hand.

pub mod admit;
mod args;
pub mod cert;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

pub use args::WebhookArgs;

use crate::k8s::state::ConfigKind;
use cert::{Current, SelfManaged};

/// The path of the admission endpoint.
pub const PATH: &str = "/validate";
/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long listing the configuration may take: within the shipped `timeoutSeconds` (10), so that the API server
/// gets the webhook's own message rather than a timeout of its call.
const LIST_LIMIT: Duration = Duration::from_secs(8);
/// How often the files of `--tls-cert-file` and `--tls-key-file` are read again.
const FILES_RECHECK: Duration = Duration::from_secs(10);

struct Shared {
    client: kube::Client,
    config_namespace: String,
}

/// Runs the webhook until SIGTERM or Ctrl-C.
pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    let client = crate::k8s::client::client(args.kubeconfig.as_deref()).await?;
    let current = Arc::new(Current::default());
    let certificates = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let (cert, key) = (cert.clone(), key.clone());
            let (c, k) = cert::read_files(&cert, &key)?;
            current.set(cert::certified_key(&c, &k, &cert.display().to_string())?);
            crate::task::Task::spawn(
                "webhook certificate files",
                watch_files(cert, key, current.clone(), (c, k)),
            )
        }
        _ => {
            let managed = SelfManaged {
                namespace: args.namespace.clone(),
                secret: args.cert_secret.clone(),
                configuration: args.webhook_configuration.clone(),
                hosts: SelfManaged::hosts(&args.service, &args.namespace, &args.cert_hosts),
            };
            crate::task::Task::spawn(
                "webhook certificate",
                manage_certificate(client.clone(), managed, current.clone()),
            )
        }
    };
    // Held until the server stops: dropping it stops the renewals.
    let _certificates = certificates;
    let shared = Arc::new(Shared {
        client,
        config_namespace: args.config_namespace.clone(),
    });
    let app = axum::Router::new()
        .route(PATH, post(review))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(shared);
    while !current.is_set() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tcp = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let listener = TlsListener::new(tcp, current)?;
    tracing::info!(listen = %args.listen, config_namespace = %args.config_namespace, "webhook serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::agent::shutdown_signal())
        .await
        .context("serving the webhook")?;
    Ok(())
}

/// Keeps the self-managed certificate current: at once, then every [`cert::RECHECK`], or sooner after a failure.
async fn manage_certificate(client: kube::Client, managed: SelfManaged, current: Arc<Current>) {
    let mut serving: Option<cert::Issued> = None;
    let mut backoff = crate::task::Backoff::new(Duration::from_millis(500), cert::RECHECK);
    loop {
        match cert::reconcile(&client, &managed).await {
            Ok(issued) => {
                backoff.succeeded();
                if serving.as_ref() != Some(&issued) {
                    match cert::certified_key(
                        issued.cert_pem.as_bytes(),
                        issued.key_pem.as_bytes(),
                        "the Secret",
                    ) {
                        Ok(key) => {
                            current.set(key);
                            tracing::info!(not_after = %issued.not_after, "serving the webhook certificate");
                            serving = Some(issued);
                        }
                        Err(error) => {
                            tracing::error!(error = %crate::error_chain(&error), "certificate")
                        }
                    }
                }
                tokio::time::sleep(cert::RECHECK).await;
            }
            Err(error) => {
                // Conflicts (another replica wrote first) and API trouble alike: read again soon.
                tracing::warn!(error = %crate::error_chain(&error), "webhook certificate");
                backoff.failed();
                backoff.elapsed().await;
            }
        }
    }
}

/// Reads the certificate files again every [`FILES_RECHECK`] and serves them when they changed and load.
async fn watch_files(
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: Arc<Current>,
    mut last: (Vec<u8>, Vec<u8>),
) {
    loop {
        tokio::time::sleep(FILES_RECHECK).await;
        match cert::read_files(&cert, &key) {
            Ok(read) if read != last => {
                match cert::certified_key(&read.0, &read.1, &cert.display().to_string()) {
                    Ok(k) => {
                        current.set(k);
                        tracing::info!(file = %cert.display(), "serving the renewed certificate");
                        last = read;
                    }
                    // Mid-rotation the two files can disagree for a moment: keep the old pair and look again.
                    Err(error) => {
                        tracing::warn!(error = %crate::error_chain(&error), "certificate files")
                    }
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %crate::error_chain(&error), "certificate files"),
        }
    }
}

async fn review(
    State(shared): State<Arc<Shared>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Result<Json<AdmissionReview<DynamicObject>>, (StatusCode, String)> {
    let request: AdmissionRequest<DynamicObject> = review.try_into().map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("not an AdmissionReview request: {e}"),
        )
    })?;
    let response = respond(&shared, &request).await;
    Ok(Json(response.into_review()))
}

async fn respond(shared: &Shared, request: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
    let base = AdmissionResponse::from(request);
    let value = |o: &Option<DynamicObject>| {
        let mut v = serde_json::to_value(o).unwrap_or_default();
        // The API server sends the object with its apiVersion and kind; name them from the request all the same.
        if v.is_object() {
            v["apiVersion"] = request.kind.api_version().into();
            v["kind"] = request.kind.kind.clone().into();
        }
        v
    };
    let change = match request.operation {
        Operation::Create | Operation::Update => admit::ConfigChange::Put(value(&request.object)),
        Operation::Delete => admit::ConfigChange::Delete(value(&request.old_object)),
        Operation::Connect => return base,
    };
    let listed = tokio::time::timeout(
        LIST_LIMIT,
        list_configuration(&shared.client, &shared.config_namespace),
    )
    .await;
    let existing = match listed {
        Ok(Ok(existing)) => existing,
        failed => {
            let why = match failed {
                Ok(Err(error)) => crate::error_chain(&error),
                _ => format!("no answer within {LIST_LIMIT:?}"),
            };
            let message = format!(
                "IronLB's webhook cannot read the configuration in {}: {why}",
                shared.config_namespace,
            );
            tracing::warn!(%message, "admission request not judged");
            let mut response = base.deny(message);
            response.result.code = 500;
            response.result.reason = "InternalError".into();
            return response;
        }
    };
    let verdict = admit::admit(&existing, &change, &shared.config_namespace);
    tracing::info!(
        kind = %request.kind.kind, name = %request.name, operation = ?request.operation,
        allowed = verdict.allowed, reason = %verdict.message(), "admission"
    );
    let mut response = if verdict.allowed {
        base
    } else {
        // As a refusal by the API server's own validation reads: 403 Forbidden, kubectl prints the message.
        let mut denied = base.deny(verdict.message());
        denied.result.code = 403;
        denied.result.reason = "Forbidden".into();
        denied
    };
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings);
    }
    response
}

/// Every metallb.io object of the configuration namespace, as the API returns it, with its apiVersion and kind.
async fn list_configuration(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<serde_json::Value>, kube::Error> {
    let lists = ConfigKind::ALL.map(|kind| {
        let resource = kind.api_resource();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        async move {
            let list = api.list(&ListParams::default()).await?;
            Ok::<_, kube::Error>(
                list.items
                    .iter()
                    .map(|o| crate::k8s::state::config_value(o, &resource))
                    .collect::<Vec<_>>(),
            )
        }
    });
    let lists = futures::future::try_join_all(lists).await?;
    Ok(lists.into_iter().flatten().collect())
}

/// TLS over a TCP listener for `axum::serve`: handshakes run on tasks of their own, so a slow client delays nobody
/// else, and a failed one is logged and dropped.
struct TlsListener {
    local: std::net::SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    _acceptor: crate::task::Task<()>,
}

impl TlsListener {
    fn new(tcp: TcpListener, current: Arc<Current>) -> anyhow::Result<TlsListener> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(current);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let local = tcp.local_addr().context("listener address")?;
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let task = crate::task::Task::spawn("webhook TLS acceptor", async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            local,
            ready,
            _acceptor: task,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor task ended (it never does on its own): wait for shutdown rather than spin.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(operation: &str) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "0b1c", "kind": {"group": "metallb.io", "version": "v1beta1", "kind": "IPAddressPool"},
                "resource": {"group": "metallb.io", "version": "v1beta1", "resource": "ipaddresspools"},
                "name": "p", "namespace": "metallb-system", "operation": operation,
                "userInfo": {"username": "test"},
                "object": {
                    "apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
                    "metadata": {"name": "p", "namespace": "metallb-system"},
                    "spec": {"addresses": ["192.0.2.0/28"]},
                },
            },
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[tokio::test]
    async fn an_api_that_cannot_be_reached_gets_an_error_answer_not_a_verdict() {
        // Nothing listens on port 1: the list fails at once, and the answer says so with code 500, so the API
        // server applies the configuration's failurePolicy.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let shared = Shared {
            client: kube::Client::try_from(config).unwrap(),
            config_namespace: "metallb-system".into(),
        };
        let response = respond(&shared, &request("CREATE")).await;
        assert!(!response.allowed);
        assert_eq!(response.result.code, 500);
        assert_eq!(response.uid, "0b1c");
        assert!(
            response
                .result
                .message
                .starts_with("IronLB's webhook cannot read the configuration in metallb-system"),
            "{}",
            response.result.message
        );
    }
}
