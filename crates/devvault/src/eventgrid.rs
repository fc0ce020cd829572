//! Azure Event Grid for the dev vault: webhook subscriptions (admin API) and deliveries of Key
//! Vault's `Microsoft.KeyVault.{Secret,Certificate,Key}NewVersionCreated` events when an object
//! gets a new version, so an event-driven consumer is testable end to end.
//!
//! As Event Grid does it: a subscription is accepted only after its endpoint passed the
//! validation handshake (Event Grid schema: a `Microsoft.EventGrid.SubscriptionValidationEvent`
//! whose `validationCode` the endpoint echoes as `validationResponse`; CloudEvents 1.0: an
//! `OPTIONS` request with `WebHook-Request-Origin`, answered with `WebHook-Allowed-Origin`).
//! Deliveries carry `aeg-event-type: Notification` (Event Grid schema: a JSON array of one
//! event; CloudEvents: one `application/cloudevents+json` event), plus the subscription's own
//! delivery headers (e.g. `aeg-sas-key`).
//!
//! Never in the way of the vault: a change only enqueues (bounded queue; when it is full the
//! event is dropped and counted), one background task delivers with a per-request timeout and
//! a bounded number of attempts (then counted as failed). Events carry names and versions,
//! never values.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use model::ObjectKind;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Events waiting for delivery, at most.
pub const QUEUE: usize = 1024;
/// Subscriptions, at most.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Delivery attempts per event and subscription.
pub const ATTEMPTS: u32 = 3;
/// Timeout of one delivery or handshake request.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The origin the CloudEvents handshake announces (Event Grid's).
pub const ORIGIN: &str = "eventgrid.azure.net";

/// Event schema of a subscription.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schema {
    #[default]
    EventGridSchema,
    CloudEventSchemaV1_0,
}

/// One webhook subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscription {
    /// `http(s)://` URL of the webhook.
    pub endpoint: String,
    #[serde(default)]
    pub schema: Schema,
    /// Only these vaults (empty: every vault).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vaults: Vec<String>,
    /// Only these event types (empty: the three `...NewVersionCreated`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event_types: Vec<String>,
    /// Extra headers on every request (Event Grid's delivery attributes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("invalid subscription: {0}")]
    Invalid(String),
    #[error("the endpoint failed the {schema:?} validation handshake: {detail}")]
    Handshake { schema: Schema, detail: String },
}

/// A change to deliver.
#[derive(Debug, Clone)]
struct Change {
    vault: String,
    kind: ObjectKind,
    name: String,
    version: String,
    /// `https://<vault host>/<collection>/<name>/<version>`.
    id: String,
}

/// Delivery counters (`GET /admin/eventgrid`).
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

/// The subscriptions and the delivery queue.
pub struct EventGrid {
    subscriptions: Mutex<BTreeMap<String, Subscription>>,
    tx: mpsc::Sender<Change>,
    rx: Mutex<Option<mpsc::Receiver<Change>>>,
    /// `None` when no HTTP client could be built (subscriptions are then refused).
    client: Option<reqwest::Client>,
    pub stats: Stats,
}

impl Default for EventGrid {
    fn default() -> Self {
        Self::new()
    }
}

/// The Key Vault event type of a new version of `kind`.
pub fn event_type(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Secret => "Microsoft.KeyVault.SecretNewVersionCreated",
        ObjectKind::Certificate => "Microsoft.KeyVault.CertificateNewVersionCreated",
        ObjectKind::Key => "Microsoft.KeyVault.KeyNewVersionCreated",
    }
}

fn object_type(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Secret => "Secret",
        ObjectKind::Certificate => "Certificate",
        ObjectKind::Key => "Key",
    }
}

