//! Private keys (PKCS#8), key kinds, key generation and SubjectPublicKeyInfo handling.

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::der::{self, Reader};
use crate::PkiError;

/// A NIST elliptic curve supported by Key Vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
}

impl Curve {
    /// The JWK `crv` name: "P-256", "P-384" or "P-521".
    pub fn jwk_name(&self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    /// Length in bytes of a field element / scalar (JWK `x`, `y`, `d`).
    pub fn coordinate_len(&self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    pub(crate) fn oid(&self) -> &'static [u8] {
        match self {
            Curve::P256 => der::OID_P256,
            Curve::P384 => der::OID_P384,
            Curve::P521 => der::OID_P521,
        }
    }

    pub(crate) fn from_oid(oid: &[u8]) -> Result<Self, PkiError> {
        match oid {
            o if o == der::OID_P256 => Ok(Curve::P256),
            o if o == der::OID_P384 => Ok(Curve::P384),
            o if o == der::OID_P521 => Ok(Curve::P521),
            other => Err(PkiError::UnsupportedCurve(der::oid_to_string(other))),
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jwk_name())
    }
}

impl FromStr for Curve {
    type Err = PkiError;

    /// Accepts the JWK names ("P-256", "P-384", "P-521"; also Key Vault's "P-256K" is rejected).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "P-256" => Ok(Curve::P256),
            "P-384" => Ok(Curve::P384),
            "P-521" => Ok(Curve::P521),
            other => Err(PkiError::UnsupportedCurve(other.to_string())),
        }
    }
}

/// The type and size of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA with the given modulus size in bits.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// ECDSA on the given curve.
    Ec(Curve),
}

/// A private key held as PKCS#8 (RFC 5208 PrivateKeyInfo) DER, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey {
    der: Zeroizing<Vec<u8>>,
    kind: KeyKind,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    /// Checks PKCS#8 DER (RSA or EC P-256/P-384/P-521) and normalizes it to the encoding Go's
    /// `x509.MarshalPKCS8PrivateKey` writes (what the Azure provider renders): version 0,
    /// no attributes or embedded public key; RSA keeps its PKCS#1 body; EC becomes
    /// ECPrivateKey { 1, d padded to the curve size, [1] uncompressed public point } without
    /// inner curve parameters. Normalizing is idempotent.
    pub fn from_pkcs8_der(der: Vec<u8>) -> Result<Self, PkiError> {
        let input = Zeroizing::new(der);
        let p8 = parse_pkcs8(&input)?;
        let der = match p8.kind {
            KeyKind::Rsa { .. } => encode_rsa_pkcs8(p8.inner),
            KeyKind::Ec(curve) => {
                let sec1 = parse_sec1(p8.inner, Some(curve))?;
                encode_ec_pkcs8(curve, &sec1.d, sec1.point.as_deref())?
            }
        };
        Ok(Self { der, kind: p8.kind })
    }

    /// The PKCS#8 DER encoding.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.der
    }

    /// The key's type and size.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }
}

pub(crate) struct Pkcs8<'a> {
    pub(crate) kind: KeyKind,
    /// The inner private key: PKCS#1 RSAPrivateKey or SEC1 ECPrivateKey.
    pub(crate) inner: &'a [u8],
}

pub(crate) fn parse_pkcs8(input: &[u8]) -> Result<Pkcs8<'_>, PkiError> {
    let mut outer = Reader::new(input);
    let mut info = Reader::new(outer.read(der::TAG_SEQUENCE)?);
    if !outer.is_empty() {
        return Err(PkiError::InvalidKey("trailing data after PKCS#8".into()));
    }
    let version = info.read_uint()?;
    if version.len() > 1 || version.first().is_some_and(|v| *v > 1) {
        return Err(PkiError::InvalidKey("unsupported PKCS#8 version".into()));
    }
    let mut alg = Reader::new(info.read(der::TAG_SEQUENCE)?);
    let oid = alg.read(der::TAG_OID)?;
    let inner = info.read(der::TAG_OCTET_STRING)?;
    if oid == der::OID_RSA {
        let mut rsa = Reader::new(Reader::new(inner).read(der::TAG_SEQUENCE)?);
        rsa.read_uint()?; // version
        let n = rsa.read_uint()?;
        let e = rsa.read_uint()?;
        check_rsa_public(n, e).map_err(|e| PkiError::InvalidKey(e.to_string()))?;
        Ok(Pkcs8 {
            kind: KeyKind::Rsa { bits: bit_len(n) },
            inner,
        })
    } else if oid == der::OID_EC {
        let curve = Curve::from_oid(alg.read(der::TAG_OID)?)?;
        let mut ec = Reader::new(Reader::new(inner).read(der::TAG_SEQUENCE)?);
        ec.read_uint()?;
        let d = ec.read(der::TAG_OCTET_STRING)?;
        if d.is_empty() || d.len() > curve.coordinate_len() {
            return Err(PkiError::InvalidKey(
                "EC private scalar has the wrong size".into(),
            ));
        }
        Ok(Pkcs8 {
            kind: KeyKind::Ec(curve),
            inner,
        })
    } else {
        Err(PkiError::UnsupportedKeyType(der::oid_to_string(oid)))
    }
}

