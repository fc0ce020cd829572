//! Entra ID stand-in: OpenID configuration, JWKS, the v2 (and v1) token endpoint for client
//! secrets, certificate assertions and federated (workload identity) assertions, and an
//! IMDS-shaped managed identity endpoint.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine;
use serde_json::json;

use crate::error::AadError;
use crate::server::App;
use crate::state::Identity;
use crate::token::{normalize_resource, peek, Claims};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/{tenant}/discovery/keys", get(jwks))
        .route("/{tenant}/oauth2/v2.0/token", post(token_v2))
        .route("/{tenant}/oauth2/token", post(token_v1))
        .route("/metadata/identity/oauth2/token", get(imds_token))
        .route("/host/token", get(nmi_host_token))
        .route("/host/token/", get(nmi_host_token))
}

fn origin(headers: &HeaderMap, app: &App) -> String {
    match headers.get("host").and_then(|h| h.to_str().ok()) {
        Some(h) => format!("https://{h}"),
        None => app.authority(),
    }
}

fn check_tenant(app: &App, tenant: &str) -> Result<(), AadError> {
    let ours = app.tenant();
    if tenant.eq_ignore_ascii_case(&ours) || tenant == "organizations" {
        Ok(())
    } else {
        Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            format!("Tenant '{tenant}' not found. This dev vault serves tenant '{ours}'."),
        ))
    }
}

async fn openid_configuration(
    AxState(app): AxState<Arc<App>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(e) = check_tenant(&app, &tenant) {
        return e.into_response();
    }
    let base = format!("{}/{}", origin(&headers, &app), app.tenant());
    Json(json!({
        "issuer": format!("{base}/v2.0"),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid"],
        "request_uri_parameter_supported": false,
        "tenant_region_scope": null,
        "cloud_instance_name": "localhost",
    }))
    .into_response()
}

async fn jwks(AxState(app): AxState<Arc<App>>) -> impl IntoResponse {
    Json(app.signer.jwks())
}

async fn token_v2(
    AxState(app): AxState<Arc<App>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match body {
        Ok(body) => token(app, tenant, headers, body, false).await,
        Err(rejection) => body_rejected(rejection),
    }
}

async fn token_v1(
    AxState(app): AxState<Arc<App>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    match body {
        Ok(body) => token(app, tenant, headers, body, true).await,
        Err(rejection) => body_rejected(rejection),
    }
}

/// An unreadable or oversized token request body, answered in Entra ID's error shape.
fn body_rejected(rejection: axum::extract::rejection::BytesRejection) -> Response {
    let status = rejection.status();
    AadError::new(
        status,
        "invalid_request",
        900144,
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "The request body is larger than the dev vault accepts ({} bytes).",
                crate::api::MAX_REQUEST_BODY
            )
        } else {
            "The request body could not be read.".to_string()
        },
    )
    .into_response()
}

/// Applies fault injection when its scope includes the token endpoints.
async fn entra_faults(app: &App) -> Option<Response> {
    if let Some(d) = app.faults.latency(false) {
        tokio::time::sleep(d).await;
    }
    match app.faults.random_fault(false)? {
        crate::faults::Injected::Throttle { retry_after_secs } => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after_secs.to_string())],
                Json(json!({"error": "temporarily_unavailable", "error_description": "AADSTS50196: The server terminated an operation because it encountered a client request loop (fault injection)."})),
            )
                .into_response(),
        ),
        crate::faults::Injected::Status(code) => Some(
            (
                StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                Json(json!({"error": "temporarily_unavailable", "error_description": "AADSTS90033: A transient error has occurred (fault injection)."})),
            )
                .into_response(),
        ),
    }
}

