//! Golden tests: bytes for every type/format/encoding/alias/history case, with keys,
//! certificates and PFX files generated here, cross-checked with the `openssl` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pki::{Curve, KeyKind, PrivateKey};
use render::params::{parse_objects, ObjectKind, ObjectSpec};
use render::render::{
    render, FetchKey, Fetched, FetchedCert, FetchedKey, FetchedSecret, RenderError, RenderOptions,
    Rendered, VaultData, VersionInfo,
};
use testenv::chain::{chain, ec_chain3, rsa_chain3};
use zeroize::Zeroizing;

// ---------- fixtures ----------

fn objects(items: &[&str]) -> Vec<ObjectSpec> {
    let mut s = String::from("array:\n");
    for it in items {
        s.push_str("  - |\n");
        for line in it.lines() {
            s.push_str("    ");
            s.push_str(line);
            s.push('\n');
        }
    }
    parse_objects(&s).unwrap()
}

fn secret(value: &str, content_type: Option<&str>, kid: bool, version: &str) -> Fetched {
    Fetched::Secret(FetchedSecret {
        version: version.into(),
        value: Zeroizing::new(value.into()),
        content_type: content_type.map(str::to_string),
        kid: kid.then(|| format!("https://kv.vault.azure.net/keys/x/{version}")),
    })
}

fn latest(t: ObjectKind, name: &str) -> FetchKey {
    FetchKey {
        object_type: t,
        name: name.into(),
        version: None,
    }
}

fn data(entries: Vec<(FetchKey, Fetched)>) -> VaultData {
    VaultData {
        versions: BTreeMap::new(),
        objects: entries.into_iter().collect(),
    }
}

fn files(r: &Rendered) -> Vec<(String, u32, Vec<u8>)> {
    r.files
        .iter()
        .map(|f| (f.path.clone(), f.mode, f.contents.to_vec()))
        .collect()
}

fn one(items: &[&str], fetched: Fetched, opts: &RenderOptions) -> Result<Rendered, RenderError> {
    let objs = objects(items);
    let key = latest(objs[0].object_type, &objs[0].name);
    render(&objs, &data(vec![(key, fetched)]), opts)
}

fn pfx_secret(key: &PrivateKey, certs: &[Vec<u8>]) -> Fetched {
    let pfx = pki::build_pfx(key, certs).unwrap();
    secret(
        &STANDARD.encode(pfx),
        Some("application/x-pkcs12"),
        true,
        "v1",
    )
}

fn pem_of(key: Option<&PrivateKey>, certs: &[&Vec<u8>]) -> String {
    let owned: Vec<Vec<u8>> = certs.iter().map(|c| (*c).clone()).collect();
    pki::bundle_to_pem(key, &owned)
}

// ---------- openssl helpers ----------

fn openssl(args: &[&str], input: Option<&Path>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    if let Some(p) = input {
        cmd.arg("-in").arg(p);
    }
    let out = cmd.output().expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The PEM blocks of `text` (without any "Bag Attributes" text around them).
fn blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(line);
            c.push('\n');
            if line.starts_with("-----END ") {
                out.push(cur.take().unwrap());
            }
        }
    }
    out
}

// ---------- secrets ----------

