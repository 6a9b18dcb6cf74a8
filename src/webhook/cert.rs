//! The webhook's serving certificate: issued and rotated by the webhook itself in a Secret every replica shares, with
//! the CA kept in the ValidatingWebhookConfiguration's `caBundle`; or read from files someone else rotates
//! (cert-manager), again whenever they change.
//!
//! Self-managed, the Secret (`kubernetes.io/tls`) holds the serving certificate and key, and under `ca.crt` the CA
//! bundle: the CA that issued it, then the one before, so that while replicas move from the old certificate to the
//! new one the API server trusts both. A certificate is issued anew when the Secret is missing or unreadable, when it
//! was issued for other names, or when less than [`RENEW_BEFORE`] of it remains. Two replicas that both decide to
//! issue race on the write: the API server takes one (create, or update at the read resourceVersion) and the other
//! reads it on its next round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How long an issued certificate (and its CA) is valid.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How much validity must remain; less, and the certificate is issued anew.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often every replica reads the Secret and the webhook configuration again.
pub const RECHECK: Duration = Duration::from_secs(30);

/// The Secret annotation holding when the serving certificate expires (RFC 3339).
const NOT_AFTER: &str = "ironlb.io/not-after";
/// The Secret annotation holding the names the certificate was issued for, comma-separated.
const HOSTS: &str = "ironlb.io/hosts";
const CA_KEY: &str = "ca.crt";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot issue a certificate")]
    Issue(#[from] rcgen::Error),
    #[error("{what}: not a usable certificate and key")]
    Unusable {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} Secret {namespace}/{name}")]
    Secret {
        action: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{action} ValidatingWebhookConfiguration/{name}")]
    Configuration {
        action: &'static str,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// A certificate and key, PEM, with the CA bundle that verifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The issuing CA first, then any earlier CA still trusted during a rotation.
    pub ca_bundle_pem: String,
    pub not_after: jiff::Timestamp,
    pub hosts: Vec<String>,
}

/// Issues a CA and a serving certificate for `hosts` (DNS names or IP addresses), valid from an hour before `now`
/// for [`VALIDITY`]. `previous_ca` (PEM), if any, is kept in the bundle after the new CA.
pub fn issue(
    hosts: &[String],
    now: jiff::Timestamp,
    previous_ca: Option<&str>,
) -> Result<Issued, Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let at = |t: jiff::Timestamp| {
        time::OffsetDateTime::from_unix_timestamp(t.as_second())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    };
    let not_before = now - jiff::SignedDuration::from_hours(1);
    let not_after = now + jiff::SignedDuration::try_from(VALIDITY).unwrap_or_default();

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("ironlb-webhook-ca-{}", now.as_second()),
    );
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = at(not_before);
    ca.not_after = at(not_after);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(hosts.to_vec())?;
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name.push(
        DnType::CommonName,
        hosts
            .first()
            .cloned()
            .unwrap_or_else(|| "ironlb-webhook".into()),
    );
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.not_before = at(not_before);
    leaf.not_after = at(not_after);
    let cert = leaf.signed_by(&key, &issuer)?;

    let mut ca_bundle_pem = ca_cert.pem();
    if let Some(previous) = previous_ca.and_then(first_pem_certificate) {
        ca_bundle_pem.push_str(&previous);
    }
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        ca_bundle_pem,
        not_after,
        hosts: hosts.to_vec(),
    })
}

/// The first PEM certificate block of `pem`, as written; `None` if there is none that parses.
fn first_pem_certificate(pem: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let start = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = start + pem[start..].find(END)? + END.len();
    let block = format!("{}\n", &pem[start..end]);
    CertificateDer::from_pem_slice(block.as_bytes()).ok()?;
    Some(block)
}

