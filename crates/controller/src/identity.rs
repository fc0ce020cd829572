//! `spec.vault.identity` -> [`mount::identity::Identity`] (the shared identity layer; this only
//! gathers the material from Kubernetes):
//!
//! - `serviceAccount`: workload identity with a token for that ServiceAccount (same namespace)
//!   from the TokenRequest API, audience `api://AzureADTokenExchange`; client and tenant id
//!   from the spec, else the ServiceAccount's `azure.workload.identity/client-id` /
//!   `tenant-id` annotations, else (tenant) the controller's tenant;
//! - `servicePrincipal`: client id and secret from a Secret (same namespace);
//! - `managedIdentity`: IMDS, user-assigned by client id or system-assigned;
//! - none: the controller's own credential chain.
//!
//! Tokens are reused until 10 minutes before they expire; Secrets and ServiceAccounts are read
//! at most once a minute per name, so a steady refresh costs no API call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use keyvault::ManagedIdentityId;
use kube::api::{Api, PostParams};
use kube::ResourceExt;
use mount::identity::{Identity, WORKLOAD_IDENTITY_AUDIENCE};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::crd::{AzureKeyVaultSecret, ObjectIdentity};
use crate::objects::FetchFailure;
use crate::reconcile::Ctx;

/// ServiceAccount annotations of Azure Workload Identity.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// Lifetime asked of the TokenRequest API.
const TOKEN_SECONDS: i64 = 3600;
/// Secrets and ServiceAccounts are read again after this long.
const MATERIAL_TTL: Duration = Duration::from_secs(60);

#[derive(Clone)]
enum Material {
    Token {
        token: Zeroizing<String>,
        client_id: Option<String>,
        tenant_id: Option<String>,
        valid_until: Instant,
    },
    Secret {
        data: BTreeMap<String, Zeroizing<String>>,
        read_at: Instant,
    },
}

