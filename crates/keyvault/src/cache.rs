//! Token cache with proactive refresh and single-flight: concurrent callers for the same
//! (scope, tenant) share one in-flight token request.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::credential::{AccessToken, BoxFuture, TokenCredential};
use crate::Error;

/// Refresh this long before expiry (or at half-life for tokens living less than twice that).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// A token closer than this to expiry is not handed out at all.
const EXPIRY_SKEW: Duration = Duration::from_secs(10);

struct Cached {
    token: AccessToken,
    obtained: SystemTime,
}

impl Cached {
    fn refresh_at(&self) -> SystemTime {
        let lifetime = self
            .token
            .expires_on
            .duration_since(self.obtained)
            .unwrap_or(Duration::ZERO);
        let margin = if lifetime < REFRESH_MARGIN * 2 {
            lifetime / 2
        } else {
            REFRESH_MARGIN
        };
        self.token.expires_on - margin
    }

    fn fresh(&self, now: SystemTime) -> bool {
        now < self.refresh_at()
    }

    fn usable(&self, now: SystemTime) -> bool {
        now + EXPIRY_SKEW < self.token.expires_on
    }
}

#[derive(Default)]
struct Entry {
    current: Mutex<Option<Cached>>,
    /// Held while a token request is in flight (the single flight).
    refresh: tokio::sync::Mutex<()>,
    /// Bumped after every completed token request (success or failure).
    generation: AtomicU64,
    last_error: Mutex<Option<(u64, Error)>>,
}

