//! Event-driven refresh: Azure Event Grid delivers Key Vault events
//! (`Microsoft.KeyVault.SecretNewVersionCreated`, `...CertificateNewVersionCreated`,
//! `...KeyNewVersionCreated`) to `POST /eventgrid`, in the Event Grid schema (a JSON array) or
//! as CloudEvents 1.0 (one event, or a batch); the objects they name are marked stale in the
//! shared object cache and every resource using them is reconciled at once, well before its
//! refresh interval. Both subscription handshakes are answered: the Event Grid
//! `SubscriptionValidationEvent` (echo `validationCode`) and the CloudEvents webhook `OPTIONS`
//! (`WebHook-Allowed-Origin`). An optional shared token (`?token=` or the
//! `aeg-sas-key` header) keeps others from triggering reconciles. Bodies are bounded; nothing
//! from an event is logged but the vault and object names.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use model::ObjectKind;
use serde::Deserialize;
use serde_json::Value;

use crate::reconcile::Ctx;

/// Largest body accepted (Event Grid batches are at most 1 MiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// Most events handled from one delivery.
pub const MAX_EVENTS: usize = 5000;

/// One thing a delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Event Grid subscription validation: answer with the code.
    Validation { code: String },
    /// A Key Vault object has a new version.
    NewVersion {
        vault: String,
        kind: ObjectKind,
        name: String,
    },
    /// Any other event (near expiry, other services): accepted and ignored.
    Ignored,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("the body is not JSON: {0}")]
    Json(String),
    #[error("expected an event or an array of events")]
    Shape,
    #[error("more than {MAX_EVENTS} events in one delivery")]
    TooMany,
}

fn field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| v.get(*n).and_then(Value::as_str))
}

fn one(event: &Value) -> Incoming {
    // Event Grid schema: eventType; CloudEvents: type.
    let Some(kind) = field(event, &["eventType", "type"]) else {
        return Incoming::Ignored;
    };
    let data = event.get("data").unwrap_or(&Value::Null);
    if kind == "Microsoft.EventGrid.SubscriptionValidationEvent" {
        return match field(data, &["validationCode"]) {
            Some(code) => Incoming::Validation {
                code: code.to_string(),
            },
            None => Incoming::Ignored,
        };
    }
    let object_kind = match kind {
        "Microsoft.KeyVault.SecretNewVersionCreated" => ObjectKind::Secret,
        "Microsoft.KeyVault.CertificateNewVersionCreated" => ObjectKind::Certificate,
        "Microsoft.KeyVault.KeyNewVersionCreated" => ObjectKind::Key,
        _ => return Incoming::Ignored,
    };
    // Key Vault's data: Id, VaultName, ObjectType, ObjectName, Version, NBF, EXP.
    let vault = field(data, &["VaultName", "vaultName"]);
    let name = field(data, &["ObjectName", "objectName"]);
    match (vault, name) {
        (Some(v), Some(n)) if model::valid_vault_name(v) && model::valid_object_name(n) => {
            Incoming::NewVersion {
                vault: v.to_ascii_lowercase(),
                kind: object_kind,
                name: n.to_string(),
            }
        }
        _ => Incoming::Ignored,
    }
}

/// Parses a delivery (pure).
pub fn parse(body: &[u8]) -> Result<Vec<Incoming>, EventError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| EventError::Json(e.to_string()))?;
    match &v {
        Value::Array(events) => {
            if events.len() > MAX_EVENTS {
                return Err(EventError::TooMany);
            }
            Ok(events.iter().map(one).collect())
        }
        Value::Object(_) => Ok(vec![one(&v)]),
        _ => Err(EventError::Shape),
    }
}

