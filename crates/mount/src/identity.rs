//! Which identity reads the vault, from what the user configured: the class parameters
//! (`usePodIdentity`, `useVMManagedIdentity` + `userAssignedIdentityID`, `clientID`), what the
//! caller was handed (the CSI driver's service-account tokens, a nodePublishSecretRef or a
//! Kubernetes Secret), and the process environment (`AZURE_*`). One selection for `kvbridge
//! mount`, the CSI provider, FlexVolume, the controller and the env injector.
//!
//! Selection, as the Azure provider does it for classes:
//! - `clientID` = workload identity: the pod's service-account token for
//!   `api://AzureADTokenExchange` handed in by the driver, else the projected token file named by
//!   `AZURE_FEDERATED_TOKEN_FILE`;
//! - `useVMManagedIdentity` = managed identity (user-assigned by `userAssignedIdentityID`);
//! - `usePodIdentity` = AAD Pod Identity through NMI's host token endpoint, for the pod the
//!   driver (or kubelet, for FlexVolume) names; retired upstream, so its use logs how to move;
//! - otherwise a service principal: `clientid` / `clientsecret` from the handed-in secret (keys
//!   case-insensitive); without one, the caller's [`Fallback`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use keyvault::{
    AccessToken, BoxFuture, Cloud, ManagedIdentityId, TokenCredential, Transport,
    WorkloadIdentityCredential,
};
use render::params::{IdentityMode, Parameters};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Audience of the service-account token used for workload identity.
pub const WORKLOAD_IDENTITY_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Attribute keys the CSI driver adds to the class parameters.
pub const ATTR_POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub const ATTR_POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub const ATTR_POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub const ATTR_SA_NAME: &str = "csi.storage.k8s.io/serviceAccount.name";
pub const ATTR_SA_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

