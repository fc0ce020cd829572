//! Prometheus metrics on `prometheus-client`, served in the Prometheus text format 0.0.4 (its
//! `prometheus_text` encoder): every line as the hand-rolled exposition printed it, series labels
//! before `le` and `le` as Go prints it (`1`, not `1.0`). The OpenMetrics encoder the controller
//! uses would put `le` first and print `1.0`, changing the bucket lines.
//! Label values come from fixed sets only, typed below: object type, outcome, gRPC method and
//! code, cache result. Never an object name, vault, identity or value.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use render::params::ObjectKind;

/// The `Content-Type` of [`Metrics::render`]'s output: `text/plain; version=0.0.4; charset=utf-8`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the latency histograms' buckets (`+Inf` is implicit).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// `object_type` of a Key Vault call: `secret`/`key`/`cert` for a GET,
/// `secret_versions`/`key_versions`/`cert_versions` for a version listing.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum VaultCall {
    Get(ObjectKind),
    Versions(ObjectKind),
}

impl VaultCall {
    pub fn label(self) -> &'static str {
        match self {
            VaultCall::Get(kind) => kind.object_type(),
            VaultCall::Versions(ObjectKind::Secret) => "secret_versions",
            VaultCall::Versions(ObjectKind::Key) => "key_versions",
            VaultCall::Versions(ObjectKind::Certificate) => "cert_versions",
        }
    }
}

/// `outcome` of a Key Vault call: `success`, a [`keyvault::ErrorKind::metric_label`], or `error`
/// (a failure that is not a Key Vault error).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Vault(keyvault::ErrorKind),
    Error,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Vault(kind) => kind.metric_label(),
            Outcome::Error => "error",
        }
    }
}

/// `method` of a provider gRPC call.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum GrpcMethod {
    Version,
    Mount,
}

impl GrpcMethod {
    pub fn label(self) -> &'static str {
        match self {
            GrpcMethod::Version => "Version",
            GrpcMethod::Mount => "Mount",
        }
    }
}

/// `code` of a provider gRPC call: the canonical code name ([`code_name`]).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct GrpcCode(pub tonic::Code);

/// `result` of a node cache lookup.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    Coalesced,
}

impl CacheResult {
    const ALL: [CacheResult; 3] = [CacheResult::Hit, CacheResult::Miss, CacheResult::Coalesced];

    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Coalesced => "coalesced",
        }
    }
}

macro_rules! label_value {
    ($($t:ty => |$v:ident| $label:expr;)*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                let $v = *self;
                std::fmt::Write::write_str(encoder, $label)
            }
        }
    )*};
}

label_value! {
    VaultCall => |v| v.label();
    Outcome => |v| v.label();
    GrpcMethod => |v| v.label();
    GrpcCode => |v| code_name(v.0);
    CacheResult => |v| v.label();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyVaultLabels {
    object_type: VaultCall,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: GrpcMethod,
    code: GrpcCode,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: CacheResult,
}

type Latency<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// The provider's metrics.
pub struct Metrics {
    registry: Registry,
    keyvault: Latency<KeyVaultLabels>,
    grpc: Latency<GrpcLabels>,
    cache: Family<CacheLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kvbridge");
        let keyvault: Latency<KeyVaultLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "keyvault_request_duration",
            "Key Vault requests (after the node cache) by object type and outcome",
            Unit::Seconds,
            keyvault.clone(),
        );
        let grpc: Latency<GrpcLabels> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "grpc_request_duration",
            "Provider gRPC requests by method and status code",
            Unit::Seconds,
            grpc.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_requests",
            "Object fetches asked of the node cache, by result",
            cache.clone(),
        );
        // Every result from the start (at 0), as before the move to prometheus-client.
        for result in CacheResult::ALL {
            let _ = cache.get_or_create(&CacheLabels { result });
        }
        Self {
            registry,
            keyvault,
            grpc,
            cache,
        }
    }

    /// One Key Vault call (a cache miss that went to the vault).
    pub fn observe_keyvault(&self, call: VaultCall, outcome: Outcome, d: Duration) {
        self.keyvault
            .get_or_create(&KeyVaultLabels {
                object_type: call,
                outcome,
            })
            .observe(d.as_secs_f64());
    }

    /// One gRPC call.
    pub fn observe_grpc(&self, method: GrpcMethod, code: tonic::Code, d: Duration) {
        self.grpc
            .get_or_create(&GrpcLabels {
                method,
                code: GrpcCode(code),
            })
            .observe(d.as_secs_f64());
    }

    pub fn cache_hit(&self) {
        self.cache_inc(CacheResult::Hit);
    }
    pub fn cache_miss(&self) {
        self.cache_inc(CacheResult::Miss);
    }
    pub fn cache_coalesced(&self) {
        self.cache_inc(CacheResult::Coalesced);
    }

    fn cache_inc(&self, result: CacheResult) {
        self.cache.get_or_create(&CacheLabels { result }).inc();
    }

    /// The Prometheus text exposition format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The canonical gRPC code name (as grpc-go prints it).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "Canceled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the hand-rolled exposition printed for the observations in
    /// `renders_the_hand_rolled_text`, byte for byte.
    const HAND_ROLLED: &str = r#"# HELP kvbridge_keyvault_request_duration_seconds Key Vault requests (after the node cache) by object type and outcome.
