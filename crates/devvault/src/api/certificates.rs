//! Certificates: import (PFX or PEM), create (self-signed), get, policy, list, versions, delete.
//! Every version also creates the backing secret and key under the same name and version.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde_json::{json, Value};

use super::json::{cert_bundle, cert_item, cert_policy, deleted_extra};
use super::keys::{generate, key_kind, key_version};
use super::secrets::{new_attributes, parse_attributes, parse_tags, RETENTION_DAYS};
use super::{check_name, ok_json, Ctx};
use crate::clock;
use crate::error::{KvError, ObjectKind};
use crate::server::App;
use crate::state::{Attributes, CertVersion, DeletedCertificate, SecretVersion, State, Tags};

/// Longest certificate validity the dev vault issues (100 years).
pub const MAX_VALIDITY_MONTHS: u64 = 1200;
/// The same limit in days, for seed files.
pub const MAX_VALIDITY_DAYS: u32 = 36_500;

pub const PKCS12: &str = "application/x-pkcs12";
pub const PEM: &str = "application/x-pem-file";

/// What one new certificate version is made of.
pub struct NewCertificate {
    pub key: pki::PrivateKey,
    /// Leaf first.
    pub certs: Vec<Vec<u8>>,
    pub content_type: String,
    pub enabled: bool,
    pub tags: Option<Tags>,
    /// `Self` for self-signed creation, `Unknown` for imports.
    pub issuer: String,
    /// Caller-supplied policy members kept as given (lifetime_actions, key_props.exportable...).
    pub policy_in: Value,
}

fn content_type_of(policy: &Value) -> Result<String, KvError> {
    match policy.pointer("/secret_props/contentType") {
        None | Some(Value::Null) => Ok(PKCS12.to_string()),
        Some(Value::String(ct)) if ct == PKCS12 || ct == PEM => Ok(ct.clone()),
        Some(other) => Err(KvError::bad_parameter(format!(
            "policy.secret_props.contentType must be '{PKCS12}' or '{PEM}', got {other}."
        ))),
    }
}

