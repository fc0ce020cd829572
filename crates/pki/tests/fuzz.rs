//! Property tests of the parsers that see untrusted input (vault values, seeds, uploads): PEM
//! bundles, PKCS#8 / SPKI / X.509 DER, PKCS#12 and JWK, on random and mutated inputs. They must
//! return an error or a value, never panic. Case counts keep the whole file at a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use pki::{CertRequest, Curve, KeyKind, PrivateKey};
use proptest::prelude::*;

const CASES_RSA: u32 = 256;

struct Fixture {
    keys: Vec<PrivateKey>,
    certs: Vec<Vec<u8>>,
    pfx: Vec<u8>,
    pem: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let keys: Vec<PrivateKey> = [
            KeyKind::Rsa { bits: 2048 },
            KeyKind::Ec(Curve::P256),
            KeyKind::Ec(Curve::P384),
            KeyKind::Ec(Curve::P521),
        ]
        .into_iter()
        .map(|k| pki::generate_key(k).unwrap())
        .collect();
        let req = |cn: &str, ca: bool| CertRequest {
            subject: format!("CN={cn}"),
            dns_names: vec![format!("{cn}.example")],
            ip_addresses: vec![],
            is_ca: ca,
            validity_days: 10,
        };
        let root = pki::self_signed(&req("root", true), &keys[1]).unwrap();
        let leaf = pki::issue(&req("leaf", false), &keys[0], &root, &keys[1]).unwrap();
        let certs = vec![leaf, root];
        let pfx = pki::build_pfx(&keys[0], &certs).unwrap();
        let pem = pki::bundle_to_pem(Some(&keys[0]), &certs);
        Fixture {
            keys,
            certs,
            pfx,
            pem,
        }
    })
}

/// Byte edits, an optional cut and an optional inserted run, applied to `base`.
fn mutate(
    base: &[u8],
    edits: &[(usize, u8)],
    cut: Option<usize>,
    insert: &(usize, Vec<u8>),
) -> Vec<u8> {
    let mut v = base.to_vec();
    for (i, b) in edits {
        if !v.is_empty() {
            let n = v.len();
            v[i % n] = *b;
        }
    }
    let at = insert.0 % (v.len() + 1);
    v.splice(at..at, insert.1.iter().copied());
    if let Some(c) = cut {
        let n = v.len();
        v.truncate(c % (n + 1));
    }
    v
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)
}

fn inserted() -> impl Strategy<Value = (usize, Vec<u8>)> {
    (any::<usize>(), proptest::collection::vec(any::<u8>(), 0..4))
}

/// Lines that look like PEM, in any order.
fn pem_line() -> impl Strategy<Value = String> {
    let labels = [
        "CERTIFICATE",
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "PUBLIC KEY",
        "RSA PUBLIC KEY",
        "X",
    ];
    prop_oneof![
        proptest::sample::select(labels.to_vec()).prop_map(|l| format!("-----BEGIN {l}-----")),
        proptest::sample::select(labels.to_vec()).prop_map(|l| format!("-----END {l}-----")),
        proptest::collection::vec(any::<u8>(), 0..48).prop_map(|b| STANDARD.encode(b)),
        "[ -~]{0,40}",
        Just("Proc-Type: 4,ENCRYPTED".to_string()),
    ]
}

