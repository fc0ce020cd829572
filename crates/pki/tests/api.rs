//! API behaviour that needs no external tool.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use pki::*;

fn leaf_and_key() -> (PrivateKey, Vec<u8>) {
    let key = generate_key(KeyKind::Ec(Curve::P256)).unwrap();
    let req = CertRequest {
        subject: "CN=app".into(),
        dns_names: vec!["app".into()],
        ip_addresses: vec![],
        is_ca: false,
        validity_days: 1,
    };
    let cert = self_signed(&req, &key).unwrap();
    (key, cert)
}

#[test]
fn pem_encode_layout() {
    let der: Vec<u8> = (0..=255u8).collect();
    let pem = pem_encode("CERTIFICATE", &der);
    let lines: Vec<&str> = pem.split('\n').collect();
    assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
    assert!(lines[1..lines.len() - 2].iter().all(|l| l.len() <= 64));
    assert!(lines[1..lines.len() - 3].iter().all(|l| l.len() == 64));
    assert_eq!(lines[lines.len() - 2], "-----END CERTIFICATE-----");
    assert_eq!(lines[lines.len() - 1], "", "trailing newline");
    assert!(!pem.contains('\r'));
    assert_eq!(pem_encode("X", &[]), "-----BEGIN X-----\n-----END X-----\n");
}

#[test]
fn pem_bundle_rules() {
    let (key, cert) = leaf_and_key();
    let (key2, cert2) = leaf_and_key();
    // CRLF, surrounding text and unrelated blocks are tolerated; certificate order is kept.
    let text = format!(
        "subject=CN=app\r\n{}\r\n{}junk\n{}{}",
        pem_encode("CERTIFICATE", &cert2),
        pem_encode("X509 CRL", &[1, 2, 3]),
        bundle_to_pem(Some(&key), &[]).replace('\n', "\r\n"),
        pem_encode("CERTIFICATE", &cert),
    );
    let b = parse_pem_bundle(&text).unwrap();
    assert_eq!(b.key.unwrap(), key);
    assert_eq!(b.certs, vec![cert2.clone(), cert.clone()]);

    let two = bundle_to_pem(Some(&key), &[]) + &bundle_to_pem(Some(&key2), &[]);
    assert!(matches!(
        parse_pem_bundle(&two),
        Err(PkiError::MultipleKeys)
    ));
    let enc = pem_encode("ENCRYPTED PRIVATE KEY", &[0x30, 0]);
    assert!(parse_pem_bundle(&enc).is_err());
    let unterminated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
    assert!(matches!(
        parse_pem_bundle(unterminated),
        Err(PkiError::Pem(_))
    ));
    let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
    assert!(matches!(parse_pem_bundle(legacy), Err(PkiError::Pem(_))));
    assert!(parse_pem_bundle("no pem here").unwrap().certs.is_empty());

    let pem = bundle_to_pem(Some(&key), &[cert.clone(), cert2.clone()]);
    let first_cert = pem.find("BEGIN CERTIFICATE").unwrap();
    assert!(pem.find("BEGIN PRIVATE KEY").unwrap() < first_cert);
    assert_eq!(
        bundle_to_pem(None, std::slice::from_ref(&cert)),
        pem_encode("CERTIFICATE", &cert)
    );
    assert_eq!(spki_from_pem(&pem).unwrap(), spki_der(&key).unwrap());
    assert_eq!(
        spki_from_pem(&pem_encode("PUBLIC KEY", &spki_der(&key2).unwrap())).unwrap(),
        spki_der(&key2).unwrap()
    );
    assert!(spki_from_pem("nothing").is_err());
}

#[test]
fn private_key_debug_is_redacted_and_errors_hold_no_secrets() {
    let (key, _) = leaf_and_key();
    assert_eq!(format!("{key:?}"), "PrivateKey(<redacted>)");
    let bundle = CertBundle {
        key: Some(key.clone()),
        certs: vec![],
    };
    assert!(format!("{bundle:?}").contains("PrivateKey(<redacted>)"));
    assert!(PrivateKey::from_pkcs8_der(vec![0x30, 0x03, 0x02, 0x01, 0x00]).is_err());
    // A tampered key must not echo its bytes in the error.
    let mut der = key.pkcs8_der().to_vec();
    der[0] = 0x31;
    let err = PrivateKey::from_pkcs8_der(der).unwrap_err().to_string();
    assert!(!err.contains("0x") && err.len() < 100, "{err}");
}

