//! The pure mapping: an `AzureKeyVaultSecret` and the vault object fetched for it -> the Secret
//! and/or ConfigMap it should produce. No I/O; errors never quote secret material.
//!
//! Rules (akv2k8s's, with the deviations marked *kvbridge*):
//!
//! | object type | output | result |
//! |---|---|---|
//! | `secret` | Secret `kubernetes.io/basic-auth` | `username`, `password` from `user:pass` (*kvbridge*: split at the first `:`, so passwords may contain `:`) |
//! | `secret` | Secret `kubernetes.io/dockerconfigjson` / `dockercfg` | `.dockerconfigjson` / `.dockercfg` (must be JSON) |
//! | `secret` | Secret `kubernetes.io/ssh-auth` | `ssh-privatekey` |
//! | `secret` | Secret `kubernetes.io/tls` | value = base64 PFX or PEM: `tls.crt`, `tls.key`, `ca.crt` |
//! | `secret` | Secret of another type, ConfigMap | the value at `dataKey` |
//! | `certificate` | Secret `kubernetes.io/tls` | `tls.crt` (chain, order below), `tls.key` (PKCS#8), *kvbridge* `ca.crt` (the issuers) |
//! | `certificate` | Secret `Opaque` (exactly) | the stored value at `dataKey`: PFX bytes or PEM text |
//! | `certificate` | Secret of another type, ConfigMap | the certificate PEM at `dataKey` |
//! | `key` | Secret, ConfigMap | *kvbridge* the PKIX `PUBLIC KEY` PEM at `dataKey`; akv2k8s wrote the RSA modulus (base64url `n`), kept behind [`KeyFormat::Akv2k8sModulus`] |
//! | `multi-key-value-secret` | Secret, ConfigMap | one key per entry of the JSON/YAML map; `dataKey` ignored |
//!
//! `transform`s (`trim`, `base64encode`, `base64decode`) apply, in order, to the value of a
//! `secret` object before the rules above (as akv2k8s); for other object types they are ignored
//! with a warning. `tls.crt` keeps the vault's order unless `chainOrder: ensureserverfirst`, which
//! orders it server certificate -> intermediates -> root (*kvbridge*: a real chain order; akv2k8s
//! moved the last certificate first, which is the same for Key Vault's usual PFX order).
//! ConfigMap values that are not UTF-8 go to `binaryData`.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use render::params::{ObjectEncoding, ObjectFormat, ObjectKind as RenderType, ObjectSpec};
use render::render::{FetchKey, Fetched, RenderOptions};
use zeroize::Zeroizing;

use crate::crd::{AzureKeyVaultSecretSpec, ChainOrder, ContentType, ObjectType, Transform};

/// Kubernetes' limit on a Secret's or ConfigMap's data (1 MiB).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;
/// Kubernetes' limit on a data key's length.
const MAX_KEY_LEN: usize = 253;
/// Bound on entries of a multi-key-value secret.
const MAX_ENTRIES: usize = 1024;

pub const TYPE_OPAQUE: &str = "Opaque";
pub const TYPE_TLS: &str = "kubernetes.io/tls";
pub const TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub const TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
pub const TYPE_BASIC_AUTH: &str = "kubernetes.io/basic-auth";
pub const TYPE_SSH_AUTH: &str = "kubernetes.io/ssh-auth";

/// How a `key` object is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyFormat {
    /// The PKIX `PUBLIC KEY` PEM (RSA and EC).
    #[default]
    Pem,
    /// akv2k8s compatibility: the RSA modulus `n` as Key Vault returns it (base64url text).
    Akv2k8sModulus,
}

/// Controller-wide switches that change the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapOptions {
    pub key_format: KeyFormat,
}

/// Why an object cannot be mapped. Never quotes the value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("spec.{field}: {reason}")]
    Spec { field: &'static str, reason: String },
    #[error("{object_type} {name:?}: {reason}")]
    Value {
        object_type: &'static str,
        name: String,
        reason: String,
    },
    #[error(transparent)]
    Render(#[from] render::render::RenderError),
}

impl MapError {
    /// Short reason for the `Ready` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            MapError::Spec { .. } => "InvalidSpec",
            MapError::Value { .. } | MapError::Render(_) => "InvalidVaultObject",
        }
    }
}

