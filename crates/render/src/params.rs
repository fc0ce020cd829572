//! Parsing of the Azure provider's `SecretProviderClass.spec.parameters`.
//!
//! Semantics follow the Azure provider for the Secrets Store CSI Driver:
//! - every value (and every string field of an object) is whitespace-trimmed;
//! - booleans parse like Go's `strconv.ParseBool`, an empty value is `false`;
//! - `tenantID` wins over the deprecated `tenantId`;
//! - `objectType` is matched exactly (`secret`, `key`, `cert`), as the provider's `switch` does:
//!   `Secret` is rejected with an error naming the field rather than silently accepted;
//! - `objectFormat` and `objectEncoding` are case-insensitive (the provider uses `EqualFold`);
//!   unlike the provider, `PFX` (any case) on a key/cert is rejected too;
//! - kvbridge-only `objectFormat` values (the Azure provider rejects them, so no existing class
//!   uses them): `trust-bundle` (PEM: the system bundle plus the object's CA certificates) and
//!   `truststore` (the same as a PKCS#12 trust store for Java), for objectType `cert` or `secret`
//!   ([`crate::trust`]);
//! - file names: relative, never containing `..` anywhere (the provider's fallback check), so
//!   they also cannot clash with the writer's `..data` / `..<timestamp>` entries.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use crate::limits;

/// Default file mode of a mount when the caller has none (the driver sends 0644).
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Errors from parameter parsing. Every variant names the parameter or the object and field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamError {
    #[error("parameter {field} is not set")]
    Missing { field: &'static str },
    #[error("parameter {field}: invalid value {value:?}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("two identity modes set: {first} and {second}; set at most one of usePodIdentity, useVMManagedIdentity, clientID")]
    TwoIdentityModes {
        first: &'static str,
        second: &'static str,
    },
    #[error("parameters are {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("parameter objects: {reason}")]
    Objects { reason: String },
    #[error("objects[{index}] ({name:?}): field {field}: {reason}")]
    Object {
        index: usize,
        name: String,
        field: &'static str,
        reason: String,
    },
    #[error("objects[{index}] ({name:?}): unknown field {field:?}{hint}; known fields: {known}", known = OBJECT_FIELDS.join(", "))]
    UnknownField {
        index: usize,
        name: String,
        field: String,
        /// `; did you mean objectVersion?` or empty.
        hint: String,
    },
    #[error("objects[{index}] ({name:?}) and objects[{other_index}] ({other_name:?}) map to the same file name {path:?}")]
    DuplicateFile {
        index: usize,
        name: String,
        other_index: usize,
        other_name: String,
        path: String,
    },
}

/// How the provider authenticates to Key Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityMode {
    /// Service principal from the node-publish secret (`clientid`/`clientsecret`) or, for
    /// local use, the usual Azure environment variables.
    ServicePrincipal,
    /// aad-pod-identity (deprecated upstream).
    PodIdentity,
    /// VM / VMSS managed identity; optional user-assigned identity client id.
    VmManagedIdentity {
        user_assigned_identity_id: Option<String>,
    },
    /// Workload identity: federated service account token for this client id.
    WorkloadIdentity { client_id: String },
}

/// Object type (`objectType`): `secret`, `key` or `cert` ([`ObjectKind::object_type`]).
pub use model::ObjectKind;

/// `objectFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectFormat {
    Pem,
    Pfx,
    /// kvbridge only: the system bundle plus the object's CA certificates, PEM.
    TrustBundle,
    /// kvbridge only: the same as a PKCS#12 trust store ([`crate::trust::TRUSTSTORE_PASSWORD`]).
    TrustStore,
}

impl ObjectFormat {
    /// A CA trust format ([`crate::trust`]).
    pub fn is_trust(self) -> bool {
        matches!(self, ObjectFormat::TrustBundle | ObjectFormat::TrustStore)
    }
}

/// `objectEncoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectEncoding {
    Utf8,
    Base64,
    Hex,
}

/// One validated entry of the `objects` array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// Position in the `objects` array (for error messages).
    pub index: usize,
    pub name: String,
    pub object_type: ObjectKind,
    /// `None` = latest (`""` or `"latest"`).
    pub version: Option<String>,
    /// Number of versions to write; 1 means a single file without a `/<i>` suffix.
    pub version_history: u32,
    pub alias: Option<String>,
    pub format: ObjectFormat,
    pub encoding: ObjectEncoding,
    /// Mode from `filePermission`; `None` = the mount's permission.
    pub file_permission: Option<u32>,
}

impl ObjectSpec {
    /// The file name (alias, else the object name). With history it is a directory.
    pub fn file_name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }

    /// True when more than one version is written (`<file>/<i>`).
    pub fn is_history(&self) -> bool {
        self.version_history > 1
    }

    /// File mode for this object given the mount's default.
    pub fn mode(&self, default_mode: u32) -> u32 {
        self.file_permission.unwrap_or(default_mode)
    }
}

