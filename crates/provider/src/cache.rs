//! The per-node cache in front of Key Vault.
//!
//! Keyed by (scope = vault URL + identity, operation = get type/name/version or list versions):
//! an object fetched by one identity is never served to another. Concurrent identical requests
//! share one in-flight fetch (a shared future); errors are handed to everyone who waited for
//! that fetch and then dropped (never cached). A `latest` fetch is reused for
//! [`CacheConfig::latest_ttl`], an explicit version for [`CacheConfig::versioned_ttl`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mount::{MountError, Source};
use render::params::ObjectKind;
use render::render::{FetchKey, Fetched, RenderError, VersionInfo};

use crate::config::CacheConfig;
use crate::metrics::{Metrics, Outcome, VaultCall};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Op {
    Get(FetchKey),
    List(ObjectKind, String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    scope: Arc<str>,
    op: Op,
}

#[derive(Clone)]
enum Value {
    Fetched(Fetched),
    Versions(Vec<VersionInfo>),
}

/// A cloneable form of [`MountError`] (what a coalesced failure hands to every waiter).
#[derive(Clone)]
enum CachedError {
    Vault {
        key: FetchKey,
        source: keyvault::Error,
    },
    Versions {
        kind: &'static str,
        name: String,
        source: keyvault::Error,
    },
    Other {
        name: String,
        object_type: ObjectKind,
        reason: String,
    },
}

impl CachedError {
    fn from_mount(e: MountError, op: &Op) -> Self {
        match e {
            MountError::Vault { key, source } => CachedError::Vault { key, source },
            MountError::Versions { kind, name, source } => {
                CachedError::Versions { kind, name, source }
            }
            other => {
                let (object_type, name) = match op {
                    Op::Get(k) => (k.object_type, k.name.clone()),
                    Op::List(t, n) => (*t, n.clone()),
                };
                CachedError::Other {
                    name,
                    object_type,
                    reason: other.to_string(),
                }
            }
        }
    }

    fn into_mount(self) -> MountError {
        match self {
            CachedError::Vault { key, source } => MountError::Vault { key, source },
            CachedError::Versions { kind, name, source } => {
                MountError::Versions { kind, name, source }
            }
            CachedError::Other {
                name,
                object_type,
                reason,
            } => MountError::Render(RenderError::Object {
                index: 0,
                name,
                object_type,
                field: "objectName",
                reason,
            }),
        }
    }

    fn outcome(&self) -> Outcome {
        match self {
            CachedError::Vault { source, .. } | CachedError::Versions { source, .. } => {
                Outcome::Vault(source.kind())
            }
            CachedError::Other { .. } => Outcome::Error,
        }
    }
}

/// How long an entry lives: an explicit version for `versioned_ttl` (its content never
/// changes), `latest` and version listings for `latest_ttl`.
struct TtlPolicy {
    latest: Duration,
    versioned: Duration,
}

impl moka::Expiry<Key, Value> for TtlPolicy {
    fn expire_after_create(&self, key: &Key, _value: &Value, _at: Instant) -> Option<Duration> {
        Some(match &key.op {
            Op::Get(k) if k.version.is_some() => self.versioned,
            _ => self.latest,
        })
    }
}

/// Counters for tests and the benchmark.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Fetches that went to the source (Key Vault).
    pub upstream: AtomicU64,
    pub hits: AtomicU64,
    pub coalesced: AtomicU64,
}

/// The node-wide cache (a [`moka`] cache: bounded, per-entry expiry, one in-flight load per
/// key). Share it (`Arc`) between all mounts.
pub struct NodeCache {
    entries: moka::future::Cache<Key, Value>,
    metrics: Arc<Metrics>,
    pub stats: CacheStats,
}

impl NodeCache {
    pub fn new(config: CacheConfig, metrics: Arc<Metrics>) -> Self {
        let entries = moka::future::Cache::builder()
            .max_capacity(u64::try_from(config.max_entries).unwrap_or(u64::MAX))
            .expire_after(TtlPolicy {
                latest: config.latest_ttl,
                versioned: config.versioned_ttl,
            })
            .build();
        Self {
            entries,
            metrics,
            stats: CacheStats::default(),
        }
    }

    /// Entries held (moka counts lazily: pending evictions are applied first).
    pub async fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }

    /// `source` seen through this cache, for one vault + identity `scope` (no secrets in it).
    pub fn source<S>(self: &Arc<Self>, scope: &str, source: S) -> CachedSource<S> {
        CachedSource {
            cache: self.clone(),
            inner: Arc::new(source),
            scope: Arc::from(scope),
        }
    }

    /// The value for `key`: cached, or loaded by `load` — once, however many callers ask while
    /// it loads. A failed load is handed to every caller that waited for it and not cached.
    async fn run(
        &self,
        key: Key,
        call: VaultCall,
        load: impl Future<Output = Result<Value, CachedError>>,
    ) -> Result<Value, CachedError> {
        if let Some(v) = self.entries.get(&key).await {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            self.metrics.cache_hit();
            return Ok(v);
        }
        let metrics = self.metrics.clone();
        let stats = &self.stats;
        let loaded = self
            .entries
            .entry(key)
            .or_try_insert_with(async move {
                stats.upstream.fetch_add(1, Ordering::Relaxed);
                metrics.cache_miss();
                let start = Instant::now();
                let r = load.await;
                let outcome = match &r {
                    Ok(_) => Outcome::Success,
                    Err(e) => e.outcome(),
                };
                metrics.observe_keyvault(call, outcome, start.elapsed());
                r
            })
            .await;
        match loaded {
            Ok(entry) => {
                if !entry.is_fresh() {
                    self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    self.metrics.cache_coalesced();
                }
                Ok(entry.into_value())
            }
            Err(shared) => Err(CachedError::clone(&shared)),
        }
    }
}