/// Every PEM-facing entry point on `text`; results are ignored, panics are not.
fn parse_pem_all(text: &str) {
    if let Ok(bundle) = pki::parse_pem_bundle(text) {
        if let Some(k) = &bundle.key {
            let _ = pki::public_jwk(k);
            let _ = pki::spki_der(k);
            let _ = pki::private_jwk(k);
        }
        for c in &bundle.certs {
            let _ = pki::cert_info(c);
        }
        let _ = pki::order_chain(&bundle.certs);
    }
    let _ = pki::spki_from_pem(text);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn pem_like_text(lines in proptest::collection::vec(pem_line(), 0..24)) {
        parse_pem_all(&lines.join("\n"));
    }

    #[test]
    fn random_text(text in any::<String>()) {
        parse_pem_all(&text);
    }

    #[test]
    fn mutated_pem_bundle(e in edits(), cut in any::<Option<usize>>(), ins in inserted()) {
        let bytes = mutate(fixture().pem.as_bytes(), &e, cut, &ins);
        parse_pem_all(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_der_in_pem_blocks(which in 0usize..6, e in edits(), cut in any::<Option<usize>>(), ins in inserted()) {
        let f = fixture();
        let (label, der) = match which {
            0 => ("PRIVATE KEY", f.keys[0].pkcs8_der().to_vec()),
            1 => ("PRIVATE KEY", f.keys[1].pkcs8_der().to_vec()),
            2 => ("PRIVATE KEY", f.keys[3].pkcs8_der().to_vec()),
            3 => ("CERTIFICATE", f.certs[0].clone()),
            4 => ("PUBLIC KEY", pki::spki_der(&f.keys[2]).unwrap()),
            _ => ("PUBLIC KEY", pki::spki_der(&f.keys[0]).unwrap()),
        };
        let bad = mutate(&der, &e, cut, &ins);
        parse_pem_all(&pki::pem_encode(label, &bad));
        // the same DER straight into the DER entry points
        if let Ok(k) = PrivateKey::from_pkcs8_der(bad.clone()) {
            let _ = pki::public_jwk(&k);
            let _ = pki::private_jwk(&k);
        }
        let _ = pki::public_jwk_from_spki(&bad);
        let _ = pki::cert_info(&bad);
        for alg in ["RS256", "PS256", "ES256", "ES384"] {
            let _ = pki::jws_verify(alg, &bad, b"header.payload", &[1u8; 64]);
        }
    }

    #[test]
    fn random_der(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = PrivateKey::from_pkcs8_der(bytes.clone());
        let _ = pki::public_jwk_from_spki(&bytes);
        let _ = pki::cert_info(&bytes);
        let _ = pki::parse_pfx(&bytes, "");
    }

    #[test]
    fn random_jwk(kty in proptest::sample::select(vec!["RSA", "RSA-HSM", "EC", "EC-HSM", "oct"]),
                  crv in proptest::sample::select(vec!["P-256", "P-384", "P-521", "P-256K", ""]),
                  a in proptest::collection::vec(any::<u8>(), 0..300),
                  b in proptest::collection::vec(any::<u8>(), 0..70),
                  d in proptest::collection::vec(any::<u8>(), 0..70)) {
        let jwk = pki::PublicJwk {
            kty: kty.into(),
            n: Some(URL_SAFE_NO_PAD.encode(&a)),
            e: Some(URL_SAFE_NO_PAD.encode(&b)),
            crv: Some(crv.into()),
            x: Some(URL_SAFE_NO_PAD.encode(&b)),
            y: Some(URL_SAFE_NO_PAD.encode(&a[..a.len().min(70)])),
        };
        let _ = pki::jwk_to_spki_der(&jwk);
        let mut private = serde_json::to_value(&jwk).unwrap();
        private["d"] = URL_SAFE_NO_PAD.encode(&d).into();
        let _ = pki::private_key_from_jwk(&private);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES_RSA))]

    /// Well-shaped public parts with a random private exponent (no CRT members): the `rsa`
    /// crate's prime recovery must see only inputs it handles without panicking.
    #[test]
    fn rsa_jwk_with_random_private_exponent(n in proptest::collection::vec(any::<u8>(), 64..80),
                                            d in proptest::collection::vec(any::<u8>(), 0..80),
                                            e in proptest::sample::select(vec![vec![1u8, 0, 1], vec![3], vec![1, 0, 0, 1]])) {
        let mut n = n;
        n[0] |= 0x80;
        *n.last_mut().unwrap() |= 1;
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": URL_SAFE_NO_PAD.encode(&e),
            "d": URL_SAFE_NO_PAD.encode(&d),
        });
        let _ = pki::private_key_from_jwk(&jwk);
    }
}

proptest! {
    // Each PFX parse runs the KDFs (2 x 2048 iterations) when the MAC structure survives: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_pfx(e in edits(), cut in any::<Option<usize>>(), ins in inserted()) {
        let bad = mutate(&fixture().pfx, &e, cut, &ins);
        if let Ok(bundle) = pki::parse_pfx(&bad, "") {
            for c in &bundle.certs {
                let _ = pki::cert_info(c);
            }
        }
        let _ = pki::parse_pfx(&bad, "wrong");
    }
}

#[test]
fn unmutated_fixtures_parse() {
    let f = fixture();
    assert_eq!(pki::parse_pem_bundle(&f.pem).unwrap().certs, f.certs);
    assert_eq!(pki::parse_pfx(&f.pfx, "").unwrap().certs, f.certs);
}

/// Found by `random_jwk`: an RSA private JWK with `d` = 0 (and no CRT members) panicked inside
/// the `rsa` crate's prime recovery (integer underflow) instead of being an error.
#[test]
fn rsa_private_jwk_with_zero_d_is_an_error() {
    let mut n = vec![0xc5u8; 64];
    n[63] |= 1;
    for d in [&[][..], &[0], &[0, 0, 0]] {
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(&n),
            "e": "AQAB",
            "d": URL_SAFE_NO_PAD.encode(d),
        });
        assert!(pki::private_key_from_jwk(&jwk).is_err(), "{d:?}");
    }
}