/// Why no identity could be selected. Names the parameter or source involved; never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("tenantID is missing from the class parameters{hint}")]
    MissingTenant { hint: &'static str },
    #[error("usePodIdentity: AAD Pod Identity needs the pod's namespace and name, which only the CSI driver (podInfoOnMount: true) or kubelet (FlexVolume) provide; outside a pod use workload identity (clientID) or useVMManagedIdentity")]
    PodIdentityWithoutPod,
    #[error("clientID {client_id:?} selects workload identity, but {missing}")]
    NoWorkloadToken {
        client_id: String,
        missing: &'static str,
    },
    #[error("{source_name} is not a JSON map of audience to {{token, expirationTimestamp}} (line {line}, column {column})")]
    BadTokens {
        source_name: &'static str,
        line: usize,
        column: usize,
    },
    #[error("could not find {key} in the {source_name}: service principal mode (no clientID, useVMManagedIdentity or usePodIdentity in the class) needs clientid and clientsecret")]
    MissingSecretKey {
        key: &'static str,
        source_name: &'static str,
    },
    #[error("no identity: {0}")]
    NoIdentity(&'static str),
}

/// What service-principal mode does when the caller handed in no `clientid` / `clientsecret`.
#[derive(Debug, Clone)]
pub enum Fallback {
    /// Fail, naming `source_name` (the CSI provider: the nodePublishSecretRef is the only
    /// service-principal source, the node's own identity must not leak into pods).
    Refuse { source_name: &'static str },
    /// The process's own credential: `AZURE_CLIENT_ID` with `AZURE_CLIENT_SECRET` /
    /// `AZURE_CLIENT_CERTIFICATE_PATH` / `AZURE_FEDERATED_TOKEN_FILE`, then AKS azure.json,
    /// then (when `managed_identity`) IMDS.
    Ambient { managed_identity: bool },
    /// A fixed service principal (the embedded dev vault's built-in client), used when the
    /// environment names no client.
    Fixed {
        client_id: String,
        secret: Zeroizing<String>,
    },
}

/// Where identity material comes from besides the class.
pub struct Sources<'a> {
    /// The CSI driver's attributes (pod, service account, tokens); empty elsewhere.
    pub attributes: &'a BTreeMap<String, String>,
    /// Handed-in service-principal secret (nodePublishSecretRef, a Kubernetes Secret).
    pub secrets: &'a BTreeMap<String, String>,
    /// Process environment lookup (`|_| None` for the provider, which serves other pods).
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub fallback: Fallback,
}

/// The identity of one mount or one synced object, with what its credential needs.
pub enum Identity {
    ServicePrincipal {
        tenant: String,
        client_id: String,
        secret: Zeroizing<String>,
    },
    /// Workload identity with a token handed in (by the CSI driver, or the TokenRequest API).
    Workload {
        tenant: String,
        client_id: String,
        /// `namespace/serviceaccount`, the subject the federated credential trusts.
        subject: String,
        token: Zeroizing<String>,
    },
    /// Workload identity from the projected token file (re-read as kubelet rotates it).
    WorkloadFile {
        tenant: String,
        client_id: String,
        path: PathBuf,
    },
    Managed {
        id: ManagedIdentityId,
    },
    /// AAD Pod Identity (retired): NMI issues the token of the identity bound to this pod.
    PodIdentity {
        namespace: String,
        pod_name: String,
        /// `userAssignedIdentityID`: which of the pod's bound identities.
        client_id: Option<String>,
    },
    /// The process's own credential chain (see [`Fallback::Ambient`]).
    Ambient {
        managed_identity: bool,
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

fn digest(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl Identity {
    /// Selects the identity for `params` from `sources`.
    pub fn select(params: &Parameters, sources: &Sources<'_>) -> Result<Identity, IdentityError> {
        // A pod's mount (the driver's attributes present) never reads this process's
        // environment: the node's credentials must not serve other pods.
        let in_cluster = !sources.attributes.is_empty();
        let env = |k: &str| {
            if in_cluster {
                None
            } else {
                non_empty((sources.env)(k))
            }
        };
        let tenant = || {
            params
                .tenant_id
                .clone()
                .or_else(|| env("AZURE_TENANT_ID"))
                .ok_or(IdentityError::MissingTenant {
                    hint: if in_cluster {
                        ""
                    } else {
                        " (or set AZURE_TENANT_ID)"
                    },
                })
        };
        Ok(match params.identity() {
            IdentityMode::PodIdentity => {
                let attr = |k: &str| {
                    sources
                        .attributes
                        .get(k)
                        .map(|v| v.trim().to_string())
                        .filter(|v| !v.is_empty())
                };
                match (attr(ATTR_POD_NAMESPACE), attr(ATTR_POD_NAME)) {
                    (Some(namespace), Some(pod_name)) => Identity::PodIdentity {
                        namespace,
                        pod_name,
                        client_id: params.user_assigned_identity_id.clone(),
                    },
                    _ => return Err(IdentityError::PodIdentityWithoutPod),
                }
            }
            IdentityMode::VmManagedIdentity {
                user_assigned_identity_id,
            } => Identity::Managed {
                id: match user_assigned_identity_id {
                    Some(id) => ManagedIdentityId::ClientId(id),
                    None => ManagedIdentityId::System,
                },
            },
            IdentityMode::WorkloadIdentity { client_id } => {
                match handed_in_token(sources.attributes)? {
                    Some(token) => Identity::Workload {
                        tenant: tenant()?,
                        subject: format!(
                            "{}/{}",
                            sources
                                .attributes
                                .get(ATTR_POD_NAMESPACE)
                                .map(String::as_str)
                                .unwrap_or(""),
                            sources
                                .attributes
                                .get(ATTR_SA_NAME)
                                .map(String::as_str)
                                .unwrap_or("")
                        ),
                        client_id,
                        token,
                    },
                    None => match env("AZURE_FEDERATED_TOKEN_FILE") {
                        Some(path) => Identity::WorkloadFile {
                            tenant: tenant()?,
                            client_id,
                            path: PathBuf::from(path),
                        },
                        None => {
                            return Err(IdentityError::NoWorkloadToken {
                                client_id,
                                missing: if in_cluster {
                                    "the driver sent no service account token for audience api://AzureADTokenExchange in csi.storage.k8s.io/serviceAccount.tokens: add tokenRequests [{audience: api://AzureADTokenExchange}] to the CSIDriver secrets-store.csi.k8s.io"
                                } else {
                                    "AZURE_FEDERATED_TOKEN_FILE is not set (the projected service account token file)"
                                },
                            })
                        }
                    },
                }
            }
            IdentityMode::ServicePrincipal => {
                let find = |key: &str| {
                    sources
                        .secrets
                        .iter()
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case(key))
                        .map(|(_, v)| v.trim().to_string())
                        .filter(|v| !v.is_empty())
                };
                match (find("clientid"), &sources.fallback) {
                    (Some(client_id), fallback) => {
                        let source_name = match fallback {
                            Fallback::Refuse { source_name } => source_name,
                            _ => "handed-in secret",
                        };
                        let secret =
                            find("clientsecret").ok_or(IdentityError::MissingSecretKey {
                                key: "clientsecret",
                                source_name,
                            })?;
                        Identity::ServicePrincipal {
                            tenant: tenant()?,
                            client_id,
                            secret: Zeroizing::new(secret),
                        }
                    }
                    (None, Fallback::Refuse { source_name }) => {
                        return Err(IdentityError::MissingSecretKey {
                            key: "clientid",
                            source_name,
                        })
                    }
                    (None, Fallback::Fixed { client_id, secret })
                        if env("AZURE_CLIENT_ID").is_none() =>
                    {
                        Identity::ServicePrincipal {
                            tenant: tenant()?,
                            client_id: client_id.clone(),
                            secret: secret.clone(),
                        }
                    }
                    (None, Fallback::Ambient { managed_identity }) => Identity::Ambient {
                        managed_identity: *managed_identity,
                    },
                    (None, Fallback::Fixed { .. }) => Identity::Ambient {
                        managed_identity: false,
                    },
                }
            }
        })
    }

    /// A stable key for this identity, without secrets. Two reads share cached objects and
    /// a client only when their keys are equal: same authority, tenant and client; for a
    /// service principal the same secret (by digest); for workload identity the same subject.
    pub fn cache_key(&self, authority: &str) -> String {
        match self {
            Identity::ServicePrincipal {
                tenant,
                client_id,
                secret,
            } => format!(
                "sp|{authority}|{tenant}|{client_id}|{}",
                digest(secret.as_bytes())
            ),
            Identity::Workload {
                tenant,
                client_id,
                subject,
                ..
            } => format!("wi|{authority}|{tenant}|{client_id}|{subject}"),
            Identity::WorkloadFile {
                tenant,
                client_id,
                path,
            } => format!("wif|{authority}|{tenant}|{client_id}|{}", path.display()),
            Identity::Managed { id } => format!("mi|{id:?}"),
            // NMI answers per pod (its bindings select pods by label).
            Identity::PodIdentity {
                namespace,
                pod_name,
                client_id,
            } => format!(
                "pi|{namespace}/{pod_name}|{}",
                client_id.as_deref().unwrap_or("")
            ),
            Identity::Ambient { managed_identity } => {
                format!("ambient|{authority}|{managed_identity}")
            }
        }
    }

    /// Description for logs and errors: never a secret or token.
    pub fn describe(&self) -> String {
        match self {
            Identity::ServicePrincipal { client_id, .. } => {
                format!("service principal {client_id}")
            }
            Identity::Workload {
                client_id, subject, ..
            } => format!("workload identity {client_id} (service account {subject})"),
            Identity::WorkloadFile {
                client_id, path, ..
            } => format!(
                "workload identity {client_id} (token file {})",
                path.display()
            ),
            Identity::Managed { id } => match id {
                ManagedIdentityId::System => "system-assigned managed identity".into(),
                ManagedIdentityId::ClientId(c) => format!("user-assigned managed identity {c}"),
                ManagedIdentityId::ObjectId(c) => format!("managed identity object {c}"),
                ManagedIdentityId::ResourceId(c) => format!("managed identity {c}"),
            },
            Identity::PodIdentity {
                namespace,
                pod_name,
                client_id,
            } => format!(
                "AAD Pod Identity of pod {namespace}/{pod_name}{}",
                client_id
                    .as_deref()
                    .map(|c| format!(" (identity {c})"))
                    .unwrap_or_default()
            ),
            Identity::Ambient { .. } => {
                "this process's credential (environment, azure.json)".into()
            }
        }
    }

    /// Metric/log label of the mode (a fixed set).
    pub fn mode(&self) -> &'static str {
        match self {
            Identity::ServicePrincipal { .. } => "service_principal",
            Identity::Workload { .. } | Identity::WorkloadFile { .. } => "workload_identity",
            Identity::Managed { .. } => "managed_identity",
            Identity::PodIdentity { .. } => "pod_identity",
            Identity::Ambient { .. } => "ambient",
        }
    }

    /// A credential for this identity in `cloud`, on `transport`.
    pub fn credential(
        &self,
        cloud: &Cloud,
        endpoints: &LocalEndpoints,
        transport: &Transport,
    ) -> Result<Arc<dyn TokenCredential>, keyvault::Error> {
        let imds_endpoint = endpoints.imds.as_deref();
        let authority = cloud.authority_host.as_str();
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
            } => Arc::new(HandedInToken::new(
                authority,
                tenant,
                client_id,
                token,
                transport.clone(),
            )),
            Identity::WorkloadFile {
                tenant,
                client_id,
                path,
            } => Arc::new(
                WorkloadIdentityCredential::from_token_file(authority, tenant, client_id, path)
                    .with_transport(transport.clone()),
            ),
            Identity::Managed { id } => Arc::new(
                keyvault::ManagedIdentityCredential::new(imds_endpoint, id.clone())?
                    .with_transport(transport.clone()),
            ),
            Identity::PodIdentity {
                namespace,
                pod_name,
                client_id,
            } => Arc::new(
                keyvault::PodIdentityCredential::new(
                    endpoints.nmi.as_deref(),
                    namespace,
                    pod_name,
                )?
                .with_client_id(client_id.as_deref())
                .with_transport(transport.clone()),
            ),
            Identity::Ambient { managed_identity } => {
                let options = keyvault::CredentialOptions {
                    imds_endpoint: imds_endpoint.map(str::to_string),
                    cloud: Some(cloud.clone()),
                    ..keyvault::CredentialOptions::new(transport.clone())
                };
                let chain = keyvault::DefaultCredential::with_options(&options);
                if *managed_identity {
                    Arc::new(chain)
                } else {
                    Arc::new(chain.without_managed_identity())
                }
            }
        })
    }
}

