//! Keys: create (RSA / EC), import (JWK), get, list, versions. Only public JWK members leave.

use axum::response::Response;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::Value;

use super::json::{key_bundle, key_item};
use super::secrets::{new_attributes, parse_attributes, parse_tags};
use super::{check_name, ok_json, Ctx};
use crate::error::{KvError, ObjectKind};
use crate::server::App;
use crate::state::{Attributes, KeyVersion, Tags};

fn default_ops(kty: &str) -> Vec<String> {
    let ops: &[&str] = if kty.starts_with("EC") {
        &["sign", "verify"]
    } else {
        &[
            "encrypt",
            "decrypt",
            "sign",
            "verify",
            "wrapKey",
            "unwrapKey",
        ]
    };
    ops.iter().map(|s| s.to_string()).collect()
}

/// Builds a stored key version from a private key.
pub fn key_version(
    key: &pki::PrivateKey,
    hsm: bool,
    version: String,
    attributes: Attributes,
    tags: Option<Tags>,
    key_ops: Option<Vec<String>>,
    managed: bool,
) -> Result<KeyVersion, KvError> {
    let public = pki::public_jwk(key)
        .map_err(|e| KvError::bad_parameter(format!("The key cannot be used: {e}")))?;
    let base = match key.kind() {
        pki::KeyKind::Rsa { .. } => "RSA",
        pki::KeyKind::Ec(_) => "EC",
    };
    let kty = if hsm {
        format!("{base}-HSM")
    } else {
        base.to_string()
    };
    Ok(KeyVersion {
        version,
        key_ops: key_ops.unwrap_or_else(|| default_ops(&kty)),
        kty,
        public,
        private_pkcs8: B64.encode(key.pkcs8_der()),
        tags,
        attributes,
        managed,
    })
}

/// Parses `kty`, `key_size`, `crv` of a create request (also used by certificate policies).
pub fn key_kind(
    kty: &str,
    key_size: Option<u64>,
    crv: Option<&str>,
) -> Result<(pki::KeyKind, bool), KvError> {
    let hsm = kty.ends_with("-HSM");
    match kty.trim_end_matches("-HSM") {
        "RSA" => {
            let bits = key_size.unwrap_or(2048);
            if !matches!(bits, 2048 | 3072 | 4096) {
                return Err(KvError::bad_parameter(format!(
                    "key_size {bits} is not supported for RSA keys: use 2048, 3072 or 4096."
                )));
            }
            Ok((
                pki::KeyKind::Rsa {
                    bits: bits as usize,
                },
                hsm,
            ))
        }
        "EC" => {
            let crv = crv.unwrap_or("P-256");
            let curve = match crv {
                "P-256" => pki::Curve::P256,
                "P-384" => pki::Curve::P384,
                "P-521" => pki::Curve::P521,
                other => {
                    return Err(KvError::bad_parameter(format!(
                        "The curve '{other}' is not supported: use P-256, P-384 or P-521."
                    )))
                }
            };
            Ok((pki::KeyKind::Ec(curve), hsm))
        }
        "oct" => Err(KvError::bad_parameter(
            "Symmetric (oct) keys are only supported by Managed HSM.",
        )),
        other => Err(KvError::bad_parameter(format!(
            "The key type '{other}' is not supported: use RSA, RSA-HSM, EC or EC-HSM."
        ))),
    }
}

fn key_ops(body: &Value) -> Result<Option<Vec<String>>, KvError> {
    match body.get("key_ops") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| KvError::bad_parameter("key_ops must be a list of strings."))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(KvError::bad_parameter("key_ops must be a list of strings.")),
    }
}

pub async fn generate(kind: pki::KeyKind) -> Result<pki::PrivateKey, KvError> {
    tokio::task::spawn_blocking(move || pki::generate_key(kind))
        .await
        .map_err(|e| KvError::internal(format!("key generation failed: {e}")))?
        .map_err(|e| KvError::internal(format!("key generation failed: {e}")))
}

