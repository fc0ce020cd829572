//! JSON Web Keys (RFC 7517/7518) as Key Vault uses them: base64url without padding.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::der;
use crate::keys::{
    check_point, ec_to_pkcs8, pkcs1_to_pkcs8, public_parts, Curve, PrivateKey, PublicParts,
};
use crate::{KeyKind, PkiError};

/// The public members of an RSA or EC JWK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// "RSA" or "EC" ("RSA-HSM"/"EC-HSM" accepted on input).
    pub kty: String,
    /// RSA modulus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC curve name ("P-256", "P-384", "P-521").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// EC x coordinate (curve-size, zero-padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate (curve-size, zero-padded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn member<'a>(name: &str, v: Option<&'a String>) -> Result<&'a str, PkiError> {
    v.map(String::as_str)
        .ok_or_else(|| PkiError::InvalidJwk(format!("missing '{name}'")))
}

fn decode(name: &str, value: &str) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    // Accept padded input too; Key Vault never pads but other producers do.
    URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map(Zeroizing::new)
        .map_err(|_| PkiError::InvalidJwk(format!("'{name}' is not base64url")))
}

impl PublicJwk {
    pub(crate) fn from_parts(parts: &PublicParts) -> Self {
        match parts {
            PublicParts::Rsa { n, e } => PublicJwk {
                kty: "RSA".into(),
                n: Some(b64(der::strip_zeros(n))),
                e: Some(b64(der::strip_zeros(e))),
                crv: None,
                x: None,
                y: None,
            },
            PublicParts::Ec { curve, point } => {
                let len = curve.coordinate_len();
                let coords = point.get(1..).unwrap_or_default();
                let (x, y) = coords.split_at(len.min(coords.len()));
                PublicJwk {
                    kty: "EC".into(),
                    n: None,
                    e: None,
                    crv: Some(curve.jwk_name().into()),
                    x: Some(b64(x)),
                    y: Some(b64(y)),
                }
            }
        }
    }

    pub(crate) fn to_parts(&self) -> Result<PublicParts, PkiError> {
        match self.kty.as_str() {
            "RSA" | "RSA-HSM" => {
                let n = decode("n", member("n", self.n.as_ref())?)?;
                let e = decode("e", member("e", self.e.as_ref())?)?;
                crate::keys::check_rsa_public(der::strip_zeros(&n), &e)?;
                Ok(PublicParts::Rsa {
                    n: der::strip_zeros(&n).to_vec(),
                    e: der::strip_zeros(&e).to_vec(),
                })
            }
            "EC" | "EC-HSM" => {
                let curve: Curve = member("crv", self.crv.as_ref())?.parse()?;
                let x = decode("x", member("x", self.x.as_ref())?)?;
                let y = decode("y", member("y", self.y.as_ref())?)?;
                let point = ec_point(curve, &x, &y)?;
                Ok(PublicParts::Ec { curve, point })
            }
            other => Err(PkiError::UnsupportedKeyType(other.to_string())),
        }
    }
}

/// Builds the uncompressed point 04||x||y, left-padding short coordinates.
fn ec_point(curve: Curve, x: &[u8], y: &[u8]) -> Result<Vec<u8>, PkiError> {
    let len = curve.coordinate_len();
    // RFC 7518 requires full-size coordinates; tolerate a little leading-zero stripping by
    // non-conforming producers, but not a coordinate from another curve.
    let ok = |c: &[u8]| c.len() <= len && c.len() + 2 >= len;
    if !ok(x) || !ok(y) {
        return Err(PkiError::InvalidJwk(format!(
            "coordinates do not have the size of {curve}"
        )));
    }
    let (x, y) = (der::strip_zeros(x), der::strip_zeros(y));
    let mut point = vec![0u8; 1 + 2 * len];
    point[0] = 4;
    point[1 + len - x.len()..1 + len].copy_from_slice(x);
    point[1 + 2 * len - y.len()..].copy_from_slice(y);
    check_point(curve, &point)?;
    Ok(point)
}

