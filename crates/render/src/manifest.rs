//! Reading a `SecretProviderClass` manifest, or a bare parameters map, from YAML.
//!
//! Accepted inputs:
//! - a whole manifest (`apiVersion: secrets-store.csi.x-k8s.io/v1` or `v1alpha1`,
//!   `kind: SecretProviderClass`, `spec.provider: azure`, `spec.parameters`, optional
//!   `spec.secretObjects` kept for the controller);
//! - a multi-document file: the single `SecretProviderClass` document in it is used;
//! - just the parameters map (`keyvaultName: ...`, `objects: |` ...).
//!
//! Parameter values that YAML reads as booleans or numbers (`usePodIdentity: true`) are taken as
//! their text, as the API server would require quoting them anyway.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::params::{ParamError, Parameters};

pub const API_GROUP: &str = "secrets-store.csi.x-k8s.io";
pub const KIND: &str = "SecretProviderClass";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("invalid YAML: {0}")]
    Yaml(String),
    #[error("field {field}: {reason}")]
    Field { field: String, reason: String },
    #[error("no SecretProviderClass document found in the file")]
    NoClass,
    #[error("{count} SecretProviderClass documents found; pass a file with exactly one")]
    MultipleClasses { count: usize },
    #[error(transparent)]
    Params(#[from] ParamError),
}

fn field_err(field: &str, reason: impl Into<String>) -> ManifestError {
    ManifestError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// `spec.secretObjects[].data[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretObjectData {
    #[serde(rename = "objectName")]
    pub object_name: String,
    pub key: String,
}

/// `spec.secretObjects[]`: Kubernetes Secrets to sync (used by a later controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretObject {
    #[serde(rename = "secretName")]
    pub secret_name: String,
    #[serde(rename = "type", default)]
    pub secret_type: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub data: Vec<SecretObjectData>,
}

/// A parsed class file.
#[derive(Debug, Clone)]
pub struct ProviderClass {
    /// `metadata.name` (None for a bare parameters file).
    pub name: Option<String>,
    pub namespace: Option<String>,
    /// `apiVersion` (None for a bare parameters file).
    pub api_version: Option<String>,
    /// Raw `spec.parameters`.
    pub raw_parameters: BTreeMap<String, String>,
    /// Validated parameters.
    pub parameters: Parameters,
    pub secret_objects: Vec<SecretObject>,
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Tagged(t) => scalar_text(&t.value),
        _ => None,
    }
}

fn string_map(v: &Value, field: &str) -> Result<BTreeMap<String, String>, ManifestError> {
    let m = match v {
        Value::Mapping(m) => m,
        Value::Null => return Ok(BTreeMap::new()),
        _ => return Err(field_err(field, "must be a mapping of strings")),
    };
    let mut out = BTreeMap::new();
    for (k, val) in m {
        let key = scalar_text(k).ok_or_else(|| field_err(field, "keys must be strings"))?;
        let text = scalar_text(val).ok_or_else(|| {
            field_err(
                &format!("{field}.{key}"),
                "must be a string (use `|` for multi-line values)",
            )
        })?;
        out.insert(key, text);
    }
    Ok(out)
}

fn is_class_doc(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some(KIND)
}