pub(crate) fn bit_len(magnitude: &[u8]) -> usize {
    let m = der::strip_zeros(magnitude);
    match m.first() {
        None => 0,
        Some(b) => m.len() * 8 - b.leading_zeros() as usize,
    }
}

/// Wraps a PKCS#1 RSAPrivateKey in PKCS#8.
pub(crate) fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Result<PrivateKey, PkiError> {
    PrivateKey::from_pkcs8_der(encode_rsa_pkcs8(pkcs1).to_vec())
}

fn encode_rsa_pkcs8(pkcs1: &[u8]) -> Zeroizing<Vec<u8>> {
    let alg = der::seq(&[
        &der::tlv(der::TAG_OID, der::OID_RSA),
        &der::tlv(der::TAG_NULL, &[]),
    ]);
    Zeroizing::new(der::seq(&[
        &der::uint(&[0]),
        &alg,
        &Zeroizing::new(der::tlv(der::TAG_OCTET_STRING, pkcs1)),
    ]))
}

/// Builds PKCS#8 for an EC key from its scalar and (optional) uncompressed public point.
pub(crate) fn ec_to_pkcs8(
    curve: Curve,
    d: &[u8],
    public_point: Option<&[u8]>,
) -> Result<PrivateKey, PkiError> {
    Ok(PrivateKey {
        der: encode_ec_pkcs8(curve, d, public_point)?,
        kind: KeyKind::Ec(curve),
    })
}

fn encode_ec_pkcs8(
    curve: Curve,
    d: &[u8],
    public_point: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    let len = curve.coordinate_len();
    let d = der::strip_zeros(d);
    if d.is_empty() || d.len() > len {
        return Err(PkiError::InvalidKey(
            "EC private scalar has the wrong size".into(),
        ));
    }
    let mut padded = Zeroizing::new(vec![0u8; len]);
    padded[len - d.len()..].copy_from_slice(d);
    // Without ring support for deriving P-256/P-384 public keys, such keys (e.g. from Java,
    // which omits the optional public key) are kept without one; P-521 derives it.
    let point = match (public_point, curve) {
        (Some(p), _) => Some(p.to_vec()),
        (None, Curve::P521) => Some(derive_ec_point(curve, &padded)?),
        (None, _) => None,
    };
    let mut sec1_parts: Vec<Zeroizing<Vec<u8>>> = vec![
        Zeroizing::new(der::uint(&[1])),
        Zeroizing::new(der::tlv(der::TAG_OCTET_STRING, &padded)),
    ];
    if let Some(point) = &point {
        check_point(curve, point).map_err(|_| {
            PkiError::InvalidKey(format!("{curve} public key must be an uncompressed point"))
        })?;
        sec1_parts.push(Zeroizing::new(der::tlv(0xa1, &der::bit_string(point))));
    }
    let sec1_refs: Vec<&[u8]> = sec1_parts.iter().map(|p| p.as_slice()).collect();
    let sec1 = Zeroizing::new(der::seq(&sec1_refs));
    let alg = der::seq(&[
        &der::tlv(der::TAG_OID, der::OID_EC),
        &der::tlv(der::TAG_OID, curve.oid()),
    ]);
    Ok(Zeroizing::new(der::seq(&[
        &der::uint(&[0]),
        &alg,
        &Zeroizing::new(der::tlv(der::TAG_OCTET_STRING, &sec1)),
    ])))
}

