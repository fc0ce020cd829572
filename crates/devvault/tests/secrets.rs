//! Secrets over real HTTPS: challenge, set/get/list/versions/update/delete/recover/purge,
//! disabled versions, paging, persistence across restarts, corrupt state.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use serde_json::json;

#[tokio::test]
async fn challenge_names_authority_tenant_and_resource() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let resp = dv
        .http
        .get(format!("{}/secrets/x/?api-version=2026-04-01", dv.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    // https://localhost:PORT (the default vault, as the banner prints it) is covered by the
    // resource it advertises, so clients that verify the challenge resource accept it.
    assert_eq!(
        challenge,
        format!(
            "Bearer authorization=\"{}/{}\", resource=\"{}\"",
            dv.origin, dv.tenant, dv.origin
        )
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "Unauthorized");

    // A NAME.localhost host gets a resource the SDK's subdomain check accepts.
    let port = dv.running.addr.port();
    let c = common::client_for(
        &dv.running.info.ca,
        &[("myvault.localhost", dv.running.addr)],
    );
    let resp = c
        .get(format!(
            "https://myvault.localhost:{port}/secrets/x/?api-version=7.4"
        ))
        .send()
        .await
        .expect("a vault created on first use gets a certificate for its name");
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.ends_with(&format!("resource=\"https://localhost:{port}\"")),
        "{challenge}"
    );
}

