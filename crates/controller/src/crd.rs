//! The `AzureKeyVaultSecret` custom resource (group `spv.no`, short name `akvs`), compatible with
//! the manifests akv2k8s users have, and kvbridge's optional additions.
//!
//! # Versions and conversion
//!
//! akv2k8s published four versions of this resource and users have manifests in each of them:
//!
//! | version    | differences in akv2k8s's own schema                                           |
//! |------------|-------------------------------------------------------------------------------|
//! | `v1alpha1` | `spec.output.transforms` (plural); no `chainOrder`, no `configMap`             |
//! | `v1`       | `spec.output.transform`; `spec.output.secret.chainOrder`; no `configMap`       |
//! | `v2alpha1` | adds `spec.output.configMap`, `spec.vault.azureIdentity.name`, status `configMap*` |
//! | `v2beta1`  | as `v2alpha1`; the storage version                                            |
//!
//! Every later version only *adds* optional fields, except `v1alpha1`'s `transforms` spelling. kvbridge
//! therefore serves the four versions with one schema, the union of all of them (both spellings
//! of the transform list, every addition), and `conversion: None`: the API server only rewrites
//! `apiVersion`, no field is pruned on the way between versions, and no conversion webhook has to
//! be up for `kubectl get akvs` (which prefers `v1`) to work. The controller reads both
//! spellings ([`Output::transforms_in_order`]). Every manifest valid for akv2k8s's schema of its
//! version is valid for kvbridge's, unchanged.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt as _};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group (as akv2k8s).
pub const GROUP: &str = "spv.no";
/// The storage version: the controller reads and writes this one.
pub const STORAGE_VERSION: &str = "v2beta1";
/// Every version served, oldest first.
pub const SERVED_VERSIONS: [&str; 4] = ["v1alpha1", "v1", "v2alpha1", "v2beta1"];
/// `metadata.name` of the CRD.
pub const CRD_NAME: &str = "azurekeyvaultsecrets.spv.no";

/// Synchronises one Azure Key Vault object into a Kubernetes Secret and/or ConfigMap.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "spv.no",
    version = "v2beta1",
    kind = "AzureKeyVaultSecret",
    plural = "azurekeyvaultsecrets",
    singular = "azurekeyvaultsecret",
    shortname = "akvs",
    category = "all",
    namespaced,
    status = "AzureKeyVaultSecretStatus",
    derive = "PartialEq",
    doc = "A Key Vault object synced into a Kubernetes Secret and/or ConfigMap (akv2k8s-compatible).",
    printcolumn = r#"{"name":"Vault","type":"string","jsonPath":".spec.vault.name","description":"Which Azure Key Vault this resource is associated with"}"#,
    printcolumn = r#"{"name":"Vault Object","type":"string","jsonPath":".spec.vault.object.name","description":"Which Azure Key Vault object this resource is associated with"}"#,
    printcolumn = r#"{"name":"Secret Name","type":"string","jsonPath":".status.secretName","description":"Which Kubernetes Secret this resource is synced with, if any"}"#,
    printcolumn = r#"{"name":"ConfigMap Name","type":"string","jsonPath":".status.configMapName","description":"Which Kubernetes ConfigMap this resource is synced with, if any"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status","description":"Whether the outputs match the vault object"}"#,
    printcolumn = r#"{"name":"Last Synched","type":"date","jsonPath":".status.lastAzureUpdate","description":"When the outputs last changed from Azure Key Vault"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AzureKeyVaultSecretSpec {
    pub vault: Vault,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
    /// kvbridge: how often the vault object is fetched again (Go duration such as `30m`, `1h`;
    /// default: the controller's `--refresh-interval`). Key Vault events (Event Grid) refresh
    /// sooner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<kube::core::Duration>,
}

/// Which vault object, and with which identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vault {
    /// Name of the Azure Key Vault.
    pub name: String,
    pub object: VaultObject,
    /// akv2k8s `v2alpha1`/`v2beta1` (AAD Pod Identity binding name). Accepted for compatibility;
    /// kvbridge authenticates with `identity` (or the controller's own credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_identity: Option<AzureIdentityRef>,
    /// kvbridge: the identity used for this object; default: the controller's own credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<ObjectIdentity>,
}

/// akv2k8s's `azureIdentity`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct AzureIdentityRef {
    /// Name of the AzureIdentity.
    pub name: String,
}

/// The Key Vault object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultObject {
    /// The object name in Azure Key Vault.
    pub name: String,
    #[serde(rename = "type")]
    pub object_type: ObjectType,
    /// The object version in Azure Key Vault (default: the current version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// What a `multi-key-value-secret` holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<ContentType>,
}

/// Which kind of Key Vault object.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema,
)]
pub enum ObjectType {
    #[serde(rename = "secret")]
    Secret,
    #[serde(rename = "certificate")]
    Certificate,
    #[serde(rename = "key")]
    Key,
    /// A secret whose value is a JSON or YAML map: one output key per entry.
    #[serde(rename = "multi-key-value-secret")]
    MultiKeyValueSecret,
}

