//! The webhook's serving certificate, swapped without a restart.
//!
//! Two sources:
//! - **files** (`--tls-cert-file`/`--tls-key-file`, e.g. a cert-manager Secret mounted in the pod):
//!   re-read every interval, the new pair served once it parses;
//! - **self-managed**: a CA and a serving certificate for the Service's DNS names, kept in one
//!   Kubernetes Secret of the webhook's namespace (replicas share it: created once, changed only
//!   with the `resourceVersion` read, the loser of a race takes the winner's), the CA bundle
//!   patched into the webhook's own MutatingWebhookConfiguration, renewed before expiry.
//!
//! Rotation is planned by the pure [`plan`] (time injected). The serving certificate is renewed
//! when a third of its validity is left. The CA is replaced in two steps so that the API server
//! trusts a CA before any serving certificate it signed is presented: when the CA has less than
//! three serving validities left a successor is created and published in the bundle (the
//! `caBundle` then holds both); the successor signs the next serving certificate issued once the
//! CA has less than two validities left, at least one validity later. CAs leave the bundle when
//! they expire.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Secret keys: the serving pair, the CA bundle to trust (`ca.crt`, as cert-manager names it), the
/// CA that signs serving certificates and its pre-published successor.
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
pub const SIGNER_CRT: &str = "signer.crt";
pub const SIGNER_KEY: &str = "signer.key";
pub const NEXT_SIGNER_CRT: &str = "next-signer.crt";
pub const NEXT_SIGNER_KEY: &str = "next-signer.key";

/// Conflicting writers of the Secret tolerated in one round before giving up until the next.
const MAX_ATTEMPTS: usize = 5;
/// Certificates are valid from this long before they are issued (clock skew between nodes).
const BACKDATE: Duration = Duration::from_secs(300);

/// Why a serving certificate could not be loaded, issued, stored or published.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not usable PEM")]
    Pem {
        what: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{what} holds no certificate")]
    NoCertificate { what: String },
    #[error("{what}: unsupported private key")]
    Key {
        what: String,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration")]
    Config(#[source] rustls::Error),
    #[error("{what}: the private key does not match the certificate")]
    Mismatch { what: String },
    #[error("issuing a certificate")]
    Generate(#[source] rcgen::Error),
    #[error("{0:?} is not a DNS name or IP address")]
    Name(String),
    #[error("--ca-validity ({ca:?}) must be at least four times --cert-validity ({leaf:?})")]
    Validities { leaf: Duration, ca: Duration },
    #[error("Secret {namespace}/{name}")]
    Secret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} changed under every one of {MAX_ATTEMPTS} attempts")]
    Contended { namespace: String, name: String },
    #[error("MutatingWebhookConfiguration {name}")]
    WebhookConfiguration {
        name: String,
        #[source]
        source: kube::Error,
    },
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// The certificate rustls presents: replaced in place, read at every handshake.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
        })
    }

    /// Serves `key` from the next handshake on.
    pub fn set(&self, key: CertifiedKey) {
        let mut slot = self.current.write().unwrap_or_else(|e| e.into_inner());
        *slot = Arc::new(key);
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The rustls server configuration (ring, HTTP/1.1) presenting whatever `cert` holds.
pub fn server_config(cert: Arc<ServingCert>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate chain and its private key (PEM) as rustls serves them; `what` names the source
/// in errors.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Pem {
            what: what.to_string(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_string(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
        what: what.to_string(),
        source,
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| TlsError::Key {
            what: what.to_string(),
            source,
        })?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        Ok(()) => Ok(key),
        // Keys whose public half rustls cannot derive are accepted as they are.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(key),
        Err(_) => Err(TlsError::Mismatch {
            what: what.to_string(),
        }),
    }
}

/// `--tls-cert-file`/`--tls-key-file`.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What [`CertFiles::read`] last saw (compared to notice a change).
#[derive(PartialEq, Eq)]
pub struct FileContents {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
}

impl CertFiles {
    pub async fn read(&self) -> Result<FileContents, TlsError> {
        let read = |path: PathBuf| async move {
            tokio::fs::read(&path)
                .await
                .map_err(|source| TlsError::Read { path, source })
        };
        Ok(FileContents {
            cert: read(self.cert.clone()).await?,
            key: Zeroizing::new(read(self.key.clone()).await?),
        })
    }

    pub fn parse(&self, contents: &FileContents) -> Result<CertifiedKey, TlsError> {
        certified_key(
            &contents.cert,
            &contents.key,
            &format!("{} + {}", self.cert.display(), self.key.display()),
        )
    }

    /// Reads and parses both files.
    pub async fn load(&self) -> Result<(CertifiedKey, FileContents), TlsError> {
        let contents = self.read().await?;
        Ok((self.parse(&contents)?, contents))
    }

    /// Re-reads the files every `interval` and serves a changed pair once it parses (a
    /// half-written pair is retried at the next tick; the previous pair is served meanwhile).
    pub async fn watch(
        self,
        serving: Arc<ServingCert>,
        mut last: FileContents,
        interval: Duration,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let contents = match self.read().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "serving certificate files unreadable; serving the previous pair");
                    continue;
                }
            };
            if contents == last {
                continue;
            }
            match self.parse(&contents) {
                Ok(key) => {
                    serving.set(key);
                    last = contents;
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded from files");
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "changed serving certificate files do not parse yet; serving the previous pair");
                }
            }
        }
    }
}