/// What the endpoint needs.
#[derive(Clone)]
pub struct Endpoint {
    pub ctx: Arc<Ctx>,
    /// Shared token the subscription's URL (`?token=`) or `aeg-sas-key` header must carry.
    pub token: Option<String>,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn authorized(ep: &Endpoint, q: &TokenQuery, headers: &HeaderMap) -> bool {
    let Some(want) = &ep.token else { return true };
    let given = q
        .token
        .as_deref()
        .or_else(|| headers.get("aeg-sas-key").and_then(|v| v.to_str().ok()));
    // Constant-time comparison of the token.
    given.is_some_and(|g| {
        g.len() == want.len()
            && g.bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// Applies the events: marks the objects stale and reconciles their users now; returns how many
/// resources were triggered.
pub fn apply(ctx: &Ctx, events: &[Incoming]) -> usize {
    let mut triggered = 0;
    for e in events {
        let Incoming::NewVersion { vault, kind, name } = e else {
            continue;
        };
        // A certificate's new version also gives its backing secret a new version.
        let kinds: &[ObjectKind] = match kind {
            ObjectKind::Certificate => &[ObjectKind::Certificate, ObjectKind::Secret],
            ObjectKind::Secret => &[ObjectKind::Secret],
            ObjectKind::Key => &[ObjectKind::Key],
        };
        let users = ctx.objects.invalidate_vault(vault, kinds, name);
        tracing::info!(vault = %vault, object = %name, kind = %kind, resources = users.len(), "Key Vault event");
        for u in users {
            if ctx.trigger.send(u).is_ok() {
                triggered += 1;
            }
        }
    }
    triggered
}

async fn deliver(
    State(ep): State<Endpoint>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authorized(&ep, &q, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let events = match parse(&body) {
        Ok(e) => e,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    if let Some(code) = events.iter().find_map(|e| match e {
        Incoming::Validation { code } => Some(code.clone()),
        _ => None,
    }) {
        return axum::Json(serde_json::json!({ "validationResponse": code })).into_response();
    }
    let n = apply(&ep.ctx, &events);
    ep.ctx.metrics.events.inc_by(n as u64);
    StatusCode::OK.into_response()
}

/// CloudEvents webhook validation (abuse protection): allow the origin that asks.
async fn handshake(
    State(ep): State<Endpoint>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&ep, &q, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    (
        StatusCode::OK,
        [
            ("webhook-allowed-origin", origin),
            ("webhook-allowed-rate", HeaderValue::from_static("*")),
        ],
    )
        .into_response()
}

/// `POST /eventgrid` and `OPTIONS /eventgrid`.
pub fn router(ep: Endpoint) -> axum::Router {
    axum::Router::new()
        .route("/eventgrid", post(deliver).options(handshake))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_grid_schema_cloud_events_and_validation() {
        let eg = br#"[{"id":"1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","subject":"db","data":{"Id":"https://kv.vault.azure.net/secrets/db/abc","VaultName":"KV-Prod","ObjectType":"Secret","ObjectName":"db","Version":"abc"}},
                      {"id":"2","eventType":"Microsoft.KeyVault.SecretNearExpiry","data":{"VaultName":"kv-prod","ObjectName":"db"}},
                      {"id":"3","eventType":"Microsoft.KeyVault.CertificateNewVersionCreated","data":{"VaultName":"kv-prod","ObjectName":"../../etc"}}]"#;
        assert_eq!(
            parse(eg).unwrap(),
            vec![
                Incoming::NewVersion {
                    vault: "kv-prod".into(),
                    kind: ObjectKind::Secret,
                    name: "db".into()
                },
                Incoming::Ignored,
                Incoming::Ignored,
            ]
        );
        let ce = br#"{"specversion":"1.0","type":"Microsoft.KeyVault.KeyNewVersionCreated","source":"/subscriptions/x/resourceGroups/y/providers/Microsoft.KeyVault/vaults/kv-prod","id":"9","subject":"signing","data":{"VaultName":"kv-prod","ObjectType":"Key","ObjectName":"signing"}}"#;
        assert_eq!(
            parse(ce).unwrap(),
            vec![Incoming::NewVersion {
                vault: "kv-prod".into(),
                kind: ObjectKind::Key,
                name: "signing".into()
            }]
        );
        let v = br#"[{"id":"v","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}}]"#;
        assert_eq!(
            parse(v).unwrap(),
            vec![Incoming::Validation {
                code: "512d38b6-c7b8-40c8-89fe-f46f9e9622b6".into()
            }]
        );
        assert_eq!(parse(b"42"), Err(EventError::Shape));
        assert!(matches!(parse(b"{"), Err(EventError::Json(_))));
        let many = format!("[{}]", vec!["{}"; MAX_EVENTS + 1].join(","));
        assert_eq!(parse(many.as_bytes()), Err(EventError::TooMany));
    }
}