/// Puts the certificate matching the key first, then the rest ordered towards the root.
pub fn leaf_first(key: &pki::PrivateKey, certs: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, KvError> {
    if certs.is_empty() {
        return Err(KvError::bad_parameter(
            "The certificate content holds no certificate.",
        ));
    }
    let spki = pki::spki_der(key)
        .map_err(|e| KvError::bad_parameter(format!("The private key cannot be used: {e}")))?;
    let ordered = pki::order_chain(&certs).unwrap_or(certs);
    let leaf_idx = ordered
        .iter()
        .position(|c| pki::cert_info(c).map(|i| i.spki_der == spki).unwrap_or(false))
        .ok_or_else(|| {
            KvError::bad_parameter(
                "The private key does not match any certificate in the content: import the leaf certificate with its own key.",
            )
        })?;
    let mut ordered = ordered;
    let leaf = ordered.remove(leaf_idx);
    ordered.insert(0, leaf);
    Ok(ordered)
}

fn months_between(nbf: i64, exp: i64) -> i64 {
    ((exp - nbf) as f64 / (30.44 * 86_400.0)).round().max(1.0) as i64
}

/// Adds one version of certificate `name` (and its backing secret and key) to `vault`.
pub fn add_version(
    state: &mut State,
    vault: &str,
    name: &str,
    new: NewCertificate,
) -> Result<String, KvError> {
    let leaf = new
        .certs
        .first()
        .ok_or_else(|| KvError::bad_parameter("no certificate"))?;
    let info = pki::cert_info(leaf)
        .map_err(|e| KvError::bad_parameter(format!("The certificate cannot be parsed: {e}")))?;
    let v = state.vault_mut(vault);
    if v.deleted_certificates.contains_key(name) {
        return Err(KvError::conflict(format!(
            "Certificate {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the certificate can only be recovered or purged."
        )));
    }
    if v.secrets
        .get(name)
        .and_then(|s| s.latest())
        .map(|l| !l.managed)
        .unwrap_or(false)
        || v.keys
            .get(name)
            .and_then(|s| s.latest())
            .map(|l| !l.managed)
            .unwrap_or(false)
    {
        return Err(KvError::conflict(format!(
            "There is already a secret or key named {name} that is not managed by a certificate; choose another certificate name."
        )));
    }
    let version = crate::ids::new_version();
    let now = clock::now();
    let attributes = Attributes {
        enabled: new.enabled,
        nbf: Some(info.not_before),
        exp: Some(info.not_after),
        created: now,
        updated: now,
    };
    let mut key_props = match new.key.kind() {
        pki::KeyKind::Rsa { bits } => {
            json!({"exportable": true, "kty": "RSA", "key_size": bits, "reuse_key": false})
        }
        pki::KeyKind::Ec(c) => {
            json!({"exportable": true, "kty": "EC", "crv": c.jwk_name(), "reuse_key": false})
        }
    };
    if let Some(exp) = new
        .policy_in
        .pointer("/key_props/exportable")
        .and_then(Value::as_bool)
    {
        key_props["exportable"] = json!(exp);
    }
    let policy = json!({
        "key_props": key_props,
        "secret_props": {"contentType": new.content_type},
        "x509_props": {
            "subject": info.subject,
            "sans": {"dns_names": info.dns_names},
            "ekus": info.ekus,
            "key_usage": info.key_usage,
            "validity_months": months_between(info.not_before, info.not_after),
        },
        "lifetime_actions": new.policy_in.get("lifetime_actions").cloned()
            .unwrap_or_else(|| json!([{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}])),
        "issuer": {"name": new.issuer},
        "attributes": {"enabled": true, "created": now, "updated": now},
    });
    let secret_value = if new.content_type == PEM {
        pki::bundle_to_pem(Some(&new.key), &new.certs)
    } else {
        B64.encode(
            pki::build_pfx(&new.key, &new.certs)
                .map_err(|e| KvError::internal(format!("building the PFX failed: {e}")))?,
        )
    };
    let kv = key_version(
        &new.key,
        false,
        version.clone(),
        attributes.clone(),
        new.tags.clone(),
        None,
        true,
    )?;
    let sv = SecretVersion {
        version: version.clone(),
        value: secret_value,
        content_type: Some(new.content_type.clone()),
        tags: new.tags.clone(),
        attributes: attributes.clone(),
        kid: Some(format!("{name}/{version}")),
        managed: true,
    };
    let cv = CertVersion {
        version: version.clone(),
        cer: B64.encode(leaf),
        x5t: B64URL.encode(info.sha1_thumbprint),
        policy,
        tags: new.tags,
        attributes,
    };
    v.certificates
        .entry(name.to_string())
        .or_default()
        .versions
        .push(cv);
    v.secrets
        .entry(name.to_string())
        .or_default()
        .versions
        .push(sv);
    v.keys
        .entry(name.to_string())
        .or_default()
        .versions
        .push(kv);
    Ok(version)
}

/// Decodes import content: base64 PFX (with `pwd`) or PEM (raw or base64) with key and chain.
pub fn decode_content(value: &str, password: &str) -> Result<pki::CertBundle, KvError> {
    let text = if value.contains("-----BEGIN") {
        Some(value.to_string())
    } else {
        None
    };
    let der = if text.is_none() {
        let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        Some(B64.decode(compact).map_err(|_| {
            KvError::bad_parameter("The certificate 'value' is neither PEM nor base64-encoded PFX.")
        })?)
    } else {
        None
    };
    let text = text.or_else(|| {
        der.as_ref()
            .and_then(|d| std::str::from_utf8(d).ok())
            .filter(|t| t.contains("-----BEGIN"))
            .map(String::from)
    });
    if let Some(text) = text {
        return pki::parse_pem_bundle(&text).map_err(|e| {
            KvError::bad_parameter(format!(
                "The specified PEM X.509 certificate content is in an unexpected format: {e}"
            ))
        });
    }
    let der = der.unwrap_or_default();
    pki::parse_pfx(&der, password).map_err(|e| {
        KvError::bad_parameter(format!(
            "The specified PKCS#12 X.509 certificate content can not be read: {e}"
        ))
    })
}

pub async fn import(app: &App, ctx: &Ctx, name: &str, body: Value) -> Result<Response, KvError> {
    check_name(ObjectKind::Certificate, name)?;
    let value = body.get("value").and_then(Value::as_str).ok_or_else(|| {
        KvError::bad_parameter("The request body must contain 'value' (base64 PFX or PEM).")
    })?;
    let password = body.get("pwd").and_then(Value::as_str).unwrap_or("");
    let policy_in = body.get("policy").cloned().unwrap_or(Value::Null);
    let content_type = content_type_of(&policy_in)?;
    let bundle = decode_content(value, password)?;
    let key = bundle.key.ok_or_else(|| {
        KvError::bad_parameter("The certificate content has no private key; Key Vault imports a certificate together with its private key.")
    })?;
    let certs = leaf_first(&key, bundle.certs)?;
    let enabled = parse_attributes(&body, new_attributes())?.enabled;
    let new = NewCertificate {
        key,
        certs,
        content_type,
        enabled,
        tags: parse_tags(&body)?,
        issuer: "Unknown".into(),
        policy_in,
    };
    let bundle = app
        .mutate(|s| {
            let version = add_version(s, &ctx.vault, name, new)?;
            bundle_of(s, ctx, name, Some(&version))
        })
        .await?;
    ok_json(bundle)
}

fn bundle_of(s: &State, ctx: &Ctx, name: &str, version: Option<&str>) -> Result<Value, KvError> {
    let vs = s
        .vaults
        .get(&ctx.vault)
        .and_then(|v| v.certificates.get(name))
        .ok_or_else(|| KvError::not_found(ObjectKind::Certificate, name))?;
    let cv = match version {
        None => vs.latest(),
        Some(v) => vs.get(v),
    }
    .ok_or_else(|| {
        KvError::version_not_found(ObjectKind::Certificate, name, version.unwrap_or(""))
    })?;
    Ok(cert_bundle(ctx, name, cv))
}

/// A certificate operation. Creation answers `inProgress` (as Key Vault does, so SDK pollers
/// poll once and then fetch the certificate); `GET .../pending` answers `completed`.
fn operation_json(ctx: &Ctx, name: &str, issuer: &str, version: &str, status: &str) -> Value {
    json!({
        "id": format!("{}/certificates/{name}/pending", ctx.base),
        "issuer": {"name": issuer},
        "csr": "",
        "cancellation_requested": false,
        "status": status,
        "status_details": "",
        "target": format!("{}/certificates/{name}", ctx.base),
        "request_id": version,
    })
}

pub async fn create(app: &App, ctx: &Ctx, name: &str, body: Value) -> Result<Response, KvError> {
    check_name(ObjectKind::Certificate, name)?;
    let policy = body
        .get("policy")
        .filter(|p| p.is_object())
        .ok_or_else(|| KvError::bad_parameter("The request body must contain 'policy'."))?
        .clone();
    let issuer = policy
        .pointer("/issuer/name")
        .and_then(Value::as_str)
        .unwrap_or("Self");
    if !issuer.eq_ignore_ascii_case("self") {
        return Err(KvError::bad_parameter(format!(
            "policy.issuer.name '{issuer}': the dev vault issues self-signed certificates only (issuer 'Self'); import certificates from other issuers."
        )));
    }
    let subject = policy
        .pointer("/x509_props/subject")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            KvError::bad_parameter("policy.x509_props.subject is required (e.g. CN=app.example).")
        })?
        .to_string();
    let dns_names: Vec<String> = policy
        .pointer("/x509_props/sans/dns_names")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let months = match policy.pointer("/x509_props/validity_months") {
        None | Some(Value::Null) => 12,
        Some(v) => v
            .as_u64()
            .filter(|m| (1..=MAX_VALIDITY_MONTHS).contains(m))
            .ok_or_else(|| {
                KvError::bad_parameter(format!(
                    "x509_props.validity_months must be an integer from 1 to {MAX_VALIDITY_MONTHS}."
                ))
            })?,
    };
    let kty = policy
        .pointer("/key_props/kty")
        .and_then(Value::as_str)
        .unwrap_or("RSA");
    let (kind, _hsm) = key_kind(
        kty,
        policy
            .pointer("/key_props/key_size")
            .and_then(Value::as_u64),
        policy.pointer("/key_props/crv").and_then(Value::as_str),
    )?;
    let content_type = content_type_of(&policy)?;
    let enabled = parse_attributes(&body, new_attributes())?.enabled;
    let tags = parse_tags(&body)?;
    let key = generate(kind).await?;
    let request = pki::CertRequest {
        subject,
        dns_names,
        ip_addresses: Vec::new(),
        is_ca: false,
        validity_days: (months as u32) * 30,
    };
    let der = pki::self_signed(&request, &key).map_err(|e| {
        KvError::bad_parameter(format!(
            "The certificate cannot be created from this policy: {e}"
        ))
    })?;
    let new = NewCertificate {
        key,
        certs: vec![der],
        content_type,
        enabled,
        tags,
        issuer: "Self".into(),
        policy_in: policy,
    };
    let op = app
        .mutate(|s| {
            let version = add_version(s, &ctx.vault, name, new)?;
            Ok::<_, KvError>(operation_json(ctx, name, "Self", &version, "inProgress"))
        })
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(op)).into_response())
}

