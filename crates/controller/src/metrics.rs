//! Prometheus metrics. Label values come from fixed sets only (outcomes, reasons, kinds):
//! never a resource name, vault, object or value.

use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabel {
    pub kind: &'static str,
    pub outcome: &'static str,
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result: `synced`, `unchanged`, `failed`.
    pub reconciles: Family<ResultLabel, Counter>,
    /// Failed reconciles by condition reason.
    pub failures: Family<ReasonLabel, Counter>,
    /// Vault GETs by outcome: `ok`, `error`.
    pub vault_requests: Family<ResultLabel, Counter>,
    /// Reconciles answered from the shared object cache.
    pub vault_cache_hits: Counter,
    /// Kubernetes writes by kind and outcome (`created`, `updated`, `not_owned`, `deleted`).
    pub writes: Family<WriteLabel, Counter>,
    pub reconcile_duration: Histogram,
    /// Reconciles requested and not finished yet.
    pub queue_depth: Gauge<i64, AtomicI64>,
    /// Distinct vault objects in use.
    pub vault_objects: Gauge<i64, AtomicI64>,
    /// 1 while this replica leads.
    pub leader: Gauge<i64, AtomicI64>,
    /// Reconciles triggered by Key Vault events (Event Grid).
    pub events: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kvbridge_controller");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "AzureKeyVaultSecret reconciles by result",
            reconciles.clone(),
        );
        let failures = Family::<ReasonLabel, Counter>::default();
        registry.register("failures", "Failed reconciles by reason", failures.clone());
        let vault_requests = Family::<ResultLabel, Counter>::default();
        registry.register(
            "vault_requests",
            "Key Vault GETs by result",
            vault_requests.clone(),
        );
        let vault_cache_hits = Counter::default();
        registry.register(
            "vault_cache_hits",
            "Reconciles served from the shared vault object cache",
            vault_cache_hits.clone(),
        );
        let writes = Family::<WriteLabel, Counter>::default();
        registry.register(
            "writes",
            "Secret/ConfigMap writes by kind and outcome",
            writes.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile",
            reconcile_duration.clone(),
        );
        let queue_depth = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "queue_depth",
            "Reconciles requested and not yet finished",
            queue_depth.clone(),
        );
        let vault_objects = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "vault_objects",
            "Distinct vault objects in use",
            vault_objects.clone(),
        );
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register("leader", "1 while this replica leads", leader.clone());
        let events = Counter::default();
        registry.register(
            "event_reconciles",
            "Reconciles triggered by Key Vault events",
            events.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            vault_requests,
            vault_cache_hits,
            writes,
            reconcile_duration,
            queue_depth,
            vault_objects,
            leader,
            events,
        }
    }

    pub fn observe_reconcile(&self, d: Duration) {
        self.reconcile_duration.observe(d.as_secs_f64());
    }

    pub fn write(&self, kind: &'static str, outcome: &'static str) {
        self.writes
            .get_or_create(&WriteLabel { kind, outcome })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A counter value by result (tests, benchmarks).
    pub fn count(family: &Family<ResultLabel, Counter>, result: &'static str) -> u64 {
        family.get_or_create(&ResultLabel { result }).get()
    }
}

/// Shared handle.
pub type SharedMetrics = Arc<Metrics>;

/// Keeps `queue_depth` honest: +1 on creation, -1 on drop.
pub struct InQueue(Arc<Metrics>);

impl InQueue {
    pub fn new(m: &Arc<Metrics>) -> Self {
        m.queue_depth.inc();
        Self(m.clone())
    }
}

impl Drop for InQueue {
    fn drop(&mut self) {
        self.0.queue_depth.dec();
    }
}
