//! Hostile endpoints (issue 13.6): absurd Retry-After values, waits beyond the deadline, and
//! bodies that never end, from a scripted HTTPS "vault" and plain-HTTP token endpoints, and
//! from the dev vault's own fault injection. Nothing may panic, sleep past the deadline or
//! buffer more than the caps.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::hostile::{Hostile, Reply};
use common::*;
use keyvault::*;
use serde_json::json;

fn hostile_client(h: &Hostile, deadline: Duration) -> KeyVaultClient {
    let cred =
        ManagedIdentityCredential::new(Some("http://127.0.0.1:9"), ManagedIdentityId::System)
            .unwrap();
    KeyVaultClient::new(
        Arc::new(cred),
        ClientOptions {
            ca_file: h.ca.clone(),
            use_system_roots: false,
            deadline,
            timeout: Duration::from_secs(20),
            retry_base_delay: Duration::from_millis(10),
            retry_max_delay: Duration::from_millis(50),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Every form of server-directed wait, with values that overflow `Duration` or `Instant`
/// arithmetic: an error saying the wait is beyond the deadline, at once, no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_retry_after_values_fail_fast_without_panicking() {
    for (header, value) in [
        ("retry-after", "1e20"),
        ("retry-after", "99999999999999999999"),
        ("retry-after", "18446744073709551615"),
        ("retry-after", "inf"),
        ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT"),
        ("retry-after-ms", "1e300"),
        ("x-ms-retry-after-ms", "18446744073709551616000"),
    ] {
        let h = Hostile::https(move |_, _| {
            Reply::full(
                "429 Too Many Requests",
                &[(header, value), ("content-type", "application/json")],
                r#"{"error":{"code":"Throttled","message":"slow down"}}"#,
            )
        })
        .await;
        let client = hostile_client(&h, Duration::from_secs(30));
        let t0 = Instant::now();
        let e = client
            .get_secret(&format!("https://localhost:{}", h.port), "s", None)
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{header}: {value}: took {:?}",
            t0.elapsed()
        );
        assert!(
            matches!(
                e,
                Error::Throttled {
                    beyond_deadline: Some(_),
                    attempts: 1,
                    ..
                }
            ),
            "{header}: {value}: {msg}"
        );
        assert!(
            msg.contains("asked to wait") && msg.contains("more than the remaining deadline"),
            "{msg}"
        );
        assert_eq!(e.kind(), ErrorKind::Throttled);
        assert_eq!(h.requests.load(Ordering::SeqCst), 1, "no retry was slept");
    }
}

/// The dev vault throttling with `Retry-After: 18446744073709551615` (u64::MAX, the largest
/// value its fault injection can express) and with a plausible but too long wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_vault_retry_after_beyond_deadline_fails_at_once() {
    let env = Env::start().await;
    let cred = Arc::new(
        ClientSecretCredential::new(&env.authority(), TENANT, "full-app", "full-secret")
            .with_transport(env.transport()),
    );
    let client = KeyVaultClient::new(
        cred,
        ClientOptions {
            deadline: Duration::from_secs(20),
            ..env.options()
        },
    )
    .unwrap();
    // Learn the challenge and the token before throttling starts.
    client.get_secret(&env.vault(), "open", None).await.unwrap();
    for secs in [u64::MAX, 100] {
        env.set_faults(json!({"rate_429": 1.0, "retry_after_secs": secs}))
            .await;
        let t0 = Instant::now();
        let e = client
            .get_secret(&env.vault(), "open", None)
            .await
            .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let msg = e.to_string();
        assert!(
            msg.contains("throttled (asked to wait")
                && msg.contains("more than the remaining deadline of")
                && msg.contains("kvtest.localhost"),
            "{msg}"
        );
    }
    env.set_faults(json!({})).await;
}

/// A vault whose body never ends: refused at the cap, quickly, with a clear error; the server
/// could send far more than the client ever buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_response_bodies_are_capped() {
    // Announced as huge: refused before reading.
    let h = Hostile::https(|_, _| Reply::Endless {
        head: "HTTP/1.1 401 Unauthorized\r\ncontent-length: 10000000000".into(),
        max_bytes: 1 << 30,
    })
    .await;
    let e = hostile_client(&h, Duration::from_secs(60))
        .get_secret(&format!("https://localhost:{}", h.port), "s", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ResponseTooLarge {
                limit: MAX_VAULT_BODY,
                status: 401,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("response body larger than"), "{e}");

    // Not announced (read until close): stopped at the cap.
    let h = Hostile::https(|_, _| Reply::Endless {
        head: "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close".into(),
        max_bytes: 1 << 30,
    })
    .await;
    let t0 = Instant::now();
    let e = hostile_client(&h, Duration::from_secs(60))
        .get_secret(&format!("https://localhost:{}", h.port), "s", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ResponseTooLarge { .. }), "{e}");
    assert_eq!(e.kind(), ErrorKind::BadResponse);
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    // Give the server a moment to notice the closed connection, then check it stopped early.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let written = h.written.load(Ordering::Relaxed);
    assert!(written < 64 << 20, "server wrote {written} bytes");
}

