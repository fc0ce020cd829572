//! Entra ID credentials: client secret, client certificate (PEM/PFX), workload identity
//! (federated token file or a handed-in token), managed identity (IMDS), environment
//! variables, AKS `azure.json`, and the default chain.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use reqwest::Method;
use serde_json::{json, Value};
use url::Url;
use zeroize::Zeroizing;

use crate::cloud::Cloud;
use crate::error::{sanitize, Error, Target};
use crate::transport::{random_hex, Request, Response, Transport};

/// A boxed, sendable future (the trait is object-safe without `async-trait`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An OAuth access token. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    pub token: Zeroizing<String>,
    pub expires_on: SystemTime,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// Something that can obtain access tokens.
pub trait TokenCredential: Send + Sync + fmt::Debug {
    /// A token for `scope` (e.g. `https://vault.azure.net/.default`). `tenant` is the tenant a
    /// Key Vault challenge named; credentials that are not tenant-bound ignore it.
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>>;

    /// Human description without secrets, e.g. "client secret credential for app X".
    fn describe(&self) -> String;

    /// The resource rejected `rejected_token` (obtained for scope, tenant): caches drop it
    /// unless they already hold a newer one.
    fn invalidate(&self, _scope: &str, _tenant: Option<&str>, _rejected_token: &str) {}

    /// True when this credential already caches tokens (see [`crate::TokenCache`]).
    fn is_cached(&self) -> bool {
        false
    }
}

impl<T: TokenCredential + ?Sized> TokenCredential for Arc<T> {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        (**self).get_token(scope, tenant)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn invalidate(&self, scope: &str, tenant: Option<&str>, rejected_token: &str) {
        (**self).invalidate(scope, tenant, rejected_token)
    }
    fn is_cached(&self) -> bool {
        (**self).is_cached()
    }
}

/// Shared knobs for credentials built from configuration (environment, azure.json, default chain).
#[derive(Debug, Clone)]
pub struct CredentialOptions {
    pub transport: Transport,
    /// IMDS endpoint override (default `http://169.254.169.254`).
    pub imds_endpoint: Option<String>,
    /// Cloud override (e.g. from a SecretProviderClass `cloudEnvFileName`): azure.json uses its
    /// authority instead of the file's `cloud`; the environment credential uses it when
    /// `AZURE_AUTHORITY_HOST` is unset.
    pub cloud: Option<Cloud>,
}

impl Default for CredentialOptions {
    fn default() -> Self {
        Self {
            transport: Transport::shared_default(),
            imds_endpoint: None,
            cloud: None,
        }
    }
}

impl CredentialOptions {
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            imds_endpoint: None,
            cloud: None,
        }
    }
}

pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// The tenant a request goes to: the challenge's tenant when one was given (the vault knows
/// which tenant it trusts), else the configured one.
fn pick_tenant(
    credential: &str,
    configured: &str,
    challenge: Option<&str>,
) -> Result<String, Error> {
    let chosen = match challenge.filter(|t| !t.is_empty()) {
        Some(t) => {
            if !configured.is_empty() && !configured.eq_ignore_ascii_case(t) {
                tracing::debug!(
                    credential,
                    configured,
                    challenge = t,
                    "using the tenant named by the vault challenge"
                );
            }
            t
        }
        None => configured,
    };
    if !valid_tenant(chosen) {
        return Err(Error::Config(format!(
            "{credential}: no usable tenant id (configured '{configured}', none from the vault challenge)"
        )));
    }
    Ok(chosen.to_string())
}

fn normalize_authority(host: &str) -> String {
    let h = host.trim();
    let h = if h.is_empty() { DEFAULT_AUTHORITY } else { h };
    let h = if h.contains("://") {
        h.to_string()
    } else {
        format!("https://{h}")
    };
    if h.ends_with('/') {
        h
    } else {
        format!("{h}/")
    }
}

pub(crate) fn token_endpoint(authority_host: &str, tenant: &str) -> Result<Url, Error> {
    Url::parse(authority_host)
        .and_then(|u| u.join(&format!("{tenant}/oauth2/v2.0/token")))
        .map_err(|e| Error::Config(format!("invalid authority host '{authority_host}': {e}")))
}

fn target_for(credential: &str, url: &Url) -> Target {
    let mut u = url.clone();
    u.set_query(None);
    Target::op(u.as_str(), format!("token request of {credential}"))
}

/// POSTs a token request form and parses the answer.
async fn request_token(
    transport: &Transport,
    credential: &str,
    url: Url,
    form: &[(&str, &str)],
    redact: &[&str],
) -> Result<AccessToken, Error> {
    let body = Zeroizing::new(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish(),
    );
    let target = target_for(credential, &url);
    let req = Request {
        method: Method::POST,
        url,
        headers: vec![("accept", "application/json".into())],
        bearer: None,
        form: Some(body),
    };
    tracing::debug!(credential, endpoint = %target.vault, "requesting token");
    let resp = transport.execute(&req, &target, None).await?;
    parse_token_response(credential, &target, &resp, redact)
}