/// Converts a SEC1 ECPrivateKey (which must name its curve) to PKCS#8.
pub(crate) fn sec1_to_pkcs8(sec1: &[u8]) -> Result<PrivateKey, PkiError> {
    let parsed = parse_sec1(sec1, None)?;
    ec_to_pkcs8(parsed.curve, &parsed.d, parsed.point.as_deref())
}

pub(crate) struct Sec1 {
    pub(crate) curve: Curve,
    pub(crate) d: Zeroizing<Vec<u8>>,
    pub(crate) point: Option<Vec<u8>>,
}

/// Parses SEC1 ECPrivateKey; the curve comes from `curve` (PKCS#8 algorithm) or the [0] parameters.
pub(crate) fn parse_sec1(sec1: &[u8], curve: Option<Curve>) -> Result<Sec1, PkiError> {
    let mut r = Reader::new(Reader::new(sec1).read(der::TAG_SEQUENCE)?);
    if r.read_uint()? != [1] {
        return Err(PkiError::InvalidKey(
            "unsupported EC private key version".into(),
        ));
    }
    let d = Zeroizing::new(r.read(der::TAG_OCTET_STRING)?.to_vec());
    let mut curve = curve;
    if let Some(params) = r.read_optional(0xa0)? {
        let named = Curve::from_oid(Reader::new(params).read(der::TAG_OID)?)?;
        if curve.is_some_and(|c| c != named) {
            return Err(PkiError::InvalidKey("EC key parameters disagree".into()));
        }
        curve = Some(named);
    }
    let curve = curve
        .ok_or_else(|| PkiError::InvalidKey("EC private key does not name its curve".into()))?;
    let point = match r.read_optional(0xa1)? {
        Some(pk) => {
            Some(der::bit_string_bytes(Reader::new(pk).read(der::TAG_BIT_STRING)?)?.to_vec())
        }
        None => None,
    };
    Ok(Sec1 { curve, d, point })
}

fn derive_ec_point(curve: Curve, d: &[u8]) -> Result<Vec<u8>, PkiError> {
    match curve {
        Curve::P521 => {
            let sk = p521::SecretKey::from_slice(d)
                .map_err(|_| PkiError::InvalidKey("P-521 private scalar out of range".into()))?;
            Ok(uncompressed_p521(&sk))
        }
        other => Err(PkiError::InvalidKey(format!(
            "{other} private key without its public key is not supported"
        ))),
    }
}

fn uncompressed_p521(sk: &p521::SecretKey) -> Vec<u8> {
    use p521::elliptic_curve::sec1::ToSec1Point;
    sk.public_key().to_sec1_point(false).as_bytes().to_vec()
}

/// The public parts of a key, as found in an SPKI or derived from a private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicParts {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec { curve: Curve, point: Vec<u8> },
}

impl PublicParts {
    pub(crate) fn to_spki(&self) -> Vec<u8> {
        match self {
            PublicParts::Rsa { n, e } => {
                let alg = der::seq(&[
                    &der::tlv(der::TAG_OID, der::OID_RSA),
                    &der::tlv(der::TAG_NULL, &[]),
                ]);
                let pkcs1 = der::seq(&[&der::uint(n), &der::uint(e)]);
                der::seq(&[&alg, &der::bit_string(&pkcs1)])
            }
            PublicParts::Ec { curve, point } => {
                let alg = der::seq(&[
                    &der::tlv(der::TAG_OID, der::OID_EC),
                    &der::tlv(der::TAG_OID, curve.oid()),
                ]);
                der::seq(&[&alg, &der::bit_string(point)])
            }
        }
    }

    pub(crate) fn from_spki(spki: &[u8]) -> Result<Self, PkiError> {
        let bad = |_| PkiError::InvalidPublicKey("malformed SubjectPublicKeyInfo".into());
        let mut outer = Reader::new(spki);
        let mut r = Reader::new(outer.read(der::TAG_SEQUENCE).map_err(bad)?);
        let mut alg = Reader::new(r.read(der::TAG_SEQUENCE).map_err(bad)?);
        let oid = alg.read(der::TAG_OID).map_err(bad)?;
        let key = der::bit_string_bytes(r.read(der::TAG_BIT_STRING).map_err(bad)?).map_err(bad)?;
        if oid == der::OID_RSA {
            let mut k = Reader::new(Reader::new(key).read(der::TAG_SEQUENCE).map_err(bad)?);
            let n = k.read_uint().map_err(bad)?.to_vec();
            let e = k.read_uint().map_err(bad)?.to_vec();
            check_rsa_public(&n, &e)?;
            Ok(PublicParts::Rsa { n, e })
        } else if oid == der::OID_EC {
            let curve = Curve::from_oid(alg.read(der::TAG_OID).map_err(bad)?)?;
            check_point(curve, key)?;
            Ok(PublicParts::Ec {
                curve,
                point: key.to_vec(),
            })
        } else {
            Err(PkiError::UnsupportedKeyType(der::oid_to_string(oid)))
        }
    }
}

