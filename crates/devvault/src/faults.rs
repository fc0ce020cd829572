//! Fault injection (latency, 429, 5xx, dropped connections, per-identity budgets) and the request
//! counters that let tests prove how many vault calls a client made.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub rate_429: f64,
    #[serde(default = "default_retry_after")]
    pub retry_after_secs: u64,
    #[serde(default)]
    pub rate_500: f64,
    #[serde(default)]
    pub rate_503: f64,
    #[serde(default)]
    pub drop_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Key Vault's service limit, per vault: at most `requests` data-plane transactions in any
    /// `window_secs` (sliding); beyond it 429 `Throttled` with `Retry-After` until the oldest
    /// counted transaction leaves the window. Throttled requests do not count (as in Key
    /// Vault). Off unless set; [`Budget::KEY_VAULT`] is the documented limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_limit: Option<Budget>,
    #[serde(default)]
    pub scope: FaultScope,
    /// Seed for the fault decisions (429/5xx/drops): with a seed the sequence of decisions is
    /// the same on every run, so a test that fails can be replayed; without one it is random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

fn default_retry_after() -> u64 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub requests: u64,
    pub window_secs: u64,
}

impl Budget {
    /// Key Vault's documented limit for secrets and vault transactions (and GETs of RSA-2048
    /// and EC software keys): 4,000 transactions in 10 seconds per vault and region.
    pub const KEY_VAULT: Budget = Budget {
        requests: 4000,
        window_secs: 10,
    };
}

/// Largest `vault_limit.requests` (the sliding window keeps one instant per transaction).
pub const MAX_VAULT_LIMIT: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultScope {
    #[default]
    Vault,
    All,
}

impl FaultConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("rate_429", self.rate_429),
            ("rate_500", self.rate_500),
            ("rate_503", self.rate_503),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0 and 1, got {v}"));
            }
        }
        if let Some(b) = &self.budget {
            if b.window_secs == 0 {
                return Err("budget.window_secs must be at least 1".into());
            }
        }
        if let Some(b) = &self.vault_limit {
            if b.window_secs == 0 || b.window_secs > 3600 {
                return Err("vault_limit.window_secs must be 1-3600".into());
            }
            if b.requests == 0 || b.requests > MAX_VAULT_LIMIT {
                return Err(format!("vault_limit.requests must be 1-{MAX_VAULT_LIMIT}"));
            }
        }
        Ok(())
    }

    pub fn applies(&self, data_plane: bool) -> bool {
        data_plane || self.scope == FaultScope::All
    }
}

/// What to do with a request before it is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Injected {
    Throttle { retry_after_secs: u64 },
    Status(u16),
}

#[derive(Default)]
pub struct Faults {
    config: Mutex<FaultConfig>,
    windows: Mutex<HashMap<String, (Instant, u64)>>,
    /// Per vault: the instants of the transactions counted against `vault_limit`.
    vault_windows: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// The seeded generator when the configuration has a seed.
    rng: Mutex<Option<fastrand::Rng>>,
}

impl Faults {
    pub fn new(config: FaultConfig) -> Self {
        let rng = config.seed.map(fastrand::Rng::with_seed);
        Self {
            config: Mutex::new(config),
            windows: Mutex::new(HashMap::new()),
            vault_windows: Mutex::new(HashMap::new()),
            rng: Mutex::new(rng),
        }
    }

    /// A number in [0, 1): from the seeded generator if there is one, else random.
    fn unit(&self) -> f64 {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        match rng.as_mut() {
            Some(r) => r.f64(),
            None => crate::ids::random_unit(),
        }
    }

    pub fn get(&self) -> FaultConfig {
        self.config.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn set(&self, config: FaultConfig) {
        *self.rng.lock().unwrap_or_else(|p| p.into_inner()) =
            config.seed.map(fastrand::Rng::with_seed);
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
        if let Ok(mut w) = self.windows.lock() {
            w.clear();
        }
        if let Ok(mut w) = self.vault_windows.lock() {
            w.clear();
        }
    }

    /// Key Vault's per-vault limit: `Some(retry_after_secs)` when `vault` already had
    /// `vault_limit.requests` transactions in the window (this one is then not counted).
    pub fn vault_throttled(&self, vault: &str) -> Option<u64> {
        self.vault_throttled_at(vault, Instant::now())
    }

    fn vault_throttled_at(&self, vault: &str, now: Instant) -> Option<u64> {
        let limit = self.get().vault_limit?;
        let window = Duration::from_secs(limit.window_secs);
        let mut all = self.vault_windows.lock().unwrap_or_else(|p| p.into_inner());
        let seen = all.entry(vault.to_string()).or_default();
        while seen
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            seen.pop_front();
        }
        if (seen.len() as u64) < limit.requests {
            seen.push_back(now);
            return None;
        }
        let oldest = seen.front().copied().unwrap_or(now);
        let left = window.saturating_sub(now.saturating_duration_since(oldest));
        Some((left.as_secs_f64().ceil() as u64).max(1))
    }