fn num_or_string(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<f64>().ok().map(|f| f as i64),
        _ => None,
    }
}

/// Parses an Entra ID / IMDS token response or error.
pub(crate) fn parse_token_response(
    credential: &str,
    target: &Target,
    resp: &Response,
    redact: &[&str],
) -> Result<AccessToken, Error> {
    let v: Option<Value> = serde_json::from_slice(&resp.body).ok();
    if !(200..300).contains(&resp.status) {
        return Err(auth_error(credential, resp.status, v.as_ref(), redact));
    }
    let Some(v) = v else {
        return Err(Error::BadResponse {
            target: Box::new(target.clone()),
            detail: format!("HTTP {} with a body that is not JSON", resp.status),
        });
    };
    let Some(token) = v
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return Err(Error::BadResponse {
            target: Box::new(target.clone()),
            detail: "token response without access_token".into(),
        });
    };
    let now = now_secs();
    let expires_on = v
        .get("expires_on")
        .and_then(num_or_string)
        .filter(|e| *e > 1_000_000_000)
        .or_else(|| v.get("expires_in").and_then(num_or_string).map(|s| now + s))
        .unwrap_or_else(|| {
            tracing::debug!(
                credential,
                "token response without expiry; assuming one hour"
            );
            now + 3600
        });
    Ok(AccessToken {
        token: Zeroizing::new(token.to_string()),
        expires_on: UNIX_EPOCH + Duration::from_secs(expires_on.max(0) as u64),
    })
}

fn auth_error(credential: &str, status: u16, v: Option<&Value>, redact: &[&str]) -> Error {
    let get = |k: &str| {
        v.and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    let error = get("error");
    let desc = get("error_description");
    let aadsts = desc
        .strip_prefix("AADSTS")
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|d| !d.is_empty())
        .map(|d| format!("AADSTS{d}"))
        .or_else(|| {
            v.and_then(|v| v.get("error_codes"))
                .and_then(|c| c.get(0))
                .and_then(Value::as_u64)
                .map(|n| format!("AADSTS{n}"))
        });
    let code = aadsts.clone().unwrap_or_else(|| {
        if error.is_empty() {
            "unknown".to_string()
        } else {
            error.to_string()
        }
    });
    let mut message = sanitize(if desc.is_empty() { error } else { desc }, redact);
    if message.is_empty() {
        message = if v.is_some() {
            "no error description".into()
        } else {
            "error body is not JSON".into()
        };
    }
    if aadsts.is_some() && !error.is_empty() {
        message = format!("{error}: {message}");
    }
    Error::Auth {
        credential: credential.to_string(),
        status,
        code,
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// Client secret

/// Service principal with a client secret.
pub struct ClientSecretCredential {
    authority_host: String,
    tenant: String,
    client_id: String,
    secret: Zeroizing<String>,
    transport: Transport,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("authority_host", &self.authority_host)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClientSecretCredential {
    pub fn new(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        secret: impl Into<String>,
    ) -> Self {
        Self {
            authority_host: normalize_authority(authority_host),
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            secret: Zeroizing::new(secret.into()),
            transport: Transport::shared_default(),
        }
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }
}

impl TokenCredential for ClientSecretCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let d = self.describe();
            let tenant = pick_tenant(&d, &self.tenant, tenant)?;
            let url = token_endpoint(&self.authority_host, &tenant)?;
            request_token(
                &self.transport,
                &d,
                url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &self.client_id),
                    ("client_secret", &self.secret),
                    ("scope", scope),
                ],
                &[&self.secret],
            )
            .await
        })
    }

    fn describe(&self) -> String {
        format!("client secret credential for app {}", self.client_id)
    }
}

// ---------------------------------------------------------------------------------------------
// Client certificate

/// How client assertions are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAlgorithm {
    /// RS256 with `x5t` (SHA-1 thumbprint): accepted by Entra ID, ADFS and older stacks.
    #[default]
    Rs256,
    /// PS256 with `x5t#S256` (what current MSAL sends).
    Ps256,
}

/// Service principal with a certificate: signs a JWT client assertion.
pub struct ClientCertificateCredential {
    authority_host: String,
    tenant: String,
    client_id: String,
    key: pki::PrivateKey,
    leaf: Vec<u8>,
    chain: Vec<Vec<u8>>,
    algorithm: AssertionAlgorithm,
    send_x5c: bool,
    source: String,
    transport: Transport,
}

