//! Throttling, faults, deadlines, rate limit and single-flight, measured against the dev vault.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use keyvault::*;
use serde_json::json;

fn secret_cred(env: &Env) -> Arc<dyn TokenCredential> {
    Arc::new(
        ClientSecretCredential::new(&env.authority(), TENANT, "full-app", "full-secret")
            .with_transport(env.transport()),
    )
}

/// 1,000 reads of 50 objects at concurrency 50 under 30% 429 (Retry-After 1 s), 10% 503,
/// 200 ms latency and 5% dropped connections: all succeed, and the Retry-After waits are
/// measured by the transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_reads_under_fault_injection() {
    let env = Env::start_with(true).await;
    let client = KeyVaultClient::new(
        secret_cred(&env),
        ClientOptions {
            max_retries: 40,
            deadline: Duration::from_secs(180),
            timeout: Duration::from_secs(10),
            ..env.options()
        },
    )
    .unwrap();
    env.set_faults(json!({"rate_429": 0.3, "retry_after_secs": 1, "rate_503": 0.1, "latency_ms": 200, "drop_rate": 0.05, "seed": 20261130})).await;
    env.reset_counters().await;
    let start = Instant::now();
    let vault = env.vault();
    let workers: Vec<_> = (0..50)
        .map(|w| {
            let client = client.clone();
            let vault = vault.clone();
            tokio::spawn(async move {
                let mut slow = Vec::new();
                for i in 0..20 {
                    let n = (w * 20 + i) % LOAD_OBJECTS;
                    let t = Instant::now();
                    let s = client
                        .get_secret(&vault, &format!("load-{n}"), None)
                        .await
                        .unwrap_or_else(|e| panic!("read {w}/{i} failed: {e}"));
                    assert_eq!(s.value.as_str(), format!("value-{n}"));
                    slow.push(t.elapsed());
                }
                slow
            })
        })
        .collect();
    let mut durations = Vec::new();
    for w in workers {
        durations.extend(w.await.unwrap());
    }
    let elapsed = start.elapsed();
    env.set_faults(json!({})).await;
    let stats = client.stats();
    let gets = env.count("GetSecret").await;
    let tokens = env.count("Token").await;
    let challenges = env.count("Challenge").await;
    let at_least_1s = durations
        .iter()
        .filter(|d| **d >= Duration::from_secs(1))
        .count();
    eprintln!(
        "1000 reads in {elapsed:?}: {stats:#?}\nGetSecret served: {gets}, Token: {tokens}, reads taking >= 1 s: {at_least_1s}"
    );
    assert_eq!(durations.len(), 1000);
    // The dev vault counts every call that reached it (throttled and failed ones too; dropped
    // connections never reach it): that is exactly what the client says it sent, minus the
    // attempts that died in transport.
    assert!(gets > 1000);
    assert_eq!(
        gets + challenges,
        stats.attempts - stats.transport_errors,
        "{stats:?}"
    );
    assert_eq!(tokens, 1, "one token for the whole run");
    // Retries happened and 429s were answered by waiting what the server said (>= 1 s each).
    assert!(stats.attempts > 1200, "{stats:?}");
    assert!(stats.throttled_responses > 150, "{stats:?}");
    assert!(stats.server_directed_waits >= 150, "{stats:?}");
    assert!(
        stats.server_directed_wait_min >= Duration::from_secs(1),
        "{stats:?}"
    );
    assert!(
        stats.server_directed_wait_total >= Duration::from_secs(stats.server_directed_waits),
        "{stats:?}"
    );
    assert!(
        stats.backoff_waits > 0 && stats.transport_errors > 0,
        "drops and 503s were retried: {stats:?}"
    );
    // Every throttled call took at least the Retry-After: there are at least as many >= 1 s reads
    // as reads that waited (a read may have waited more than once).
    assert!(at_least_1s >= 100, "{at_least_1s} reads took >= 1 s");
}

/// With the vault stopped, a call fails within the configured deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_down_fails_within_deadline() {
    let mut env = Env::start().await;
    let deadline = Duration::from_secs(3);
    let opts = ClientOptions {
        deadline,
        ..env.options()
    };
    // Warm up the token so the failure is the vault's.
    let cred = secret_cred(&env);
    let warm = KeyVaultClient::new(cred.clone(), opts.clone()).unwrap();
    warm.get_secret(&env.vault(), "open", None).await.unwrap();
    env.stop().await;
    // A fresh client has no pooled connection to reuse: every attempt is refused.
    let client = KeyVaultClient::new(cred, opts).unwrap();
    let start = Instant::now();
    let e = client
        .get_secret(&env.vault(), "open", None)
        .await
        .unwrap_err();
    let took = start.elapsed();
    eprintln!("vault down: failed after {took:?}: {e}");
    assert!(took <= deadline + Duration::from_millis(300), "{took:?}");
    assert!(
        matches!(e, Error::Timeout { .. } | Error::Transport { .. }),
        "{e}"
    );
    assert!(e.is_transient());
    assert!(
        client.stats().attempts >= 3,
        "retried until the deadline: {:?}",
        client.stats()
    );
}

/// An endpoint that accepts TCP and never answers: the per-attempt timeout is cut to the
/// remaining deadline, so the call ends at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresponsive_vault_fails_at_deadline() {
    let env = Env::start().await;
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            conns.push(s);
        }
    });
    let deadline = Duration::from_secs(2);
    let client = KeyVaultClient::new(
        secret_cred(&env),
        ClientOptions {
            deadline,
            timeout: Duration::from_secs(30),
            ..env.options()
        },
    )
    .unwrap();
    let start = Instant::now();
    let e = client
        .get_secret(&format!("https://blackhole.localhost:{port}"), "open", None)
        .await
        .unwrap_err();
    let took = start.elapsed();
    eprintln!("unresponsive: failed after {took:?}: {e}");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(
        took >= deadline - Duration::from_millis(100)
            && took <= deadline + Duration::from_millis(500),
        "{took:?}"
    );
    assert!(e.to_string().contains("deadline of 2s exceeded"), "{e}");
    held.abort();
}

