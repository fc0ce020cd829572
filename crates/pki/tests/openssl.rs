//! Cross-checks against the `openssl` command-line tool as an independent implementation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

use pki::*;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
    fn s(&self, name: &str) -> String {
        self.p(name).to_str().unwrap().to_string()
    }
    fn write(&self, name: &str, data: impl AsRef<[u8]>) -> String {
        std::fs::write(self.p(name), data).unwrap();
        self.s(name)
    }
    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.p(name)).unwrap()
    }
}

fn openssl_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl")
}

/// Runs openssl and panics with its stderr on failure; returns stdout.
fn ossl(d: &Dir, args: &[&str]) -> String {
    let out = openssl_in(d.0.path(), args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Clone, Copy, Debug)]
enum K {
    Rsa,
    P256,
    P384,
}

fn genkey(d: &Dir, name: &str, k: K) -> String {
    let file = d.s(name);
    match k {
        K::Rsa => ossl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &file,
            ],
        ),
        K::P256 => ossl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &file,
            ],
        ),
        K::P384 => ossl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-384",
                "-out",
                &file,
            ],
        ),
    };
    file
}

const CA_EXT: &str = "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n[v3_leaf]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:leaf.example\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid:always\n";

/// Makes an openssl chain of `len` certs (root [, inter], leaf); returns (leaf key file, cert files leaf-first).
fn openssl_chain(d: &Dir, len: usize, k: K) -> (String, Vec<String>) {
    let ext = d.write("ext.cnf", CA_EXT);
    let names: Vec<&str> = match len {
        1 => vec!["leaf"],
        2 => vec!["root", "leaf"],
        _ => vec!["root", "inter", "leaf"],
    };
    let mut prev: Option<(String, String)> = None;
    let mut files = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let key = genkey(d, &format!("{name}.key"), k);
        let cert = d.s(&format!("{name}.pem"));
        let section = if i + 1 == names.len() {
            "v3_leaf"
        } else {
            "v3_ca"
        };
        let subj = format!("/CN={name} {len}/O=kvbridge test");
        match &prev {
            None => {
                ossl(
                    d,
                    &[
                        "req",
                        "-x509",
                        "-new",
                        "-key",
                        &key,
                        "-subj",
                        &subj,
                        "-days",
                        "30",
                        "-config",
                        &ext,
                        "-extensions",
                        section,
                        "-out",
                        &cert,
                    ],
                );
            }
            Some((ca_key, ca_cert)) => {
                let csr = d.s(&format!("{name}.csr"));
                ossl(
                    d,
                    &[
                        "req", "-new", "-key", &key, "-subj", &subj, "-out", &csr, "-config", &ext,
                    ],
                );
                ossl(
                    d,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &csr,
                        "-CA",
                        ca_cert,
                        "-CAkey",
                        ca_key,
                        "-set_serial",
                        &format!("{}", 100 + i),
                        "-days",
                        "30",
                        "-extfile",
                        &ext,
                        "-extensions",
                        section,
                        "-out",
                        &cert,
                    ],
                );
            }
        }
        prev = Some((key, cert.clone()));
        files.push(cert);
    }
    files.reverse();
    (d.s("leaf.key"), files)
}

fn der_of_pem_file(path: &str) -> Vec<u8> {
    let b = parse_pem_bundle(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(b.certs.len(), 1);
    b.certs[0].clone()
}

fn openssl_pub_pem(d: &Dir, key_file: &str) -> String {
    ossl(d, &["pkey", "-in", key_file, "-pubout"])
}

fn subject_issuer(d: &Dir, der: &[u8]) -> (String, String) {
    let f = d.write("si.der", der);
    let out = ossl(
        d,
        &[
            "x509", "-inform", "DER", "-in", &f, "-noout", "-subject", "-issuer", "-nameopt",
            "RFC2253",
        ],
    );
    let mut subject = String::new();
    let mut issuer = String::new();
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("subject=") {
            subject = s.trim().to_string();
        } else if let Some(s) = line.strip_prefix("issuer=") {
            issuer = s.trim().to_string();
        }
    }
    (subject, issuer)
}

