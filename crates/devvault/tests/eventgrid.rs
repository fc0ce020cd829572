//! Event Grid from the dev vault over real HTTP: subscription handshakes (Event Grid schema and
//! CloudEvents), `...NewVersionCreated` deliveries on new versions with the subscription's
//! headers, refused subscriptions, bounded retries to a failing endpoint, unsubscribe.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};

/// One request the webhook received: (method, path, headers, body).
type Seen = (Method, String, HeaderMap, Value);

#[derive(Clone, Default)]
struct Hook {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer 500 to everything but handshakes.
    failing: Arc<AtomicBool>,
}

async fn hook(
    axum::extract::State(h): axum::extract::State<Hook>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    h.seen.lock().unwrap().push((
        method.clone(),
        uri.path().to_string(),
        headers.clone(),
        v.clone(),
    ));
    if uri.path() == "/silent" {
        return StatusCode::OK.into_response();
    }
    if method == Method::OPTIONS {
        let origin = headers["webhook-request-origin"]
            .to_str()
            .unwrap()
            .to_string();
        return (StatusCode::OK, [("webhook-allowed-origin", origin)]).into_response();
    }
    if let Some(code) = v[0]["data"]["validationCode"].as_str() {
        return axum::Json(json!({"validationResponse": code})).into_response();
    }
    if h.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    StatusCode::OK.into_response()
}

async fn wait_for(h: &Hook, n: usize, f: impl Fn(&Seen) -> bool) -> Vec<Seen> {
    for _ in 0..200 {
        let got: Vec<Seen> = h
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| f(s))
            .cloned()
            .collect();
        if got.len() >= n {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the webhook did not receive {n} matching requests");
}

#[tokio::test]
async fn subscriptions_handshakes_and_deliveries() {
    let h = Hook::default();
    let app = axum::Router::new().fallback(hook).with_state(h.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://127.0.0.1:{port}");

    let dir = tempfile::tempdir().unwrap();
    let dv = common::start(dir.path(), None).await;
    let t = dv.token("kvbridge-dev", "kvbridge-dev-secret").await;
    let put = |name: &str, body: Value| {
        dv.http
            .put(format!(
                "{}/admin/eventgrid/subscriptions/{name}",
                dv.origin
            ))
            .json(&body)
            .send()
    };

    // Event Grid schema: validated by the echoed code; the delivery headers go along.
    let r = put(
        "eg",
        json!({"endpoint": format!("{base}/eg?token=t1"), "headers": {"aeg-sas-key": "k1"}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v = wait_for(&h, 1, |s| s.1 == "/eg").await;
    assert_eq!(v[0].2["aeg-event-type"], "SubscriptionValidation");
    assert_eq!(v[0].2["aeg-sas-key"], "k1");
    assert_eq!(
        v[0].3[0]["eventType"],
        "Microsoft.EventGrid.SubscriptionValidationEvent"
    );
    // CloudEvents: the OPTIONS handshake.
    let r = put(
        "ce",
        json!({"endpoint": format!("{base}/ce"), "schema": "CloudEventSchemaV1_0", "eventTypes": ["Microsoft.KeyVault.KeyNewVersionCreated"]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v = wait_for(&h, 1, |s| s.1 == "/ce").await;
    assert_eq!(v[0].0, Method::OPTIONS);
    assert_eq!(v[0].2["webhook-request-origin"], "eventgrid.azure.net");

    // Refused: an endpoint that does not answer the handshake, a bad URL, an unknown type.
    for (name, body) in [
        ("silent", json!({"endpoint": format!("{base}/silent")})),
        (
            "silent-ce",
            json!({"endpoint": format!("{base}/silent"), "schema": "CloudEventSchemaV1_0"}),
        ),
        ("file", json!({"endpoint": "file:///etc/passwd"})),
        (
            "types",
            json!({"endpoint": format!("{base}/eg"), "eventTypes": ["Microsoft.KeyVault.SecretNearExpiry"]}),
        ),
    ] {
        let r = put(name, body).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{name}");
    }
    let subs = dv.admin("GET", "/admin/eventgrid", None).await;
    assert_eq!(
        subs["subscriptions"].as_object().unwrap().len(),
        2,
        "{subs}"
    );

    // A new secret version: one Event Grid delivery (not to the key-only CloudEvents one).
    let (status, secret) = dv
        .kv("PUT", "/secrets/db", &t, Some(json!({"value": "v1"})))
        .await;
    assert_eq!(status, 200);
    let version = secret["id"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let d = wait_for(&h, 1, |s| {
        s.1 == "/eg" && s.2["aeg-event-type"] == "Notification"
    })
    .await;
    let e = &d[0].3[0];
    assert_eq!(e["eventType"], "Microsoft.KeyVault.SecretNewVersionCreated");
    assert_eq!(e["subject"], "db");
    assert_eq!(e["data"]["ObjectName"], "db");
    assert_eq!(e["data"]["ObjectType"], "Secret");
    assert_eq!(e["data"]["VaultName"], "dev");
    assert_eq!(e["data"]["Version"], version.as_str());
    assert_eq!(d[0].2["aeg-sas-key"], "k1");
    assert!(!e.to_string().contains("v1\""), "no value in the event");

    // A new key: both subscriptions; CloudEvents as one structured event.
    let (status, _) = dv
        .kv(
            "POST",
            "/keys/signing/create",
            &t,
            Some(json!({"kty": "EC", "crv": "P-256"})),
        )
        .await;
    assert_eq!(status, 200);
    let c = wait_for(&h, 1, |s| s.1 == "/ce" && s.0 == Method::POST).await;
    assert_eq!(c[0].3["specversion"], "1.0");
    assert_eq!(c[0].3["type"], "Microsoft.KeyVault.KeyNewVersionCreated");
    assert_eq!(c[0].3["data"]["ObjectName"], "signing");
    assert!(c[0].2["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/cloudevents+json"));
    wait_for(&h, 2, |s| {
        s.1 == "/eg" && s.2["aeg-event-type"] == "Notification"
    })
    .await;

    // A failing endpoint: a bounded number of attempts, then counted as failed.
    h.failing.store(true, Ordering::SeqCst);
    dv.kv("PUT", "/secrets/db", &t, Some(json!({"value": "v2"})))
        .await;
    let attempts = wait_for(&h, 3 + 2, |s| {
        s.1 == "/eg" && s.2["aeg-event-type"] == "Notification"
    })
    .await;
    assert_eq!(attempts.last().unwrap().2["aeg-delivery-count"], "2");
    for _ in 0..100 {
        if dv.admin("GET", "/admin/eventgrid", None).await["stats"]["failed"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stats = dv.admin("GET", "/admin/eventgrid", None).await["stats"].clone();
    assert_eq!(stats["failed"], 1, "{stats}");
    assert_eq!(stats["delivered"], 3, "{stats}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.1 == "/eg" && s.2["aeg-event-type"] == "Notification")
            .count(),
        5,
        "no attempt beyond the bound"
    );

    // Unsubscribed: no more deliveries.
    h.failing.store(false, Ordering::SeqCst);
    let r = dv
        .http
        .delete(format!("{}/admin/eventgrid/subscriptions/eg", dv.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    dv.kv("PUT", "/secrets/db", &t, Some(json!({"value": "v3"})))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.1 == "/eg" && s.2["aeg-event-type"] == "Notification")
            .count(),
        5
    );
}
