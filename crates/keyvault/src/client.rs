//! The Key Vault data-plane client: get secret / key / certificate, list versions, with the
//! challenge-based authentication flow.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use url::Url;
use zeroize::Zeroizing;

use crate::cache::TokenCache;
use crate::credential::TokenCredential;
use crate::error::{sanitize, Error, Target};
use crate::transport::{ClientOptions, Request, Response, Transport, TransportStats};
use crate::ObjectKind;

/// A secret version. `Debug` redacts the value.
#[derive(Clone)]
pub struct SecretBundle {
    pub id: String,
    pub name: String,
    pub version: String,
    pub value: Zeroizing<String>,
    pub content_type: Option<String>,
    /// Set for the backing secret of a certificate.
    pub kid: Option<String>,
    pub managed: bool,
    pub enabled: bool,
    pub created: Option<i64>,
    pub updated: Option<i64>,
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
    pub tags: BTreeMap<String, String>,
}

impl fmt::Debug for SecretBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretBundle")
            .field("id", &self.id)
            .field("value", &"<redacted>")
            .field("content_type", &self.content_type)
            .field("kid", &self.kid)
            .field("managed", &self.managed)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// A key version (public parts only; Key Vault never returns private parts).
#[derive(Debug, Clone)]
pub struct KeyBundle {
    /// The `kid`.
    pub id: String,
    pub name: String,
    pub version: String,
    pub jwk: pki::PublicJwk,
    /// As returned: RSA, RSA-HSM, EC, EC-HSM, oct, oct-HSM.
    pub kty: String,
    pub key_ops: Vec<String>,
    pub managed: bool,
    pub enabled: bool,
    pub created: Option<i64>,
    pub updated: Option<i64>,
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
    pub tags: BTreeMap<String, String>,
}

/// A certificate version (public certificate only; the key is in the backing secret `sid`).
#[derive(Debug, Clone)]
pub struct CertificateBundle {
    pub id: String,
    pub name: String,
    pub version: String,
    /// DER X.509 certificate.
    pub cer: Vec<u8>,
    /// base64url SHA-1 thumbprint, as returned.
    pub x5t: Option<String>,
    pub kid: Option<String>,
    pub sid: Option<String>,
    /// `policy.secret_props.contentType` when returned.
    pub content_type: Option<String>,
    pub enabled: bool,
    pub created: Option<i64>,
    pub updated: Option<i64>,
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
    pub tags: BTreeMap<String, String>,
}

/// One entry of a versions listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    pub id: String,
    pub version: String,
    pub enabled: bool,
    pub created: i64,
    pub updated: i64,
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) scope: String,
    pub(crate) tenant: Option<String>,
}

type ChallengeCell = Arc<tokio::sync::OnceCell<Challenge>>;

/// The Key Vault data-plane client. Cheap to clone (one connection pool, one token cache).
#[derive(Clone)]
pub struct KeyVaultClient {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    credential: Arc<dyn TokenCredential>,
    challenges: Mutex<HashMap<String, ChallengeCell>>,
    api_version: String,
    verify_resource: bool,
}

impl fmt::Debug for KeyVaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyVaultClient")
            .field("credential", &self.inner.credential.describe())
            .field("api_version", &self.inner.api_version)
            .finish_non_exhaustive()
    }
}

// ----- wire types (borrowing from the zeroized body where possible) -----

