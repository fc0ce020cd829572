//! Prometheus text-format metrics, hand-rolled (a few histograms and counters do not justify a
//! metrics framework). Label values come from fixed sets only: object type, outcome, gRPC method
//! and code. Never an object name, vault, identity or value.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default, Clone)]
struct Series {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: [&'static str; 2],
    series: Mutex<BTreeMap<[&'static str; 2], Series>>,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str, labels: [&'static str; 2]) -> Self {
        Self {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    fn observe(&self, values: [&'static str; 2], d: Duration) {
        let v = d.as_secs_f64();
        let mut map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.entry(values).or_insert_with(|| Series {
            buckets: vec![0; LATENCY_BUCKETS.len()],
            ..Series::default()
        });
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if v <= *b {
                s.buckets[i] += 1;
            }
        }
        s.sum += v;
        s.count += 1;
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} histogram", self.name);
        let map = self
            .series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (values, s) in map {
            let l = format!(
                "{}=\"{}\",{}=\"{}\"",
                self.labels[0], values[0], self.labels[1], values[1]
            );
            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{}_bucket{{{l},le=\"{b}\"}} {}",
                    self.name, s.buckets[i]
                );
            }
            let _ = writeln!(out, "{}_bucket{{{l},le=\"+Inf\"}} {}", self.name, s.count);
            let _ = writeln!(out, "{}_sum{{{l}}} {}", self.name, s.sum);
            let _ = writeln!(out, "{}_count{{{l}}} {}", self.name, s.count);
        }
    }
}

/// The provider's metrics.
pub struct Metrics {
    keyvault: Histogram,
    grpc: Histogram,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_coalesced: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub const fn new() -> Self {
        Self {
            keyvault: Histogram::new(
                "kvbridge_keyvault_request_duration_seconds",
                "Key Vault requests (after the node cache) by object type and outcome.",
                ["object_type", "outcome"],
            ),
            grpc: Histogram::new(
                "kvbridge_grpc_request_duration_seconds",
                "Provider gRPC requests by method and status code.",
                ["method", "code"],
            ),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cache_coalesced: AtomicU64::new(0),
        }
    }

    /// One Key Vault call: `object_type` is secret/key/cert (or `<type>_versions` for a listing).
    pub fn observe_keyvault(&self, object_type: &'static str, outcome: &'static str, d: Duration) {
        self.keyvault.observe([object_type, outcome], d);
    }

    /// One gRPC call.
    pub fn observe_grpc(&self, method: &'static str, code: tonic::Code, d: Duration) {
        self.grpc.observe([method, code_name(code)], d);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
    }
    pub fn cache_miss(&self) {
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }
    pub fn cache_coalesced(&self) {
        self.cache_coalesced.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.keyvault.render(&mut out);
        self.grpc.render(&mut out);
        let _ = writeln!(
            out,
            "# HELP kvbridge_cache_requests_total Object fetches asked of the node cache, by result."
        );
        let _ = writeln!(out, "# TYPE kvbridge_cache_requests_total counter");
        for (result, c) in [
            ("hit", &self.cache_hits),
            ("miss", &self.cache_misses),
            ("coalesced", &self.cache_coalesced),
        ] {
            let _ = writeln!(
                out,
                "kvbridge_cache_requests_total{{result=\"{result}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
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

    #[test]
    fn renders_histograms_and_counters() {
        let m = Metrics::new();
        m.observe_keyvault("secret", "success", Duration::from_millis(30));
        m.observe_keyvault("secret", "success", Duration::from_millis(300));
        m.observe_grpc("Mount", tonic::Code::NotFound, Duration::from_millis(2));
        m.cache_hit();
        let t = m.render();
        assert!(t.contains("kvbridge_keyvault_request_duration_seconds_bucket{object_type=\"secret\",outcome=\"success\",le=\"0.05\"} 1"), "{t}");
        assert!(t.contains("kvbridge_keyvault_request_duration_seconds_count{object_type=\"secret\",outcome=\"success\"} 2"));
        assert!(t.contains(
            "kvbridge_grpc_request_duration_seconds_count{method=\"Mount\",code=\"NotFound\"} 1"
        ));
        assert!(t.contains("kvbridge_cache_requests_total{result=\"hit\"} 1"));
    }
}
