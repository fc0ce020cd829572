//! The per-node cache in front of Key Vault.
//!
//! Keyed by (scope = vault URL + identity, operation = get type/name/version or list versions):
//! an object fetched by one identity is never served to another. Concurrent identical requests
//! share one in-flight fetch (a shared future); errors are handed to everyone who waited for
//! that fetch and then dropped (never cached). A `latest` fetch is reused for
//! [`CacheConfig::latest_ttl`], an explicit version for [`CacheConfig::versioned_ttl`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt, Shared};
use mount::{MountError, Source};
use render::params::ObjectKind;
use render::render::{FetchKey, Fetched, RenderError, VersionInfo};

use crate::config::CacheConfig;
use crate::metrics::Metrics;

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

    fn outcome(&self) -> &'static str {
        match self {
            CachedError::Vault { source, .. } | CachedError::Versions { source, .. } => {
                crate::error::vault_outcome(source)
            }
            CachedError::Other { .. } => "error",
        }
    }
}

type SharedFetch = Shared<BoxFuture<'static, Result<Value, CachedError>>>;

struct Entry {
    fetch: SharedFetch,
    created: Instant,
    ttl: Duration,
}

impl Entry {
    fn usable(&self, now: Instant) -> Usable {
        match self.fetch.peek() {
            None => Usable::InFlight,
            Some(Ok(_)) if now.duration_since(self.created) < self.ttl => Usable::Fresh,
            Some(_) => Usable::No,
        }
    }
}

enum Usable {
    InFlight,
    Fresh,
    No,
}

/// Counters for tests and the benchmark.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Fetches that went to the source (Key Vault).
    pub upstream: AtomicU64,
    pub hits: AtomicU64,
    pub coalesced: AtomicU64,
}

/// The node-wide cache. Share it (`Arc`) between all mounts.
pub struct NodeCache {
    config: CacheConfig,
    entries: Mutex<HashMap<Key, Entry>>,
    metrics: Arc<Metrics>,
    pub stats: CacheStats,
}

impl NodeCache {
    pub fn new(config: CacheConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            entries: Mutex::new(HashMap::new()),
            metrics,
            stats: CacheStats::default(),
        }
    }

    /// Entries held (in flight or done).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `source` seen through this cache, for one vault + identity `scope` (no secrets in it).
    pub fn source<S>(self: &Arc<Self>, scope: &str, source: S) -> CachedSource<S> {
        CachedSource {
            cache: self.clone(),
            inner: Arc::new(source),
            scope: Arc::from(scope),
        }
    }

    async fn run(
        &self,
        key: Key,
        ttl: Duration,
        metric_type: &'static str,
        make: impl FnOnce() -> BoxFuture<'static, Result<Value, CachedError>>,
    ) -> Result<Value, CachedError> {
        let fetch = {
            let mut map = self.lock();
            let now = Instant::now();
            let existing = map.get(&key).and_then(|e| match e.usable(now) {
                Usable::InFlight => {
                    self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    self.metrics.cache_coalesced();
                    Some(e.fetch.clone())
                }
                Usable::Fresh => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    self.metrics.cache_hit();
                    Some(e.fetch.clone())
                }
                Usable::No => None,
            });
            match existing {
                Some(f) => f,
                None => {
                    self.stats.upstream.fetch_add(1, Ordering::Relaxed);
                    self.metrics.cache_miss();
                    let metrics = self.metrics.clone();
                    let inner = make();
                    let fetch = async move {
                        let start = Instant::now();
                        let r = inner.await;
                        let outcome = match &r {
                            Ok(_) => "success",
                            Err(e) => e.outcome(),
                        };
                        metrics.observe_keyvault(metric_type, outcome, start.elapsed());
                        r
                    }
                    .boxed()
                    .shared();
                    if map.len() >= self.config.max_entries {
                        self.evict(&mut map, now);
                    }
                    map.insert(
                        key.clone(),
                        Entry {
                            fetch: fetch.clone(),
                            created: now,
                            ttl,
                        },
                    );
                    fetch
                }
            }
        };
        let result = fetch.clone().await;
        if result.is_err() {
            let mut map = self.lock();
            if map.get(&key).is_some_and(|e| e.fetch.ptr_eq(&fetch)) {
                map.remove(&key);
            }
        }
        result
    }

    /// Drops unusable entries, then the oldest ones, down to 90% of the bound.
    fn evict(&self, map: &mut HashMap<Key, Entry>, now: Instant) {
        map.retain(|_, e| !matches!(e.usable(now), Usable::No));
        let target = self.config.max_entries.saturating_mul(9) / 10;
        if map.len() > target {
            let mut by_age: Vec<(Instant, Key)> = map
                .iter()
                .filter(|(_, e)| !matches!(e.usable(now), Usable::InFlight))
                .map(|(k, e)| (e.created, k.clone()))
                .collect();
            by_age.sort_by_key(|(t, _)| *t);
            let excess = map.len() - target;
            for (_, k) in by_age.into_iter().take(excess) {
                map.remove(&k);
            }
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

fn list_metric(t: ObjectKind) -> &'static str {
    match t {
        ObjectKind::Secret => "secret_versions",
        ObjectKind::Key => "key_versions",
        ObjectKind::Certificate => "cert_versions",
    }
}

impl<S: Source + Send + Sync + 'static> Source for CachedSource<S> {
    async fn get(&self, key: &FetchKey) -> Result<Fetched, MountError> {
        let op = Op::Get(key.clone());
        let ttl = if key.version.is_some() {
            self.cache.config.versioned_ttl
        } else {
            self.cache.config.latest_ttl
        };
        let inner = self.inner.clone();
        let k = key.clone();
        let o = op.clone();
        let make = move || {
            async move {
                inner
                    .get(&k)
                    .await
                    .map(Value::Fetched)
                    .map_err(|e| CachedError::from_mount(e, &o))
            }
            .boxed()
        };
        let cache_key = Key {
            scope: self.scope.clone(),
            op: op.clone(),
        };
        match self
            .cache
            .run(cache_key, ttl, key.object_type.object_type(), make)
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
        let inner = self.inner.clone();
        let n = name.to_string();
        let o = op.clone();
        let make = move || {
            async move {
                inner
                    .versions(object_type, &n)
                    .await
                    .map(Value::Versions)
                    .map_err(|e| CachedError::from_mount(e, &o))
            }
            .boxed()
        };
        let cache_key = Key {
            scope: self.scope.clone(),
            op: op.clone(),
        };
        match self
            .cache
            .run(
                cache_key,
                self.cache.config.latest_ttl,
                list_metric(object_type),
                make,
            )
            .await
        {
            Ok(Value::Versions(v)) => Ok(v),
            Ok(Value::Fetched(_)) => Err(wrong_value(&op).into_mount()),
            Err(e) => Err(e.into_mount()),
        }
    }
}
