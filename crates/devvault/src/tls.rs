//! The dev vault's own CA and HTTPS server certificate, created on first start and reused after.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable PEM {what}: {detail}")]
    BadPem {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// PEM paths inside the state directory.
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TlsFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
        }
    }
}

fn read(path: &Path) -> Result<Option<String>, TlsError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TlsError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    let mode = if secret { 0o600 } else { 0o644 };
    crate::state::write_atomic_mode(path, text.as_bytes(), mode).map_err(|source| TlsError::Io {
        action: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// The host names and addresses the server certificate must cover.
pub fn wanted_sans(vaults: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec![
        "localhost".into(),
        "*.localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    for v in vaults {
        sans.push(format!("{v}.localhost"));
    }
    sans
}

fn san(name: &str) -> Result<SanType, TlsError> {
    Ok(match name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.try_into()?),
    })
}

/// Loads the CA and server certificate from `files`, creating what is missing. The server
/// certificate is re-issued (by the same CA) when it does not cover every name in `sans` or
/// expires within a week.
pub fn ensure(files: &TlsFiles, sans: &[String]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (ca_cert_pem, ca_key_pem) = match (read(&files.ca_cert)?, read(&files.ca_key)?) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "kvbridge dev-vault CA");
            dn.push(DnType::OrganizationName, "kvbridge");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = rcgen::date_time_ymd(2024, 1, 1);
            params.not_after = rcgen::date_time_ymd(2036, 1, 1);
            let cert = params.self_signed(&key)?;
            write(&files.ca_key, &key.serialize_pem(), true)?;
            write(&files.ca_cert, &cert.pem(), false)?;
            (cert.pem(), key.serialize_pem())
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(TlsError::BadPem {
                path: files.ca_key.clone(),
                what: "CA key/certificate pair",
                detail: "only one of ca.pem and ca-key.pem exists; restore the other or remove both to create a new CA (clients must then trust the new ca.pem)".into(),
            })
        }
    };

    let need_new_server = match (read(&files.server_cert)?, read(&files.server_key)?) {
        (Some(cert), Some(_)) => !covers(&cert, sans),
        _ => true,
    };
    if need_new_server {
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::BadPem {
            path: files.ca_key.clone(),
            what: "private key",
            detail: e.to_string(),
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).map_err(|e| TlsError::BadPem {
                path: files.ca_cert.clone(),
                what: "CA certificate",
                detail: e.to_string(),
            })?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "localhost");
        params.distinguished_name = dn;
        params.subject_alt_names = sans.iter().map(|s| san(s)).collect::<Result<_, _>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = crate::clock::now();
        params.not_before = time_from_unix(now - 3600);
        params.not_after = time_from_unix(now + 397 * 86_400);
        let cert = params.signed_by(&key, &issuer)?;
        write(&files.server_key, &key.serialize_pem(), true)?;
        write(&files.server_cert, &cert.pem(), false)?;
    }
    server_config(files)
}

fn time_from_unix(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// True when the PEM certificate names every SAN in `sans` and is valid for another week.
fn covers(cert_pem: &str, sans: &[String]) -> bool {
    let Ok(der) = pem_der(cert_pem, "CERTIFICATE") else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    if cert.validity().not_after.timestamp() < crate::clock::now() + 7 * 86_400 {
        return false;
    }
    let mut have: Vec<String> = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => have.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).map(|a| std::net::IpAddr::from(a).to_string()),
                        16 => {
                            <[u8; 16]>::try_from(*b).map(|a| std::net::IpAddr::from(a).to_string())
                        }
                        _ => continue,
                    };
                    if let Ok(ip) = ip {
                        have.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    sans.iter()
        .all(|s| have.iter().any(|h| h.eq_ignore_ascii_case(s)))
}

fn pem_der(text: &str, label: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or("no PEM block")? + begin.len();
    let stop = text[start..].find(&end).ok_or("unterminated PEM block")? + start;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| e.to_string())
}

fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_pem = read(&files.server_cert)?.unwrap_or_default();
    let key_pem = read(&files.server_key)?.unwrap_or_default();
    let ca_pem = read(&files.ca_cert)?.unwrap_or_default();
    let ca_key_pem = read(&files.ca_key)?.unwrap_or_default();
    let bad = |path: &Path, what: &'static str| {
        let path = path.to_path_buf();
        move |detail: String| TlsError::BadPem { path, what, detail }
    };
    let cert = pem_der(&cert_pem, "CERTIFICATE").map_err(bad(&files.server_cert, "certificate"))?;
    let ca = pem_der(&ca_pem, "CERTIFICATE").map_err(bad(&files.ca_cert, "certificate"))?;
    let key = pem_der(&key_pem, "PRIVATE KEY").map_err(bad(&files.server_key, "private key"))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| bad(&files.ca_key, "private key")(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .map_err(|e| bad(&files.ca_cert, "CA certificate")(e.to_string()))?;
    let default_names = dns_names(&cert);
    let default = certified_key(cert, ca.clone(), key)?;
    let resolver = SniResolver {
        issuer,
        ca_der: ca,
        default,
        default_names,
        issued: Mutex::new(HashMap::new()),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn dns_names(cert_der: &[u8]) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert_der) else {
        return Vec::new();
    };
    let Ok(Some(ext)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

fn certified_key(cert: Vec<u8>, ca: Vec<u8>, key: Vec<u8>) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert), CertificateDer::from(ca)],
        signing,
    )))
}

/// Serves the server certificate, and for a `NAME.localhost` it does not cover (a vault created
/// on first use), a certificate issued on the fly by the dev vault's CA: OpenSSL-based clients do
/// not accept `*.localhost` for `NAME.localhost`.
struct SniResolver {
    issuer: Issuer<'static, KeyPair>,
    ca_der: Vec<u8>,
    default: Arc<CertifiedKey>,
    /// DNS names of the default certificate, read once.
    default_names: Vec<String>,
    issued: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl SniResolver {
    fn covered_by_default(&self, name: &str) -> bool {
        self.default_names
            .iter()
            .any(|d| d.eq_ignore_ascii_case(name))
    }

    fn issue_for(&self, name: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![san(name)?];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = crate::clock::now();
        params.not_before = time_from_unix(now - 3600);
        params.not_after = time_from_unix(now + 397 * 86_400);
        let cert = params.signed_by(&key, &self.issuer)?;
        certified_key(
            cert.der().to_vec(),
            self.ca_der.clone(),
            key.serialize_der(),
        )
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name().map(|n| n.to_ascii_lowercase()) else {
            return Some(self.default.clone());
        };
        if !name.ends_with(".localhost") || self.covered_by_default(&name) {
            return Some(self.default.clone());
        }
        let mut issued = self.issued.lock().ok()?;
        if let Some(ck) = issued.get(&name) {
            return Some(ck.clone());
        }
        match self.issue_for(&name) {
            Ok(ck) => {
                issued.insert(name, ck.clone());
                Some(ck)
            }
            Err(e) => {
                tracing::warn!(host = %name, error = %e, "cannot issue a certificate for this host");
                Some(self.default.clone())
            }
        }
    }
}
