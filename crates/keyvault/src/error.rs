//! One error type for the client and the credentials. Every variant carries enough context to
//! act on (vault, object kind/name/version, HTTP status, Azure/AAD error code and message) and
//! never a secret value or a token: server-provided messages are passed through [`sanitize`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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

/// A shareable I/O error ([`Error`] is `Clone`: coalesced failures are handed to every waiter).
pub type IoSource = Arc<std::io::Error>;
/// A shareable HTTP client error (its URL is stripped: the chain never names query strings).
pub type HttpSource = Arc<reqwest::Error>;
/// A shareable certificate/key error.
pub type PkiSource = Arc<pki::PkiError>;

/// The error returned by every call of this crate.
///
/// `Display` of a variant never repeats the message of its [`std::error::Error::source`]: print
/// the whole chain (anyhow's `{:#}`, or [`ErrorChain`]) to see every cause once. Map errors to
/// gRPC codes and metric labels with [`Error::kind`].
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
    /// 429 still returned when retries or the deadline ran out, or a `Retry-After` that asks for
    /// a longer wait than the deadline leaves (`beyond_deadline` = the time that was left).
    #[error("{target}: throttled ({}) (HTTP {status} {code}: {message})", fmt_throttled(*.attempts, .retry_after, .beyond_deadline))]
    Throttled {
        target: Box<Target>,
        status: u16,
        code: String,
        message: String,
        attempts: u32,
        retry_after: Option<Duration>,
        beyond_deadline: Option<Duration>,
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
    /// The identity provider (Entra ID, IMDS, NMI) refused to issue a token.
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
    CredentialUnavailable {
        credential: String,
        reason: String,
        #[source]
        source: Option<IoSource>,
    },
    /// The overall deadline passed (including retries and rate-limit waits).
    #[error("{target}: deadline of {deadline:?} exceeded after {attempts} attempt(s){}", fmt_last(.last))]
    Timeout {
        target: Box<Target>,
        deadline: Duration,
        attempts: u32,
        /// Why the last attempt failed, when it was not an HTTP client error (see `source`).
        last: Option<String>,
        #[source]
        source: Option<HttpSource>,
    },
    /// Connection, TLS or I/O failure after retries.
    #[error("{target}: transport error after {attempts} attempt(s){}", fmt_last(.last))]
    Transport {
        target: Box<Target>,
        attempts: u32,
        /// Why the last attempt failed, when it was not an HTTP client error (see `source`).
        last: Option<String>,
        #[source]
        source: Option<HttpSource>,
    },
    /// The response body is larger than this client accepts from that endpoint.
    #[error(
        "{target}: response body larger than {limit} bytes (HTTP {status}); refusing to read it"
    )]
    ResponseTooLarge {
        target: Box<Target>,
        status: u16,
        limit: usize,
    },
    /// The server answered something this client cannot understand.
    #[error("{target}: bad response: {detail}")]
    BadResponse { target: Box<Target>, detail: String },
    /// The vault's challenge names a resource (token audience) whose host is not the vault's
    /// host or a parent domain of it: a token for it could be replayed elsewhere.
    #[error("{target}: the vault's authentication challenge names resource '{resource}', which does not cover host '{host}'; refusing to send it a token (a kvbridge dev vault advertises a matching resource for the URLs it prints; for another host start it with `kvbridge dev-vault --resource https://<host>:<port>`)")]
    ChallengeResourceMismatch {
        target: Box<Target>,
        resource: String,
        host: String,
    },
    /// A vault URL that cannot be used.
    #[error("invalid vault URL '{url}': {reason}")]
    InvalidVaultUrl { url: String, reason: String },
    /// An object name, version or other request parameter that Key Vault would refuse.
    #[error("{target}: {reason}")]
    InvalidRequest { target: Box<Target>, reason: String },
    /// A file this crate was told to read (CA bundle, client certificate, azure.json, cloud
    /// environment file) cannot be read.
    #[error("cannot read {what} {}", .path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: IoSource,
    },
    /// A file was read but its content is unusable.
    #[error("{what} {}: {detail}", .path.display())]
    InvalidFile {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// Certificate or key material that cannot be used (a client certificate credential).
    #[error("{what}")]
    Pki {
        what: String,
        #[source]
        source: PkiSource,
    },
    /// The HTTP client could not be built (TLS roots, options).
    #[error("cannot build the HTTP client")]
    HttpClient {
        #[source]
        source: HttpSource,
    },
    /// Any other bad configuration value (option, cloud name, tenant, endpoint).
    #[error("invalid {option}: {reason}")]
    InvalidConfig { option: String, reason: String },
}

