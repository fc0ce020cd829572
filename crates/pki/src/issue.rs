//! Issuing X.509 certificates with rcgen (signing through ring).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use ring::rand::SecureRandom;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::keys::{spki_der, Curve, PrivateKey};
use crate::{KeyKind, PkiError};

/// What to put in a new certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// Subject DN, e.g. "CN=app, O=Org" (CN, O, OU, C, ST, L; `\,` escapes a comma).
    pub subject: String,
    /// subjectAltName DNS names.
    pub dns_names: Vec<String>,
    /// subjectAltName IP addresses.
    pub ip_addresses: Vec<IpAddr>,
    /// A CA certificate (basicConstraints CA, keyCertSign + cRLSign) or a leaf
    /// (digitalSignature + keyEncipherment, EKU serverAuth + clientAuth).
    pub is_ca: bool,
    /// Validity from now (backdated 5 minutes for clock skew).
    pub validity_days: u32,
}

fn err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Issue(e.to_string())
}

/// Parses "CN=app, O=Org" into a distinguished name.
fn parse_dn(subject: &str) -> Result<DistinguishedName, PkiError> {
    let mut dn = DistinguishedName::new();
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = subject.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ',' | ';' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| PkiError::Issue(format!("subject component '{part}' has no '='")))?;
        let ty = match k.trim().to_ascii_uppercase().as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "ST" | "S" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            "E" | "EMAILADDRESS" => DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "DC" => DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 25]),
            other => {
                return Err(PkiError::Issue(format!(
                    "unsupported subject attribute '{other}'"
                )))
            }
        };
        dn.push(ty, v.trim());
    }
    if dn.iter().next().is_none() {
        return Err(PkiError::Issue("subject is empty".into()));
    }
    Ok(dn)
}

fn params(req: &CertRequest) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = parse_dn(&req.subject)?;
    for name in &req.dns_names {
        p.subject_alt_names
            .push(SanType::DnsName(name.clone().try_into().map_err(err)?));
    }
    for ip in &req.ip_addresses {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now
        .checked_add(time::Duration::days(i64::from(req.validity_days)))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| {
            PkiError::Issue(format!(
                "a validity of {} days ends after the year 9999",
                req.validity_days
            ))
        })?;
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::Issue("random serial number".into()))?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01; // keep 16 significant bytes, positive
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    if req.is_ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        // ExplicitNoCa writes basicConstraints CA:FALSE and, with it, the SubjectKeyIdentifier.
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn signing_key(key: &PrivateKey) -> Result<KeyPair, PkiError> {
    let alg = match key.kind() {
        KeyKind::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
        KeyKind::Ec(Curve::P256) => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyKind::Ec(Curve::P384) => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyKind::Ec(Curve::P521) => {
            return Err(PkiError::UnsupportedAlgorithm(
                "signing certificates with a P-521 key is not supported (ring has no P-521)".into(),
            ))
        }
    };
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(key.pkcs8_der()), alg)
        .map_err(err)
}

/// A self-signed certificate for `key` (SKI and AKI both set to the key's identifier).
pub fn self_signed(req: &CertRequest, key: &PrivateKey) -> Result<Vec<u8>, PkiError> {
    let kp = signing_key(key)?;
    let cert = params(req)?.self_signed(&kp).map_err(err)?;
    Ok(cert.der().to_vec())
}

/// A certificate for `key` signed by `issuer_key`, whose certificate is `issuer_cert_der`.
/// The AuthorityKeyIdentifier is the issuer's SubjectKeyIdentifier. Both keys must be RSA,
/// P-256 or P-384 (rcgen's ring backend neither signs with nor encodes P-521 keys).
pub fn issue(
    req: &CertRequest,
    key: &PrivateKey,
    issuer_cert_der: &[u8],
    issuer_key: &PrivateKey,
) -> Result<Vec<u8>, PkiError> {
    let issuer_info = crate::x509::cert_info(issuer_cert_der)?;
    if issuer_info.spki_der != spki_der(issuer_key)? {
        return Err(PkiError::Issue(
            "issuer key does not match the issuer certificate".into(),
        ));
    }
    if key.kind() == KeyKind::Ec(Curve::P521) {
        return Err(PkiError::UnsupportedAlgorithm(
            "certificates for P-521 keys are not supported (no P-521 in rcgen's ring backend)"
                .into(),
        ));
    }
    let kp = signing_key(issuer_key)?;
    let issuer =
        Issuer::from_ca_cert_der(&CertificateDer::from(issuer_cert_der), kp).map_err(err)?;
    let subject_key = SubjectPublicKeyInfo::from_der(&spki_der(key)?).map_err(err)?;
    let cert = params(req)?.signed_by(&subject_key, &issuer).map_err(err)?;
    Ok(cert.der().to_vec())
}
