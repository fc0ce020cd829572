//! JWS signing and verification (RFC 7515/7518) over ring.

use ring::signature::{self, EcdsaKeyPair, RsaKeyPair, UnparsedPublicKey};

use crate::keys::{Curve, PrivateKey, PublicParts};
use crate::{der, KeyKind, PkiError};

enum Alg {
    Rsa(
        &'static dyn signature::RsaEncoding,
        &'static signature::RsaParameters,
    ),
    Ec(
        Curve,
        &'static signature::EcdsaSigningAlgorithm,
        &'static signature::EcdsaVerificationAlgorithm,
    ),
}

fn alg(name: &str) -> Result<Alg, PkiError> {
    Ok(match name {
        "RS256" => Alg::Rsa(
            &signature::RSA_PKCS1_SHA256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        "RS384" => Alg::Rsa(
            &signature::RSA_PKCS1_SHA384,
            &signature::RSA_PKCS1_2048_8192_SHA384,
        ),
        "RS512" => Alg::Rsa(
            &signature::RSA_PKCS1_SHA512,
            &signature::RSA_PKCS1_2048_8192_SHA512,
        ),
        "PS256" => Alg::Rsa(
            &signature::RSA_PSS_SHA256,
            &signature::RSA_PSS_2048_8192_SHA256,
        ),
        "PS384" => Alg::Rsa(
            &signature::RSA_PSS_SHA384,
            &signature::RSA_PSS_2048_8192_SHA384,
        ),
        "PS512" => Alg::Rsa(
            &signature::RSA_PSS_SHA512,
            &signature::RSA_PSS_2048_8192_SHA512,
        ),
        "ES256" => Alg::Ec(
            Curve::P256,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signature::ECDSA_P256_SHA256_FIXED,
        ),
        "ES384" => Alg::Ec(
            Curve::P384,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &signature::ECDSA_P384_SHA384_FIXED,
        ),
        other => return Err(PkiError::UnsupportedAlgorithm(other.to_string())),
    })
}

/// Signs `signing_input` (the "header.payload" bytes) with a JWS algorithm:
/// RS256/384/512, PS256/384/512, ES256, ES384 (ECDSA signatures are fixed-size r||s).
pub fn jws_sign(
    alg_name: &str,
    key: &PrivateKey,
    signing_input: &[u8],
) -> Result<Vec<u8>, PkiError> {
    let rng = ring::rand::SystemRandom::new();
    match (alg(alg_name)?, key.kind()) {
        (Alg::Rsa(encoding, _), KeyKind::Rsa { .. }) => {
            let pair = RsaKeyPair::from_pkcs8(key.pkcs8_der())
                .map_err(|e| PkiError::Signing(format!("RSA key rejected: {e}")))?;
            let mut sig = vec![0u8; pair.public().modulus_len()];
            pair.sign(encoding, &rng, signing_input, &mut sig)
                .map_err(|_| PkiError::Signing(format!("{alg_name} signing failed")))?;
            Ok(sig)
        }
        (Alg::Ec(curve, signing, _), KeyKind::Ec(key_curve)) if curve == key_curve => {
            let pair = EcdsaKeyPair::from_pkcs8(signing, key.pkcs8_der(), &rng)
                .map_err(|e| PkiError::Signing(format!("EC key rejected: {e}")))?;
            let sig = pair
                .sign(&rng, signing_input)
                .map_err(|_| PkiError::Signing(format!("{alg_name} signing failed")))?;
            Ok(sig.as_ref().to_vec())
        }
        (_, kind) => Err(PkiError::UnsupportedAlgorithm(format!(
            "{alg_name} cannot be used with a {kind:?} key"
        ))),
    }
}

/// Verifies a JWS signature against a DER SubjectPublicKeyInfo.
/// Returns [`PkiError::BadSignature`] when the signature does not match.
pub fn jws_verify(
    alg_name: &str,
    spki_der: &[u8],
    signing_input: &[u8],
    sig: &[u8],
) -> Result<(), PkiError> {
    let parts = PublicParts::from_spki(spki_der)?;
    match (alg(alg_name)?, &parts) {
        (Alg::Rsa(_, params), PublicParts::Rsa { n, e }) => {
            let pkcs1 = der::seq(&[&der::uint(n), &der::uint(e)]);
            UnparsedPublicKey::new(params, pkcs1)
                .verify(signing_input, sig)
                .map_err(|_| PkiError::BadSignature)
        }
        (Alg::Ec(curve, _, verify), PublicParts::Ec { curve: c, point }) if curve == *c => {
            UnparsedPublicKey::new(verify, point)
                .verify(signing_input, sig)
                .map_err(|_| PkiError::BadSignature)
        }
        _ => Err(PkiError::UnsupportedAlgorithm(format!(
            "{alg_name} does not match the public key type"
        ))),
    }
}