/// Parsed `spec.parameters`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameters {
    pub keyvault_name: String,
    /// `tenantID`, else the deprecated `tenantId`. The Azure provider requires it; local use may
    /// fall back to `AZURE_TENANT_ID`, so it is optional here (see [`Parameters::require_tenant`]).
    pub tenant_id: Option<String>,
    /// `cloudName`, trimmed (empty = the public cloud, or the component's default environment
    /// file). Resolved, with `cloudEnvFileName`, where clouds are known (`mount::target`).
    pub cloud_name: String,
    pub cloud_env_file_name: Option<String>,
    pub use_pod_identity: bool,
    pub use_vm_managed_identity: bool,
    pub user_assigned_identity_id: Option<String>,
    pub client_id: Option<String>,
    pub objects: Vec<ObjectSpec>,
}

fn get<'a>(map: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    map.get(key).map(|s| s.trim()).unwrap_or("")
}

fn non_empty(s: &str) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

/// Go's `strconv.ParseBool`, with empty meaning `false` (as the provider does).
pub fn parse_go_bool(field: &'static str, value: &str) -> Result<bool, ParamError> {
    match value.trim() {
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        other => Err(ParamError::Invalid {
            field,
            value: other.to_string(),
            reason: "not a boolean (use true or false)".into(),
        }),
    }
}

/// Validate `keyvaultName` with Key Vault's own rules ([`model::check_vault_name`]).
pub fn validate_vault_name(name: &str) -> Result<(), ParamError> {
    model::check_vault_name(name).map_err(|reason| ParamError::Invalid {
        field: "keyvaultName",
        value: name.to_string(),
        reason: reason.to_string(),
    })
}

impl Parameters {
    /// Parse and validate a parameters map.
    pub fn parse(map: &BTreeMap<String, String>) -> Result<Parameters, ParamError> {
        let size: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > limits::MAX_CLASS_BYTES {
            return Err(ParamError::TooLarge {
                size,
                limit: limits::MAX_CLASS_BYTES,
            });
        }
        let keyvault_name = get(map, "keyvaultName");
        if keyvault_name.is_empty() {
            return Err(ParamError::Missing {
                field: "keyvaultName",
            });
        }
        validate_vault_name(keyvault_name)?;

        let tenant_id = non_empty(get(map, "tenantID")).or_else(|| non_empty(get(map, "tenantId")));

        let cloud_name = get(map, "cloudName").to_string();
        let cloud_env_file_name = non_empty(get(map, "cloudEnvFileName"));

        let use_pod_identity = parse_go_bool("usePodIdentity", get(map, "usePodIdentity"))?;
        let use_vm_managed_identity =
            parse_go_bool("useVMManagedIdentity", get(map, "useVMManagedIdentity"))?;
        let user_assigned_identity_id = non_empty(get(map, "userAssignedIdentityID"));
        let client_id = non_empty(get(map, "clientID"));

        let mut modes: Vec<&'static str> = Vec::new();
        if use_pod_identity {
            modes.push("usePodIdentity");
        }
        if use_vm_managed_identity {
            modes.push("useVMManagedIdentity");
        }
        if client_id.is_some() {
            modes.push("clientID");
        }
        if let [first, second, ..] = modes[..] {
            return Err(ParamError::TwoIdentityModes { first, second });
        }

        let objects_text = get(map, "objects");
        if objects_text.is_empty() {
            return Err(ParamError::Missing { field: "objects" });
        }
        let objects = parse_objects(objects_text)?;

        Ok(Parameters {
            keyvault_name: keyvault_name.to_string(),
            tenant_id,
            cloud_name,
            cloud_env_file_name,
            use_pod_identity,
            use_vm_managed_identity,
            user_assigned_identity_id,
            client_id,
            objects,
        })
    }

    /// The tenant, or the error the Azure provider gives when it is missing.
    pub fn require_tenant(&self) -> Result<&str, ParamError> {
        self.tenant_id
            .as_deref()
            .ok_or(ParamError::Missing { field: "tenantID" })
    }

    /// The selected identity mode (validated to be at most one).
    pub fn identity(&self) -> IdentityMode {
        if self.use_pod_identity {
            IdentityMode::PodIdentity
        } else if self.use_vm_managed_identity {
            IdentityMode::VmManagedIdentity {
                user_assigned_identity_id: self.user_assigned_identity_id.clone(),
            }
        } else if let Some(client_id) = &self.client_id {
            IdentityMode::WorkloadIdentity {
                client_id: client_id.clone(),
            }
        } else {
            IdentityMode::ServicePrincipal
        }
    }
}

/// Render a YAML scalar as the string Go's yaml decoder would put into a string field.
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Tagged(t) => scalar_string(&t.value),
        _ => None,
    }
}

/// The fields of one object, as the Azure provider's `KeyVaultObject` has them.
pub const OBJECT_FIELDS: [&str; 8] = [
    "objectName",
    "objectType",
    "objectVersion",
    "objectVersionHistory",
    "objectAlias",
    "objectFormat",
    "objectEncoding",
    "filePermission",
];

/// `; did you mean X?` when `key` is a near miss of one of `known` (case or up to two edits).
fn did_you_mean(key: &str, known: &[&str]) -> String {
    if key.len() > 64 {
        return String::new();
    }
    let best = known
        .iter()
        .map(|k| {
            (
                edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                k,
            )
        })
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2 => format!("; did you mean {k}?"),
        _ => String::new(),
    }
}

/// Levenshtein distance of two short ASCII-ish strings (by chars).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn key_text(k: &Value) -> String {
    scalar_string(k).unwrap_or_else(|| "<non-scalar key>".into())
}

