//! The flags of `ironlb webhook`.

use std::net::SocketAddr;
use std::path::PathBuf;

/// `ironlb webhook`: the validating admission webhook for the metallb.io kinds.
#[derive(clap::Args, Clone, Debug)]
pub struct WebhookArgs {
    /// The HTTPS listener the API server calls.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,
    /// The namespace the agents read their configuration from: a metallb.io object anywhere else is refused.
    #[arg(
        long,
        env = "IRONLB_CONFIG_NAMESPACE",
        default_value = "metallb-system"
    )]
    pub config_namespace: String,
    /// A kubeconfig; without it, the usual lookup (in-cluster, then KUBECONFIG and ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// A serving certificate (PEM chain) provided from outside, such as cert-manager's `tls.crt`. It is read again
    /// when the file changes. With it (and `--tls-key-file`), the webhook manages no certificate itself.
    #[arg(long, requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert-file`.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Without `--tls-cert-file`: the namespace of the webhook's Service and of its certificate Secret (the Pod's
    /// own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ironlb-system")]
    pub namespace: String,
    /// Without `--tls-cert-file`: the Secret in `--namespace` where the webhook keeps the CA and the serving
    /// certificate it issues, shared by every replica.
    #[arg(long, default_value = "ironlb-webhook-cert")]
    pub cert_secret: String,
    /// Without `--tls-cert-file`: the webhook's Service; the certificate is issued for its DNS names.
    #[arg(long, default_value = "ironlb-webhook")]
    pub service: String,
    /// Without `--tls-cert-file`: more names (DNS names or IP addresses) for the certificate.
    #[arg(long = "cert-host")]
    pub cert_hosts: Vec<String>,
    /// Without `--tls-cert-file`: the ValidatingWebhookConfiguration whose `caBundle` the webhook keeps equal to the
    /// CA it issued the certificate with.
    #[arg(long, default_value = "ironlb-webhook-configuration")]
    pub webhook_configuration: String,
}
