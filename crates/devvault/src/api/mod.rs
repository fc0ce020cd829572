//! The Key Vault data plane: request routing, api-version, fault injection, authentication,
//! access policies and counters, then the per-family handlers.

pub(crate) mod certificates;
mod json;
pub(crate) mod keys;
pub(crate) mod secrets;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::error::{KvError, ObjectKind};
use crate::faults::Injected;
use crate::server::App;
use crate::state::{Vault, Versioned, Versions};
use crate::token::{audience_matches, Claims, TokenError};
use std::collections::BTreeMap;

/// One data-plane operation, parsed from method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    SetSecret(String),
    GetSecret(String, Option<String>),
    ListSecrets,
    ListSecretVersions(String),
    UpdateSecret(String, Option<String>),
    DeleteSecret(String),
    GetDeletedSecret(String),
    ListDeletedSecrets,
    RecoverSecret(String),
    PurgeSecret(String),
    ImportCertificate(String),
    CreateCertificate(String),
    GetCertificateOperation(String),
    GetCertificate(String, Option<String>),
    GetCertificatePolicy(String),
    ListCertificates,
    ListCertificateVersions(String),
    DeleteCertificate(String),
    GetDeletedCertificate(String),
    PurgeCertificate(String),
    CreateKey(String),
    ImportKey(String),
    GetKey(String, Option<String>),
    ListKeys,
    ListKeyVersions(String),
}