/// Parse the `objects` parameter (a YAML document with `array:` of YAML strings).
///
/// Stricter than the Azure provider where it silently loses data: an unknown field (a typo
/// such as `arrray:` or `objectVerison:`) and an empty list are errors, so a class can never
/// replace a mounted payload by an empty one by mistake. Size, nesting, object count and
/// history are bounded ([`crate::limits`]); every check is linear in the input.
pub fn parse_objects(text: &str) -> Result<Vec<ObjectSpec>, ParamError> {
    let objects_err = |reason: String| ParamError::Objects { reason };
    limits::check_yaml(text, limits::MAX_OBJECTS_BYTES).map_err(objects_err)?;
    let doc: Value =
        serde_yaml_ng::from_str(text).map_err(|e| objects_err(format!("invalid YAML: {e}")))?;
    let items = match doc {
        Value::Mapping(mut m) => {
            let unknown: Vec<String> = m.keys().map(key_text).filter(|k| k != "array").collect();
            if let Some(k) = unknown.first() {
                return Err(objects_err(format!(
                    "unknown field {k:?}{}; the objects parameter has one field, array",
                    did_you_mean(k, &["array"])
                )));
            }
            match m.remove("array") {
                None | Some(Value::Null) => {
                    return Err(objects_err(
                        "has no `array:` list of objects (array: [ \"objectName: ...\" ])".into(),
                    ))
                }
                Some(Value::Sequence(seq)) => seq,
                Some(_) => {
                    return Err(objects_err(
                        "field array: must be a list of YAML strings".into(),
                    ))
                }
            }
        }
        Value::Null => {
            return Err(objects_err(
                "is empty: it must be a YAML mapping with an `array:` list".into(),
            ))
        }
        _ => {
            return Err(objects_err(
                "must be a YAML mapping with an `array:` list".into(),
            ))
        }
    };
    if items.is_empty() {
        return Err(objects_err(
            "array is empty: list at least one object (a class mounting nothing would replace the mounted files by an empty directory)".into(),
        ));
    }
    if items.len() > limits::MAX_OBJECTS {
        return Err(objects_err(format!(
            "array has {} objects, more than the limit of {}",
            items.len(),
            limits::MAX_OBJECTS
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    let mut files: u64 = 0;
    for (index, item) in items.iter().enumerate() {
        let spec = parse_object(index, item)?;
        files += u64::from(spec.version_history);
        if files > limits::MAX_FILES {
            return Err(objects_err(format!(
                "the objects and their objectVersionHistory would write more than {} files",
                limits::MAX_FILES
            )));
        }
        out.push(spec);
    }
    check_file_names(&out)?;
    Ok(out)
}

fn parse_object(index: usize, item: &Value) -> Result<ObjectSpec, ParamError> {
    let obj_err = |name: &str, field: &'static str, reason: String| ParamError::Object {
        index,
        name: name.to_string(),
        field,
        reason,
    };
    // Items are YAML strings holding a YAML document; tolerate an inline mapping too.
    let parsed: Value = match item {
        Value::String(s) => {
            limits::check_yaml(s, limits::MAX_OBJECTS_BYTES)
                .map_err(|reason| obj_err("", "array", reason))?;
            serde_yaml_ng::from_str(s)
                .map_err(|e| obj_err("", "array", format!("invalid YAML: {e}")))?
        }
        Value::Mapping(_) => item.clone(),
        _ => {
            return Err(obj_err(
                "",
                "array",
                "each item must be a YAML string describing one object".into(),
            ))
        }
    };
    let map = match parsed {
        Value::Mapping(m) => m,
        _ => {
            return Err(obj_err(
                "",
                "array",
                "item is not a YAML mapping (objectName: ..., objectType: ...)".into(),
            ))
        }
    };
    let field = |key: &'static str, name: &str| -> Result<String, ParamError> {
        match map.get(key) {
            None => Ok(String::new()),
            Some(v) => scalar_string(v)
                .map(|s| s.trim().to_string())
                .ok_or_else(|| obj_err(name, key, "must be a scalar".into())),
        }
    };

    let name = field("objectName", "")?;
    if let Some(k) = map
        .keys()
        .map(key_text)
        .find(|k| !OBJECT_FIELDS.contains(&k.as_str()))
    {
        return Err(ParamError::UnknownField {
            index,
            name: name.clone(),
            hint: did_you_mean(&k, &OBJECT_FIELDS),
            field: k,
        });
    }
    if name.is_empty() {
        return Err(obj_err("", "objectName", "is required".into()));
    }
    let name_for_err = name.clone();
    let err = |field: &'static str, reason: String| obj_err(&name_for_err, field, reason);

    let type_str = field("objectType", &name)?;
    let object_type = match ObjectKind::from_object_type(&type_str) {
        Some(kind) => kind,
        None if type_str.is_empty() => {
            return Err(err(
                "objectType",
                "is required (secret, key or cert)".into(),
            ))
        }
        None => {
            return Err(err(
                "objectType",
                format!("invalid value {type_str:?}: should be secret, key or cert"),
            ))
        }
    };

    let version_str = field("objectVersion", &name)?;
    let version = if version_str.is_empty() || version_str == "latest" {
        None
    } else {
        Some(version_str)
    };

    let version_history = match map.get("objectVersionHistory") {
        None | Some(Value::Null) => 1,
        Some(v) => {
            let s = scalar_string(v).unwrap_or_default();
            let s = s.trim();
            if s.is_empty() {
                1
            } else {
                let n: i64 = s.parse().map_err(|_| {
                    err(
                        "objectVersionHistory",
                        format!("invalid value {s:?}: must be an integer"),
                    )
                })?;
                if n > i64::from(limits::MAX_VERSION_HISTORY) {
                    return Err(err(
                        "objectVersionHistory",
                        format!(
                            "invalid value {s:?}: more than the limit of {}",
                            limits::MAX_VERSION_HISTORY
                        ),
                    ));
                }
                n.max(1) as u32
            }
        }
    };

    let alias_str = field("objectAlias", &name)?;
    let alias = if alias_str.is_empty() {
        None
    } else {
        Some(alias_str)
    };

    let format_str = field("objectFormat", &name)?;
    let format = if format_str.is_empty() || format_str.eq_ignore_ascii_case("pem") {
        ObjectFormat::Pem
    } else if format_str.eq_ignore_ascii_case("pfx") {
        ObjectFormat::Pfx
    } else if format_str.eq_ignore_ascii_case("trust-bundle") {
        ObjectFormat::TrustBundle
    } else if format_str.eq_ignore_ascii_case("truststore") {
        ObjectFormat::TrustStore
    } else {
        return Err(err(
            "objectFormat",
            format!(
                "invalid value {format_str:?}: should be pem or pfx (or kvbridge's trust-bundle or truststore)"
            ),
        ));
    };
    if format.is_trust() && object_type == ObjectKind::Key {
        return Err(err(
            "objectFormat",
            "trust-bundle and truststore are only supported for objectType cert or secret, not key"
                .to_string(),
        ));
    }
    if format == ObjectFormat::Pfx && object_type != ObjectKind::Secret {
        return Err(err(
            "objectFormat",
            format!(
                "pfx is only supported for objectType secret, not {}",
                object_type.object_type()
            ),
        ));
    }

    let encoding_str = field("objectEncoding", &name)?;
    let encoding = if encoding_str.is_empty() {
        ObjectEncoding::Utf8
    } else {
        if object_type != ObjectKind::Secret {
            return Err(err(
                "objectEncoding",
                format!(
                    "only supported for objectType secret, not {}",
                    object_type.object_type()
                ),
            ));
        }
        if encoding_str.eq_ignore_ascii_case("utf-8") {
            ObjectEncoding::Utf8
        } else if encoding_str.eq_ignore_ascii_case("base64") {
            ObjectEncoding::Base64
        } else if encoding_str.eq_ignore_ascii_case("hex") {
            ObjectEncoding::Hex
        } else {
            return Err(err(
                "objectEncoding",
                format!("invalid value {encoding_str:?}: should be utf-8, base64 or hex"),
            ));
        }
    };

    let perm_str = field("filePermission", &name)?;
    let file_permission = if perm_str.is_empty() {
        None
    } else {
        Some(parse_octal_mode(&perm_str).map_err(|reason| err("filePermission", reason))?)
    };

    let spec = ObjectSpec {
        index,
        name,
        object_type,
        version,
        version_history,
        alias,
        format,
        encoding,
        file_permission,
    };
    let file_field = if spec.alias.is_some() {
        "objectAlias"
    } else {
        "objectName"
    };
    validate_file_name(spec.file_name()).map_err(|reason| err(file_field, reason))?;
    Ok(spec)
}

/// Parse an octal permission string like `0644` (digits 0-7 only, at most 0o7777).
pub fn parse_octal_mode(s: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!(
            "invalid value {s:?}: must be an octal number like 0644"
        ));
    }
    let v = u32::from_str_radix(s, 8)
        .map_err(|_| format!("invalid value {s:?}: must be an octal number like 0644"))?;
    if v > 0o7777 {
        return Err(format!("invalid value {s:?}: larger than 07777"));
    }
    Ok(v)
}