#[test]
fn secret_plain_utf8_base64_hex() {
    let opts = RenderOptions::default();
    let r = one(
        &["objectName: s\nobjectType: secret"],
        secret("p@ss wörd\n", None, false, "v1"),
        &opts,
    )
    .unwrap();
    assert_eq!(
        files(&r),
        [("s".into(), 0o644, "p@ss wörd\n".as_bytes().to_vec())]
    );
    assert_eq!(r.versions[0].id, "secret/s");
    assert_eq!(r.versions[0].version, "v1");

    let r = one(
        &["objectName: s\nobjectType: secret\nobjectEncoding: base64\nobjectAlias: bin\nfilePermission: \"0600\""],
        secret("AAEC/w==", None, false, "v1"),
        &opts,
    )
    .unwrap();
    assert_eq!(files(&r), [("bin".into(), 0o600, vec![0, 1, 2, 255])]);
    assert_eq!(r.versions[0].id, "secret/s");

    let r = one(
        &["objectName: s\nobjectType: secret\nobjectEncoding: HEX"],
        secret("00ff7Fab", None, false, "v1"),
        &opts,
    )
    .unwrap();
    assert_eq!(files(&r)[0].2, vec![0x00, 0xff, 0x7f, 0xab]);

    let r = one(
        &["objectName: s\nobjectType: secret\nobjectEncoding: utf-8"],
        secret("AAEC/w==", None, false, "v1"),
        &opts,
    )
    .unwrap();
    assert_eq!(files(&r)[0].2, b"AAEC/w==");

    // a mount's default permission applies when filePermission is absent
    let o = RenderOptions {
        default_file_mode: 0o440,
        ..RenderOptions::default()
    };
    let r = one(
        &["objectName: s\nobjectType: secret"],
        secret("x", None, false, "v"),
        &o,
    )
    .unwrap();
    assert_eq!(r.files[0].mode, 0o440);
}

#[test]
fn decode_errors_name_the_object_and_hide_the_value() {
    let opts = RenderOptions::default();
    for (enc, value) in [
        ("base64", "not*base64secret"),
        ("base64", "aGVsbG8"),
        ("hex", "abcsecret"),
        ("hex", "abc"),
    ] {
        let e = one(
            &[&format!(
                "objectName: bad\nobjectType: secret\nobjectEncoding: {enc}"
            )],
            secret(value, None, false, "v1"),
            &opts,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("objects[0] (secret/bad)"), "{msg}");
        assert!(msg.contains("objectEncoding"), "{msg}");
        assert!(!msg.contains(value), "{msg}");
        assert!(!format!("{e:?}").contains(value));
    }
}

// ---------- keys ----------

