//! Secrets: set, get, list, versions, update, soft delete, recover, purge.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::json::{deleted_extra, page, secret_bundle, secret_item};
use super::{check_name, ok_json, Ctx};
use crate::clock;
use crate::error::{KvError, ObjectKind};
use crate::server::App;
use crate::state::{Attributes, Deleted, SecretVersion, Tags, Versions};

/// Key Vault's limit on a secret value.
const MAX_VALUE_BYTES: usize = 25 * 1024;
/// Soft-deleted objects are purged after this many days.
pub const RETENTION_DAYS: i64 = 90;

/// Reads `attributes` from a request body over `base` (defaults for a new version).
pub fn parse_attributes(body: &Value, base: Attributes) -> Result<Attributes, KvError> {
    let mut a = base;
    let Some(attrs) = body.get("attributes").filter(|v| !v.is_null()) else {
        return Ok(a);
    };
    if !attrs.is_object() {
        return Err(KvError::bad_parameter("attributes must be an object."));
    }
    if let Some(e) = attrs.get("enabled").filter(|v| !v.is_null()) {
        a.enabled = e
            .as_bool()
            .ok_or_else(|| KvError::bad_parameter("attributes.enabled must be a boolean."))?;
    }
    for (field, slot) in [("nbf", &mut a.nbf), ("exp", &mut a.exp)] {
        if let Some(v) = attrs.get(field) {
            *slot = if v.is_null() {
                None
            } else {
                Some(v.as_i64().ok_or_else(|| {
                    KvError::bad_parameter(format!(
                        "attributes.{field} must be an integer (seconds since 1970-01-01)."
                    ))
                })?)
            };
        }
    }
    Ok(a)
}

pub fn parse_tags(body: &Value) -> Result<Option<Tags>, KvError> {
    match body.get("tags") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => {
            let mut tags = Tags::new();
            for (k, v) in m {
                let v = v
                    .as_str()
                    .ok_or_else(|| KvError::bad_parameter(format!("tags.{k} must be a string.")))?;
                tags.insert(k.clone(), v.to_string());
            }
            if tags.len() > 15 {
                return Err(KvError::bad_parameter("At most 15 tags are allowed."));
            }
            Ok(Some(tags))
        }
        Some(_) => Err(KvError::bad_parameter("tags must be an object of strings.")),
    }
}

pub fn new_attributes() -> Attributes {
    let now = clock::now();
    Attributes {
        enabled: true,
        nbf: None,
        exp: None,
        created: now,
        updated: now,
    }
}

fn deleted_conflict(name: &str) -> KvError {
    KvError::conflict(format!(
        "Secret {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the secret can only be recovered or purged."
    ))
}

pub async fn set(app: &App, ctx: &Ctx, name: &str, body: Value) -> Result<Response, KvError> {
    check_name(ObjectKind::Secret, name)?;
    let value = match body.get("value") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(KvError::bad_parameter(
                "The request body must contain 'value' (a string).",
            ))
        }
    };
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::bad_parameter(format!(
            "The secret value is {} bytes; Key Vault allows at most {MAX_VALUE_BYTES}.",
            value.len()
        )));
    }
    let content_type = match body.get("contentType") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(KvError::bad_parameter("contentType must be a string.")),
    };
    let version = SecretVersion {
        version: crate::ids::new_version(),
        value,
        content_type,
        tags: parse_tags(&body)?,
        attributes: parse_attributes(&body, new_attributes())?,
        kid: None,
        managed: false,
    };
    let bundle = app.mutate(|s| {
        let vault = s.vault_mut(&ctx.vault);
        if vault.deleted_secrets.contains_key(name) {
            return Err(deleted_conflict(name));
        }
        let entry = vault.secrets.entry(name.to_string()).or_default();
        if entry.latest().map(|l| l.managed).unwrap_or(false) {
            return Err(KvError::forbidden(format!(
                "Secret {name} is managed by certificate {name}; set a new certificate version instead."
            )));
        }
        let bundle = secret_bundle(ctx, name, &version, true);
        entry.versions.push(version);
        Ok(bundle)
    })
    .await?;
    ok_json(bundle)
}

/// Finds a version (latest when `version` is None) and applies Azure's disabled rule.
fn lookup<'a>(
    versions: Option<&'a Versions<SecretVersion>>,
    name: &str,
    version: Option<&str>,
) -> Result<&'a SecretVersion, KvError> {
    let versions = versions.ok_or_else(|| KvError::not_found(ObjectKind::Secret, name))?;
    match version {
        None => versions.latest(),
        Some(v) => versions.get(v),
    }
    .ok_or_else(|| match version {
        Some(v) => KvError::version_not_found(ObjectKind::Secret, name, v),
        None => KvError::not_found(ObjectKind::Secret, name),
    })
}

pub fn get(app: &App, ctx: &Ctx, name: &str, version: Option<&str>) -> Result<Response, KvError> {
    let bundle = app.with_state(|s| {
        let vault = s.vaults.get(&ctx.vault);
        let sv = lookup(vault.and_then(|v| v.secrets.get(name)), name, version)?;
        if !sv.attributes.enabled {
            return Err(
                KvError::forbidden("Operation get is not allowed on a disabled secret.")
                    .with_inner("SecretDisabled"),
            );
        }
        Ok(secret_bundle(ctx, name, sv, true))
    })?;
    ok_json(bundle)
}

