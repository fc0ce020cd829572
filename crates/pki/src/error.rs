//! The crate's error type. Messages never contain key material or passwords.

/// Errors from certificate, key, PKCS#12 and JWK handling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A PEM block could not be decoded.
    #[error("malformed PEM: {0}")]
    Pem(String),
    /// A PEM bundle held more than one private key.
    #[error("PEM bundle contains more than one private key")]
    MultipleKeys,
    /// A private key could not be decoded or is inconsistent.
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// A public key (SPKI or JWK) could not be decoded.
    #[error("invalid public key: {0}")]
    InvalidPublicKey(String),
    /// A certificate could not be parsed.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// The PKCS#12 password is wrong (MAC check or decryption failed).
    #[error("PKCS#12 (PFX) password is incorrect")]
    PfxPassword,
    /// The PKCS#12 file is malformed or uses an unsupported feature.
    #[error("invalid PKCS#12 (PFX): {0}")]
    Pfx(String),
    /// A key type (JWK `kty` or SPKI algorithm) this crate does not handle.
    #[error("unsupported key type: {0}")]
    UnsupportedKeyType(String),
    /// An elliptic curve this crate does not handle.
    #[error("unsupported curve: {0}")]
    UnsupportedCurve(String),
    /// A signature algorithm this crate does not handle, or one that does not fit the key.
    #[error("unsupported signature algorithm: {0}")]
    UnsupportedAlgorithm(String),
    /// A JWK is missing a member or has a malformed one.
    #[error("invalid JWK: {0}")]
    InvalidJwk(String),
    /// A signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// Signing failed.
    #[error("signing failed: {0}")]
    Signing(String),
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    /// Building a certificate failed.
    #[error("certificate issuance failed: {0}")]
    Issue(String),
}