fn spec_err(field: &'static str, reason: impl Into<String>) -> MapError {
    MapError::Spec {
        field,
        reason: reason.into(),
    }
}

/// The Secret to write.
#[derive(Clone, PartialEq, Eq)]
pub struct DesiredSecret {
    pub name: String,
    pub secret_type: String,
    pub data: BTreeMap<String, Zeroizing<Vec<u8>>>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl fmt::Debug for DesiredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<(&String, usize)> = self.data.iter().map(|(k, v)| (k, v.len())).collect();
        f.debug_struct("DesiredSecret")
            .field("name", &self.name)
            .field("secret_type", &self.secret_type)
            .field("data (key, bytes)", &keys)
            .field("labels", &self.labels)
            .field("annotations", &self.annotations)
            .finish()
    }
}

impl DesiredSecret {
    /// SHA-256 over type, data, labels and annotations (hex): equal hashes = equal Secrets.
    pub fn content_hash(&self) -> String {
        let mut h = Hasher::new();
        h.field(b"secret");
        h.field(self.secret_type.as_bytes());
        h.map(self.data.iter().map(|(k, v)| (k.as_bytes(), v.as_slice())));
        h.map(
            self.labels
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        );
        h.map(
            self.annotations
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        );
        h.finish()
    }
}

/// The ConfigMap to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredConfigMap {
    pub name: String,
    pub data: BTreeMap<String, String>,
    pub binary_data: BTreeMap<String, Vec<u8>>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl DesiredConfigMap {
    pub fn content_hash(&self) -> String {
        let mut h = Hasher::new();
        h.field(b"configmap");
        h.map(self.data.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        h.map(
            self.binary_data
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice())),
        );
        h.map(
            self.labels
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        );
        h.map(
            self.annotations
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_bytes())),
        );
        h.finish()
    }
}

/// Everything one `AzureKeyVaultSecret` produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub secret: Option<DesiredSecret>,
    pub config_map: Option<DesiredConfigMap>,
    /// The vault object version the outputs hold.
    pub object_version: String,
    /// Things worth an event that do not stop the sync (e.g. ignored transforms).
    pub warnings: Vec<String>,
}

/// Length-prefixed SHA-256 so that no two different inputs share an encoding.
struct Hasher(ring::digest::Context);