/// 1,000 concurrent reads with a fresh client and cache: one challenge, one token request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_token_for_thousand_concurrent_reads() {
    let env = Env::start().await;
    env.reset_counters().await;
    let client = env.client(secret_cred(&env));
    let vault = env.vault();
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let client = client.clone();
            let vault = vault.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                client
                    .get_secret(&vault, "open", None)
                    .await
                    .map(|s| s.value.len())
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "open-value".len());
    }
    let tokens = env.count("Token").await;
    let challenges = env.count("Challenge").await;
    let gets = env.count("GetSecret").await;
    eprintln!(
        "1000 concurrent reads: Token {tokens}, Challenge {challenges}, GetSecret {gets}, {:?}",
        client.stats()
    );
    assert_eq!(tokens, 1);
    assert_eq!(challenges, 1);
    assert_eq!(gets, 1000);
    // The default client-side limit (200/s, 1 s burst) spread the 1,000 requests out.
    assert!(client.stats().rate_limit_waits > 0);
}

/// The client-side token bucket holds a vault to the configured rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_rate_limit() {
    let env = Env::start().await;
    let client = KeyVaultClient::new(
        secret_cred(&env),
        ClientOptions {
            rate_limit_per_sec: Some(20.0),
            ..env.options()
        },
    )
    .unwrap();
    let vault = env.vault();
    client.get_secret(&vault, "open", None).await.unwrap(); // challenge + first read
    let start = Instant::now();
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let c = client.clone();
            let v = vault.clone();
            tokio::spawn(async move { c.get_secret(&v, "open", None).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = start.elapsed();
    eprintln!("60 reads at 20/s: {took:?}, {:?}", client.stats());
    // The bucket had at most 20 - 2 tokens left: >= 42 reads had to wait 1/20 s each.
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(client.stats().rate_limit_waits >= 40);
}

/// 429 until retries run out: Throttled with the attempts and the server's Retry-After;
/// 503 until retries run out: a transient HTTP error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_exhaustion_reports_retry_after() {
    let env = Env::start().await;
    let client = KeyVaultClient::new(
        secret_cred(&env),
        ClientOptions {
            max_retries: 2,
            ..env.options()
        },
    )
    .unwrap();
    let vault = env.vault();
    client.get_secret(&vault, "open", None).await.unwrap();
    env.set_faults(json!({"rate_429": 1.0, "retry_after_secs": 1}))
        .await;
    let start = Instant::now();
    let e = client.get_secret(&vault, "open", None).await.unwrap_err();
    let took = start.elapsed();
    match &e {
        Error::Throttled {
            attempts,
            retry_after,
            status,
            ..
        } => {
            assert_eq!(*attempts, 3);
            assert_eq!(*status, 429);
            assert_eq!(*retry_after, Some(Duration::from_secs(1)));
        }
        other => panic!("expected Throttled, got {other}"),
    }
    assert!(
        took >= Duration::from_secs(2),
        "two Retry-After waits: {took:?}"
    );
    assert!(
        e.to_string().contains("Throttled") && e.to_string().contains("secret 'open'"),
        "{e}"
    );
    // Retry-After longer than the remaining deadline: give up at once instead of sleeping past it.
    let short = KeyVaultClient::new(
        secret_cred(&env),
        ClientOptions {
            deadline: Duration::from_millis(1500),
            ..env.options()
        },
    )
    .unwrap();
    env.set_faults(json!({})).await;
    short.get_secret(&vault, "open", None).await.unwrap();
    env.set_faults(json!({"rate_429": 1.0, "retry_after_secs": 5}))
        .await;
    let before = short.stats();
    let e = short.get_secret(&vault, "open", None).await.unwrap_err();
    assert!(matches!(e, Error::Throttled { .. }), "{e}");
    let after = short.stats();
    // One attempt, no wait: the transport's own counters, not a timing window.
    assert_eq!(after.attempts - before.attempts, 1);
    assert_eq!(after.server_directed_waits, before.server_directed_waits);
    assert_eq!(after.backoff_waits, before.backoff_waits);

    env.set_faults(json!({"rate_503": 1.0})).await;
    let e = client.get_secret(&vault, "open", None).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Http {
                status: 503,
                attempts: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.is_transient());
}

/// A server certificate this client does not trust fails on the first attempt with a hint
/// (`--ca-file`, `SSL_CERT_FILE`), instead of being retried until the deadline: every retry
/// would meet the same certificate.
#[tokio::test]
async fn untrusted_server_certificate_is_not_retried() {
    let env = Env::start().await;
    let cred = ClientSecretCredential::new(&env.authority(), TENANT, "full-app", "full-secret")
        .with_transport(env.transport());
    let untrusting = KeyVaultClient::new(
        Arc::new(cred),
        ClientOptions {
            ca_file: None,
            use_system_roots: false,
            max_retries: 5,
            retry_base_delay: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .unwrap();
    let err = untrusting
        .get_secret(&env.vault(), "open", None)
        .await
        .unwrap_err();
    match &err {
        Error::Transport { attempts, .. } => assert_eq!(*attempts, 1, "{err}"),
        other => panic!("expected a transport error, got {other}"),
    }
    let text = ErrorChain(&err).to_string();
    assert!(
        text.contains("--ca-file") && text.contains("SSL_CERT_FILE"),
        "{text}"
    );
    assert!(
        text.contains("certificate"),
        "the TLS cause is kept: {text}"
    );
}