/// Node-local token endpoints (overridable for tests and unusual nodes).
#[derive(Debug, Clone, Default)]
pub struct LocalEndpoints {
    /// Managed identity (IMDS); `None` = `http://169.254.169.254`.
    pub imds: Option<String>,
    /// AAD Pod Identity's NMI host token endpoint; `None` = `http://127.0.0.1:2579/host/token/`.
    pub nmi: Option<String>,
}

/// The workload-identity token the CSI driver handed in, if any.
fn handed_in_token(
    attributes: &BTreeMap<String, String>,
) -> Result<Option<Zeroizing<String>>, IdentityError> {
    let raw = attributes
        .get(ATTR_SA_TOKENS)
        .map(|s| s.trim())
        .unwrap_or("");
    if raw.is_empty() {
        return Ok(None);
    }
    let tokens: BTreeMap<String, SaToken> =
        serde_json::from_str(raw).map_err(|e| IdentityError::BadTokens {
            source_name: ATTR_SA_TOKENS,
            line: e.line(),
            column: e.column(),
        })?;
    Ok(tokens
        .get(WORKLOAD_IDENTITY_AUDIENCE)
        .map(|t| t.token.trim())
        .filter(|t| !t.is_empty())
        .map(|t| Zeroizing::new(t.to_string())))
}