/// Checks an uncompressed EC point: the right size and a point on `curve` (not the identity).
pub(crate) fn check_point(curve: Curve, point: &[u8]) -> Result<(), PkiError> {
    if point.len() != 1 + 2 * curve.coordinate_len() || point.first() != Some(&4) {
        return Err(PkiError::InvalidPublicKey(format!(
            "{curve} public key must be an uncompressed point"
        )));
    }
    let on_curve = match curve {
        // ring validates a peer's public key (coordinates in range, on the curve) before an
        // ECDH agreement; an ephemeral agreement is the public way to ask it.
        Curve::P256 | Curve::P384 => {
            let alg = if curve == Curve::P256 {
                &ring::agreement::ECDH_P256
            } else {
                &ring::agreement::ECDH_P384
            };
            let rng = ring::rand::SystemRandom::new();
            let mine = ring::agreement::EphemeralPrivateKey::generate(alg, &rng)
                .map_err(|_| PkiError::InvalidPublicKey("cannot check the EC point".into()))?;
            let peer = ring::agreement::UnparsedPublicKey::new(alg, point);
            ring::agreement::agree_ephemeral(mine, &peer, |_| ()).is_ok()
        }
        Curve::P521 => p521::PublicKey::from_sec1_bytes(point).is_ok(),
    };
    if !on_curve {
        return Err(PkiError::InvalidPublicKey(format!(
            "{curve} public key is not a point on the curve"
        )));
    }
    Ok(())
}

/// Smallest RSA modulus accepted (anything below is degenerate or trivially factored).
pub const MIN_RSA_BITS: usize = 512;
/// Largest RSA modulus accepted (Key Vault's largest is 4096 bits).
pub const MAX_RSA_BITS: usize = 16384;

/// Sanity of an RSA public key (unsigned big-endian `n`, `e`): modulus odd and of
/// [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`] bits; exponent odd, at least 3, at most 64 bits and
/// below the modulus.
pub(crate) fn check_rsa_public(n: &[u8], e: &[u8]) -> Result<(), PkiError> {
    let bits = bit_len(n);
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
        return Err(PkiError::InvalidPublicKey(format!(
            "RSA modulus of {bits} bits (accepted: {MIN_RSA_BITS} to {MAX_RSA_BITS})"
        )));
    }
    if n.last().is_none_or(|b| b & 1 == 0) {
        return Err(PkiError::InvalidPublicKey("RSA modulus is even".into()));
    }
    let e = der::strip_zeros(e);
    let e_bits = bit_len(e);
    if !(2..=64).contains(&e_bits) || e.last().is_none_or(|b| b & 1 == 0) {
        return Err(PkiError::InvalidPublicKey(
            "RSA public exponent must be odd, at least 3 and at most 64 bits".into(),
        ));
    }
    Ok(())
}

/// RSA private components (unsigned big-endian) from PKCS#1.
pub(crate) struct RsaParts {
    pub(crate) n: Vec<u8>,
    pub(crate) e: Vec<u8>,
}

pub(crate) fn public_parts(key: &PrivateKey) -> Result<PublicParts, PkiError> {
    let p8 = parse_pkcs8(key.pkcs8_der())?;
    match p8.kind {
        KeyKind::Rsa { .. } => {
            let RsaParts { n, e } = rsa_public(p8.inner)?;
            Ok(PublicParts::Rsa { n, e })
        }
        KeyKind::Ec(curve) => {
            let sec1 = parse_sec1(p8.inner, Some(curve))?;
            let point = match sec1.point {
                Some(p) => p,
                None => derive_ec_point(curve, &sec1.d)?,
            };
            check_point(curve, &point)?;
            Ok(PublicParts::Ec { curve, point })
        }
    }
}

