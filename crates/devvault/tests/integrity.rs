//! Dev vault integrity (issue 13.8): failed saves are not applied, interrupted saves leave no
//! secret copies behind, the Host header decides neither token audiences nor arbitrary vault
//! names, oversized bodies and unknown preview api-versions get Key Vault-shaped errors, and
//! absurd certificate validities are refused instead of panicking (13.6).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use serde_json::json;

#[tokio::test]
async fn a_failed_save_is_answered_500_and_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let (s, _) = dv
        .kv("PUT", "/secrets/kept", &t, Some(json!({"value": "one"})))
        .await;
    assert_eq!(s, 200);

    // Make the next save fail: the state file becomes a non-empty directory (rename onto it
    // fails even for root).
    let state = dir.path().join("state.json");
    let saved = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("blocker"), b"x").unwrap();

    let (s, body) = dv
        .kv("PUT", "/secrets/lost", &t, Some(json!({"value": "two"})))
        .await;
    assert_eq!(s, 500, "{body}");
    assert_eq!(body["error"]["code"], "InternalServerError");
    let (s, body) = dv
        .kv(
            "PUT",
            "/secrets/kept",
            &t,
            Some(json!({"value": "changed"})),
        )
        .await;
    assert_eq!(s, 500, "{body}");
    let (s, _) = dv.kv("DELETE", "/secrets/kept", &t, None).await;
    assert_eq!(s, 500);

    // Nothing of the failed calls is visible.
    let (s, _) = dv.kv("GET", "/secrets/lost/", &t, None).await;
    assert_eq!(s, 404, "a change whose save failed must not be visible");
    let (s, body) = dv.kv("GET", "/secrets/kept/", &t, None).await;
    assert_eq!(s, 200);
    assert_eq!(body["value"], "one");
    let (_, body) = dv.kv("GET", "/secrets/kept/versions", &t, None).await;
    assert_eq!(body["value"].as_array().unwrap().len(), 1);

    // Once the disk works again, saves and reads agree.
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, saved).unwrap();
    let (s, _) = dv
        .kv("PUT", "/secrets/lost", &t, Some(json!({"value": "two"})))
        .await;
    assert_eq!(s, 200);
    let (s, body) = dv.kv("GET", "/secrets/lost/", &t, None).await;
    assert_eq!((s, body["value"].as_str()), (200, Some("two")));
    let on_disk = std::fs::read_to_string(&state).unwrap();
    assert!(on_disk.contains("\"lost\"") && !on_disk.contains("changed"));
}