#[test]
fn parse_pfx_made_by_openssl() {
    let d = Dir::new();
    let mut cases = 0;
    for (k, lens) in [
        (K::Rsa, vec![1, 2, 3]),
        (K::P256, vec![1, 3]),
        (K::P384, vec![2]),
    ] {
        for len in lens {
            let (key, certs) = openssl_chain(&d, len, k);
            let mut chain_pem = String::new();
            for c in &certs[1..] {
                chain_pem.push_str(&std::fs::read_to_string(c).unwrap());
            }
            let chain_file = d.write("chain.pem", chain_pem);
            let expected_spki = spki_from_pem(&openssl_pub_pem(&d, &key)).unwrap();
            let expected_certs: Vec<Vec<u8>> = certs.iter().map(|c| der_of_pem_file(c)).collect();
            let modes: [(&str, &[&str]); 3] = [
                ("default", &[]),
                ("legacy", &["-legacy"]),
                (
                    "3des",
                    &[
                        "-keypbe",
                        "PBE-SHA1-3DES",
                        "-certpbe",
                        "PBE-SHA1-3DES",
                        "-macalg",
                        "sha1",
                    ],
                ),
            ];
            for (mode, extra) in modes {
                let out = d.s("out.pfx");
                let mut args = vec![
                    "pkcs12",
                    "-export",
                    "-inkey",
                    &key,
                    "-in",
                    &certs[0],
                    "-passout",
                    "pass:s3cret pw",
                    "-out",
                    &out,
                ];
                if len > 1 {
                    args.extend(["-certfile", chain_file.as_str()]);
                }
                args.extend(extra.iter().copied());
                let o = openssl_in(d.0.path(), &args);
                if !o.status.success() {
                    // The legacy provider may be missing; the explicit 3DES mode covers that case.
                    assert_eq!(mode, "legacy", "{}", String::from_utf8_lossy(&o.stderr));
                    continue;
                }
                let info = openssl_in(
                    d.0.path(),
                    &[
                        "pkcs12",
                        "-in",
                        &out,
                        "-passin",
                        "pass:s3cret pw",
                        "-info",
                        "-noout",
                        "-legacy",
                    ],
                );
                let info = format!(
                    "{}{}",
                    String::from_utf8_lossy(&info.stdout),
                    String::from_utf8_lossy(&info.stderr)
                );
                let expected_scheme = match mode {
                    "default" => "PBES2",
                    "legacy" => "RC2",
                    _ => "3-KeyTripleDES",
                };
                assert!(info.contains(expected_scheme), "{mode}: {info}");
                let pfx = d.read("out.pfx");
                let bundle = parse_pfx(&pfx, "s3cret pw")
                    .unwrap_or_else(|e| panic!("{k:?} len {len} {mode}: {e}"));
                let key = bundle.key.expect("key");
                assert_eq!(spki_der(&key).unwrap(), expected_spki, "{k:?} {len} {mode}");
                // openssl writes the leaf first, then -certfile certificates in file order.
                assert_eq!(bundle.certs, expected_certs, "{k:?} {len} {mode}");
                match parse_pfx(&pfx, "wrong") {
                    Err(PkiError::PfxPassword) => {}
                    other => panic!("{mode}: expected PfxPassword, got {other:?}"),
                }
                cases += 1;
            }
        }
    }
    assert!(cases >= 12, "only {cases} PFX cases ran");

    // Empty password (as Key Vault exports), default and legacy encryption.
    let (key, certs) = openssl_chain(&d, 2, K::Rsa);
    for extra in [
        &[][..],
        &["-legacy"][..],
        &["-keypbe", "NONE", "-certpbe", "NONE"][..],
    ] {
        let out = d.s("empty.pfx");
        let mut args = vec![
            "pkcs12",
            "-export",
            "-inkey",
            &key,
            "-in",
            &certs[0],
            "-certfile",
            &certs[1],
            "-passout",
            "pass:",
            "-out",
            &out,
        ];
        args.extend(extra.iter().copied());
        ossl(&d, &args);
        let bundle =
            parse_pfx(&d.read("empty.pfx"), "").unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert!(bundle.key.is_some(), "{extra:?}");
        assert_eq!(bundle.certs.len(), 2, "{extra:?}");
    }
    let msg = PkiError::PfxPassword.to_string();
    assert!(msg.contains("password") && !msg.contains("s3cret"));
}