impl Hasher {
    fn new() -> Self {
        Hasher(ring::digest::Context::new(&ring::digest::SHA256))
    }
    fn field(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_be_bytes());
        self.0.update(bytes);
    }
    fn map<'a>(&mut self, entries: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) {
        self.0.update(&(entries.len() as u64).to_be_bytes());
        for (k, v) in entries {
            self.field(k);
            self.field(v);
        }
    }
    fn finish(self) -> String {
        hex_lower(self.0.finish().as_ref())
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What has to be fetched from the vault for `spec`: a certificate whose private key is needed
/// (Secret output `kubernetes.io/tls` or `Opaque`) is read through its backing secret (one GET
/// that has key and chain); a certificate needed only for its public part through the
/// certificate itself.
pub fn fetch_key(spec: &AzureKeyVaultSecretSpec) -> FetchKey {
    let o = &spec.vault.object;
    let object_type = match o.object_type {
        ObjectType::Secret | ObjectType::MultiKeyValueSecret => RenderType::Secret,
        ObjectType::Key => RenderType::Key,
        ObjectType::Certificate if certificate_needs_private_key(spec) => RenderType::Secret,
        ObjectType::Certificate => RenderType::Certificate,
    };
    FetchKey {
        object_type,
        name: o.name.clone(),
        version: o.version.clone().filter(|v| !v.is_empty() && v != "latest"),
    }
}

fn certificate_needs_private_key(spec: &AzureKeyVaultSecretSpec) -> bool {
    spec.output
        .as_ref()
        .and_then(|o| o.secret.as_ref())
        .is_some_and(|s| matches!(s.secret_type.as_deref(), Some(TYPE_TLS | TYPE_OPAQUE)))
}

/// A render spec for error messages and render's validations.
fn render_spec(spec: &AzureKeyVaultSecretSpec, object_type: RenderType) -> ObjectSpec {
    ObjectSpec {
        index: 0,
        name: spec.vault.object.name.clone(),
        object_type,
        version: spec.vault.object.version.clone(),
        version_history: 1,
        alias: None,
        format: ObjectFormat::Pem,
        encoding: ObjectEncoding::Utf8,
        file_permission: None,
    }
}

/// Maps `spec` + the fetched object to the desired outputs.
pub fn desired(
    spec: &AzureKeyVaultSecretSpec,
    fetched: &Fetched,
    opts: &MapOptions,
) -> Result<Desired, MapError> {
    let output = spec.output.clone().unwrap_or_default();
    if output.secret.is_none() && output.config_map.is_none() {
        return Err(spec_err(
            "output",
            "neither output.secret nor output.configMap is set",
        ));
    }
    let want = fetch_key(spec);
    let got_type = match fetched {
        Fetched::Secret(_) => RenderType::Secret,
        Fetched::Key(_) => RenderType::Key,
        Fetched::Cert(_) => RenderType::Certificate,
    };
    if got_type != want.object_type {
        return Err(MapError::Value {
            object_type: spec.vault.object.object_type.as_str(),
            name: spec.vault.object.name.clone(),
            reason: format!(
                "fetched a {got_type} where a {} was needed",
                want.object_type
            ),
        });
    }
    let mut warnings = Vec::new();
    let transforms = output.transforms_in_order();
    if !transforms.is_empty() && spec.vault.object.object_type != ObjectType::Secret {
        warnings.push(format!(
            "spec.output.transform applies to secret objects only; ignored for a {}",
            spec.vault.object.object_type.as_str()
        ));
    }
    let value = ObjectValue::new(spec, fetched, &transforms, opts)?;

    let secret = match &output.secret {
        None => None,
        Some(out) => {
            if out.name.is_empty() {
                return Err(spec_err("output.secret.name", "must not be empty"));
            }
            let secret_type = match out.secret_type.as_deref() {
                None | Some("") => TYPE_OPAQUE.to_string(),
                // Kept as written: a Secret's type cannot change, and akv2k8s created Secrets
                // with the type exactly as the manifest spelled it (e.g. `opaque`).
                Some(t) => t.to_string(),
            };
            let data = value.secret_data(
                &secret_type,
                out.data_key.as_deref(),
                out.chain_order == Some(ChainOrder::EnsureServerFirst),
                &mut warnings,
            )?;
            check_data(
                "output.secret",
                data.iter().map(|(k, v)| (k.as_str(), v.len())),
            )?;
            Some(DesiredSecret {
                name: out.name.clone(),
                secret_type,
                data,
                labels: out.labels.clone().unwrap_or_default(),
                annotations: out.annotations.clone().unwrap_or_default(),
            })
        }
    };
    let config_map = match &output.config_map {
        None => None,
        Some(out) => {
            if out.name.is_empty() {
                return Err(spec_err("output.configMap.name", "must not be empty"));
            }
            let entries = value.config_map_data(out.data_key.as_deref())?;
            check_data(
                "output.configMap",
                entries.iter().map(|(k, v)| (k.as_str(), v.len())),
            )?;
            let mut data = BTreeMap::new();
            let mut binary_data = BTreeMap::new();
            for (k, v) in entries {
                match String::from_utf8(v.to_vec()) {
                    Ok(s) => {
                        data.insert(k, s);
                    }
                    Err(_) => {
                        binary_data.insert(k, v.to_vec());
                    }
                }
            }
            Some(DesiredConfigMap {
                name: out.name.clone(),
                data,
                binary_data,
                labels: out.labels.clone().unwrap_or_default(),
                annotations: out.annotations.clone().unwrap_or_default(),
            })
        }
    };
    Ok(Desired {
        secret,
        config_map,
        object_version: fetched.version().to_string(),
        warnings,
    })
}

/// A Secret/ConfigMap data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
pub fn valid_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_data<'a>(
    field: &'static str,
    entries: impl Iterator<Item = (&'a str, usize)>,
) -> Result<(), MapError> {
    let mut total = 0usize;
    for (k, len) in entries {
        if !valid_data_key(k) {
            return Err(spec_err(
                field,
                format!(
                    "{:?} is not a valid data key (letters, digits, '-', '_', '.'; at most 253)",
                    truncate(k)
                ),
            ));
        }
        total = total.saturating_add(k.len()).saturating_add(len);
    }
    if total > MAX_DATA_BYTES {
        return Err(spec_err(
            field,
            format!("the data would be {total} bytes; Kubernetes allows {MAX_DATA_BYTES}"),
        ));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The fetched object, decoded once for every output.
enum ObjectValue {
    /// A `secret`, after transforms.
    Secret {
        name: String,
        value: Zeroizing<Vec<u8>>,
        content_type: Option<String>,
    },
    /// A `multi-key-value-secret`'s entries.
    Map(BTreeMap<String, Zeroizing<Vec<u8>>>),
    /// A certificate with its private key (from the backing secret).
    CertWithKey {
        name: String,
        raw: Zeroizing<Vec<u8>>,
        bundle: pki::CertBundle,
        leaf: usize,
    },
    /// A certificate's public part.
    Cert { pem: String },
    /// A key, rendered.
    Key { text: String },
}

impl ObjectValue {
    fn new(
        spec: &AzureKeyVaultSecretSpec,
        fetched: &Fetched,
        transforms: &[Transform],
        opts: &MapOptions,
    ) -> Result<ObjectValue, MapError> {
        let object = &spec.vault.object;
        let value_err = |reason: String| MapError::Value {
            object_type: object.object_type.as_str(),
            name: object.name.clone(),
            reason,
        };
        match (object.object_type, fetched) {
            (ObjectType::Secret, Fetched::Secret(s)) => {
                let mut value = Zeroizing::new(s.value.as_bytes().to_vec());
                for t in transforms {
                    value = apply_transform(*t, &value).map_err(value_err)?;
                }
                Ok(ObjectValue::Secret {
                    name: object.name.clone(),
                    value,
                    content_type: s.content_type.clone(),
                })
            }
            (ObjectType::MultiKeyValueSecret, Fetched::Secret(s)) => {
                let ct = object.content_type.ok_or_else(|| {
                    spec_err(
                        "vault.object.contentType",
                        "a multi-key-value-secret needs application/x-json or application/x-yaml",
                    )
                })?;
                Ok(ObjectValue::Map(
                    parse_map(ct, &s.value).map_err(value_err)?,
                ))
            }
            (ObjectType::Certificate, Fetched::Secret(s)) => {
                let rspec = render_spec(spec, RenderType::Secret);
                let bundle = render::render::cert_secret_bundle(
                    &rspec,
                    &s.value,
                    s.content_type.as_deref(),
                )?;
                if bundle.certs.is_empty() {
                    return Err(value_err("holds no certificate".into()));
                }
                let leaf = leaf_index(&bundle).map_err(value_err)?;
                let raw = if s.content_type.as_deref() == Some(render::render::CONTENT_TYPE_PEM)
                    || s.value.trim_start().starts_with("-----BEGIN")
                {
                    Zeroizing::new(s.value.as_bytes().to_vec())
                } else {
                    Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(
                                s.value
                                    .bytes()
                                    .filter(|b| !b.is_ascii_whitespace())
                                    .collect::<Vec<u8>>(),
                            )
                            .map_err(|_| value_err("PFX value is not valid base64".into()))?,
                    )
                };
                Ok(ObjectValue::CertWithKey {
                    name: object.name.clone(),
                    raw,
                    bundle,
                    leaf,
                })
            }
            (ObjectType::Certificate, Fetched::Cert(_)) => {
                let files = render::render::render_object(
                    &render_spec(spec, RenderType::Certificate),
                    fetched,
                    "cert",
                    &RenderOptions::default(),
                )?;
                let pem = files
                    .first()
                    .and_then(|f| String::from_utf8(f.contents.to_vec()).ok())
                    .ok_or_else(|| value_err("the certificate did not render".into()))?;
                Ok(ObjectValue::Cert { pem })
            }
            (ObjectType::Key, Fetched::Key(k)) => {
                let text = match opts.key_format {
                    KeyFormat::Pem => {
                        let files = render::render::render_object(
                            &render_spec(spec, RenderType::Key),
                            fetched,
                            "key",
                            &RenderOptions::default(),
                        )?;
                        files
                            .first()
                            .and_then(|f| String::from_utf8(f.contents.to_vec()).ok())
                            .ok_or_else(|| value_err("the key did not render".into()))?
                    }
                    KeyFormat::Akv2k8sModulus => k.jwk.n.clone().ok_or_else(|| {
                        value_err(format!(
                            "the akv2k8s modulus format needs an RSA key, this is {}",
                            k.jwk.kty
                        ))
                    })?,
                };
                Ok(ObjectValue::Key { text })
            }
            (t, f) => Err(value_err(format!(
                "a {} cannot be made from a fetched {}",
                t.as_str(),
                f_type(f)
            ))),
        }
    }

    fn secret_data(
        &self,
        secret_type: &str,
        data_key: Option<&str>,
        server_first: bool,
        warnings: &mut Vec<String>,
    ) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, MapError> {
        let data_key_required = || -> Result<String, MapError> {
            match data_key {
                Some(k) if !k.is_empty() => Ok(k.to_string()),
                _ => Err(spec_err(
                    "output.secret.dataKey",
                    format!("required for a Secret of type {secret_type} from this object"),
                )),
            }
        };
        let one = |k: String, v: Zeroizing<Vec<u8>>| BTreeMap::from([(k, v)]);
        match self {
            ObjectValue::Secret {
                name,
                value,
                content_type,
            } => match secret_type {
                TYPE_BASIC_AUTH => {
                    let pos =
                        value
                            .iter()
                            .position(|b| *b == b':')
                            .ok_or_else(|| MapError::Value {
                                object_type: "secret",
                                name: name.clone(),
                                reason: "a basic-auth value must be 'username:password'".into(),
                            })?;
                    Ok(BTreeMap::from([
                        (
                            "username".to_string(),
                            Zeroizing::new(value[..pos].to_vec()),
                        ),
                        (
                            "password".to_string(),
                            Zeroizing::new(value[pos + 1..].to_vec()),
                        ),
                    ]))
                }
                TYPE_DOCKER_CONFIG_JSON | TYPE_DOCKERCFG => {
                    if serde_json::from_slice::<serde_json::Value>(value).is_err() {
                        return Err(MapError::Value {
                            object_type: "secret",
                            name: name.clone(),
                            reason: format!("a {secret_type} value must be JSON"),
                        });
                    }
                    let key = if secret_type == TYPE_DOCKERCFG {
                        ".dockercfg"
                    } else {
                        ".dockerconfigjson"
                    };
                    Ok(one(key.into(), value.clone()))
                }
                TYPE_SSH_AUTH => Ok(one("ssh-privatekey".into(), value.clone())),
                TYPE_TLS => {
                    let text = std::str::from_utf8(value).map_err(|_| MapError::Value {
                        object_type: "secret",
                        name: name.clone(),
                        reason: "a kubernetes.io/tls value must be base64 PFX or PEM text".into(),
                    })?;
                    let rspec = ObjectSpec {
                        index: 0,
                        name: name.clone(),
                        object_type: RenderType::Secret,
                        version: None,
                        version_history: 1,
                        alias: None,
                        format: ObjectFormat::Pem,
                        encoding: ObjectEncoding::Utf8,
                        file_permission: None,
                    };
                    let ct = content_type.as_deref().filter(|c| {
                        *c == render::render::CONTENT_TYPE_PEM
                            || *c == render::render::CONTENT_TYPE_PFX
                    });
                    let bundle = render::render::cert_secret_bundle(&rspec, text, ct)?;
                    let leaf = leaf_index(&bundle).map_err(|reason| MapError::Value {
                        object_type: "secret",
                        name: name.clone(),
                        reason,
                    })?;
                    tls_data(&bundle, leaf, server_first).map_err(|reason| MapError::Value {
                        object_type: "secret",
                        name: name.clone(),
                        reason,
                    })
                }
                _ => Ok(one(data_key_required()?, value.clone())),
            },
            ObjectValue::Map(entries) => {
                if data_key.is_some_and(|k| !k.is_empty()) {
                    warnings.push(
                        "output.secret.dataKey is ignored for a multi-key-value-secret".into(),
                    );
                }
                Ok(entries.clone())
            }
            ObjectValue::CertWithKey {
                name,
                raw,
                bundle,
                leaf,
            } => match secret_type {
                TYPE_TLS => {
                    tls_data(bundle, *leaf, server_first).map_err(|reason| MapError::Value {
                        object_type: "certificate",
                        name: name.clone(),
                        reason,
                    })
                }
                _ => Ok(one(data_key_required()?, raw.clone())),
            },
            ObjectValue::Cert { pem } => Ok(one(
                data_key_required()?,
                Zeroizing::new(pem.as_bytes().to_vec()),
            )),
            ObjectValue::Key { text } => Ok(one(
                data_key_required()?,
                Zeroizing::new(text.as_bytes().to_vec()),
            )),
        }
    }

    fn config_map_data(
        &self,
        data_key: Option<&str>,
    ) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, MapError> {
        let key = || -> Result<String, MapError> {
            match data_key {
                Some(k) if !k.is_empty() => Ok(k.to_string()),
                _ => Err(spec_err(
                    "output.configMap.dataKey",
                    "required for this object type",
                )),
            }
        };
        let one = |k: String, v: Vec<u8>| BTreeMap::from([(k, Zeroizing::new(v))]);
        match self {
            ObjectValue::Secret { value, .. } => Ok(one(key()?, value.to_vec())),
            ObjectValue::Map(entries) => Ok(entries.clone()),
            ObjectValue::CertWithKey { bundle, leaf, .. } => Ok(one(
                key()?,
                pki::pem_encode("CERTIFICATE", &bundle.certs[*leaf]).into_bytes(),
            )),
            ObjectValue::Cert { pem } => Ok(one(key()?, pem.as_bytes().to_vec())),
            ObjectValue::Key { text } => Ok(one(key()?, text.as_bytes().to_vec())),
        }
    }
}

fn f_type(f: &Fetched) -> &'static str {
    match f {
        Fetched::Secret(_) => "secret",
        Fetched::Key(_) => "key",
        Fetched::Cert(_) => "certificate",
    }
}

/// The server certificate: the one whose public key is the private key's; without a key, the
/// first of the chain order.
fn leaf_index(bundle: &pki::CertBundle) -> Result<usize, String> {
    if let Some(key) = &bundle.key {
        let spki = pki::spki_der(key).map_err(|e| format!("unusable private key: {e}"))?;
        for (i, der) in bundle.certs.iter().enumerate() {
            let info =
                pki::cert_info(der).map_err(|e| format!("certificate {} invalid: {e}", i + 1))?;
            if info.spki_der == spki {
                return Ok(i);
            }
        }
        return Err("no certificate matches the private key".into());
    }
    let ordered = pki::order_chain(&bundle.certs).map_err(|e| e.to_string())?;
    Ok(bundle
        .certs
        .iter()
        .position(|c| Some(c) == ordered.first())
        .unwrap_or(0))
}

/// `tls.crt`, `tls.key` and `ca.crt` from a key + chain.
fn tls_data(
    bundle: &pki::CertBundle,
    leaf: usize,
    server_first: bool,
) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, String> {
    let key = bundle.key.as_ref().ok_or_else(|| {
        "has no private key (is the certificate's key exportable?); kubernetes.io/tls needs one"
            .to_string()
    })?;
    let chain: Vec<Vec<u8>> = if server_first {
        let ordered = pki::order_chain(&bundle.certs).map_err(|e| e.to_string())?;
        if ordered.first() == bundle.certs.get(leaf) {
            ordered
        } else {
            // Not one complete chain: the server certificate first, the others as stored.
            let mut v = vec![bundle.certs[leaf].clone()];
            v.extend(
                bundle
                    .certs
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != leaf)
                    .map(|(_, c)| c.clone()),
            );
            v
        }
    } else {
        bundle.certs.clone()
    };
    // The issuers in chain order (leaf's issuer first); a self-signed server certificate alone
    // is its own CA.
    let ordered = pki::order_chain(&bundle.certs).map_err(|e| e.to_string())?;
    let issuers: Vec<Vec<u8>> = if ordered.first() == bundle.certs.get(leaf) {
        ordered[1..].to_vec()
    } else {
        bundle
            .certs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != leaf)
            .map(|(_, c)| c.clone())
            .collect()
    };
    let mut out = BTreeMap::new();
    out.insert(
        "tls.crt".to_string(),
        Zeroizing::new(pki::bundle_to_pem(None, &chain).into_bytes()),
    );
    out.insert(
        "tls.key".to_string(),
        Zeroizing::new(pki::pem_encode("PRIVATE KEY", key.pkcs8_der()).into_bytes()),
    );
    let ca = if issuers.is_empty() {
        let info = pki::cert_info(&bundle.certs[leaf]).map_err(|e| e.to_string())?;
        (info.subject == info.issuer).then(|| vec![bundle.certs[leaf].clone()])
    } else {
        Some(issuers)
    };
    if let Some(ca) = ca {
        out.insert(
            "ca.crt".to_string(),
            Zeroizing::new(pki::bundle_to_pem(None, &ca).into_bytes()),
        );
    }
    Ok(out)
}