/// Longest file name (Linux `PATH_MAX` less room for the target directory).
pub const MAX_PATH_BYTES: usize = 2048;
/// Longest path segment (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// File-name rules of the Azure provider (plus: no empty path segments, no NUL).
pub fn validate_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("file name must not be empty".into());
    }
    if name.starts_with('/') || name.starts_with('\\') {
        return Err(format!("file name {name:?} must be a relative path"));
    }
    if name.contains("..") {
        return Err(format!("file name {name:?} must not contain '..'"));
    }
    if name.len() > MAX_PATH_BYTES {
        return Err(format!(
            "file name is {} bytes, more than the limit of {MAX_PATH_BYTES}",
            name.len()
        ));
    }
    if let Some(seg) = name.split('/').find(|seg| seg.len() > MAX_NAME_BYTES) {
        return Err(format!(
            "file name segment of {} bytes, more than the limit of {MAX_NAME_BYTES}",
            seg.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "file name {name:?} must not contain control characters (newline, tab, NUL, ...)"
        ));
    }
    if name.split('/').any(|seg| seg.is_empty() || seg == ".") {
        return Err(format!(
            "file name {name:?} must not have empty or '.' path segments"
        ));
    }
    Ok(())
}

/// The first pair of `paths` that name the same file, or where one is a directory holding the
/// other, as (later position, earlier position).
///
/// Sort-based, so the work is O(total length · log n) whatever the shapes: with `/` ordered
/// before every other character, a path's directory descendants sort right after it, so only
/// neighbours need comparing (hashing every parent directory instead would be quadratic in a
/// path's depth).
pub(crate) fn first_path_clash(paths: &[&str]) -> Option<(usize, usize)> {
    let key = |p: &str| {
        p.bytes()
            .map(|b| if b == b'/' { 0 } else { b })
            .collect::<Vec<u8>>()
    };
    let mut order: Vec<(Vec<u8>, usize)> =
        paths.iter().enumerate().map(|(i, p)| (key(p), i)).collect();
    order.sort();
    let mut found: Option<(usize, usize)> = None;
    for pair in order.windows(2) {
        let ((a, ia), (b, ib)) = (&pair[0], &pair[1]);
        let clash = a == b || (b.len() > a.len() && b.starts_with(a) && b[a.len()] == 0);
        if clash {
            let p = ((*ia).max(*ib), (*ia).min(*ib));
            if found.is_none_or(|f| p < f) {
                found = Some(p);
            }
        }
    }
    found
}