pub fn list(app: &App, ctx: &Ctx) -> Result<Response, KvError> {
    super::list_latest(app, ctx, "secrets", |v| &v.secrets, secret_item)
}

pub fn list_versions(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    super::list_all_versions(
        app,
        ctx,
        ObjectKind::Secret,
        name,
        |v| &v.secrets,
        secret_item,
    )
}

pub async fn update(
    app: &App,
    ctx: &Ctx,
    name: &str,
    version: Option<&str>,
    body: Value,
) -> Result<Response, KvError> {
    let tags = parse_tags(&body)?;
    let bundle = app
        .mutate(|s| {
            let vs = s
                .vaults
                .get_mut(&ctx.vault)
                .and_then(|v| v.secrets.get_mut(name))
                .ok_or_else(|| KvError::not_found(ObjectKind::Secret, name))?;
            let sv = match version {
                None => vs.versions.last_mut(),
                Some(v) => vs.get_mut(v),
            }
            .ok_or_else(|| {
                KvError::version_not_found(ObjectKind::Secret, name, version.unwrap_or(""))
            })?;
            let mut attrs = parse_attributes(&body, sv.attributes.clone())?;
            attrs.updated = clock::now();
            sv.attributes = attrs;
            match body.get("contentType") {
                Some(Value::String(ct)) => sv.content_type = Some(ct.clone()),
                Some(Value::Null) | None => {}
                Some(_) => return Err(KvError::bad_parameter("contentType must be a string.")),
            }
            if tags.is_some() {
                sv.tags = tags;
            }
            Ok(secret_bundle(ctx, name, sv, false))
        })
        .await?;
    ok_json(bundle)
}

fn deleted_bundle(ctx: &Ctx, name: &str, d: &Deleted<SecretVersion>) -> Option<Value> {
    let latest = d.object.latest()?;
    let mut v = secret_bundle(ctx, name, latest, false);
    deleted_extra(
        &mut v,
        ctx,
        "deletedsecrets",
        name,
        d.deleted_date,
        d.scheduled_purge_date,
    );
    Some(v)
}

pub async fn delete(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    let bundle = app
        .mutate(|s| {
            let vault = s
                .vaults
                .get_mut(&ctx.vault)
                .ok_or_else(|| KvError::not_found(ObjectKind::Secret, name))?;
            let managed = vault
                .secrets
                .get(name)
                .and_then(|v| v.latest())
                .map(|l| l.managed)
                .ok_or_else(|| KvError::not_found(ObjectKind::Secret, name))?;
            if managed {
                return Err(KvError::forbidden(format!(
                "Secret {name} is managed by certificate {name}: delete the certificate instead."
            )));
            }
            let object = vault
                .secrets
                .remove(name)
                .ok_or_else(|| KvError::not_found(ObjectKind::Secret, name))?;
            let now = clock::now();
            let d = Deleted {
                object,
                deleted_date: now,
                scheduled_purge_date: now + RETENTION_DAYS * 86_400,
            };
            let bundle = deleted_bundle(ctx, name, &d);
            vault.deleted_secrets.insert(name.to_string(), d);
            bundle.ok_or_else(|| KvError::not_found(ObjectKind::Secret, name))
        })
        .await?;
    ok_json(bundle)
}

pub fn get_deleted(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    let bundle = app.with_state(|s| {
        s.vaults
            .get(&ctx.vault)
            .and_then(|v| v.deleted_secrets.get(name))
            .and_then(|d| deleted_bundle(ctx, name, d))
            .ok_or_else(|| KvError::deleted_not_found(ObjectKind::Secret, name))
    })?;
    ok_json(bundle)
}

pub fn list_deleted(app: &App, ctx: &Ctx) -> Result<Response, KvError> {
    let items = app.with_state(|s| {
        s.vaults
            .get(&ctx.vault)
            .map(|v| {
                v.deleted_secrets
                    .iter()
                    .filter_map(|(n, d)| {
                        let mut item = secret_item(ctx, n, d.object.latest()?, false);
                        deleted_extra(
                            &mut item,
                            ctx,
                            "deletedsecrets",
                            n,
                            d.deleted_date,
                            d.scheduled_purge_date,
                        );
                        Some(item)
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    });
    ok_json(page(ctx, "/deletedsecrets", items)?)
}

pub async fn recover(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    let bundle = app
        .mutate(|s| {
            let vault = s
                .vaults
                .get_mut(&ctx.vault)
                .ok_or_else(|| KvError::deleted_not_found(ObjectKind::Secret, name))?;
            if vault.secrets.contains_key(name) {
                return Err(KvError::conflict(format!(
                    "Secret {name} already exists; there is nothing to recover."
                )));
            }
            let d = vault
                .deleted_secrets
                .remove(name)
                .ok_or_else(|| KvError::deleted_not_found(ObjectKind::Secret, name))?;
            let bundle = d
                .object
                .latest()
                .map(|l| secret_bundle(ctx, name, l, false))
                .ok_or_else(|| KvError::deleted_not_found(ObjectKind::Secret, name))?;
            vault.secrets.insert(name.to_string(), d.object);
            Ok(bundle)
        })
        .await?;
    ok_json(bundle)
}

pub async fn purge(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    app.mutate(|s| {
        s.vaults
            .get_mut(&ctx.vault)
            .and_then(|v| v.deleted_secrets.remove(name))
            .map(|_| ())
            .ok_or_else(|| KvError::deleted_not_found(ObjectKind::Secret, name))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