#[test]
fn build_pfx_is_read_by_openssl_and_round_trips() {
    let d = Dir::new();
    for k in [K::Rsa, K::P256] {
        let (key_file, certs) = openssl_chain(&d, 3, k);
        let key = parse_pem_bundle(&std::fs::read_to_string(&key_file).unwrap())
            .unwrap()
            .key
            .unwrap();
        let ders: Vec<Vec<u8>> = certs.iter().map(|c| der_of_pem_file(c)).collect();
        let pfx = build_pfx(&key, &ders).unwrap();
        let f = d.write("built.pfx", &pfx);
        let text = ossl(&d, &["pkcs12", "-in", &f, "-passin", "pass:", "-nodes"]);
        let bundle = parse_pem_bundle(&text).unwrap();
        assert_eq!(
            spki_der(bundle.key.as_ref().unwrap()).unwrap(),
            spki_der(&key).unwrap()
        );
        assert_eq!(bundle.key.as_ref().unwrap().pkcs8_der(), key.pkcs8_der());
        assert_eq!(bundle.certs, ders, "{k:?}: openssl sees certs in our order");
        // The MAC verifies with an empty password (openssl tries "" and absent passwords).
        ossl(&d, &["pkcs12", "-in", &f, "-passin", "pass:", "-noout"]);

        let back = parse_pfx(&pfx, "").unwrap();
        assert_eq!(back.key.unwrap().pkcs8_der(), key.pkcs8_der());
        assert_eq!(back.certs, ders);
        assert!(matches!(parse_pfx(&pfx, "x"), Err(PkiError::PfxPassword)));
    }
}

#[test]
fn order_chain_matches_openssl_subjects() {
    let d = Dir::new();
    for len in 1..=3 {
        let (_, certs) = openssl_chain(&d, len, K::P256);
        let ders: Vec<Vec<u8>> = certs.iter().map(|c| der_of_pem_file(c)).collect();
        let perms: Vec<Vec<usize>> = match len {
            1 => vec![vec![0]],
            2 => vec![vec![0, 1], vec![1, 0]],
            _ => vec![
                vec![0, 1, 2],
                vec![0, 2, 1],
                vec![1, 0, 2],
                vec![1, 2, 0],
                vec![2, 0, 1],
                vec![2, 1, 0],
            ],
        };
        for perm in perms {
            let shuffled: Vec<Vec<u8>> = perm.iter().map(|i| ders[*i].clone()).collect();
            let ordered = order_chain(&shuffled).unwrap();
            assert_eq!(ordered, ders, "len {len} perm {perm:?}");
            // Independent check: each cert's issuer (per openssl) is the next cert's subject.
            let names: Vec<(String, String)> =
                ordered.iter().map(|c| subject_issuer(&d, c)).collect();
            for w in names.windows(2) {
                assert_eq!(w[0].1, w[1].0);
            }
            let last = names.last().unwrap();
            assert_eq!(last.0, last.1, "chain ends at a self-signed root");
            assert!(names[0].0.contains("CN=leaf"), "{names:?}");
        }
    }
    // Missing intermediate: original order, whatever it is.
    let (_, certs) = openssl_chain(&d, 3, K::Rsa);
    let ders: Vec<Vec<u8>> = certs.iter().map(|c| der_of_pem_file(c)).collect();
    let incomplete = vec![ders[2].clone(), ders[0].clone()];
    assert_eq!(order_chain(&incomplete).unwrap(), incomplete);
    let incomplete = vec![ders[0].clone(), ders[2].clone()];
    assert_eq!(order_chain(&incomplete).unwrap(), incomplete);
    // Leaf + intermediate without the root is still one complete chain.
    assert_eq!(
        order_chain(&[ders[1].clone(), ders[0].clone()]).unwrap(),
        vec![ders[0].clone(), ders[1].clone()]
    );
    // An unrelated extra certificate: original order.
    let other = Dir::new();
    let (_, o) = openssl_chain(&other, 1, K::P256);
    let mixed = vec![
        ders[1].clone(),
        der_of_pem_file(&o[0]),
        ders[0].clone(),
        ders[2].clone(),
    ];
    assert_eq!(order_chain(&mixed).unwrap(), mixed);
}

