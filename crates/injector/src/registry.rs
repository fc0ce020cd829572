//! Image entrypoints read from OCI registries (distribution API v2), for containers whose pod
//! spec has no `command`: the manifest (or image index, then the manifest of the wanted
//! platform), then the config blob's `Entrypoint` and `Cmd`.
//!
//! Authentication follows the registry's `WWW-Authenticate` challenge: `Bearer` (a token from the
//! challenge's realm, asked with the pull credentials as Basic auth when there are any) or
//! `Basic` (the pull credentials themselves). Credentials come from `kubernetes.io/dockerconfigjson`
//! Secrets ([`DockerConfig`]). The registry is not trusted: every response is size-bounded, the
//! whole lookup is time-bounded by the caller's [`Resolver`] options, digests are verified, and
//! nothing it sends can make this code panic. Passwords and tokens never appear in errors or
//! logs (errors name the image and the registry only).
//!
//! Results are cached by digest (manifest and config digests; bounded), so a warm lookup of a
//! tag costs one manifest request and a lookup by digest none.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Bound on a manifest or image index.
pub const MAX_MANIFEST: usize = 4 << 20;
/// Bound on an image config blob.
pub const MAX_CONFIG: usize = 8 << 20;
/// Bound on a token response.
pub const MAX_TOKEN: usize = 64 << 10;
/// Bound on a `WWW-Authenticate` header considered.
pub const MAX_CHALLENGE: usize = 8 << 10;
/// Bound on an image reference's length.
pub const MAX_REFERENCE: usize = 1024;

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Docker Hub's names: how images without a registry are written, and where they are served.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// Why an image's entrypoint could not be read (messages name the image, never a credential).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{image:?} is not a valid image reference: {reason}")]
    Reference { image: String, reason: &'static str },
    #[error("registry {registry} of image {image:?} did not answer within {timeout:?}")]
    Timeout {
        image: String,
        registry: String,
        timeout: Duration,
    },
    #[error("cannot reach registry {registry} for image {image:?}")]
    Http {
        image: String,
        registry: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("registry {registry} refused access to image {image:?} (HTTP {status}); {hint}")]
    Unauthorized {
        image: String,
        registry: String,
        status: u16,
        hint: &'static str,
    },
    #[error("registry {registry} has no {what} for image {image:?} (HTTP 404)")]
    NotFound {
        image: String,
        registry: String,
        what: &'static str,
    },
    #[error("registry {registry} answered HTTP {status} for the {what} of image {image:?}")]
    Status {
        image: String,
        registry: String,
        what: &'static str,
        status: u16,
    },
    #[error("registry {registry} sent a {what} for image {image:?} larger than {limit} bytes")]
    TooLarge {
        image: String,
        registry: String,
        what: &'static str,
        limit: usize,
    },
    #[error("registry {registry} sent an invalid {what} for image {image:?}: {reason}")]
    Invalid {
        image: String,
        registry: String,
        what: &'static str,
        reason: String,
    },
    #[error("image {image:?} has no manifest for platform {platform} (it has: {available})")]
    NoPlatform {
        image: String,
        platform: String,
        available: String,
    },
}

/// Whether a lookup failure is worth telling the user to add pull credentials.
const AUTH_HINT: &str =
    "add an imagePullSecret (kubernetes.io/dockerconfigjson) for this registry \
    to the pod or its ServiceAccount, or set `command:` in the container";

/// An image reference split as the distribution API needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// As written in the pod (`docker.io` when none is).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

fn is_digest(s: &str) -> bool {
    match s.split_once(':') {
        Some(("sha256", hex)) => {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        Some(("sha512", hex)) => {
            hex.len() == 128 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        _ => false,
    }
}

impl ImageRef {
    /// Parses `[registry/]repository[:tag][@digest]` as container runtimes do (no registry:
    /// Docker Hub; a single-component Docker Hub name: `library/`).
    pub fn parse(image: &str) -> Result<Self, LookupError> {
        let bad = |reason| LookupError::Reference {
            image: image.chars().take(MAX_REFERENCE).collect(),
            reason,
        };
        if image.is_empty() || image.len() > MAX_REFERENCE {
            return Err(bad("empty or longer than 1024 bytes"));
        }
        let (name, digest) = match image.split_once('@') {
            Some((n, d)) => {
                if !is_digest(d) {
                    return Err(bad("the digest is not sha256:<64 hex> or sha512:<128 hex>"));
                }
                (n, Some(d.to_string()))
            }
            None => (image, None),
        };
        let slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[slash..].rfind(':') {
            Some(i) => (&name[..slash + i], Some(name[slash + i + 1..].to_string())),
            None => (name, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(bad("invalid tag"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            Some(_) => (DOCKER_HUB.to_string(), name.to_string()),
            None => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        let registry_ok = !registry.is_empty()
            && registry.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !registry_ok {
            return Err(bad("invalid registry host"));
        }
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
            });
        if !repo_ok {
            return Err(bad(
                "invalid repository name (lowercase letters, digits, . _ - and /)",
            ));
        }
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the API is served on (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB || self.registry == "index.docker.io" {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The manifest reference: the digest when given, else the tag, else `latest`.
    pub fn reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

/// One `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased (`bearer`, `basic`).
    pub scheme: String,
    /// Parameter names lowercased.
    pub params: BTreeMap<String, String>,
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~/".contains(c)
}

/// Parses a `WWW-Authenticate` value (RFC 9110 11.6.1: challenges separated by commas, each a
/// scheme and `name=value` / `name="quoted"` parameters). Malformed parts are skipped; at most 8
/// challenges of 32 parameters each are kept, and only the first [`MAX_CHALLENGE`] bytes read.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut end = header.len().min(MAX_CHALLENGE);
    while !header.is_char_boundary(end) {
        end -= 1;
    }
    let s: Vec<char> = header[..end].chars().collect();
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < s.len() && (s[*i] == ' ' || s[*i] == '\t') {
            *i += 1;
        }
    };
    while i < s.len() {
        skip_ws(&mut i);
        if i < s.len() && s[i] == ',' {
            i += 1;
            continue;
        }
        let start = i;
        while i < s.len() && is_tchar(s[i]) {
            i += 1;
        }
        if i == start {
            // Not a token: skip the character.
            i += 1;
            continue;
        }
        let token: String = s[start..i].iter().collect();
        skip_ws(&mut i);
        if i < s.len() && s[i] == '=' {
            i += 1;
            skip_ws(&mut i);
            let value = if i < s.len() && s[i] == '"' {
                i += 1;
                let mut v = String::new();
                while i < s.len() && s[i] != '"' {
                    if s[i] == '\\' && i + 1 < s.len() {
                        i += 1;
                    }
                    v.push(s[i]);
                    i += 1;
                }
                i += 1; // the closing quote (or past the end)
                v
            } else {
                let vs = i;
                while i < s.len() && s[i] != ',' && s[i] != ' ' && s[i] != '\t' {
                    i += 1;
                }
                s[vs..i].iter().collect()
            };
            if let Some(c) = out.last_mut() {
                if c.params.len() < 32 {
                    c.params.insert(token.to_ascii_lowercase(), value);
                }
            }
        } else {
            if out.len() >= 8 {
                break;
            }
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: BTreeMap::new(),
            });
        }
    }
    out
}

/// Registry credentials (a password or an identity token). `Debug` shows the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Zeroizing<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Zeroizing::new(password.into()),
        }
    }

    fn basic(&self) -> Zeroizing<String> {
        let raw = Zeroizing::new(format!("{}:{}", self.username, self.password.as_str()));
        Zeroizing::new(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())
        ))
    }

    /// A cache key part that identifies the credentials without revealing them.
    fn fingerprint(&self) -> String {
        let raw = Zeroizing::new(format!("{}\0{}", self.username, self.password.as_str()));
        let d = ring::digest::digest(&ring::digest::SHA256, raw.as_bytes());
        hex16(d.as_ref())
    }
}