fn latest(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

impl Op {
    pub fn parse(method: &Method, path: &str) -> Option<Op> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let m = method.as_str();
        use Op::*;
        Some(match (m, segs.as_slice()) {
            ("PUT", ["secrets", n]) => SetSecret(n.to_string()),
            ("GET", ["secrets"] | ["secrets", ""]) => ListSecrets,
            ("GET", ["secrets", n, "versions"]) => ListSecretVersions(n.to_string()),
            ("GET", ["secrets", n]) => GetSecret(n.to_string(), None),
            ("GET", ["secrets", n, v]) => GetSecret(n.to_string(), latest(v)),
            ("PATCH", ["secrets", n, v]) => UpdateSecret(n.to_string(), latest(v)),
            ("PATCH", ["secrets", n]) => UpdateSecret(n.to_string(), None),
            ("DELETE", ["secrets", n]) => DeleteSecret(n.to_string()),
            ("GET", ["deletedsecrets"] | ["deletedsecrets", ""]) => ListDeletedSecrets,
            ("GET", ["deletedsecrets", n]) => GetDeletedSecret(n.to_string()),
            ("POST", ["deletedsecrets", n, "recover"]) => RecoverSecret(n.to_string()),
            ("DELETE", ["deletedsecrets", n]) => PurgeSecret(n.to_string()),
            ("POST", ["certificates", n, "import"]) => ImportCertificate(n.to_string()),
            ("POST", ["certificates", n, "create"]) => CreateCertificate(n.to_string()),
            ("GET", ["certificates", n, "pending"]) => GetCertificateOperation(n.to_string()),
            ("GET", ["certificates", n, "policy"]) => GetCertificatePolicy(n.to_string()),
            ("GET", ["certificates"] | ["certificates", ""]) => ListCertificates,
            ("GET", ["certificates", n, "versions"]) => ListCertificateVersions(n.to_string()),
            ("GET", ["certificates", n]) => GetCertificate(n.to_string(), None),
            ("GET", ["certificates", n, v]) => GetCertificate(n.to_string(), latest(v)),
            ("DELETE", ["certificates", n]) => DeleteCertificate(n.to_string()),
            ("GET", ["deletedcertificates", n]) => GetDeletedCertificate(n.to_string()),
            ("DELETE", ["deletedcertificates", n]) => PurgeCertificate(n.to_string()),
            ("POST", ["keys", n, "create"]) => CreateKey(n.to_string()),
            ("PUT", ["keys", n]) => ImportKey(n.to_string()),
            ("GET", ["keys"] | ["keys", ""]) => ListKeys,
            ("GET", ["keys", n, "versions"]) => ListKeyVersions(n.to_string()),
            ("GET", ["keys", n]) => GetKey(n.to_string(), None),
            ("GET", ["keys", n, v]) => GetKey(n.to_string(), latest(v)),
            _ => return None,
        })
    }

    /// Operation name used by the counters.
    pub fn name(&self) -> &'static str {
        use Op::*;
        match self {
            SetSecret(_) => "SetSecret",
            GetSecret(..) => "GetSecret",
            ListSecrets => "ListSecrets",
            ListSecretVersions(_) => "ListSecretVersions",
            UpdateSecret(..) => "UpdateSecret",
            DeleteSecret(_) => "DeleteSecret",
            GetDeletedSecret(_) => "GetDeletedSecret",
            ListDeletedSecrets => "ListDeletedSecrets",
            RecoverSecret(_) => "RecoverSecret",
            PurgeSecret(_) => "PurgeSecret",
            ImportCertificate(_) => "ImportCertificate",
            CreateCertificate(_) => "CreateCertificate",
            GetCertificateOperation(_) => "GetCertificateOperation",
            GetCertificate(..) => "GetCertificate",
            GetCertificatePolicy(_) => "GetCertificatePolicy",
            ListCertificates => "ListCertificates",
            ListCertificateVersions(_) => "ListCertificateVersions",
            DeleteCertificate(_) => "DeleteCertificate",
            GetDeletedCertificate(_) => "GetDeletedCertificate",
            PurgeCertificate(_) => "PurgeCertificate",
            CreateKey(_) => "CreateKey",
            ImportKey(_) => "ImportKey",
            GetKey(..) => "GetKey",
            ListKeys => "ListKeys",
            ListKeyVersions(_) => "ListKeyVersions",
        }
    }

    /// The object name the operation targets ("" for lists).
    pub fn object(&self) -> &str {
        use Op::*;
        match self {
            SetSecret(n)
            | GetSecret(n, _)
            | ListSecretVersions(n)
            | UpdateSecret(n, _)
            | DeleteSecret(n)
            | GetDeletedSecret(n)
            | RecoverSecret(n)
            | PurgeSecret(n)
            | ImportCertificate(n)
            | CreateCertificate(n)
            | GetCertificateOperation(n)
            | GetCertificate(n, _)
            | GetCertificatePolicy(n)
            | ListCertificateVersions(n)
            | DeleteCertificate(n)
            | GetDeletedCertificate(n)
            | PurgeCertificate(n)
            | CreateKey(n)
            | ImportKey(n)
            | GetKey(n, _)
            | ListKeyVersions(n) => n,
            ListSecrets | ListDeletedSecrets | ListCertificates | ListKeys => "",
        }
    }

    /// The access-policy permission the operation needs.
    pub fn permission(&self) -> (ObjectKind, &'static str) {
        use ObjectKind::*;
        use Op::*;
        match self {
            SetSecret(_) | UpdateSecret(..) => (Secret, "set"),
            GetSecret(..) => (Secret, "get"),
            ListSecrets | ListSecretVersions(_) | ListDeletedSecrets | GetDeletedSecret(_) => {
                (Secret, "list")
            }
            DeleteSecret(_) => (Secret, "delete"),
            RecoverSecret(_) => (Secret, "recover"),
            PurgeSecret(_) => (Secret, "purge"),
            ImportCertificate(_) => (Certificate, "import"),
            CreateCertificate(_) => (Certificate, "create"),
            GetCertificateOperation(_) | GetCertificate(..) | GetCertificatePolicy(_) => {
                (Certificate, "get")
            }
            ListCertificates | ListCertificateVersions(_) | GetDeletedCertificate(_) => {
                (Certificate, "list")
            }
            DeleteCertificate(_) => (Certificate, "delete"),
            PurgeCertificate(_) => (Certificate, "purge"),
            CreateKey(_) => (Key, "create"),
            ImportKey(_) => (Key, "import"),
            GetKey(..) => (Key, "get"),
            ListKeys | ListKeyVersions(_) => (Key, "list"),
        }
    }
}

