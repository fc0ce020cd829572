//! Version listings (issue 12.4): the current version (what a plain GET returns) comes first,
//! even when several versions were created in the same second; older ties are ordered by
//! version id, descending, whatever order the vault lists them in.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::*;
use keyvault::*;
use serde_json::json;

/// Creates versions `v1`, `v2`, `v3` of `name` through the REST API until all three share one
/// `created` second (at most a few tries); returns false if the clock never cooperated.
async fn three_versions_in_one_second(
    http: &reqwest::Client,
    vault: &str,
    token: &str,
    name: &str,
) -> Vec<(String, i64)> {
    let mut created = Vec::new();
    for v in ["v1", "v2", "v3"] {
        let resp = http
            .put(format!("{vault}/secrets/{name}?api-version=7.4"))
            .bearer_auth(token)
            .json(&json!({ "value": v }))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
        let body: serde_json::Value = resp.json().await.unwrap();
        let id = body["id"].as_str().unwrap().to_string();
        let version = id.rsplit('/').next().unwrap().to_string();
        created.push((version, body["attributes"]["created"].as_i64().unwrap()));
    }
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_version_first_when_versions_share_a_second() {
    let env = Env::start().await;
    let cred = Arc::new(
        ClientSecretCredential::new(&env.authority(), TENANT, "full-app", "full-secret")
            .with_transport(env.transport()),
    );
    let token = cred
        .get_token("https://vault.azure.net/.default", Some(TENANT))
        .await
        .unwrap();
    let client = env.client(cred);
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&env.ca).unwrap()).unwrap(),
        )
        .resolve(
            "kvtest.localhost",
            format!("127.0.0.1:{}", env.port).parse().unwrap(),
        )
        .build()
        .unwrap();
    // Several objects: with three random version ids, "newest created, then id" alone would
    // put the current version first only one time in three.
    let mut checked = 0;
    for i in 0..24 {
        if checked == 8 {
            break;
        }
        let name = format!("tie-{i}");
        let made = three_versions_in_one_second(&http, &env.vault(), &token.token, &name).await;
        if made.iter().any(|(_, c)| *c != made[0].1) {
            continue; // crossed a second boundary: not the case under test
        }
        checked += 1;
        let listed = client
            .list_versions(&env.vault(), ObjectKind::Secret, &name)
            .await
            .unwrap();
        let current = client.get_secret(&env.vault(), &name, None).await.unwrap();
        assert_eq!(current.value.as_str(), "v3");
        assert_eq!(listed.len(), 3);
        assert_eq!(
            listed[0].version, current.version,
            "file 0 must be the current version"
        );
        assert_eq!(listed[0].version, made[2].0);
        // The older two: by version id, descending (documented tie-break).
        let mut older = vec![made[0].0.clone(), made[1].0.clone()];
        older.sort_by(|a, b| b.cmp(a));
        assert_eq!(
            vec![listed[1].version.clone(), listed[2].version.clone()],
            older
        );
        // Same answer every time.
        let again = client
            .list_versions(&env.vault(), ObjectKind::Secret, &name)
            .await
            .unwrap();
        assert_eq!(again, listed);
    }
    assert!(
        checked >= 4,
        "only {checked} objects had versions in one second"
    );

    // Distinct seconds need no extra GET: the seeded "rotated" secret.
    env.reset_counters().await;
    let listed = client
        .list_versions(&env.vault(), ObjectKind::Secret, "rotated")
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed[0].created > listed[1].created && listed[1].created > listed[2].created);
    assert_eq!(env.count("GetSecret").await, 0);
}
