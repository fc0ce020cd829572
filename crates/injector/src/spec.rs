//! What the webhook hands a container so that `kvbridge env` can fetch every placeholder without
//! Kubernetes API access: one environment variable, [`SPEC_ENV`], holding an [`EnvSpec`] (JSON)
//! with each referenced `AzureKeyVaultSecret` resolved at admission: vault URL, cloud, object,
//! transforms, chain order and the identity to use. It holds no secret: service-principal
//! credentials reach the container through `valueFrom.secretKeyRef` variables (kubelet reads
//! the Secret) whose names the spec records, and workload identity through a projected
//! service-account token file. `kvbridge env` removes [`SPEC_ENV`] and those variables from the
//! environment it hands the application.

use std::collections::BTreeMap;

use controller::crd::{ChainOrder, Transform, VaultObject};
use keyvault::Cloud;
use serde::{Deserialize, Serialize};

/// The environment variable carrying the [`EnvSpec`].
pub const SPEC_ENV: &str = "KVBRIDGE_ENV_SPEC";
/// The spec format this build writes and reads.
pub const SPEC_VERSION: u32 = 1;
/// Bound on the spec's size (it is an environment variable: Linux allows 128 KiB per string).
pub const MAX_SPEC_BYTES: usize = 128 * 1024;
/// Bound on references per container.
pub const MAX_REFS: usize = 256;

/// Every `AzureKeyVaultSecret` a container's placeholders name, resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvSpec {
    pub version: u32,
    /// By `AzureKeyVaultSecret` name.
    pub refs: BTreeMap<String, Reference>,
}

/// One `AzureKeyVaultSecret`, as resolved at admission.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reference {
    /// `https://<vault>.vault.azure.net` (or the cloud's / the webhook's override).
    pub vault_url: String,
    pub cloud: CloudSpec,
    /// `spec.vault.object`.
    pub object: VaultObject,
    /// `spec.output.transforms` then `spec.output.transform`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<Transform>,
    /// `spec.output.secret.chainOrder`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_order: Option<ChainOrder>,
    pub identity: RuntimeIdentity,
}

/// The cloud of a vault ([`keyvault::Cloud`] on the wire).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudSpec {
    pub name: String,
    pub authority_host: String,
    pub vault_dns_suffix: String,
    pub keyvault_resource: String,
}

impl From<&Cloud> for CloudSpec {
    fn from(c: &Cloud) -> Self {
        Self {
            name: c.name.clone(),
            authority_host: c.authority_host.clone(),
            vault_dns_suffix: c.vault_dns_suffix.clone(),
            keyvault_resource: c.keyvault_resource.clone(),
        }
    }
}

impl From<&CloudSpec> for Cloud {
    fn from(c: &CloudSpec) -> Self {
        Cloud {
            name: c.name.clone(),
            authority_host: c.authority_host.clone(),
            vault_dns_suffix: c.vault_dns_suffix.clone(),
            keyvault_resource: c.keyvault_resource.clone(),
        }
    }
}

/// Which identity the container fetches one reference with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum RuntimeIdentity {
    /// The container's own (the `AzureKeyVaultSecret` names none): the `AZURE_*` environment
    /// (service principal, or workload identity with `AZURE_FEDERATED_TOKEN_FILE`, as the Azure
    /// Workload Identity webhook sets), then the node's managed identity.
    Pod,
    /// `spec.vault.identity.managedIdentity`.
    #[serde(rename_all = "camelCase")]
    Managed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// `spec.vault.identity.servicePrincipal`: the variables kubelet fills from the Secret.
    #[serde(rename_all = "camelCase")]
    ServicePrincipal {
        tenant_id: String,
        client_id_env: String,
        client_secret_env: String,
    },
    /// `spec.vault.identity.serviceAccount` (the pod's own ServiceAccount): the projected token.
    #[serde(rename_all = "camelCase")]
    Workload {
        tenant_id: String,
        client_id: String,
        token_file: String,
    },
}