fn hex16(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The registries of one `.dockerconfigjson` (or legacy `.dockercfg`), keyed as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerConfig {
    pub auths: BTreeMap<String, Credentials>,
}

#[derive(Deserialize)]
struct RawAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Why a pull secret is unusable (never its content).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DockerConfigError(&'static str);

impl DockerConfig {
    /// Parses `.dockerconfigjson` (`{"auths": {...}}`) or `.dockercfg` (the map itself). Entries
    /// without usable credentials are skipped.
    pub fn parse(bytes: &[u8]) -> Result<Self, DockerConfigError> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|_| DockerConfigError("not JSON"))?;
        let map = match v.get("auths") {
            Some(a) => a.clone(),
            None => v,
        };
        let map: BTreeMap<String, serde_json::Value> = serde_json::from_value(map)
            .map_err(|_| DockerConfigError("not a map of registries"))?;
        let mut auths = BTreeMap::new();
        for (key, entry) in map {
            let Ok(raw) = serde_json::from_value::<RawAuth>(entry) else {
                continue;
            };
            let from_auth = raw.auth.as_deref().and_then(|a| {
                let decoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .ok()?,
                );
                let text = std::str::from_utf8(&decoded).ok()?;
                let (u, p) = text.split_once(':')?;
                Some(Credentials {
                    username: u.to_string(),
                    password: Zeroizing::new(p.to_string()),
                })
            });
            let creds =
                from_auth.or_else(|| match (raw.username, raw.password, raw.identitytoken) {
                    (Some(u), Some(p), _) => Some(Credentials {
                        username: u,
                        password: Zeroizing::new(p),
                    }),
                    // An identity token is used as the password of a fixed user name (ACR's convention).
                    (_, _, Some(t)) => Some(Credentials {
                        username: "00000000-0000-0000-0000-000000000000".into(),
                        password: Zeroizing::new(t),
                    }),
                    _ => None,
                });
            if let Some(c) = creds {
                auths.insert(key, c);
            }
        }
        Ok(Self { auths })
    }
}

fn normalise_key(key: &str) -> (String, String) {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let (host, path) = match k.split_once('/') {
        Some((h, p)) => (h, p.trim_end_matches('/')),
        None => (k, ""),
    };
    let host = host.to_ascii_lowercase();
    let host = match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => host,
    };
    // Docker Hub's legacy key is `https://index.docker.io/v1/`: the path is no repository.
    let path = if host == DOCKER_HUB && (path == "v1" || path == "v2") {
        ""
    } else {
        path
    };
    (host, path.to_string())
}

fn host_matches(pattern: &str, host: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        // One label, as kubelet's matching does.
        host.strip_suffix(suffix)
            .and_then(|h| h.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.'))
    } else {
        pattern == host
    }
}

/// The credentials for `image` among `configs`, as kubelet chooses them: the most specific key
/// (host, then the longest repository path prefix) wins; earlier configs win ties.
pub fn credentials_for<'a>(
    configs: &'a [DockerConfig],
    image: &ImageRef,
) -> Option<&'a Credentials> {
    let host = image.registry.to_ascii_lowercase();
    let mut best: Option<(usize, &Credentials)> = None;
    for config in configs {
        for (key, creds) in &config.auths {
            let (kh, kp) = normalise_key(key);
            if !host_matches(&kh, &host) {
                continue;
            }
            let path_ok = kp.is_empty()
                || image.repository == kp
                || image.repository.starts_with(&format!("{kp}/"));
            if !path_ok {
                continue;
            }
            let score = kp.len() + if kh.starts_with("*.") { 0 } else { 1 };
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, creds));
            }
        }
    }
    best.map(|(_, c)| c)
}

/// What an image runs (`config.Entrypoint`, `config.Cmd`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageCommand {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