impl ObjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectType::Secret => "secret",
            ObjectType::Certificate => "certificate",
            ObjectType::Key => "key",
            ObjectType::MultiKeyValueSecret => "multi-key-value-secret",
        }
    }
}

/// Content type of a `multi-key-value-secret`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ContentType {
    #[serde(rename = "application/x-json")]
    Json,
    #[serde(rename = "application/x-yaml")]
    Yaml,
}

/// kvbridge: the identity one object is fetched with. Exactly one member may be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectIdentity {
    /// Workload identity: a token for this ServiceAccount (same namespace) from the TokenRequest
    /// API, audience `api://AzureADTokenExchange`, exchanged at Entra ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountIdentity>,
    /// A service principal whose client id and secret are in a Secret (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_principal: Option<ServicePrincipalIdentity>,
    /// A managed identity of the node (IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentity>,
}

/// Workload identity through a ServiceAccount.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountIdentity {
    /// The ServiceAccount's name.
    pub name: String,
    /// Application (client) id; default: the ServiceAccount's `azure.workload.identity/client-id`
    /// annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Tenant id; default: the ServiceAccount's `azure.workload.identity/tenant-id` annotation,
    /// else the controller's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

/// A service principal with a client secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServicePrincipalIdentity {
    /// The Secret holding the credentials (as the CSI driver's `nodePublishSecretRef`).
    pub secret_ref: SecretKeysRef,
    /// Tenant id; default: the controller's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
}

/// A Secret and the keys of the client id and client secret in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeysRef {
    pub name: String,
    /// Default `clientid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_key: Option<String>,
    /// Default `clientsecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_key: Option<String>,
}

/// A managed identity (IMDS).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentity {
    /// Client id of a user-assigned identity; absent: the system-assigned identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Where the object goes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<OutputSecret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<OutputConfigMap>,
    /// Applied in order to the value of a `secret` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Vec<Transform>>,
    /// akv2k8s `v1alpha1`'s spelling of `transform` (applied first when both are set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transforms: Option<Vec<Transform>>,
}

impl Output {
    /// `transforms` (v1alpha1) followed by `transform`.
    pub fn transforms_in_order(&self) -> Vec<Transform> {
        self.transforms
            .iter()
            .chain(self.transform.iter())
            .flatten()
            .copied()
            .collect()
    }
}

/// A transformation of a secret's value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Transform {
    /// Remove leading and trailing white space.
    #[serde(rename = "trim")]
    Trim,
    /// Standard base64 with padding.
    #[serde(rename = "base64encode")]
    Base64Encode,
    /// Standard base64 (padding optional).
    #[serde(rename = "base64decode")]
    Base64Decode,
}

/// The Secret written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputSecret {
    /// Name of the Kubernetes Secret (same namespace).
    pub name: String,
    /// Secret type: `opaque`/`Opaque` (default), `kubernetes.io/tls`,
    /// `kubernetes.io/dockerconfigjson`, `kubernetes.io/dockercfg`, `kubernetes.io/basic-auth`,
    /// `kubernetes.io/ssh-auth`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<String>,
    /// The key of the value (Opaque and other single-value outputs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
    /// `ensureserverfirst`: `tls.crt` is ordered server certificate first, then its issuers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_order: Option<ChainOrder>,
    /// kvbridge: labels of the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// kvbridge: annotations of the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// Certificate chain order in `tls.crt`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ChainOrder {
    #[serde(rename = "ensureserverfirst")]
    EnsureServerFirst,
}

/// The ConfigMap written.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputConfigMap {
    /// Name of the ConfigMap (same namespace).
    pub name: String,
    /// The key of the value (ignored for `multi-key-value-secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<String>,
    /// kvbridge: labels of the ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// kvbridge: annotations of the ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// akv2k8s's status fields plus kvbridge's conditions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureKeyVaultSecretStatus {
    /// Hash of the Secret content written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Hash of the ConfigMap content written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_name: Option<String>,
    /// When an output last changed because of Key Vault (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "date_time")]
    pub last_azure_update: Option<String>,
    /// kvbridge: the vault object version the outputs hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_version: Option<String>,
    /// kvbridge: the `metadata.generation` last reconciled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kvbridge: outputs that changed but whose opted-in workloads (annotation
    /// `kvbridge.io/restart-on-rotation`) could not all be restarted yet; retried on every
    /// reconcile until the restart succeeds (condition `RestartPending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_restarts: Option<Vec<PendingRestart>>,
    /// kvbridge: `Ready` with a reason; `RestartPending` while a restart on rotation is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
}

/// An output whose users still have to be restarted (no hash, no value: the hash is recomputed
/// from the output when the restart is retried).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingRestart {
    /// `Secret` or `ConfigMap`.
    pub kind: String,
    pub name: String,
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[schemars(schema_with = "date_time")]
    pub last_transition_time: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
}