/// A [`Source`] that reads through the [`NodeCache`].
pub struct CachedSource<S> {
    cache: Arc<NodeCache>,
    inner: Arc<S>,
    scope: Arc<str>,
}

fn wrong_value(op: &Op) -> CachedError {
    let (object_type, name) = match op {
        Op::Get(k) => (k.object_type, k.name.clone()),
        Op::List(t, n) => (*t, n.clone()),
    };
    CachedError::Other {
        name,
        object_type,
        reason: "internal cache error: unexpected entry kind".into(),
    }
}

impl<S: Source + Send + Sync + 'static> Source for CachedSource<S> {
    async fn get(&self, key: &FetchKey) -> Result<Fetched, MountError> {
        let op = Op::Get(key.clone());
        // The vault request's future is large; boxed on first poll, so the many callers that
        // only wait for another caller's load (never polling their own) stay small.
        let load = async {
            Box::pin(self.inner.get(key))
                .await
                .map(Value::Fetched)
                .map_err(|e| CachedError::from_mount(e, &op))
        };
        let cache_key = Key {
            scope: self.scope.clone(),
            op: op.clone(),
        };
        match self
            .cache
            .run(cache_key, VaultCall::Get(key.object_type), load)
            .await
        {
            Ok(Value::Fetched(f)) => Ok(f),
            Ok(Value::Versions(_)) => Err(wrong_value(&op).into_mount()),
            Err(e) => Err(e.into_mount()),
        }
    }

    async fn versions(
        &self,
        object_type: ObjectKind,
        name: &str,
    ) -> Result<Vec<VersionInfo>, MountError> {
        let op = Op::List(object_type, name.to_string());
        let load = async {
            Box::pin(self.inner.versions(object_type, name))
                .await
                .map(Value::Versions)
                .map_err(|e| CachedError::from_mount(e, &op))
        };
        let cache_key = Key {
            scope: self.scope.clone(),
            op: op.clone(),
        };
        match self
            .cache
            .run(cache_key, VaultCall::Versions(object_type), load)
            .await
        {
            Ok(Value::Versions(v)) => Ok(v),
            Ok(Value::Fetched(_)) => Err(wrong_value(&op).into_mount()),
            Err(e) => Err(e.into_mount()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use render::render::FetchedSecret;
    use zeroize::Zeroizing;

    /// A source that counts its calls, answers `fail-*` names with an error after a pause, and
    /// others with a secret.
    #[derive(Default)]
    struct Counting {
        calls: AtomicU64,
    }

    impl Source for Counting {
        async fn get(&self, key: &FetchKey) -> Result<Fetched, MountError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if key.name.starts_with("fail") {
                // Long enough for the other callers to join this load.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(MountError::Render(RenderError::Object {
                    index: 0,
                    name: key.name.clone(),
                    object_type: key.object_type,
                    field: "objectName",
                    reason: "boom".into(),
                }));
            }
            Ok(Fetched::Secret(FetchedSecret {
                version: key.version.clone().unwrap_or_else(|| "current".into()),
                value: Zeroizing::new(key.name.clone()),
                content_type: None,
                kid: None,
            }))
        }

        async fn versions(
            &self,
            _object_type: ObjectKind,
            _name: &str,
        ) -> Result<Vec<VersionInfo>, MountError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Ok(Vec::new())
        }
    }

    fn key(name: &str, version: Option<&str>) -> FetchKey {
        FetchKey {
            object_type: ObjectKind::Secret,
            name: name.into(),
            version: version.map(str::to_string),
        }
    }

    fn cache(latest: Duration, max_entries: usize) -> Arc<NodeCache> {
        Arc::new(NodeCache::new(
            CacheConfig {
                latest_ttl: latest,
                versioned_ttl: Duration::from_secs(600),
                max_entries,
            },
            Arc::new(Metrics::new()),
        ))
    }

    #[tokio::test]
    async fn a_failed_load_reaches_every_waiter_once_and_is_not_kept() {
        let c = cache(Duration::from_secs(30), 100);
        let src = c.source("vault|id", Counting::default());
        let k = key("fail-1", None);
        let (a, b, d) = tokio::join!(src.get(&k), src.get(&k), src.get(&k));
        for r in [a, b, d] {
            assert!(r.unwrap_err().to_string().contains("fail-1"));
        }
        assert_eq!(
            src.inner.calls.load(Ordering::Relaxed),
            1,
            "one load shared"
        );
        assert!(src.get(&k).await.is_err());
        assert_eq!(
            src.inner.calls.load(Ordering::Relaxed),
            2,
            "errors are not cached"
        );
    }

    #[tokio::test]
    async fn explicit_versions_outlive_the_latest_ttl_and_scopes_stay_apart() {
        let c = cache(Duration::ZERO, 100);
        let src = c.source("vault|id", Counting::default());
        for _ in 0..3 {
            src.get(&key("a", Some("v1"))).await.unwrap();
            src.get(&key("a", None)).await.unwrap();
        }
        // v1 loaded once; latest (TTL 0) every time.
        assert_eq!(src.inner.calls.load(Ordering::Relaxed), 1 + 3);
        let other = c.source("vault|other-id", Counting::default());
        other.get(&key("a", Some("v1"))).await.unwrap();
        assert_eq!(other.inner.calls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_entry_bound_holds() {
        let c = cache(Duration::from_secs(30), 8);
        let src = c.source("vault|id", Counting::default());
        for i in 0..200 {
            src.get(&key(&format!("s-{i}"), None)).await.unwrap();
        }
        assert!(
            c.entry_count().await <= 8,
            "{} entries",
            c.entry_count().await
        );
    }
}