pub fn operation(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    let op = app.with_state(|s| {
        let cv = s
            .vaults
            .get(&ctx.vault)
            .and_then(|v| v.certificates.get(name))
            .and_then(|c| c.latest())
            .ok_or_else(|| {
                KvError::new(
                    StatusCode::NOT_FOUND,
                    "PendingCertificateNotFound",
                    format!("Pending certificate not found: {name}"),
                )
            })?;
        let issuer = cv
            .policy
            .pointer("/issuer/name")
            .and_then(Value::as_str)
            .unwrap_or("Unknown");
        Ok::<_, KvError>(operation_json(ctx, name, issuer, &cv.version, "completed"))
    })?;
    ok_json(op)
}

pub fn get(app: &App, ctx: &Ctx, name: &str, version: Option<&str>) -> Result<Response, KvError> {
    let bundle = app.with_state(|s| bundle_of(s, ctx, name, version))?;
    ok_json(bundle)
}

pub fn policy(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    let p = app.with_state(|s| {
        s.vaults
            .get(&ctx.vault)
            .and_then(|v| v.certificates.get(name))
            .and_then(|c| c.latest())
            .map(|cv| cert_policy(ctx, name, cv))
            .ok_or_else(|| KvError::not_found(ObjectKind::Certificate, name))
    })?;
    ok_json(p)
}