/// Per-request facts the handlers need.
pub struct Ctx {
    /// `https://<Host header>`: ids are built from it, as Key Vault does.
    pub base: String,
    pub vault: String,
    pub api_version: String,
    pub query: HashMap<String, String>,
}

/// Accepted api-versions: `7.0`-`7.6`, dated versions `YYYY-MM-DD` from `2016-10-01` on, and
/// their previews spelled as Key Vault spells them: `-preview` or `-preview.N` (7.x) and
/// `-preview` (dated). Any other suffix is refused.
pub fn api_version_ok(v: &str) -> bool {
    let (core, preview) = match v.split_once("-preview") {
        None => (v, None),
        Some((core, rest)) => (core, Some(rest)),
    };
    if let Some(minor) = core.strip_prefix("7.") {
        let preview_ok = match preview {
            None | Some("") => true,
            Some(rest) => rest.strip_prefix('.').is_some_and(|n| {
                (1..=2).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_digit())
            }),
        };
        return preview_ok && matches!(minor, "0" | "1" | "2" | "3" | "4" | "5" | "6");
    }
    let parts: Vec<&str> = core.split('-').collect();
    let date_ok = parts.len() == 3
        && parts[0].len() == 4
        && parts[1].len() == 2
        && parts[2].len() == 2
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit()))
        && ("01"..="12").contains(&parts[1])
        && ("01"..="31").contains(&parts[2])
        && core >= "2016-10-01";
    date_ok && matches!(preview, None | Some(""))
}

pub use model::valid_vault_name;

/// A syntactically valid `Host` header: a DNS name (letters, digits, hyphens, dots; at most 253
/// characters), an IPv4 literal or a bracketed IPv6 literal, with an optional port. Ids,
/// `nextLink` and vault names are built from it, so nothing else is let through.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            a => ("", a.strip_prefix(':').unwrap_or("x")),
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (n, p),
            None => (host, ""),
        }
    };
    let port_ok = port.is_empty()
        || (port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u16>().is_ok());
    if !port_ok {
        return false;
    }
    if name.is_empty() {
        return host.starts_with('[');
    }
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn host_of(headers: &HeaderMap, app: &App) -> String {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| format!("localhost:{}", app.port))
}

/// The host without its port (IPv6 literals keep their brackets).
fn hostname(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// `NAME.anything` -> vault `NAME`; `localhost` and IP literals -> the default vault.
pub fn vault_for_host(host: &str, default: &str) -> String {
    let name = hostname(host);
    if name.parse::<std::net::IpAddr>().is_ok() || name.starts_with('[') || !name.contains('.') {
        return default.to_string();
    }
    name.split('.')
        .next()
        .unwrap_or(default)
        .to_ascii_lowercase()
}

fn challenge_resource(app: &App, host: &str) -> String {
    if let Some(r) = &app.resource_override {
        return r.clone();
    }
    let name = hostname(host).to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        format!("https://localhost:{}", app.port)
    } else {
        "https://vault.azure.net".to_string()
    }
}

fn unauthorized(app: &App, host: &str, message: String) -> KvError {
    let challenge = format!(
        "Bearer authorization=\"{}/{}\", resource=\"{}\"",
        app.authority(),
        app.tenant(),
        challenge_resource(app, host)
    );
    KvError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
        .with_header("www-authenticate", challenge)
}