/// `8-4-4-4-12` hex id.
fn uuid() -> String {
    let h = crate::ids::new_version();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The ARM id of a dev vault (Event Grid's `topic` / CloudEvents `source`).
fn topic(vault: &str) -> String {
    format!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/dev-vault/providers/Microsoft.KeyVault/vaults/{vault}"
    )
}

fn now_rfc3339() -> String {
    crate::clock::rfc3339(crate::clock::now())
}

/// The body of one delivery (pure; public for tests).
fn body(schema: Schema, c: &Change) -> (Value, &'static str) {
    let data = json!({
        "Id": c.id,
        "VaultName": c.vault,
        "ObjectType": object_type(c.kind),
        "ObjectName": c.name,
        "Version": c.version,
        "NBF": Value::Null,
        "EXP": Value::Null,
    });
    match schema {
        Schema::EventGridSchema => (
            json!([{
                "id": uuid(),
                "topic": topic(&c.vault),
                "subject": c.name,
                "eventType": event_type(c.kind),
                "eventTime": now_rfc3339(),
                "data": data,
                "dataVersion": "1",
                "metadataVersion": "1",
            }]),
            "application/json",
        ),
        Schema::CloudEventSchemaV1_0 => (
            json!({
                "specversion": "1.0",
                "id": uuid(),
                "source": topic(&c.vault),
                "subject": c.name,
                "type": event_type(c.kind),
                "time": now_rfc3339(),
                "datacontenttype": "application/json",
                "data": data,
            }),
            "application/cloudevents+json; charset=utf-8",
        ),
    }
}

impl EventGrid {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        // Plain HTTP endpoints (a local controller) and HTTPS ones with the system's roots.
        let mut builder = reqwest::Client::builder().timeout(TIMEOUT);
        for cert in rustls_native_certs::load_native_certs().certs {
            if let Ok(c) = reqwest::Certificate::from_der(&cert) {
                builder = builder.add_root_certificate(c);
            }
        }
        let client = match builder.build() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no HTTP client for Event Grid deliveries");
                None
            }
        };
        Self {
            subscriptions: Mutex::new(BTreeMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
            client,
            stats: Stats::default(),
        }
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Subscription>> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The subscriptions, by name.
    pub fn list(&self) -> BTreeMap<String, Subscription> {
        self.subs().clone()
    }

    /// Removes a subscription; false when there was none.
    pub fn unsubscribe(&self, name: &str) -> bool {
        self.subs().remove(name).is_some()
    }

    /// Adds (or replaces) subscription `name` once its endpoint passed the handshake.
    pub async fn subscribe(&self, name: &str, sub: Subscription) -> Result<(), SubscribeError> {
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_name {
            return Err(SubscribeError::Invalid(
                "the name must be 1-64 letters, digits and hyphens".into(),
            ));
        }
        let url = url::Url::parse(&sub.endpoint)
            .map_err(|e| SubscribeError::Invalid(format!("endpoint: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(SubscribeError::Invalid(
                "endpoint: an http:// or https:// URL".into(),
            ));
        }
        for (k, v) in &sub.headers {
            if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err()
                || reqwest::header::HeaderValue::from_str(v).is_err()
            {
                return Err(SubscribeError::Invalid(format!("header {k:?}")));
            }
        }
        for t in &sub.event_types {
            if ![ObjectKind::Secret, ObjectKind::Certificate, ObjectKind::Key]
                .iter()
                .any(|k| event_type(*k) == t)
            {
                return Err(SubscribeError::Invalid(format!(
                    "event type {t:?} (the dev vault sends the ...NewVersionCreated events)"
                )));
            }
        }
        {
            let subs = self.subs();
            if subs.len() >= MAX_SUBSCRIPTIONS && !subs.contains_key(name) {
                return Err(SubscribeError::Invalid(format!(
                    "at most {MAX_SUBSCRIPTIONS} subscriptions"
                )));
            }
        }
        self.handshake(&sub)
            .await
            .map_err(|detail| SubscribeError::Handshake {
                schema: sub.schema,
                detail,
            })?;
        tracing::info!(subscription = name, endpoint = %url, schema = ?sub.schema, "Event Grid subscription validated");
        self.subs().insert(name.to_string(), sub);
        Ok(())
    }

    fn request(
        &self,
        sub: &Subscription,
        method: reqwest::Method,
    ) -> Result<reqwest::RequestBuilder, String> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| "the dev vault has no HTTP client".to_string())?;
        let mut req = client.request(method, &sub.endpoint);
        for (k, v) in &sub.headers {
            req = req.header(k, v);
        }
        Ok(req)
    }

    async fn handshake(&self, sub: &Subscription) -> Result<(), String> {
        match sub.schema {
            Schema::EventGridSchema => {
                let code = uuid();
                let body = json!([{
                    "id": uuid(),
                    "topic": topic("dev-vault"),
                    "subject": "",
                    "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                    "eventTime": now_rfc3339(),
                    "data": {"validationCode": code},
                    "dataVersion": "2",
                    "metadataVersion": "1",
                }]);
                let resp = self
                    .request(sub, reqwest::Method::POST)?
                    .header("aeg-event-type", "SubscriptionValidation")
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| format!("request failed: {e}"))?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(format!("answered {status}"));
                }
                let answer: Value = resp
                    .json()
                    .await
                    .map_err(|e| format!("the answer is not JSON: {e}"))?;
                match answer.get("validationResponse").and_then(Value::as_str) {
                    Some(c) if c == code => Ok(()),
                    _ => Err("the answer has no matching validationResponse".into()),
                }
            }
            Schema::CloudEventSchemaV1_0 => {
                let resp = self
                    .request(sub, reqwest::Method::OPTIONS)?
                    .header("WebHook-Request-Origin", ORIGIN)
                    .send()
                    .await
                    .map_err(|e| format!("request failed: {e}"))?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(format!("answered {status}"));
                }
                match resp
                    .headers()
                    .get("webhook-allowed-origin")
                    .and_then(|v| v.to_str().ok())
                {
                    Some(o) if o == ORIGIN || o == "*" => Ok(()),
                    _ => Err("no WebHook-Allowed-Origin for eventgrid.azure.net".into()),
                }
            }
        }
    }

    /// Enqueues the event for a new version (never waits; a full queue drops it).
    pub fn changed(&self, vault: &str, kind: ObjectKind, name: &str, version: &str, base: &str) {
        if self.subs().is_empty() {
            return;
        }
        let collection = match kind {
            ObjectKind::Secret => "secrets",
            ObjectKind::Certificate => "certificates",
            ObjectKind::Key => "keys",
        };
        let change = Change {
            vault: vault.to_string(),
            kind,
            name: name.to_string(),
            version: version.to_string(),
            id: format!("{base}/{collection}/{name}/{version}"),
        };
        if self.tx.try_send(change).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(vault, object = name, "Event Grid queue full: event dropped");
        }
    }

    /// Delivers queued events until the queue closes (spawned once, at start).
    pub async fn run(&self) {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut rx) = rx else { return };
        while let Some(change) = rx.recv().await {
            let targets: Vec<(String, Subscription)> = self
                .subs()
                .iter()
                .filter(|(_, s)| {
                    (s.vaults.is_empty() || s.vaults.iter().any(|v| v == &change.vault))
                        && (s.event_types.is_empty()
                            || s.event_types.iter().any(|t| t == event_type(change.kind)))
                })
                .map(|(n, s)| (n.clone(), s.clone()))
                .collect();
            for (name, sub) in targets {
                self.deliver(&name, &sub, &change).await;
            }
        }
    }

    async fn deliver(&self, name: &str, sub: &Subscription, change: &Change) {
        let (body, content_type) = body(sub.schema, change);
        let bytes = body.to_string();
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let Ok(req) = self.request(sub, reqwest::Method::POST) else {
                break;
            };
            let sent = req
                .header("aeg-event-type", "Notification")
                .header("aeg-subscription-name", name.to_ascii_uppercase())
                .header("aeg-delivery-count", (attempt - 1).to_string())
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(subscription = name, vault = %change.vault, object = %change.name, "event delivered");
                    return;
                }
                Ok(r) => {
                    tracing::debug!(subscription = name, status = %r.status(), attempt, "event delivery refused")
                }
                Err(e) => {
                    tracing::debug!(subscription = name, error = %e, attempt, "event delivery failed")
                }
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
        self.stats.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(subscription = name, vault = %change.vault, object = %change.name, "event not delivered after {ATTEMPTS} attempts");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_in_both_schemas() {
        let c = Change {
            vault: "kv".into(),
            kind: ObjectKind::Secret,
            name: "db".into(),
            version: "abc".into(),
            id: "https://kv.localhost:1/secrets/db/abc".into(),
        };
        let (eg, ct) = body(Schema::EventGridSchema, &c);
        assert_eq!(ct, "application/json");
        let e = &eg.as_array().unwrap()[0];
        assert_eq!(e["eventType"], "Microsoft.KeyVault.SecretNewVersionCreated");
        assert_eq!(e["subject"], "db");
        assert_eq!(e["data"]["VaultName"], "kv");
        assert_eq!(e["data"]["ObjectName"], "db");
        assert_eq!(e["data"]["Version"], "abc");
        assert!(e["topic"].as_str().unwrap().ends_with("/vaults/kv"));
        let (ce, ct) = body(Schema::CloudEventSchemaV1_0, &c);
        assert!(ct.starts_with("application/cloudevents+json"));
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "Microsoft.KeyVault.SecretNewVersionCreated");
        assert_eq!(ce["data"]["Id"], "https://kv.localhost:1/secrets/db/abc");
        let s: Subscription =
            serde_json::from_str(r#"{"endpoint":"http://x/e","schema":"CloudEventSchemaV1_0"}"#)
                .unwrap();
        assert_eq!(s.schema, Schema::CloudEventSchemaV1_0);
        assert!(serde_json::from_str::<Subscription>(r#"{"endpoint":"x","url":"y"}"#).is_err());
    }
}