#[derive(Deserialize, Default)]
struct Attributes {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    updated: Option<i64>,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    exp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSecret<'a> {
    id: String,
    #[serde(borrow, default)]
    value: Option<Cow<'a, str>>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    managed: Option<bool>,
    #[serde(default)]
    attributes: Attributes,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct WireKey {
    key: serde_json::Value,
    #[serde(default)]
    managed: Option<bool>,
    #[serde(default)]
    attributes: Attributes,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
struct SecretProps {
    #[serde(default, rename = "contentType")]
    content_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct Policy {
    #[serde(default)]
    secret_props: SecretProps,
}

#[derive(Deserialize)]
struct WireCertificate {
    id: String,
    cer: String,
    #[serde(default)]
    x5t: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    policy: Option<Policy>,
    #[serde(default)]
    attributes: Attributes,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct WireItem {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    attributes: Attributes,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePage {
    #[serde(default)]
    value: Vec<WireItem>,
    #[serde(default)]
    next_link: Option<String>,
}

/// Describes a JSON error without quoting the document (serde messages can contain values).
fn json_problem(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "unexpected JSON shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8], target: &Target) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::BadResponse {
        target: Box::new(target.clone()),
        detail: json_problem(&e),
    })
}

/// `(name, version)` from `https://host/secrets/{name}/{version}`.
fn name_version(id: &str, target: &Target) -> Result<(String, String), Error> {
    let bad = || Error::BadResponse {
        target: Box::new(target.clone()),
        detail: format!("unexpected object id '{}'", sanitize(id, &[])),
    };
    let url = Url::parse(id).map_err(|_| bad())?;
    let segs: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    match segs.as_slice() {
        [_, name, version] => Ok((name.to_string(), version.to_string())),
        _ => Err(bad()),
    }
}

use model::valid_object_name as valid_name;

fn normalize_version(version: Option<&str>) -> Result<Option<&str>, Error> {
    match version.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("latest") => Ok(None),
        Some(v) if v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric()) => Ok(Some(v)),
        Some(v) => Err(Error::invalid_config(
            "object version",
            format!(
                "'{}' is not a Key Vault version (up to 64 letters and digits)",
                sanitize(v, &[])
            ),
        )),
    }
}

/// Parses and checks a vault URL; returns the base URL (path "/") and its origin.
fn vault_base(vault_url: &str) -> Result<(Url, String), Error> {
    let bad = |reason: String| Error::InvalidVaultUrl {
        url: sanitize(vault_url, &[]),
        reason,
    };
    let url = Url::parse(vault_url.trim()).map_err(|e| bad(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(bad(
            "it must use https (bearer tokens are never sent over plain HTTP)".into(),
        ));
    }
    if url.host_str().is_none() {
        return Err(bad("it has no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment".into()));
    }
    if !(url.path() == "/" || url.path().is_empty()) {
        return Err(bad("it must not have a path".into()));
    }
    let origin = url.origin().ascii_serialization();
    let mut base = url;
    base.set_path("/");
    Ok((base, origin))
}

/// Parses `WWW-Authenticate: Bearer authorization="https://login/TENANT", resource="R"` (or
/// `authorization_uri`, `scope`). Returns (scope, tenant, resource-or-scope URL).
pub(crate) fn parse_challenge(headers: &HeaderMap) -> Option<(Challenge, String)> {
    for value in headers.get_all("www-authenticate") {
        let Ok(v) = value.to_str() else { continue };
        let v = v.trim();
        let Some(rest) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        else {
            continue;
        };
        let mut params = HashMap::new();
        for part in rest.split(',') {
            if let Some((k, val)) = part.split_once('=') {
                params.insert(
                    k.trim().to_ascii_lowercase(),
                    val.trim().trim_matches('"').to_string(),
                );
            }
        }
        let authorization = params
            .get("authorization")
            .or_else(|| params.get("authorization_uri"))
            .cloned()
            .unwrap_or_default();
        let tenant = Url::parse(&authorization).ok().and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.rfind(|p| !p.is_empty()).map(str::to_string))
        });
        let (scope, resource) = if let Some(scope) = params.get("scope").filter(|s| !s.is_empty()) {
            let resource = scope.strip_suffix("/.default").unwrap_or(scope).to_string();
            (scope.clone(), resource)
        } else if let Some(resource) = params.get("resource").filter(|s| !s.is_empty()) {
            let r = resource.trim_end_matches('/').to_string();
            (format!("{r}/.default"), r)
        } else {
            continue;
        };
        return Some((Challenge { scope, tenant }, resource));
    }
    None
}