/// The token audiences this dev vault accepts: the resources it advertises (`--resource`, or
/// `https://localhost:PORT`) and the public, China and US Gov Key Vault resources. Never
/// anything derived from the request's Host header.
pub fn accepted_audiences(app: &App) -> Vec<String> {
    let mut accepted = vec![
        "https://vault.azure.net".to_string(),
        "https://vault.azure.cn".to_string(),
        "https://vault.usgovcloudapi.net".to_string(),
        format!("https://localhost:{}", app.port),
    ];
    if let Some(r) = &app.resource_override {
        accepted.push(r.clone());
    }
    accepted
}

fn authenticate(app: &App, headers: &HeaderMap, host: &str) -> Result<Claims, KvError> {
    let auth = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let Some(token) = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
    else {
        return Err(unauthorized(
            app,
            host,
            "AKV10000: Request is missing a Bearer or PoP token.".into(),
        ));
    };
    let claims = app
        .signer
        .verify(token.trim(), crate::clock::now())
        .map_err(|e| {
            let msg = match e {
                TokenError::Expired => "AKV10022: Invalid audience or token: Token is expired.",
                TokenError::NotYetValid => "AKV10022: Token is not yet valid.",
                TokenError::Signature => "AKV10032: Invalid issuer or signature: the token was not issued by this dev vault.",
                _ => "AKV10000: Request is missing a valid Bearer token.",
            };
            unauthorized(app, host, msg.to_string())
        })?;
    let accepted = accepted_audiences(app);
    if !audience_matches(&claims.aud, &accepted) {
        return Err(unauthorized(
            app,
            host,
            format!(
                "AKV10022: Invalid audience. Expected one of {accepted:?}, found: {}.",
                claims.aud
            ),
        ));
    }
    if claims.tid != app.tenant() {
        return Err(unauthorized(
            app,
            host,
            "AKV10032: Invalid issuer: the token's tenant is not this vault's tenant.".into(),
        ));
    }
    Ok(claims)
}

fn authorize(app: &App, vault: &str, op: &Op, claims: &Claims) -> Result<(), KvError> {
    let (kind, perm) = op.permission();
    let allowed = app.with_state(|s| {
        let Some(policies) = s.vaults.get(vault).and_then(|v| v.access_policies.as_ref()) else {
            return true;
        };
        policies
            .iter()
            .filter(|p| p.identity == claims.appid || p.identity == claims.oid)
            .any(|p| {
                let perms = match kind {
                    ObjectKind::Secret => &p.secrets,
                    ObjectKind::Key => &p.keys,
                    ObjectKind::Certificate => &p.certificates,
                };
                perms
                    .iter()
                    .any(|x| x.eq_ignore_ascii_case(perm) || x.eq_ignore_ascii_case("all"))
            })
    });
    if allowed {
        Ok(())
    } else {
        Err(KvError::forbidden(format!(
            "The user, group or application 'appid={};oid={}' does not have {}s {perm} permission on key vault '{vault};location=dev-vault'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
            claims.appid,
            claims.oid,
            kind.noun()
        ))
        .with_inner("AccessDenied"))
    }
}

/// Largest request body the data plane reads (a PFX import is a few KB; a secret at most 25 KB).
pub const MAX_REQUEST_BODY: usize = 1 << 20;

/// The fallback handler: every data-plane request lands here.
pub async fn data_plane(
    AxState(app): AxState<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            let e = if status == StatusCode::PAYLOAD_TOO_LARGE {
                KvError::new(
                    status,
                    "RequestBodyTooLarge",
                    format!("The request body is larger than the dev vault accepts ({MAX_REQUEST_BODY} bytes)."),
                )
            } else {
                KvError::new(
                    status,
                    "BadParameter",
                    "The request body could not be read.",
                )
            };
            return with_service_headers(e.into_response());
        }
    };
    let resp = match handle(&app, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(%method, path = uri.path(), code = e.code, "request failed");
            } else {
                tracing::debug!(%method, path = uri.path(), status = e.status.as_u16(), code = e.code, "request refused");
            }
            e.into_response()
        }
    };
    with_service_headers(resp)
}

