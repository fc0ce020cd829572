//! The dev vault's persistent state: vaults with their secrets, keys and certificates, identities
//! and access policies. One JSON document, written atomically (temp file, fsync, rename, fsync dir).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bumped when the on-disk layout changes incompatibly.
pub const STATE_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state file {path} is corrupt or half-written ({detail}); it was left untouched: \
         fix it, or move it away to start with an empty vault"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("state file {path} has format {found}, this kvbridge reads format {expected}")]
    Format {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub tenant: String,
    /// Vault names in declaration order; the first is the default vault.
    pub vault_order: Vec<String>,
    pub vaults: BTreeMap<String, Vault>,
    pub identities: Vec<Identity>,
    /// AAD Pod Identity bindings served by the NMI stand-in (`GET /host/token/`).
    #[serde(default)]
    pub pod_identities: Vec<PodIdentity>,
}

impl State {
    pub fn new(tenant: String) -> Self {
        Self {
            format: STATE_FORMAT,
            tenant,
            vault_order: Vec::new(),
            vaults: BTreeMap::new(),
            identities: Vec::new(),
            pod_identities: Vec::new(),
        }
    }

    pub fn default_vault(&self) -> String {
        self.vault_order
            .first()
            .cloned()
            .unwrap_or_else(|| crate::DEFAULT_VAULT.to_string())
    }