/// The Azure SDK rule: the vault host must equal the resource host or be a subdomain of it.
fn resource_matches(vault: &Url, resource: &str) -> bool {
    let Some(vh) = vault.host_str() else {
        return false;
    };
    let Some(rh) = Url::parse(resource)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    else {
        return false;
    };
    let vh = vh.to_ascii_lowercase();
    let rh = rh.to_ascii_lowercase();
    vh == rh || vh.ends_with(&format!(".{rh}"))
}

fn error_from_response(resp: &Response, target: &Target, redact: &[&str]) -> Error {
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        code: Option<String>,
    }
    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default)]
        innererror: Option<Inner>,
    }
    #[derive(Deserialize)]
    struct Envelope {
        error: Body,
    }
    let parsed: Option<Envelope> = serde_json::from_slice(&resp.body).ok();
    let (code, message) = match parsed {
        Some(Envelope { error }) => {
            let mut code = error.code.unwrap_or_else(|| "unknown".into());
            if let Some(inner) = error.innererror.and_then(|i| i.code) {
                code = format!("{code}/{inner}");
            }
            (
                code,
                sanitize(error.message.as_deref().unwrap_or(""), redact),
            )
        }
        None => (
            "unknown".to_string(),
            if resp.body.is_empty() {
                "empty body".to_string()
            } else {
                "body is not a Key Vault error document".to_string()
            },
        ),
    };
    let status = resp.status;
    let target = Box::new(target.clone());
    match status {
        404 => Error::NotFound {
            target,
            status,
            code,
            message,
        },
        403 => Error::Forbidden {
            target,
            status,
            code,
            message,
        },
        401 => Error::Unauthorized {
            target,
            status,
            code,
            message,
        },
        429 => Error::Throttled {
            target,
            status,
            code,
            message,
            attempts: resp.attempts,
            retry_after: resp.retry_after,
            beyond_deadline: resp.beyond_deadline,
        },
        _ => Error::Http {
            target,
            status,
            code,
            message,
            attempts: resp.attempts,
        },
    }
}

impl KeyVaultClient {
    /// A client with its own transport built from `options`. The credential is wrapped in a
    /// [`TokenCache`] unless it already caches.
    pub fn new(
        credential: Arc<dyn TokenCredential>,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let transport = Transport::new(&options)?;
        Ok(Self::with_transport(credential, transport))
    }