/// Identity material read from Kubernetes, by (kind, namespace, name).
#[derive(Default)]
pub struct Cache(Mutex<HashMap<(&'static str, String, String), Material>>);

impl Cache {
    fn get(&self, key: &(&'static str, String, String)) -> Option<Material> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match m.get(key)? {
            Material::Token { valid_until, .. } if *valid_until > now => m.get(key).cloned(),
            Material::Secret { read_at, .. } if now.duration_since(*read_at) < MATERIAL_TTL => {
                m.get(key).cloned()
            }
            _ => None,
        }
    }
    fn put(&self, key: (&'static str, String, String), v: Material) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert(key, v);
    }
}

fn invalid(message: String) -> FetchFailure {
    FetchFailure {
        reason: "InvalidSpec",
        message,
        transient: false,
    }
}

fn unavailable(message: String, transient: bool) -> FetchFailure {
    FetchFailure {
        reason: "IdentityUnavailable",
        message,
        transient,
    }
}

fn kube_failure(what: String, e: kube::Error) -> FetchFailure {
    let transient = !matches!(&e, kube::Error::Api(s) if s.code == 404 || s.code == 403);
    unavailable(format!("{what}: {e}"), transient)
}

/// The identity `akvs` is fetched with.
pub async fn for_resource(akvs: &AzureKeyVaultSecret, ctx: &Ctx) -> Result<Identity, FetchFailure> {
    let Some(spec) = &akvs.spec.vault.identity else {
        return Ok(crate::reconcile::default_identity(ctx));
    };
    let ns = akvs.namespace().unwrap_or_default();
    let ObjectIdentity {
        service_account,
        service_principal,
        managed_identity,
    } = spec;
    let set = [
        service_account.is_some(),
        service_principal.is_some(),
        managed_identity.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if set != 1 {
        return Err(invalid(format!(
            "spec.vault.identity: set exactly one of serviceAccount, servicePrincipal, managedIdentity ({set} set)"
        )));
    }
    if let Some(mi) = managed_identity {
        let id = match mi
            .client_id
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            Some(c) => ManagedIdentityId::ClientId(c.to_string()),
            None => ManagedIdentityId::System,
        };
        return Ok(Identity::Managed { id });
    }
    if let Some(sp) = service_principal {
        let data = secret_data(ctx, &ns, &sp.secret_ref.name).await?;
        let key = |k: &Option<String>, default: &str| k.clone().unwrap_or_else(|| default.into());
        let id_key = key(&sp.secret_ref.client_id_key, "clientid");
        let secret_key = key(&sp.secret_ref.client_secret_key, "clientsecret");
        let find = |k: &str| {
            data.iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        let client_id = find(&id_key).ok_or_else(|| {
            invalid(format!(
                "spec.vault.identity.servicePrincipal: Secret {} has no key {id_key}",
                sp.secret_ref.name
            ))
        })?;
        let secret = find(&secret_key).ok_or_else(|| {
            invalid(format!(
                "spec.vault.identity.servicePrincipal: Secret {} has no key {secret_key}",
                sp.secret_ref.name
            ))
        })?;
        let tenant = tenant(sp.tenant_id.as_deref(), None, ctx)?;
        return Ok(Identity::ServicePrincipal {
            tenant,
            client_id: client_id.trim().to_string(),
            secret,
        });
    }
    let Some(sa) = service_account else {
        return Ok(crate::reconcile::default_identity(ctx));
    };
    let (token, sa_client, sa_tenant) = sa_token(ctx, &ns, &sa.name).await?;
    let client_id = sa
        .client_id
        .clone()
        .or(sa_client)
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            invalid(format!(
                "spec.vault.identity.serviceAccount: no clientId, and ServiceAccount {} has no {CLIENT_ID_ANNOTATION} annotation",
                sa.name
            ))
        })?;
    let tenant = tenant(sa.tenant_id.as_deref(), sa_tenant.as_deref(), ctx)?;
    Ok(Identity::Workload {
        tenant,
        client_id,
        subject: format!("system:serviceaccount:{ns}:{}", sa.name),
        token,
    })
}

fn tenant(spec: Option<&str>, annotation: Option<&str>, ctx: &Ctx) -> Result<String, FetchFailure> {
    spec.or(annotation)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .or_else(|| ctx.settings.tenant_id.clone())
        .ok_or_else(|| {
            invalid("spec.vault.identity: no tenantId, and the controller has no --tenant-id / AZURE_TENANT_ID".into())
        })
}

pub(crate) async fn secret_data(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, Zeroizing<String>>, FetchFailure> {
    let key = ("Secret", ns.to_string(), name.to_string());
    if let Some(Material::Secret { data, .. }) = ctx.identities.get(&key) {
        return Ok(data);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let s = api
        .get(name)
        .await
        .map_err(|e| kube_failure(format!("reading Secret {name}"), e))?;
    let data: BTreeMap<String, Zeroizing<String>> = s
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, Zeroizing::new(v))))
        .collect();
    ctx.identities.put(
        key,
        Material::Secret {
            data: data.clone(),
            read_at: Instant::now(),
        },
    );
    Ok(data)
}

pub(crate) async fn sa_token(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<(Zeroizing<String>, Option<String>, Option<String>), FetchFailure> {
    let key = ("ServiceAccount", ns.to_string(), name.to_string());
    if let Some(Material::Token {
        token,
        client_id,
        tenant_id,
        ..
    }) = ctx.identities.get(&key)
    {
        return Ok((token, client_id, tenant_id));
    }
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let sa = api
        .get(name)
        .await
        .map_err(|e| kube_failure(format!("reading ServiceAccount {name}"), e))?;
    let ann = sa.annotations();
    let client_id = ann.get(CLIENT_ID_ANNOTATION).cloned();
    let tenant_id = ann.get(TENANT_ID_ANNOTATION).cloned();
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![WORKLOAD_IDENTITY_AUDIENCE.to_string()]),
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: None,
        }),
        ..Default::default()
    };
    let resp: TokenRequest = api
        .create_subresource("token", name, &PostParams::default(), &req)
        .await
        .map_err(|e| kube_failure(format!("TokenRequest for ServiceAccount {name}"), e))?;
    let status = resp
        .status
        .ok_or_else(|| unavailable("TokenRequest returned no token".into(), true))?;
    let token = Zeroizing::new(status.token.unwrap_or_default());
    if token.is_empty() {
        return Err(unavailable("TokenRequest returned no token".into(), true));
    }
    // Reused until 10 minutes before it expires (the API server may grant less than asked).
    let left = status
        .expiration_timestamp
        .map(|t| {
            t.0.duration_since(k8s_openapi::jiff::Timestamp::now())
                .as_secs()
                .max(0) as u64
        })
        .unwrap_or(600);
    let valid_for = Duration::from_secs(left.saturating_sub(600));
    ctx.identities.put(
        key,
        Material::Token {
            token: token.clone(),
            client_id: client_id.clone(),
            tenant_id: tenant_id.clone(),
            valid_until: Instant::now() + valid_for,
        },
    );
    Ok((token, client_id, tenant_id))
}
