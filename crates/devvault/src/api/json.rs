//! JSON shapes of Key Vault bundles and list items.

use serde_json::{json, Value};

use super::Ctx;
use crate::error::KvError;
use crate::state::{Attributes, CertVersion, KeyVersion, SecretVersion, Tags};

pub const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
pub const RECOVERABLE_DAYS: i64 = 90;

pub fn attributes(a: &Attributes) -> Value {
    let mut v = json!({
        "enabled": a.enabled,
        "created": a.created,
        "updated": a.updated,
        "recoveryLevel": RECOVERY_LEVEL,
        "recoverableDays": RECOVERABLE_DAYS,
    });
    if let Some(nbf) = a.nbf {
        v["nbf"] = json!(nbf);
    }
    if let Some(exp) = a.exp {
        v["exp"] = json!(exp);
    }
    v
}

fn put_tags(v: &mut Value, tags: &Option<Tags>) {
    if let Some(t) = tags {
        v["tags"] = json!(t);
    }
}

pub fn secret_bundle(ctx: &Ctx, name: &str, s: &SecretVersion, with_value: bool) -> Value {
    let mut v = json!({
        "id": format!("{}/secrets/{name}/{}", ctx.base, s.version),
        "attributes": attributes(&s.attributes),
    });
    if with_value {
        v["value"] = json!(s.value);
    }
    if let Some(ct) = &s.content_type {
        v["contentType"] = json!(ct);
    }
    put_tags(&mut v, &s.tags);
    if let Some(kid) = &s.kid {
        v["kid"] = json!(format!("{}/keys/{kid}", ctx.base));
    }
    if s.managed {
        v["managed"] = json!(true);
    }
    v
}

pub fn secret_item(ctx: &Ctx, name: &str, s: &SecretVersion, with_version: bool) -> Value {
    let id = if with_version {
        format!("{}/secrets/{name}/{}", ctx.base, s.version)
    } else {
        format!("{}/secrets/{name}", ctx.base)
    };
    let mut v = json!({"id": id, "attributes": attributes(&s.attributes)});
    if let Some(ct) = &s.content_type {
        v["contentType"] = json!(ct);
    }
    put_tags(&mut v, &s.tags);
    if s.managed {
        v["managed"] = json!(true);
    }
    v
}

pub fn deleted_extra(
    v: &mut Value,
    ctx: &Ctx,
    collection: &str,
    name: &str,
    deleted: i64,
    purge: i64,
) {
    v["recoveryId"] = json!(format!("{}/{collection}/{name}", ctx.base));
    v["deletedDate"] = json!(deleted);
    v["scheduledPurgeDate"] = json!(purge);
}

pub fn jwk(ctx: &Ctx, name: &str, k: &KeyVersion) -> Value {
    let mut key = serde_json::to_value(&k.public).unwrap_or_else(|_| json!({}));
    key["kid"] = json!(format!("{}/keys/{name}/{}", ctx.base, k.version));
    key["kty"] = json!(k.kty);
    key["key_ops"] = json!(k.key_ops);
    key
}

pub fn key_bundle(ctx: &Ctx, name: &str, k: &KeyVersion) -> Value {
    let mut attrs = attributes(&k.attributes);
    attrs["exportable"] = json!(false);
    let mut v = json!({"key": jwk(ctx, name, k), "attributes": attrs});
    put_tags(&mut v, &k.tags);
    if k.managed {
        v["managed"] = json!(true);
    }
    v
}

pub fn key_item(ctx: &Ctx, name: &str, k: &KeyVersion, with_version: bool) -> Value {
    let kid = if with_version {
        format!("{}/keys/{name}/{}", ctx.base, k.version)
    } else {
        format!("{}/keys/{name}", ctx.base)
    };
    let mut v = json!({"kid": kid, "attributes": attributes(&k.attributes)});
    put_tags(&mut v, &k.tags);
    if k.managed {
        v["managed"] = json!(true);
    }
    v
}

pub fn cert_policy(ctx: &Ctx, name: &str, c: &CertVersion) -> Value {
    let mut p = c.policy.clone();
    p["id"] = json!(format!("{}/certificates/{name}/policy", ctx.base));
    p
}

pub fn cert_bundle(ctx: &Ctx, name: &str, c: &CertVersion) -> Value {
    let mut v = json!({
        "id": format!("{}/certificates/{name}/{}", ctx.base, c.version),
        "kid": format!("{}/keys/{name}/{}", ctx.base, c.version),
        "sid": format!("{}/secrets/{name}/{}", ctx.base, c.version),
        "x5t": c.x5t,
        "cer": c.cer,
        "attributes": attributes(&c.attributes),
        "policy": cert_policy(ctx, name, c),
    });
    put_tags(&mut v, &c.tags);
    v
}

pub fn cert_item(ctx: &Ctx, name: &str, c: &CertVersion, with_version: bool) -> Value {
    let id = if with_version {
        format!("{}/certificates/{name}/{}", ctx.base, c.version)
    } else {
        format!("{}/certificates/{name}", ctx.base)
    };
    let mut v = json!({"id": id, "x5t": c.x5t, "attributes": attributes(&c.attributes)});
    put_tags(&mut v, &c.tags);
    v
}

/// One page of `items` per `maxresults` (1-25, default 25) and `$skiptoken` (an offset).
pub fn page(ctx: &Ctx, path: &str, items: Vec<Value>) -> Result<Value, KvError> {
    let max = match ctx.query.get("maxresults") {
        None => 25,
        Some(m) => match m.parse::<usize>() {
            Ok(n) if (1..=25).contains(&n) => n,
            _ => {
                return Err(KvError::bad_parameter(format!(
                    "maxresults must be an integer from 1 to 25, got '{m}'."
                )))
            }
        },
    };
    let skip = match ctx.query.get("$skiptoken") {
        None => 0,
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| KvError::bad_parameter(format!("Invalid $skiptoken '{s}'.")))?,
    };
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(skip).take(max).collect();
    let mut v = json!({"value": value, "nextLink": null});
    if skip + max < total {
        v["nextLink"] = json!(format!(
            "{}{path}?api-version={}&$skiptoken={}&maxresults={max}",
            ctx.base,
            ctx.api_version,
            skip + max
        ));
    }
    Ok(v)
}