/// A certificate chain and key (PEM) as rustls serves them; an error names `what` when they do not load or do not
/// belong together.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<Arc<CertifiedKey>, Error> {
    let unusable = |source: Box<dyn std::error::Error + Send + Sync>| Error::Unusable {
        what: what.to_string(),
        source,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(Box::new(e)))?;
    if chain.is_empty() {
        return Err(unusable("no certificate in the PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| unusable(Box::new(e)))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| unusable(Box::new(e)))?;
    Ok(Arc::new(key))
}

/// The certificate the TLS listener presents, replaced in place when it is renewed.
#[derive(Debug, Default)]
pub struct Current(RwLock<Option<Arc<CertifiedKey>>>);

impl Current {
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    pub fn is_set(&self) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the self-managed mode needs to know.
#[derive(Clone, Debug)]
pub struct SelfManaged {
    pub namespace: String,
    pub secret: String,
    pub configuration: String,
    pub hosts: Vec<String>,
}

impl SelfManaged {
    /// The names the certificate is issued for: the Service's DNS names, then `extra`.
    pub fn hosts(service: &str, namespace: &str, extra: &[String]) -> Vec<String> {
        let mut hosts = vec![
            service.to_string(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        hosts.extend(extra.iter().cloned());
        hosts
    }
}

/// Whether the Secret's certificate can be served as it is at `now` for `hosts`; the reason when it cannot.
pub fn stored_usable(
    secret: &Secret,
    hosts: &[String],
    now: jiff::Timestamp,
) -> Result<Issued, String> {
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    let data = secret.data.clone().unwrap_or_default();
    let text = |key: &str| {
        data.get(key)
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| format!("it has no {key}"))
    };
    let stored_hosts: Vec<String> = annotations
        .get(HOSTS)
        .map(|h| h.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    if stored_hosts != hosts {
        return Err(format!("it was issued for {stored_hosts:?}, not {hosts:?}"));
    }
    let not_after: jiff::Timestamp = annotations
        .get(NOT_AFTER)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("its {NOT_AFTER} annotation is missing or not a time"))?;
    let renew_at = not_after - jiff::SignedDuration::try_from(RENEW_BEFORE).unwrap_or_default();
    if now >= renew_at {
        return Err(format!("it expires at {not_after}"));
    }
    let issued = Issued {
        cert_pem: text("tls.crt")?,
        key_pem: text("tls.key")?,
        ca_bundle_pem: text(CA_KEY)?,
        not_after,
        hosts: stored_hosts,
    };
    certified_key(
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        "the Secret",
    )
    .map_err(|e| crate::error_chain(&e))?;
    Ok(issued)
}

fn secret_of(issued: &Issued, managed: &SelfManaged, resource_version: Option<String>) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(managed.secret.clone()),
            namespace: Some(managed.namespace.clone()),
            resource_version,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "ironlb-webhook".to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (NOT_AFTER.to_string(), issued.not_after.to_string()),
                (HOSTS.to_string(), issued.hosts.join(",")),
            ])),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), bytes(&issued.cert_pem)),
            ("tls.key".to_string(), bytes(&issued.key_pem)),
            (CA_KEY.to_string(), bytes(&issued.ca_bundle_pem)),
        ])),
        ..Secret::default()
    }
}

/// One round of the self-managed mode: the certificate to serve (read from the Secret, or issued and written to it),
/// and the webhook configuration's `caBundle` brought in line. Returns the certificate in use.
pub async fn reconcile(client: &kube::Client, managed: &SelfManaged) -> Result<Issued, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &managed.namespace);
    let secret_error = |action| {
        let (namespace, name) = (managed.namespace.clone(), managed.secret.clone());
        move |source| Error::Secret {
            action,
            namespace,
            name,
            source: Box::new(source),
        }
    };
    let now = jiff::Timestamp::now();
    let stored = secrets
        .get_opt(&managed.secret)
        .await
        .map_err(secret_error("reading"))?;
    let issued = match &stored {
        Some(secret) => match stored_usable(secret, &managed.hosts, now) {
            Ok(issued) => issued,
            Err(why) => {
                tracing::info!(secret = %managed.secret, reason = %why, "issuing a new webhook certificate");
                let previous = secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(CA_KEY))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned());
                let issued = issue(&managed.hosts, now, previous.as_deref())?;
                let rv = secret.metadata.resource_version.clone();
                secrets
                    .replace(
                        &managed.secret,
                        &PostParams::default(),
                        &secret_of(&issued, managed, rv),
                    )
                    .await
                    .map_err(secret_error("updating"))?;
                issued
            }
        },
        None => {
            tracing::info!(secret = %managed.secret, "issuing the webhook certificate");
            let issued = issue(&managed.hosts, now, None)?;
            secrets
                .create(&PostParams::default(), &secret_of(&issued, managed, None))
                .await
                .map_err(secret_error("creating"))?;
            issued
        }
    };
    inject_ca(client, &managed.configuration, &issued.ca_bundle_pem).await?;
    Ok(issued)
}

