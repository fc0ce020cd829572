//! Fault injection and counters over real HTTPS: 429 with Retry-After, 503, latency, dropped
//! connections, per-identity budgets, scope, runtime switching, start-time configuration.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use serde_json::json;

#[tokio::test]
async fn injected_faults_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    assert_eq!(
        dv.kv("PUT", "/secrets/a", &t, Some(json!({"value": "1"})))
            .await
            .0,
        200
    );
    dv.admin("POST", "/admin/counters/reset", None).await;

    // Always 429, Retry-After 3.
    dv.admin(
        "PUT",
        "/admin/faults",
        Some(json!({"rate_429": 1.0, "retry_after_secs": 3})),
    )
    .await;
    let (s, h, e) = dv.kv_full("GET", "/secrets/a/", &t, None).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "3");
    assert_eq!(e["error"]["code"], "Throttled");
    // Token endpoints are out of the default scope.
    dv.token("kvbridge-dev", "kvbridge-dev-secret").await;

    // Always 503.
    dv.admin("PUT", "/admin/faults", Some(json!({"rate_503": 1.0})))
        .await;
    assert_eq!(dv.kv("GET", "/secrets/a/", &t, None).await.0, 503);

    // Latency.
    dv.admin("PUT", "/admin/faults", Some(json!({"latency_ms": 300})))
        .await;
    let start = Instant::now();
    assert_eq!(dv.kv("GET", "/secrets/a/", &t, None).await.0, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));

    // Dropped connections: the client sees a transport error, not a response.
    dv.admin("PUT", "/admin/faults", Some(json!({"drop_rate": 1.0})))
        .await;
    let err = dv
        .http
        .get(format!("{}/secrets/a/?api-version=7.4", dv.origin))
        .bearer_auth(&t)
        .send()
        .await
        .expect_err("connection is dropped");
    assert!(
        err.is_request() || err.is_connect() || err.to_string().contains("connection"),
        "{err}"
    );

    // Per-identity budget.
    dv.admin(
        "PUT",
        "/admin/faults",
        Some(json!({"budget": {"requests": 2, "window_secs": 30}})),
    )
    .await;
    assert_eq!(dv.kv("GET", "/secrets/a/", &t, None).await.0, 200);
    assert_eq!(dv.kv("GET", "/secrets/a/", &t, None).await.0, 200);
    let (s, h, _) = dv.kv_full("GET", "/secrets/a/", &t, None).await;
    assert_eq!(s, 429);
    let ra: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&ra), "{ra}");

    // Scope "all" also throttles the token endpoint.
    dv.admin(
        "PUT",
        "/admin/faults",
        Some(json!({"rate_429": 1.0, "scope": "all"})),
    )
    .await;
    let (s, _) = dv
        .token_request(&[
            ("grant_type", "client_credentials"),
            ("client_id", "kvbridge-dev"),
            ("client_secret", "kvbridge-dev-secret"),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .await;
    assert_eq!(s, 429);

    // Invalid configurations are refused and leave the current one in place.
    let resp = dv
        .http
        .put(format!("{}/admin/faults", dv.origin))
        .json(&json!({"rate_429": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        dv.admin("GET", "/admin/faults", None).await["rate_429"],
        1.0
    );
    dv.admin("PUT", "/admin/faults", Some(json!({}))).await;

    // Counters: every call that reached the vault counts, throttled and failed ones too
    // (429, 503, latency, 2 within budget, 1 over budget); the dropped one never arrived.
    assert_eq!(dv.count("GetSecret", Some("a")).await, 6);
    let c = dv.admin("GET", "/admin/counters", None).await;
    assert!(c["total"].as_u64().unwrap() >= 3);
}

#[tokio::test]
async fn faults_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start_with(dir.path(), None, |o| {
        o.faults = serde_json::from_value(json!({"rate_429": 1.0, "retry_after_secs": 7})).unwrap();
    })
    .await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let (s, h, _) = dv.kv_full("GET", "/secrets/a/", &t, None).await;
    assert_eq!((s, h["retry-after"].to_str().unwrap()), (429, "7"));
}

/// With a seed, the fault decisions repeat exactly: the same sequential requests meet the same
/// 503s and dropped connections on every run (and after the seed is set again).
#[tokio::test]
async fn seeded_faults_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    assert_eq!(
        dv.kv("PUT", "/secrets/a", &t, Some(json!({"value": "1"})))
            .await
            .0,
        200
    );
    let faults = json!({"rate_503": 0.3, "drop_rate": 0.2, "seed": 424242});
    let mut runs = Vec::new();
    for _ in 0..2 {
        dv.admin("PUT", "/admin/faults", Some(faults.clone())).await;
        let mut outcomes = Vec::new();
        for _ in 0..40 {
            let url = format!("{}/secrets/a/?api-version=7.4", dv.origin);
            let r = dv.http.get(url).bearer_auth(&t).send().await;
            outcomes.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
        }
        runs.push(outcomes);
    }
    dv.admin("PUT", "/admin/faults", Some(json!({}))).await;
    assert_eq!(runs[0], runs[1]);
    for want in [0, 200, 503] {
        assert!(runs[0].contains(&want), "{want} in {:?}", runs[0]);
    }
}

/// Key Vault's per-vault service limit (`vault_limit`): beyond it 429 `Throttled` in Key Vault's
/// error shape with Retry-After; throttled requests are counted but do not use the budget.
#[tokio::test]
async fn key_vault_limit_per_vault() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    assert_eq!(
        dv.kv("PUT", "/secrets/a", &t, Some(json!({"value": "1"})))
            .await
            .0,
        200
    );
    dv.set_faults(json!({"vault_limit": {"requests": 5, "window_secs": 60}}))
        .await;
    for _ in 0..5 {
        assert_eq!(dv.kv("GET", "/secrets/a", &t, None).await.0, 200);
    }
    for _ in 0..3 {
        let (status, headers, body) = dv.kv_full("GET", "/secrets/a", &t, None).await;
        assert_eq!(status, 429);
        assert_eq!(body["error"]["code"], "Throttled", "{body}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    assert_eq!(dv.count("Throttled", Some("a")).await, 3);
    // Off again: served.
    dv.set_faults(json!({})).await;
    assert_eq!(dv.kv("GET", "/secrets/a", &t, None).await.0, 200);
    // An invalid limit is refused.
    let resp = dv
        .http
        .put(format!("{}/admin/faults", dv.origin))
        .json(&json!({"vault_limit": {"requests": 0, "window_secs": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}