/// Why a spec cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{SPEC_ENV} is {0} bytes; at most {MAX_SPEC_BYTES} are allowed")]
    TooLarge(usize),
    #[error("{SPEC_ENV} is not valid JSON of the expected shape (line {line}, column {column})")]
    Json {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{SPEC_ENV} has version {0}; this kvbridge reads version {SPEC_VERSION} (the webhook and the init container's image differ)")]
    Version(u32),
    #[error("{SPEC_ENV} names {0} references; at most {MAX_REFS} are allowed")]
    TooMany(usize),
}

impl EnvSpec {
    pub fn new() -> Self {
        Self {
            version: SPEC_VERSION,
            refs: BTreeMap::new(),
        }
    }

    /// Parses and checks a spec (bounded: size, then serde_json's recursion limit).
    pub fn parse(text: &str) -> Result<EnvSpec, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge(text.len()));
        }
        let spec: EnvSpec = serde_json::from_str(text).map_err(|e| SpecError::Json {
            line: e.line(),
            column: e.column(),
            source: e,
        })?;
        if spec.version != SPEC_VERSION {
            return Err(SpecError::Version(spec.version));
        }
        if spec.refs.len() > MAX_REFS {
            return Err(SpecError::TooMany(spec.refs.len()));
        }
        Ok(spec)
    }

    pub fn to_json(&self) -> String {
        // Serializing plain data into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Environment variables the spec refers to (service-principal credentials): removed from
    /// the application's environment.
    pub fn control_variables(&self) -> Vec<&str> {
        let mut v = vec![SPEC_ENV];
        for r in self.refs.values() {
            if let RuntimeIdentity::ServicePrincipal {
                client_id_env,
                client_secret_env,
                ..
            } = &r.identity
            {
                v.push(client_id_env);
                v.push(client_secret_env);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use controller::crd::ObjectType;

    fn reference(identity: RuntimeIdentity) -> Reference {
        Reference {
            vault_url: "https://kv.vault.azure.net".into(),
            cloud: (&Cloud::public()).into(),
            object: VaultObject {
                name: "db".into(),
                object_type: ObjectType::Secret,
                version: None,
                content_type: None,
            },
            transforms: vec![Transform::Trim],
            chain_order: None,
            identity,
        }
    }

    #[test]
    fn round_trip_and_checks() {
        let mut spec = EnvSpec::new();
        spec.refs
            .insert("a".into(), reference(RuntimeIdentity::Pod));
        spec.refs.insert(
            "b".into(),
            reference(RuntimeIdentity::ServicePrincipal {
                tenant_id: "t".into(),
                client_id_env: "KVBRIDGE_SP_0_CLIENT_ID".into(),
                client_secret_env: "KVBRIDGE_SP_0_CLIENT_SECRET".into(),
            }),
        );
        let json = spec.to_json();
        assert!(json.contains(r#""type":"servicePrincipal""#), "{json}");
        assert!(json.contains(r#""transforms":["trim"]"#), "{json}");
        assert_eq!(EnvSpec::parse(&json).unwrap(), spec);
        assert_eq!(
            spec.control_variables(),
            [
                SPEC_ENV,
                "KVBRIDGE_SP_0_CLIENT_ID",
                "KVBRIDGE_SP_0_CLIENT_SECRET"
            ]
        );

        let future = json.replace(r#""version":1"#, r#""version":2"#);
        assert!(matches!(
            EnvSpec::parse(&future),
            Err(SpecError::Version(2))
        ));
        let e = EnvSpec::parse(r#"{"version":1,"refs":{},"extra":1}"#).unwrap_err();
        assert!(matches!(e, SpecError::Json { .. }), "{e}");
        let big = " ".repeat(MAX_SPEC_BYTES + 1);
        assert!(matches!(EnvSpec::parse(&big), Err(SpecError::TooLarge(_))));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(EnvSpec::parse(&deep), Err(SpecError::Json { .. })));
    }
}