#[test]
fn keys_match_openssl_pubout() {
    let dir = tempfile::tempdir().unwrap();
    for (i, kind) in [
        KeyKind::Rsa { bits: 2048 },
        KeyKind::Ec(Curve::P256),
        KeyKind::Ec(Curve::P384),
        KeyKind::Ec(Curve::P521),
    ]
    .into_iter()
    .enumerate()
    {
        let key = pki::generate_key(kind).unwrap();
        let mut jwk = pki::public_jwk(&key).unwrap();
        for hsm in [false, true] {
            if hsm {
                jwk.kty = format!("{}-HSM", jwk.kty);
            }
            let r = one(
                &["objectName: k\nobjectType: key\nobjectAlias: pub.pem"],
                Fetched::Key(FetchedKey {
                    version: "kv1".into(),
                    jwk: jwk.clone(),
                }),
                &RenderOptions::default(),
            )
            .unwrap();
            let ours = String::from_utf8(r.files[0].contents.to_vec()).unwrap();
            assert!(ours.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{ours}");
            assert_eq!(r.files[0].path, "pub.pem");
            assert_eq!(r.versions[0].id, "key/k");
            assert_eq!(r.versions[0].version, "kv1");
            // independent: openssl derives the public key from the private key
            let kp = dir.path().join(format!("k{i}.pem"));
            std::fs::write(&kp, pki::pem_encode("PRIVATE KEY", key.pkcs8_der())).unwrap();
            let theirs = openssl(&["pkey", "-pubout"], Some(&kp));
            assert_eq!(ours, theirs, "{kind:?}");
        }
    }
}

#[test]
fn unsupported_key_type_is_a_clear_error() {
    let jwk = pki::PublicJwk {
        kty: "oct".into(),
        n: None,
        e: None,
        crv: None,
        x: None,
        y: None,
    };
    let e = one(
        &["objectName: sym\nobjectType: key"],
        Fetched::Key(FetchedKey {
            version: "v".into(),
            jwk,
        }),
        &RenderOptions::default(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("objects[0] (key/sym)") && msg.contains("\"oct\""),
        "{msg}"
    );
}

// ---------- certs ----------

#[test]
fn cert_is_leaf_pem_like_openssl() {
    let c = ec_chain3();
    let r = one(
        &["objectName: c\nobjectType: cert"],
        Fetched::Cert(FetchedCert {
            version: "cv".into(),
            cer_der: c.certs[0].clone(),
        }),
        &RenderOptions::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("leaf.der");
    std::fs::write(&p, &c.certs[0]).unwrap();
    let theirs = openssl(&["x509", "-inform", "DER"], Some(&p));
    assert_eq!(
        String::from_utf8(r.files[0].contents.to_vec()).unwrap(),
        theirs
    );
    assert_eq!(r.versions[0].id, "cert/c");
}

// ---------- certificate-backed secrets ----------

#[test]
fn pfx_to_pem_orders_chain_for_every_shuffle() {
    let opts = RenderOptions::default();
    for c in [rsa_chain3(), ec_chain3()] {
        let [leaf, inter, root] = [&c.certs[0], &c.certs[1], &c.certs[2]];
        let expected = pem_of(Some(&c.keys[0]), &[leaf, inter, root]);
        for order in [
            [leaf, inter, root],
            [root, inter, leaf],
            [inter, root, leaf],
            [root, leaf, inter],
            [leaf, root, inter],
            [inter, leaf, root],
        ] {
            let certs: Vec<Vec<u8>> = order.iter().map(|c| (*c).clone()).collect();
            let r = one(
                &["objectName: tls\nobjectType: secret"],
                pfx_secret(&c.keys[0], &certs),
                &opts,
            )
            .unwrap();
            assert_eq!(r.files.len(), 1);
            assert_eq!(
                String::from_utf8(r.files[0].contents.to_vec()).unwrap(),
                expected
            );
            assert_eq!(r.versions[0].id, "secret/tls");

            // construct_pem_chain off: PFX order
            let off = RenderOptions {
                construct_pem_chain: false,
                ..RenderOptions::default()
            };
            let r = one(
                &["objectName: tls\nobjectType: secret"],
                pfx_secret(&c.keys[0], &certs),
                &off,
            )
            .unwrap();
            assert_eq!(
                String::from_utf8(r.files[0].contents.to_vec()).unwrap(),
                pem_of(Some(&c.keys[0]), &order)
            );
        }
    }
}

#[test]
fn pfx_chains_of_one_and_two_and_incomplete() {
    let opts = RenderOptions::default();
    for kind in [KeyKind::Rsa { bits: 2048 }, KeyKind::Ec(Curve::P384)] {
        let c1 = chain(kind, 1, "one");
        let r = one(
            &["objectName: s\nobjectType: secret"],
            pfx_secret(&c1.keys[0], &c1.certs),
            &opts,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(r.files[0].contents.to_vec()).unwrap(),
            pem_of(Some(&c1.keys[0]), &[&c1.certs[0]])
        );
        let c2 = chain(kind, 2, "two");
        let shuffled = vec![c2.certs[1].clone(), c2.certs[0].clone()];
        let r = one(
            &["objectName: s\nobjectType: secret"],
            pfx_secret(&c2.keys[0], &shuffled),
            &opts,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(r.files[0].contents.to_vec()).unwrap(),
            pem_of(Some(&c2.keys[0]), &[&c2.certs[0], &c2.certs[1]])
        );
    }
    // incomplete chain (intermediate missing): original order kept
    let c = rsa_chain3();
    let incomplete = vec![c.certs[2].clone(), c.certs[0].clone()];
    let r = one(
        &["objectName: s\nobjectType: secret"],
        pfx_secret(&c.keys[0], &incomplete),
        &opts,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(r.files[0].contents.to_vec()).unwrap(),
        pem_of(Some(&c.keys[0]), &[&c.certs[2], &c.certs[0]])
    );
    // unrelated extra certificate: original order kept
    let other = ec_chain3();
    let mixed = vec![
        c.certs[1].clone(),
        other.certs[2].clone(),
        c.certs[0].clone(),
    ];
    let r = one(
        &["objectName: s\nobjectType: secret"],
        pfx_secret(&c.keys[0], &mixed),
        &opts,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(r.files[0].contents.to_vec()).unwrap(),
        pem_of(
            Some(&c.keys[0]),
            &[&c.certs[1], &other.certs[2], &c.certs[0]]
        )
    );
}

#[test]
fn pfx_decoding_matches_openssl_pkcs12() {
    let dir = tempfile::tempdir().unwrap();
    for (i, c) in [rsa_chain3(), ec_chain3()].into_iter().enumerate() {
        let certs = vec![c.certs[2].clone(), c.certs[0].clone(), c.certs[1].clone()];
        let pfx = pki::build_pfx(&c.keys[0], &certs).unwrap();
        let p = dir.path().join(format!("x{i}.pfx"));
        std::fs::write(&p, &pfx).unwrap();
        let theirs = openssl(&["pkcs12", "-passin", "pass:", "-nodes"], Some(&p));
        let theirs = blocks(&theirs);
        let r = one(
            &["objectName: s\nobjectType: secret"],
            secret(
                &STANDARD.encode(&pfx),
                Some("application/x-pkcs12"),
                true,
                "v1",
            ),
            &RenderOptions {
                construct_pem_chain: false,
                ..RenderOptions::default()
            },
        )
        .unwrap();
        let ours = blocks(std::str::from_utf8(&r.files[0].contents).unwrap());
        assert_eq!(ours.len(), 4);
        assert!(ours[0].starts_with("-----BEGIN PRIVATE KEY-----"));
        // openssl prints the key as PKCS#8 PRIVATE KEY too: same key block, same certificates
        let their_key: Vec<&String> = theirs
            .iter()
            .filter(|b| b.contains("PRIVATE KEY"))
            .collect();
        assert_eq!(their_key, vec![&ours[0]]);
        let mut their_certs: Vec<&String> = theirs
            .iter()
            .filter(|b| b.contains("CERTIFICATE"))
            .collect();
        let mut our_certs: Vec<&String> = ours[1..].iter().collect();
        their_certs.sort();
        our_certs.sort();
        assert_eq!(their_certs, our_certs);
    }
}

#[test]
fn pfx_format_keeps_base64_or_writes_raw_bytes() {
    let c = ec_chain3();
    let pfx = pki::build_pfx(&c.keys[0], &c.certs).unwrap();
    let b64 = STANDARD.encode(&pfx);
    let fetched = secret(&b64, Some("application/x-pkcs12"), true, "v1");
    let r = one(
        &["objectName: s\nobjectType: secret\nobjectFormat: pfx"],
        fetched.clone(),
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(files(&r), [("s".into(), 0o644, b64.as_bytes().to_vec())]);
    let r = one(
        &["objectName: s\nobjectType: secret\nobjectFormat: PFX\nobjectEncoding: base64\nobjectAlias: s.pfx"],
        fetched,
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(files(&r), [("s.pfx".into(), 0o644, pfx.clone())]);
    // the raw bytes are a PFX openssl reads with an empty password
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.pfx");
    std::fs::write(&p, &r.files[0].contents[..]).unwrap();
    let out = openssl(&["pkcs12", "-passin", "pass:", "-nokeys"], Some(&p));
    assert_eq!(blocks(&out).len(), 3);
}

#[test]
fn pem_content_type_is_unchanged() {
    let c = rsa_chain3();
    // a PEM bundle as Key Vault stores it: key, then the chain in whatever order it was imported
    let text = pem_of(Some(&c.keys[0]), &[&c.certs[2], &c.certs[0], &c.certs[1]]);
    let r = one(
        &["objectName: s\nobjectType: secret"],
        secret(&text, Some("application/x-pem-file"), true, "v9"),
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(files(&r), [("s".into(), 0o644, text.as_bytes().to_vec())]);
    assert_eq!(r.versions[0].version, "v9");
    // objectFormat pfx on a PEM certificate: still unchanged
    let r = one(
        &["objectName: s\nobjectType: secret\nobjectFormat: pfx"],
        secret(&text, Some("application/x-pem-file"), true, "v9"),
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(r.files[0].contents.to_vec(), text.as_bytes());
    // the same text without kid is a plain secret: unchanged too
    let r = one(
        &["objectName: s\nobjectType: secret"],
        secret(&text, Some("application/x-pem-file"), false, "v9"),
        &RenderOptions::default(),
    )
    .unwrap();
    assert_eq!(r.files[0].contents.to_vec(), text.as_bytes());
}

#[test]
fn separate_cert_and_key_files() {
    let c = ec_chain3();
    let opts = RenderOptions {
        write_cert_and_key_in_separate_files: true,
        ..RenderOptions::default()
    };
    let shuffled = vec![c.certs[1].clone(), c.certs[2].clone(), c.certs[0].clone()];
    let r = one(
        &["objectName: s\nobjectType: secret\nobjectAlias: tls\nfilePermission: \"0640\""],
        pfx_secret(&c.keys[0], &shuffled),
        &opts,
    )
    .unwrap();
    let key_pem = pki::pem_encode("PRIVATE KEY", c.keys[0].pkcs8_der());
    let crt = pem_of(None, &[&c.certs[0], &c.certs[1], &c.certs[2]]);
    assert_eq!(
        files(&r),
        [
            ("tls".into(), 0o640, format!("{key_pem}{crt}").into_bytes()),
            ("tls.crt".into(), 0o640, crt.clone().into_bytes()),
            ("tls.key".into(), 0o640, key_pem.clone().into_bytes()),
        ]
    );
    assert_eq!(r.versions.len(), 1);

    // PEM content type: split the stored text
    let text = pem_of(Some(&c.keys[0]), &[&c.certs[0], &c.certs[1]]);
    let r = one(
        &["objectName: s\nobjectType: secret"],
        secret(&text, Some("application/x-pem-file"), true, "v1"),
        &opts,
    )
    .unwrap();
    assert_eq!(r.files[1].path, "s.crt");
    assert_eq!(
        r.files[1].contents.to_vec(),
        pem_of(None, &[&c.certs[0], &c.certs[1]]).into_bytes()
    );
    assert_eq!(r.files[2].contents.to_vec(), key_pem.into_bytes());

    // not for pfx output, plain secrets, keys or certs
    let r = one(
        &["objectName: s\nobjectType: secret\nobjectFormat: pfx"],
        pfx_secret(&c.keys[0], &c.certs),
        &opts,
    )
    .unwrap();
    assert_eq!(r.files.len(), 1);
    let r = one(
        &["objectName: s\nobjectType: secret"],
        secret("x", None, false, "v"),
        &opts,
    )
    .unwrap();
    assert_eq!(r.files.len(), 1);

    // clash of an extra file with another object's file: error naming both objects
    let objs = objects(&[
        "objectName: s\nobjectType: secret\nobjectAlias: tls",
        "objectName: t\nobjectType: secret\nobjectAlias: tls.key",
    ]);
    let d = data(vec![
        (
            latest(ObjectKind::Secret, "s"),
            pfx_secret(&c.keys[0], &c.certs),
        ),
        (
            latest(ObjectKind::Secret, "t"),
            secret("x", None, false, "v"),
        ),
    ]);
    let e = render(&objs, &d, &opts).unwrap_err();
    assert!(matches!(e, RenderError::DuplicatePath { .. }), "{e}");
    assert!(e.to_string().contains("tls.key"), "{e}");
}

#[test]
fn cert_backed_secret_errors() {
    let opts = RenderOptions::default();
    let e = one(
        &["objectName: s\nobjectType: secret"],
        secret("abc", Some("application/json"), true, "v"),
        &opts,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("objects[0] (secret/s): contentType"),
        "{e}"
    );
    let e = one(
        &["objectName: s\nobjectType: secret"],
        secret("abc", None, true, "v"),
        &opts,
    )
    .unwrap_err();
    assert!(e.to_string().contains("contentType"), "{e}");
    let e = one(
        &["objectName: s\nobjectType: secret"],
        secret("!!!", Some("application/x-pkcs12"), true, "v"),
        &opts,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("objects[0] (secret/s): value"),
        "{e}"
    );
    let e = one(
        &["objectName: s\nobjectType: secret"],
        secret("AAAA", Some("application/x-pkcs12"), true, "v"),
        &opts,
    )
    .unwrap_err();
    assert!(e.to_string().contains("PFX"), "{e}");
    // objectEncoding applies after PEM conversion, as in the Azure provider
    let c = ec_chain3();
    let e = one(
        &["objectName: s\nobjectType: secret\nobjectEncoding: base64"],
        pfx_secret(&c.keys[0], &c.certs),
        &opts,
    )
    .unwrap_err();
    assert!(e.to_string().contains("objectEncoding"), "{e}");
    // wrong fetched type
    let e = one(
        &["objectName: s\nobjectType: secret"],
        Fetched::Cert(FetchedCert {
            version: "v".into(),
            cer_der: c.certs[0].clone(),
        }),
        &opts,
    )
    .unwrap_err();
    assert!(e.to_string().contains("objectType"), "{e}");
    // missing data
    let objs = objects(&["objectName: s\nobjectType: secret\nobjectVersion: abc"]);
    let e = render(&objs, &VaultData::default(), &opts).unwrap_err();
    assert!(e.to_string().contains("\"abc\" was not fetched"), "{e}");
}

/// Issue 13.9: a certificate-backed PEM secret that is not a PEM key + certificates is an error
/// naming the object (it was written as is), and the value never appears in the message.
#[test]
fn garbage_pem_in_certificate_backed_secret_is_an_error() {
    let opts = RenderOptions::default();
    let c = rsa_chain3();
    let key_only = pki::pem_encode("PRIVATE KEY", c.keys[0].pkcs8_der());
    let bad_cert = format!(
        "{key_only}{}",
        pki::pem_encode("CERTIFICATE", b"not a certificate hunter2")
    );
    let cases: Vec<(&str, String)> = vec![
        ("not PEM at all", "hunter2 is not a certificate".to_string()),
        (
            "no END line",
            "-----BEGIN CERTIFICATE-----\nMIIB\n".to_string(),
        ),
        (
            "bad base64",
            "-----BEGIN CERTIFICATE-----\n!!!hunter2\n-----END CERTIFICATE-----\n".to_string(),
        ),
        ("key without certificate", key_only.clone()),
        ("certificate that does not parse", bad_cert),
        (
            "private key that does not parse",
            pki::pem_encode("PRIVATE KEY", b"hunter2 garbage"),
        ),
    ];
    for (what, text) in cases {
        let e = one(
            &["objectName: tls\nobjectType: secret"],
            secret(&text, Some("application/x-pem-file"), true, "v1"),
            &opts,
        )
        .expect_err(what);
        let msg = e.to_string();
        assert!(
            msg.contains("objects[0] (secret/tls): value"),
            "{what}: {msg}"
        );
        assert!(!msg.contains("hunter2"), "{what}: value leaked: {msg}");
    }
    // a certificate alone (non-exportable key) is fine and still written as is
    let cert_only = pem_of(None, &[&c.certs[0]]);
    let r = one(
        &["objectName: tls\nobjectType: secret"],
        secret(&cert_only, Some("application/x-pem-file"), true, "v1"),
        &opts,
    )
    .unwrap();
    assert_eq!(r.files[0].contents.to_vec(), cert_only.as_bytes());
}

fn key_object(jwk: pki::PublicJwk) -> Result<Rendered, RenderError> {
    one(
        &["objectName: k\nobjectType: key"],
        Fetched::Key(FetchedKey {
            version: "v".into(),
            jwk,
        }),
        &RenderOptions::default(),
    )
}

fn rsa_jwk(n: &[u8], e: &[u8]) -> pki::PublicJwk {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    pki::PublicJwk {
        kty: "RSA".into(),
        n: Some(URL_SAFE_NO_PAD.encode(n)),
        e: Some(URL_SAFE_NO_PAD.encode(e)),
        crv: None,
        x: None,
        y: None,
    }
}

/// Issue 13.9: degenerate public keys from the vault (RSA n=1, even or tiny moduli, silly
/// exponents, EC points off the curve) are errors naming the object, not rendered PEM.
#[test]
fn degenerate_keys_are_rejected() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let good = pki::public_jwk(&rsa_chain3().keys[0]).unwrap();
    key_object(good.clone()).unwrap();
    let n = URL_SAFE_NO_PAD.decode(good.n.as_deref().unwrap()).unwrap();
    let mut even = n.clone();
    *even.last_mut().unwrap() &= 0xfe;
    let cases: Vec<(&str, pki::PublicJwk)> = vec![
        ("n = 1", rsa_jwk(&[1], &[1, 0, 1])),
        ("256-bit modulus", rsa_jwk(&[0xc5; 32], &[1, 0, 1])),
        ("even modulus", rsa_jwk(&even, &[1, 0, 1])),
        ("e = 1", rsa_jwk(&n, &[1])),
        ("even e", rsa_jwk(&n, &[1, 0, 0])),
        ("huge e", rsa_jwk(&n, &[0xff; 16])),
    ];
    for (what, jwk) in cases {
        let msg = key_object(jwk).expect_err(what).to_string();
        assert!(msg.contains("objects[0] (key/k): jwk"), "{what}: {msg}");
    }
    let ec = pki::public_jwk(&ec_chain3().keys[0]).unwrap();
    key_object(ec.clone()).unwrap();
    let mut y = URL_SAFE_NO_PAD.decode(ec.y.as_deref().unwrap()).unwrap();
    *y.last_mut().unwrap() ^= 1;
    let off_curve = pki::PublicJwk {
        y: Some(URL_SAFE_NO_PAD.encode(&y)),
        ..ec.clone()
    };
    let msg = key_object(off_curve).unwrap_err().to_string();
    assert!(
        msg.contains("objects[0] (key/k): jwk") && msg.contains("not a point on the curve"),
        "{msg}"
    );
    let zero = pki::PublicJwk {
        x: Some(URL_SAFE_NO_PAD.encode([0u8; 32])),
        y: Some(URL_SAFE_NO_PAD.encode([0u8; 32])),
        ..ec
    };
    assert!(key_object(zero).is_err());
}

// ---------- version history ----------

fn vi(list: &[(&str, bool)]) -> Vec<VersionInfo> {
    list.iter()
        .map(|(v, e)| VersionInfo {
            version: v.to_string(),
            enabled: *e,
        })
        .collect()
}

#[test]
fn version_history_files_and_ids() {
    let objs = objects(&[
        "objectName: s\nobjectType: secret\nobjectVersionHistory: 3\nobjectAlias: hist",
        "objectName: c\nobjectType: cert\nobjectVersionHistory: 2\nobjectVersion: c2",
        "objectName: k\nobjectType: key\nobjectVersionHistory: 5",
        "objectName: one\nobjectType: secret\nobjectVersionHistory: 1",
    ]);
    let ec = ec_chain3();
    let key = pki::generate_key(KeyKind::Ec(Curve::P256)).unwrap();
    let mut d = VaultData::default();
    d.versions.insert(
        (ObjectKind::Secret, "s".into()),
        vi(&[
            ("s5", true),
            ("s4", false),
            ("s3", true),
            ("s2", true),
            ("s1", true),
        ]),
    );
    d.versions.insert(
        (ObjectKind::Certificate, "c".into()),
        vi(&[("c3", true), ("c2", true), ("c1", true)]),
    );
    d.versions.insert(
        (ObjectKind::Key, "k".into()),
        vi(&[("k2", true), ("k1", false)]),
    );
    for v in ["s5", "s3", "s2"] {
        d.objects.insert(
            FetchKey {
                object_type: ObjectKind::Secret,
                name: "s".into(),
                version: Some(v.into()),
            },
            secret(&format!("value-{v}"), None, false, v),
        );
    }
    for (v, i) in [("c2", 0), ("c1", 1)] {
        d.objects.insert(
            FetchKey {
                object_type: ObjectKind::Certificate,
                name: "c".into(),
                version: Some(v.into()),
            },
            Fetched::Cert(FetchedCert {
                version: v.into(),
                cer_der: ec.certs[i].clone(),
            }),
        );
    }
    d.objects.insert(
        FetchKey {
            object_type: ObjectKind::Key,
            name: "k".into(),
            version: Some("k2".into()),
        },
        Fetched::Key(FetchedKey {
            version: "k2".into(),
            jwk: pki::public_jwk(&key).unwrap(),
        }),
    );
    d.objects.insert(
        latest(ObjectKind::Secret, "one"),
        secret("single", None, false, "o1"),
    );

    // the plan agrees with what render needs
    let (need, listings) = render::render::needed_fetches(&objs, &d).unwrap();
    assert!(
        need.is_empty() && listings.is_empty(),
        "{need:?} {listings:?}"
    );

    let r = render(&objs, &d, &RenderOptions::default()).unwrap();
    let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        ["hist/0", "hist/1", "hist/2", "c/0", "c/1", "k/0", "one"]
    );
    assert_eq!(r.files[0].contents.to_vec(), b"value-s5");
    assert_eq!(r.files[1].contents.to_vec(), b"value-s3");
    assert_eq!(r.files[2].contents.to_vec(), b"value-s2");
    assert_eq!(
        r.files[3].contents.to_vec(),
        pki::pem_encode("CERTIFICATE", &ec.certs[0]).into_bytes()
    );
    assert_eq!(
        r.files[4].contents.to_vec(),
        pki::pem_encode("CERTIFICATE", &ec.certs[1]).into_bytes()
    );
    let ids: Vec<(&str, &str)> = r
        .versions
        .iter()
        .map(|v| (v.id.as_str(), v.version.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            ("secret/s/0", "s5"),
            ("secret/s/1", "s3"),
            ("secret/s/2", "s2"),
            ("cert/c/0", "c2"),
            ("cert/c/1", "c1"),
            ("key/k/0", "k2"),
            ("secret/one", "o1"),
        ]
    );

    // a listing that was not fetched is an error naming the object
    d.versions.remove(&(ObjectKind::Key, "k".into()));
    let e = render(&objs, &d, &RenderOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("objects[2] (key/k): objectVersionHistory"),
        "{e}"
    );
}

#[test]
fn history_with_pfx_and_separate_files() {
    let c = rsa_chain3();
    let objs = objects(&["objectName: tls\nobjectType: secret\nobjectVersionHistory: 2"]);
    let mut d = VaultData::default();
    d.versions.insert(
        (ObjectKind::Secret, "tls".into()),
        vi(&[("b", true), ("a", true)]),
    );
    for v in ["a", "b"] {
        d.objects.insert(
            FetchKey {
                object_type: ObjectKind::Secret,
                name: "tls".into(),
                version: Some(v.into()),
            },
            pfx_secret(&c.keys[0], &[c.certs[1].clone(), c.certs[0].clone()]),
        );
    }
    let opts = RenderOptions {
        write_cert_and_key_in_separate_files: true,
        ..RenderOptions::default()
    };
    let r = render(&objs, &d, &opts).unwrap();
    let paths: Vec<&str> = r.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "tls/0",
            "tls/0.crt",
            "tls/0.key",
            "tls/1",
            "tls/1.crt",
            "tls/1.key"
        ]
    );
    assert_eq!(
        String::from_utf8(r.files[0].contents.to_vec()).unwrap(),
        pem_of(Some(&c.keys[0]), &[&c.certs[0], &c.certs[1]])
    );
}