/// Workload identity with the newest service-account token handed in: one credential (and so
/// one Entra token cache) per service account, whose assertion is replaced on every use
/// (kubelet rotates the pod tokens).
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
            "workload identity credential for client {} (token handed in)",
            self.client_id
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: &[(&str, &str)]) -> Parameters {
        let mut m = BTreeMap::new();
        m.insert("keyvaultName".to_string(), "kv1".to_string());
        m.insert(
            "objects".to_string(),
            "array:\n  - |\n    objectName: s\n    objectType: secret\n".to_string(),
        );
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        Parameters::parse(&m).unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn tokens(token: &str) -> String {
        format!(
            r#"{{"api://AzureADTokenExchange":{{"token":"{token}","expirationTimestamp":"2030-01-01T00:00:00Z"}}}}"#
        )
    }

    fn provider(
        p: &Parameters,
        attrs: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, String>,
    ) -> Result<Identity, IdentityError> {
        Identity::select(
            p,
            &Sources {
                attributes: attrs,
                secrets,
                env: &|_| Some("must-not-be-used".into()),
                fallback: Fallback::Refuse {
                    source_name: "nodePublishSecretRef secret",
                },
            },
        )
    }

    fn cli(
        p: &Parameters,
        env: &[(&str, &str)],
        fallback: Fallback,
    ) -> Result<Identity, IdentityError> {
        let env = map(env);
        let lookup = move |k: &str| env.get(k).cloned();
        Identity::select(
            p,
            &Sources {
                attributes: &BTreeMap::new(),
                secrets: &BTreeMap::new(),
                env: &lookup,
                fallback,
            },
        )
    }

    #[test]
    fn provider_selection_uses_only_what_the_driver_handed_in() {
        let pod = map(&[
            (ATTR_POD_NAMESPACE, "team-a"),
            (ATTR_SA_NAME, "app"),
            (ATTR_SA_TOKENS, &tokens("jwt-1")),
        ]);
        let wi = params(&[("clientID", "cid"), ("tenantID", "t")]);
        let id = provider(&wi, &pod, &BTreeMap::new()).unwrap();
        assert!(
            matches!(&id, Identity::Workload { subject, token, .. } if subject == "team-a/app" && token.as_str() == "jwt-1")
        );
        // No token from the driver: the environment is never a source for pods.
        let e = provider(&wi, &map(&[(ATTR_POD_NAME, "p")]), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("tokenRequests"), "{e}");

        let sp = params(&[("tenantID", "t")]);
        let secrets = map(&[(" ClientID ", "app"), ("CLIENTSECRET", " s3cret ")]);
        let id = provider(&sp, &pod, &secrets).unwrap();
        assert!(
            matches!(&id, Identity::ServicePrincipal { client_id, secret, .. } if client_id == "app" && secret.as_str() == "s3cret")
        );
        assert!(!format!("{id:?}").contains("s3cret"));
        let e = provider(&sp, &pod, &map(&[("clientid", "app")])).unwrap_err();
        assert!(
            e.to_string()
                .contains("clientsecret in the nodePublishSecretRef secret"),
            "{e}"
        );
        let e = provider(&sp, &pod, &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("could not find clientid"), "{e}");
        let e = provider(&params(&[]), &pod, &secrets).unwrap_err();
        assert_eq!(e, IdentityError::MissingTenant { hint: "" });

        let mi = params(&[
            ("useVMManagedIdentity", "true"),
            ("userAssignedIdentityID", "uid"),
        ]);
        assert!(matches!(
            provider(&mi, &pod, &BTreeMap::new()).unwrap(),
            Identity::Managed { id: ManagedIdentityId::ClientId(c) } if c == "uid"
        ));
        let pi = params(&[
            ("usePodIdentity", "true"),
            ("userAssignedIdentityID", "uid"),
        ]);
        let pod_named = map(&[(ATTR_POD_NAMESPACE, "team-a"), (ATTR_POD_NAME, "web-0")]);
        let id = provider(&pi, &pod_named, &BTreeMap::new()).unwrap();
        assert!(
            matches!(&id, Identity::PodIdentity { namespace, pod_name, client_id } if namespace == "team-a" && pod_name == "web-0" && client_id.as_deref() == Some("uid"))
        );
        // Keys are per pod: NMI bindings select pods.
        let other = map(&[(ATTR_POD_NAMESPACE, "team-a"), (ATTR_POD_NAME, "web-1")]);
        assert_ne!(
            id.cache_key("a"),
            provider(&pi, &other, &BTreeMap::new())
                .unwrap()
                .cache_key("a")
        );
        let e = provider(&pi, &pod, &BTreeMap::new()).unwrap_err();
        assert_eq!(e, IdentityError::PodIdentityWithoutPod);
    }

    #[test]
    fn cli_selection_uses_the_environment() {
        let wi = params(&[("clientID", "cid")]);
        let id = cli(
            &wi,
            &[
                ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
                ("AZURE_TENANT_ID", "t-env"),
            ],
            Fallback::Ambient {
                managed_identity: false,
            },
        )
        .unwrap();
        assert!(
            matches!(&id, Identity::WorkloadFile { tenant, path, .. } if tenant == "t-env" && path == &PathBuf::from("/var/run/token"))
        );
        let e = cli(
            &wi,
            &[("AZURE_TENANT_ID", "t")],
            Fallback::Ambient {
                managed_identity: false,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"), "{e}");
        let e = cli(
            &wi,
            &[("AZURE_FEDERATED_TOKEN_FILE", "/t")],
            Fallback::Ambient {
                managed_identity: false,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("AZURE_TENANT_ID"), "{e}");

        let sp = params(&[("tenantID", "t")]);
        assert!(matches!(
            cli(
                &sp,
                &[],
                Fallback::Ambient {
                    managed_identity: false
                }
            )
            .unwrap(),
            Identity::Ambient {
                managed_identity: false
            }
        ));
        let dev = Fallback::Fixed {
            client_id: "dev".into(),
            secret: Zeroizing::new("dev-secret".into()),
        };
        assert!(matches!(
            cli(&sp, &[], dev.clone()).unwrap(),
            Identity::ServicePrincipal { client_id, .. } if client_id == "dev"
        ));
        // A client named in the environment wins over the dev vault's built-in one.
        assert!(matches!(
            cli(&sp, &[("AZURE_CLIENT_ID", "mine")], dev).unwrap(),
            Identity::Ambient { .. }
        ));
    }

    #[test]
    fn cache_keys_separate_identities_and_never_hold_secrets() {
        let sp = |s: &str| Identity::ServicePrincipal {
            tenant: "t".into(),
            client_id: "c".into(),
            secret: Zeroizing::new(s.into()),
        };
        let a = sp("secret-one").cache_key("https://login/");
        assert_ne!(a, sp("secret-two").cache_key("https://login/"));
        assert_eq!(a, sp("secret-one").cache_key("https://login/"));
        assert!(!a.contains("secret-one"));
        let wi = |subject: &str, token: &str| Identity::Workload {
            tenant: "t".into(),
            client_id: "c".into(),
            subject: subject.into(),
            token: Zeroizing::new(token.into()),
        };
        // Rotated tokens of one service account share a key; other accounts do not.
        assert_eq!(
            wi("ns/a", "t1").cache_key("x"),
            wi("ns/a", "t2").cache_key("x")
        );
        assert_ne!(
            wi("ns/a", "t1").cache_key("x"),
            wi("ns/b", "t1").cache_key("x")
        );
        assert!(!wi("ns/a", "tok-123").cache_key("x").contains("tok-123"));
    }
}
