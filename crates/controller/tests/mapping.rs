//! The pure mapping, AzureKeyVaultSecret + vault object -> desired Secret/ConfigMap, with real
//! keys, certificates and PFX files made here and checked with the `openssl` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use controller::crd::AzureKeyVaultSecretSpec;
use controller::mapping::{desired, fetch_key, Desired, KeyFormat, MapError, MapOptions};
use pki::{Curve, KeyKind};
use render::params::ObjectKind as RenderType;
use render::render::{Fetched, FetchedCert, FetchedKey, FetchedSecret};
use testenv::chain::{ec_chain3 as ec_chain, request as req, rsa_chain3 as rsa_chain, Chain};
use zeroize::Zeroizing;

// ---------- fixtures ----------

fn spec(yaml: &str) -> AzureKeyVaultSecretSpec {
    serde_yaml_ng::from_str(yaml).unwrap()
}

fn secret(value: &str, content_type: Option<&str>) -> Fetched {
    Fetched::Secret(FetchedSecret {
        version: "0123456789abcdef0123456789abcdef".into(),
        value: Zeroizing::new(value.into()),
        content_type: content_type.map(str::to_string),
        kid: None,
    })
}

fn cert_secret(value: String, content_type: &str) -> Fetched {
    Fetched::Secret(FetchedSecret {
        version: "v1".into(),
        value: Zeroizing::new(value),
        content_type: Some(content_type.into()),
        kid: Some("https://kv.vault.azure.net/keys/c/v1".into()),
    })
}

/// A PFX with the certificates in `order` (indexes into the chain), as base64 (Key Vault's
/// backing-secret value for `application/x-pkcs12`).
fn pfx_b64(c: &Chain, order: &[usize]) -> String {
    let certs: Vec<Vec<u8>> = order.iter().map(|i| c.certs[*i].clone()).collect();
    // build_pfx takes the leaf first for its localKeyId; the bag order is the given order.
    let pfx = pki::build_pfx(&c.keys[0], &certs).unwrap();
    STANDARD.encode(pfx)
}

fn map(spec_yaml: &str, fetched: &Fetched) -> Result<Desired, MapError> {
    desired(&spec(spec_yaml), fetched, &MapOptions::default())
}

fn sdata(d: &Desired) -> BTreeMap<String, Vec<u8>> {
    d.secret
        .as_ref()
        .unwrap()
        .data
        .iter()
        .map(|(k, v)| (k.clone(), v.to_vec()))
        .collect()
}

fn text(d: &Desired, key: &str) -> String {
    String::from_utf8(sdata(d)[key].clone()).unwrap()
}

fn pem(label: &str, der: &[u8]) -> String {
    pki::pem_encode(label, der)
}

fn certs_pem(c: &Chain, order: &[usize]) -> String {
    order
        .iter()
        .map(|i| pem("CERTIFICATE", &c.certs[*i]))
        .collect()
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.display().to_string()
}

/// The TLS Secret is usable: the key matches the server certificate, and the chain verifies
/// against `ca.crt` (openssl).
fn check_tls_with_openssl(d: &Desired) {
    let dir = tempfile::tempdir().unwrap();
    let data = sdata(d);
    let crt = write(dir.path(), "tls.crt", &data["tls.crt"]);
    let key = write(dir.path(), "tls.key", &data["tls.key"]);
    let ca = write(dir.path(), "ca.crt", &data["ca.crt"]);
    let from_key = openssl(&["pkey", "-in", &key, "-pubout"]);
    let from_cert = openssl(&["x509", "-in", &crt, "-noout", "-pubkey"]);
    assert_eq!(
        from_key, from_cert,
        "tls.key belongs to the first certificate"
    );
    // ca.crt holds root and intermediate; the leaf (first in tls.crt) verifies against them.
    assert_eq!(text(d, "ca.crt").matches("BEGIN CERTIFICATE").count(), 2);
    let root_pem = dir.path().join("root.pem");
    let inter_pem = dir.path().join("inter.pem");
    let ca_text = text(d, "ca.crt");
    let parts: Vec<String> = ca_text
        .split_inclusive("-----END CERTIFICATE-----\n")
        .map(str::to_string)
        .collect();
    std::fs::write(&inter_pem, &parts[0]).unwrap();
    std::fs::write(&root_pem, &parts[1]).unwrap();
    let out = openssl(&[
        "verify",
        "-CAfile",
        root_pem.to_str().unwrap(),
        "-untrusted",
        inter_pem.to_str().unwrap(),
        &crt,
    ]);
    assert!(out.contains(": OK"), "{out}");
    let _ = ca;
}