fn date_time(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "format": "date-time"})
}

/// The CustomResourceDefinition: the four versions with one schema (see the module docs),
/// `v2beta1` stored, status subresource, `conversion: None`.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = AzureKeyVaultSecret::crd();
    let template = crd.spec.versions.first().cloned();
    if let Some(template) = template {
        crd.spec.versions = SERVED_VERSIONS
            .iter()
            .map(|name| {
                let mut v = template.clone();
                v.name = (*name).to_string();
                v.served = true;
                v.storage = *name == STORAGE_VERSION;
                v
            })
            .collect();
    }
    crd.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/part-of".to_string(),
        "kvbridge".to_string(),
    )]));
    crd
}

/// [`crd`] as the YAML kept in `deploy/helm/kvbridge/files/crds/azurekeyvaultsecret.yaml`
/// (the Helm chart renders it from there).
pub fn crd_yaml() -> String {
    let body = serde_yaml_ng::to_string(&crd()).unwrap_or_default();
    format!(
        "# Generated from the Rust types in crates/controller/src/crd.rs (crd::crd_yaml).\n\
         # Do not edit; the test `crd_yaml_in_deploy_is_current` fails when this file is stale.\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_schema_four_versions_v2beta1_stored() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some(CRD_NAME));
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["akvs".to_string()]));
        let names: Vec<&str> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, SERVED_VERSIONS);
        let stored: Vec<&str> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(stored, [STORAGE_VERSION]);
        assert!(crd.spec.versions.iter().all(|v| v.served));
        assert!(crd.spec.conversion.is_none(), "conversion: None (default)");
        let first = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        for v in &crd.spec.versions {
            assert_eq!(serde_json::to_value(&v.schema).unwrap(), first);
            assert!(v.subresources.as_ref().unwrap().status.is_some());
        }
    }

    #[test]
    fn crd_yaml_in_deploy_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/helm/kvbridge/files/crds/azurekeyvaultsecret.yaml");
        let want = crd_yaml();
        if std::env::var_os("KVBRIDGE_UPDATE_CRDS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "{} is stale: run KVBRIDGE_UPDATE_CRDS=1 cargo test -p kvbridge-controller --lib crd_yaml",
            path.display()
        );
    }

    /// akv2k8s's documented manifests of every version deserialize into the storage type after
    /// the API server's `apiVersion` rewrite (conversion: None), field for field.
    #[test]
    fn akv2k8s_manifests_of_every_version_parse() {
        let v1alpha1 = r#"
apiVersion: spv.no/v1alpha1
kind: AzureKeyVaultSecret
metadata: {name: a, namespace: default}
spec:
  vault:
    name: my-kv
    object: {type: secret, name: test-secret}
  output:
    secret: {name: keyvault-secret, dataKey: azuresecret}
    transforms: [trim, base64decode]
"#;
        let v = parse(v1alpha1);
        let out = v.spec.output.unwrap();
        assert_eq!(
            out.transforms_in_order(),
            [Transform::Trim, Transform::Base64Decode]
        );
        let v1 = r#"
apiVersion: spv.no/v1
kind: AzureKeyVaultSecret
metadata: {name: b}
spec:
  vault: {name: my-kv, object: {type: certificate, name: test-cert}}
  output:
    secret: {name: keyvault-certificate, type: kubernetes.io/tls, chainOrder: ensureserverfirst}
    transform: [base64encode]
"#;
        let v = parse(v1);
        let s = v.spec.output.unwrap().secret.unwrap();
        assert_eq!(s.chain_order, Some(ChainOrder::EnsureServerFirst));
        assert_eq!(s.secret_type.as_deref(), Some("kubernetes.io/tls"));
        let v2 = r#"
apiVersion: spv.no/v2beta1
kind: AzureKeyVaultSecret
metadata: {name: c}
spec:
  vault:
    name: my-kv
    azureIdentity: {name: my-identity}
    object: {type: multi-key-value-secret, name: s, contentType: application/x-json, version: 0123abcd}
  output:
    configMap: {name: cm, dataKey: k}
"#;
        let v = parse(v2);
        assert_eq!(
            v.spec.vault.object.object_type,
            ObjectType::MultiKeyValueSecret
        );
        assert_eq!(v.spec.vault.object.content_type, Some(ContentType::Json));
        assert_eq!(v.spec.vault.azure_identity.unwrap().name, "my-identity");
        assert_eq!(v.spec.output.unwrap().config_map.unwrap().name, "cm");
    }

    fn parse(yaml: &str) -> AzureKeyVaultSecret {
        let mut value: serde_json::Value = serde_yaml_ng::from_str(yaml).unwrap();
        value["apiVersion"] = "spv.no/v2beta1".into();
        serde_json::from_value(value).unwrap()
    }
}