fn with_service_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        "x-ms-keyvault-service-version",
        axum::http::HeaderValue::from_static("1.9.0.0"),
    );
    h.insert(
        "x-ms-keyvault-region",
        axum::http::HeaderValue::from_static("dev-vault"),
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&crate::ids::new_version()) {
        h.insert("x-ms-request-id", v);
    }
    resp
}

async fn handle(
    app: &Arc<App>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, KvError> {
    let host = host_of(headers, app);
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let Some(op) = Op::parse(method, uri.path()) else {
        return Err(KvError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("The dev vault has no operation {method} {}.", uri.path()),
        ));
    };
    let api_version = query.get("api-version").cloned().unwrap_or_default();
    if api_version.is_empty() {
        return Err(KvError::bad_parameter(
            "The api-version query parameter is required (e.g. api-version=7.4).",
        ));
    }
    if !api_version_ok(&api_version) {
        return Err(KvError::bad_parameter(format!(
            "The specified version ({api_version}) is not recognized. Consider using the latest supported version (7.6 or 2026-04-01)."
        )));
    }
    if let Some(d) = app.faults.latency(true) {
        tokio::time::sleep(d).await;
    }
    if !valid_host(&host) {
        return Err(KvError::bad_parameter(
            "The Host header is not a valid host name (letters, digits, '-' and '.', optionally :PORT).",
        ));
    }
    let default_vault = app.with_state(|s| s.default_vault());
    let vault = vault_for_host(&host, &default_vault);
    if !valid_vault_name(&vault) {
        return Err(KvError::bad_parameter(format!(
            "'{vault}' is not a valid vault name: vault names are 3-24 characters of letters, digits and '-', start with a letter, end with a letter or digit and have no consecutive hyphens."
        )));
    }
    let injected = app.faults.random_fault(true);
    if injected.is_some() {
        // A throttled or failed call is still a call the client made.
        app.counters.add(op.name(), &vault, op.object());
    }
    match injected {
        Some(Injected::Throttle { retry_after_secs }) => {
            return Err(throttled(retry_after_secs));
        }
        Some(Injected::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Err(KvError::new(
                status,
                if code == 503 {
                    "ServiceUnavailable"
                } else {
                    "InternalServerError"
                },
                "The service is temporarily unavailable (dev vault fault injection).",
            ));
        }
        None => {}
    }
    let claims = match authenticate(app, headers, &host) {
        Ok(c) => c,
        Err(e) => {
            app.counters.add("Challenge", &vault, op.object());
            return Err(e);
        }
    };
    app.counters.add(op.name(), &vault, op.object());
    if let Some(retry_after) = app.faults.vault_throttled(&vault) {
        app.counters.add(THROTTLED, &vault, op.object());
        return Err(throttled(retry_after));
    }
    if let Some(retry_after) = app.faults.over_budget(&claims.appid) {
        return Err(throttled(retry_after));
    }
    authorize(app, &vault, &op, &claims)?;
    let ctx = Ctx {
        base: format!("https://{host}"),
        vault,
        api_version,
        query,
    };
    let body: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            KvError::bad_parameter(format!("The request body is not valid JSON: {e}"))
        })?
    };
    use Op::*;
    // Operations that make a new version: announced to Event Grid subscriptions on success.
    let new_version = match &op {
        SetSecret(n) => Some((ObjectKind::Secret, n.clone())),
        ImportCertificate(n) | CreateCertificate(n) => Some((ObjectKind::Certificate, n.clone())),
        CreateKey(n) | ImportKey(n) => Some((ObjectKind::Key, n.clone())),
        _ => None,
    };
    let resp = dispatch(app, &ctx, op, body).await;
    if let (Ok(r), Some((kind, name))) = (&resp, new_version) {
        if r.status().is_success() {
            announce(app, &ctx, kind, &name);
        }
    }
    resp
}