/// Wraps a credential with a per-(scope, tenant) cache.
pub struct TokenCache {
    inner: Arc<dyn TokenCredential>,
    entries: Mutex<HashMap<(String, String), Arc<Entry>>>,
    requests: AtomicU64,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TokenCache {
    pub fn new(inner: Arc<dyn TokenCredential>) -> Self {
        Self {
            inner,
            entries: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
        }
    }

    /// How many token requests went to the wrapped credential.
    pub fn upstream_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn entry(&self, scope: &str, tenant: Option<&str>) -> Arc<Entry> {
        lock(&self.entries)
            .entry((scope.to_string(), tenant.unwrap_or("").to_string()))
            .or_default()
            .clone()
    }

    async fn get(&self, scope: &str, tenant: Option<&str>) -> Result<AccessToken, Error> {
        let entry = self.entry(scope, tenant);
        let now = SystemTime::now();
        if let Some(c) = lock(&entry.current).as_ref() {
            if c.fresh(now) {
                return Ok(c.token.clone());
            }
        }
        let seen = entry.generation.load(Ordering::Acquire);
        let _flight = entry.refresh.lock().await;
        let now = SystemTime::now();
        if entry.generation.load(Ordering::Acquire) != seen {
            // Someone else completed a request while we waited: share its outcome.
            if let Some(c) = lock(&entry.current).as_ref() {
                if c.usable(now) {
                    return Ok(c.token.clone());
                }
            }
            if let Some((g, e)) = lock(&entry.last_error).as_ref() {
                if *g == entry.generation.load(Ordering::Acquire) {
                    return Err(e.clone());
                }
            }
        } else if let Some(c) = lock(&entry.current).as_ref() {
            if c.fresh(now) {
                return Ok(c.token.clone());
            }
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.inner.get_token(scope, tenant).await;
        let generation = entry.generation.load(Ordering::Acquire) + 1;
        let out = match result {
            Ok(token) => {
                tracing::debug!(credential = %self.inner.describe(), scope, "token refreshed");
                *lock(&entry.current) = Some(Cached {
                    token: token.clone(),
                    obtained: SystemTime::now(),
                });
                *lock(&entry.last_error) = None;
                Ok(token)
            }
            Err(e) => {
                *lock(&entry.last_error) = Some((generation, e.clone()));
                let still = lock(&entry.current)
                    .as_ref()
                    .filter(|c| c.usable(SystemTime::now()))
                    .map(|c| c.token.clone());
                match still {
                    Some(t) => {
                        tracing::warn!(credential = %self.inner.describe(), error = %e, "token refresh failed; using the current token until it expires");
                        Ok(t)
                    }
                    None => Err(e),
                }
            }
        };
        entry.generation.store(generation, Ordering::Release);
        out
    }
}

impl TokenCredential for TokenCache {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(self.get(scope, tenant))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn invalidate(&self, scope: &str, tenant: Option<&str>, rejected_token: &str) {
        let entry = self.entry(scope, tenant);
        let mut cur = lock(&entry.current);
        if cur
            .as_ref()
            .is_some_and(|c| c.token.token.as_str() == rejected_token)
        {
            *cur = None;
        }
        drop(cur);
        self.inner.invalidate(scope, tenant, rejected_token);
    }

    fn is_cached(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use zeroize::Zeroizing;

    #[derive(Debug)]
    struct Counting {
        calls: AtomicU32,
        lifetime: Duration,
        fail: bool,
    }

    impl TokenCredential for Counting {
        fn get_token<'a>(
            &'a self,
            _s: &'a str,
            _t: Option<&'a str>,
        ) -> BoxFuture<'a, Result<AccessToken, Error>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                if self.fail {
                    return Err(Error::Auth {
                        credential: "c".into(),
                        status: 401,
                        code: "x".into(),
                        message: "no".into(),
                    });
                }
                Ok(AccessToken {
                    token: Zeroizing::new(format!("t{n}")),
                    expires_on: SystemTime::now() + self.lifetime,
                })
            })
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_flight_and_refresh_window() {
        let inner = Arc::new(Counting {
            calls: AtomicU32::new(0),
            lifetime: Duration::from_secs(3600),
            fail: false,
        });
        let cache = Arc::new(TokenCache::new(inner.clone()));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(
                    async move { c.get_token("s", Some("t")).await.unwrap().token.to_string() },
                )
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "t0");
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
        // Another scope is another entry.
        cache.get_token("s2", None).await.unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
        // Invalidating an old token does nothing; the current one forces a refresh.
        cache.invalidate("s", Some("t"), "stale");
        assert_eq!(
            cache
                .get_token("s", Some("t"))
                .await
                .unwrap()
                .token
                .as_str(),
            "t0"
        );
        cache.invalidate("s", Some("t"), "t0");
        assert_eq!(
            cache
                .get_token("s", Some("t"))
                .await
                .unwrap()
                .token
                .as_str(),
            "t2"
        );

        // Short tokens refresh at half-life: a 1 s token is stale after 0.5 s.
        let short = Arc::new(Counting {
            calls: AtomicU32::new(0),
            lifetime: Duration::from_secs(60),
            fail: false,
        });
        let cache = TokenCache::new(short.clone());
        cache.get_token("s", None).await.unwrap();
        cache.get_token("s", None).await.unwrap();
        assert_eq!(short.calls.load(Ordering::SeqCst), 1);
        let c = Cached {
            token: AccessToken {
                token: Zeroizing::new("x".into()),
                expires_on: SystemTime::now() + Duration::from_secs(30),
            },
            obtained: SystemTime::now() - Duration::from_secs(31),
        };
        assert!(!c.fresh(SystemTime::now()) && c.usable(SystemTime::now()));
        let c = Cached {
            token: AccessToken {
                token: Zeroizing::new("x".into()),
                expires_on: SystemTime::now() + Duration::from_secs(400),
            },
            obtained: SystemTime::now() - Duration::from_secs(3200),
        };
        assert!(c.fresh(SystemTime::now()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_failures_share_one_request() {
        let inner = Arc::new(Counting {
            calls: AtomicU32::new(0),
            lifetime: Duration::from_secs(3600),
            fail: true,
        });
        let cache = Arc::new(TokenCache::new(inner.clone()));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.get_token("s", None).await.is_err() })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    }
}
