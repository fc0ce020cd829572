//! Canary: a secret value, a client secret and access tokens go through every error path
//! (404, 403, 401, 429 exhaustion, 503 exhaustion, bad responses, refused token requests);
//! none of them may appear in captured logs (TRACE, all targets) or in error strings / Debug.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use keyvault::*;
use serde_json::json;
use zeroize::Zeroizing;

const CANARY_TOKEN: &str = "CANARY-TOKEN-e8d1f0a2";

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

/// Hands out a fixed (invalid) token, so the vault answers 401 even after a refresh.
#[derive(Debug)]
struct FixedToken;

impl TokenCredential for FixedToken {
    fn get_token<'a>(
        &'a self,
        _s: &'a str,
        _t: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async {
            Ok(AccessToken {
                token: Zeroizing::new(CANARY_TOKEN.into()),
                expires_on: SystemTime::now() + Duration::from_secs(3600),
            })
        })
    }
    fn describe(&self) -> String {
        "fixed token".into()
    }
}

// current_thread: the dev vault, hyper and the client all run on this thread, so the
// thread-local subscriber sees every event.
#[tokio::test(flavor = "current_thread")]
async fn canaries_never_reach_logs_or_errors() {
    let buf = Buf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let env = Env::start().await;
    let vault = env.vault();
    let opts = ClientOptions {
        max_retries: 2,
        ..env.options()
    };
    let cred = Arc::new(TokenCache::new(Arc::new(
        ClientSecretCredential::new(&env.authority(), TENANT, "canary-app", CANARY_CLIENT_SECRET)
            .with_transport(env.transport()),
    )));
    let client = KeyVaultClient::new(cred.clone(), opts.clone()).unwrap();
    let mut errors: Vec<Error> = Vec::new();
    let mut debug_dumps: Vec<String> = Vec::new();

    // Success: the value is there, Debug hides it. The real token is a canary too.
    let s = client.get_secret(&vault, "canary", None).await.unwrap();
    assert_eq!(s.value.as_str(), CANARY_SECRET_VALUE);
    debug_dumps.push(format!("{s:?} {client:?} {cred:?}"));
    let real_token = cred
        .get_token(&format!("{}/.default", env.origin()), Some(TENANT))
        .await
        .unwrap();
    debug_dumps.push(format!("{real_token:?}"));
    let real_token = real_token.token.to_string();
    assert!(real_token.len() > 20);

    // 404
    errors.push(
        client
            .get_secret(&vault, "no-such-secret", None)
            .await
            .unwrap_err(),
    );
    // 403 (disabled version) and 403 (no permission) — the value exists behind both.
    let versions = client
        .list_versions(&vault, ObjectKind::Secret, "rotated")
        .await
        .unwrap();
    errors.push(
        client
            .get_secret(&vault, "rotated", Some(&versions[1].version))
            .await
            .unwrap_err(),
    );
    let lo = KeyVaultClient::new(
        Arc::new(
            ClientSecretCredential::new(&env.authority(), TENANT, "list-only", "list-secret")
                .with_transport(env.transport()),
        ),
        opts.clone(),
    )
    .unwrap();
    errors.push(lo.get_secret(&vault, "canary", None).await.unwrap_err());
    // 401 after one refresh, with a canary token.
    let fixed = KeyVaultClient::new(
        Arc::new(TokenCache::new(Arc::new(FixedToken))),
        opts.clone(),
    )
    .unwrap();
    let e = fixed.get_secret(&vault, "canary", None).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    errors.push(e);
    // Token request refused: wrong client secret (the canary is the one that is "wrong" here).
    let wrong =
        ClientSecretCredential::new(&env.authority(), TENANT, "full-app", CANARY_CLIENT_SECRET)
            .with_transport(env.transport());
    debug_dumps.push(format!("{wrong:?}"));
    errors.push(
        KeyVaultClient::new(Arc::new(wrong), opts.clone())
            .unwrap()
            .get_secret(&vault, "canary", None)
            .await
            .unwrap_err(),
    );
    // Bad response from a "token endpoint" (valid JSON, no token).
    let bogus = ManagedIdentityCredential::new(
        Some(&format!("{}/admin/counters", env.origin())),
        ManagedIdentityId::System,
    )
    .unwrap()
    .with_transport(env.transport());
    let e = bogus
        .get_token("https://vault.azure.net/.default", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::BadResponse { .. }), "{e}");
    errors.push(e);
    // Bad challenge (resource does not match the host): an IP host gets vault.azure.net.
    let e = client
        .get_secret(&format!("https://127.0.0.1:{}", env.port), "canary", None)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ChallengeResourceMismatch { .. }), "{e}");
    errors.push(e);
    // A Retry-After beyond the deadline fails at once.
    env.set_faults(json!({"rate_429": 1.0, "retry_after_secs": 100000}))
        .await;
    let e = client.get_secret(&vault, "canary", None).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Throttled {
                beyond_deadline: Some(_),
                ..
            }
        ),
        "{e}"
    );
    errors.push(e);
    // 429 until retries run out, 503 until retries run out.
    env.set_faults(json!({"rate_429": 1.0, "retry_after_secs": 0}))
        .await;
    let e = client.get_secret(&vault, "canary", None).await.unwrap_err();
    assert!(matches!(e, Error::Throttled { .. }), "{e}");
    errors.push(e);
    env.set_faults(json!({"rate_503": 1.0})).await;
    errors.push(client.get_secret(&vault, "canary", None).await.unwrap_err());
    env.set_faults(json!({"drop_rate": 1.0})).await;
    errors.push(client.get_secret(&vault, "canary", None).await.unwrap_err());
    env.set_faults(json!({})).await;

    drop(_guard);
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let mut shown: Vec<String> = errors.iter().map(|e| format!("{e}\n{e:?}")).collect();
    shown.extend(debug_dumps);
    let canaries = [
        CANARY_SECRET_VALUE,
        CANARY_CLIENT_SECRET,
        CANARY_TOKEN,
        real_token.as_str(),
    ];
    for c in canaries {
        assert!(!logs.contains(c), "canary {c:.12}... in logs");
        for s in &shown {
            assert!(!s.contains(c), "canary {c:.12}... in {s}");
        }
    }
    // The capture worked and the error paths were really taken and logged.
    assert_eq!(errors.len(), 11);
    for needle in [
        "retrying",
        "retries exhausted",
        "token refreshed",
        "401 with a token",
        "request failed",
        "token request refused",
    ] {
        assert!(logs.contains(needle), "logs lack '{needle}'");
    }
    eprintln!(
        "captured {} bytes of TRACE logs; {} errors checked:",
        logs.len(),
        errors.len()
    );
    for e in &errors {
        eprintln!("  {e}");
    }
}