#[test]
fn curves_and_kinds() {
    for c in [Curve::P256, Curve::P384, Curve::P521] {
        assert_eq!(c.jwk_name().parse::<Curve>().unwrap(), c);
    }
    assert!("P-256K".parse::<Curve>().is_err());
    assert!(generate_key(KeyKind::Rsa { bits: 1024 }).is_err());
}

#[test]
fn jwk_errors_and_serialization() {
    let (key, _) = leaf_and_key();
    let jwk = public_jwk(&key).unwrap();
    let json = serde_json::to_string(&jwk).unwrap();
    assert!(!json.contains("null") && !json.contains("\"n\""), "{json}");
    assert!(!json.contains('='), "no padding: {json}");
    let oct = PublicJwk {
        kty: "oct".into(),
        n: None,
        e: None,
        crv: None,
        x: None,
        y: None,
    };
    assert!(matches!(jwk_to_spki_der(&oct), Err(PkiError::UnsupportedKeyType(k)) if k == "oct"));
    let mut missing = jwk.clone();
    missing.y = None;
    assert!(matches!(
        jwk_to_spki_der(&missing),
        Err(PkiError::InvalidJwk(_))
    ));
    let mut bad_curve = jwk.clone();
    bad_curve.crv = Some("P-384".into());
    assert!(jwk_to_spki_der(&bad_curve).is_err());
    // Key Vault style input: "EC-HSM" with "key_ops"/"kid" members is accepted.
    let mut value = serde_json::to_value(&jwk).unwrap();
    value["kty"] = "EC-HSM".into();
    value["kid"] = "https://v.vault.azure.net/keys/k/1".into();
    let parsed: PublicJwk = serde_json::from_value(value).unwrap();
    assert_eq!(jwk_to_spki_der(&parsed).unwrap(), spki_der(&key).unwrap());

    // private import: d that does not match x/y is rejected, without echoing it
    let mut private = private_jwk(&key).unwrap();
    let (other, _) = leaf_and_key();
    let other_d = private_jwk(&other).unwrap()["d"].clone();
    private["d"] = other_d.clone();
    let err = private_key_from_jwk(&private).unwrap_err().to_string();
    assert!(!err.contains(other_d.as_str().unwrap()), "{err}");
    assert!(matches!(
        private_key_from_jwk(&serde_json::json!({"kty": "oct", "k": "AAAA"})),
        Err(PkiError::UnsupportedKeyType(_))
    ));
    assert!(matches!(
        private_key_from_jwk(&serde_json::json!({"kty": "RSA", "n": "AQAB"})),
        Err(PkiError::InvalidJwk(_))
    ));
}

#[test]
fn order_chain_edge_cases() {
    let (_, cert) = leaf_and_key();
    assert_eq!(order_chain(&[]).unwrap(), Vec::<Vec<u8>>::new());
    assert_eq!(
        order_chain(std::slice::from_ref(&cert)).unwrap(),
        vec![cert.clone()]
    );
    // duplicates are ambiguous: original order
    let (_, other) = leaf_and_key();
    let dup = vec![cert.clone(), other.clone(), cert.clone()];
    assert_eq!(order_chain(&dup).unwrap(), dup);
    assert!(matches!(
        order_chain(&[vec![1, 2, 3]]),
        Err(PkiError::InvalidCertificate(_))
    ));
    assert!(cert_info(b"garbage").is_err());
}

#[test]
fn pfx_errors() {
    let (key, cert) = leaf_and_key();
    assert!(build_pfx(&key, &[]).is_err());
    assert!(matches!(parse_pfx(b"not a pfx", ""), Err(PkiError::Pfx(_))));
    let pfx = build_pfx(&key, std::slice::from_ref(&cert)).unwrap();
    let back = parse_pfx(&pfx, "").unwrap();
    assert_eq!(back.key.unwrap(), key);
    assert_eq!(back.certs, vec![cert]);
}