/// Parse a class file's text (manifest, multi-document file, or bare parameters map).
pub fn parse_class(text: &str) -> Result<ProviderClass, ManifestError> {
    crate::limits::check_yaml(text, crate::limits::MAX_CLASS_BYTES)
        .map_err(|reason| ManifestError::Yaml(format!("the file {reason}")))?;
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let v = Value::deserialize(doc).map_err(|e| ManifestError::Yaml(e.to_string()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    let classes: Vec<&Value> = docs.iter().filter(|d| is_class_doc(d)).collect();
    match classes.len() {
        1 => return parse_manifest(classes[0]),
        0 => {}
        count => return Err(ManifestError::MultipleClasses { count }),
    }
    // No SecretProviderClass: a bare parameters map (single document) or something else.
    match docs.as_slice() {
        [single] => {
            if single.get("apiVersion").is_some() || single.get("kind").is_some() {
                let kind = single.get("kind").and_then(scalar_text).unwrap_or_default();
                return Err(field_err(
                    "kind",
                    format!("expected {KIND}, found {kind:?}"),
                ));
            }
            if !matches!(single, Value::Mapping(_)) {
                return Err(field_err(
                    ".",
                    "expected a SecretProviderClass manifest or a parameters mapping",
                ));
            }
            let raw = string_map(single, "parameters")?;
            let parameters = Parameters::parse(&raw)?;
            Ok(ProviderClass {
                name: None,
                namespace: None,
                api_version: None,
                raw_parameters: raw,
                parameters,
                secret_objects: Vec::new(),
            })
        }
        _ => Err(ManifestError::NoClass),
    }
}

fn parse_manifest(doc: &Value) -> Result<ProviderClass, ManifestError> {
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| field_err("apiVersion", "is required"))?;
    match api_version.split_once('/') {
        Some((API_GROUP, "v1" | "v1alpha1")) => {}
        _ => {
            return Err(field_err(
                "apiVersion",
                format!(
                    "unsupported {api_version:?}; expected {API_GROUP}/v1 or {API_GROUP}/v1alpha1"
                ),
            ))
        }
    }
    let metadata = doc.get("metadata");
    let name = metadata
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let namespace = metadata
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let spec = doc
        .get("spec")
        .ok_or_else(|| field_err("spec", "is required"))?;
    let provider = spec
        .get("provider")
        .and_then(scalar_text)
        .unwrap_or_default();
    if provider.trim() != "azure" {
        return Err(field_err(
            "spec.provider",
            format!("must be azure, found {:?}", provider.trim()),
        ));
    }
    let raw = match spec.get("parameters") {
        Some(p) => string_map(p, "spec.parameters")?,
        None => return Err(field_err("spec.parameters", "is required")),
    };
    let secret_objects = match spec.get("secretObjects") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_yaml_ng::from_value(v.clone())
            .map_err(|e| field_err("spec.secretObjects", e.to_string()))?,
    };
    let parameters = Parameters::parse(&raw)?;
    Ok(ProviderClass {
        name,
        namespace,
        api_version: Some(api_version.to_string()),
        raw_parameters: raw,
        parameters,
        secret_objects,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{IdentityMode, ObjectEncoding, ObjectKind};

    // Shapes of the manifests in the Azure provider's documentation.
    const SERVICE_PRINCIPAL: &str = r#"
# This is a SecretProviderClass example using service principal to access Keyvault
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: azure-kvname
spec:
  provider: azure
  parameters:
    usePodIdentity: "false"         # [OPTIONAL] if not provided, will default to "false"
    keyvaultName: "kvname"          # the name of the KeyVault
    cloudName: ""                   # [OPTIONAL for Azure] if not provided, azure environment will default to AzurePublicCloud
    objects:  |
      array:
        - |
          objectName: secret1
          objectType: secret        # object types: secret, key or cert
          objectVersion: ""         # [OPTIONAL] object versions, default to latest if empty
        - |
          objectName: key1
          objectType: key
          objectVersion: ""
    tenantId: "tid"                 # the tenant ID of the KeyVault
"#;

    const SYNC_AS_K8S_SECRET: &str = r#"
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: azure-sync
  namespace: default
spec:
  provider: azure
  secretObjects:                              # [OPTIONAL] SecretObjects defines the desired state of synced Kubernetes secret objects
  - data:
    - key: username                           # data field to populate
      objectName: foo1                        # name of the mounted content to sync; this could be the object name or the object alias
    secretName: foosecret                     # name of the Kubernetes secret object
    type: Opaque                              # type of Kubernetes secret object (for example, Opaque, kubernetes.io/tls)
  parameters:
    usePodIdentity: "false"
    useVMManagedIdentity: "true"
    userAssignedIdentityID: "00000000-0000-0000-0000-000000000000"
    keyvaultName: "kvname"
    objects: |
      array:
        - |
          objectName: secret1
          objectType: secret
          objectAlias: foo1
    tenantID: "tid"
"#;

    const WORKLOAD_IDENTITY_V1ALPHA1: &str = r#"
apiVersion: secrets-store.csi.x-k8s.io/v1alpha1
kind: SecretProviderClass
metadata:
  name: azure-kvname-wi
spec:
  provider: azure
  parameters:
    usePodIdentity: "false"
    clientID: "${USER_ASSIGNED_CLIENT_ID}"
    keyvaultName: kv-wi
    cloudName: "AzureUSGovernmentCloud"
    objects:  |
      array:
        - |
          objectName: secret1
          objectType: secret
          objectVersionHistory: 5
        - |
          objectName: encoded
          objectType: secret
          objectEncoding: base64
          filePermission: "0600"
    tenantId: "${IDENTITY_TENANT}"
"#;

    #[test]
    fn service_principal_manifest() {
        let c = parse_class(SERVICE_PRINCIPAL).unwrap();
        assert_eq!(c.name.as_deref(), Some("azure-kvname"));
        assert_eq!(
            c.api_version.as_deref(),
            Some("secrets-store.csi.x-k8s.io/v1")
        );
        let p = &c.parameters;
        assert_eq!(p.keyvault_name, "kvname");
        assert_eq!(p.tenant_id.as_deref(), Some("tid"));
        assert_eq!(p.cloud_name, "");
        assert_eq!(p.identity(), IdentityMode::ServicePrincipal);
        assert_eq!(p.objects.len(), 2);
        assert_eq!(p.objects[1].object_type, ObjectKind::Key);
        assert!(c.secret_objects.is_empty());
    }

    #[test]
    fn sync_manifest_keeps_secret_objects() {
        let c = parse_class(SYNC_AS_K8S_SECRET).unwrap();
        assert_eq!(c.namespace.as_deref(), Some("default"));
        assert_eq!(
            c.secret_objects,
            vec![SecretObject {
                secret_name: "foosecret".into(),
                secret_type: "Opaque".into(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                data: vec![SecretObjectData {
                    object_name: "foo1".into(),
                    key: "username".into()
                }],
            }]
        );
        assert!(matches!(
            c.parameters.identity(),
            IdentityMode::VmManagedIdentity { .. }
        ));
        assert_eq!(c.parameters.objects[0].file_name(), "foo1");
    }

    #[test]
    fn workload_identity_v1alpha1() {
        let c = parse_class(WORKLOAD_IDENTITY_V1ALPHA1).unwrap();
        let p = &c.parameters;
        assert_eq!(p.cloud_name, "AzureUSGovernmentCloud");
        assert_eq!(
            p.identity(),
            IdentityMode::WorkloadIdentity {
                client_id: "${USER_ASSIGNED_CLIENT_ID}".into()
            }
        );
        assert_eq!(p.objects[0].version_history, 5);
        assert_eq!(p.objects[1].encoding, ObjectEncoding::Base64);
        assert_eq!(p.objects[1].file_permission, Some(0o600));
    }

    #[test]
    fn bare_parameters_and_unquoted_scalars() {
        let text = "keyvaultName: kv1\ntenantID: t\nusePodIdentity: false\nobjects: |\n  array:\n    - |\n      objectName: a\n      objectType: cert\n";
        let c = parse_class(text).unwrap();
        assert_eq!(c.name, None);
        assert_eq!(c.raw_parameters["usePodIdentity"], "false");
        assert_eq!(c.parameters.objects[0].object_type, ObjectKind::Certificate);
    }

    #[test]
    fn multi_document_file_picks_the_class() {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n---\n{SERVICE_PRINCIPAL}\n---\n"
        );
        let c = parse_class(&text).unwrap();
        assert_eq!(c.name.as_deref(), Some("azure-kvname"));
        let two = format!("{SERVICE_PRINCIPAL}\n---\n{SYNC_AS_K8S_SECRET}");
        assert!(matches!(
            parse_class(&two),
            Err(ManifestError::MultipleClasses { count: 2 })
        ));
    }

    #[test]
    fn manifest_errors() {
        let e = parse_class(&SERVICE_PRINCIPAL.replace("provider: azure", "provider: vault"))
            .unwrap_err();
        assert!(e.to_string().contains("spec.provider"), "{e}");
        let e = parse_class(&SERVICE_PRINCIPAL.replace("csi.x-k8s.io/v1\n", "csi.x-k8s.io/v2\n"))
            .unwrap_err();
        assert!(e.to_string().contains("apiVersion"), "{e}");
        let e = parse_class("apiVersion: v1\nkind: ConfigMap\n").unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
        let e = parse_class("keyvaultName: [unterminated").unwrap_err();
        assert!(matches!(e, ManifestError::Yaml(_)), "{e}");
        let e = parse_class(
            &SERVICE_PRINCIPAL.replace("keyvaultName: \"kvname\"", "keyvaultName: \"\""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("keyvaultName"), "{e}");
        let e = parse_class(&SERVICE_PRINCIPAL.replace("objectType: key", "objectType: keys"))
            .unwrap_err();
        assert!(e.to_string().contains("objects[1]"), "{e}");
        assert!(e.to_string().contains("objectType"), "{e}");
        let e = parse_class("keyvaultName: kv1\nobjects:\n  nested: map\n").unwrap_err();
        assert!(e.to_string().contains("parameters.objects"), "{e}");
    }
}