impl fmt::Debug for ClientCertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificateCredential")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("source", &self.source)
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientCertificateCredential {
    /// PEM file with the private key (PKCS#8/PKCS#1/SEC1) and the certificate (leaf first or any order).
    pub fn from_pem(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        path: &Path,
    ) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read client certificate {}: {e}",
                path.display()
            ))
        })?;
        let text = Zeroizing::new(text);
        let bundle = pki::parse_pem_bundle(&text)
            .map_err(|e| Error::Config(format!("client certificate {}: {e}", path.display())))?;
        Self::from_bundle(
            authority_host,
            tenant,
            client_id,
            bundle,
            &path.display().to_string(),
        )
    }

    /// PKCS#12 file (`password` may be empty).
    pub fn from_pfx(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        path: &Path,
        password: &str,
    ) -> Result<Self, Error> {
        let der = Zeroizing::new(std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "cannot read client certificate {}: {e}",
                path.display()
            ))
        })?);
        let bundle = pki::parse_pfx(&der, password)
            .map_err(|e| Error::Config(format!("client certificate {}: {e}", path.display())))?;
        Self::from_bundle(
            authority_host,
            tenant,
            client_id,
            bundle,
            &path.display().to_string(),
        )
    }

    /// PEM or PFX, decided by content (PEM when it contains `-----BEGIN`).
    pub fn from_file(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        path: &Path,
        password: Option<&str>,
    ) -> Result<Self, Error> {
        let head = std::fs::read(path).map_err(|e| {
            Error::Config(format!(
                "cannot read client certificate {}: {e}",
                path.display()
            ))
        })?;
        let head = Zeroizing::new(head);
        if head.windows(10).any(|w| w == b"-----BEGIN") {
            Self::from_pem(authority_host, tenant, client_id, path)
        } else {
            Self::from_pfx(
                authority_host,
                tenant,
                client_id,
                path,
                password.unwrap_or(""),
            )
        }
    }

    pub fn from_bundle(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        bundle: pki::CertBundle,
        source: &str,
    ) -> Result<Self, Error> {
        let key = bundle
            .key
            .ok_or_else(|| Error::Config(format!("client certificate {source}: no private key")))?;
        let spki = pki::spki_der(&key)
            .map_err(|e| Error::Config(format!("client certificate {source}: {e}")))?;
        let leaf_idx = bundle
            .certs
            .iter()
            .position(|c| {
                pki::cert_info(c)
                    .map(|i| i.spki_der == spki)
                    .unwrap_or(false)
            })
            .ok_or_else(|| {
                Error::Config(format!(
                    "client certificate {source}: no certificate matches the private key"
                ))
            })?;
        let leaf = bundle.certs[leaf_idx].clone();
        let chain = bundle.certs;
        Ok(Self {
            authority_host: normalize_authority(authority_host),
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            key,
            leaf,
            chain,
            algorithm: AssertionAlgorithm::default(),
            send_x5c: false,
            source: source.to_string(),
            transport: Transport::shared_default(),
        })
    }

    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Send the certificate chain in `x5c` (subject name + issuer authentication).
    pub fn with_x5c(mut self, send: bool) -> Self {
        self.send_x5c = send;
        self
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The signed client assertion for `audience` (the token endpoint).
    pub fn assertion(&self, audience: &str) -> Result<Zeroizing<String>, Error> {
        let info = pki::cert_info(&self.leaf)
            .map_err(|e| Error::Config(format!("client certificate {}: {e}", self.source)))?;
        let (alg, mut header) = match (self.key.kind(), self.algorithm) {
            (pki::KeyKind::Rsa { .. }, AssertionAlgorithm::Rs256) => (
                "RS256",
                json!({"alg": "RS256", "typ": "JWT", "x5t": B64URL.encode(info.sha1_thumbprint)}),
            ),
            (pki::KeyKind::Rsa { .. }, AssertionAlgorithm::Ps256) => (
                "PS256",
                json!({"alg": "PS256", "typ": "JWT", "x5t#S256": B64URL.encode(info.sha256_thumbprint)}),
            ),
            (pki::KeyKind::Ec(pki::Curve::P256), _) => (
                "ES256",
                json!({"alg": "ES256", "typ": "JWT", "x5t#S256": B64URL.encode(info.sha256_thumbprint)}),
            ),
            (pki::KeyKind::Ec(pki::Curve::P384), _) => (
                "ES384",
                json!({"alg": "ES384", "typ": "JWT", "x5t#S256": B64URL.encode(info.sha256_thumbprint)}),
            ),
            (kind, _) => {
                return Err(Error::Config(format!(
                    "client certificate {}: unsupported key type {kind:?}",
                    self.source
                )))
            }
        };
        if self.send_x5c {
            header["x5c"] = Value::Array(
                self.chain
                    .iter()
                    .map(|c| Value::String(B64.encode(c)))
                    .collect(),
            );
        }
        let now = now_secs();
        let claims = json!({
            "aud": audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": random_hex(16),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = pki::jws_sign(alg, &self.key, input.as_bytes()).map_err(|e| {
            Error::Config(format!(
                "client certificate {}: cannot sign assertion: {e}",
                self.source
            ))
        })?;
        Ok(Zeroizing::new(format!("{input}.{}", B64URL.encode(sig))))
    }
}