/// The public JWK of a private key.
pub fn public_jwk(key: &PrivateKey) -> Result<PublicJwk, PkiError> {
    Ok(PublicJwk::from_parts(&public_parts(key)?))
}

/// The public JWK of a DER SubjectPublicKeyInfo.
pub fn public_jwk_from_spki(spki_der: &[u8]) -> Result<PublicJwk, PkiError> {
    Ok(PublicJwk::from_parts(&PublicParts::from_spki(spki_der)?))
}

/// DER SubjectPublicKeyInfo for an RSA or EC (P-256/384/521) JWK.
pub fn jwk_to_spki_der(jwk: &PublicJwk) -> Result<Vec<u8>, PkiError> {
    Ok(jwk.to_parts()?.to_spki())
}

fn str_member<'a>(jwk: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    jwk.get(name).and_then(serde_json::Value::as_str)
}

fn required(jwk: &serde_json::Value, name: &str) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let v =
        str_member(jwk, name).ok_or_else(|| PkiError::InvalidJwk(format!("missing '{name}'")))?;
    decode(name, v)
}

/// Imports a private JWK: RSA (n, e, d, p, q, dp, dq, qi; or n, e, d alone) or EC (crv, x, y, d).
/// The key is checked for consistency (the public part must match the private part).
pub fn private_key_from_jwk(jwk: &serde_json::Value) -> Result<PrivateKey, PkiError> {
    let kty = str_member(jwk, "kty").ok_or_else(|| PkiError::InvalidJwk("missing 'kty'".into()))?;
    match kty {
        "RSA" | "RSA-HSM" => rsa_from_jwk(jwk),
        "EC" | "EC-HSM" => {
            let public: PublicJwk = serde_json::from_value(jwk.clone())
                .map_err(|_| PkiError::InvalidJwk("malformed EC JWK".into()))?;
            let PublicParts::Ec { curve, point } = public.to_parts()? else {
                return Err(PkiError::InvalidJwk("kty does not match members".into()));
            };
            let d = required(jwk, "d")?;
            let key = ec_to_pkcs8(curve, &d, Some(&point))?;
            check_ec_pair(&key, curve)?;
            Ok(key)
        }
        other => Err(PkiError::UnsupportedKeyType(other.to_string())),
    }
}