#[tokio::test]
async fn temp_files_of_interrupted_saves_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let dv = common::start(dir.path(), None).await;
        dv.running.stop().await;
    }
    // What `kill -9` during a save leaves: a full copy of the state under a temp name of a
    // process that no longer runs (pids never exceed 2^22 on Linux).
    let stale = dir.path().join(".state.json.tmp-999999999");
    std::fs::write(&stale, br#"{"secret": "copy"}"#).unwrap();
    let stale_ready = dir.path().join(".ready.json.tmp-4194305");
    std::fs::write(&stale_ready, b"{}").unwrap();
    // Not ours: left alone.
    let unrelated = dir.path().join("notes.tmp-1");
    std::fs::write(&unrelated, b"keep").unwrap();
    let dv = common::start(dir.path(), None).await;
    assert!(!stale.exists(), "stale temp copy of the state removed");
    assert!(!stale_ready.exists());
    assert!(unrelated.exists());
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let (s, _) = dv
        .kv("PUT", "/secrets/x", &t, Some(json!({"value": "v"})))
        .await;
    assert_eq!(s, 200);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("state.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let leftovers = testenv::vault::temp_copies(dir.path());
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn the_host_header_does_not_choose_token_audiences() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let (status, body) = dv
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", "kvbridge-dev"),
            ("client_secret", "kvbridge-dev-secret"),
            ("scope", "https://dev.evil.example/.default"),
        ])
        .await;
    assert_eq!(status, 200);
    let evil = body["access_token"].as_str().unwrap().to_string();
    for host in ["dev.evil.example", "dev.evil.example:443"] {
        let resp = dv
            .http
            .get(format!("{}/secrets?api-version=7.4", dv.origin))
            .header("host", host)
            .bearer_auth(&evil)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "token for {host} accepted");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Invalid audience"),
            "{body}"
        );
    }
    // The documented audiences still work.
    let good = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let (s, _) = dv.kv("GET", "/secrets", &good, None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn vault_names_from_the_host_header_follow_key_vault_rules() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let long = "a".repeat(300);
    let bad_hosts = [
        "we$ird_vault!.localhost".to_string(),
        "a b.localhost".to_string(),
        format!("{long}.localhost"),
        "ab.localhost".to_string(),
        "1vault.localhost".to_string(),
        "my--vault.localhost".to_string(),
        "vault-.localhost".to_string(),
        "x/y.localhost".to_string(),
    ];
    for host in &bad_hosts {
        let resp = dv
            .http
            .put(format!("{}/secrets/s?api-version=7.4", dv.origin))
            .header("host", host.as_str())
            .bearer_auth(&t)
            .json(&json!({"value": "v"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{host}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "BadParameter", "{host}: {body}");
    }
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(
        !state.contains("ird_vault") && !state.contains("a b") && !state.contains(&long[..40]),
        "no vault was created"
    );
    // A valid name is still created on first use.
    let resp = dv
        .http
        .put(format!("{}/secrets/s?api-version=7.4", dv.origin))
        .header("host", "good-vault-1.localhost")
        .bearer_auth(&t)
        .json(&json!({"value": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn oversized_bodies_and_unknown_previews_get_key_vault_errors() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let huge = "x".repeat(3 << 20);
    let resp = dv
        .http
        .put(format!("{}/secrets/big?api-version=7.4", dv.origin))
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(json!({ "value": huge }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["code"], "RequestBodyTooLarge", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("larger"));
    // The token endpoint answers in Entra's shape.
    let resp = dv
        .http
        .post(format!("{}/{}/oauth2/v2.0/token", dv.origin, dv.tenant))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("client_id={huge}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.expect("a JSON error body");
    assert_eq!(body["error"], "invalid_request", "{body}");

    for v in [
        "7.4-previewXYZ",
        "7.6-preview.2.evil",
        "2026-04-01-preview.9",
    ] {
        let resp = dv
            .http
            .get(format!("{}/secrets?api-version={v}", dv.origin))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{v}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "BadParameter");
    }
    for v in ["7.6-preview.2", "7.5-preview.1", "2026-04-01", "2025-07-01"] {
        let resp = dv
            .http
            .get(format!("{}/secrets?api-version={v}", dv.origin))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{v}");
    }
}

#[tokio::test]
async fn absurd_certificate_validities_are_refused_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(
        &seed,
        "vaults:\n  - name: forever\n    certificates:\n      - name: c\n        generate: {subject: CN=c, keyType: EC, curve: P-256, validityDays: 4294967295}\n",
    )
    .unwrap();
    let opts = devvault::Options::new("127.0.0.1:0".parse().unwrap(), dir.path().join("s"));
    let e = devvault::start(devvault::Options {
        seed: Some(seed),
        ..opts
    })
    .await
    .err()
    .expect("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("validityDays") && msg.contains("36500") && !msg.contains("panicked"),
        "{msg}"
    );

    let dv = common::start(&dir.path().join("s2"), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    for months in [json!(4294967296u64), json!(100000), json!(0)] {
        let (s, body) = dv
            .kv(
                "POST",
                "/certificates/c/create",
                &t,
                Some(json!({"policy": {"x509_props": {"subject": "CN=c", "validity_months": months}, "key_props": {"kty": "EC", "crv": "P-256"}, "issuer": {"name": "Self"}}})),
            )
            .await;
        assert_eq!(s, 400, "{months}: {body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("validity_months"));
    }
}