# TYPE kvbridge_keyvault_request_duration_seconds histogram
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="0.005"} 0
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="0.01"} 0
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="0.025"} 0
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="0.05"} 1
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="0.1"} 1
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="0.25"} 2
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="0.5"} 2
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="1"} 2
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="2.5"} 2
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="5"} 2
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="10"} 2
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="30"} 2
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="60"} 2
kvbridge_keyvault_request_duration_seconds_bucket{object_type="secret",outcome="success",le="+Inf"} 2
kvbridge_keyvault_request_duration_seconds_sum{object_type="secret",outcome="success"} 0.28125
kvbridge_keyvault_request_duration_seconds_count{object_type="secret",outcome="success"} 2
# HELP kvbridge_grpc_request_duration_seconds Provider gRPC requests by method and status code.
# TYPE kvbridge_grpc_request_duration_seconds histogram
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="0.005"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="0.01"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="0.025"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="0.05"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="0.1"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="0.25"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="0.5"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="1"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="2.5"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="5"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="10"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="30"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="60"} 1
kvbridge_grpc_request_duration_seconds_bucket{method="Mount",code="NotFound",le="+Inf"} 1
kvbridge_grpc_request_duration_seconds_sum{method="Mount",code="NotFound"} 0.002
kvbridge_grpc_request_duration_seconds_count{method="Mount",code="NotFound"} 1
# HELP kvbridge_cache_requests_total Object fetches asked of the node cache, by result.
# TYPE kvbridge_cache_requests_total counter
kvbridge_cache_requests_total{result="hit"} 2
kvbridge_cache_requests_total{result="miss"} 0
kvbridge_cache_requests_total{result="coalesced"} 1
"#;

    /// The lines, with the cache counters sorted (a `Family` keeps no order among its series;
    /// Prometheus needs none).
    fn normalized(t: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = t.lines().collect();
        let counter = |l: &str| l.starts_with("kvbridge_cache_requests_total{");
        let first = lines.iter().position(|l| counter(l));
        let n = lines.iter().filter(|l| counter(l)).count();
        if let Some(first) = first {
            lines[first..first + n].sort_unstable();
        }
        lines
    }

    #[test]
    fn renders_the_hand_rolled_text() {
        let m = Metrics::new();
        let secret = VaultCall::Get(ObjectKind::Secret);
        // Exact binary fractions, so the sum prints exactly.
        m.observe_keyvault(secret, Outcome::Success, Duration::from_micros(31_250));
        m.observe_keyvault(secret, Outcome::Success, Duration::from_millis(250));
        m.observe_grpc(
            GrpcMethod::Mount,
            tonic::Code::NotFound,
            Duration::from_millis(2),
        );
        m.cache_hit();
        m.cache_hit();
        m.cache_coalesced();
        let t = m.render();
        assert_eq!(normalized(&t), normalized(HAND_ROLLED), "{t}");
        assert!(t.ends_with('\n'), "{t}");
        // Not OpenMetrics.
        assert!(!t.contains("# EOF") && !t.contains("# UNIT"), "{t}");
    }

    #[test]
    fn label_values_come_from_the_fixed_sets() {
        let m = Metrics::new();
        let d = Duration::from_millis(1);
        m.observe_keyvault(
            VaultCall::Versions(ObjectKind::Certificate),
            Outcome::Vault(keyvault::ErrorKind::Throttled),
            d,
        );
        m.observe_keyvault(VaultCall::Get(ObjectKind::Key), Outcome::Error, d);
        m.observe_keyvault(VaultCall::Get(ObjectKind::Certificate), Outcome::Success, d);
        m.observe_grpc(GrpcMethod::Version, tonic::Code::Cancelled, d);
        let t = m.render();
        for line in [
            "kvbridge_keyvault_request_duration_seconds_count{object_type=\"cert_versions\",outcome=\"throttled\"} 1",
            "kvbridge_keyvault_request_duration_seconds_count{object_type=\"key\",outcome=\"error\"} 1",
            "kvbridge_keyvault_request_duration_seconds_count{object_type=\"cert\",outcome=\"success\"} 1",
            "kvbridge_grpc_request_duration_seconds_count{method=\"Version\",code=\"Canceled\"} 1",
            "kvbridge_cache_requests_total{result=\"miss\"} 0",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
    }
}