impl TokenCredential for ClientCertificateCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let d = self.describe();
            let tenant = pick_tenant(&d, &self.tenant, tenant)?;
            let url = token_endpoint(&self.authority_host, &tenant)?;
            let assertion = self.assertion(url.as_str())?;
            request_token(
                &self.transport,
                &d,
                url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &self.client_id),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                    ("scope", scope),
                ],
                &[&assertion],
            )
            .await
        })
    }

    fn describe(&self) -> String {
        format!(
            "client certificate credential for app {} (certificate {})",
            self.client_id, self.source
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Workload identity

enum AssertionSource {
    File {
        path: PathBuf,
        state: Mutex<Option<FileToken>>,
    },
    Token(Zeroizing<String>),
}

struct FileToken {
    token: Zeroizing<String>,
    modified: Option<SystemTime>,
    read_at: Instant,
}

/// How long a federated token read from a file is reused when its mtime does not change.
pub const TOKEN_FILE_REREAD: Duration = Duration::from_secs(300);

/// Workload identity federation: exchanges a Kubernetes service-account token (audience
/// `api://AzureADTokenExchange`) for an Entra token.
pub struct WorkloadIdentityCredential {
    authority_host: String,
    tenant: String,
    client_id: String,
    source: AssertionSource,
    transport: Transport,
}

impl fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let src = match &self.source {
            AssertionSource::File { path, .. } => format!("file {}", path.display()),
            AssertionSource::Token(_) => "handed-in token <redacted>".into(),
        };
        f.debug_struct("WorkloadIdentityCredential")
            .field("authority_host", &self.authority_host)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("source", &src)
            .finish()
    }
}

impl WorkloadIdentityCredential {
    /// Reads the federated token from `path` (re-read when the file changes, and at least every
    /// [`TOKEN_FILE_REREAD`]; kubelet rotates it).
    pub fn from_token_file(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        path: &Path,
    ) -> Self {
        Self {
            authority_host: normalize_authority(authority_host),
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            source: AssertionSource::File {
                path: path.to_path_buf(),
                state: Mutex::new(None),
            },
            transport: Transport::shared_default(),
        }
    }

    /// Uses a token handed in by the caller (the CSI driver's `serviceAccount.tokens`).
    pub fn from_token(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        token: impl Into<String>,
    ) -> Self {
        Self {
            authority_host: normalize_authority(authority_host),
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            source: AssertionSource::Token(Zeroizing::new(token.into())),
            transport: Transport::shared_default(),
        }
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    fn federated_token(&self) -> Result<Zeroizing<String>, Error> {
        match &self.source {
            AssertionSource::Token(t) => Ok(t.clone()),
            AssertionSource::File { path, state } => {
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(cached) = st.as_ref() {
                    if cached.modified == modified
                        && modified.is_some()
                        && cached.read_at.elapsed() < TOKEN_FILE_REREAD
                    {
                        return Ok(cached.token.clone());
                    }
                }
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    Error::CredentialUnavailable {
                        credential: self.describe(),
                        reason: format!("cannot read federated token file: {e}"),
                    }
                })?);
                let token = Zeroizing::new(text.trim().to_string());
                if token.is_empty() {
                    return Err(Error::CredentialUnavailable {
                        credential: self.describe(),
                        reason: "federated token file is empty".into(),
                    });
                }
                tracing::debug!(path = %path.display(), "read federated token file");
                *st = Some(FileToken {
                    token: token.clone(),
                    modified,
                    read_at: Instant::now(),
                });
                Ok(token)
            }
        }
    }
}

