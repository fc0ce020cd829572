//! AKS `azure.json` (cloud-provider-azure configuration).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use zeroize::Zeroizing;

use super::{
    AccessToken, BoxFuture, ClientCertificateCredential, ClientSecretCredential, CredentialOptions,
    ManagedIdentityCredential, ManagedIdentityId, TokenCredential, WorkloadIdentityCredential,
};
use crate::cloud::Cloud;
use crate::error::Error;

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
                reason: "cannot read the file".into(),
                source: Some(std::sync::Arc::new(e)),
            }
        })?);
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            Error::invalid_file(
                "azure.json",
                path,
                format!("not valid JSON (line {}, column {})", e.line(), e.column()),
            )
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
                    return Err(Error::invalid_file(
                        "azure.json",
                        path,
                        "cloud AzureStackCloud needs AZURE_ENVIRONMENT_FILEPATH",
                    ))
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
                source: None,
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