    /// A client sharing an existing transport (connection pool, stats, rate-limit buckets).
    pub fn with_transport(credential: Arc<dyn TokenCredential>, transport: Transport) -> Self {
        let credential: Arc<dyn TokenCredential> = if credential.is_cached() {
            credential
        } else {
            Arc::new(TokenCache::new(credential))
        };
        let o = transport.options();
        Self {
            inner: Arc::new(Inner {
                api_version: o.api_version.clone(),
                verify_resource: o.verify_challenge_resource,
                transport,
                credential,
                challenges: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// Retry/wait/rate-limit counters of the underlying transport.
    pub fn stats(&self) -> TransportStats {
        self.inner.transport.stats()
    }

    pub fn credential(&self) -> &Arc<dyn TokenCredential> {
        &self.inner.credential
    }

    fn cell(&self, origin: &str) -> ChallengeCell {
        self.inner
            .challenges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(origin.to_string())
            .or_default()
            .clone()
    }

    fn check_resource(&self, url: &Url, resource: &str, target: &Target) -> Result<(), Error> {
        if self.inner.verify_resource && !resource_matches(url, resource) {
            return Err(Error::ChallengeResourceMismatch {
                target: Box::new(target.clone()),
                resource: sanitize(resource, &[]),
                host: url.host_str().unwrap_or_default().to_string(),
            });
        }
        Ok(())
    }

    /// Learns (once per vault origin, single-flight) the tenant and scope from a 401 challenge.
    async fn challenge(
        &self,
        origin: &str,
        url: &Url,
        target: &Target,
    ) -> Result<Challenge, Error> {
        let cell = self.cell(origin);
        cell.get_or_try_init(|| async {
            let mut req = Request::get(url.clone());
            req.headers.push(("accept", "application/json".into()));
            let resp = self.inner.transport.execute(&req, target, Some(origin)).await?;
            match (resp.status, parse_challenge(&resp.headers)) {
                (401, Some((c, resource))) => {
                    self.check_resource(url, &resource, target)?;
                    tracing::debug!(vault = origin, scope = %c.scope, tenant = ?c.tenant, "learned authentication challenge");
                    Ok(c)
                }
                (401, None) => Err(Error::BadResponse {
                    target: Box::new(target.clone()),
                    detail: "401 without a Bearer challenge (WWW-Authenticate)".into(),
                }),
                (s, _) if (200..300).contains(&s) => Err(Error::BadResponse {
                    target: Box::new(target.clone()),
                    detail: "the vault answered an unauthenticated request; refusing to trust it".into(),
                }),
                _ => Err(error_from_response(&resp, target, &[])),
            }
        })
        .await
        .cloned()
    }

    /// GET with challenge auth, one refresh on 401; non-2xx responses become errors.
    async fn get(&self, url: Url, origin: &str, target: &Target) -> Result<Response, Error> {
        let mut challenge = self.challenge(origin, &url, target).await?;
        let cred = &self.inner.credential;
        let mut token = cred
            .get_token(&challenge.scope, challenge.tenant.as_deref())
            .await?;
        let mut refreshed = false;
        loop {
            let mut req = Request::get(url.clone());
            req.headers.push(("accept", "application/json".into()));
            req.bearer = Some(token.token.clone());
            let resp = self
                .inner
                .transport
                .execute(&req, target, Some(origin))
                .await?;
            if (200..300).contains(&resp.status) {
                return Ok(resp);
            }
            if resp.status == 401 && !refreshed {
                refreshed = true;
                cred.invalidate(&challenge.scope, challenge.tenant.as_deref(), &token.token);
                if let Some((c, resource)) = parse_challenge(&resp.headers) {
                    if c != challenge {
                        self.check_resource(&url, &resource, target)?;
                        tracing::debug!(vault = origin, scope = %c.scope, "vault changed its challenge");
                        let cell = Arc::new(tokio::sync::OnceCell::new_with(Some(c.clone())));
                        self.inner
                            .challenges
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(origin.to_string(), cell);
                        challenge = c;
                    }
                }
                tracing::debug!(%target, "401 with a token; refreshing it once");
                token = cred
                    .get_token(&challenge.scope, challenge.tenant.as_deref())
                    .await?;
                continue;
            }
            let e = error_from_response(&resp, target, &[&token.token]);
            tracing::debug!(error = %e, "request failed");
            return Err(e);
        }
    }

    fn object_url(&self, base: &Url, collection: &str, name: &str, version: Option<&str>) -> Url {
        let mut url = base.clone();
        // "Get latest" ends in a slash, as the SDKs send it.
        url.set_path(&format!("/{collection}/{name}/{}", version.unwrap_or("")));
        url.query_pairs_mut()
            .append_pair("api-version", &self.inner.api_version);
        url
    }

    fn prepare<'v>(
        &self,
        vault_url: &str,
        kind: ObjectKind,
        name: &str,
        version: Option<&'v str>,
    ) -> Result<(Url, String, Target, Option<&'v str>), Error> {
        let (base, origin) = vault_base(vault_url)?;
        let target = Target::object(origin.as_str(), kind, name, version);
        if !valid_name(name) {
            return Err(Error::InvalidRequest {
                target: Box::new(target),
                reason: "object names are 1-127 characters of 0-9, a-z, A-Z and '-'".into(),
            });
        }
        let version = normalize_version(version)?;
        let url = self.object_url(&base, kind.collection(), name, version);
        Ok((url, origin, target, version))
    }

    /// Gets a secret (`version` None, "" or "latest" = the latest version).
    pub async fn get_secret(
        &self,
        vault_url: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<SecretBundle, Error> {
        let (url, origin, target, _) =
            self.prepare(vault_url, ObjectKind::Secret, name, version)?;
        let resp = self.get(url, &origin, &target).await?;
        let w: WireSecret<'_> = parse_body(&resp.body, &target)?;
        let (name, version) = name_version(&w.id, &target)?;
        let value = match w.value {
            Some(Cow::Borrowed(s)) => Zeroizing::new(s.to_string()),
            Some(Cow::Owned(s)) => Zeroizing::new(s),
            None => {
                return Err(Error::BadResponse {
                    target: Box::new(target),
                    detail: "secret without a value".into(),
                })
            }
        };
        tracing::debug!(%target, version = %version, "got secret");
        Ok(SecretBundle {
            id: w.id,
            name,
            version,
            value,
            content_type: w.content_type,
            kid: w.kid,
            managed: w.managed.unwrap_or(false),
            enabled: w.attributes.enabled.unwrap_or(true),
            created: w.attributes.created,
            updated: w.attributes.updated,
            not_before: w.attributes.nbf,
            expires: w.attributes.exp,
            tags: w.tags.unwrap_or_default(),
        })
    }

    /// Gets a key's public JWK.
    pub async fn get_key(
        &self,
        vault_url: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyBundle, Error> {
        let (url, origin, target, _) = self.prepare(vault_url, ObjectKind::Key, name, version)?;
        let resp = self.get(url, &origin, &target).await?;
        let w: WireKey = parse_body(&resp.body, &target)?;
        let kid = w
            .key
            .get("kid")
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| Error::BadResponse {
                target: Box::new(target.clone()),
                detail: "key without kid".into(),
            })?;
        let key_ops = w
            .key
            .get("key_ops")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|o| o.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let jwk: pki::PublicJwk =
            serde_json::from_value(w.key).map_err(|e| Error::BadResponse {
                target: Box::new(target.clone()),
                detail: format!("key is not a JWK: {}", json_problem(&e)),
            })?;
        let (name, version) = name_version(&kid, &target)?;
        tracing::debug!(%target, version = %version, "got key");
        Ok(KeyBundle {
            id: kid,
            name,
            version,
            kty: jwk.kty.clone(),
            jwk,
            key_ops,
            managed: w.managed.unwrap_or(false),
            enabled: w.attributes.enabled.unwrap_or(true),
            created: w.attributes.created,
            updated: w.attributes.updated,
            not_before: w.attributes.nbf,
            expires: w.attributes.exp,
            tags: w.tags.unwrap_or_default(),
        })
    }

    /// Gets a certificate (public part).
    pub async fn get_certificate(
        &self,
        vault_url: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<CertificateBundle, Error> {
        let (url, origin, target, _) =
            self.prepare(vault_url, ObjectKind::Certificate, name, version)?;
        let resp = self.get(url, &origin, &target).await?;
        let w: WireCertificate = parse_body(&resp.body, &target)?;
        let cer = B64
            .decode(w.cer.trim())
            .or_else(|_| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(w.cer.trim().trim_end_matches('='))
            })
            .map_err(|_| Error::BadResponse {
                target: Box::new(target.clone()),
                detail: "certificate 'cer' is not base64".into(),
            })?;
        let (name, version) = name_version(&w.id, &target)?;
        tracing::debug!(%target, version = %version, "got certificate");
        Ok(CertificateBundle {
            id: w.id,
            name,
            version,
            cer,
            x5t: w.x5t,
            kid: w.kid,
            sid: w.sid,
            content_type: w.policy.and_then(|p| p.secret_props.content_type),
            enabled: w.attributes.enabled.unwrap_or(true),
            created: w.attributes.created,
            updated: w.attributes.updated,
            not_before: w.attributes.nbf,
            expires: w.attributes.exp,
            tags: w.tags.unwrap_or_default(),
        })
    }

    /// The version id a plain GET of the object returns (its current version).
    async fn current_version(
        &self,
        vault_url: &str,
        kind: ObjectKind,
        name: &str,
    ) -> Result<String, Error> {
        Ok(match kind {
            ObjectKind::Secret => self.get_secret(vault_url, name, None).await?.version,
            ObjectKind::Key => self.get_key(vault_url, name, None).await?.version,
            ObjectKind::Certificate => self.get_certificate(vault_url, name, None).await?.version,
        })
    }

    /// All versions of an object, newest first. Follows `nextLink`.
    ///
    /// Order: the current version (the one a plain GET returns) first; then by `created`,
    /// newest first; versions created in the same second by version id in descending byte
    /// order (a stable, arbitrary tie-break: Key Vault records no finer creation time). When
    /// several versions share the newest second, the current one is learned with one extra GET
    /// (if that GET is refused, e.g. the current version is disabled, the order above is kept).
    pub async fn list_versions(
        &self,
        vault_url: &str,
        kind: ObjectKind,
        name: &str,
    ) -> Result<Vec<VersionInfo>, Error> {
        let (base, origin) = vault_base(vault_url)?;
        let mut target = Target::object(origin.as_str(), kind, name, None);
        target.operation = Some("list versions of".into());
        if !valid_name(name) {
            return Err(Error::InvalidRequest {
                target: Box::new(target),
                reason: "object names are 1-127 characters of 0-9, a-z, A-Z and '-'".into(),
            });
        }
        let mut url = base.clone();
        url.set_path(&format!("/{}/{name}/versions", kind.collection()));
        url.query_pairs_mut()
            .append_pair("api-version", &self.inner.api_version)
            .append_pair("maxresults", "25");
        let mut out = Vec::new();
        for _page in 0..10_000 {
            let resp = self.get(url.clone(), &origin, &target).await?;
            let page: WirePage = parse_body(&resp.body, &target)?;
            for item in page.value {
                let Some(id) = item.id.or(item.kid) else {
                    continue;
                };
                let (_, version) = name_version(&id, &target)?;
                out.push(VersionInfo {
                    id,
                    version,
                    enabled: item.attributes.enabled.unwrap_or(true),
                    created: item.attributes.created.unwrap_or(0),
                    updated: item.attributes.updated.unwrap_or(0),
                    not_before: item.attributes.nbf,
                    expires: item.attributes.exp,
                });
            }
            match page.next_link.filter(|l| !l.is_empty()) {
                None => {
                    sort_versions(&mut out);
                    if out.len() > 1 && out[0].created == out[1].created {
                        // Several versions share the newest `created` second: only the vault
                        // knows which one is current. Ask it with a plain GET.
                        match self.current_version(vault_url, kind, name).await {
                            Ok(current) => put_first(&mut out, &current),
                            Err(e @ (Error::Forbidden { .. } | Error::NotFound { .. })) => {
                                // Disabled current version, or no `get` permission: keep the
                                // documented order.
                                tracing::debug!(%target, error = %e, "cannot tell the current version; ordering by created, then version id");
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    return Ok(out);
                }
                Some(link) => {
                    let next = Url::parse(&link).map_err(|_| Error::BadResponse {
                        target: Box::new(target.clone()),
                        detail: "nextLink is not a URL".into(),
                    })?;
                    // Never send the token anywhere but the vault.
                    if next.origin().ascii_serialization() != origin {
                        return Err(Error::BadResponse {
                            target: Box::new(target.clone()),
                            detail: format!(
                                "nextLink points to another origin ({})",
                                next.origin().ascii_serialization()
                            ),
                        });
                    }
                    url = next;
                    if !url.query_pairs().any(|(k, _)| k == "api-version") {
                        url.query_pairs_mut()
                            .append_pair("api-version", &self.inner.api_version);
                    }
                }
            }
        }
        Err(Error::BadResponse {
            target: Box::new(target),
            detail: "too many pages".into(),
        })
    }
}

/// Newest `created` first; ties by version id, descending (see [`KeyVaultClient::list_versions`]).
fn sort_versions(v: &mut [VersionInfo]) {
    v.sort_by(|a, b| {
        b.created
            .cmp(&a.created)
            .then_with(|| b.version.cmp(&a.version))
    });
}

/// Moves the version `current` to the front, keeping the order of the others.
fn put_first(v: &mut [VersionInfo], current: &str) {
    if let Some(i) = v.iter().position(|x| x.version == current) {
        v[..=i].rotate_right(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn challenge_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            "www-authenticate",
            HeaderValue::from_static(
                r#"Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.net""#,
            ),
        );
        let (c, r) = parse_challenge(&h).unwrap();
        assert_eq!(c.scope, "https://vault.azure.net/.default");
        assert_eq!(
            c.tenant.as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(r, "https://vault.azure.net");
        h.insert(
            "www-authenticate",
            HeaderValue::from_static(r#"Bearer authorization_uri="https://localhost:8443/t1/", scope="https://localhost:8443/.default""#),
        );
        let (c, r) = parse_challenge(&h).unwrap();
        assert_eq!(c.scope, "https://localhost:8443/.default");
        assert_eq!(c.tenant.as_deref(), Some("t1"));
        assert!(resource_matches(
            &Url::parse("https://demo.localhost:8443/").unwrap(),
            &r
        ));
        assert!(!resource_matches(
            &Url::parse("https://localhost.evil.com/").unwrap(),
            "https://localhost:8443"
        ));
        assert!(resource_matches(
            &Url::parse("https://kv.vault.azure.net/").unwrap(),
            "https://vault.azure.net"
        ));
        assert!(!resource_matches(
            &Url::parse("https://kv.evilvault.azure.net.example/").unwrap(),
            "https://vault.azure.net"
        ));
        h.insert(
            "www-authenticate",
            HeaderValue::from_static("Basic realm=x"),
        );
        assert!(parse_challenge(&h).is_none());
    }

    #[test]
    fn urls_names_versions() {
        assert!(vault_base("http://kv.vault.azure.net").is_err());
        assert!(vault_base("https://kv.vault.azure.net/secrets").is_err());
        let (b, o) = vault_base("https://kv.localhost:8443/").unwrap();
        assert_eq!(b.as_str(), "https://kv.localhost:8443/");
        assert_eq!(o, "https://kv.localhost:8443");
        assert_eq!(normalize_version(Some("latest")).unwrap(), None);
        assert_eq!(normalize_version(Some("")).unwrap(), None);
        assert_eq!(normalize_version(Some("abc123")).unwrap(), Some("abc123"));
        assert!(normalize_version(Some("../x")).is_err());
        assert!(valid_name("db-password") && !valid_name("a/b") && !valid_name(""));
        let t = Target::op("x", "y");
        assert_eq!(
            name_version("https://kv.vault.azure.net/secrets/db/0123abcd", &t).unwrap(),
            ("db".to_string(), "0123abcd".to_string())
        );
        assert!(name_version("https://kv.vault.azure.net/secrets/db", &t).is_err());
    }

    #[test]
    fn bad_bodies_never_quote_values() {
        let t = Target::object("https://kv", ObjectKind::Secret, "s", None);
        let body = br#"{"id": 5, "value": "CANARY-VALUE-123"}"#;
        let e = parse_body::<WireSecret<'_>>(body, &t).err().unwrap();
        let s = format!("{e} {e:?}");
        assert!(!s.contains("CANARY"), "{s}");
        let body = br#"{"id": "https://kv/secrets/s/v", "value": ["CANARY-VALUE-123"]}"#;
        let e = parse_body::<WireSecret<'_>>(body, &t).err().unwrap();
        assert!(!format!("{e} {e:?}").contains("CANARY"));
        let resp = Response {
            status: 500,
            headers: HeaderMap::new(),
            body: Zeroizing::new(
                br#"{"error":{"code":"X","message":"token CANARY-TOKEN leaked"}}"#.to_vec(),
            ),
            attempts: 3,
            retry_after: None,
            beyond_deadline: None,
        };
        let e = error_from_response(&resp, &t, &["CANARY-TOKEN"]);
        assert!(!e.to_string().contains("CANARY"), "{e}");
        assert!(e.to_string().contains("after 3 attempts"), "{e}");
    }
}
