//! Kubernetes events, published without kube-runtime's per-`Recorder` cache.
//!
//! kube-runtime's `Recorder` keeps every event it published for six minutes (to turn repeats
//! into an event series) and scans that cache on every publish. At 10,000 resources a cold sync
//! publishes 10,000 `Synced` events: tens of MiB held, and a quadratic scan. The controller
//! publishes only on a change of condition (never once per retry), so it has no repeats to fold:
//! every publish goes through a fresh recorder whose cache dies with it.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};

/// Publishes events as one reporter (controller name and instance).
#[derive(Clone)]
pub struct Events {
    client: kube::Client,
    reporter: Reporter,
}

impl Events {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self { client, reporter }
    }

    /// Creates one event about `reference`.
    pub async fn publish(
        &self,
        ev: &Event,
        reference: &ObjectReference,
    ) -> Result<(), kube::Error> {
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(ev, reference)
            .await
    }
}