/// What kind of failure an [`Error`] is: the one place that decides gRPC codes, metric labels,
/// CLI exit wording and retry decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The object, version or vault does not exist.
    NotFound,
    /// The identity may not do this (or the version is disabled).
    Forbidden,
    /// No valid token: the credential failed, is unavailable, or the vault refused the token.
    Unauthenticated,
    /// Throttled by the vault or the identity provider.
    Throttled,
    /// The endpoint is unreachable or failing (transport errors, 5xx, 408).
    Unavailable,
    /// The overall deadline passed.
    DeadlineExceeded,
    /// The request itself is wrong (400, 409, invalid names or versions).
    InvalidRequest,
    /// The configuration is wrong (vault URL, files, options, challenge resource).
    InvalidConfig,
    /// The server answered something unusable (malformed or oversized).
    BadResponse,
}

impl ErrorKind {
    /// A fixed, low-cardinality label for metrics: `not_found`, `forbidden`, `unauthenticated`,
    /// `throttled`, `unavailable`, `deadline_exceeded`, `invalid_request`, `invalid_config`,
    /// `bad_response`.
    pub fn metric_label(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::BadResponse => "bad_response",
        }
    }

    /// True for kinds worth retrying later (throttling, outages, deadlines).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::DeadlineExceeded
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.metric_label())
    }
}

/// Displays an error and all its sources once each, joined by ": " (what anyhow's `{:#}` does),
/// for logs that only have a `&dyn Error`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(e) = src {
            write!(f, ": {e}")?;
            src = e.source();
        }
        Ok(())
    }
}

fn fmt_throttled(
    attempts: u32,
    retry_after: &Option<Duration>,
    beyond: &Option<Duration>,
) -> String {
    match (retry_after, beyond) {
        (Some(wait), Some(left)) => format!(
            "asked to wait {} s, more than the remaining deadline of {} s; gave up after {attempts} attempt(s)",
            fmt_secs(*wait),
            fmt_secs(*left)
        ),
        (Some(wait), None) => format!(
            "gave up after {attempts} attempt(s), last Retry-After {} s",
            fmt_secs(*wait)
        ),
        (None, _) => format!("gave up after {attempts} attempt(s)"),
    }
}

/// Seconds with one decimal below 100 s, whole seconds above (huge values stay readable).
fn fmt_secs(d: Duration) -> String {
    if d < Duration::from_secs(100) {
        format!("{:.1}", d.as_secs_f64())
    } else {
        d.as_secs().to_string()
    }
}

fn fmt_last(last: &Option<String>) -> String {
    last.as_ref()
        .map(|l| format!("; last error: {l}"))
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
            | Error::Auth { status, .. }
            | Error::ResponseTooLarge { status, .. } => Some(*status),
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

    /// What kind of failure this is (gRPC code, metric label, retry decision).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::Unauthorized { .. } | Error::CredentialUnavailable { .. } => {
                ErrorKind::Unauthenticated
            }
            Error::Auth { status, .. } => match status {
                429 => ErrorKind::Throttled,
                408 | 500.. => ErrorKind::Unavailable,
                _ => ErrorKind::Unauthenticated,
            },
            Error::Throttled { .. } => ErrorKind::Throttled,
            Error::Timeout { .. } => ErrorKind::DeadlineExceeded,
            Error::Transport { .. } => ErrorKind::Unavailable,
            Error::Http { status, .. } => match status {
                429 => ErrorKind::Throttled,
                408 | 500.. => ErrorKind::Unavailable,
                _ => ErrorKind::InvalidRequest,
            },
            Error::InvalidRequest { .. } => ErrorKind::InvalidRequest,
            Error::ResponseTooLarge { .. } | Error::BadResponse { .. } => ErrorKind::BadResponse,
            Error::ChallengeResourceMismatch { .. }
            | Error::InvalidVaultUrl { .. }
            | Error::ReadFile { .. }
            | Error::InvalidFile { .. }
            | Error::Pki { .. }
            | Error::HttpClient { .. }
            | Error::InvalidConfig { .. } => ErrorKind::InvalidConfig,
        }
    }

    /// True for errors a caller may retry later (throttling, timeouts, transport, 5xx).
    pub fn is_transient(&self) -> bool {
        self.kind().is_transient()
    }

    /// An [`Error::InvalidConfig`] (for callers that validate options of their own).
    pub fn invalid_config(option: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            option: option.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn read_file(what: &'static str, path: &Path, e: std::io::Error) -> Self {
        Error::ReadFile {
            what,
            path: path.to_path_buf(),
            source: Arc::new(e),
        }
    }

    pub(crate) fn invalid_file(what: &'static str, path: &Path, detail: impl Into<String>) -> Self {
        Error::InvalidFile {
            what,
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }

    pub(crate) fn http_source(e: reqwest::Error) -> HttpSource {
        Arc::new(e.without_url())
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