async fn token(
    app: Arc<App>,
    tenant: String,
    headers: HeaderMap,
    body: axum::body::Bytes,
    v1: bool,
) -> Response {
    app.counters.add("Token", "", "");
    if let Some(r) = entra_faults(&app).await {
        return r;
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    match issue_for_client(&app, &tenant, &headers, &form, v1) {
        Ok(resp) => resp,
        Err(e) => {
            tracing::info!(tenant = %tenant, client_id = form.get("client_id").map(String::as_str).unwrap_or(""), error = e.error, code = e.code, "token request refused");
            e.into_response()
        }
    }
}

fn bad_request(code: u32, msg: impl Into<String>) -> AadError {
    AadError::new(StatusCode::BAD_REQUEST, "invalid_request", code, msg)
}

fn invalid_client(code: u32, msg: impl Into<String>) -> AadError {
    AadError::new(StatusCode::UNAUTHORIZED, "invalid_client", code, msg)
}

fn issue_for_client(
    app: &App,
    tenant: &str,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    v1: bool,
) -> Result<Response, AadError> {
    check_tenant(app, tenant)?;
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant != "client_credentials" {
        return Err(AadError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'. The dev vault supports client_credentials."),
        ));
    }
    let client_id = form
        .get("client_id")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            bad_request(
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            )
        })?;
    let resource = if v1 {
        form.get("resource").cloned()
    } else {
        form.get("scope")
            .and_then(|s| s.split_whitespace().find(|s| s.ends_with("/.default")))
            .map(|s| s.to_string())
    }
    .ok_or_else(|| {
        bad_request(
            if v1 { 50001 } else { 1002012 },
            if v1 {
                "The request body must contain the 'resource' parameter."
            } else {
                "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            },
        )
    })?;
    let identity = app
        .with_state(|s| s.identities.iter().find(|i| &i.client_id == client_id && !i.managed_identity).cloned())
        .ok_or_else(|| {
            AadError::new(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'. Register it in the dev vault seed file (identities)."),
            )
        })?;

    if let Some(secret) = form.get("client_secret") {
        match &identity.secret {
            Some(s) if constant_time_eq(s.as_bytes(), secret.as_bytes()) => {}
            _ => {
                return Err(invalid_client(
                    7000215,
                    format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
                ))
            }
        }
    } else if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str) != Some(JWT_BEARER) {
            return Err(bad_request(
                50027,
                format!("client_assertion_type must be '{JWT_BEARER}'."),
            ));
        }
        let token_url = format!("{}/{}/oauth2/v2.0/token", origin(headers, app), tenant);
        verify_assertion(&identity, assertion, &token_url)?;
    } else {
        return Err(invalid_client(
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    let token = mint(app, &identity, &resource)?;
    let lifetime = app.token_lifetime;
    let mut body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    });
    if v1 {
        let now = crate::clock::now();
        body["expires_in"] = json!(lifetime.to_string());
        body["expires_on"] = json!((now + lifetime).to_string());
        body["not_before"] = json!(now.to_string());
        body["resource"] = json!(resource);
    }
    Ok(Json(body).into_response())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare digests so the time taken does not depend on where the inputs differ.
    let da = ring::digest::digest(&ring::digest::SHA256, a);
    let db = ring::digest::digest(&ring::digest::SHA256, b);
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn mint(app: &App, identity: &Identity, resource: &str) -> Result<String, AadError> {
    let now = crate::clock::now();
    let tenant = app.tenant();
    let claims = Claims {
        aud: normalize_resource(resource),
        iss: format!("https://sts.windows.net/{tenant}/"),
        iat: now,
        nbf: now - 300,
        exp: now + app.token_lifetime,
        tid: tenant,
        appid: identity.client_id.clone(),
        oid: identity.object_id.clone(),
        sub: identity.object_id.clone(),
        idtyp: "app".into(),
        ver: "1.0".into(),
    };
    app.signer.sign(&claims).map_err(|_| {
        AadError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            50000,
            "token signing failed",
        )
    })
}

fn invalid_assertion(code: u32, msg: impl Into<String>) -> AadError {
    invalid_client(code, msg)
}