impl ImageCommand {
    /// The process a container runs without `command` (Kubernetes' rules): the entrypoint, then
    /// the container's `args` when it has any, else the image's `Cmd`.
    pub fn compose(&self, args: Option<&[String]>) -> Vec<String> {
        let mut out = self.entrypoint.clone();
        match args {
            Some(a) if !a.is_empty() => out.extend(a.iter().cloned()),
            _ => out.extend(self.cmd.iter().cloned()),
        }
        out
    }
}

/// The platform whose manifest is read from an image index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        let os = it.next().filter(|s| !s.is_empty())?.to_string();
        let architecture = it.next().filter(|s| !s.is_empty())?.to_string();
        let variant = it.next().filter(|s| !s.is_empty()).map(str::to_string);
        if it.next().is_some() {
            return None;
        }
        Some(Self {
            os,
            architecture,
            variant,
        })
    }

    pub fn linux(architecture: &str) -> Self {
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A parsed manifest document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An image index / manifest list: (digest, platform) of each entry.
    Index(Vec<(String, Option<Platform>)>),
    /// An image manifest: the config blob's digest and size.
    Image { config: String, size: Option<u64> },
}

#[derive(Deserialize)]
struct RawDescriptor {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    platform: Option<RawPlatform>,
}

#[derive(Deserialize)]
struct RawPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(default, rename = "schemaVersion")]
    schema_version: Option<u64>,
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<RawDescriptor>>,
    #[serde(default)]
    config: Option<RawDescriptor>,
}

/// Parses an OCI / Docker v2 image index or image manifest (schema 1 is refused).
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let raw: RawManifest =
        serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    if raw.schema_version != Some(2) {
        return Err(format!(
            "schemaVersion {:?} (only 2 is supported)",
            raw.schema_version
        ));
    }
    if let Some(list) = raw.manifests {
        if list.len() > 1024 {
            return Err("more than 1024 manifests in the index".into());
        }
        let mut out = Vec::with_capacity(list.len());
        for d in list {
            if !is_digest(&d.digest) {
                return Err("an index entry has an invalid digest".into());
            }
            out.push((
                d.digest,
                d.platform.map(|p| Platform {
                    os: p.os,
                    architecture: p.architecture,
                    variant: p.variant,
                }),
            ));
        }
        return Ok(Manifest::Index(out));
    }
    let media = raw.media_type.as_deref().unwrap_or("");
    match raw.config {
        Some(c) if is_digest(&c.digest) => {
            let c_media = c.media_type.as_deref().unwrap_or("");
            if !c_media.is_empty()
                && c_media != "application/vnd.oci.image.config.v1+json"
                && c_media != "application/vnd.docker.container.image.v1+json"
            {
                return Err(format!(
                    "config media type {c_media:?} is not an image config"
                ));
            }
            Ok(Manifest::Image {
                config: c.digest,
                size: c.size,
            })
        }
        Some(_) => Err("the config digest is invalid".into()),
        None => Err(format!(
            "neither an index nor an image manifest (mediaType {media:?})"
        )),
    }
}

/// Picks `want`'s manifest from an index (an absent variant matches any; `arm64` accepts `v8`).
pub fn pick_platform<'a>(
    entries: &'a [(String, Option<Platform>)],
    want: &Platform,
) -> Option<&'a str> {
    entries
        .iter()
        .find(|(_, p)| {
            p.as_ref().is_some_and(|p| {
                p.os == want.os
                    && p.architecture == want.architecture
                    && match (&want.variant, &p.variant) {
                        (Some(w), Some(v)) => w == v,
                        _ => true,
                    }
            })
        })
        .map(|(d, _)| d.as_str())
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawExec>,
}

#[derive(Deserialize)]
struct RawExec {
    #[serde(default, rename = "Entrypoint")]
    entrypoint: Option<Vec<String>>,
    #[serde(default, rename = "Cmd")]
    cmd: Option<Vec<String>>,
}

/// The entrypoint and command of an image config blob.
pub fn parse_config(bytes: &[u8]) -> Result<ImageCommand, String> {
    let raw: RawConfig =
        serde_json::from_slice(bytes).map_err(|e| format!("not an image config: {e}"))?;
    let exec = raw.config.unwrap_or(RawExec {
        entrypoint: None,
        cmd: None,
    });
    Ok(ImageCommand {
        entrypoint: exec.entrypoint.unwrap_or_default(),
        cmd: exec.cmd.unwrap_or_default(),
    })
}

fn sha256_digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn digest_matches(expected: &str, bytes: &[u8]) -> bool {
    match expected.split_once(':') {
        Some(("sha256", _)) => sha256_digest(bytes) == expected,
        Some(("sha512", hex)) => {
            let d = ring::digest::digest(&ring::digest::SHA512, bytes);
            let got: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            got == hex
        }
        _ => false,
    }
}

/// How the [`Resolver`] reaches registries.
#[derive(Debug, Clone)]
pub struct ResolverOptions {
    /// Bound on one lookup (all of its requests).
    pub timeout: Duration,
    /// Extra CA certificates (PEM) trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Whether the system's CA store is trusted.
    pub system_roots: bool,
    /// Entries of the digest cache.
    pub cache_entries: u64,
    /// Platform picked from image indexes when the pod names none.
    pub platform: Platform,
    /// Registries (`host[:port]`, as written in images) reached over plain HTTP instead of
    /// HTTPS (e.g. an in-cluster registry without TLS); their token realms may be HTTP too.
    pub plain_http: Vec<String>,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            ca_file: None,
            system_roots: true,
            cache_entries: 1024,
            platform: Platform::linux("amd64"),
            plain_http: Vec::new(),
        }
    }
}

/// Why the resolver cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("cannot read the registry CA file {path}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the registry CA file {0} holds no PEM certificate")]
    CaFileEmpty(PathBuf),
    #[error("HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Reads image entrypoints from registries, with a bounded digest cache and a token cache.
