//! Entra stand-in and IMDS over real HTTPS: client secret, certificate assertions (RS256/x5t and
//! PS256/x5t#S256), federated tokens, managed identity, expiry, access policies.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde_json::{json, Value};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn jwt(alg: &str, header_extra: Value, claims: Value, key: &pki::PrivateKey) -> String {
    testenv::jwt::sign(alg, header_extra, &claims, key)
}

use testenv::jwt::now;

struct Fixture {
    dir: tempfile::TempDir,
    sp_key: pki::PrivateKey,
    sp_cert: Vec<u8>,
    issuer_key: pki::PrivateKey,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (sp_key, sp_cert) = testenv::chain::service_principal_certificate(dir.path());
    let (issuer_key, issuer_pem) = testenv::jwt::issuer_key();
    std::fs::write(dir.path().join("issuer.pem"), issuer_pem).unwrap();
    std::fs::write(
        dir.path().join("seed.yaml"),
        r#"
tenant: 11111111-2222-3333-4444-555555555555
vaults:
  - name: authvault
    secrets:
      - {name: open, value: "open-value"}
    accessPolicies:
      - identity: full-app
        secrets: [all]
      - identity: list-only
        secrets: [list]
identities:
  - clientId: full-app
    secret: full-secret
    certificates: [sp.pem]
    federatedCredentials:
      - issuer: https://oidc.test/cluster
        subject: system:serviceaccount:default:app
        issuerKey: issuer.pem
  - clientId: list-only
    secret: list-secret
  - clientId: node-msi
    managedIdentity: true
    systemAssigned: true
  - clientId: user-msi
    managedIdentity: true
    objectId: 00000000-0000-0000-0000-0000000000aa
    resourceId: /subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u
"#,
    )
    .unwrap();
    Fixture {
        dir,
        sp_key,
        sp_cert,
        issuer_key,
    }
}

fn thumb(alg: &'static ring::digest::Algorithm, der: &[u8]) -> String {
    B64URL.encode(ring::digest::digest(alg, der))
}

#[tokio::test]
async fn every_client_credential_mode() {
    let f = fixture();
    let state = f.dir.path().join("state");
    let dv = common::start(&state, Some(&f.dir.path().join("seed.yaml"))).await;
    let token_url = format!("{}/{}/oauth2/v2.0/token", dv.origin, dv.tenant);
    assert_eq!(dv.tenant, "11111111-2222-3333-4444-555555555555");

    // Client secret.
    let t = dv.token("full-app", "full-secret").await;
    assert_eq!(
        dv.kv("GET", "/secrets/open/", &t, None).await.1["value"],
        "open-value"
    );

    // Wrong secret, unknown client: AAD-shaped errors that say what is wrong.
    let (s, e) = dv
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", "full-app"),
            ("client_secret", "nope"),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .await;
    assert_eq!(s, 401);
    assert_eq!(e["error"], "invalid_client");
    assert!(e["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS7000215"));
    assert!(
        !e.to_string().contains("nope"),
        "the presented secret is not echoed"
    );
    let (s, e) = dv
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", "ghost"),
            ("client_secret", "x"),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .await;
    assert_eq!(s, 400);
    assert!(e["error_description"].as_str().unwrap().contains("ghost"));

    // Certificate assertion: RS256 + x5t (padded, as MSAL sends it) and PS256 + x5t#S256.
    let sha1 = thumb(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &f.sp_cert);
    let sha256 = thumb(&ring::digest::SHA256, &f.sp_cert);
    let claims = json!({"aud": token_url, "iss": "full-app", "sub": "full-app", "jti": "1", "iat": now() as f64 + 0.5, "exp": (now() + 600) as f64 + 0.25});
    for (alg, header) in [
        ("RS256", json!({"x5t": format!("{sha1}=")})),
        ("PS256", json!({"x5t#S256": sha256})),
    ] {
        let a = jwt(alg, header, claims.clone(), &f.sp_key);
        let (s, body) = dv
            .token_request(&[
                ("grant_type", "client_credentials"),
                ("client_id", "full-app"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &a),
                ("scope", "https://vault.azure.net/.default"),
            ])
            .await;
        assert_eq!(s, 200, "{alg}: {body}");
        let t = body["access_token"].as_str().unwrap();
        assert_eq!(dv.kv("GET", "/secrets/open/", t, None).await.0, 200);
    }
    // Signed by another key: refused.
    let other = pki::generate_key(pki::KeyKind::Rsa { bits: 2048 }).unwrap();
    let a = jwt("RS256", json!({"x5t": sha1}), claims.clone(), &other);
    let (s, e) = dv
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", "full-app"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &a),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .await;
    assert_eq!(s, 401, "{e}");

    // Federated token (workload identity): valid, then expired, then wrong subject.
    let fed = |sub: &str, exp: i64| {
        jwt(
            "ES256",
            json!({"kid": "k"}),
            json!({"iss": "https://oidc.test/cluster", "sub": sub, "aud": ["api://AzureADTokenExchange"], "iat": now(), "nbf": now() - 5, "exp": exp}),
            &f.issuer_key,
        )
    };
    let ok = fed("system:serviceaccount:default:app", now() + 3600);
    let (s, body) = dv
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", "full-app"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &ok),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .await;
    assert_eq!(s, 200, "{body}");
    let expired = fed("system:serviceaccount:default:app", now() - 3600);
    let (s, e) = dv
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", "full-app"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &expired),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .await;
    assert_eq!(s, 401);
    assert!(
        e["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS700024"),
        "{e}"
    );
    let wrong = fed("system:serviceaccount:default:other", now() + 3600);
    let (s, e) = dv
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", "full-app"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &wrong),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .await;
    assert_eq!(s, 401);
    assert!(e["error_description"]
        .as_str()
        .unwrap()
        .contains("system:serviceaccount:default:other"));

    // Access policies: list-only may list but not get.
    let lt = dv.token("list-only", "list-secret").await;
    assert_eq!(dv.kv("GET", "/secrets", &lt, None).await.0, 200);
    let (s, e) = dv.kv("GET", "/secrets/open/", &lt, None).await;
    assert_eq!(s, 403);
    assert!(e["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not have secrets get permission"));
}

