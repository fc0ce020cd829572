//! PKCS#12 (PFX) reading and writing via p12-keystore.

use p12_keystore::{
    error::Error as P12Error, Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry,
    MacAlgorithm, Pkcs12Archive, PrivateKeyChain,
};

use crate::keys::PrivateKey;
use crate::{CertBundle, PkiError};

fn map_err(e: P12Error) -> PkiError {
    match e {
        // The MAC is keyed by the password; a mismatch (or, for MAC-less files, a
        // padding failure after decryption) means the password is wrong.
        P12Error::MacError(_) | P12Error::UnpadError => PkiError::PfxPassword,
        P12Error::UnsupportedEncryptionScheme => {
            PkiError::Pfx("unsupported encryption scheme".into())
        }
        P12Error::UnsupportedMacAlgorithm => PkiError::Pfx("unsupported MAC algorithm".into()),
        other => PkiError::Pfx(other.to_string()),
    }
}

/// Reads a PFX: the (single) private key as PKCS#8 and every certificate in bag order.
/// Supports PBES2/AES (OpenSSL 3 default) and legacy PBE-SHA1-3DES/RC2, SHA-1/SHA-2 MACs.
/// A wrong password gives [`PkiError::PfxPassword`].
pub fn parse_pfx(der: &[u8], password: &str) -> Result<CertBundle, PkiError> {
    let archive = Pkcs12Archive::from_pkcs12(der, password).map_err(map_err)?;
    if archive.keys.len() > 1 {
        return Err(PkiError::MultipleKeys);
    }
    let key = match archive.keys.first() {
        Some(bag) => Some(PrivateKey::from_pkcs8_der(bag.key.as_der().to_vec())?),
        None => None,
    };
    let certs = archive
        .certs
        .iter()
        .map(|bag| bag.cert.as_der().to_vec())
        .collect();
    Ok(CertBundle { key, certs })
}

/// Builds a PFX with an empty password (like Key Vault's exported PFX): the key and the
/// certificates in the given order (leaf first). Certificates and key are encrypted with
/// PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and the file is MAC'd with HMAC-SHA256.
pub fn build_pfx(key: &PrivateKey, certs: &[Vec<u8>]) -> Result<Vec<u8>, PkiError> {
    let leaf = certs
        .first()
        .ok_or_else(|| PkiError::Pfx("a PFX needs at least the leaf certificate".into()))?;
    let p12_key = p12_keystore::PrivateKey::from_der(key.pkcs8_der()).map_err(map_err)?;
    let p12_certs = certs
        .iter()
        .map(|c| Certificate::from_der(c).map_err(map_err))
        .collect::<Result<Vec<_>, _>>()?;
    // localKeyId = SHA-1 of the leaf certificate, as OpenSSL and Windows do.
    let local_key_id = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, leaf)
        .as_ref()
        .to_vec();
    let alias = crate::x509::cert_info(leaf)
        .map(|i| i.subject)
        .unwrap_or_else(|_| "key".into());
    let mut store = KeyStore::new();
    store.add_entry(
        &alias,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, p12_key, p12_certs)),
    );
    store
        .writer("")
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .encryption_iterations(2048)
        .mac_iterations(2048)
        .write()
        .map_err(map_err)
}

/// Builds a PKCS#12 trust store: one trusted-certificate bag per certificate (Java's
/// `trustedCertEntry`: the bag carries Oracle's trusted-key-usage attribute), under the given
/// aliases (friendlyName), no private key. Java loads it with
/// `-Djavax.net.ssl.trustStoreType=PKCS12` and `-Djavax.net.ssl.trustStorePassword=<password>`.
pub fn build_truststore(certs: &[(String, Vec<u8>)], password: &str) -> Result<Vec<u8>, PkiError> {
    let mut store = KeyStore::new();
    for (alias, der) in certs {
        let cert = Certificate::from_der(der).map_err(map_err)?;
        store.add_entry(alias, KeyStoreEntry::Certificate(cert));
    }
    store
        .writer(password)
        .encryption_algorithm(EncryptionAlgorithm::PbeWithHmacSha256AndAes256)
        .mac_algorithm(MacAlgorithm::HmacSha256)
        .encryption_iterations(2048)
        .mac_iterations(2048)
        .write()
        .map_err(map_err)
}