#[test]
fn cert_info_agrees_with_openssl() {
    let d = Dir::new();
    let (_, certs) = openssl_chain(&d, 2, K::Rsa);
    let leaf = der_of_pem_file(&certs[0]);
    let root = der_of_pem_file(&certs[1]);
    let li = cert_info(&leaf).unwrap();
    let ri = cert_info(&root).unwrap();
    let out = ossl(
        &d,
        &[
            "x509",
            "-in",
            &certs[0],
            "-noout",
            "-serial",
            "-fingerprint",
            "-sha1",
            "-enddate",
        ],
    );
    let fp: String = li
        .sha1_thumbprint
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(out.contains(&format!("Fingerprint={fp}")), "{out}");
    assert!(out.contains(&format!("serial={}", li.serial_hex)), "{out}");
    let out256 = ossl(
        &d,
        &[
            "x509",
            "-in",
            &certs[0],
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    let fp: String = li
        .sha256_thumbprint
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    assert!(out256.contains(&fp));
    assert_eq!(li.authority_key_id, ri.subject_key_id);
    assert!(li.subject_key_id.is_some());
    assert!(ri.is_ca && !li.is_ca);
    assert_eq!(li.dns_names, vec!["leaf.example".to_string()]);
    assert_eq!(li.key_usage, vec!["digitalSignature", "keyEncipherment"]);
    assert_eq!(ri.key_usage, vec!["keyCertSign", "cRLSign"]);
    assert_eq!(li.ekus, vec!["1.3.6.1.5.5.7.3.1"]);
    assert!(li.subject.contains("CN=leaf 2"), "{}", li.subject);
    assert_eq!(li.issuer, ri.subject);
    assert!(li.not_after > li.not_before);
    // checkend: valid now, expired in 31 days
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(li.not_before <= now && now < li.not_after && li.not_after <= now + 31 * 86400);
    assert_eq!(
        spki_from_pem(&std::fs::read_to_string(&certs[0]).unwrap()).unwrap(),
        li.spki_der
    );
    assert_eq!(
        spki_from_pem(&openssl_pub_pem(&d, &d.s("leaf.key"))).unwrap(),
        li.spki_der
    );
}

fn all_kinds() -> Vec<KeyKind> {
    vec![
        KeyKind::Rsa { bits: 2048 },
        KeyKind::Rsa { bits: 3072 },
        KeyKind::Rsa { bits: 4096 },
        KeyKind::Ec(Curve::P256),
        KeyKind::Ec(Curve::P384),
        KeyKind::Ec(Curve::P521),
    ]
}

#[test]
fn generated_keys_match_openssl_public_keys_and_jwk_round_trips() {
    let d = Dir::new();
    for kind in all_kinds() {
        let key = generate_key(kind).unwrap();
        assert_eq!(key.kind(), kind);
        let key_file = d.write("k.pem", bundle_to_pem(Some(&key), &[]));
        ossl(&d, &["pkey", "-in", &key_file, "-check", "-noout"]);
        let jwk = public_jwk(&key).unwrap();
        let spki = jwk_to_spki_der(&jwk).unwrap();
        assert_eq!(
            pem_encode("PUBLIC KEY", &spki),
            openssl_pub_pem(&d, &key_file),
            "{kind:?}"
        );
        assert_eq!(spki, spki_der(&key).unwrap());
        assert_eq!(public_jwk_from_spki(&spki).unwrap(), jwk);
        let json = serde_json::to_value(&jwk).unwrap();
        match kind {
            KeyKind::Rsa { bits } => {
                assert_eq!(json["kty"], "RSA");
                assert_eq!(json["e"], "AQAB");
                assert!(json.get("crv").is_none());
                let n = base64_len(json["n"].as_str().unwrap());
                assert_eq!(n, bits / 8);
            }
            KeyKind::Ec(c) => {
                assert_eq!(json["crv"], c.jwk_name());
                assert!(json.get("n").is_none());
                assert_eq!(base64_len(json["x"].as_str().unwrap()), c.coordinate_len());
                assert_eq!(base64_len(json["y"].as_str().unwrap()), c.coordinate_len());
            }
        }
        // private JWK import round trip, checked by openssl
        let private = private_jwk(&key).unwrap();
        let imported = private_key_from_jwk(&private).unwrap();
        assert_eq!(imported.kind(), kind);
        assert_eq!(spki_der(&imported).unwrap(), spki);
        if matches!(kind, KeyKind::Rsa { .. }) {
            assert_eq!(imported.pkcs8_der(), key.pkcs8_der());
        }
        let f = d.write("imported.pem", bundle_to_pem(Some(&imported), &[]));
        ossl(&d, &["pkey", "-in", &f, "-check", "-noout"]);
        // HSM key types are treated as their software counterparts.
        let mut hsm = jwk.clone();
        hsm.kty.push_str("-HSM");
        assert_eq!(jwk_to_spki_der(&hsm).unwrap(), spki);
    }
}

fn base64_len(s: &str) -> usize {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
        .len()
}

#[test]
fn rsa_jwk_without_crt_members_and_openssl_traditional_keys() {
    let d = Dir::new();
    // RSA PRIVATE KEY (PKCS#1) and EC PRIVATE KEY (SEC1) from openssl -traditional
    for (k, label) in [
        (K::Rsa, "RSA PRIVATE KEY"),
        (K::P256, "EC PRIVATE KEY"),
        (K::P384, "EC PRIVATE KEY"),
    ] {
        let key_file = genkey(&d, "t.key", k);
        let trad = ossl(&d, &["pkey", "-in", &key_file, "-traditional"]);
        assert!(trad.contains(label), "{trad}");
        let with_text = format!("some text before\n{trad}\nand after\n");
        let bundle = parse_pem_bundle(&with_text).unwrap();
        let key = bundle.key.unwrap();
        assert_eq!(
            pem_encode("PUBLIC KEY", &spki_der(&key).unwrap()),
            openssl_pub_pem(&d, &key_file)
        );
        let f = d.write("conv.pem", bundle_to_pem(Some(&key), &[]));
        ossl(&d, &["pkey", "-in", &f, "-check", "-noout"]);
        // and the key signs verifiable JWS
        let alg = match k {
            K::Rsa => "RS256",
            K::P256 => "ES256",
            K::P384 => "ES384",
        };
        let sig = jws_sign(alg, &key, b"x.y").unwrap();
        jws_verify(alg, &spki_der(&key).unwrap(), b"x.y", &sig).unwrap();
    }
    // n, e, d only: primes are recovered.
    let key = generate_key(KeyKind::Rsa { bits: 2048 }).unwrap();
    let full = private_jwk(&key).unwrap();
    let mut partial = serde_json::Map::new();
    for m in ["kty", "n", "e", "d"] {
        partial.insert(m.into(), full[m].clone());
    }
    let imported = private_key_from_jwk(&serde_json::Value::Object(partial)).unwrap();
    assert_eq!(spki_der(&imported).unwrap(), spki_der(&key).unwrap());
    let f = d.write("partial.pem", bundle_to_pem(Some(&imported), &[]));
    ossl(&d, &["pkey", "-in", &f, "-check", "-noout"]);
}

#[test]
fn jws_sign_verify_and_openssl_cross_check() {
    let rsa = generate_key(KeyKind::Rsa { bits: 2048 }).unwrap();
    let p256 = generate_key(KeyKind::Ec(Curve::P256)).unwrap();
    let p384 = generate_key(KeyKind::Ec(Curve::P384)).unwrap();
    let msg = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0";
    for (alg, key, sig_len) in [
        ("RS256", &rsa, 256),
        ("RS384", &rsa, 256),
        ("RS512", &rsa, 256),
        ("PS256", &rsa, 256),
        ("PS384", &rsa, 256),
        ("PS512", &rsa, 256),
        ("ES256", &p256, 64),
        ("ES384", &p384, 96),
    ] {
        let spki = spki_der(key).unwrap();
        let sig = jws_sign(alg, key, msg).unwrap();
        assert_eq!(sig.len(), sig_len, "{alg}");
        jws_verify(alg, &spki, msg, &sig).unwrap();
        let mut tampered = msg.to_vec();
        tampered[3] ^= 1;
        assert!(
            matches!(
                jws_verify(alg, &spki, &tampered, &sig),
                Err(PkiError::BadSignature)
            ),
            "{alg}"
        );
        let mut bad_sig = sig.clone();
        bad_sig[10] ^= 1;
        assert!(
            matches!(
                jws_verify(alg, &spki, msg, &bad_sig),
                Err(PkiError::BadSignature)
            ),
            "{alg}"
        );
    }
    // algorithm / key mismatches and unsupported algorithms
    assert!(matches!(
        jws_sign("ES256", &rsa, msg),
        Err(PkiError::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        jws_sign("ES384", &p256, msg),
        Err(PkiError::UnsupportedAlgorithm(_))
    ));
    assert!(matches!(
        jws_sign("HS256", &rsa, msg),
        Err(PkiError::UnsupportedAlgorithm(_))
    ));
    let sig = jws_sign("ES256", &p256, msg).unwrap();
    assert!(jws_verify("ES384", &spki_der(&p256).unwrap(), msg, &sig).is_err());
    assert!(jws_verify("RS256", &spki_der(&p256).unwrap(), msg, &sig).is_err());

    // openssl verifies our RS256 and PS256 signatures
    let d = Dir::new();
    let pubf = d.write(
        "pub.pem",
        pem_encode("PUBLIC KEY", &spki_der(&rsa).unwrap()),
    );
    let msgf = d.write("msg", msg);
    let sigf = d.write("sig", jws_sign("RS256", &rsa, msg).unwrap());
    let out = ossl(
        &d,
        &[
            "dgst",
            "-sha256",
            "-verify",
            &pubf,
            "-signature",
            &sigf,
            &msgf,
        ],
    );
    assert!(out.contains("Verified OK"), "{out}");
    let sigf = d.write("sig", jws_sign("PS256", &rsa, msg).unwrap());
    let out = ossl(
        &d,
        &[
            "dgst",
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
            "-verify",
            &pubf,
            "-signature",
            &sigf,
            &msgf,
        ],
    );
    assert!(out.contains("Verified OK"), "{out}");
    // and we verify an RS256 signature made by openssl
    let keyf = d.write("key.pem", bundle_to_pem(Some(&rsa), &[]));
    ossl(
        &d,
        &[
            "dgst",
            "-sha256",
            "-sign",
            &keyf,
            "-out",
            &d.s("osig"),
            &msgf,
        ],
    );
    jws_verify("RS256", &spki_der(&rsa).unwrap(), msg, &d.read("osig")).unwrap();
}

fn req(subject: &str, is_ca: bool) -> CertRequest {
    CertRequest {
        subject: subject.into(),
        dns_names: if is_ca {
            vec![]
        } else {
            vec!["app.example.com".into(), "*.app.example.com".into()]
        },
        ip_addresses: if is_ca {
            vec![]
        } else {
            vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]
        },
        is_ca,
        validity_days: 10,
    }
}

#[test]
fn issued_three_level_chain_verifies_with_openssl() {
    let d = Dir::new();
    let kinds = [
        (
            KeyKind::Rsa { bits: 2048 },
            KeyKind::Ec(Curve::P256),
            KeyKind::Ec(Curve::P256),
        ),
        (
            KeyKind::Ec(Curve::P384),
            KeyKind::Rsa { bits: 2048 },
            KeyKind::Ec(Curve::P384),
        ),
    ];
    for (rk, ik, lk) in kinds {
        let root_key = generate_key(rk).unwrap();
        let inter_key = generate_key(ik).unwrap();
        let leaf_key = generate_key(lk).unwrap();
        let root = self_signed(&req("CN=Test Root, O=kvbridge", true), &root_key).unwrap();
        let inter = issue(
            &req("CN=Test Inter, O=kvbridge", true),
            &inter_key,
            &root,
            &root_key,
        )
        .unwrap();
        let leaf = issue(
            &req("CN=app, O=Org, OU=Team\\, Inc", false),
            &leaf_key,
            &inter,
            &inter_key,
        )
        .unwrap();
        let ca = d.write("ca.pem", pem_encode("CERTIFICATE", &root));
        let un = d.write("inter.pem", pem_encode("CERTIFICATE", &inter));
        let lf = d.write("leaf.pem", pem_encode("CERTIFICATE", &leaf));
        let out = ossl(&d, &["verify", "-CAfile", &ca, "-untrusted", &un, &lf]);
        assert!(out.contains("leaf.pem: OK"), "{out}");
        ossl(
            &d,
            &[
                "verify",
                "-CAfile",
                &ca,
                "-untrusted",
                &un,
                "-purpose",
                "sslserver",
                "-verify_hostname",
                "app.example.com",
                &lf,
            ],
        );
        ossl(
            &d,
            &[
                "verify",
                "-CAfile",
                &ca,
                "-untrusted",
                &un,
                "-verify_ip",
                "127.0.0.1",
                &lf,
            ],
        );

        let (ri, ii, li) = (
            cert_info(&root).unwrap(),
            cert_info(&inter).unwrap(),
            cert_info(&leaf).unwrap(),
        );
        assert!(ri.is_ca && ii.is_ca && !li.is_ca);
        assert_eq!(ri.authority_key_id, ri.subject_key_id);
        assert_eq!(ii.authority_key_id, ri.subject_key_id);
        assert_eq!(li.authority_key_id, ii.subject_key_id);
        assert_eq!(ri.key_usage, vec!["keyCertSign", "cRLSign"]);
        assert_eq!(li.key_usage, vec!["digitalSignature", "keyEncipherment"]);
        assert_eq!(li.ekus, vec!["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
        assert_eq!(li.dns_names, vec!["app.example.com", "*.app.example.com"]);
        assert_eq!(li.spki_der, spki_der(&leaf_key).unwrap());
        let (subject, issuer) = subject_issuer(&d, &leaf);
        assert_eq!(subject, "OU=Team\\, Inc,O=Org,CN=app");
        assert_eq!(issuer, "O=kvbridge,CN=Test Inter");
        assert!(li.not_after - li.not_before >= 10 * 86400);
        assert_eq!(
            order_chain(&[root.clone(), leaf.clone(), inter.clone()]).unwrap(),
            vec![leaf.clone(), inter.clone(), root.clone()]
        );
        // PEM bundle: key first, certs in order; parses back
        let pem = bundle_to_pem(Some(&leaf_key), &[leaf.clone(), inter.clone()]);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let back = parse_pem_bundle(&pem).unwrap();
        assert_eq!(back.key.as_ref().unwrap().pkcs8_der(), leaf_key.pkcs8_der());
        assert_eq!(back.certs, vec![leaf.clone(), inter.clone()]);
    }
    // P-521 cannot sign with ring: clear error
    let k521 = generate_key(KeyKind::Ec(Curve::P521)).unwrap();
    let err = self_signed(&req("CN=x", true), &k521).unwrap_err();
    assert!(err.to_string().contains("P-521"), "{err}");
    let ca_key = generate_key(KeyKind::Ec(Curve::P256)).unwrap();
    let ca = self_signed(&req("CN=ca", true), &ca_key).unwrap();
    let err = issue(&req("CN=l", false), &k521, &ca, &ca_key).unwrap_err();
    assert!(err.to_string().contains("P-521"), "{err}");
    // Mismatched issuer key is rejected
    let a = generate_key(KeyKind::Ec(Curve::P256)).unwrap();
    let b = generate_key(KeyKind::Ec(Curve::P256)).unwrap();
    let ca = self_signed(&req("CN=ca", true), &a).unwrap();
    assert!(issue(&req("CN=l", false), &b, &ca, &b).is_err());
}

#[test]
fn ec_keys_without_public_key() {
    let d = Dir::new();
    for curve in ["P-256", "P-521"] {
        let f = d.s("k.pem");
        ossl(
            &d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                &format!("ec_paramgen_curve:{curve}"),
                "-out",
                &f,
            ],
        );
        let nopub_sec1 = ossl(&d, &["ec", "-in", &f, "-no_public"]);
        let g = d.write("nopub.pem", nopub_sec1);
        let nopub_p8 = ossl(&d, &["pkey", "-in", &g]);
        let key = parse_pem_bundle(&nopub_p8).unwrap().key.unwrap();
        assert_eq!(
            PrivateKey::from_pkcs8_der(key.pkcs8_der().to_vec()).unwrap(),
            key,
            "idempotent"
        );
        match curve {
            "P-521" => {
                // the public point is derived from d
                assert_eq!(
                    pem_encode("PUBLIC KEY", &spki_der(&key).unwrap()),
                    openssl_pub_pem(&d, &f)
                );
            }
            _ => {
                let err = public_jwk(&key).unwrap_err().to_string();
                assert!(err.contains("without its public key"), "{err}");
            }
        }
    }
}