#[tokio::test]
async fn secret_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;

    let (s, v1) = dv
        .kv(
            "PUT",
            "/secrets/db-pass",
            &t,
            Some(json!({"value": "one", "contentType": "text/plain", "tags": {"env": "dev"}})),
        )
        .await;
    assert_eq!(s, 200, "{v1}");
    let id1 = v1["id"].as_str().unwrap().to_string();
    let ver1 = id1.rsplit('/').next().unwrap().to_string();
    assert_eq!(ver1.len(), 32);
    assert!(id1.starts_with(&format!("{}/secrets/db-pass/", dv.origin)));
    assert_eq!(v1["attributes"]["recoveryLevel"], "Recoverable+Purgeable");

    let (_, v2) = dv
        .kv(
            "PUT",
            "/secrets/db-pass",
            &t,
            Some(json!({"value": "two", "attributes": {"exp": 4102444800i64}})),
        )
        .await;
    let ver2 = v2["id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();

    let (s, latest) = dv.kv("GET", "/secrets/db-pass/", &t, None).await;
    assert_eq!(s, 200);
    assert_eq!(latest["value"], "two");
    assert_eq!(latest["attributes"]["exp"], 4102444800i64);
    let (_, old) = dv
        .kv("GET", &format!("/secrets/db-pass/{ver1}"), &t, None)
        .await;
    assert_eq!(old["value"], "one");
    assert_eq!(old["tags"]["env"], "dev");

    let (_, versions) = dv.kv("GET", "/secrets/db-pass/versions", &t, None).await;
    let ids: Vec<&str> = versions["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(
        versions["value"][0].get("value").is_none(),
        "list items carry no values"
    );

    // Disable the newest version: 403 SecretDisabled, the older one still readable.
    let (s, upd) = dv
        .kv(
            "PATCH",
            &format!("/secrets/db-pass/{ver2}"),
            &t,
            Some(json!({"attributes": {"enabled": false}})),
        )
        .await;
    assert_eq!(s, 200);
    assert!(upd.get("value").is_none());
    let (s, err) = dv.kv("GET", "/secrets/db-pass/", &t, None).await;
    assert_eq!(s, 403);
    assert_eq!(err["error"]["code"], "Forbidden");
    assert_eq!(err["error"]["innererror"]["code"], "SecretDisabled");
    assert_eq!(
        dv.kv("GET", &format!("/secrets/db-pass/{ver1}"), &t, None)
            .await
            .0,
        200
    );

    // Soft delete, name reuse conflict, recover, delete again, purge.
    let (s, del) = dv.kv("DELETE", "/secrets/db-pass", &t, None).await;
    assert_eq!(s, 200);
    assert_eq!(
        del["recoveryId"],
        format!("{}/deletedsecrets/db-pass", dv.origin)
    );
    assert!(del["scheduledPurgeDate"].as_i64().unwrap() > del["deletedDate"].as_i64().unwrap());
    let (s, e) = dv.kv("GET", "/secrets/db-pass/", &t, None).await;
    assert_eq!(
        (s, e["error"]["code"].as_str().unwrap()),
        (404, "SecretNotFound")
    );
    assert_eq!(
        dv.kv("PUT", "/secrets/db-pass", &t, Some(json!({"value": "x"})))
            .await
            .0,
        409
    );
    assert_eq!(
        dv.kv("GET", "/deletedsecrets/db-pass", &t, None).await.0,
        200
    );
    assert_eq!(
        dv.kv("GET", "/deletedsecrets", &t, None).await.1["value"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        dv.kv("POST", "/deletedsecrets/db-pass/recover", &t, None)
            .await
            .0,
        200
    );
    assert_eq!(
        dv.kv("GET", &format!("/secrets/db-pass/{ver1}"), &t, None)
            .await
            .1["value"],
        "one"
    );
    assert_eq!(dv.kv("DELETE", "/secrets/db-pass", &t, None).await.0, 200);
    assert_eq!(
        dv.kv("DELETE", "/deletedsecrets/db-pass", &t, None).await.0,
        204
    );
    assert_eq!(
        dv.kv("GET", "/deletedsecrets/db-pass", &t, None).await.0,
        404
    );
    assert_eq!(
        dv.kv(
            "PUT",
            "/secrets/db-pass",
            &t,
            Some(json!({"value": "fresh"}))
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn bad_requests_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let (s, e) = dv
        .kv("PUT", "/secrets/bad_name", &t, Some(json!({"value": "x"})))
        .await;
    assert_eq!(s, 400);
    assert!(e["error"]["message"].as_str().unwrap().contains("bad_name"));
    let (s, e) = dv
        .kv("PUT", "/secrets/ok", &t, Some(json!({"contentType": "x"})))
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str().unwrap()),
        (400, "BadParameter")
    );
    let (s, e) = dv
        .kv(
            "PUT",
            "/secrets/ok",
            &t,
            Some(json!({"value": "x".repeat(26 * 1024)})),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    let resp = dv
        .http
        .get(format!("{}/secrets/ok/?api-version=9.9", dv.origin))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn list_pages_with_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    for i in 0..30 {
        assert_eq!(
            dv.kv(
                "PUT",
                &format!("/secrets/s{i:02}"),
                &t,
                Some(json!({"value": "v"}))
            )
            .await
            .0,
            200
        );
    }
    let mut url = format!("{}/secrets?api-version=7.4&maxresults=7", dv.origin);
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let page: serde_json::Value = dv
            .http
            .get(&url)
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        pages += 1;
        for item in page["value"].as_array().unwrap() {
            names.push(
                item["id"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
            );
        }
        match page["nextLink"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    let expected: Vec<String> = (0..30).map(|i| format!("s{i:02}")).collect();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn state_survives_restart_and_corruption_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ca_before;
    {
        let dv = common::start(dir.path(), None).await;
        let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
        assert_eq!(
            dv.kv("PUT", "/secrets/keep", &t, Some(json!({"value": "kept"})))
                .await
                .0,
            200
        );
        ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        dv.running.stop().await;
    }
    let dv = common::start(dir.path(), None).await;
    assert_eq!(
        std::fs::read(dir.path().join("ca.pem")).unwrap(),
        ca_before,
        "CA is reused"
    );
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    assert_eq!(
        dv.kv("GET", "/secrets/keep/", &t, None).await.1["value"],
        "kept"
    );
    dv.running.stop().await;

    let state = dir.path().join("state.json");
    let full = std::fs::read(&state).unwrap();
    std::fs::write(&state, &full[..full.len() - 10]).unwrap();
    let err = devvault::start(devvault::Options::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path(),
    ))
    .await
    .err()
    .expect("a corrupt state file stops the start");
    let msg = err.to_string();
    assert!(
        msg.contains("state.json") && msg.contains("corrupt"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&state).unwrap(),
        &full[..full.len() - 10],
        "left untouched"
    );
}
