//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas are safe: one
//! reconciles, the other waits. As client-go does it: the holder renews `renewTime`; another
//! replica takes over when the record it observed has not changed for `leaseDurationSeconds`
//! (measured on its own clock, so clock skew between nodes does not matter) or the holder
//! released it. Every write carries the resourceVersion read, so two candidates never both win.
//! A leader that cannot renew within two thirds of the duration stops leading before anyone
//! else can take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::Instant;

/// How the replicas elect.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// This replica (the pod name).
    pub identity: String,
    pub duration: Duration,
}

impl LeaseConfig {
    /// How often the leader renews and a follower retries.
    pub fn retry_every(&self) -> Duration {
        (self.duration / 3).max(Duration::from_millis(200))
    }

    /// How long a leader keeps leading without a successful renewal.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// What a candidate does with the lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Holds it: renew.
    Renew,
    /// Free (never held, released, or its holder stopped renewing): take it.
    TakeOver,
    /// Someone else holds it.
    Follow { holder: String },
}

/// Pure decision: `expired` = the observed record has not changed for the lease duration.
pub fn decide(spec: &LeaseSpec, me: &str, expired: bool) -> Step {
    match spec.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        Some(h) if h == me => Step::Renew,
        Some(_) if expired => Step::TakeOver,
        Some(h) => Step::Follow {
            holder: h.to_string(),
        },
        None => Step::TakeOver,
    }
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The (holder, renewTime) last read, and when it was first seen.
    observed: Option<(Option<String>, Option<String>, Instant)>,
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Tries to acquire or renew; true when this replica holds the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let me = self.config.identity.clone();
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(secs(self.config.duration)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let changed = match &self.observed {
            Some((h, r, _)) => (h, r) != (&record.0, &record.1),
            None => true,
        };
        if changed {
            self.observed = Some((record.0, record.1, Instant::now()));
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.config.duration);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|(_, _, at)| at.elapsed() > duration);
        let step = decide(&spec, &me, expired);
        let (acquire_time, transitions) = match &step {
            Step::Follow { .. } => return Ok(false),
            Step::Renew => (spec.acquire_time.clone(), spec.lease_transitions),
            Step::TakeOver => (
                Some(now.clone()),
                Some(spec.lease_transitions.unwrap_or(0).saturating_add(1)),
            ),
        };
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(me),
            lease_duration_seconds: Some(secs(self.config.duration)),
            acquire_time,
            renew_time: Some(now),
            lease_transitions: transitions,
            ..spec
        });
        // The resourceVersion read stays in the metadata: a concurrent writer makes this 409.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on a clean shutdown) so another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(k8s_openapi::jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the lease (API errors are retried).
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "reading the leader lease"),
            }
            tokio::time::sleep(self.config.retry_every()).await;
        }
    }

    /// Renews until renewal fails for longer than the renew deadline (or another replica holds
    /// the lease); returns then: this replica must stop acting as the leader.
    pub async fn keep(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_every()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    tracing::warn!("another replica holds the leader lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the leader lease");
                    if last_ok.elapsed() > self.config.renew_deadline() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(h: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: h.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(&held_by(Some("me")), "me", false), Step::Renew);
        assert_eq!(decide(&held_by(Some("me")), "me", true), Step::Renew);
        assert_eq!(
            decide(&held_by(Some("other")), "me", false),
            Step::Follow {
                holder: "other".into()
            }
        );
        assert_eq!(decide(&held_by(Some("other")), "me", true), Step::TakeOver);
        assert_eq!(decide(&held_by(None), "me", false), Step::TakeOver);
        assert_eq!(decide(&held_by(Some("")), "me", false), Step::TakeOver);
    }

    #[test]
    fn timing() {
        let c = LeaseConfig {
            name: "l".into(),
            namespace: "n".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
        };
        assert_eq!(c.retry_every(), Duration::from_secs(5));
        assert_eq!(c.renew_deadline(), Duration::from_secs(10));
        assert!(c.renew_deadline() < c.duration);
    }
}