fn rsa_from_jwk(jwk: &serde_json::Value) -> Result<PrivateKey, PkiError> {
    let n = required(jwk, "n")?;
    let e = required(jwk, "e")?;
    let d = required(jwk, "d")?;
    crate::keys::check_rsa_public(der::strip_zeros(&n), &e)?;
    // 0 < d < n (the `rsa` crate's prime recovery underflows on d = 0)
    let d_bits = crate::keys::bit_len(&d);
    if d_bits == 0 || d_bits > crate::keys::bit_len(&n) {
        return Err(PkiError::InvalidJwk(
            "RSA 'd' must be non-zero and not larger than 'n'".into(),
        ));
    }
    let crt = ["p", "q", "dp", "dq", "qi"];
    let key = if crt.iter().all(|m| jwk.get(*m).is_some()) {
        let mut parts: Vec<Zeroizing<Vec<u8>>> = Vec::with_capacity(9);
        parts.push(Zeroizing::new(der::uint(&[0])));
        for v in [&n, &e, &d] {
            parts.push(Zeroizing::new(der::uint(v)));
        }
        for m in crt {
            parts.push(Zeroizing::new(der::uint(&required(jwk, m)?)));
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        let pkcs1 = Zeroizing::new(der::seq(&refs));
        pkcs1_to_pkcs8(&pkcs1)?
    } else {
        rsa_from_n_e_d(&n, &e, &d)?
    };
    if let KeyKind::Rsa { bits } = key.kind() {
        if bits >= 2048 {
            ring::signature::RsaKeyPair::from_pkcs8(key.pkcs8_der())
                .map_err(|e| PkiError::InvalidKey(format!("RSA JWK is inconsistent: {e}")))?;
        }
    }
    Ok(key)
}

/// An RSA private key from a JWK without CRT parameters (the primes are recovered).
#[cfg(feature = "keygen")]
fn rsa_from_n_e_d(n: &[u8], e: &[u8], d: &[u8]) -> Result<PrivateKey, PkiError> {
    use rsa::pkcs8::EncodePrivateKey;
    use rsa::BoxedUint;
    let to_uint = |v: &[u8]| BoxedUint::from_be_slice_vartime(v);
    let key = rsa::RsaPrivateKey::from_components(to_uint(n), to_uint(e), to_uint(d), vec![])
        .map_err(|e| PkiError::InvalidKey(format!("RSA JWK: {e}")))?;
    let doc = key
        .to_pkcs8_der()
        .map_err(|e| PkiError::InvalidKey(format!("RSA JWK: {e}")))?;
    PrivateKey::from_pkcs8_der(doc.as_bytes().to_vec())
}

#[cfg(not(feature = "keygen"))]
fn rsa_from_n_e_d(_n: &[u8], _e: &[u8], _d: &[u8]) -> Result<PrivateKey, PkiError> {
    Err(PkiError::InvalidKey(
        "RSA JWK without p, q, dp, dq, qi: prime recovery is not built in (kvbridge-pki feature `keygen`)".into(),
    ))
}

fn check_ec_pair(key: &PrivateKey, curve: Curve) -> Result<(), PkiError> {
    let alg = match curve {
        Curve::P256 => &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        Curve::P384 => &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        Curve::P521 => {
            // ring has no P-521: recompute the public point from d and compare.
            let p8 = crate::keys::parse_pkcs8(key.pkcs8_der())?;
            let sec1 = crate::keys::parse_sec1(p8.inner, Some(curve))?;
            let sk = p521::SecretKey::from_slice(&sec1.d)
                .map_err(|_| PkiError::InvalidKey("P-521 private scalar out of range".into()))?;
            use p521::elliptic_curve::sec1::ToSec1Point;
            let derived = sk.public_key().to_sec1_point(false);
            if Some(derived.as_bytes()) != sec1.point.as_deref() {
                return Err(PkiError::InvalidKey(
                    "EC JWK public point does not match 'd'".into(),
                ));
            }
            return Ok(());
        }
    };
    let rng = ring::rand::SystemRandom::new();
    ring::signature::EcdsaKeyPair::from_pkcs8(alg, key.pkcs8_der(), &rng)
        .map_err(|e| PkiError::InvalidKey(format!("EC JWK is inconsistent: {e}")))?;
    Ok(())
}

/// The full private JWK of a key (RSA: n, e, d, p, q, dp, dq, qi; EC: crv, x, y, d), as a
/// JSON object. The returned value holds key material: do not log it.
pub fn private_jwk(key: &PrivateKey) -> Result<serde_json::Value, PkiError> {
    let p8 = crate::keys::parse_pkcs8(key.pkcs8_der())?;
    let public = public_jwk(key)?;
    let mut obj = match serde_json::to_value(&public) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return Err(PkiError::InvalidKey("cannot serialize JWK".into())),
    };
    match p8.kind {
        KeyKind::Rsa { .. } => {
            let mut r = der::Reader::new(der::Reader::new(p8.inner).read(der::TAG_SEQUENCE)?);
            r.read_uint()?;
            r.read_uint()?; // n
            r.read_uint()?; // e
            for name in ["d", "p", "q", "dp", "dq", "qi"] {
                obj.insert(name.into(), b64(r.read_uint()?).into());
            }
        }
        KeyKind::Ec(curve) => {
            let sec1 = crate::keys::parse_sec1(p8.inner, Some(curve))?;
            let len = curve.coordinate_len();
            let d = der::strip_zeros(&sec1.d);
            let mut padded = Zeroizing::new(vec![0u8; len]);
            padded[len.saturating_sub(d.len())..].copy_from_slice(d);
            obj.insert("d".into(), b64(&padded).into());
        }
    }
    Ok(serde_json::Value::Object(obj))
}