fn apply_transform(t: Transform, value: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    Ok(Zeroizing::new(match t {
        Transform::Trim => match std::str::from_utf8(value) {
            Ok(s) => s.trim().as_bytes().to_vec(),
            Err(_) => value.trim_ascii().to_vec(),
        },
        Transform::Base64Encode => base64::engine::general_purpose::STANDARD
            .encode(value)
            .into_bytes(),
        Transform::Base64Decode => {
            let compact: Zeroizing<Vec<u8>> = Zeroizing::new(
                value
                    .iter()
                    .copied()
                    .filter(|b| !b.is_ascii_whitespace())
                    .collect(),
            );
            let engine = if compact.len() % 4 == 0 {
                &base64::engine::general_purpose::STANDARD
            } else {
                &base64::engine::general_purpose::STANDARD_NO_PAD
            };
            engine
                .decode(compact.as_slice())
                .map_err(|_| "transform base64decode: the value is not valid base64".to_string())?
        }
    }))
}

/// A JSON or YAML map of scalars -> entries (numbers and booleans as their text).
fn parse_map(ct: ContentType, text: &str) -> Result<BTreeMap<String, Zeroizing<Vec<u8>>>, String> {
    let value: serde_json::Value = match ct {
        ContentType::Json => serde_json::from_str(text)
            .map_err(|e| format!("not a JSON object (line {})", e.line()))?,
        ContentType::Yaml => serde_yaml_ng::from_str(text).map_err(|e| {
            format!(
                "not a YAML map (line {})",
                e.location().map(|l| l.line()).unwrap_or(0)
            )
        })?,
    };
    let serde_json::Value::Object(map) = value else {
        return Err("the value is not a map of keys to values".into());
    };
    if map.len() > MAX_ENTRIES {
        return Err(format!(
            "{} entries; at most {MAX_ENTRIES} are allowed",
            map.len()
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => String::new(),
            _ => {
                return Err(format!(
                    "entry {:?} is not a string, number or boolean",
                    truncate(&k)
                ))
            }
        };
        out.insert(k, Zeroizing::new(text.into_bytes()));
    }
    Ok(out)
}