/// No two objects write the same file, and no object's file is a directory of another's
/// (history objects write `<name>/<i>`).
fn check_file_names(objects: &[ObjectSpec]) -> Result<(), ParamError> {
    let names: Vec<&str> = objects.iter().map(ObjectSpec::file_name).collect();
    match first_path_clash(&names) {
        None => Ok(()),
        Some((later, earlier)) => {
            let (a, b) = (&objects[later], &objects[earlier]);
            Err(ParamError::DuplicateFile {
                index: a.index,
                name: a.name.clone(),
                other_index: b.index,
                other_name: b.name.clone(),
                path: a.file_name().to_string(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const OBJ: &str = "array:\n  - |\n    objectName: s1\n    objectType: secret\n";

    fn base(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut m = map(&[("keyvaultName", "kv1"), ("tenantID", "t"), ("objects", OBJ)]);
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    fn objects(items: &[&str]) -> String {
        let mut s = String::from("array:\n");
        for it in items {
            s.push_str("  - |\n");
            for line in it.lines() {
                s.push_str("    ");
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    }

    fn obj_err(items: &[&str]) -> ParamError {
        match parse_objects(&objects(items)) {
            Err(e) => e,
            Ok(v) => panic!("expected error, got {v:?}"),
        }
    }

    #[test]
    fn minimal_and_defaults() {
        let p = Parameters::parse(&base(&[])).unwrap();
        assert_eq!(p.keyvault_name, "kv1");
        assert_eq!(p.tenant_id.as_deref(), Some("t"));
        assert_eq!(p.cloud_name, "");
        assert_eq!(p.identity(), IdentityMode::ServicePrincipal);
        let o = &p.objects[0];
        assert_eq!(o.name, "s1");
        assert_eq!(o.object_type, ObjectKind::Secret);
        assert_eq!(o.version, None);
        assert_eq!(o.version_history, 1);
        assert_eq!(o.format, ObjectFormat::Pem);
        assert_eq!(o.encoding, ObjectEncoding::Utf8);
        assert_eq!(o.mode(DEFAULT_FILE_MODE), 0o644);
        assert_eq!(o.file_name(), "s1");
    }

    #[test]
    fn whitespace_trimmed_everywhere() {
        let m = map(&[
            ("keyvaultName", "  kv-2 \n"),
            ("tenantID", " tid "),
            ("cloudName", " azurechinacloud "),
            ("useVMManagedIdentity", " True "),
            ("userAssignedIdentityID", " uid "),
            (
                "objects",
                "array:\n  - |\n    objectName: \"  s1 \"\n    objectType: ' secret '\n    objectAlias: ' a.txt '\n    objectVersion: ' latest '\n",
            ),
        ]);
        let p = Parameters::parse(&m).unwrap();
        assert_eq!(p.keyvault_name, "kv-2");
        assert_eq!(p.tenant_id.as_deref(), Some("tid"));
        assert_eq!(p.cloud_name, "azurechinacloud");
        assert_eq!(
            p.identity(),
            IdentityMode::VmManagedIdentity {
                user_assigned_identity_id: Some("uid".into())
            }
        );
        assert_eq!(p.objects[0].name, "s1");
        assert_eq!(p.objects[0].file_name(), "a.txt");
        assert_eq!(p.objects[0].version, None);
    }

    #[test]
    fn tenant_id_precedence_and_deprecated_name() {
        let p = Parameters::parse(&base(&[("tenantId", "old")])).unwrap();
        assert_eq!(p.tenant_id.as_deref(), Some("t"));
        let mut m = base(&[("tenantId", "old")]);
        m.remove("tenantID");
        assert_eq!(
            Parameters::parse(&m).unwrap().tenant_id.as_deref(),
            Some("old")
        );
        m.remove("tenantId");
        let p = Parameters::parse(&m).unwrap();
        assert_eq!(
            p.require_tenant(),
            Err(ParamError::Missing { field: "tenantID" })
        );
    }

    #[test]
    fn vault_name_rules() {
        let mut m = base(&[]);
        m.remove("keyvaultName");
        assert_eq!(
            Parameters::parse(&m),
            Err(ParamError::Missing {
                field: "keyvaultName"
            })
        );
        for bad in ["ab", "a234567890123456789012345", "kv_1", "kv.1", "kv 1x"] {
            let e = Parameters::parse(&base(&[("keyvaultName", bad)])).unwrap_err();
            assert!(
                matches!(
                    e,
                    ParamError::Invalid {
                        field: "keyvaultName",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
        for good in ["abc", "a23456789012345678901234", "My-Vault-01"] {
            Parameters::parse(&base(&[("keyvaultName", good)])).unwrap();
        }
    }

    #[test]
    fn clouds() {
        let p = Parameters::parse(&base(&[("cloudName", " AzureGermanCloud ")])).unwrap();
        assert_eq!(p.cloud_name, "AzureGermanCloud");
        let p = Parameters::parse(&base(&[
            ("cloudName", "AzureStackCloud"),
            ("cloudEnvFileName", " /etc/kubernetes/akscustom.json "),
        ]))
        .unwrap();
        assert_eq!(
            p.cloud_env_file_name.as_deref(),
            Some("/etc/kubernetes/akscustom.json")
        );
    }

    #[test]
    fn go_parse_bool() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(parse_go_bool("x", t).unwrap(), "{t}");
        }
        for f in ["", "0", "f", "F", "FALSE", "false", "False"] {
            assert!(!parse_go_bool("x", f).unwrap(), "{f}");
        }
        for bad in ["yes", "tRUE", "2", "on"] {
            assert!(parse_go_bool("x", bad).is_err(), "{bad}");
        }
        let e = Parameters::parse(&base(&[("usePodIdentity", "yes")])).unwrap_err();
        assert!(e.to_string().contains("usePodIdentity"), "{e}");
        let e = Parameters::parse(&base(&[("useVMManagedIdentity", "nope")])).unwrap_err();
        assert!(e.to_string().contains("useVMManagedIdentity"), "{e}");
    }

    #[test]
    fn identity_modes() {
        let p = Parameters::parse(&base(&[("usePodIdentity", "true")])).unwrap();
        assert_eq!(p.identity(), IdentityMode::PodIdentity);
        let p = Parameters::parse(&base(&[("clientID", " cid ")])).unwrap();
        assert_eq!(
            p.identity(),
            IdentityMode::WorkloadIdentity {
                client_id: "cid".into()
            }
        );
        for pair in [
            [("usePodIdentity", "true"), ("useVMManagedIdentity", "1")],
            [("usePodIdentity", "T"), ("clientID", "x")],
            [("useVMManagedIdentity", "true"), ("clientID", "x")],
        ] {
            let e = Parameters::parse(&base(&pair)).unwrap_err();
            assert!(matches!(e, ParamError::TwoIdentityModes { .. }), "{e}");
            assert!(e.to_string().contains("two identity modes"), "{e}");
        }
        // false switches do not count
        Parameters::parse(&base(&[
            ("usePodIdentity", "false"),
            ("useVMManagedIdentity", "0"),
            ("clientID", "x"),
        ]))
        .unwrap();
    }

    #[test]
    fn objects_missing_or_bad_yaml() {
        let mut m = base(&[]);
        m.remove("objects");
        assert_eq!(
            Parameters::parse(&m),
            Err(ParamError::Missing { field: "objects" })
        );
        let e = Parameters::parse(&base(&[("objects", "array: [unclosed")])).unwrap_err();
        assert!(matches!(e, ParamError::Objects { .. }), "{e}");
        let e = Parameters::parse(&base(&[("objects", "array: 5")])).unwrap_err();
        assert!(e.to_string().contains("array"), "{e}");
        let e = obj_err(&["objectName: [a"]);
        assert!(e.to_string().contains("objects[0]"), "{e}");
    }

    // Issue 13.4: a typo or an empty list used to mount zero objects and empty the target.
    #[test]
    fn typo_or_empty_list_is_an_error_not_zero_objects() {
        for text in [
            "arrray:\n  - |\n    objectName: a\n    objectType: secret\n",
            "arrray: []",
        ] {
            let e = Parameters::parse(&base(&[("objects", text)])).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("unknown field \"arrray\""), "{msg}");
            assert!(msg.contains("did you mean array?"), "{msg}");
        }
        for text in ["array: []", "array:", "array: null", "---", "{}"] {
            let e = Parameters::parse(&base(&[("objects", text)])).unwrap_err();
            assert!(matches!(e, ParamError::Objects { .. }), "{text:?}: {e}");
        }
        let e = Parameters::parse(&base(&[("objects", "array: []")])).unwrap_err();
        assert!(e.to_string().contains("array is empty"), "{e}");
        // A second field beside a good array is a typo too.
        let text = format!(
            "{}objcts: x\n",
            objects(&["objectName: a\nobjectType: secret"])
        );
        let e = parse_objects(&text).unwrap_err();
        assert!(e.to_string().contains("\"objcts\""), "{e}");
    }

    #[test]
    fn unknown_object_field_is_named_with_a_hint() {
        let e = obj_err(&["objectName: a\nobjectType: secret\nobjectVerison: abc"]);
        assert_eq!(
            e,
            ParamError::UnknownField {
                index: 0,
                name: "a".into(),
                field: "objectVerison".into(),
                hint: "; did you mean objectVersion?".into(),
            }
        );
        assert!(e.to_string().contains("known fields: objectName,"), "{e}");
        // Case matters in the provider (Go yaml tags): say which spelling is meant.
        let e = obj_err(&["objectname: a\nobjectType: secret"]);
        assert!(e.to_string().contains("did you mean objectName?"), "{e}");
        let e = obj_err(&["objectName: a\nobjectType: secret\nsomethingElse: 1"]);
        assert!(
            matches!(&e, ParamError::UnknownField { hint, .. } if hint.is_empty()),
            "{e}"
        );
    }

    // Issue 13.3: 100k-deep nesting took 34 s in the YAML parser; it is refused before parsing.
    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!(
            "array:\n  - |\n    objectName: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = parse_objects(&deep).unwrap_err();
        assert!(e.to_string().contains("nested too deeply"), "{e}");
        // The same hidden in an item string that the outer text escapes.
        let item = format!("objectName: {}", "[".repeat(10_000));
        let text = format!("array:\n  - \"{item}\"\n");
        let e = parse_objects(&text).unwrap_err();
        assert!(e.to_string().contains("objects[0]"), "{e}");
        assert!(e.to_string().contains("nested too deeply"), "{e}");
        let compact = format!("array:\n{}\n", "- ".repeat(10_000));
        assert!(parse_objects(&compact)
            .unwrap_err()
            .to_string()
            .contains("nested too deeply"));
    }

    #[test]
    fn sizes_and_counts_are_bounded() {
        let one = "objectName: a\nobjectType: secret";
        let items: Vec<String> = (0..limits::MAX_OBJECTS + 1)
            .map(|i| format!("objectName: s{i}\nobjectType: secret"))
            .collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        let e = parse_objects(&objects(&refs)).unwrap_err();
        assert!(e.to_string().contains("more than the limit of 1000"), "{e}");
        // Exactly the limit is fine (and linear: this is 1,000 names checked for clashes).
        let v = parse_objects(&objects(&refs[..limits::MAX_OBJECTS])).unwrap();
        assert_eq!(v.len(), limits::MAX_OBJECTS);

        let big = format!(
            "{}# {}\n",
            objects(&[one]),
            "x".repeat(limits::MAX_OBJECTS_BYTES)
        );
        let e = parse_objects(&big).unwrap_err();
        assert!(e.to_string().contains("bytes, more than the limit"), "{e}");
        let e = Parameters::parse(&base(&[("padding", &"x".repeat(limits::MAX_CLASS_BYTES))]))
            .unwrap_err();
        assert!(matches!(e, ParamError::TooLarge { .. }), "{e}");

        let e = obj_err(&["objectName: a\nobjectType: secret\nobjectVersionHistory: 2147483647"]);
        assert!(e.to_string().contains("more than the limit of 200"), "{e}");
        // 60 objects x 200 versions = 12,000 files.
        let items: Vec<String> = (0..60)
            .map(|i| format!("objectName: s{i}\nobjectType: secret\nobjectVersionHistory: 200"))
            .collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        let e = parse_objects(&objects(&refs)).unwrap_err();
        assert!(e.to_string().contains("more than 10000 files"), "{e}");
    }

    #[test]
    fn alias_aliases_expand_boundedly() {
        // "Billion laughs": YAML aliases must not expand without bound.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        text.push_str("array:\n  - objectName: a\n    objectType: secret\n");
        assert!(parse_objects(&text).is_err());
    }

    #[test]
    fn control_characters_in_names_are_refused() {
        for alias in ["\"a\\nb\"", "\"a\\tb\"", "\"a\\rb\"", "\"a\\u007fb\""] {
            let e = obj_err(&[&format!(
                "objectName: s\nobjectType: secret\nobjectAlias: {alias}"
            )]);
            assert!(e.to_string().contains("control characters"), "{alias}: {e}");
        }
    }

    #[test]
    fn object_full() {
        let v = parse_objects(&objects(&[
            "objectName: s1\nobjectType: secret\nobjectVersion: abc\nobjectVersionHistory: 3\nobjectAlias: dir/s\nobjectFormat: PFX\nobjectEncoding: Base64\nfilePermission: \"0600\"",
            "objectName: k1\nobjectType: key\nobjectVersionHistory: 0",
            "objectName: c1\nobjectType: cert\nobjectFormat: PEM\nobjectVersionHistory: \"2\"",
            "objectName: s2\nobjectType: secret\nobjectEncoding: HEX\nfilePermission: 0640",
        ]))
        .unwrap();
        assert_eq!(v[0].version.as_deref(), Some("abc"));
        assert_eq!(v[0].version_history, 3);
        assert!(v[0].is_history());
        assert_eq!(v[0].file_name(), "dir/s");
        assert_eq!(v[0].format, ObjectFormat::Pfx);
        assert_eq!(v[0].encoding, ObjectEncoding::Base64);
        assert_eq!(v[0].file_permission, Some(0o600));
        assert_eq!(v[1].version_history, 1);
        assert_eq!(v[1].object_type, ObjectKind::Key);
        assert_eq!(v[2].version_history, 2);
        assert_eq!(v[3].encoding, ObjectEncoding::Hex);
        assert_eq!(v[3].file_permission, Some(0o640));
        assert_eq!(v[3].index, 3);
    }

    fn assert_obj_err(e: &ParamError, index: usize, name: &str, field: &str) {
        match e {
            ParamError::Object {
                index: i,
                name: n,
                field: f,
                ..
            } => {
                assert_eq!((*i, n.as_str(), *f), (index, name, field), "{e}");
            }
            other => panic!("unexpected {other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.contains(&format!("objects[{index}]")), "{msg}");
        assert!(msg.contains(field), "{msg}");
    }

    #[test]
    fn object_errors_name_object_and_field() {
        let ok = "objectName: ok\nobjectType: secret";
        let cases: &[(&str, &str, &str)] = &[
            ("objectType: secret", "", "objectName"),
            ("objectName: x", "x", "objectType"),
            ("objectName: x\nobjectType: Secret", "x", "objectType"),
            ("objectName: x\nobjectType: certificate", "x", "objectType"),
            (
                "objectName: x\nobjectType: key\nobjectFormat: pfx",
                "x",
                "objectFormat",
            ),
            (
                "objectName: x\nobjectType: cert\nobjectFormat: PFX",
                "x",
                "objectFormat",
            ),
            (
                "objectName: x\nobjectType: secret\nobjectFormat: der",
                "x",
                "objectFormat",
            ),
            (
                "objectName: x\nobjectType: key\nobjectEncoding: base64",
                "x",
                "objectEncoding",
            ),
            (
                "objectName: x\nobjectType: secret\nobjectEncoding: utf-16",
                "x",
                "objectEncoding",
            ),
            (
                "objectName: x\nobjectType: secret\nobjectAlias: ../etc/passwd",
                "x",
                "objectAlias",
            ),
            (
                "objectName: x\nobjectType: secret\nobjectAlias: a/../../b",
                "x",
                "objectAlias",
            ),
            (
                "objectName: x\nobjectType: secret\nobjectAlias: ..data",
                "x",
                "objectAlias",
            ),
            (
                "objectName: x\nobjectType: secret\nobjectAlias: /abs",
                "x",
                "objectAlias",
            ),
            (
                "objectName: x\nobjectType: secret\nobjectAlias: a//b",
                "x",
                "objectAlias",
            ),
            ("objectName: x..y\nobjectType: secret", "x..y", "objectName"),
            (
                "objectName: x\nobjectType: secret\nfilePermission: \"0999\"",
                "x",
                "filePermission",
            ),
            (
                "objectName: x\nobjectType: secret\nfilePermission: rw-r--r--",
                "x",
                "filePermission",
            ),
            (
                "objectName: x\nobjectType: secret\nfilePermission: \"-1\"",
                "x",
                "filePermission",
            ),
            (
                "objectName: x\nobjectType: secret\nfilePermission: \"17777\"",
                "x",
                "filePermission",
            ),
            (
                "objectName: x\nobjectType: secret\nobjectVersionHistory: many",
                "x",
                "objectVersionHistory",
            ),
            ("objectName: x\nobjectType: [secret]", "x", "objectType"),
        ];
        for (item, name, field) in cases {
            let e = obj_err(&[ok, item]);
            assert_obj_err(&e, 1, name, field);
        }
    }

    #[test]
    fn duplicate_file_names() {
        let e = obj_err(&[
            "objectName: a\nobjectType: secret",
            "objectName: b\nobjectType: key\nobjectAlias: a",
        ]);
        assert!(
            matches!(
                e,
                ParamError::DuplicateFile {
                    index: 1,
                    other_index: 0,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("objects[1]"), "{e}");
        // a directory from an alias clashes with a file of the same name
        let e = obj_err(&[
            "objectName: a\nobjectType: secret\nobjectAlias: d/x",
            "objectName: b\nobjectType: secret\nobjectAlias: d",
        ]);
        assert!(matches!(e, ParamError::DuplicateFile { .. }), "{e}");
        // same name, different types: still the same file
        let e = obj_err(&[
            "objectName: a\nobjectType: secret",
            "objectName: a\nobjectType: cert",
        ]);
        assert!(matches!(e, ParamError::DuplicateFile { .. }), "{e}");
        // a directory from a later alias clashes with an earlier file, reported at the later
        let e = obj_err(&[
            "objectName: a\nobjectType: secret\nobjectAlias: d",
            "objectName: s\nobjectType: secret",
            "objectName: b\nobjectType: secret\nobjectAlias: d/e/f",
        ]);
        assert!(
            matches!(
                e,
                ParamError::DuplicateFile {
                    index: 2,
                    other_index: 0,
                    ..
                }
            ),
            "{e}"
        );
        // siblings are fine
        parse_objects(&objects(&[
            "objectName: a\nobjectType: secret\nobjectAlias: d/x",
            "objectName: b\nobjectType: secret\nobjectAlias: d/y",
            "objectName: c\nobjectType: secret\nobjectAlias: dx",
        ]))
        .unwrap();
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse_octal_mode("0644"), Ok(0o644));
        assert_eq!(parse_octal_mode("644"), Ok(0o644));
        assert_eq!(parse_octal_mode("0"), Ok(0));
        assert_eq!(parse_octal_mode("4755"), Ok(0o4755));
        assert!(parse_octal_mode("0o644").is_err());
        assert!(parse_octal_mode("+644").is_err());
    }
}
