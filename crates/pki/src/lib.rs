//! Certificates, keys, PKCS#12 and JWK handling for kvbridge.
//!
//! One place for the crypto-format work shared by the dev vault and the renderer that writes
//! Key Vault objects byte-compatibly with the Azure Secrets Store CSI provider. All signing and
//! verification go through `ring`; RSA and P-521 key generation use RustCrypto (`rsa`, `p521`);
//! PKCS#12 uses `p12-keystore`.

mod der;
mod error;
mod issue;
mod jwk;
mod jws;
mod keys;
mod pem;
mod pfx;
mod x509;

pub use error::PkiError;
pub use issue::{issue, self_signed, CertRequest};
pub use jwk::{
    jwk_to_spki_der, private_jwk, private_key_from_jwk, public_jwk, public_jwk_from_spki, PublicJwk,
};
pub use jws::{jws_sign, jws_verify};
pub use keys::{generate_key, spki_der, Curve, KeyKind, PrivateKey};
pub use pem::{bundle_to_pem, parse_pem_bundle, pem_encode, spki_from_pem};
pub use pfx::{build_pfx, build_truststore, parse_pfx};
pub use x509::{cert_info, order_chain, CertInfo};

/// A private key (if any) and certificates (DER, in input order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBundle {
    /// The private key, as PKCS#8.
    pub key: Option<PrivateKey>,
    /// DER certificates in the order they appeared.
    pub certs: Vec<Vec<u8>>,
}