/// Token endpoints (IMDS, NMI) get a smaller cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_response_bodies_are_capped() {
    let h = Hostile::http(|_, _| Reply::Endless {
        head: "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close".into(),
        max_bytes: 1 << 30,
    })
    .await;
    let t = Transport::new(&ClientOptions {
        use_system_roots: false,
        timeout: Duration::from_secs(20),
        ..Default::default()
    })
    .unwrap();
    let imds = ManagedIdentityCredential::new(
        Some(&format!("http://127.0.0.1:{}", h.port)),
        ManagedIdentityId::System,
    )
    .unwrap()
    .with_transport(t.clone());
    let e = imds
        .get_token("https://vault.azure.net/.default", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ResponseTooLarge {
                limit: MAX_TOKEN_BODY,
                ..
            }
        ),
        "{e}"
    );
    let nmi = PodIdentityCredential::new(
        Some(&format!("http://127.0.0.1:{}/host/token/", h.port)),
        "default",
        "app-0",
    )
    .unwrap()
    .with_transport(t);
    let e = nmi
        .get_token("https://vault.azure.net/.default", None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ResponseTooLarge {
                limit: MAX_TOKEN_BODY,
                ..
            }
        ),
        "{e}"
    );
}

/// NMI over plain HTTP, exactly as the Azure provider and the FlexVolume driver called it
/// (GET /host/token/?resource=R, headers podns and podname), in the older NMI shape (JSON
/// numbers) and with NMI's plain-text errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_identity_request_shape_and_errors_over_http() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = Hostile::http(move |_, head| {
        s.lock().unwrap().push(head.to_string());
        let lower = head.to_ascii_lowercase();
        if lower.contains("podname: missing-pod") {
            return Reply::full(
                "404 Not Found",
                &[("content-type", "text/plain; charset=utf-8")],
                "no AzureAssignedIdentity found for pod:default/missing-pod in assigned state\n",
            );
        }
        let body = json!({
            "token": {
                "access_token": "nmi-issued-token",
                "refresh_token": "",
                "expires_in": 3599,
                "expires_on": now() + 3599,
                "not_before": now(),
                "resource": "https://vault.azure.net",
                "token_type": "Bearer",
            },
            "clientid": "11111111-aaaa-bbbb-cccc-222222222222",
        })
        .to_string();
        Reply::full("200 OK", &[("content-type", "application/json")], &body)
    })
    .await;
    let t = Transport::new(&ClientOptions {
        use_system_roots: false,
        ..Default::default()
    })
    .unwrap();
    let endpoint = format!("http://127.0.0.1:{}/host/token/", h.port);
    let nmi = PodIdentityCredential::new(Some(&endpoint), "default", "app-0")
        .unwrap()
        .with_transport(t.clone());
    let tok = nmi
        .get_token("https://vault.azure.net/.default", None)
        .await
        .unwrap();
    assert_eq!(tok.token.as_str(), "nmi-issued-token");
    let left = tok
        .expires_on
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(3500), "{left:?}");
    let head = seen.lock().unwrap()[0].clone();
    let lower = head.to_ascii_lowercase();
    assert!(
        head.starts_with("GET /host/token/?resource=https%3A%2F%2Fvault.azure.net HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(lower.contains("\r\npodns: default\r\n"), "{head}");
    assert!(lower.contains("\r\npodname: app-0\r\n"), "{head}");
    assert!(!lower.contains("metadata:"), "{head}");

    // A client id that NMI did not honour is refused.
    let picky = PodIdentityCredential::new(Some(&endpoint), "default", "app-0")
        .unwrap()
        .with_client_id(Some("33333333-0000-0000-0000-000000000000"))
        .with_transport(t.clone());
    let e = picky
        .get_token("https://vault.azure.net/.default", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BadResponse { .. }), "{e}");
    assert!(seen.lock().unwrap()[1].contains("&client_id=33333333-0000-0000-0000-000000000000"));

    let missing = PodIdentityCredential::new(Some(&endpoint), "default", "missing-pod")
        .unwrap()
        .with_transport(t);
    let e = missing
        .get_token("https://vault.azure.net/.default", None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Auth { status: 404, .. })
            && e.to_string()
                .contains("no AzureAssignedIdentity found for pod:default/missing-pod"),
        "{e}"
    );
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
}