// ---------- secret objects ----------

#[test]
fn secret_to_opaque_at_data_key() {
    let d = map(
        "vault: {name: kv, object: {name: s, type: secret}}\noutput: {secret: {name: out, dataKey: azuresecret}}",
        &secret("hello world", None),
    )
    .unwrap();
    let s = d.secret.as_ref().unwrap();
    assert_eq!(s.name, "out");
    assert_eq!(s.secret_type, "Opaque");
    assert_eq!(
        sdata(&d),
        BTreeMap::from([("azuresecret".into(), b"hello world".to_vec())])
    );
    assert_eq!(d.object_version, "0123456789abcdef0123456789abcdef");
    assert!(d.config_map.is_none());

    // akv2k8s's documented default spelling is kept as written (a Secret's type is immutable and
    // akv2k8s created it that way).
    let d = map(
        "vault: {name: kv, object: {name: s, type: secret}}\noutput: {secret: {name: out, type: opaque, dataKey: k}}",
        &secret("v", None),
    )
    .unwrap();
    assert_eq!(d.secret.unwrap().secret_type, "opaque");

    let e = map(
        "vault: {name: kv, object: {name: s, type: secret}}\noutput: {secret: {name: out}}",
        &secret("topsecret", None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("dataKey"), "{e}");
    assert_eq!(e.reason(), "InvalidSpec");
    assert!(!e.to_string().contains("topsecret"));

    let e = map(
        "vault: {name: kv, object: {name: s, type: secret}}",
        &secret("v", None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("output"), "{e}");
}

#[test]
fn transforms_apply_in_order_both_spellings() {
    let base = "vault: {name: kv, object: {name: s, type: secret}}\noutput:\n  secret: {name: o, dataKey: k}\n";
    let cases: &[(&str, &str, &[u8])] = &[
        ("  transform: [trim]", "  padded \n", b"padded"),
        ("  transform: [base64encode]", "hello", b"aGVsbG8="),
        ("  transform: [base64decode]", "aGVsbG8=", b"hello"),
        ("  transform: [base64decode]", "aGVsbG8", b"hello"), // unpadded
        (
            "  transform: [trim, base64decode]",
            " aGVs\nbG8= \n",
            b"hello",
        ),
        (
            "  transform: [base64decode, base64encode]",
            "aGVsbG8=",
            b"aGVsbG8=",
        ),
        // v1alpha1's `transforms`, applied before `transform`
        (
            "  transforms: [trim]\n  transform: [base64encode]",
            " hi ",
            b"aGk=",
        ),
        ("  transforms: [base64decode]", "/w==", &[0xff]),
    ];
    for (t, input, want) in cases {
        let d = map(&format!("{base}{t}"), &secret(input, None)).unwrap();
        assert_eq!(sdata(&d)["k"], want.to_vec(), "{t} on {input:?}");
        assert!(d.warnings.is_empty());
    }
    let e = map(
        &format!("{base}  transform: [base64decode]"),
        &secret("not*base64!", None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("base64decode"), "{e}");
    assert!(!e.to_string().contains("not*base64"), "{e}");
    assert_eq!(e.reason(), "InvalidVaultObject");

    // Transforms are for secret objects; elsewhere they are ignored with a warning (akv2k8s).
    let d = map(
        "vault: {name: kv, object: {name: m, type: multi-key-value-secret, contentType: application/x-json}}\noutput: {secret: {name: o}, transform: [base64encode]}",
        &secret(r#"{"a":"1"}"#, None),
    )
    .unwrap();
    assert_eq!(sdata(&d)["a"], b"1");
    assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
}

#[test]
fn secret_to_typed_secrets() {
    let base =
        "vault: {name: kv, object: {name: s, type: secret}}\noutput:\n  secret: {name: o, type: ";
    // basic-auth: split at the first colon, so the password may contain colons.
    let d = map(
        &format!("{base}kubernetes.io/basic-auth}}"),
        &secret("alice:pa:ss", None),
    )
    .unwrap();
    assert_eq!(
        d.secret.as_ref().unwrap().secret_type,
        "kubernetes.io/basic-auth"
    );
    assert_eq!(
        sdata(&d),
        BTreeMap::from([
            ("username".into(), b"alice".to_vec()),
            ("password".into(), b"pa:ss".to_vec())
        ])
    );
    let e = map(
        &format!("{base}kubernetes.io/basic-auth}}"),
        &secret("nocolon", None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("username:password"), "{e}");
    assert!(!e.to_string().contains("nocolon"));

    let docker = r#"{"auths":{"reg.test":{"auth":"dTpw"}}}"#;
    let d = map(
        &format!("{base}kubernetes.io/dockerconfigjson}}"),
        &secret(docker, None),
    )
    .unwrap();
    assert_eq!(
        sdata(&d),
        BTreeMap::from([(".dockerconfigjson".into(), docker.as_bytes().to_vec())])
    );
    let d = map(
        &format!("{base}kubernetes.io/dockercfg}}"),
        &secret(r#"{"reg.test":{"auth":"dTpw"}}"#, None),
    )
    .unwrap();
    assert!(sdata(&d).contains_key(".dockercfg"));
    let e = map(
        &format!("{base}kubernetes.io/dockerconfigjson}}"),
        &secret("{not json", None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("JSON"), "{e}");

    let d = map(
        &format!("{base}kubernetes.io/ssh-auth}}"),
        &secret("-----BEGIN OPENSSH PRIVATE KEY-----\n...\n", None),
    )
    .unwrap();
    assert_eq!(sdata(&d).keys().collect::<Vec<_>>(), ["ssh-privatekey"]);

    // Another type with a dataKey: the value at that key, type as written.
    let d = map(
        &format!("{base}example.com/custom, dataKey: token}}"),
        &secret("t0k3n", None),
    )
    .unwrap();
    assert_eq!(d.secret.as_ref().unwrap().secret_type, "example.com/custom");
    assert_eq!(sdata(&d)["token"], b"t0k3n");
}

#[test]
fn secret_holding_a_pfx_or_pem_to_tls() {
    let c = rsa_chain();
    // akv2k8s: a plain secret whose value is a base64 PFX, output kubernetes.io/tls.
    let spec_yaml = "vault: {name: kv, object: {name: s, type: secret}}\noutput: {secret: {name: o, type: kubernetes.io/tls, chainOrder: ensureserverfirst}}";
    let d = map(spec_yaml, &secret(&pfx_b64(c, &[2, 1, 0]), None)).unwrap();
    assert_eq!(text(&d, "tls.crt"), certs_pem(c, &[0, 1, 2]));
    check_tls_with_openssl(&d);
    // The same as PEM text (key + chain).
    let pem_text = format!(
        "{}{}",
        pem("PRIVATE KEY", c.keys[0].pkcs8_der()),
        certs_pem(c, &[0, 1, 2])
    );
    let d = map(spec_yaml, &secret(&pem_text, None)).unwrap();
    assert_eq!(text(&d, "tls.crt"), certs_pem(c, &[0, 1, 2]));
    assert_eq!(
        text(&d, "tls.key"),
        pem("PRIVATE KEY", c.keys[0].pkcs8_der())
    );
    let e = map(spec_yaml, &secret("plain text", None)).unwrap_err();
    assert_eq!(e.reason(), "InvalidVaultObject", "{e}");
}

// ---------- certificates ----------

#[test]
fn certificate_to_tls_chain_orders_and_ca() {
    for (c, label) in [(rsa_chain(), "rsa"), (ec_chain(), "ec")] {
        // Key Vault's PFX with the server certificate last (the order akv2k8s's
        // ensureserverfirst was made for) and in a scrambled order.
        for stored in [[2usize, 1, 0], [1, 0, 2], [0, 1, 2]] {
            let fetched = cert_secret(pfx_b64(c, &stored), "application/x-pkcs12");
            // Default: the vault's order, unchanged (akv2k8s).
            let d = map(
                "vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: tls, type: kubernetes.io/tls}}",
                &fetched,
            )
            .unwrap();
            assert_eq!(d.secret.as_ref().unwrap().secret_type, "kubernetes.io/tls");
            assert_eq!(
                text(&d, "tls.crt"),
                certs_pem(c, &stored),
                "{label} {stored:?}"
            );
            assert_eq!(
                text(&d, "tls.key"),
                pem("PRIVATE KEY", c.keys[0].pkcs8_der())
            );
            assert_eq!(
                text(&d, "ca.crt"),
                certs_pem(c, &[1, 2]),
                "issuers, leaf's issuer first"
            );
            // ensureserverfirst: server -> intermediate -> root, whatever the stored order.
            let d = map(
                "vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: tls, type: kubernetes.io/tls, chainOrder: ensureserverfirst}}",
                &fetched,
            )
            .unwrap();
            assert_eq!(
                text(&d, "tls.crt"),
                certs_pem(c, &[0, 1, 2]),
                "{label} {stored:?}"
            );
            assert_eq!(
                sdata(&d).keys().collect::<Vec<_>>(),
                ["ca.crt", "tls.crt", "tls.key"]
            );
            check_tls_with_openssl(&d);
        }
        // PEM-stored certificate (application/x-pem-file), key in SEC1/PKCS#8 as Key Vault has it.
        let pem_text = format!(
            "{}{}",
            pem("PRIVATE KEY", c.keys[0].pkcs8_der()),
            certs_pem(c, &[2, 0, 1])
        );
        let d = map(
            "vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: tls, type: kubernetes.io/tls, chainOrder: ensureserverfirst}}",
            &cert_secret(pem_text, "application/x-pem-file"),
        )
        .unwrap();
        assert_eq!(text(&d, "tls.crt"), certs_pem(c, &[0, 1, 2]));
        check_tls_with_openssl(&d);
    }
}

#[test]
fn certificate_self_signed_is_its_own_ca_and_no_key_is_an_error() {
    let k = pki::generate_key(KeyKind::Ec(Curve::P256)).unwrap();
    let cert = pki::self_signed(&req("solo", false), &k).unwrap();
    let pfx = STANDARD.encode(pki::build_pfx(&k, std::slice::from_ref(&cert)).unwrap());
    let d = map(
        "vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: tls, type: kubernetes.io/tls}}",
        &cert_secret(pfx, "application/x-pkcs12"),
    )
    .unwrap();
    assert_eq!(text(&d, "ca.crt"), pem("CERTIFICATE", &cert));
    assert_eq!(text(&d, "tls.crt"), pem("CERTIFICATE", &cert));

    // A leaf without its issuers: no ca.crt (nothing to put there).
    let c = ec_chain();
    let leaf_only = format!(
        "{}{}",
        pem("PRIVATE KEY", c.keys[0].pkcs8_der()),
        pem("CERTIFICATE", &c.certs[0])
    );
    let d = map(
        "vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: tls, type: kubernetes.io/tls}}",
        &cert_secret(leaf_only, "application/x-pem-file"),
    )
    .unwrap();
    assert!(!sdata(&d).contains_key("ca.crt"));

    // Certificates without a private key (not exportable) cannot make a TLS Secret.
    let no_key = certs_pem(c, &[0, 1]);
    let e = map(
        "vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: tls, type: kubernetes.io/tls}}",
        &cert_secret(no_key, "application/x-pem-file"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("private key"), "{e}");
}

#[test]
fn certificate_opaque_public_and_config_map() {
    let c = rsa_chain();
    let b64 = pfx_b64(c, &[0, 1, 2]);
    // type Opaque (exactly): the stored value, PFX decoded to its bytes (akv2k8s's ExportRaw).
    let d = map(
        "vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: o, type: Opaque, dataKey: cert.pfx}}",
        &cert_secret(b64.clone(), "application/x-pkcs12"),
    )
    .unwrap();
    let raw = sdata(&d)["cert.pfx"].clone();
    assert_eq!(raw, STANDARD.decode(&b64).unwrap());
    let bundle = pki::parse_pfx(&raw, "").unwrap();
    assert_eq!(bundle.certs, c.certs);

    // Without a private-key type: the certificate itself (GET certificate, leaf PEM).
    let fetched = Fetched::Cert(FetchedCert {
        version: "v9".into(),
        cer_der: c.certs[0].clone(),
    });
    for yaml in [
        "vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: o, dataKey: cert.pem}}",
        "vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: o, type: opaque, dataKey: cert.pem}}",
    ] {
        let s = spec(yaml);
        assert_eq!(fetch_key(&s).object_type, RenderType::Certificate, "{yaml}");
        let d = desired(&s, &fetched, &MapOptions::default()).unwrap();
        assert_eq!(text(&d, "cert.pem"), pem("CERTIFICATE", &c.certs[0]));
        assert_eq!(d.object_version, "v9");
    }
    let s = spec("vault: {name: kv, object: {name: c, type: certificate}}\noutput: {configMap: {name: cm, dataKey: ca.pem}}");
    assert_eq!(fetch_key(&s).object_type, RenderType::Certificate);
    let d = desired(&s, &fetched, &MapOptions::default()).unwrap();
    let cm = d.config_map.unwrap();
    assert_eq!(cm.name, "cm");
    assert_eq!(cm.data["ca.pem"], pem("CERTIFICATE", &c.certs[0]));
    assert!(cm.binary_data.is_empty());

    // TLS Secret and ConfigMap from one GET of the backing secret: the ConfigMap gets the leaf.
    let s = spec("vault: {name: kv, object: {name: c, type: certificate}}\noutput: {secret: {name: tls, type: kubernetes.io/tls}, configMap: {name: cm, dataKey: cert.pem}}");
    assert_eq!(fetch_key(&s).object_type, RenderType::Secret);
    let d = desired(
        &s,
        &cert_secret(pfx_b64(c, &[2, 1, 0]), "application/x-pkcs12"),
        &MapOptions::default(),
    )
    .unwrap();
    assert_eq!(
        d.config_map.unwrap().data["cert.pem"],
        pem("CERTIFICATE", &c.certs[0])
    );
    assert!(d.secret.is_some());

    // The wrong fetched kind is an error, not a panic.
    let e = desired(&s, &fetched, &MapOptions::default()).unwrap_err();
    assert!(e.to_string().contains("fetched"), "{e}");
}

// ---------- keys ----------

#[test]
fn key_to_pkix_pem_or_akv2k8s_modulus() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [KeyKind::Rsa { bits: 2048 }, KeyKind::Ec(Curve::P256)] {
        let k = pki::generate_key(kind).unwrap();
        let jwk = pki::public_jwk(&k).unwrap();
        let fetched = Fetched::Key(FetchedKey {
            version: "kv1".into(),
            jwk: jwk.clone(),
        });
        let s = spec("vault: {name: kv, object: {name: k, type: key}}\noutput: {secret: {name: o, dataKey: key.pem}, configMap: {name: cm, dataKey: key.pem}}");
        assert_eq!(fetch_key(&s).object_type, RenderType::Key);
        let d = desired(&s, &fetched, &MapOptions::default()).unwrap();
        let got = text(&d, "key.pem");
        assert!(got.starts_with("-----BEGIN PUBLIC KEY-----"), "{got}");
        assert_eq!(d.config_map.as_ref().unwrap().data["key.pem"], got);
        // openssl reads it and it is the key's public half.
        let p = write(dir.path(), "pub.pem", got.as_bytes());
        let kp = write(
            dir.path(),
            "key.pem",
            pem("PRIVATE KEY", k.pkcs8_der()).as_bytes(),
        );
        assert_eq!(
            openssl(&["pkey", "-pubin", "-in", &p]),
            openssl(&["pkey", "-in", &kp, "-pubout"])
        );
        // The compatibility switch: akv2k8s's modulus text (RSA only).
        let opts = MapOptions {
            key_format: KeyFormat::Akv2k8sModulus,
        };
        match kind {
            KeyKind::Rsa { .. } => {
                let d = desired(&s, &fetched, &opts).unwrap();
                assert_eq!(text(&d, "key.pem"), jwk.n.clone().unwrap());
            }
            _ => {
                let e = desired(&s, &fetched, &opts).unwrap_err();
                assert!(e.to_string().contains("RSA"), "{e}");
            }
        }
    }
}

// ---------- multi-key-value secrets ----------

#[test]
fn multi_key_json_and_yaml() {
    let json = r#"{"user":"alice","password":"s3cret","port":5432,"tls":true}"#;
    let yaml = "user: alice\npassword: s3cret\nport: 5432\ntls: true\n";
    let want: BTreeMap<String, Vec<u8>> = [
        ("password", "s3cret"),
        ("port", "5432"),
        ("tls", "true"),
        ("user", "alice"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    for (ct, value) in [("application/x-json", json), ("application/x-yaml", yaml)] {
        let d = map(
            &format!("vault: {{name: kv, object: {{name: m, type: multi-key-value-secret, contentType: {ct}}}}}\noutput: {{secret: {{name: o, dataKey: ignored}}, configMap: {{name: cm}}}}"),
            &secret(value, None),
        )
        .unwrap();
        assert_eq!(sdata(&d), want, "{ct}");
        assert_eq!(d.warnings.len(), 1, "dataKey ignored: {:?}", d.warnings);
        let cm = d.config_map.unwrap();
        assert_eq!(cm.data.len(), 4);
        assert_eq!(cm.data["user"], "alice");
    }
    let base = "vault: {name: kv, object: {name: m, type: multi-key-value-secret, contentType: application/x-json}}\noutput: {secret: {name: o}}";
    for (bad, needle) in [
        (r#"{"a":{"nested":"x"}}"#, "not a string"),
        (r#"["a"]"#, "not a map"),
        (r#"{"bad key!":"x"}"#, "not a valid data key"),
        ("{oops", "not a JSON object"),
    ] {
        let e = map(base, &secret(bad, None)).unwrap_err();
        assert!(e.to_string().contains(needle), "{bad}: {e}");
    }
    let e = map(
        "vault: {name: kv, object: {name: m, type: multi-key-value-secret}}\noutput: {secret: {name: o}}",
        &secret("{}", None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("contentType"), "{e}");
}

// ---------- config maps, keys, limits, hashes ----------

#[test]
fn config_map_binary_data_and_limits() {
    let d = map(
        "vault: {name: kv, object: {name: s, type: secret}}\noutput: {configMap: {name: cm, dataKey: bin}, transform: [base64decode]}",
        &secret("/wD+", None),
    )
    .unwrap();
    let cm = d.config_map.unwrap();
    assert!(cm.data.is_empty());
    assert_eq!(cm.binary_data["bin"], vec![0xff, 0x00, 0xfe]);

    for bad in ["a/b", "..", "", "sp ace"] {
        let e = map(
            &format!("vault: {{name: kv, object: {{name: s, type: secret}}}}\noutput: {{secret: {{name: o, dataKey: {bad:?}}}}}"),
            &secret("v", None),
        )
        .unwrap_err();
        assert_eq!(e.reason(), "InvalidSpec", "{bad:?}: {e}");
    }
    let big = "x".repeat(1024 * 1024 + 1);
    let e = map(
        "vault: {name: kv, object: {name: s, type: secret}}\noutput: {secret: {name: o, dataKey: k}}",
        &secret(&big, None),
    )
    .unwrap_err();
    assert!(e.to_string().contains("1048576"), "{e}");
}

#[test]
fn content_hash_tracks_content_labels_and_annotations() {
    let yaml = "vault: {name: kv, object: {name: s, type: secret}}\noutput: {secret: {name: o, dataKey: k, labels: {team: a}, annotations: {note: x}}}";
    let h = |y: &str, v: &str| {
        map(y, &secret(v, None))
            .unwrap()
            .secret
            .unwrap()
            .content_hash()
    };
    let h1 = h(yaml, "v1");
    assert_eq!(h1, h(yaml, "v1"), "deterministic");
    assert_eq!(h1.len(), 64);
    assert_ne!(h1, h(yaml, "v2"));
    assert_ne!(h1, h(&yaml.replace("team: a", "team: b"), "v1"));
    assert_ne!(h1, h(&yaml.replace("note: x", "note: y"), "v1"));
    assert_ne!(h1, h(&yaml.replace("dataKey: k", "dataKey: k2"), "v1"));
    let d = map(yaml, &secret("v1", None)).unwrap();
    let s = d.secret.unwrap();
    assert_eq!(s.labels["team"], "a");
    assert_eq!(s.annotations["note"], "x");
    assert!(
        !format!("{s:?}").contains("v1\""),
        "Debug redacts values: {s:?}"
    );
}

#[test]
fn fetch_key_follows_the_object_and_output() {
    let s = spec("vault: {name: kv, object: {name: s, type: secret, version: latest}}\noutput: {secret: {name: o, dataKey: k}}");
    let k = fetch_key(&s);
    assert_eq!(
        (k.object_type, k.name.as_str(), k.version),
        (RenderType::Secret, "s", None)
    );
    let s = spec("vault: {name: kv, object: {name: s, type: secret, version: 0123abcd}}\noutput: {secret: {name: o, dataKey: k}}");
    assert_eq!(fetch_key(&s).version.as_deref(), Some("0123abcd"));
    for (t, want) in [
        ("kubernetes.io/tls", RenderType::Secret),
        ("Opaque", RenderType::Secret),
        ("opaque", RenderType::Certificate),
        ("example.com/x", RenderType::Certificate),
    ] {
        let s = spec(&format!("vault: {{name: kv, object: {{name: c, type: certificate}}}}\noutput: {{secret: {{name: o, type: {t}, dataKey: k}}}}"));
        assert_eq!(fetch_key(&s).object_type, want, "{t}");
    }
    let s = spec("vault: {name: kv, object: {name: m, type: multi-key-value-secret, contentType: application/x-yaml}}\noutput: {secret: {name: o}}");
    assert_eq!(fetch_key(&s).object_type, RenderType::Secret);
}