#[tokio::test]
async fn managed_identity_endpoint() {
    let f = fixture();
    let dv = common::start(
        &f.dir.path().join("state"),
        Some(&f.dir.path().join("seed.yaml")),
    )
    .await;
    let url = format!(
        "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net",
        dv.origin
    );
    let resp = dv.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert!(e["error_description"]
        .as_str()
        .unwrap()
        .contains("metadata header"));

    let body: Value = dv
        .http
        .get(&url)
        .header("Metadata", "true")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["client_id"], "node-msi");
    assert!(body["expires_in"].is_string() && body["expires_on"].is_string());
    assert_eq!(body["resource"], "https://vault.azure.net");
    let claims: Value = serde_json::from_slice(
        &B64URL
            .decode(
                body["access_token"]
                    .as_str()
                    .unwrap()
                    .split('.')
                    .nth(1)
                    .unwrap(),
            )
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "https://vault.azure.net");
    assert_eq!(claims["appid"], "node-msi");

    for sel in ["client_id=user-msi", "object_id=00000000-0000-0000-0000-0000000000aa", "msi_res_id=/subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u"] {
        let body: Value = dv.http.get(format!("{url}&{sel}")).header("Metadata", "true").send().await.unwrap().json().await.unwrap();
        assert_eq!(body["client_id"], "user-msi", "{sel}");
    }
    let resp = dv
        .http
        .get(format!("{url}&client_id=missing"))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let t = body["access_token"].as_str().unwrap().to_string();
    // node-msi has no access policy in this vault.
    assert_eq!(dv.kv("GET", "/secrets/open/", &t, None).await.0, 403);
}

#[tokio::test]
async fn expired_and_foreign_tokens_are_refused_with_a_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start_with(dir.path(), None, |o| o.token_lifetime_secs = 0).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let (s, h, e) = dv.kv_full("GET", "/secrets/x/", &t, None).await;
    assert_eq!(s, 401);
    assert!(h.contains_key("www-authenticate"));
    assert!(e["error"]["message"].as_str().unwrap().contains("expired"));
    // A token signed by some other key.
    let key = pki::generate_key(pki::KeyKind::Ec(pki::Curve::P256)).unwrap();
    let forged = jwt(
        "ES256",
        json!({}),
        json!({"aud": "https://vault.azure.net", "exp": now() + 600}),
        &key,
    );
    assert_eq!(dv.kv("GET", "/secrets/x/", &forged, None).await.0, 401);
    let _ = B64.encode([0u8]);
}