fn rsa_public(pkcs1: &[u8]) -> Result<RsaParts, PkiError> {
    let mut r = Reader::new(Reader::new(pkcs1).read(der::TAG_SEQUENCE)?);
    r.read_uint()?;
    let n = r.read_uint()?.to_vec();
    let e = r.read_uint()?.to_vec();
    Ok(RsaParts { n, e })
}

/// The DER SubjectPublicKeyInfo of a private key.
pub fn spki_der(key: &PrivateKey) -> Result<Vec<u8>, PkiError> {
    Ok(public_parts(key)?.to_spki())
}

#[cfg(feature = "keygen")]
fn generate_rsa(bits: usize) -> Result<PrivateKey, PkiError> {
    use getrandom::rand_core::UnwrapErr;
    use getrandom::SysRng;
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::new(&mut UnwrapErr(SysRng), bits)
        .map_err(|e| PkiError::KeyGeneration(e.to_string()))?;
    let doc = key
        .to_pkcs8_der()
        .map_err(|e| PkiError::KeyGeneration(e.to_string()))?;
    PrivateKey::from_pkcs8_der(doc.as_bytes().to_vec())
}

#[cfg(not(feature = "keygen"))]
fn generate_rsa(_bits: usize) -> Result<PrivateKey, PkiError> {
    Err(PkiError::KeyGeneration(
        "RSA key generation is not built in (kvbridge-pki feature `keygen`, enabled by the dev vault)".into(),
    ))
}

/// Generates a new key: RSA 2048/3072/4096 (with the `keygen` feature) or EC
/// P-256/P-384/P-521.
pub fn generate_key(kind: KeyKind) -> Result<PrivateKey, PkiError> {
    use getrandom::rand_core::UnwrapErr;
    use getrandom::SysRng;
    match kind {
        KeyKind::Rsa { bits } => {
            if !matches!(bits, 2048 | 3072 | 4096) {
                return Err(PkiError::KeyGeneration(format!(
                    "RSA key size {bits} is not one of 2048, 3072, 4096"
                )));
            }
            generate_rsa(bits)
        }
        KeyKind::Ec(Curve::P521) => {
            use p521::elliptic_curve::Generate;
            let sk = p521::SecretKey::generate_from_rng(&mut UnwrapErr(SysRng));
            let d = Zeroizing::new(sk.to_bytes().to_vec());
            ec_to_pkcs8(Curve::P521, &d, Some(&uncompressed_p521(&sk)))
        }
        KeyKind::Ec(curve) => {
            let alg = match curve {
                Curve::P256 => &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                _ => &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            };
            let rng = ring::rand::SystemRandom::new();
            let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng)
                .map_err(|_| PkiError::KeyGeneration(format!("{curve} key generation failed")))?;
            PrivateKey::from_pkcs8_der(doc.as_ref().to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_must_be_on_the_curve() {
        for curve in [Curve::P256, Curve::P384, Curve::P521] {
            let key = generate_key(KeyKind::Ec(curve)).unwrap();
            let PublicParts::Ec { point, .. } = public_parts(&key).unwrap() else {
                panic!("not EC");
            };
            check_point(curve, &point).unwrap();
            let mut off = point.clone();
            *off.last_mut().unwrap() ^= 1;
            assert!(check_point(curve, &off).is_err(), "{curve}");
            let mut zero = vec![0u8; point.len()];
            zero[0] = 4;
            assert!(check_point(curve, &zero).is_err(), "{curve}");
            // x and y out of range (all ones is above every field prime here)
            let mut big = vec![0xffu8; point.len()];
            big[0] = 4;
            assert!(check_point(curve, &big).is_err(), "{curve}");
        }
    }

    #[test]
    fn rsa_public_sanity() {
        let n = [0xc5u8; 128]; // 1024 bits, odd
        check_rsa_public(&n, &[1, 0, 1]).unwrap();
        check_rsa_public(&n, &[3]).unwrap();
        assert!(check_rsa_public(&[1], &[1, 0, 1]).is_err());
        assert!(check_rsa_public(&[0xc5; 63], &[1, 0, 1]).is_err()); // 504 bits
        assert!(check_rsa_public(&[0xc4; 128], &[1, 0, 1]).is_err()); // even
        assert!(check_rsa_public(&[0xc5; 2049], &[1, 0, 1]).is_err()); // > 16384 bits
        for e in [&[][..], &[1], &[2], &[1, 0, 0], &[0xff; 9]] {
            assert!(check_rsa_public(&n, e).is_err(), "{e:?}");
        }
    }
}
