//! Which identity a mount uses, and the credential for it.
//!
//! Same selection as the Azure provider: `clientID` + the pod's service-account token for
//! `api://AzureADTokenExchange` = workload identity; `useVMManagedIdentity` (+
//! `userAssignedIdentityID`) = managed identity; otherwise the service principal from the
//! nodePublishSecretRef (`clientid` / `clientsecret`, keys case-insensitive). `usePodIdentity`
//! is refused (AAD Pod Identity is retired).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use keyvault::{
    AccessToken, BoxFuture, ManagedIdentityId, TokenCredential, Transport,
    WorkloadIdentityCredential,
};
use render::params::{IdentityMode, Parameters};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{ProviderError, WORKLOAD_IDENTITY_AUDIENCE};

/// Attribute keys the driver adds to the class parameters.
pub const ATTR_POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub const ATTR_POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub const ATTR_POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub const ATTR_SA_NAME: &str = "csi.storage.k8s.io/serviceAccount.name";
pub const ATTR_SA_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// The identity of one mount, with what is needed to build its credential.
pub enum Identity {
    ServicePrincipal {
        tenant: String,
        client_id: String,
        secret: Zeroizing<String>,
    },
    Workload {
        tenant: String,
        client_id: String,
        namespace: String,
        service_account: String,
        token: Zeroizing<String>,
    },
    Managed {
        tenant: String,
        id: ManagedIdentityId,
    },
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[derive(Deserialize)]
struct SaToken {
    token: String,
}

fn sha256_hex(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Identity {
    /// Picks the identity from the parsed parameters, the raw attributes and the node-publish
    /// secrets.
    pub fn select(
        params: &Parameters,
        attrs: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Identity, ProviderError> {
        let tenant = || params.require_tenant().map(str::to_string);
        Ok(match params.identity() {
            IdentityMode::PodIdentity => {
                return Err(ProviderError::Identity(
                    "usePodIdentity: not supported (AAD Pod Identity is retired); use workload identity (clientID with a federated service account) or useVMManagedIdentity".into(),
                ))
            }
            IdentityMode::VmManagedIdentity {
                user_assigned_identity_id,
            } => Identity::Managed {
                tenant: tenant()?,
                id: match user_assigned_identity_id {
                    Some(id) => ManagedIdentityId::ClientId(id),
                    None => ManagedIdentityId::System,
                },
            },
            IdentityMode::WorkloadIdentity { client_id } => {
                let raw = attrs.get(ATTR_SA_TOKENS).map(|s| s.trim()).unwrap_or("");
                let missing = || {
                    ProviderError::Identity(format!(
                        "clientID {client_id:?} selects workload identity, but the driver sent no service account token for audience {WORKLOAD_IDENTITY_AUDIENCE} in {ATTR_SA_TOKENS}: add tokenRequests [{{audience: {WORKLOAD_IDENTITY_AUDIENCE}}}] to the CSIDriver secrets-store.csi.k8s.io"
                    ))
                };
                if raw.is_empty() {
                    return Err(missing());
                }
                let tokens: BTreeMap<String, SaToken> =
                    serde_json::from_str(raw).map_err(|e| {
                        ProviderError::Attributes(format!(
                            "{ATTR_SA_TOKENS} is not a JSON map of audience to {{token, expirationTimestamp}} (line {}, column {})",
                            e.line(),
                            e.column()
                        ))
                    })?;
                let token = tokens
                    .get(WORKLOAD_IDENTITY_AUDIENCE)
                    .map(|t| t.token.trim())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(missing)?;
                Identity::Workload {
                    tenant: tenant()?,
                    client_id,
                    namespace: attrs.get(ATTR_POD_NAMESPACE).cloned().unwrap_or_default(),
                    service_account: attrs.get(ATTR_SA_NAME).cloned().unwrap_or_default(),
                    token: Zeroizing::new(token.to_string()),
                }
            }
            IdentityMode::ServicePrincipal => {
                let find = |key: &str| {
                    secrets
                        .iter()
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
                        .map(|(_, v)| v.trim().to_string())
                        .filter(|v| !v.is_empty())
                };
                let hint = "service principal mode (no clientID, useVMManagedIdentity or usePodIdentity in the class)";
                let client_id = find("clientid").ok_or_else(|| {
                    ProviderError::Identity(format!(
                        "could not find clientid in the nodePublishSecretRef secret: {hint} needs a secret with clientid and clientsecret"
                    ))
                })?;
                let secret = find("clientsecret").ok_or_else(|| {
                    ProviderError::Identity(format!(
                        "could not find clientsecret in the nodePublishSecretRef secret: {hint} needs a secret with clientid and clientsecret"
                    ))
                })?;
                Identity::ServicePrincipal {
                    tenant: tenant()?,
                    client_id,
                    secret: Zeroizing::new(secret),
                }
            }
        })
    }

    /// A stable key for this identity, without secrets. Two mounts share cached objects only
    /// when their keys are equal: same tenant and client; for a service principal the same
    /// secret (by digest); for workload identity the same namespace and service account (the
    /// subject the federated credential trusts).
    pub fn cache_key(&self, authority: &str) -> String {
        match self {
            Identity::ServicePrincipal {
                tenant,
                client_id,
                secret,
            } => format!(
                "sp|{authority}|{tenant}|{client_id}|{}",
                sha256_hex(secret.as_bytes())
            ),
            Identity::Workload {
                tenant,
                client_id,
                namespace,
                service_account,
                ..
            } => format!("wi|{authority}|{tenant}|{client_id}|{namespace}|{service_account}"),
            Identity::Managed { tenant, id } => format!("mi|{tenant}|{id:?}"),
        }
    }

    /// Description for logs: never a secret or token.
    pub fn describe(&self) -> String {
        match self {
            Identity::ServicePrincipal { client_id, .. } => {
                format!("service principal {client_id}")
            }
            Identity::Workload {
                client_id,
                namespace,
                service_account,
                ..
            } => format!(
                "workload identity {client_id} (service account {namespace}/{service_account})"
            ),
            Identity::Managed { id, .. } => match id {
                ManagedIdentityId::System => "system-assigned managed identity".into(),
                ManagedIdentityId::ClientId(c) => format!("user-assigned managed identity {c}"),
                ManagedIdentityId::ObjectId(c) => format!("managed identity object {c}"),
                ManagedIdentityId::ResourceId(c) => format!("managed identity {c}"),
            },
        }
    }

    /// Metric/log label of the mode.
    pub fn mode(&self) -> &'static str {
        match self {
            Identity::ServicePrincipal { .. } => "service_principal",
            Identity::Workload { .. } => "workload_identity",
            Identity::Managed { .. } => "managed_identity",
        }
    }

    /// A credential for this identity on `transport`.
    pub fn credential(
        &self,
        authority: &str,
        imds_endpoint: Option<&str>,
        transport: &Transport,
    ) -> Result<Arc<dyn TokenCredential>, ProviderError> {
        Ok(match self {
            Identity::ServicePrincipal {
                tenant,
                client_id,
                secret,
            } => Arc::new(
                keyvault::ClientSecretCredential::new(
                    authority,
                    tenant,
                    client_id,
                    secret.as_str(),
                )
                .with_transport(transport.clone()),
            ),
            Identity::Workload {
                tenant,
                client_id,
                token,
                ..
            } => Arc::new(HandedInToken {
                authority: authority.to_string(),
                tenant: tenant.clone(),
                client_id: client_id.clone(),
                token: Mutex::new(token.clone()),
                transport: transport.clone(),
            }),
            Identity::Managed { id, .. } => Arc::new(
                keyvault::ManagedIdentityCredential::new(imds_endpoint, id.clone())
                    .map_err(ProviderError::config)?
                    .with_transport(transport.clone()),
            ),
        })
    }
}

/// Workload identity with the newest service-account token the driver handed in: one
/// credential (and so one Entra token cache) per service account, whose assertion is replaced
/// on every mount (kubelet rotates the pod tokens).
pub struct HandedInToken {
    authority: String,
    tenant: String,
    client_id: String,
    token: Mutex<Zeroizing<String>>,
    transport: Transport,
}

impl HandedInToken {
    pub fn new(
        authority: &str,
        tenant: &str,
        client_id: &str,
        token: &str,
        transport: Transport,
    ) -> Self {
        Self {
            authority: authority.to_string(),
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            token: Mutex::new(Zeroizing::new(token.to_string())),
            transport,
        }
    }

    /// Replaces the assertion used for the next Entra token request.
    pub fn set_token(&self, token: &str) {
        let mut t = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if t.as_str() != token {
            *t = Zeroizing::new(token.to_string());
        }
    }
}

impl fmt::Debug for HandedInToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandedInToken")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl TokenCredential for HandedInToken {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, keyvault::Error>> {
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let cred = WorkloadIdentityCredential::from_token(
            &self.authority,
            &self.tenant,
            &self.client_id,
            token.as_str(),
        )
        .with_transport(self.transport.clone());
        Box::pin(async move { cred.get_token(scope, tenant).await })
    }

    fn describe(&self) -> String {
        format!(
            "workload identity credential for client {} (token handed in by the CSI driver)",
            self.client_id
        )
    }
}