/// Verifies a client assertion: signed by a registered certificate (`iss == sub == client_id`)
/// or a federated token from a registered issuer (workload identity).
fn verify_assertion(identity: &Identity, assertion: &str, token_url: &str) -> Result<(), AadError> {
    let (header, claims, signing_input, sig) = peek(assertion).ok_or_else(|| {
        invalid_assertion(
            50027,
            "Invalid JWT token: the client_assertion is not a compact JWS.",
        )
    })?;
    let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
    let now = crate::clock::now();
    // MSAL sends float timestamps (time.time()).
    let exp = claims.get("exp").and_then(|v| v.as_f64()).unwrap_or(0.0) as i64;
    let nbf = claims.get("nbf").and_then(|v| v.as_f64()).unwrap_or(0.0) as i64;
    let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
    let sub = claims.get("sub").and_then(|v| v.as_str()).unwrap_or("");
    let auds: Vec<String> = match claims.get("aud") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    };
    let time_ok = |what: &str| -> Result<(), AadError> {
        if exp <= now - 300 {
            return Err(invalid_assertion(
                700024,
                format!("Client assertion is not within its valid time range: the {what} expired at {} (now {}).", crate::clock::rfc3339(exp), crate::clock::rfc3339(now)),
            ));
        }
        if nbf > now + 300 {
            return Err(invalid_assertion(700024, format!("Client assertion is not within its valid time range: the {what} is not valid before {}.", crate::clock::rfc3339(nbf))));
        }
        Ok(())
    };

    if iss == identity.client_id {
        // Certificate credential.
        if sub != identity.client_id {
            return Err(invalid_assertion(
                50027,
                "Invalid JWT token: sub must equal the client id.",
            ));
        }
        let token_path = token_url
            .split_once("://")
            .map(|(_, r)| r.split_once('/').map(|(_, p)| p).unwrap_or(""))
            .unwrap_or("");
        if !auds
            .iter()
            .any(|a| a.ends_with(token_path) && !token_path.is_empty())
        {
            return Err(invalid_assertion(
                700021,
                format!("Client assertion audience claim does not match the token endpoint {token_url}."),
            ));
        }
        time_ok("client assertion")?;
        let x5t = header
            .get("x5t")
            .and_then(|v| v.as_str())
            .and_then(|t| B64URL.decode(t).ok());
        let x5t256 = header
            .get("x5t#S256")
            .and_then(|v| v.as_str())
            .and_then(|t| B64URL.decode(t).ok());
        let mut matched_any = false;
        for cert_b64 in &identity.certificates {
            let Ok(der) = B64.decode(cert_b64) else {
                continue;
            };
            let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
            let sha256 = ring::digest::digest(&ring::digest::SHA256, &der);
            let thumb_ok = match (&x5t, &x5t256) {
                (_, Some(t)) => t.as_slice() == sha256.as_ref(),
                (Some(t), None) => t.as_slice() == sha1.as_ref(),
                (None, None) => true,
            };
            if !thumb_ok {
                continue;
            }
            matched_any = true;
            let Ok(info) = pki::cert_info(&der) else {
                continue;
            };
            if pki::jws_verify(alg, &info.spki_der, signing_input.as_bytes(), &sig).is_ok() {
                return Ok(());
            }
        }
        Err(invalid_assertion(
            if matched_any { 7000274 } else { 700027 },
            if matched_any {
                "Client assertion failed signature validation.".to_string()
            } else {
                format!("The certificate with identifier used to sign the client assertion is not registered on application '{}'.", identity.client_id)
            },
        ))
    } else {
        // Federated credential (workload identity).
        let fc = identity
            .federated
            .iter()
            .find(|f| f.issuer == iss && f.subject == sub)
            .ok_or_else(|| {
                invalid_assertion(
                    70021,
                    format!("No matching federated identity record found for presented assertion issuer '{iss}' and subject '{sub}' on application '{}'.", identity.client_id),
                )
            })?;
        if !auds.iter().any(|a| a == &fc.audience) {
            return Err(invalid_assertion(
                700212,
                format!("No matching federated identity record found for presented assertion audience {auds:?}; expected '{}'.", fc.audience),
            ));
        }
        time_ok("federated token")?;
        let spki = B64
            .decode(&fc.issuer_spki)
            .map_err(|_| invalid_assertion(50000, "registered issuer key is damaged"))?;
        pki::jws_verify(alg, &spki, signing_input.as_bytes(), &sig).map_err(|_| {
            invalid_assertion(
                700211,
                format!("The federated token from issuer '{iss}' failed signature validation."),
            )
        })
    }
}