pub struct Resolver {
    http: reqwest::Client,
    options: ResolverOptions,
    /// Manifest and config digests -> what the image runs.
    commands: moka::future::Cache<String, Arc<ImageCommand>>,
    /// (registry, repository, credential fingerprint) -> `Authorization` value.
    auth: moka::future::Cache<String, Arc<Zeroizing<String>>>,
}

struct Fetched {
    body: Vec<u8>,
    digest_header: Option<String>,
}

struct Ctx<'a> {
    image: &'a str,
    r: &'a ImageRef,
    creds: Option<&'a Credentials>,
}

impl Ctx<'_> {
    fn registry(&self) -> String {
        self.r.registry.clone()
    }

    fn auth_key(&self) -> String {
        format!(
            "{}\0{}\0{}",
            self.r.api_host(),
            self.r.repository,
            self.creds.map(Credentials::fingerprint).unwrap_or_default()
        )
    }
}

impl Resolver {
    pub fn new(options: ResolverOptions) -> Result<Self, ResolverError> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            // Blob downloads redirect to storage; reqwest drops `Authorization` across hosts.
            .redirect(reqwest::redirect::Policy::limited(3))
            .connect_timeout(options.timeout)
            .timeout(options.timeout)
            .user_agent(concat!("kvbridge/", env!("CARGO_PKG_VERSION")));
        if options.system_roots {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                if let Ok(c) = reqwest::Certificate::from_der(c.as_ref()) {
                    b = b.add_root_certificate(c);
                }
            }
        }
        if let Some(path) = &options.ca_file {
            let pem = std::fs::read(path).map_err(|source| ResolverError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| ResolverError::CaFileEmpty(path.clone()))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(ResolverError::Client)?;
        Ok(Self {
            http,
            commands: moka::future::Cache::builder()
                .max_capacity(options.cache_entries.max(1))
                .build(),
            auth: moka::future::Cache::builder()
                .max_capacity(1024)
                // Registry tokens live 60 s at least (distribution's token spec); Basic values
                // are cheap to rebuild.
                .time_to_live(Duration::from_secs(50))
                .build(),
            options,
        })
    }

    pub fn options(&self) -> &ResolverOptions {
        &self.options
    }

    fn http_error(&self, ctx: &Ctx<'_>, e: reqwest::Error) -> LookupError {
        if e.is_timeout() {
            LookupError::Timeout {
                image: ctx.image.to_string(),
                registry: ctx.registry(),
                timeout: self.options.timeout,
            }
        } else {
            LookupError::Http {
                image: ctx.image.to_string(),
                registry: ctx.registry(),
                source: e.without_url(),
            }
        }
    }

    fn scheme(&self, registry: &str) -> &'static str {
        if self
            .options
            .plain_http
            .iter()
            .any(|h| h.eq_ignore_ascii_case(registry))
        {
            "http"
        } else {
            "https"
        }
    }

    /// What `image` runs, for `platform` (default: the options'), with `creds` if any. Bounded
    /// by the options' timeout; never panics on what the registry sends.
    pub async fn lookup(
        &self,
        image: &str,
        creds: Option<&Credentials>,
        platform: Option<&Platform>,
    ) -> Result<Arc<ImageCommand>, LookupError> {
        let r = ImageRef::parse(image)?;
        let platform = platform.unwrap_or(&self.options.platform);
        let ctx = Ctx {
            image,
            r: &r,
            creds,
        };
        match tokio::time::timeout(self.options.timeout, self.lookup_inner(&ctx, platform)).await {
            Ok(r) => r,
            Err(_) => Err(LookupError::Timeout {
                image: image.to_string(),
                registry: r.registry.clone(),
                timeout: self.options.timeout,
            }),
        }
    }

    async fn lookup_inner(
        &self,
        ctx: &Ctx<'_>,
        platform: &Platform,
    ) -> Result<Arc<ImageCommand>, LookupError> {
        // A reference by digest is answered without asking the registry only for the
        // repository and credentials that have read it before: a pod cannot learn a private
        // image's entrypoint from another pod's lookup by naming its digest.
        let access_key = |d: &str| {
            format!(
                "{}/{}@{d}#{platform}|{}",
                ctx.r.api_host(),
                ctx.r.repository,
                ctx.creds.map(Credentials::fingerprint).unwrap_or_default()
            )
        };
        if let Some(d) = &ctx.r.digest {
            if let Some(hit) = self.commands.get(&access_key(d)).await {
                return Ok(hit);
            }
        }
        let command = self.resolve(ctx, platform).await?;
        if let Some(d) = &ctx.r.digest {
            self.commands.insert(access_key(d), command.clone()).await;
        }
        Ok(command)
    }

    /// What the image runs: its manifest (by tag or digest) from the registry, then what is not
    /// cached yet.
    async fn resolve(
        &self,
        ctx: &Ctx<'_>,
        platform: &Platform,
    ) -> Result<Arc<ImageCommand>, LookupError> {
        // An image manifest's digest is cached as it is; an index's with the platform picked.
        let per_platform = |d: &str| format!("{d}#{platform}");
        let invalid = |what: &'static str, reason: String| LookupError::Invalid {
            image: ctx.image.to_string(),
            registry: ctx.registry(),
            what,
            reason,
        };
        let top = self
            .get(
                ctx,
                &format!("manifests/{}", ctx.r.reference()),
                ACCEPT_MANIFESTS,
                MAX_MANIFEST,
                "manifest",
            )
            .await?;
        let top_digest = match &ctx.r.digest {
            Some(d) => {
                if !digest_matches(d, &top.body) {
                    return Err(invalid("manifest", format!("its content is not {d}")));
                }
                d.clone()
            }
            None => top
                .digest_header
                .filter(|d| is_digest(d) && digest_matches(d, &top.body))
                .unwrap_or_else(|| sha256_digest(&top.body)),
        };
        if let Some(hit) = self.commands.get(&top_digest).await {
            return Ok(hit);
        }
        let mut manifest = parse_manifest(&top.body).map_err(|e| invalid("manifest", e))?;
        let mut keys = vec![top_digest.clone()];
        if let Manifest::Index(entries) = &manifest {
            keys[0] = per_platform(&top_digest);
            if let Some(hit) = self.commands.get(&keys[0]).await {
                return Ok(hit);
            }
            let Some(child) = pick_platform(entries, platform) else {
                let mut available: Vec<String> = entries
                    .iter()
                    .filter_map(|(_, p)| p.as_ref().map(ToString::to_string))
                    .collect();
                available.truncate(16);
                return Err(LookupError::NoPlatform {
                    image: ctx.image.to_string(),
                    platform: platform.to_string(),
                    available: available.join(", "),
                });
            };
            let child = child.to_string();
            if let Some(hit) = self.commands.get(&child).await {
                return Ok(hit);
            }
            let m = self
                .get(
                    ctx,
                    &format!("manifests/{child}"),
                    ACCEPT_MANIFESTS,
                    MAX_MANIFEST,
                    "manifest",
                )
                .await?;
            if !digest_matches(&child, &m.body) {
                return Err(invalid("manifest", format!("its content is not {child}")));
            }
            manifest = parse_manifest(&m.body).map_err(|e| invalid("manifest", e))?;
            keys.push(child);
        }
        let Manifest::Image { config, size } = manifest else {
            return Err(invalid(
                "manifest",
                "an index entry is itself an index".into(),
            ));
        };
        if size.is_some_and(|s| s > MAX_CONFIG as u64) {
            return Err(LookupError::TooLarge {
                image: ctx.image.to_string(),
                registry: ctx.registry(),
                what: "config",
                limit: MAX_CONFIG,
            });
        }
        let command = match self.commands.get(&config).await {
            Some(hit) => hit,
            None => {
                let blob = self
                    .get(
                        ctx,
                        &format!("blobs/{config}"),
                        "application/vnd.oci.image.config.v1+json, application/vnd.docker.container.image.v1+json, */*",
                        MAX_CONFIG,
                        "config",
                    )
                    .await?;
                if !digest_matches(&config, &blob.body) {
                    return Err(invalid("config", format!("its content is not {config}")));
                }
                let c = Arc::new(parse_config(&blob.body).map_err(|e| invalid("config", e))?);
                self.commands.insert(config, c.clone()).await;
                c
            }
        };
        for k in keys {
            self.commands.insert(k, command.clone()).await;
        }
        Ok(command)
    }

    /// GET `/v2/<repository>/<path>`, answering an authentication challenge once.
    async fn get(
        &self,
        ctx: &Ctx<'_>,
        path: &str,
        accept: &str,
        limit: usize,
        what: &'static str,
    ) -> Result<Fetched, LookupError> {
        let url = format!(
            "{}://{}/v2/{}/{}",
            self.scheme(&ctx.r.registry),
            ctx.r.api_host(),
            ctx.r.repository,
            path
        );
        let key = ctx.auth_key();
        let cached = self.auth.get(&key).await;
        let mut resp = self.send(ctx, &url, accept, cached.as_deref()).await?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            if let Some(auth) = self.authenticate(ctx, &challenges).await? {
                let auth = Arc::new(auth);
                self.auth.insert(key, auth.clone()).await;
                resp = self.send(ctx, &url, accept, Some(&auth)).await?;
            }
        }
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(LookupError::Unauthorized {
                image: ctx.image.to_string(),
                registry: ctx.registry(),
                status: status.as_u16(),
                hint: if ctx.creds.is_some() {
                    "the pull credentials found for this registry were not accepted; check the imagePullSecret, or set `command:` in the container"
                } else {
                    AUTH_HINT
                },
            });
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(LookupError::NotFound {
                image: ctx.image.to_string(),
                registry: ctx.registry(),
                what,
            });
        }
        if !status.is_success() {
            return Err(LookupError::Status {
                image: ctx.image.to_string(),
                registry: ctx.registry(),
                what,
                status: status.as_u16(),
            });
        }
        let digest_header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = self.read_bounded(ctx, resp, limit, what).await?;
        Ok(Fetched {
            body,
            digest_header,
        })
    }

    async fn send(
        &self,
        ctx: &Ctx<'_>,
        url: &str,
        accept: &str,
        auth: Option<&Zeroizing<String>>,
    ) -> Result<reqwest::Response, LookupError> {
        let mut req = self.http.get(url).header(reqwest::header::ACCEPT, accept);
        if let Some(a) = auth {
            let mut v = reqwest::header::HeaderValue::from_str(a.as_str()).map_err(|_| {
                LookupError::Invalid {
                    image: ctx.image.to_string(),
                    registry: ctx.registry(),
                    what: "token",
                    reason: "not a valid header value".into(),
                }
            })?;
            v.set_sensitive(true);
            req = req.header(reqwest::header::AUTHORIZATION, v);
        }
        req.send().await.map_err(|e| self.http_error(ctx, e))
    }

    async fn read_bounded(
        &self,
        ctx: &Ctx<'_>,
        mut resp: reqwest::Response,
        limit: usize,
        what: &'static str,
    ) -> Result<Vec<u8>, LookupError> {
        let too_large = || LookupError::TooLarge {
            image: ctx.image.to_string(),
            registry: ctx.registry(),
            what,
            limit,
        };
        if resp.content_length().is_some_and(|l| l > limit as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            let chunk = resp.chunk().await.map_err(|e| self.http_error(ctx, e))?;
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The `Authorization` value answering `challenges`, or `None` when none can be answered.
    async fn authenticate(
        &self,
        ctx: &Ctx<'_>,
        challenges: &[Challenge],
    ) -> Result<Option<Zeroizing<String>>, LookupError> {
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            return self.token(ctx, bearer).await.map(Some);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            return Ok(ctx.creds.map(Credentials::basic));
        }
        Ok(None)
    }

    /// A Bearer token from the challenge's realm (distribution's token protocol).
    async fn token(
        &self,
        ctx: &Ctx<'_>,
        challenge: &Challenge,
    ) -> Result<Zeroizing<String>, LookupError> {
        let invalid = |reason: &str| LookupError::Invalid {
            image: ctx.image.to_string(),
            registry: ctx.registry(),
            what: "authentication challenge",
            reason: reason.to_string(),
        };
        let realm = challenge
            .params
            .get("realm")
            .ok_or_else(|| invalid("Bearer without realm"))?;
        let mut url = reqwest::Url::parse(realm).map_err(|_| invalid("the realm is not a URL"))?;
        let realm_host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        if url.scheme() != "https"
            && !(url.scheme() == "http" && self.scheme(&realm_host) == "http")
        {
            return Err(invalid("the token realm is not https"));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = challenge.params.get("service") {
                q.append_pair("service", s);
            }
            let scope = challenge
                .params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", ctx.r.repository));
            q.append_pair("scope", &scope);
        }
        let mut req = self.http.get(url);
        if let Some(c) = ctx.creds {
            let mut v = reqwest::header::HeaderValue::from_str(c.basic().as_str())
                .map_err(|_| invalid("the pull credentials are not a valid header value"))?;
            v.set_sensitive(true);
            req = req.header(reqwest::header::AUTHORIZATION, v);
        }
        let resp = req.send().await.map_err(|e| self.http_error(ctx, e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(LookupError::Unauthorized {
                image: ctx.image.to_string(),
                registry: ctx.registry(),
                status: status.as_u16(),
                hint: if ctx.creds.is_some() {
                    "the token service did not accept the pull credentials; check the imagePullSecret, or set `command:` in the container"
                } else {
                    AUTH_HINT
                },
            });
        }
        if !status.is_success() {
            return Err(LookupError::Status {
                image: ctx.image.to_string(),
                registry: ctx.registry(),
                what: "token",
                status: status.as_u16(),
            });
        }
        let body = Zeroizing::new(self.read_bounded(ctx, resp, MAX_TOKEN, "token").await?);
        parse_token(&body)
            .map(|t| Zeroizing::new(format!("Bearer {}", t.as_str())))
            .ok_or_else(|| invalid("the token response holds no token"))
    }
}

/// The token of a token-service response (`token` or `access_token`).
pub fn parse_token(body: &[u8]) -> Option<Zeroizing<String>> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    let raw: Raw = serde_json::from_slice(body).ok()?;
    let t = raw.token.or(raw.access_token).filter(|t| {
        !t.is_empty() && t.len() <= MAX_TOKEN && t.bytes().all(|b| b.is_ascii_graphic())
    })?;
    Some(Zeroizing::new(t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn references() {
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            ("docker.io", "library/nginx", "latest")
        );
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = ImageRef::parse("bitnami/redis:7.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            ("docker.io", "bitnami/redis", "7.2")
        );
        let r = ImageRef::parse("127.0.0.1:5000/team/app:1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference()),
            ("127.0.0.1:5000", "team/app", "1.0")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("myacr.azurecr.io/app:1@{d}")).unwrap();
        assert_eq!(r.reference(), d);
        assert_eq!(r.tag.as_deref(), Some("1"));
        let r = ImageRef::parse("localhost/app").unwrap();
        assert_eq!(r.registry, "localhost");
        for bad in [
            "",
            "UPPER/case",
            "app@sha256:zz",
            "host:5000/app:",
            "a//b",
            "app:-x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/nginx:pull");
        let c = parse_challenges(
            r#"Basic realm="a \"quoted\" realm", Bearer realm=https://x/t , error=insufficient_scope"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "a \"quoted\" realm");
        assert_eq!(c[1].params["realm"], "https://x/t");
        assert_eq!(c[1].params["error"], "insufficient_scope");
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic").len(), 1);
    }

    #[test]
    fn docker_configs_and_matching() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let json = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": b64("hub:hubpass")},
            "myacr.azurecr.io": {"username": "u", "password": "p"},
            "myacr.azurecr.io/team": {"auth": b64("team:teampass")},
            "*.example.com": {"auth": b64("wild:card")},
            "broken.example": {"auth": "%%%"},
            "tok.example": {"identitytoken": "refresh"},
        }});
        let c = DockerConfig::parse(json.to_string().as_bytes()).unwrap();
        assert!(!c.auths.contains_key("broken.example"));
        let configs = [c];
        let user = |image: &str| {
            credentials_for(&configs, &ImageRef::parse(image).unwrap()).map(|c| c.username.clone())
        };
        assert_eq!(user("nginx").as_deref(), Some("hub"));
        assert_eq!(user("myacr.azurecr.io/other/app:1").as_deref(), Some("u"));
        assert_eq!(user("myacr.azurecr.io/team/app:1").as_deref(), Some("team"));
        assert_eq!(user("myacr.azurecr.io/teamx/app").as_deref(), Some("u"));
        assert_eq!(user("r.example.com/app").as_deref(), Some("wild"));
        assert_eq!(user("a.b.example.com/app"), None);
        assert_eq!(
            user("tok.example/app").as_deref(),
            Some("00000000-0000-0000-0000-000000000000")
        );
        assert_eq!(user("quay.io/app"), None);
        // .dockercfg: the map itself.
        let legacy = serde_json::json!({"quay.io": {"auth": b64("q:w")}});
        let c = DockerConfig::parse(legacy.to_string().as_bytes()).unwrap();
        assert_eq!(c.auths["quay.io"].username, "q");
        // Debug never shows the password.
        let dbg = format!("{:?}", c.auths["quay.io"]);
        assert!(!dbg.contains('w') || !dbg.contains("\"w\""), "{dbg}");
        assert!(dbg.contains("redacted"));
        assert!(DockerConfig::parse(b"[1]").is_err());
    }

    #[test]
    fn manifests_and_configs() {
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d1, "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d2, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d2, "size": 1, "platform": {"os": "unknown", "architecture": "unknown"}}
        ]});
        let Manifest::Index(entries) = parse_manifest(index.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(
            pick_platform(&entries, &Platform::linux("amd64")),
            Some(d2.as_str())
        );
        assert_eq!(
            pick_platform(&entries, &Platform::parse("linux/arm64/v8").unwrap()),
            Some(d1.as_str())
        );
        assert_eq!(pick_platform(&entries, &Platform::linux("s390x")), None);
        let image = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": d1, "size": 7}, "layers": []});
        assert_eq!(
            parse_manifest(image.to_string().as_bytes()).unwrap(),
            Manifest::Image {
                config: d1.clone(),
                size: Some(7)
            }
        );
        let artifact = serde_json::json!({"schemaVersion": 2, "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": d1}});
        assert!(parse_manifest(artifact.to_string().as_bytes()).is_err());
        assert!(parse_manifest(br#"{"schemaVersion": 1, "fsLayers": []}"#).is_err());

        let config = br#"{"architecture": "amd64", "config": {"Entrypoint": ["/bin/app"], "Cmd": ["serve", "--x"]}}"#;
        let c = parse_config(config).unwrap();
        assert_eq!(c.entrypoint, ["/bin/app"]);
        assert_eq!(c.cmd, ["serve", "--x"]);
        assert_eq!(
            parse_config(br#"{"config": {"Entrypoint": null}}"#).unwrap(),
            ImageCommand::default()
        );
        assert_eq!(parse_config(b"{}").unwrap(), ImageCommand::default());
    }

    #[test]
    fn compose_follows_kubernetes() {
        let c = ImageCommand {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["default".into()],
        };
        assert_eq!(c.compose(None), ["/ep", "default"]);
        assert_eq!(
            c.compose(Some(&["a".into(), "b".into()])),
            ["/ep", "a", "b"]
        );
        let cmd_only = ImageCommand {
            entrypoint: vec![],
            cmd: vec!["nginx".into(), "-g".into()],
        };
        assert_eq!(cmd_only.compose(None), ["nginx", "-g"]);
        assert_eq!(cmd_only.compose(Some(&["x".into()])), ["x"]);
    }

    #[test]
    fn tokens() {
        assert_eq!(
            parse_token(br#"{"token": "abc", "expires_in": 60}"#)
                .unwrap()
                .as_str(),
            "abc"
        );
        assert_eq!(
            parse_token(br#"{"access_token": "def"}"#).unwrap().as_str(),
            "def"
        );
        assert!(parse_token(br#"{"token": "a\nb"}"#).is_none());
        assert!(parse_token(b"nope").is_none());
    }

    /// What the fake registry answers for a request path.
    enum Reply {
        /// Status line + headers + body, written as they are.
        Raw(Vec<u8>),
        /// Headers, then an endless chunked body.
        Endless,
        /// Nothing, ever.
        Hang,
    }

    fn http(status: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(body);
        Reply::Raw(out)
    }

    /// A hostile registry on loopback (plain HTTP): each request's path and `Authorization`
    /// header go to `handler`. Returns `host:port`.
    async fn fake_registry(
        handler: impl Fn(&str, Option<&str>) -> Reply + Send + Sync + 'static,
    ) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let handler = Arc::new(handler);
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    loop {
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(byte[0]);
                        }
                        let head = String::from_utf8_lossy(&head).to_string();
                        let path = head.split(' ').nth(1).unwrap_or("").to_string();
                        let auth = head
                            .lines()
                            .find_map(|l| l.strip_prefix("authorization: "))
                            .map(str::to_string);
                        match handler(&path, auth.as_deref()) {
                            Reply::Raw(bytes) => {
                                if tcp.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Reply::Endless => {
                                let _ = tcp
                                    .write_all(
                                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                                    )
                                    .await;
                                let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
                                while tcp.write_all(chunk.as_bytes()).await.is_ok() {}
                                return;
                            }
                            Reply::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        host
    }

    fn resolver(host: &str, timeout: Duration) -> Resolver {
        Resolver::new(ResolverOptions {
            timeout,
            system_roots: false,
            plain_http: vec![host.to_string()],
            ..ResolverOptions::default()
        })
        .unwrap()
    }

    fn image_documents() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let config = br#"{"config": {"Entrypoint": ["/srv"], "Cmd": ["--fast"]}}"#.to_vec();
        let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
            "layers": []}).to_string().into_bytes();
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256_digest(&manifest),
                "size": manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}}]})
            .to_string()
            .into_bytes();
        (index, manifest, config)
    }

    #[tokio::test]
    async fn basic_auth_flow_and_cache() {
        let (index, manifest, config) = image_documents();
        let (m_digest, c_digest) = (sha256_digest(&manifest), sha256_digest(&config));
        let index_digest = sha256_digest(&index);
        let served_index_digest = index_digest.clone();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let creds = Credentials::new("u", "s3cret-pass");
        let expected = creds.basic().to_string();
        let host = fake_registry(move |path, auth| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if auth != Some(expected.as_str()) {
                return http(
                    "401 Unauthorized",
                    &[("WWW-Authenticate", r#"Basic realm="r""#)],
                    b"",
                );
            }
            if path == "/v2/team/app/manifests/1"
                || path == format!("/v2/team/app/manifests/{served_index_digest}")
            {
                http(
                    "200 OK",
                    &[("Content-Type", "application/vnd.oci.image.index.v1+json")],
                    &index,
                )
            } else if path == format!("/v2/team/app/manifests/{m_digest}") {
                http("200 OK", &[], &manifest)
            } else if path == format!("/v2/team/app/blobs/{c_digest}") {
                http("200 OK", &[], &config)
            } else {
                http("404 Not Found", &[], b"")
            }
        })
        .await;
        let r = resolver(&host, Duration::from_secs(5));
        let image = format!("{host}/team/app:1");
        let c = r.lookup(&image, Some(&creds), None).await.unwrap();
        assert_eq!(c.compose(None), ["/srv", "--fast"]);
        // 401 + index, manifest, config (the Basic value is remembered).
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 4);
        r.lookup(&image, Some(&creds), None).await.unwrap();
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            5,
            "warm: one request"
        );
        // By digest: one manifest request the first time, none after (same credentials).
        let by_digest = format!("{host}/team/app@{index_digest}");
        r.lookup(&by_digest, Some(&creds), None).await.unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 6);
        r.lookup(&by_digest, Some(&creds), None).await.unwrap();
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 6);
        // Other (or no) credentials are not answered from the cache: the registry decides.
        let e = r.lookup(&by_digest, None, None).await.unwrap_err();
        assert!(matches!(e, LookupError::Unauthorized { .. }), "{e}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 7);
        // Without credentials: refused, with the hint; the password is in no message.
        let e = r.lookup(&image, None, None).await.unwrap_err();
        assert!(
            matches!(e, LookupError::Unauthorized { status: 401, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("imagePullSecret"), "{e}");
        let wrong = Credentials::new("u", "wrong-pass");
        let e = r.lookup(&image, Some(&wrong), None).await.unwrap_err();
        assert!(e.to_string().contains("not accepted"), "{e}");
        assert!(!format!("{e} {e:?}").contains("wrong-pass"));
        // Another platform: none in the index.
        let e = r
            .lookup(&image, Some(&creds), Some(&Platform::linux("riscv64")))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("linux/amd64"), "{e}");
    }

    #[tokio::test]
    async fn hostile_registries_are_bounded() {
        let (_, manifest, _) = image_documents();
        let huge_length = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 1u64 << 40);
        let host = fake_registry(move |path, _| match path {
            "/v2/a/manifests/huge" => Reply::Raw(huge_length.clone().into_bytes()),
            "/v2/a/manifests/endless" => Reply::Endless,
            "/v2/a/manifests/hang" => Reply::Hang,
            "/v2/a/manifests/garbage" => http("200 OK", &[], b"\x00\xff{[not json"),
            "/v2/a/manifests/http-realm" => http(
                "401 Unauthorized",
                &[(
                    "WWW-Authenticate",
                    r#"Bearer realm="http://evil.example/token",service="x""#,
                )],
                b"",
            ),
            "/v2/a/manifests/bad-blob" => http("200 OK", &[], &manifest),
            p if p.starts_with("/v2/a/manifests/sha256:") => http("200 OK", &[], &manifest),
            // The config blob's content does not match its digest.
            p if p.starts_with("/v2/a/blobs/") => {
                http("200 OK", &[], br#"{"config": {"Entrypoint": ["/evil"]}}"#)
            }
            "/v2/a/manifests/loop" => {
                http("302 Found", &[("Location", "/v2/a/manifests/loop")], b"")
            }
            _ => http("500 Internal Server Error", &[], b""),
        })
        .await;
        let r = resolver(&host, Duration::from_millis(1500));
        let lookup = |tag: &str| {
            let image = format!("{host}/a:{tag}");
            let r = &r;
            async move { r.lookup(&image, None, None).await.unwrap_err() }
        };
        assert!(matches!(
            lookup("huge").await,
            LookupError::TooLarge {
                limit: MAX_MANIFEST,
                ..
            }
        ));
        assert!(matches!(
            lookup("endless").await,
            LookupError::TooLarge {
                limit: MAX_MANIFEST,
                ..
            }
        ));
        assert!(matches!(lookup("hang").await, LookupError::Timeout { .. }));
        assert!(matches!(
            lookup("garbage").await,
            LookupError::Invalid {
                what: "manifest",
                ..
            }
        ));
        let e = lookup("http-realm").await;
        assert!(e.to_string().contains("not https"), "{e}");
        let e = lookup("bad-blob").await;
        assert!(
            matches!(&e, LookupError::Invalid { what: "config", reason, .. } if reason.contains("is not")),
            "{e}"
        );
        assert!(matches!(
            lookup("loop").await,
            LookupError::Http { .. } | LookupError::Status { .. }
        ));
        assert!(matches!(
            lookup("other").await,
            LookupError::Status { status: 500, .. }
        ));
        // A digest reference whose content differs is refused.
        let wrong = format!("{host}/a@sha256:{}", "0".repeat(64));
        let e = r.lookup(&wrong, None, None).await.unwrap_err();
        assert!(
            matches!(&e, LookupError::Invalid { what: "manifest", reason, .. } if reason.contains("is not")),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn challenge_parser_never_panics(s in "\\PC{0,300}") {
            let c = parse_challenges(&s);
            prop_assert!(c.len() <= 8);
        }

        #[test]
        fn challenge_parser_on_header_like_input(s in "[A-Za-z =,\"\\\\/:._-]{0,200}") {
            let _ = parse_challenges(&s);
        }

        #[test]
        fn challenge_round_trip(realm in "[a-z:/._-]{1,40}", service in "[a-z.]{1,20}") {
            let c = parse_challenges(&format!("Bearer realm=\"{realm}\",service=\"{service}\""));
            prop_assert_eq!(c.len(), 1);
            prop_assert_eq!(&c[0].params["realm"], &realm);
            prop_assert_eq!(&c[0].params["service"], &service);
        }

        #[test]
        fn manifest_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_manifest(&bytes);
            let _ = parse_config(&bytes);
            let _ = parse_token(&bytes);
            let _ = DockerConfig::parse(&bytes);
        }

        #[test]
        fn json_like_manifests_never_panic(s in "[{}\\[\\]\":,a-zA-Z0-9 ]{0,300}") {
            let _ = parse_manifest(s.as_bytes());
            let _ = parse_config(s.as_bytes());
        }

        #[test]
        fn references_never_panic(s in "\\PC{0,200}") {
            if let Ok(r) = ImageRef::parse(&s) {
                prop_assert!(!r.repository.is_empty());
            }
        }
    }
}
