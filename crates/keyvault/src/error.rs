//! One error type for the client and the credentials. Every variant carries enough context to
//! act on (vault, object kind/name/version, HTTP status, Azure/AAD error code and message) and
//! never a secret value or a token: server-provided messages are passed through [`sanitize`].

use std::fmt;
use std::time::Duration;

use crate::ObjectKind;

/// What a failed call was about: "secret 'db' (latest) in `https://v.vault.azure.net`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub vault: String,
    pub kind: Option<ObjectKind>,
    pub name: Option<String>,
    pub version: Option<String>,
    /// Free-form operation when it is not an object read ("list versions", "token request of ...").
    pub operation: Option<String>,
}

impl Target {
    pub(crate) fn object(vault: &str, kind: ObjectKind, name: &str, version: Option<&str>) -> Self {
        Self {
            vault: vault.to_string(),
            kind: Some(kind),
            name: Some(name.to_string()),
            version: version.map(str::to_string),
            operation: None,
        }
    }

    pub(crate) fn op(endpoint: &str, operation: impl Into<String>) -> Self {
        Self {
            vault: endpoint.to_string(),
            kind: None,
            name: None,
            version: None,
            operation: Some(operation.into()),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(op) = &self.operation {
            write!(f, "{op} ")?;
        }
        if let (Some(kind), Some(name)) = (self.kind, &self.name) {
            let v = match self.version.as_deref() {
                None | Some("") | Some("latest") => "latest".to_string(),
                Some(v) => format!("version {v}"),
            };
            write!(f, "{kind} '{name}' ({v}) in ")?;
        } else if self.operation.is_some() {
            write!(f, "at ")?;
        }
        write!(f, "{}", self.vault)
    }
}

/// The error returned by every call of this crate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// 404: the object, version or vault path does not exist.
    #[error("{target}: not found (HTTP {status} {code}: {message})")]
    NotFound {
        target: Box<Target>,
        status: u16,
        code: String,
        message: String,
    },
    /// 403: the identity lacks permission, or the version is disabled.
    #[error("{target}: forbidden (HTTP {status} {code}: {message})")]
    Forbidden {
        target: Box<Target>,
        status: u16,
        code: String,
        message: String,
    },
    /// 401 after one token refresh.
    #[error("{target}: unauthorized after token refresh (HTTP {status} {code}: {message})")]
    Unauthorized {
        target: Box<Target>,
        status: u16,
        code: String,
        message: String,
    },
    /// 429 (or a retryable 5xx) still returned when retries or the deadline ran out.
    #[error("{target}: throttled, gave up after {attempts} attempt(s){} (HTTP {status} {code}: {message})", fmt_retry_after(.retry_after))]
    Throttled {
        target: Box<Target>,
        status: u16,
        code: String,
        message: String,
        attempts: u32,
        retry_after: Option<Duration>,
    },
    /// Any other HTTP failure (400 BadParameter, 409, 5xx after retries, ...).
    #[error("{target}: HTTP {status} {code}: {message}{}", fmt_attempts(*.attempts))]
    Http {
        target: Box<Target>,
        status: u16,
        code: String,
        message: String,
        attempts: u32,
    },
    /// The identity provider (Entra ID, IMDS) refused to issue a token.
    #[error("{credential}: token request failed (HTTP {status} {code}): {message}")]
    Auth {
        credential: String,
        status: u16,
        /// AADSTS code when present ("AADSTS7000215"), else the OAuth `error` ("invalid_client").
        code: String,
        message: String,
    },
    /// The credential cannot be used here (not configured, file missing, chain exhausted).
    #[error("{credential}: unavailable: {reason}")]
    CredentialUnavailable { credential: String, reason: String },
    /// The overall deadline passed (including retries and rate-limit waits).
    #[error("{target}: deadline of {deadline:?} exceeded after {attempts} attempt(s); last error: {last}")]
    Timeout {
        target: Box<Target>,
        deadline: Duration,
        attempts: u32,
        last: String,
    },
    /// Connection, TLS or I/O failure after retries.
    #[error("{target}: transport error after {attempts} attempt(s): {detail}")]
    Transport {
        target: Box<Target>,
        attempts: u32,
        detail: String,
    },
    /// The server answered something this client cannot understand.
    #[error("{target}: bad response: {detail}")]
    BadResponse { target: Box<Target>, detail: String },
    /// Bad input: a vault URL, an object name, a cloud name, a credential file.
    #[error("invalid configuration: {0}")]
    Config(String),
}

fn fmt_retry_after(d: &Option<Duration>) -> String {
    d.map(|d| format!(", last Retry-After {:.1}s", d.as_secs_f64()))
        .unwrap_or_default()
}

fn fmt_attempts(n: u32) -> String {
    if n > 1 {
        format!(" (after {n} attempts)")
    } else {
        String::new()
    }
}

impl Error {
    /// The HTTP status the error came from, when it came from one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::NotFound { status, .. }
            | Error::Forbidden { status, .. }
            | Error::Unauthorized { status, .. }
            | Error::Throttled { status, .. }
            | Error::Http { status, .. }
            | Error::Auth { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The Azure error code (`SecretNotFound`, `Forbidden`, `AADSTS7000215`, ...), when known.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::NotFound { code, .. }
            | Error::Forbidden { code, .. }
            | Error::Unauthorized { code, .. }
            | Error::Throttled { code, .. }
            | Error::Http { code, .. }
            | Error::Auth { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for errors a caller may retry later (throttling, timeouts, transport, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Throttled { .. } | Error::Timeout { .. } | Error::Transport { .. } => true,
            Error::Http { status, .. } => *status >= 500 || *status == 408,
            Error::Auth { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Makes a server- or library-provided message safe to show: removes every `redact` string,
/// anything that looks like a JWT, keeps only the first line, and bounds the length.
pub(crate) fn sanitize(message: &str, redact: &[&str]) -> String {
    let first = message
        .split(['\r', '\n'])
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let mut s = first.to_string();
    for r in redact {
        if r.len() >= 4 && s.contains(r) {
            s = s.replace(r, "<redacted>");
        }
    }
    s = redact_jwts(&s);
    if s.chars().count() > 400 {
        s = s.chars().take(400).collect::<String>() + "...";
    }
    s
}

/// Replaces `eyJ...` tokens with at least two dots (JWT/JWS compact form) by `<redacted-jwt>`.
fn redact_jwts(s: &str) -> String {
    let is_tok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("eyJ") {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let end = tail.find(|c| !is_tok(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        if word.matches('.').count() >= 2 {
            out.push_str("<redacted-jwt>");
        } else {
            out.push_str(word);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_redacts_and_bounds() {
        let m =
            "AADSTS7000215: bad secret hunter22 eyJhbGciOi.eyJzdWIi.c2ln trailing\r\nTrace ID: x";
        let s = sanitize(m, &["hunter22"]);
        assert_eq!(
            s,
            "AADSTS7000215: bad secret <redacted> <redacted-jwt> trailing"
        );
        assert!(sanitize(&"a".repeat(1000), &[]).len() < 410);
        assert_eq!(sanitize("eyJnot-a-token here", &[]), "eyJnot-a-token here");
    }

    #[test]
    fn target_display() {
        let t = Target::object("https://v.vault.azure.net", ObjectKind::Secret, "db", None);
        assert_eq!(
            t.to_string(),
            "secret 'db' (latest) in https://v.vault.azure.net"
        );
        let t = Target::object("https://v", ObjectKind::Key, "k", Some("abc"));
        assert_eq!(t.to_string(), "key 'k' (version abc) in https://v");
    }
}