/// AAD Pod Identity's NMI host token endpoint (what the Azure provider and the FlexVolume driver
/// call for `usePodIdentity`): `GET /host/token/?resource=R[&client_id=C]` with headers `podns`
/// and `podname`; answers `{"token": {...IMDS-shaped strings...}, "clientid": C}` for the first
/// seeded `podIdentities` binding of that pod (matching `client_id` when given). Errors are
/// plain text with NMI's statuses: 400 missing headers or resource, 404 no identity bound.
async fn nmi_host_token(
    AxState(app): AxState<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    app.counters.add("PodIdentityToken", "", "");
    if let Some(r) = entra_faults(&app).await {
        return r;
    }
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let (podns, podname) = (header("podns"), header("podname"));
    let text = |status: StatusCode, msg: String| {
        (
            status,
            [("content-type", "text/plain; charset=utf-8")],
            format!("{msg}\n"),
        )
            .into_response()
    };
    if podns.is_empty() || podname.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "missing 'podname' and 'podns' from request header".into(),
        );
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "parameter resource cannot be empty".into(),
        );
    };
    let wanted = q.get("client_id").filter(|c| !c.is_empty());
    let identity = app.with_state(|s| {
        s.pod_identities
            .iter()
            .filter(|p| p.namespace == podns && p.pod_name == podname)
            .filter(|p| wanted.is_none_or(|w| w.eq_ignore_ascii_case(&p.client_id)))
            .find_map(|p| s.identities.iter().find(|i| i.client_id == p.client_id))
            .cloned()
    });
    let Some(identity) = identity else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no AzureAssignedIdentity found for pod:{podns}/{podname} in assigned state (dev vault seed: podIdentities)"
            ),
        );
    };
    let token = match mint(&app, &identity, resource) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::FORBIDDEN, e.description),
    };
    let now = crate::clock::now();
    let lifetime = app.token_lifetime;
    Json(json!({
        "token": {
            "access_token": token,
            "refresh_token": "",
            "expires_in": lifetime.to_string(),
            "expires_on": (now + lifetime).to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        },
        "clientid": identity.client_id,
    }))
    .into_response()
}

async fn imds_token(
    AxState(app): AxState<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    app.counters.add("ManagedIdentityToken", "", "");
    if let Some(r) = entra_faults(&app).await {
        return r;
    }
    let imds_err = |status: StatusCode, error: &str, desc: String| {
        (
            status,
            Json(json!({"error": error, "error_description": desc})),
        )
            .into_response()
    };
    if headers
        .get("metadata")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("true"))
        != Some(true)
    {
        return imds_err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified".into(),
        );
    }
    let Some(resource) = q.get("resource").filter(|r| !r.is_empty()) else {
        return imds_err(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing".into(),
        );
    };
    let selector = [
        ("client_id", q.get("client_id")),
        ("object_id", q.get("object_id")),
        ("msi_res_id", q.get("msi_res_id")),
        ("mi_res_id", q.get("mi_res_id")),
    ]
    .into_iter()
    .find_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v.clone())));
    let identity = app.with_state(|s| {
        s.identities
            .iter()
            .filter(|i| i.managed_identity)
            .find(|i| match &selector {
                None => i.system_assigned,
                Some(("client_id", v)) => &i.client_id == v,
                Some(("object_id", v)) => &i.object_id == v,
                Some((_, v)) => i
                    .resource_id
                    .as_deref()
                    .map(|r| r.eq_ignore_ascii_case(v))
                    .unwrap_or(false),
            })
            .cloned()
    });
    let Some(identity) = identity else {
        let what = match &selector {
            None => "No system-assigned managed identity is registered".to_string(),
            Some((k, v)) => format!("No managed identity with {k} '{v}' is assigned to this host"),
        };
        return imds_err(StatusCode::BAD_REQUEST, "invalid_request", format!("Identity not found: {what} (dev vault seed: identities with managedIdentity: true)"));
    };
    let token = match mint(&app, &identity, resource) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let now = crate::clock::now();
    let lifetime = app.token_lifetime;
    Json(json!({
        "access_token": token,
        "client_id": identity.client_id,
        "expires_in": lifetime.to_string(),
        "expires_on": (now + lifetime).to_string(),
        "ext_expires_in": lifetime.to_string(),
        "not_before": now.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    }))
    .into_response()
}