/// Tells the Event Grid subscriptions that `name` has a new (latest) version.
fn announce(app: &App, ctx: &Ctx, kind: ObjectKind, name: &str) {
    let version = app.with_state(|s| {
        let v = s.vaults.get(&ctx.vault)?;
        match kind {
            ObjectKind::Secret => v.secrets.get(name)?.latest().map(|x| x.version.clone()),
            ObjectKind::Certificate => v
                .certificates
                .get(name)?
                .latest()
                .map(|x| x.version.clone()),
            ObjectKind::Key => v.keys.get(name)?.latest().map(|x| x.version.clone()),
        }
    });
    if let Some(version) = version {
        app.event_grid
            .changed(&ctx.vault, kind, name, &version, &ctx.base);
    }
}

async fn dispatch(
    app: &Arc<App>,
    ctx: &Ctx,
    op: Op,
    body: serde_json::Value,
) -> Result<Response, KvError> {
    use Op::*;
    match op {
        SetSecret(n) => secrets::set(app, ctx, &n, body).await,
        GetSecret(n, v) => secrets::get(app, ctx, &n, v.as_deref()),
        ListSecrets => secrets::list(app, ctx),
        ListSecretVersions(n) => secrets::list_versions(app, ctx, &n),
        UpdateSecret(n, v) => secrets::update(app, ctx, &n, v.as_deref(), body).await,
        DeleteSecret(n) => secrets::delete(app, ctx, &n).await,
        GetDeletedSecret(n) => secrets::get_deleted(app, ctx, &n),
        ListDeletedSecrets => secrets::list_deleted(app, ctx),
        RecoverSecret(n) => secrets::recover(app, ctx, &n).await,
        PurgeSecret(n) => secrets::purge(app, ctx, &n).await,
        ImportCertificate(n) => certificates::import(app, ctx, &n, body).await,
        CreateCertificate(n) => certificates::create(app, ctx, &n, body).await,
        GetCertificateOperation(n) => certificates::operation(app, ctx, &n),
        GetCertificate(n, v) => certificates::get(app, ctx, &n, v.as_deref()),
        GetCertificatePolicy(n) => certificates::policy(app, ctx, &n),
        ListCertificates => certificates::list(app, ctx),
        ListCertificateVersions(n) => certificates::list_versions(app, ctx, &n),
        DeleteCertificate(n) => certificates::delete(app, ctx, &n).await,
        GetDeletedCertificate(n) => certificates::get_deleted(app, ctx, &n),
        PurgeCertificate(n) => certificates::purge(app, ctx, &n).await,
        CreateKey(n) => keys::create(app, ctx, &n, body).await,
        ImportKey(n) => keys::import(app, ctx, &n, body).await,
        GetKey(n, v) => keys::get(app, ctx, &n, v.as_deref()),
        ListKeys => keys::list(app, ctx),
        ListKeyVersions(n) => keys::list_versions(app, ctx, &n),
    }
}

/// Counter operation of the requests refused by the per-vault limit (`vault_limit`).
pub const THROTTLED: &str = "Throttled";

fn throttled(retry_after_secs: u64) -> KvError {
    KvError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "Throttled",
        "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
    )
    .with_header("retry-after", retry_after_secs.to_string())
}

pub(crate) fn ok_json(value: serde_json::Value) -> Result<Response, KvError> {
    Ok((StatusCode::OK, axum::Json(value)).into_response())
}

pub(crate) fn check_name(kind: ObjectKind, name: &str) -> Result<(), KvError> {
    if model::valid_object_name(name) {
        Ok(())
    } else {
        Err(KvError::bad_parameter(format!(
            "The request URI contains an invalid {} name '{name}': names are 1-127 characters of 0-9, a-z, A-Z and -.",
            kind.noun()
        )))
    }
}