    /// The vault, created empty when unknown.
    pub fn vault_mut(&mut self, name: &str) -> &mut Vault {
        if !self.vault_order.iter().any(|v| v == name) {
            self.vault_order.push(name.to_string());
        }
        self.vaults.entry(name.to_string()).or_default()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Vault {
    #[serde(default)]
    pub secrets: BTreeMap<String, Versions<SecretVersion>>,
    #[serde(default)]
    pub deleted_secrets: BTreeMap<String, Deleted<SecretVersion>>,
    #[serde(default)]
    pub keys: BTreeMap<String, Versions<KeyVersion>>,
    #[serde(default)]
    pub certificates: BTreeMap<String, Versions<CertVersion>>,
    #[serde(default)]
    pub deleted_certificates: BTreeMap<String, DeletedCertificate>,
    /// `None`: every identity may do everything.
    #[serde(default)]
    pub access_policies: Option<Vec<AccessPolicy>>,
}

/// All versions of one object, oldest first; the last is the current one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versions<T> {
    pub versions: Vec<T>,
}

impl<T> Default for Versions<T> {
    fn default() -> Self {
        Self {
            versions: Vec::new(),
        }
    }
}

pub trait Versioned {
    fn version(&self) -> &str;
}

impl<T: Versioned> Versions<T> {
    pub fn latest(&self) -> Option<&T> {
        self.versions.last()
    }
    pub fn get(&self, version: &str) -> Option<&T> {
        self.versions.iter().find(|v| v.version() == version)
    }
    pub fn get_mut(&mut self, version: &str) -> Option<&mut T> {
        self.versions.iter_mut().find(|v| v.version() == version)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted<T> {
    pub object: Versions<T>,
    pub deleted_date: i64,
    pub scheduled_purge_date: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedCertificate {
    pub certificate: Versions<CertVersion>,
    pub secret: Option<Versions<SecretVersion>>,
    pub key: Option<Versions<KeyVersion>>,
    pub deleted_date: i64,
    pub scheduled_purge_date: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
}

pub type Tags = BTreeMap<String, String>;

#[derive(Clone, Serialize, Deserialize)]
pub struct SecretVersion {
    pub version: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    pub attributes: Attributes,
    /// `name/version` of the key backing a certificate's secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default)]
    pub managed: bool,
}

impl std::fmt::Debug for SecretVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVersion")
            .field("version", &self.version)
            .field("value", &"<redacted>")
            .field("content_type", &self.content_type)
            .field("attributes", &self.attributes)
            .field("managed", &self.managed)
            .finish()
    }
}

impl Versioned for SecretVersion {
    fn version(&self) -> &str {
        &self.version
    }
}

#[derive(Clone, Serialize, Deserialize)]
pub struct KeyVersion {
    pub version: String,
    /// `RSA`, `EC`, `RSA-HSM`, `EC-HSM`.
    pub kty: String,
    pub key_ops: Vec<String>,
    /// The public JWK members (n, e / crv, x, y).
    pub public: pki::PublicJwk,
    /// base64 PKCS#8 of the private key (never returned by the API).
    pub private_pkcs8: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    pub attributes: Attributes,
    #[serde(default)]
    pub managed: bool,
}

impl std::fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersion")
            .field("version", &self.version)
            .field("kty", &self.kty)
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

impl Versioned for KeyVersion {
    fn version(&self) -> &str {
        &self.version
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertVersion {
    pub version: String,
    /// base64 DER of the leaf certificate.
    pub cer: String,
    /// base64url SHA-1 thumbprint of the leaf.
    pub x5t: String,
    pub policy: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    pub attributes: Attributes,
}

impl Versioned for CertVersion {
    fn version(&self) -> &str {
        &self.version
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessPolicy {
    pub identity: String,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub certificates: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub client_id: String,
    pub object_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// base64 DER of registered certificates (client assertions).
    #[serde(default)]
    pub certificates: Vec<String>,
    #[serde(default)]
    pub federated: Vec<FederatedCredential>,
    #[serde(default)]
    pub managed_identity: bool,
    #[serde(default)]
    pub system_assigned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("client_id", &self.client_id)
            .field("object_id", &self.object_id)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("certificates", &self.certificates.len())
            .field("managed_identity", &self.managed_identity)
            .finish_non_exhaustive()
    }
}

/// An AAD Pod Identity binding: pod `namespace/pod_name` may get tokens of identity `client_id`
/// (what an AzureIdentity + AzureIdentityBinding + AzureAssignedIdentity amount to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod_name: String,
    pub client_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FederatedCredential {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    /// base64 DER SubjectPublicKeyInfo of the issuer's signing key.
    pub issuer_spki: String,
}

/// Reads `path`; `Ok(None)` when it does not exist. Never replaces a damaged file.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let probe: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("not valid JSON: {e}"),
        })?;
    let found = probe.get("format").and_then(|f| f.as_u64()).unwrap_or(0) as u32;
    if found != STATE_FORMAT {
        return Err(StateError::Format {
            path: path.to_path_buf(),
            found,
            expected: STATE_FORMAT,
        });
    }
    let state = serde_json::from_value(probe).map_err(|e| StateError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    Ok(Some(state))
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename, fsync
/// of the directory. Readers see the old or the new content, never a mix. Mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, 0o600)
}

/// [`write_atomic`] with the file mode given (e.g. 0644 for files that hold nothing secret).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".to_string());
    let tmp = dir.join(temp_name(&file_name, std::process::id()));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            // Created with its final mode: a copy of the state (secret values included) is never
            // readable by others, not even between open and chmod.
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        let mut f = options.open(&tmp)?;
        #[cfg(unix)]
        {
            // `mode` at creation is filtered by the umask, and an existing file keeps its mode.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The name [`write_atomic`] gives its temporary file for `file_name` in process `pid`.
fn temp_name(file_name: &str, pid: u32) -> String {
    format!(".{file_name}.tmp-{pid}")
}

/// Removes temporary files that [`write_atomic`] left in `dir` when a process was killed
/// mid-write (they can hold full copies of the state, secret values included). Files of a
/// process that is still running (another dev vault on the same directory) are left alone.
/// Returns the names removed.
pub fn remove_stale_temp_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp-"))
            .filter(|(file, _)| !file.is_empty())
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid == me || Path::new(&format!("/proc/{pid}")).exists();
        if alive || !entry.file_type()?.is_file() {
            continue;
        }
        std::fs::remove_file(entry.path())?;
        removed.push(name);
    }
    Ok(removed)
}

pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    write_atomic(path, &bytes).map_err(|source| StateError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert!(load(&path).unwrap().is_none());
        let mut s = State::new("t".into());
        s.vault_mut("v").secrets.insert(
            "a".into(),
            Versions {
                versions: vec![SecretVersion {
                    version: "0".repeat(32),
                    value: "x".into(),
                    content_type: None,
                    tags: None,
                    attributes: Attributes::default(),
                    kid: None,
                    managed: false,
                }],
            },
        );
        save(&path, &s).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.vaults["v"].secrets["a"].versions[0].value, "x");

        // Truncate mid-document: a half-written file.
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() / 2]).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("corrupt or half-written"), "{err}");
        assert!(err.contains("state.json"), "{err}");
        // Untouched.
        assert_eq!(std::fs::read(&path).unwrap(), &full[..full.len() / 2]);
    }

    #[test]
    fn debug_never_shows_secret_values() {
        let v = SecretVersion {
            version: "1".into(),
            value: "canary-value-123".into(),
            content_type: None,
            tags: None,
            attributes: Attributes::default(),
            kid: None,
            managed: false,
        };
        assert!(!format!("{v:?}").contains("canary-value-123"));
    }
}