/// The self-managed PKI as stored in the Secret (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct Stored {
    pub tls_cert: String,
    pub tls_key: Zeroizing<String>,
    /// Every CA to trust (the `caBundle`).
    pub ca_bundle: String,
    pub signer_cert: String,
    pub signer_key: Zeroizing<String>,
    pub next_signer: Option<(String, Zeroizing<String>)>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("tls_cert", &self.tls_cert)
            .field("ca_bundle", &self.ca_bundle)
            .field("signer_cert", &self.signer_cert)
            .field("next_signer", &self.next_signer.as_ref().map(|(c, _)| c))
            .finish_non_exhaustive()
    }
}

impl Stored {
    /// From a Secret's data; `None` when a key is missing or not text (the Secret is then
    /// rewritten).
    pub fn from_data(data: &BTreeMap<String, ByteString>) -> Option<Self> {
        let text = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let next_signer = match (text(NEXT_SIGNER_CRT), text(NEXT_SIGNER_KEY)) {
            (Some(c), Some(k)) => Some((c, Zeroizing::new(k))),
            _ => None,
        };
        Some(Self {
            tls_cert: text(TLS_CRT)?,
            tls_key: Zeroizing::new(text(TLS_KEY)?),
            ca_bundle: text(CA_CRT)?,
            signer_cert: text(SIGNER_CRT)?,
            signer_key: Zeroizing::new(text(SIGNER_KEY)?),
            next_signer,
        })
    }

    pub fn to_data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            data.insert(k.to_string(), ByteString(v.as_bytes().to_vec()));
        };
        put(TLS_CRT, &self.tls_cert);
        put(TLS_KEY, &self.tls_key);
        put(CA_CRT, &self.ca_bundle);
        put(SIGNER_CRT, &self.signer_cert);
        put(SIGNER_KEY, &self.signer_key);
        if let Some((c, k)) = &self.next_signer {
            put(NEXT_SIGNER_CRT, c);
            put(NEXT_SIGNER_KEY, k);
        }
        data
    }

    pub fn certified_key(&self) -> Result<CertifiedKey, TlsError> {
        certified_key(
            self.tls_cert.as_bytes(),
            self.tls_key.as_bytes(),
            "the self-managed serving certificate",
        )
    }
}

/// Validity of issued certificates.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub cert: Duration,
    pub ca: Duration,
}

impl Validity {
    pub fn new(cert: Duration, ca: Duration) -> Result<Self, TlsError> {
        if cert.is_zero() || ca < cert.saturating_mul(4) {
            return Err(TlsError::Validities { leaf: cert, ca });
        }
        Ok(Self { cert, ca })
    }
}

/// One parsed certificate's facts used by [`plan`].
struct Facts {
    not_after: i64,
    names: Vec<String>,
    der: Vec<u8>,
}