async fn store(app: &App, ctx: &Ctx, name: &str, kv: KeyVersion) -> Result<Response, KvError> {
    let bundle = app.mutate(|s| {
        let vault = s.vault_mut(&ctx.vault);
        let entry = vault.keys.entry(name.to_string()).or_default();
        if entry.latest().map(|l| l.managed).unwrap_or(false) {
            return Err(KvError::forbidden(format!(
                "Key {name} is managed by certificate {name}; create a new certificate version instead."
            )));
        }
        let bundle = key_bundle(ctx, name, &kv);
        entry.versions.push(kv);
        Ok(bundle)
    })
    .await?;
    ok_json(bundle)
}

pub async fn create(app: &App, ctx: &Ctx, name: &str, body: Value) -> Result<Response, KvError> {
    check_name(ObjectKind::Key, name)?;
    let kty = body.get("kty").and_then(Value::as_str).ok_or_else(|| {
        KvError::bad_parameter("The request body must contain 'kty' (RSA, RSA-HSM, EC or EC-HSM).")
    })?;
    let (kind, hsm) = key_kind(
        kty,
        body.get("key_size").and_then(Value::as_u64),
        body.get("crv").and_then(Value::as_str),
    )?;
    let attributes = parse_attributes(&body, new_attributes())?;
    let tags = parse_tags(&body)?;
    let ops = key_ops(&body)?;
    let key = generate(kind).await?;
    let kv = key_version(
        &key,
        hsm,
        crate::ids::new_version(),
        attributes,
        tags,
        ops,
        false,
    )?;
    store(app, ctx, name, kv).await
}

pub async fn import(app: &App, ctx: &Ctx, name: &str, body: Value) -> Result<Response, KvError> {
    check_name(ObjectKind::Key, name)?;
    let jwk = body.get("key").filter(|k| k.is_object()).ok_or_else(|| {
        KvError::bad_parameter(
            "The request body must contain 'key' (a JWK with its private members).",
        )
    })?;
    let key = pki::private_key_from_jwk(jwk)
        .map_err(|e| KvError::bad_parameter(format!("The JWK in 'key' cannot be imported: {e}")))?;
    let hsm = body
        .get("Hsm")
        .or_else(|| body.get("hsm"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || jwk
            .get("kty")
            .and_then(Value::as_str)
            .map(|k| k.ends_with("-HSM"))
            .unwrap_or(false);
    let attributes = parse_attributes(&body, new_attributes())?;
    let tags = parse_tags(&body)?;
    let ops = key_ops(jwk)?;
    let kv = key_version(
        &key,
        hsm,
        crate::ids::new_version(),
        attributes,
        tags,
        ops,
        false,
    )?;
    store(app, ctx, name, kv).await
}

pub fn get(app: &App, ctx: &Ctx, name: &str, version: Option<&str>) -> Result<Response, KvError> {
    let bundle = app.with_state(|s| {
        let vs = s
            .vaults
            .get(&ctx.vault)
            .and_then(|v| v.keys.get(name))
            .ok_or_else(|| KvError::not_found(ObjectKind::Key, name))?;
        let kv = match version {
            None => vs.latest(),
            Some(v) => vs.get(v),
        }
        .ok_or_else(|| KvError::version_not_found(ObjectKind::Key, name, version.unwrap_or("")))?;
        if !kv.attributes.enabled {
            return Err(
                KvError::forbidden("Operation get is not allowed on a disabled key.")
                    .with_inner("KeyDisabled"),
            );
        }
        Ok(key_bundle(ctx, name, kv))
    })?;
    ok_json(bundle)
}

pub fn list(app: &App, ctx: &Ctx) -> Result<Response, KvError> {
    super::list_latest(app, ctx, "keys", |v| &v.keys, key_item)
}

pub fn list_versions(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    super::list_all_versions(app, ctx, ObjectKind::Key, name, |v| &v.keys, key_item)
}