    /// Decides whether to drop the connection of a request.
    pub fn should_drop(&self, data_plane: bool) -> bool {
        let c = self.get();
        c.applies(data_plane) && c.drop_rate > 0.0 && self.unit() < c.drop_rate
    }

    pub fn latency(&self, data_plane: bool) -> Option<Duration> {
        let c = self.get();
        (c.applies(data_plane) && c.latency_ms > 0).then(|| Duration::from_millis(c.latency_ms))
    }

    /// Random faults (429 / 500 / 503), decided before authentication.
    pub fn random_fault(&self, data_plane: bool) -> Option<Injected> {
        let c = self.get();
        if !c.applies(data_plane) {
            return None;
        }
        let r = self.unit();
        if r < c.rate_429 {
            return Some(Injected::Throttle {
                retry_after_secs: c.retry_after_secs,
            });
        }
        if r < c.rate_429 + c.rate_503 {
            return Some(Injected::Status(503));
        }
        if r < c.rate_429 + c.rate_503 + c.rate_500 {
            return Some(Injected::Status(500));
        }
        None
    }

    /// Per-identity budget: `Some(retry_after)` when `identity` has used up its window.
    pub fn over_budget(&self, identity: &str) -> Option<u64> {
        let budget = self.get().budget?;
        let window = Duration::from_secs(budget.window_secs);
        let now = Instant::now();
        let mut windows = self.windows.lock().ok()?;
        let entry = windows.entry(identity.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        entry.1 += 1;
        if entry.1 > budget.requests {
            let left = window.saturating_sub(now.duration_since(entry.0));
            Some(left.as_secs_f64().ceil().max(1.0) as u64)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Counter {
    pub operation: String,
    pub vault: String,
    pub object: String,
    pub count: u64,
}

#[derive(Default)]
pub struct Counters {
    map: Mutex<HashMap<(String, String, String), u64>>,
}

impl Counters {
    pub fn add(&self, operation: &str, vault: &str, object: &str) {
        if let Ok(mut m) = self.map.lock() {
            *m.entry((operation.to_string(), vault.to_string(), object.to_string()))
                .or_insert(0) += 1;
        }
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let mut list: Vec<Counter> = self
            .map
            .lock()
            .map(|m| {
                m.iter()
                    .map(|((operation, vault, object), count)| Counter {
                        operation: operation.clone(),
                        vault: vault.clone(),
                        object: object.clone(),
                        count: *count,
                    })
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by(|a, b| {
            (&a.operation, &a.vault, &a.object).cmp(&(&b.operation, &b.vault, &b.object))
        });
        let total: u64 = list.iter().map(|c| c.count).sum();
        serde_json::json!({"total": total, "counters": list})
    }

    pub fn reset(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_rates_and_unknown_fields() {
        let c: FaultConfig = serde_json::from_str(r#"{"rate_429": 1.5}"#).unwrap();
        assert!(c.validate().unwrap_err().contains("rate_429"));
        assert!(serde_json::from_str::<FaultConfig>(r#"{"rate_42": 0.1}"#).is_err());
    }

    #[test]
    fn budget_window() {
        let f = Faults::new(FaultConfig {
            budget: Some(Budget {
                requests: 3,
                window_secs: 60,
            }),
            ..Default::default()
        });
        assert!(f.over_budget("a").is_none());
        assert!(f.over_budget("a").is_none());
        assert!(f.over_budget("a").is_none());
        let ra = f.over_budget("a").unwrap();
        assert!((1..=60).contains(&ra));
        assert!(f.over_budget("b").is_none(), "budgets are per identity");
    }

    #[test]
    fn vault_limit_is_a_sliding_window_per_vault_and_429s_do_not_count() {
        let f = Faults::new(FaultConfig {
            vault_limit: Some(Budget {
                requests: 3,
                window_secs: 10,
            }),
            ..Default::default()
        });
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(f.vault_throttled_at("a", at(0)), None);
        assert_eq!(f.vault_throttled_at("a", at(4000)), None);
        assert_eq!(f.vault_throttled_at("a", at(4000)), None);
        // Full: retry once the transaction at 0 ms leaves the window (10 s - 5.5 s, rounded up).
        assert_eq!(f.vault_throttled_at("a", at(5500)), Some(5));
        assert_eq!(f.vault_throttled_at("b", at(5500)), None, "per vault");
        // The throttled ones were not counted: at 10 s exactly one slot is free again.
        assert_eq!(f.vault_throttled_at("a", at(10_000)), None);
        assert_eq!(f.vault_throttled_at("a", at(10_001)), Some(4));
        // Off by default.
        let off = Faults::new(FaultConfig::default());
        assert!((0..10_000).all(|_| off.vault_throttled("a").is_none()));
        assert!(FaultConfig {
            vault_limit: Some(Budget {
                requests: 0,
                window_secs: 10
            }),
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn certain_faults() {
        let f = Faults::new(FaultConfig {
            rate_429: 1.0,
            retry_after_secs: 2,
            ..Default::default()
        });
        assert_eq!(
            f.random_fault(true),
            Some(Injected::Throttle {
                retry_after_secs: 2
            })
        );
        assert_eq!(
            f.random_fault(false),
            None,
            "token endpoints are out of scope"
        );
    }
}