fn facts(der: &[u8]) -> Option<Facts> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    names.push(d.to_ascii_lowercase())
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some(Facts {
        not_after: cert.validity().not_after.timestamp(),
        names,
        der: der.to_vec(),
    })
}

/// The certificates of a PEM text (unparsable blocks skipped).
fn pem_certs(pem: &str) -> Vec<Facts> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(|c| c.ok())
        .filter_map(|c| facts(&c))
        .collect()
}

fn first_cert(pem: &str) -> Option<Facts> {
    pem_certs(pem).into_iter().next()
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn san(name: &str) -> Result<SanType, TlsError> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            name.to_string()
                .try_into()
                .map_err(|_| TlsError::Name(name.to_string()))?,
        ),
    })
}

fn new_ca(now: i64, validity: Duration) -> Result<(String, Zeroizing<String>), TlsError> {
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // A distinct subject per CA: old and new CAs sit side by side in the bundle.
    dn.push(DnType::CommonName, format!("kvbridge webhook CA {now}"));
    dn.push(DnType::OrganizationName, "kvbridge");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = at(now - secs(BACKDATE));
    params.not_after = at(now.saturating_add(secs(validity)));
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

fn new_leaf(
    signer_cert: &str,
    signer_key: &str,
    sans: &[String],
    now: i64,
    not_after: i64,
) -> Result<(String, Zeroizing<String>), TlsError> {
    let ca_key = KeyPair::from_pem(signer_key).map_err(TlsError::Generate)?;
    let issuer = Issuer::from_ca_cert_pem(signer_cert, ca_key).map_err(TlsError::Generate)?;
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        sans.first()
            .map(String::as_str)
            .unwrap_or("kvbridge-webhook"),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = at(now - secs(BACKDATE));
    params.not_after = at(not_after);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(TlsError::Generate)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

/// What the Secret should hold at `now` (unix seconds) given what it holds: `None` when it is
/// fine as it is. Pure apart from key generation.
pub fn plan(
    current: Option<&Stored>,
    sans: &[String],
    now: i64,
    validity: Validity,
) -> Result<Option<Stored>, TlsError> {
    let leaf_life = secs(validity.cert);
    let usable = current.and_then(|s| {
        let signer = first_cert(&s.signer_cert)?;
        let leaf = first_cert(&s.tls_cert)?;
        KeyPair::from_pem(&s.signer_key).ok()?;
        (signer.not_after > now).then_some((s, signer, leaf))
    });
    let Some((stored, signer, leaf)) = usable else {
        let (ca_cert, ca_key) = new_ca(now, validity.ca)?;
        let not_after = now.saturating_add(leaf_life);
        let (tls_cert, tls_key) = new_leaf(&ca_cert, &ca_key, sans, now, not_after)?;
        return Ok(Some(Stored {
            tls_cert,
            tls_key,
            ca_bundle: ca_cert.clone(),
            signer_cert: ca_cert,
            signer_key: ca_key,
            next_signer: None,
        }));
    };
    let mut next = stored.next_signer.clone().filter(|(c, k)| {
        first_cert(c).is_some_and(|f| f.not_after > now) && KeyPair::from_pem(k).is_ok()
    });
    let (mut signer_cert, mut signer_key) = (stored.signer_cert.clone(), stored.signer_key.clone());
    let signer_left = signer.not_after - now;
    let wanted: Vec<String> = sans.iter().map(|s| s.to_ascii_lowercase()).collect();
    let leaf_ok = leaf.not_after - now > leaf_life / 3
        && wanted.iter().all(|w| leaf.names.contains(w))
        && stored.certified_key().is_ok();
    let (mut tls_cert, mut tls_key) = (stored.tls_cert.clone(), stored.tls_key.clone());
    if !leaf_ok {
        if signer_left < leaf_life.saturating_mul(2) {
            let (c, k) = match next.take() {
                Some(n) => n,
                None => new_ca(now, validity.ca)?,
            };
            (signer_cert, signer_key) = (c, k);
        }
        let signer_end = first_cert(&signer_cert).map_or(now, |f| f.not_after);
        let not_after = now.saturating_add(leaf_life).min(signer_end);
        (tls_cert, tls_key) = new_leaf(&signer_cert, &signer_key, sans, now, not_after)?;
    }
    // A successor for the CA that signs from now on, once it has three validities left.
    let signer_end = first_cert(&signer_cert).map_or(now, |f| f.not_after);
    if next.is_none() && signer_end - now < leaf_life.saturating_mul(3) {
        next = Some(new_ca(now, validity.ca)?);
    }
    // The bundle: the signer, its successor, then every earlier CA not yet expired.
    let mut bundle: Vec<Facts> = Vec::new();
    let candidates = first_cert(&signer_cert)
        .into_iter()
        .chain(next.as_ref().and_then(|(c, _)| first_cert(c)))
        .chain(pem_certs(&stored.ca_bundle));
    for f in candidates {
        if f.not_after > now && !bundle.iter().any(|b| b.der == f.der) {
            bundle.push(f);
        }
    }
    let ca_bundle: String = bundle.iter().map(|f| to_pem(&f.der)).collect();
    let new = Stored {
        tls_cert,
        tls_key,
        ca_bundle,
        signer_cert,
        signer_key,
        next_signer: next,
    };
    Ok((new != *stored).then_some(new))
}

/// The DNS names of a Service in `namespace`, as the API server addresses it.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// The self-managed serving certificate.
pub struct SelfManaged {
    pub client: kube::Client,
    pub namespace: String,
    pub secret: String,
    /// The MutatingWebhookConfiguration whose webhooks get the CA bundle (none: left alone).
    pub webhook_configuration: Option<String>,
    pub sans: Vec<String>,
    pub validity: Validity,
}

impl SelfManaged {
    fn secret_error(&self, source: kube::Error) -> TlsError {
        TlsError::Secret {
            namespace: self.namespace.clone(),
            name: self.secret.clone(),
            source,
        }
    }

    /// Makes the Secret current (creating or renewing it; a concurrent writer's result is taken
    /// instead of ours) and returns what it holds.
    pub async fn sync_secret(&self) -> Result<Stored, TlsError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for _ in 0..MAX_ATTEMPTS {
            let existing = api
                .get_opt(&self.secret)
                .await
                .map_err(|e| self.secret_error(e))?;
            let stored = existing
                .as_ref()
                .and_then(|s| s.data.as_ref())
                .and_then(Stored::from_data);
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let Some(new) = plan(stored.as_ref(), &self.sans, now, self.validity)? else {
                if let Some(s) = stored {
                    return Ok(s);
                }
                continue;
            };
            let result = match existing {
                None => {
                    let secret = Secret {
                        metadata: ObjectMeta {
                            name: Some(self.secret.clone()),
                            namespace: Some(self.namespace.clone()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/managed-by".to_string(),
                                "kvbridge-webhook".to_string(),
                            )])),
                            ..Default::default()
                        },
                        type_: Some("kubernetes.io/tls".into()),
                        data: Some(new.to_data()),
                        ..Default::default()
                    };
                    api.create(&PostParams::default(), &secret).await
                }
                Some(mut secret) => {
                    // `metadata.resourceVersion` as read: a concurrent change makes this a 409.
                    secret.data = Some(new.to_data());
                    secret.string_data = None;
                    api.replace(&self.secret, &PostParams::default(), &secret)
                        .await
                }
            };
            match result {
                Ok(_) => {
                    let old = stored.as_ref();
                    tracing::info!(
                        secret = %self.secret,
                        created = old.is_none(),
                        certificate_renewed = old.is_some_and(|o| o.tls_cert != new.tls_cert),
                        ca_successor_published = new.next_signer.is_some()
                            && old.is_some_and(|o| o.next_signer != new.next_signer),
                        ca_replaced = old.is_some_and(|o| o.signer_cert != new.signer_cert),
                        now,
                        "serving certificate stored"
                    );
                    return Ok(new);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(secret = %self.secret, "another replica wrote the serving certificate first; reading theirs");
                }
                Err(e) => return Err(self.secret_error(e)),
            }
        }
        Err(TlsError::Contended {
            namespace: self.namespace.clone(),
            name: self.secret.clone(),
        })
    }

    /// Sets `bundle` as the `caBundle` of every webhook of the configuration that lacks it.
    /// Returns how many webhooks were patched.
    pub async fn publish_ca_bundle(&self, bundle: &str) -> Result<usize, TlsError> {
        let Some(name) = &self.webhook_configuration else {
            return Ok(0);
        };
        let err = |source| TlsError::WebhookConfiguration {
            name: name.clone(),
            source,
        };
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let config = api.get(name).await.map_err(err)?;
        let stale: Vec<serde_json::Value> = config
            .webhooks
            .unwrap_or_default()
            .iter()
            .filter(|w| {
                w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice())
                    != Some(bundle.as_bytes())
            })
            .map(|w| {
                serde_json::json!({
                    "name": w.name,
                    "clientConfig": {"caBundle": ByteString(bundle.as_bytes().to_vec())},
                })
            })
            .collect();
        if stale.is_empty() {
            return Ok(0);
        }
        // Strategic merge: webhooks merge by name, only caBundle changes.
        let patch = serde_json::json!({"webhooks": stale});
        api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .map_err(err)?;
        tracing::info!(configuration = %name, webhooks = stale.len(), "caBundle patched");
        Ok(stale.len())
    }

    /// One round: the Secret made current, the bundle published, then the serving pair (in this
    /// order: the API server trusts a CA before it is presented).
    pub async fn round(&self) -> Result<CertifiedKey, TlsError> {
        let stored = self.sync_secret().await?;
        self.publish_ca_bundle(&stored.ca_bundle).await?;
        stored.certified_key()
    }

    /// Repeats [`Self::round`] every `interval` (errors logged; the previous pair is served).
    pub async fn run(self, serving: Arc<ServingCert>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.round().await {
                Ok(key) => {
                    let changed = serving.current().cert != key.cert;
                    serving.set(key);
                    if changed {
                        tracing::info!("serving certificate rotated");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "serving certificate round failed; serving the previous one");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn validity() -> Validity {
        Validity::new(
            Duration::from_secs(30 * DAY as u64),
            Duration::from_secs(365 * DAY as u64),
        )
        .unwrap()
    }

    fn sans() -> Vec<String> {
        service_names("kvbridge-webhook", "kvbridge")
    }

    fn not_after(pem: &str) -> i64 {
        first_cert(pem).unwrap().not_after
    }

    fn bundle_len(s: &Stored) -> usize {
        pem_certs(&s.ca_bundle).len()
    }

    /// The leaf verifies against the bundle with webpki (as a TLS client would).
    fn verifies(s: &Stored, now: i64) -> bool {
        let leaf = CertificateDer::from_pem_slice(s.tls_cert.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(s.ca_bundle.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier as _;
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &rustls_pki_types::ServerName::try_from("kvbridge-webhook.kvbridge.svc").unwrap(),
                &[],
                rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(now as u64)),
            )
            .is_ok()
    }

    #[test]
    fn creates_a_ca_and_a_serving_certificate_for_the_service() {
        let now = 1_900_000_000;
        let s = plan(None, &sans(), now, validity()).unwrap().unwrap();
        assert!(plan(Some(&s), &sans(), now, validity()).unwrap().is_none());
        assert_eq!(not_after(&s.tls_cert), now + 30 * DAY);
        assert_eq!(not_after(&s.signer_cert), now + 365 * DAY);
        assert_eq!(bundle_len(&s), 1);
        assert!(s.next_signer.is_none());
        assert!(verifies(&s, now));
        assert!(s.certified_key().is_ok());
        // Round trip through the Secret's data.
        assert_eq!(Stored::from_data(&s.to_data()).unwrap(), s);
        // Nothing to do while the certificate is fresh.
        assert!(plan(Some(&s), &sans(), now + 19 * DAY, validity())
            .unwrap()
            .is_none());
    }

    #[test]
    fn renews_the_serving_certificate_with_a_third_of_its_life_left() {
        let now = 1_900_000_000;
        let s = plan(None, &sans(), now, validity()).unwrap().unwrap();
        let later = now + 21 * DAY;
        let r = plan(Some(&s), &sans(), later, validity()).unwrap().unwrap();
        assert_ne!(r.tls_cert, s.tls_cert);
        assert_eq!(r.signer_cert, s.signer_cert, "same CA");
        assert_eq!(r.ca_bundle, s.ca_bundle, "caBundle unchanged");
        assert_eq!(not_after(&r.tls_cert), later + 30 * DAY);
        assert!(verifies(&r, later));
    }

    #[test]
    fn renews_when_the_names_change_or_the_secret_is_damaged() {
        let now = 1_900_000_000;
        let s = plan(None, &sans(), now, validity()).unwrap().unwrap();
        let mut names = sans();
        names.push("127.0.0.1".into());
        let r = plan(Some(&s), &names, now + 1, validity())
            .unwrap()
            .unwrap();
        assert!(first_cert(&r.tls_cert)
            .unwrap()
            .names
            .contains(&"127.0.0.1".to_string()));
        assert_eq!(r.signer_cert, s.signer_cert);

        let mut broken = s.clone();
        broken.tls_key = Zeroizing::new("garbage".into());
        let r = plan(Some(&broken), &sans(), now + 1, validity())
            .unwrap()
            .unwrap();
        assert!(r.certified_key().is_ok());
        assert_eq!(r.signer_cert, s.signer_cert);

        let mut broken = s.clone();
        broken.signer_cert = "garbage".into();
        let r = plan(Some(&broken), &sans(), now + 1, validity())
            .unwrap()
            .unwrap();
        assert_ne!(
            r.signer_cert, s.signer_cert,
            "a new CA when the old one is unreadable"
        );
        assert!(verifies(&r, now + 1));
    }

    /// Rotation over three CA lifetimes: at every moment the served certificate chains to the
    /// bundle, and a CA is in the bundle at least one serving validity before it signs.
    #[test]
    fn ca_successor_is_published_a_validity_before_it_signs() {
        let v = validity();
        let mut now = 1_900_000_000;
        let mut s = plan(None, &sans(), now, v).unwrap().unwrap();
        let mut published_at: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        let mut signers = 1;
        let end = now + 3 * 365 * DAY;
        while now < end {
            now += DAY / 2;
            let previous_signer = s.signer_cert.clone();
            if let Some(n) = plan(Some(&s), &sans(), now, v).unwrap() {
                s = n;
                assert!(
                    plan(Some(&s), &sans(), now, v).unwrap().is_none(),
                    "a second replica at the same moment changes nothing"
                );
            }
            for f in pem_certs(&s.ca_bundle) {
                published_at.entry(f.der).or_insert(now);
            }
            assert!(
                verifies(&s, now),
                "served certificate chains to the bundle at {now}"
            );
            assert!(bundle_len(&s) <= 2, "expired CAs leave the bundle");
            if s.signer_cert != previous_signer {
                signers += 1;
                let der = first_cert(&s.signer_cert).unwrap().der;
                let since = published_at[&der];
                assert!(
                    now - since >= 30 * DAY,
                    "CA signs {} days after being published",
                    (now - since) / DAY
                );
            }
        }
        assert!(signers >= 3, "the CA was replaced ({signers} signers)");
    }

    #[test]
    fn validity_flags_are_checked() {
        assert!(Validity::new(Duration::from_secs(10), Duration::from_secs(39)).is_err());
        assert!(Validity::new(Duration::ZERO, Duration::from_secs(39)).is_err());
        assert!(Validity::new(Duration::from_secs(10), Duration::from_secs(40)).is_ok());
    }

    #[test]
    fn mismatched_pairs_are_refused() {
        let now = 1_900_000_000;
        let a = plan(None, &sans(), now, validity()).unwrap().unwrap();
        let b = plan(None, &sans(), now, validity()).unwrap().unwrap();
        let err = certified_key(a.tls_cert.as_bytes(), b.tls_key.as_bytes(), "x").unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err:?}");
    }
}
