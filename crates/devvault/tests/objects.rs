//! Certificates and keys over real HTTPS: PFX and PEM import with backing secret and key,
//! self-signed creation, key creation and JWK import, and the shipped example seed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde_json::{json, Value};

fn chain() -> (pki::PrivateKey, Vec<Vec<u8>>) {
    let ca_key = pki::generate_key(pki::KeyKind::Ec(pki::Curve::P256)).unwrap();
    let ca = pki::self_signed(
        &pki::CertRequest {
            subject: "CN=Test CA".into(),
            dns_names: vec![],
            ip_addresses: vec![],
            is_ca: true,
            validity_days: 90,
        },
        &ca_key,
    )
    .unwrap();
    let key = pki::generate_key(pki::KeyKind::Rsa { bits: 2048 }).unwrap();
    let leaf = pki::issue(
        &pki::CertRequest {
            subject: "CN=leaf.test".into(),
            dns_names: vec!["leaf.test".into()],
            ip_addresses: vec![],
            is_ca: false,
            validity_days: 30,
        },
        &key,
        &ca,
        &ca_key,
    )
    .unwrap();
    (key, vec![leaf, ca])
}

#[tokio::test]
async fn import_pfx_and_pem_create_backing_secret_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let (key, certs) = chain();

    // PFX with a password, chain given root first: the vault must still find the leaf.
    let pfx = pki::build_pfx(&key, &[certs[1].clone(), certs[0].clone()]).unwrap();
    // Re-wrap with a password through the PEM path is not possible; use the empty password PFX
    // and check a wrong password is refused by name.
    let (s, e) = dv
        .kv(
            "POST",
            "/certificates/web/import",
            &t,
            Some(json!({"value": B64.encode(&pfx), "pwd": "wrong"})),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, cert) = dv
        .kv(
            "POST",
            "/certificates/web/import",
            &t,
            Some(json!({"value": B64.encode(&pfx)})),
        )
        .await;
    assert_eq!(s, 200, "{cert}");
    let version = cert["id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        B64.decode(cert["cer"].as_str().unwrap()).unwrap(),
        certs[0],
        "cer is the leaf"
    );
    assert_eq!(
        B64URL.decode(cert["x5t"].as_str().unwrap()).unwrap(),
        ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &certs[0]).as_ref()
    );
    assert_eq!(cert["sid"], format!("{}/secrets/web/{version}", dv.origin));
    assert_eq!(cert["kid"], format!("{}/keys/web/{version}", dv.origin));
    assert_eq!(
        cert["policy"]["secret_props"]["contentType"],
        "application/x-pkcs12"
    );
    assert_eq!(cert["policy"]["key_props"]["kty"], "RSA");

    let (_, secret) = dv
        .kv("GET", &format!("/secrets/web/{version}"), &t, None)
        .await;
    assert_eq!(secret["contentType"], "application/x-pkcs12");
    assert_eq!(secret["managed"], true);
    assert_eq!(secret["kid"], cert["kid"]);
    let back = pki::parse_pfx(&B64.decode(secret["value"].as_str().unwrap()).unwrap(), "").unwrap();
    assert_eq!(back.certs, certs, "backing PFX holds leaf then CA");
    assert_eq!(back.key.unwrap().pkcs8_der(), key.pkcs8_der());

    let (_, k) = dv.kv("GET", "/keys/web/", &t, None).await;
    assert_eq!(k["managed"], true);
    assert_eq!(k["key"]["kty"], "RSA");
    let jwk: pki::PublicJwk = serde_json::from_value(k["key"].clone()).unwrap();
    assert_eq!(
        pki::jwk_to_spki_der(&jwk).unwrap(),
        pki::cert_info(&certs[0]).unwrap().spki_der
    );
    assert!(k["key"].get("d").is_none());

    // The backing secret cannot be overwritten or deleted on its own.
    assert_eq!(
        dv.kv("PUT", "/secrets/web", &t, Some(json!({"value": "x"})))
            .await
            .0,
        403
    );
    assert_eq!(dv.kv("DELETE", "/secrets/web", &t, None).await.0, 403);

    // PEM import, sent base64-encoded as the Python SDK does.
    let pem = pki::bundle_to_pem(Some(&key), &certs);
    let (s, cert) = dv
        .kv("POST", "/certificates/web-pem/import", &t, Some(json!({"value": B64.encode(&pem), "policy": {"secret_props": {"contentType": "application/x-pem-file"}}})))
        .await;
    assert_eq!(s, 200, "{cert}");
    let (_, secret) = dv.kv("GET", "/secrets/web-pem/", &t, None).await;
    assert_eq!(secret["contentType"], "application/x-pem-file");
    let text = secret["value"].as_str().unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
    assert_eq!(pki::parse_pem_bundle(text).unwrap().certs, certs);

    // A second version; versions list, and a certificate without a key is refused.
    assert_eq!(
        dv.kv(
            "POST",
            "/certificates/web/import",
            &t,
            Some(json!({"value": B64.encode(&pfx)}))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        dv.kv("GET", "/certificates/web/versions", &t, None).await.1["value"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (s, e) = dv
        .kv(
            "POST",
            "/certificates/nokey/import",
            &t,
            Some(json!({"value": pki::pem_encode("CERTIFICATE", &certs[0])})),
        )
        .await;
    assert_eq!(s, 400);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("private key"));
    let (s, e) = dv.kv("GET", "/certificates/absent/", &t, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str().unwrap()),
        (404, "CertificateNotFound")
    );
}

