//! Which mode kube-proxy runs in on this node, as kube-proxy itself says it: `GET /proxyMode` on its metrics port
//! answers `ipvs`, `nftables` or `iptables` (kube-proxy's default `metricsBindAddress` is `127.0.0.1:10249`, which
//! the agent reaches because it shares the node's network namespace).
//!
//! When kube-proxy does not answer (no kube-proxy, a metrics address the agent was not told, a node in the middle of
//! a restart), the node still shows one fact: kube-proxy's IPVS mode, and nothing else, makes `kube-ipvs0`. The mode
//! is then `ipvs` when that link exists, and unknown otherwise.
//!
//! The mode is shown, not acted on: what the agent does follows the node's links (it binds VIPs and asks for strict
//! ARP only where a VIP link exists), so a node that changes mode needs no restart of IronLB and no new setting.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;

/// How long one probe of kube-proxy's metrics port may take, connection included.
pub const PROBE_LIMIT: Duration = Duration::from_millis(500);
/// The largest answer read: kube-proxy's is one word.
const BODY_LIMIT: usize = 64;

/// kube-proxy's mode on this node, and how the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// What kube-proxy's `/proxyMode` answered: `ipvs`, `nftables`, `iptables` (or a mode a later kube-proxy adds,
    /// kept as it said it, reduced to lowercase letters, digits and `-`).
    Reported(String),
    /// kube-proxy did not answer, but `kube-ipvs0` exists: IPVS mode.
    IpvsLink,
    /// kube-proxy did not answer, and nothing on the node tells.
    Unknown,
}

impl ProxyMode {
    /// The mode from the probe's answer and whether `kube-ipvs0` exists.
    pub fn from_facts(reported: Option<String>, kube_ipvs0: bool) -> ProxyMode {
        match reported {
            Some(mode) => ProxyMode::Reported(mode),
            None if kube_ipvs0 => ProxyMode::IpvsLink,
            None => ProxyMode::Unknown,
        }
    }

    /// The value of the Node annotation `ironlb.io/kube-proxy-mode` and of the
    /// metric's `mode` label: `ipvs`, `nftables`, `iptables`, or `unknown`.
    pub fn name(&self) -> &str {
        match self {
            ProxyMode::Reported(mode) => mode,
            ProxyMode::IpvsLink => "ipvs",
            ProxyMode::Unknown => "unknown",
        }
    }

    /// How the agent knows, for its log.
    pub fn source(&self) -> &'static str {
        match self {
            ProxyMode::Reported(_) => "kube-proxy's /proxyMode",
            ProxyMode::IpvsLink => "kube-ipvs0 exists (kube-proxy's /proxyMode did not answer)",
            ProxyMode::Unknown => {
                "kube-proxy's /proxyMode did not answer and there is no kube-ipvs0"
            }
        }
    }
}

/// Why a probe got no mode.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer from {0} within {PROBE_LIMIT:?}")]
    TimedOut(SocketAddr),
    #[error("connecting to {0}")]
    Connect(SocketAddr, #[source] std::io::Error),
    #[error("HTTP to {0}")]
    Http(SocketAddr, #[source] hyper::Error),
    #[error("{0} answered {1}")]
    Status(SocketAddr, hyper::StatusCode),
    #[error("reading the answer of {0}")]
    Body(
        SocketAddr,
        #[source] Box<dyn std::error::Error + Send + Sync>,
    ),
    #[error("{0} answered {1:?}, which is not a proxy mode")]
    NotAMode(SocketAddr, String),
}

/// Asks kube-proxy at `addr` for its mode, within [`PROBE_LIMIT`].
pub async fn probe(addr: SocketAddr) -> Result<String, ProbeError> {
    tokio::time::timeout(PROBE_LIMIT, ask(addr))
        .await
        .map_err(|_| ProbeError::TimedOut(addr))?
}

async fn ask(addr: SocketAddr) -> Result<String, ProbeError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect(addr, e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| ProbeError::Http(addr, e))?;
    // Driven beside the request, and aborted when the probe ends, on time or not.
    let _connection = crate::task::Task::spawn("kube-proxy mode probe", async move {
        let _ = connection.await;
    });
    let request = hyper::Request::get("/proxyMode")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("a constant request");
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ProbeError::Http(addr, e))?;
    if !response.status().is_success() {
        return Err(ProbeError::Status(addr, response.status()));
    }
    let body = Limited::new(response.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| ProbeError::Body(addr, e))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    parse(&text).ok_or_else(|| ProbeError::NotAMode(addr, text.into_owned()))
}

/// kube-proxy's answer as a mode name: one word of lowercase letters, digits and `-`, at most 32 characters.
fn parse(text: &str) -> Option<String> {
    let word = text.trim();
    let ok = !word.is_empty()
        && word.len() <= 32
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    ok.then(|| word.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn answers_are_one_lowercase_word() {
        assert_eq!(parse("nftables").as_deref(), Some("nftables"));
        assert_eq!(parse("ipvs\n").as_deref(), Some("ipvs"));
        assert_eq!(parse(""), None);
        assert_eq!(parse("<html>404</html>"), None);
        assert_eq!(parse("IPVS"), None);
        assert_eq!(parse(&"a".repeat(33)), None);
    }

    #[test]
    fn without_an_answer_kube_ipvs0_means_ipvs() {
        assert_eq!(ProxyMode::from_facts(None, true).name(), "ipvs");
        assert_eq!(ProxyMode::from_facts(None, false).name(), "unknown");
        // kube-proxy's own word wins over a kube-ipvs0 left behind.
        assert_eq!(
            ProxyMode::from_facts(Some("nftables".into()), true).name(),
            "nftables"
        );
    }

    /// Serves one connection with `reply` (a whole HTTP response), or never answers when it is None.
    async fn server(reply: Option<&'static str>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            match reply {
                Some(reply) => {
                    let _ = stream.write_all(reply.as_bytes()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_probe_reads_the_mode_and_names_what_went_wrong() {
        let ok = server(Some("HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nnftables")).await;
        assert_eq!(probe(ok).await.unwrap(), "nftables");

        let missing = server(Some("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")).await;
        let error = probe(missing).await.unwrap_err();
        assert!(error.to_string().contains("404"), "{error}");

        // Longer than the 64 bytes a probe reads.
        let reply: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}",
                "x".repeat(100)
            )
            .into_boxed_str(),
        );
        let long = server(Some(reply)).await;
        assert!(matches!(probe(long).await, Err(ProbeError::Body(..))));

        let silent = server(None).await;
        let start = std::time::Instant::now();
        assert!(matches!(probe(silent).await, Err(ProbeError::TimedOut(_))));
        assert!(start.elapsed() < Duration::from_secs(2));

        // Nothing listening.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(matches!(probe(closed).await, Err(ProbeError::Connect(..))));
    }
}