pub fn list(app: &App, ctx: &Ctx) -> Result<Response, KvError> {
    super::list_latest(app, ctx, "certificates", |v| &v.certificates, cert_item)
}

pub fn list_versions(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    super::list_all_versions(
        app,
        ctx,
        ObjectKind::Certificate,
        name,
        |v| &v.certificates,
        cert_item,
    )
}

fn deleted_json(ctx: &Ctx, name: &str, d: &DeletedCertificate) -> Option<Value> {
    let mut v = cert_bundle(ctx, name, d.certificate.latest()?);
    deleted_extra(
        &mut v,
        ctx,
        "deletedcertificates",
        name,
        d.deleted_date,
        d.scheduled_purge_date,
    );
    Some(v)
}

pub async fn delete(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    let bundle = app
        .mutate(|s| {
            let v = s
                .vaults
                .get_mut(&ctx.vault)
                .ok_or_else(|| KvError::not_found(ObjectKind::Certificate, name))?;
            let certificate = v
                .certificates
                .remove(name)
                .ok_or_else(|| KvError::not_found(ObjectKind::Certificate, name))?;
            let now = clock::now();
            let d = DeletedCertificate {
                certificate,
                secret: v.secrets.remove(name),
                key: v.keys.remove(name),
                deleted_date: now,
                scheduled_purge_date: now + RETENTION_DAYS * 86_400,
            };
            let bundle = deleted_json(ctx, name, &d);
            v.deleted_certificates.insert(name.to_string(), d);
            bundle.ok_or_else(|| KvError::not_found(ObjectKind::Certificate, name))
        })
        .await?;
    ok_json(bundle)
}

pub fn get_deleted(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    let bundle = app.with_state(|s| {
        s.vaults
            .get(&ctx.vault)
            .and_then(|v| v.deleted_certificates.get(name))
            .and_then(|d| deleted_json(ctx, name, d))
            .ok_or_else(|| KvError::deleted_not_found(ObjectKind::Certificate, name))
    })?;
    ok_json(bundle)
}

pub async fn purge(app: &App, ctx: &Ctx, name: &str) -> Result<Response, KvError> {
    app.mutate(|s| {
        s.vaults
            .get_mut(&ctx.vault)
            .and_then(|v| v.deleted_certificates.remove(name))
            .map(|_| ())
            .ok_or_else(|| KvError::deleted_not_found(ObjectKind::Certificate, name))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
