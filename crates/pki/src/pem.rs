//! PEM encoding and bundle parsing.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::keys::{pkcs1_to_pkcs8, sec1_to_pkcs8, PrivateKey};
use crate::{CertBundle, PkiError};

/// Encodes DER as one PEM block: 64-column base64 lines, "\n" line ends, trailing "\n".
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = Zeroizing::new(STANDARD.encode(der));
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk boundary is a char boundary.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// One decoded PEM block.
pub(crate) struct Block {
    pub(crate) label: String,
    pub(crate) der: Zeroizing<Vec<u8>>,
}

/// Decodes every PEM block in `text`, ignoring text between blocks.
pub(crate) fn pem_blocks(text: &str) -> Result<Vec<Block>, PkiError> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = Zeroizing::new(String::new());
        let mut closed = false;
        for line in lines.by_ref() {
            let line = line.trim();
            if line == end {
                closed = true;
                break;
            }
            if line.contains(':') {
                return Err(PkiError::Pem(format!(
                    "{label} block has RFC 1421 headers (legacy encrypted PEM is not supported)"
                )));
            }
            body.push_str(line);
        }
        if !closed {
            return Err(PkiError::Pem(format!("{label} block has no END line")));
        }
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| PkiError::Pem(format!("{label} block is not valid base64")))?;
        blocks.push(Block {
            label: label.to_string(),
            der: Zeroizing::new(der),
        });
    }
    Ok(blocks)
}

/// Parses a PEM bundle: at most one private key (PKCS#8 "PRIVATE KEY", PKCS#1
/// "RSA PRIVATE KEY" or SEC1 "EC PRIVATE KEY", all returned as PKCS#8) and any number of
/// "CERTIFICATE" blocks in input order. Other blocks and text are ignored.
pub fn parse_pem_bundle(text: &str) -> Result<CertBundle, PkiError> {
    let mut key: Option<PrivateKey> = None;
    let mut certs = Vec::new();
    for block in pem_blocks(text)? {
        let parsed = match block.label.as_str() {
            "CERTIFICATE" => {
                certs.push(block.der.to_vec());
                continue;
            }
            "PRIVATE KEY" => PrivateKey::from_pkcs8_der(block.der.to_vec())?,
            "RSA PRIVATE KEY" => pkcs1_to_pkcs8(&block.der)?,
            "EC PRIVATE KEY" => sec1_to_pkcs8(&block.der)?,
            "ENCRYPTED PRIVATE KEY" => {
                return Err(PkiError::Pem(
                    "encrypted PKCS#8 private keys are not supported".into(),
                ))
            }
            _ => continue,
        };
        if key.is_some() {
            return Err(PkiError::MultipleKeys);
        }
        key = Some(parsed);
    }
    Ok(CertBundle { key, certs })
}

/// Renders a bundle: the PKCS#8 "PRIVATE KEY" first, then CERTIFICATE blocks in the given order.
pub fn bundle_to_pem(key: Option<&PrivateKey>, certs: &[Vec<u8>]) -> String {
    let mut out = String::new();
    if let Some(key) = key {
        out.push_str(&pem_encode("PRIVATE KEY", key.pkcs8_der()));
    }
    for cert in certs {
        out.push_str(&pem_encode("CERTIFICATE", cert));
    }
    out
}

/// The DER SPKI from a "PUBLIC KEY" block (or "RSA PUBLIC KEY", converted), else from the
/// first CERTIFICATE in `text`.
pub fn spki_from_pem(text: &str) -> Result<Vec<u8>, PkiError> {
    let blocks = pem_blocks(text)?;
    if let Some(b) = blocks.iter().find(|b| b.label == "PUBLIC KEY") {
        crate::keys::PublicParts::from_spki(&b.der)?;
        return Ok(b.der.to_vec());
    }
    if let Some(b) = blocks.iter().find(|b| b.label == "RSA PUBLIC KEY") {
        let mut r = crate::der::Reader::new(&b.der);
        let mut k = crate::der::Reader::new(r.read(crate::der::TAG_SEQUENCE)?);
        let n = k.read_uint()?.to_vec();
        let e = k.read_uint()?.to_vec();
        crate::keys::check_rsa_public(&n, &e)?;
        return Ok(crate::keys::PublicParts::Rsa { n, e }.to_spki());
    }
    if let Some(b) = blocks.iter().find(|b| b.label == "CERTIFICATE") {
        return Ok(crate::x509::cert_info(&b.der)?.spki_der);
    }
    Err(PkiError::Pem(
        "no PUBLIC KEY or CERTIFICATE block found".into(),
    ))
}
