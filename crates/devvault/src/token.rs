//! Access tokens the dev vault issues and verifies: compact JWS (ES256) with Entra-like claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// Claims of an access token (a subset of what Entra ID puts in v1 app tokens).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub aud: String,
    pub iss: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub tid: String,
    pub appid: String,
    pub oid: String,
    pub sub: String,
    #[serde(default)]
    pub idtyp: String,
    #[serde(default)]
    pub ver: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token signature is invalid")]
    Signature,
    #[error("the token is expired")]
    Expired,
    #[error("the token is not yet valid")]
    NotYetValid,
    #[error("the token audience {0} is not accepted by this vault")]
    Audience(String),
}

pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
    rng: ring::rand::SystemRandom,
    /// Claims of tokens whose signature was verified, by the token's SHA-256: a client sends
    /// the same token with every request, and an ECDSA verification costs ~100x the hash.
    /// Times are still checked on every use.
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], Claims>>,
}

/// Verified tokens remembered; the memory is emptied when full.
const VERIFIED_TOKENS: usize = 4096;

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new P-256 key as PKCS#8 DER.
    pub fn generate_pkcs8() -> Result<Vec<u8>, ring::error::Unspecified> {
        let rng = ring::rand::SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|d| d.as_ref().to_vec())
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, ring::error::KeyRejected> {
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = B64URL.encode(&digest.as_ref()[..16]);
        Ok(Self {
            key,
            kid,
            rng,
            verified: Default::default(),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        let point = self.key.public_key().as_ref();
        // Uncompressed point: 0x04 || X(32) || Y(32).
        let (x, y) = if point.len() == 65 {
            (B64URL.encode(&point[1..33]), B64URL.encode(&point[33..65]))
        } else {
            (String::new(), String::new())
        };
        serde_json::json!({"keys": [{"kty": "EC", "use": "sig", "alg": "ES256", "kid": self.kid, "crv": "P-256", "x": x, "y": y}]})
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, ring::error::Unspecified> {
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(serde_json::to_vec(claims).map_err(|_| ring::error::Unspecified)?)
        );
        let sig = self.key.sign(&self.rng, input.as_bytes())?;
        Ok(format!("{input}.{}", B64URL.encode(sig.as_ref())))
    }

    /// Verifies signature and time; the caller checks the audience with [`audience_matches`].
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(
            ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref(),
        );
        let known = self
            .verified
            .lock()
            .ok()
            .and_then(|m| m.get(&hash).cloned());
        let claims = match known {
            Some(claims) => claims,
            None => {
                let claims = self.verify_signature(token)?;
                if let Ok(mut m) = self.verified.lock() {
                    if m.len() >= VERIFIED_TOKENS {
                        m.clear();
                    }
                    m.insert(hash, claims.clone());
                }
                claims
            }
        };
        // Entra allows five minutes of clock skew.
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + 300 {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    fn verify_signature(&self, token: &str) -> Result<Claims, TokenError> {
        let (input, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (_header, payload) = input.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = B64URL.decode(sig).map_err(|_| TokenError::Malformed)?;
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(input.as_bytes(), &sig)
        .map_err(|_| TokenError::Signature)?;
        let claims: Claims =
            serde_json::from_slice(&B64URL.decode(payload).map_err(|_| TokenError::Malformed)?)
                .map_err(|_| TokenError::Malformed)?;
        Ok(claims)
    }
}

/// Normalises a resource or scope: no `/.default`, no trailing slash, lower-case.
pub fn normalize_resource(resource: &str) -> String {
    let r = resource.trim();
    let r = r.strip_suffix("/.default").unwrap_or(r);
    r.trim_end_matches('/').to_ascii_lowercase()
}

/// True when `aud` names one of `accepted` (compared after [`normalize_resource`]).
pub fn audience_matches(aud: &str, accepted: &[String]) -> bool {
    let aud = normalize_resource(aud);
    accepted.iter().any(|a| normalize_resource(a) == aud)
}

/// Decodes the header and claims of an unverified compact JWS.
pub fn peek(token: &str) -> Option<(serde_json::Value, serde_json::Value, String, Vec<u8>)> {
    let mut parts = token.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header = serde_json::from_slice(&B64URL.decode(h).ok()?).ok()?;
    let claims = serde_json::from_slice(&B64URL.decode(p).ok()?).ok()?;
    let sig = B64URL.decode(s).ok()?;
    Some((header, claims, format!("{h}.{p}"), sig))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            aud: "https://vault.azure.net".into(),
            iss: "https://sts.windows.net/t/".into(),
            iat: 0,
            nbf: 0,
            exp,
            tid: "t".into(),
            appid: "a".into(),
            oid: "o".into(),
            sub: "o".into(),
            idtyp: "app".into(),
            ver: "1.0".into(),
        }
    }

    #[test]
    fn sign_verify_expiry_and_tamper() {
        let s = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
        let t = s.sign(&claims(1000)).unwrap();
        assert_eq!(s.verify(&t, 10).unwrap().appid, "a");
        assert_eq!(s.verify(&t, 1000).unwrap_err(), TokenError::Expired);
        let mut forged = t.clone();
        forged.replace_range(forged.len() - 5.., "AAAAA");
        assert_eq!(s.verify(&forged, 10).unwrap_err(), TokenError::Signature);
        let other = Signer::from_pkcs8(&Signer::generate_pkcs8().unwrap()).unwrap();
        assert_eq!(other.verify(&t, 10).unwrap_err(), TokenError::Signature);
    }

    #[test]
    fn audiences() {
        let acc = vec!["https://vault.azure.net".to_string()];
        assert!(audience_matches("https://vault.azure.net/", &acc));
        assert!(audience_matches("https://vault.azure.net/.default", &acc));
        assert!(!audience_matches("https://storage.azure.com", &acc));
    }
}
