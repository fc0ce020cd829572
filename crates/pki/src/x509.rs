//! X.509 certificate inspection and chain ordering.

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::der::{self, Reader};
use crate::PkiError;

/// Facts about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject DN, RFC 4514 style as x509-parser prints it, e.g. "CN=app, O=Org".
    pub subject: String,
    /// Issuer DN in the same form.
    pub issuer: String,
    /// Serial number as uppercase hex without leading zero bytes (like `openssl x509 -serial`).
    pub serial_hex: String,
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds.
    pub not_after: i64,
    /// SHA-1 over the DER (Key Vault's `x5t`).
    pub sha1_thumbprint: [u8; 20],
    /// SHA-256 over the DER (`x5t#S256`).
    pub sha256_thumbprint: [u8; 32],
    /// SubjectKeyIdentifier extension value.
    pub subject_key_id: Option<Vec<u8>>,
    /// AuthorityKeyIdentifier keyIdentifier.
    pub authority_key_id: Option<Vec<u8>>,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// DNS names from subjectAltName.
    pub dns_names: Vec<String>,
    /// Key usages with Key Vault's names (digitalSignature, keyEncipherment, keyCertSign, ...).
    pub key_usage: Vec<String>,
    /// Extended key usage OIDs, dotted, in certificate order.
    pub ekus: Vec<String>,
    /// The DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| PkiError::InvalidCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCertificate(
            "trailing data after certificate".into(),
        ));
    }
    Ok(cert)
}

/// Parses a DER certificate and extracts the facts Key Vault and the renderers need.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, PkiError> {
    let cert = parse(der)?;
    let mut info = CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial_hex: serial_hex(cert.tbs_certificate.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        sha1_thumbprint: [0; 20],
        sha256_thumbprint: [0; 32],
        subject_key_id: None,
        authority_key_id: None,
        is_ca: false,
        dns_names: Vec::new(),
        key_usage: Vec::new(),
        ekus: Vec::new(),
        spki_der: cert.tbs_certificate.subject_pki.raw.to_vec(),
    };
    info.sha1_thumbprint.copy_from_slice(
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref(),
    );
    info.sha256_thumbprint
        .copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(kid) => {
                info.subject_key_id = Some(kid.0.to_vec());
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                info.authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            ParsedExtension::BasicConstraints(bc) => info.is_ca = bc.ca,
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    if let GeneralName::DNSName(dns) = name {
                        info.dns_names.push((*dns).to_string());
                    }
                }
            }
            ParsedExtension::KeyUsage(ku) => {
                let names = [
                    (ku.digital_signature(), "digitalSignature"),
                    (ku.non_repudiation(), "nonRepudiation"),
                    (ku.key_encipherment(), "keyEncipherment"),
                    (ku.data_encipherment(), "dataEncipherment"),
                    (ku.key_agreement(), "keyAgreement"),
                    (ku.key_cert_sign(), "keyCertSign"),
                    (ku.crl_sign(), "cRLSign"),
                    (ku.encipher_only(), "encipherOnly"),
                    (ku.decipher_only(), "decipherOnly"),
                ];
                info.key_usage = names
                    .iter()
                    .filter(|(set, _)| *set)
                    .map(|(_, n)| (*n).to_string())
                    .collect();
            }
            ParsedExtension::ExtendedKeyUsage(_) => {
                info.ekus = eku_oids(ext.value)?;
            }
            _ => {}
        }
    }
    Ok(info)
}

fn serial_hex(raw: &[u8]) -> String {
    let s = der::strip_zeros(raw);
    if s.is_empty() {
        return "00".into();
    }
    s.iter().map(|b| format!("{b:02X}")).collect()
}

fn eku_oids(value: &[u8]) -> Result<Vec<String>, PkiError> {
    let bad = |_| PkiError::InvalidCertificate("malformed extendedKeyUsage".into());
    let mut r = Reader::new(Reader::new(value).read(der::TAG_SEQUENCE).map_err(bad)?);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(der::oid_to_string(r.read(der::TAG_OID).map_err(bad)?));
    }
    Ok(out)
}

/// Orders certificates leaf -> intermediates -> root.
///
/// A child links to its parent when the child's AuthorityKeyIdentifier equals the parent's
/// SubjectKeyIdentifier; when either id is missing, when the child's issuer name equals the
/// parent's subject name. The leaf is the one certificate that issued no other certificate
/// in the set. If the set is not exactly one complete chain (missing link, unrelated extra
/// certificates, ambiguity, duplicates), the certificates are returned in their original
/// order, unchanged, as the Azure provider does.
pub fn order_chain(certs: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, PkiError> {
    let infos = certs
        .iter()
        .map(|c| cert_info(c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match chain_order(&infos) {
        Some(order) => order.into_iter().map(|i| certs[i].clone()).collect(),
        None => certs.to_vec(),
    })
}

fn issued_by(child: &CertInfo, parent: &CertInfo) -> bool {
    match (&child.authority_key_id, &parent.subject_key_id) {
        (Some(aki), Some(ski)) => aki == ski,
        _ => child.issuer == parent.subject,
    }
}

fn chain_order(infos: &[CertInfo]) -> Option<Vec<usize>> {
    let n = infos.len();
    if n <= 1 {
        return None;
    }
    let mut parent: Vec<Option<usize>> = vec![None; n];
    let mut is_parent = vec![false; n];
    for (i, child) in infos.iter().enumerate() {
        let candidates: Vec<usize> = (0..n)
            .filter(|&j| j != i && issued_by(child, &infos[j]))
            .collect();
        match candidates.as_slice() {
            [] => {}
            [j] => {
                parent[i] = Some(*j);
                is_parent[*j] = true;
            }
            _ => return None,
        }
    }
    let leaves: Vec<usize> = (0..n).filter(|&i| !is_parent[i]).collect();
    let [leaf] = leaves.as_slice() else {
        return None;
    };
    let mut order = vec![*leaf];
    let mut cur = *leaf;
    while let Some(p) = parent[cur] {
        if order.contains(&p) {
            return None;
        }
        order.push(p);
        cur = p;
    }
    (order.len() == n).then_some(order)
}
