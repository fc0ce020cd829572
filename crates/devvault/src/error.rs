//! Key Vault-shaped errors: `{"error":{"code","message","innererror"?}}` with the status Azure uses.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered to a Key Vault data-plane client.
#[derive(Debug, Clone)]
pub struct KvError {
    pub status: StatusCode,
    pub code: &'static str,
    pub inner: Option<&'static str>,
    pub message: String,
    /// Extra response headers (Retry-After, WWW-Authenticate).
    pub headers: Vec<(&'static str, String)>,
}

impl KvError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            inner: None,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_inner(mut self, inner: &'static str) -> Self {
        self.inner = Some(inner);
        self
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    pub fn not_found(kind: ObjectKind, name: &str) -> Self {
        let (code, noun, cmd) = match kind {
            ObjectKind::Secret => ("SecretNotFound", "secret", "secret"),
            ObjectKind::Key => ("KeyNotFound", "key", "key"),
            ObjectKind::Certificate => ("CertificateNotFound", "certificate", "certificate"),
        };
        Self::new(
            StatusCode::NOT_FOUND,
            code,
            format!(
                "A {noun} with (name/id) {name} was not found in this key vault. If you recently deleted this {noun} you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182 (recover: {cmd})"
            ),
        )
    }

    pub fn version_not_found(kind: ObjectKind, name: &str, version: &str) -> Self {
        let mut e = Self::not_found(kind, &format!("{name}/{version}"));
        e.message = format!(
            "A {} with (name/id) {name}/{version} was not found in this key vault.",
            kind.noun()
        );
        e
    }

    pub fn deleted_not_found(kind: ObjectKind, name: &str) -> Self {
        let mut e = Self::not_found(kind, name);
        e.message = format!(
            "Deleted {} {name} was not found in this key vault.",
            kind.noun()
        );
        e
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            message,
        )
    }
}

pub use model::ObjectKind;

impl IntoResponse for KvError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(inner) = self.inner {
            error["innererror"] = json!({"code": inner});
        }
        let mut resp = (self.status, axum::Json(json!({ "error": error }))).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

/// Entra ID (AAD) shaped error for the token endpoints.
#[derive(Debug, Clone)]
pub struct AadError {
    pub status: StatusCode,
    pub error: &'static str,
    pub code: u32,
    pub description: String,
}

impl AadError {
    pub fn new(
        status: StatusCode,
        error: &'static str,
        code: u32,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            code,
            description: description.into(),
        }
    }
}

impl IntoResponse for AadError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.error,
            "error_description": format!("AADSTS{}: {}", self.code, self.description),
            "error_codes": [self.code],
            "timestamp": crate::clock::rfc3339(crate::clock::now()),
            "trace_id": crate::ids::new_version(),
            "correlation_id": crate::ids::new_version(),
        });
        (self.status, axum::Json(body)).into_response()
    }
}