impl TokenCredential for WorkloadIdentityCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let d = self.describe();
            let tenant = pick_tenant(&d, &self.tenant, tenant)?;
            let url = token_endpoint(&self.authority_host, &tenant)?;
            let assertion = self.federated_token()?;
            request_token(
                &self.transport,
                &d,
                url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &self.client_id),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                    ("scope", scope),
                ],
                &[&assertion],
            )
            .await
        })
    }

    fn describe(&self) -> String {
        match &self.source {
            AssertionSource::File { path, .. } => format!(
                "workload identity credential for app {} (token file {})",
                self.client_id,
                path.display()
            ),
            AssertionSource::Token(_) => format!(
                "workload identity credential for app {} (service account token)",
                self.client_id
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Managed identity

/// Which managed identity IMDS should issue a token for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedIdentityId {
    System,
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

/// Managed identity through IMDS (`/metadata/identity/oauth2/token`, `Metadata: true`).
pub struct ManagedIdentityCredential {
    endpoint: Url,
    id: ManagedIdentityId,
    metadata_header: bool,
    transport: Transport,
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field("endpoint", &self.endpoint.as_str())
            .field("id", &self.id)
            .finish()
    }
}

pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

impl ManagedIdentityCredential {
    /// `endpoint`: IMDS origin (or full token URL); `None` = `http://169.254.169.254`.
    pub fn new(endpoint: Option<&str>, id: ManagedIdentityId) -> Result<Self, Error> {
        let raw = endpoint
            .filter(|e| !e.trim().is_empty())
            .unwrap_or(IMDS_ENDPOINT)
            .trim();
        let mut url = Url::parse(raw).map_err(|e| {
            Error::Config(format!("invalid managed identity endpoint '{raw}': {e}"))
        })?;
        if url.path() == "/" || url.path().is_empty() {
            url.set_path(IMDS_PATH);
        }
        url.set_query(None);
        Ok(Self {
            endpoint: url,
            id,
            metadata_header: true,
            transport: Transport::shared_default(),
        })
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// For tests of the refused-request path only: omit the `Metadata: true` header.
    #[doc(hidden)]
    pub fn without_metadata_header_for_tests(mut self) -> Self {
        self.metadata_header = false;
        self
    }
}

impl TokenCredential for ManagedIdentityCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        _tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let d = self.describe();
            let resource = scope.strip_suffix("/.default").unwrap_or(scope);
            let mut url = self.endpoint.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("api-version", "2018-02-01");
                q.append_pair("resource", resource);
                match &self.id {
                    ManagedIdentityId::System => {}
                    ManagedIdentityId::ClientId(v) => {
                        q.append_pair("client_id", v);
                    }
                    ManagedIdentityId::ObjectId(v) => {
                        q.append_pair("object_id", v);
                    }
                    ManagedIdentityId::ResourceId(v) => {
                        q.append_pair("msi_res_id", v);
                    }
                }
            }
            let mut req = Request::get(url.clone());
            if self.metadata_header {
                req.headers.push(("metadata", "true".into()));
            }
            let target = target_for(&d, &url);
            tracing::debug!(credential = %d, "requesting managed identity token");
            let resp = self.transport.execute(&req, &target, None).await?;
            parse_token_response(&d, &target, &resp, &[])
        })
    }

    fn describe(&self) -> String {
        let who = match &self.id {
            ManagedIdentityId::System => "system-assigned".to_string(),
            ManagedIdentityId::ClientId(v) => format!("client id {v}"),
            ManagedIdentityId::ObjectId(v) => format!("object id {v}"),
            ManagedIdentityId::ResourceId(v) => format!("resource id {v}"),
        };
        format!("managed identity credential ({who})")
    }
}

// ---------------------------------------------------------------------------------------------
// Environment

/// `AZURE_*` environment variables: client secret, else client certificate, else federated
/// token file (workload identity).
pub struct EnvironmentCredential {
    inner: Arc<dyn TokenCredential>,
}

impl fmt::Debug for EnvironmentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EnvironmentCredential")
            .field(&self.inner)
            .finish()
    }
}

impl EnvironmentCredential {
    /// From the process environment with the shared default transport.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|k| std::env::var(k).ok(), &CredentialOptions::default())
    }

    /// From any variable lookup (tests inject a map instead of mutating the process env).
    pub fn from_vars(
        lookup: impl Fn(&str) -> Option<String>,
        options: &CredentialOptions,
    ) -> Result<Self, Error> {
        let var = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let unavailable = |reason: &str| Error::CredentialUnavailable {
            credential: "environment credential".into(),
            reason: reason.into(),
        };
        let client_id =
            var("AZURE_CLIENT_ID").ok_or_else(|| unavailable("AZURE_CLIENT_ID is not set"))?;
        let tenant = var("AZURE_TENANT_ID").unwrap_or_default();
        let authority = match (var("AZURE_AUTHORITY_HOST"), &options.cloud) {
            (Some(a), _) => normalize_authority(&a),
            (None, Some(cloud)) => cloud.authority_host.clone(),
            (None, None) => normalize_authority(""),
        };
        let t = options.transport.clone();
        let inner: Arc<dyn TokenCredential> = if let Some(secret) =
            lookup("AZURE_CLIENT_SECRET").filter(|s| !s.is_empty())
        {
            Arc::new(
                ClientSecretCredential::new(&authority, &tenant, &client_id, secret)
                    .with_transport(t),
            )
        } else if let Some(path) = var("AZURE_CLIENT_CERTIFICATE_PATH") {
            let password = lookup("AZURE_CLIENT_CERTIFICATE_PASSWORD").map(Zeroizing::new);
            Arc::new(
                ClientCertificateCredential::from_file(
                    &authority,
                    &tenant,
                    &client_id,
                    Path::new(&path),
                    password.as_deref().map(String::as_str),
                )?
                .with_x5c(
                    var("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")
                        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
                )
                .with_transport(t),
            )
        } else if let Some(path) = var("AZURE_FEDERATED_TOKEN_FILE") {
            Arc::new(
                WorkloadIdentityCredential::from_token_file(
                    &authority,
                    &tenant,
                    &client_id,
                    Path::new(&path),
                )
                .with_transport(t),
            )
        } else {
            return Err(unavailable(
                "AZURE_CLIENT_ID is set but none of AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE",
            ));
        };
        Ok(Self { inner })
    }
}