/// Sets `caBundle` on every webhook of the configuration that does not have it already. A configuration that does
/// not exist yet is not an error: it is looked for again on the next round.
async fn inject_ca(client: &kube::Client, name: &str, bundle: &str) -> Result<(), Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let error = |action| {
        let name = name.to_string();
        move |source| Error::Configuration {
            action,
            name,
            source: Box::new(source),
        }
    };
    let Some(mut configuration) = api.get_opt(name).await.map_err(error("reading"))? else {
        tracing::warn!(
            configuration = name,
            "the ValidatingWebhookConfiguration does not exist (yet)"
        );
        return Ok(());
    };
    let wanted = ByteString(bundle.as_bytes().to_vec());
    let mut changed = false;
    for webhook in configuration.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&wanted) {
            webhook.client_config.ca_bundle = Some(wanted.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &configuration)
            .await
            .map_err(error("updating"))?;
        tracing::info!(configuration = name, "caBundle updated");
    }
    Ok(())
}

/// Reads a certificate and key pair from files, for the files mode.
pub fn read_files(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        SelfManaged::hosts(
            "ironlb-webhook",
            "ironlb-system",
            &["192.0.2.7".to_string()],
        )
    }

    #[test]
    fn an_issued_certificate_loads_and_a_stored_one_is_reused_until_it_is_due() {
        let now: jiff::Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let issued = issue(&hosts(), now, None).unwrap();
        certified_key(
            issued.cert_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            "issued",
        )
        .unwrap();
        let managed = SelfManaged {
            namespace: "ironlb-system".into(),
            secret: "cert".into(),
            configuration: "cfg".into(),
            hosts: hosts(),
        };
        let secret = secret_of(&issued, &managed, None);
        assert_eq!(stored_usable(&secret, &hosts(), now), Ok(issued.clone()));
        let due = now + jiff::SignedDuration::from_hours(24 * (365 - 29));
        assert!(
            stored_usable(&secret, &hosts(), due)
                .unwrap_err()
                .contains("expires")
        );
        let other: Vec<String> = vec!["elsewhere".into()];
        assert!(
            stored_usable(&secret, &other, now)
                .unwrap_err()
                .contains("issued for")
        );
    }

    #[test]
    fn a_renewal_keeps_the_previous_ca_in_the_bundle() {
        let now: jiff::Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let first = issue(&hosts(), now, None).unwrap();
        let second = issue(&hosts(), now, Some(&first.ca_bundle_pem)).unwrap();
        assert_eq!(
            CertificateDer::pem_slice_iter(second.ca_bundle_pem.as_bytes()).count(),
            2
        );
        assert!(second.ca_bundle_pem.ends_with(&first.ca_bundle_pem));
        // A third renewal drops the oldest: only the one before is still in use anywhere.
        let third = issue(&hosts(), now, Some(&second.ca_bundle_pem)).unwrap();
        assert_eq!(
            CertificateDer::pem_slice_iter(third.ca_bundle_pem.as_bytes()).count(),
            2
        );
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let now = jiff::Timestamp::now();
        let a = issue(&hosts(), now, None).unwrap();
        let b = issue(&hosts(), now, None).unwrap();
        let error =
            certified_key(a.cert_pem.as_bytes(), b.key_pem.as_bytes(), "mixed").unwrap_err();
        assert!(error.to_string().starts_with("mixed: "), "{error}");
        let mut secret = secret_of(
            &a,
            &SelfManaged {
                namespace: "n".into(),
                secret: "s".into(),
                configuration: "c".into(),
                hosts: hosts(),
            },
            None,
        );
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("tls.key".into(), ByteString(b.key_pem.into_bytes()));
        assert!(stored_usable(&secret, &hosts(), now).is_err());
    }
}