#[tokio::test]
async fn create_self_signed_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let (s, op) = dv
        .kv("POST", "/certificates/demo/create", &t, Some(json!({"policy": {"x509_props": {"subject": "CN=DefaultPolicy", "sans": {}}, "issuer": {"name": "Self"}}})))
        .await;
    assert_eq!(s, 202, "{op}");
    assert_eq!(op["status"], "inProgress");
    assert_eq!(
        dv.kv("GET", "/certificates/demo/pending", &t, None).await.1["status"],
        "completed"
    );
    let (_, cert) = dv.kv("GET", "/certificates/demo/", &t, None).await;
    let info = pki::cert_info(&B64.decode(cert["cer"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(info.subject, "CN=DefaultPolicy");
    assert_eq!(cert["policy"]["issuer"]["name"], "Self");
    assert_eq!(cert["policy"]["key_props"]["key_size"], 2048);

    for (body, check) in [
        (json!({"kty": "RSA", "key_size": 3072}), ("n", 384usize)),
        (json!({"kty": "EC", "crv": "P-256"}), ("x", 32)),
        (json!({"kty": "EC-HSM", "crv": "P-384"}), ("x", 48)),
        (json!({"kty": "EC", "crv": "P-521"}), ("x", 66)),
    ] {
        let (s, k) = dv
            .kv("POST", "/keys/k/create", &t, Some(body.clone()))
            .await;
        assert_eq!(s, 200, "{body}: {k}");
        assert_eq!(
            B64URL
                .decode(k["key"][check.0].as_str().unwrap())
                .unwrap()
                .len(),
            check.1,
            "{body}"
        );
        assert!(k["key"].get("d").is_none());
        assert_eq!(k["key"]["kty"], body["kty"]);
    }
    assert_eq!(
        dv.kv("GET", "/keys/k/versions", &t, None).await.1["value"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        dv.kv(
            "POST",
            "/keys/k/create",
            &t,
            Some(json!({"kty": "RSA", "key_size": 1024}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        dv.kv("POST", "/keys/k/create", &t, Some(json!({"kty": "oct"})))
            .await
            .0,
        400
    );

    // Import a JWK with private members; only the public part comes back.
    let key = pki::generate_key(pki::KeyKind::Ec(pki::Curve::P384)).unwrap();
    let private = pki::private_jwk(&key).unwrap();
    let (s, k) = dv
        .kv("PUT", "/keys/imported", &t, Some(json!({"key": private})))
        .await;
    assert_eq!(s, 200, "{k}");
    let public = pki::public_jwk(&key).unwrap();
    assert_eq!(k["key"]["x"].as_str(), public.x.as_deref());
    assert!(k["key"].get("d").is_none());
    let (s, e) = dv.kv("GET", "/keys/absent/", &t, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str().unwrap()),
        (404, "KeyNotFound")
    );
}

#[tokio::test]
async fn example_seed_loads_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let seed =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dev-vault.yaml");
    let first_ca_secret;
    {
        let dv = common::start(dir.path(), Some(&seed)).await;
        assert_eq!(dv.running.info.default_vault, "kvbridge-demo");
        let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
        let (_, db) = dv.kv("GET", "/secrets/db-password/", &t, None).await;
        assert_eq!(db["value"], "correct-horse-battery-staple");
        let (_, cfg) = dv.kv("GET", "/secrets/app-config/", &t, None).await;
        let parsed: Value = serde_json::from_str(cfg["value"].as_str().unwrap()).unwrap();
        assert_eq!(parsed["db_user"], "app");
        let (_, ca) = dv.kv("GET", "/secrets/internal-ca-cert/", &t, None).await;
        first_ca_secret = ca["value"].as_str().unwrap().to_string();
        let ca_der = pki::parse_pem_bundle(&first_ca_secret)
            .unwrap()
            .certs
            .remove(0);
        assert!(pki::cert_info(&ca_der).unwrap().is_ca);
        // The server certificate is issued by that CA: chain order leaf -> CA.
        let (_, tls) = dv.kv("GET", "/secrets/app-tls/", &t, None).await;
        let b = pki::parse_pfx(&B64.decode(tls["value"].as_str().unwrap()).unwrap(), "").unwrap();
        assert_eq!(b.certs.len(), 2);
        assert_eq!(b.certs[1], ca_der);
        let (_, tls_pem) = dv.kv("GET", "/secrets/app-tls-pem/", &t, None).await;
        assert_eq!(
            pki::parse_pem_bundle(tls_pem["value"].as_str().unwrap())
                .unwrap()
                .certs[1],
            ca_der
        );
        let (_, versions) = dv
            .kv("GET", "/secrets/rotating-token/versions", &t, None)
            .await;
        assert_eq!(versions["value"].as_array().unwrap().len(), 3);
        assert_eq!(
            dv.kv("GET", "/secrets/rotating-token/", &t, None).await.1["value"],
            "token-v3"
        );
        assert_eq!(
            dv.kv("GET", "/keys/signing-rsa/", &t, None).await.1["key"]["kty"],
            "RSA"
        );
        assert_eq!(
            dv.kv("GET", "/keys/signing-ec/", &t, None).await.1["key"]["crv"],
            "P-256"
        );
        dv.running.stop().await;
    }
    let dv = common::start(dir.path(), Some(&seed)).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let (_, ca) = dv.kv("GET", "/secrets/internal-ca-cert/", &t, None).await;
    assert_eq!(
        ca["value"].as_str().unwrap(),
        first_ca_secret,
        "a restart does not regenerate seeded objects"
    );
    assert_eq!(
        dv.kv("GET", "/secrets/rotating-token/versions", &t, None)
            .await
            .1["value"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn seed_errors_name_the_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    for (text, expect) in [
        ("vaults:\n  - name: v1x\n    secrets:\n      - name: a\n        valeu: x\n", "valeu"),
        ("vaults:\n  - name: okvault\n    certificates:\n      - name: c\n        generate: {subject: CN=x, issuer: nope}\n", "certificates[c].generate.issuer"),
        ("vaults:\n  - name: okvault\n    keys:\n      - {name: k, kty: RSA, size: 1000}\n", "keys[k]"),
        ("vaults: [", "YAML"),
    ] {
        std::fs::write(&seed, text).unwrap();
        let mut opts = devvault::Options::new("127.0.0.1:0".parse().unwrap(), dir.path().join("st"));
        opts.seed = Some(seed.clone());
        let err = devvault::start(opts).await.err().expect("bad seed is refused").to_string();
        assert!(err.contains(expect) && err.contains("seed.yaml"), "{expect}: {err}");
    }
}