impl TokenCredential for EnvironmentCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        self.inner.get_token(scope, tenant)
    }
    fn describe(&self) -> String {
        format!("environment: {}", self.inner.describe())
    }
}

// ---------------------------------------------------------------------------------------------
// AKS azure.json

/// The default path of the AKS cloud-provider configuration.
pub const AZURE_JSON_PATH: &str = "/etc/kubernetes/azure.json";

/// AKS `/etc/kubernetes/azure.json` (cloud-provider-azure config).
pub struct AzureJsonCredential {
    inner: Arc<dyn TokenCredential>,
    path: PathBuf,
}

impl fmt::Debug for AzureJsonCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureJsonCredential")
            .field("path", &self.path)
            .field("inner", &self.inner)
            .finish()
    }
}

impl AzureJsonCredential {
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        Self::from_file_with(path, &CredentialOptions::default())
    }

    pub fn from_file_with(path: &Path, options: &CredentialOptions) -> Result<Self, Error> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::CredentialUnavailable {
                credential: format!("azure.json credential ({})", path.display()),
                reason: format!("cannot read: {e}"),
            }
        })?);
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            Error::Config(format!(
                "{}: not valid JSON (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            ))
        })?;
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .unwrap_or("")
                .to_string()
        };
        let b = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
        let cloud_name = s("cloud");
        let cloud = if let Some(c) = &options.cloud {
            c.clone()
        } else if cloud_name.eq_ignore_ascii_case("AzureStackCloud") {
            match std::env::var_os("AZURE_ENVIRONMENT_FILEPATH") {
                Some(p) => Cloud::from_env_file(Path::new(&p))?,
                None => {
                    return Err(Error::Config(format!(
                        "{}: cloud AzureStackCloud needs AZURE_ENVIRONMENT_FILEPATH",
                        path.display()
                    )))
                }
            }
        } else {
            Cloud::by_name(&cloud_name)?
        };
        let authority = cloud.authority_host.clone();
        let tenant = s("tenantId");
        let client_id = s("aadClientId");
        let secret = Zeroizing::new(s("aadClientSecret"));
        let cert_path = s("aadClientCertPath");
        let t = options.transport.clone();
        let inner: Arc<dyn TokenCredential> = if b("useManagedIdentityExtension") {
            let uai = s("userAssignedIdentityID");
            let id = if uai.is_empty() {
                ManagedIdentityId::System
            } else if uai.starts_with('/') {
                ManagedIdentityId::ResourceId(uai)
            } else {
                ManagedIdentityId::ClientId(uai)
            };
            Arc::new(
                ManagedIdentityCredential::new(options.imds_endpoint.as_deref(), id)?
                    .with_transport(t),
            )
        } else if b("useFederatedWorkloadIdentityExtension")
            && !s("aadFederatedTokenFile").is_empty()
        {
            Arc::new(
                WorkloadIdentityCredential::from_token_file(
                    &authority,
                    &tenant,
                    &client_id,
                    Path::new(&s("aadFederatedTokenFile")),
                )
                .with_transport(t),
            )
        } else if !secret.is_empty() && secret.as_str() != "msi" && !client_id.is_empty() {
            Arc::new(
                ClientSecretCredential::new(&authority, &tenant, &client_id, secret.as_str())
                    .with_transport(t),
            )
        } else if !cert_path.is_empty() && !client_id.is_empty() {
            let password = Zeroizing::new(s("aadClientCertPassword"));
            Arc::new(
                ClientCertificateCredential::from_file(
                    &authority,
                    &tenant,
                    &client_id,
                    Path::new(&cert_path),
                    Some(&password),
                )?
                .with_transport(t),
            )
        } else {
            return Err(Error::CredentialUnavailable {
                credential: format!("azure.json credential ({})", path.display()),
                reason: "no managed identity, client secret or client certificate configured"
                    .into(),
            });
        };
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }
}