/// Lists the current version of every object of one family (`collection` is the URL segment).
pub(crate) fn list_latest<T: Versioned>(
    app: &App,
    ctx: &Ctx,
    collection: &str,
    family: impl Fn(&Vault) -> &BTreeMap<String, Versions<T>>,
    item: impl Fn(&Ctx, &str, &T, bool) -> serde_json::Value,
) -> Result<Response, KvError> {
    let items = app.with_state(|s| {
        s.vaults
            .get(&ctx.vault)
            .map(|v| {
                family(v)
                    .iter()
                    .filter_map(|(n, vs)| vs.latest().map(|l| item(ctx, n, l, false)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    });
    ok_json(json::page(ctx, &format!("/{collection}"), items)?)
}

/// Lists every version of one object.
pub(crate) fn list_all_versions<T: Versioned>(
    app: &App,
    ctx: &Ctx,
    kind: ObjectKind,
    name: &str,
    family: impl Fn(&Vault) -> &BTreeMap<String, Versions<T>>,
    item: impl Fn(&Ctx, &str, &T, bool) -> serde_json::Value,
) -> Result<Response, KvError> {
    let items = app.with_state(|s| {
        let vs = s
            .vaults
            .get(&ctx.vault)
            .and_then(|v| family(v).get(name))
            .ok_or_else(|| KvError::not_found(kind, name))?;
        Ok::<_, KvError>(
            vs.versions
                .iter()
                .map(|v| item(ctx, name, v, true))
                .collect::<Vec<_>>(),
        )
    })?;
    let collection = match kind {
        ObjectKind::Secret => "secrets",
        ObjectKind::Key => "keys",
        ObjectKind::Certificate => "certificates",
    };
    ok_json(json::page(
        ctx,
        &format!("/{collection}/{name}/versions"),
        items,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let get = Method::GET;
        assert_eq!(
            Op::parse(&get, "/secrets/a/"),
            Some(Op::GetSecret("a".into(), None))
        );
        assert_eq!(
            Op::parse(&get, "/secrets/a"),
            Some(Op::GetSecret("a".into(), None))
        );
        assert_eq!(
            Op::parse(&get, "/secrets/a/0123"),
            Some(Op::GetSecret("a".into(), Some("0123".into())))
        );
        assert_eq!(
            Op::parse(&get, "/secrets/a/versions"),
            Some(Op::ListSecretVersions("a".into()))
        );
        assert_eq!(Op::parse(&get, "/secrets"), Some(Op::ListSecrets));
        assert_eq!(
            Op::parse(&Method::POST, "/keys/k/create"),
            Some(Op::CreateKey("k".into()))
        );
        assert_eq!(Op::parse(&get, "/nope"), None);
    }

    #[test]
    fn api_versions() {
        for ok in [
            "7.0",
            "7.4",
            "7.6",
            "7.6-preview.2",
            "2016-10-01",
            "2025-07-01",
            "2026-04-01",
            "2026-04-01-preview",
        ] {
            assert!(api_version_ok(ok), "{ok}");
        }
        for bad in [
            "",
            "7.9",
            "8.0",
            "latest",
            "2015-06-01",
            "2025-7-1",
            "7.4-previewXYZ",
            "7.6-preview.2.evil",
            "7.6-preview.x",
            "7.6-preview.",
            "2026-04-01-preview.1",
            "2026-04-01-previewfoo",
            "2026-13-01",
            "7.4-preview-preview",
        ] {
            assert!(!api_version_ok(bad), "{bad}");
        }
    }

    #[test]
    fn vault_from_host() {
        assert_eq!(vault_for_host("myvault.localhost:8443", "dev"), "myvault");
        assert_eq!(vault_for_host("localhost:8443", "dev"), "dev");
        assert_eq!(vault_for_host("127.0.0.1:8443", "dev"), "dev");
        assert_eq!(vault_for_host("[::1]:8443", "dev"), "dev");
        assert_eq!(vault_for_host("Prod.vault.azure.net", "dev"), "prod");
    }
}