impl TokenCredential for AzureJsonCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        self.inner.get_token(scope, tenant)
    }
    fn describe(&self) -> String {
        format!(
            "azure.json ({}): {}",
            self.path.display(),
            self.inner.describe()
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Default chain

/// The default chain, in order:
/// 1. environment variables ([`EnvironmentCredential`]: secret, certificate, federated token file);
/// 2. AKS azure.json (`AZURE_CREDENTIAL_FILE` or `/etc/kubernetes/azure.json`) when the file exists;
/// 3. managed identity via IMDS (user-assigned by `AZURE_CLIENT_ID` when set, else system-assigned).
///
/// Each link that is not configured is skipped at construction. At token time links are tried
/// in order; "unavailable", transport and timeout failures move on to the next link, a refusal
/// by Entra ID stops the chain (a configured but wrong credential must not be masked). The first
/// link that succeeds is used from then on.
pub struct DefaultCredential {
    chain: Vec<Arc<dyn TokenCredential>>,
    skipped: Vec<String>,
    selected: Mutex<Option<usize>>,
}

impl fmt::Debug for DefaultCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultCredential")
            .field("chain", &self.chain)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl DefaultCredential {
    pub fn new() -> Self {
        Self::with_options(&CredentialOptions::default())
    }

    pub fn with_options(options: &CredentialOptions) -> Self {
        let json = std::env::var_os("AZURE_CREDENTIAL_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(AZURE_JSON_PATH));
        Self::from_sources(|k| std::env::var(k).ok(), Some(&json), options)
    }

    /// Builds the chain from an injected environment and azure.json path.
    pub fn from_sources(
        lookup: impl Fn(&str) -> Option<String>,
        azure_json: Option<&Path>,
        options: &CredentialOptions,
    ) -> Self {
        let mut chain: Vec<Arc<dyn TokenCredential>> = Vec::new();
        let mut skipped = Vec::new();
        match EnvironmentCredential::from_vars(&lookup, options) {
            Ok(c) => chain.push(Arc::new(c)),
            Err(e) => skipped.push(e.to_string()),
        }
        if let Some(p) = azure_json {
            if p.exists() {
                match AzureJsonCredential::from_file_with(p, options) {
                    Ok(c) => chain.push(Arc::new(c)),
                    Err(e) => skipped.push(e.to_string()),
                }
            } else {
                skipped.push(format!("azure.json: {} does not exist", p.display()));
            }
        }
        let id = lookup("AZURE_CLIENT_ID")
            .filter(|v| !v.trim().is_empty())
            .map(ManagedIdentityId::ClientId)
            .unwrap_or(ManagedIdentityId::System);
        match ManagedIdentityCredential::new(options.imds_endpoint.as_deref(), id) {
            Ok(c) => chain.push(Arc::new(c.with_transport(options.transport.clone()))),
            Err(e) => skipped.push(e.to_string()),
        }
        Self {
            chain,
            skipped,
            selected: Mutex::new(None),
        }
    }

    /// Descriptions of the links, in order.
    pub fn links(&self) -> Vec<String> {
        self.chain.iter().map(|c| c.describe()).collect()
    }
}

impl Default for DefaultCredential {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCredential for DefaultCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let selected = *self.selected.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = selected {
                return self.chain[i].get_token(scope, tenant).await;
            }
            let mut failures = self.skipped.clone();
            for (i, c) in self.chain.iter().enumerate() {
                match c.get_token(scope, tenant).await {
                    Ok(t) => {
                        tracing::info!(credential = %c.describe(), "default credential chain selected");
                        *self.selected.lock().unwrap_or_else(|p| p.into_inner()) = Some(i);
                        return Ok(t);
                    }
                    Err(
                        e @ (Error::CredentialUnavailable { .. }
                        | Error::Transport { .. }
                        | Error::Timeout { .. }),
                    ) => {
                        tracing::debug!(credential = %c.describe(), error = %e, "credential unavailable; trying the next");
                        failures.push(e.to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(Error::CredentialUnavailable {
                credential: "default credential chain".into(),
                reason: failures.join("; "),
            })
        })
    }

    fn describe(&self) -> String {
        format!("default credential chain [{}]", self.links().join(" -> "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: Default::default(),
            body: Zeroizing::new(body.as_bytes().to_vec()),
            attempts: 1,
            retry_after: None,
        }
    }

    #[test]
    fn token_and_error_parsing() {
        let t = Target::op("https://login/t/oauth2/v2.0/token", "token request");
        let ok = parse_token_response(
            "c",
            &t,
            &resp(200, r#"{"access_token":"abc","expires_in":3599}"#),
            &[],
        )
        .unwrap();
        assert_eq!(ok.token.as_str(), "abc");
        let left = ok.expires_on.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(3590) && left <= Duration::from_secs(3600));
        let imds = parse_token_response(
            "c",
            &t,
            &resp(
                200,
                r#"{"access_token":"x","expires_in":"100","expires_on":"1900000000"}"#,
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            imds.expires_on,
            UNIX_EPOCH + Duration::from_secs(1_900_000_000)
        );
        assert!(!format!("{ok:?}").contains("abc"));

        let e = parse_token_response(
            "client secret credential for app a",
            &t,
            &resp(401, r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided: s3cret.\r\nTrace ID: 1","error_codes":[7000215]}"#),
            &["s3cret"],
        )
        .unwrap_err();
        let s = e.to_string();
        assert_eq!(e.code(), Some("AADSTS7000215"));
        assert!(
            s.contains("client secret credential for app a")
                && s.contains("HTTP 401")
                && s.contains("invalid_client"),
            "{s}"
        );
        assert!(!s.contains("s3cret") && !s.contains("Trace ID"), "{s}");
        let e = parse_token_response("c", &t, &resp(400, r#"{"error":"invalid_request","error_description":"Required metadata header not specified"}"#), &[]).unwrap_err();
        assert_eq!(e.code(), Some("invalid_request"));
        let e = parse_token_response("c", &t, &resp(502, "<html>"), &[]).unwrap_err();
        assert!(e.to_string().contains("not JSON"));
        assert!(matches!(
            parse_token_response("c", &t, &resp(200, "{}"), &[]),
            Err(Error::BadResponse { .. })
        ));
    }

    #[test]
    fn tenant_choice() {
        assert_eq!(pick_tenant("c", "a", Some("b")).unwrap(), "b");
        assert_eq!(pick_tenant("c", "a", None).unwrap(), "a");
        assert!(pick_tenant("c", "", None).is_err());
        assert!(pick_tenant("c", "../x", None).is_err());
        assert_eq!(
            token_endpoint(&normalize_authority("login.microsoftonline.us"), "t")
                .unwrap()
                .as_str(),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
        assert_eq!(
            token_endpoint(&normalize_authority("https://localhost:8443"), "t")
                .unwrap()
                .as_str(),
            "https://localhost:8443/t/oauth2/v2.0/token"
        );
    }

    #[test]
    fn environment_parser_modes() {
        let opts = CredentialOptions::new(
            Transport::new(&crate::ClientOptions {
                use_system_roots: false,
                ..Default::default()
            })
            .unwrap(),
        );
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = EnvironmentCredential::from_vars(env(&[]), &opts).unwrap_err();
        assert!(matches!(e, Error::CredentialUnavailable { .. }));
        let c = EnvironmentCredential::from_vars(
            env(&[
                ("AZURE_CLIENT_ID", "app"),
                ("AZURE_CLIENT_SECRET", "sek"),
                ("AZURE_TENANT_ID", "t"),
            ]),
            &opts,
        )
        .unwrap();
        assert!(c
            .describe()
            .contains("client secret credential for app app"));
        assert!(!format!("{c:?}").contains("sek"));
        let c = EnvironmentCredential::from_vars(
            env(&[
                ("AZURE_CLIENT_ID", "app"),
                (
                    "AZURE_FEDERATED_TOKEN_FILE",
                    "/var/run/secrets/azure/tokens/azure-identity-token",
                ),
            ]),
            &opts,
        )
        .unwrap();
        assert!(
            c.describe().contains("workload identity"),
            "{}",
            c.describe()
        );
        let e = EnvironmentCredential::from_vars(
            env(&[
                ("AZURE_CLIENT_ID", "app"),
                ("AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent.pem"),
            ]),
            &opts,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
        let e = EnvironmentCredential::from_vars(env(&[("AZURE_CLIENT_ID", "app")]), &opts)
            .unwrap_err();
        assert!(e.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"));

        // Default chain: env skipped, no azure.json, MSI last.
        let d = DefaultCredential::from_sources(
            env(&[]),
            Some(Path::new("/nonexistent/azure.json")),
            &opts,
        );
        assert_eq!(
            d.links(),
            vec!["managed identity credential (system-assigned)".to_string()]
        );
        let d = DefaultCredential::from_sources(
            env(&[("AZURE_CLIENT_ID", "app"), ("AZURE_CLIENT_SECRET", "sek")]),
            None,
            &opts,
        );
        assert_eq!(d.links().len(), 2);
        assert!(d.links()[1].contains("client id app"));
    }
}
