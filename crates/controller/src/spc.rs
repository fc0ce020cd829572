//! SecretProviderClass `secretObjects` synced into Secrets without any pod mounting the class
//! (the CSI driver only syncs while a pod mounts it). Classes opt in with
//! [`SYNC_ANNOTATION`]` = "true"` and name the identity to read the vault with:
//! [`SA_ANNOTATION`] (workload identity: a TokenRequest token for that ServiceAccount, client id
//! from the class's `clientID` or the ServiceAccount's `azure.workload.identity/client-id`) or
//! [`SECRET_ANNOTATION`] (a Secret with `clientid`/`clientsecret`, as `nodePublishSecretRef`).
//! Parameters, identity selection, fetch and rendering are the provider's own (the shared
//! `mount` layer), so a synced Secret holds exactly the bytes a mount would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use mount::identity::{
    Fallback, Identity, Sources, ATTR_POD_NAMESPACE, ATTR_SA_NAME, ATTR_SA_TOKENS,
    WORKLOAD_IDENTITY_AUDIENCE,
};
use render::output::OutFile;
use render::render::RenderOptions;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::mapping::DesiredSecret;
use crate::objects::FetchFailure;
use crate::reconcile::Ctx;
use crate::write::{self, Outcome, Owner};

/// Class annotation that opts in.
pub const SYNC_ANNOTATION: &str = "kvbridge.io/sync-secret-objects";
/// Class annotation: the ServiceAccount (same namespace) for workload identity.
pub const SA_ANNOTATION: &str = "kvbridge.io/service-account";
/// Class annotation: the Secret (same namespace) with `clientid` and `clientsecret`.
pub const SECRET_ANNOTATION: &str = "kvbridge.io/secret";

/// The SecretProviderClass resource (secrets-store.csi.x-k8s.io/v1).
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("secrets-store.csi.x-k8s.io", "v1", "SecretProviderClass"),
        "secretproviderclasses",
    )
}

/// One `secretObjects` entry.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretObject {
    pub secret_name: String,
    #[serde(rename = "type")]
    pub secret_type: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub data: Vec<SecretObjectData>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretObjectData {
    /// The mounted file name (objectAlias or objectName).
    pub object_name: String,
    pub key: String,
}

/// Why a class could not be synced (no secret material).
#[derive(Debug, thiserror::Error)]
pub enum SpcError {
    #[error("spec: {0}")]
    Spec(String),
    #[error("identity: {0}")]
    Identity(String),
    /// A vault read or identity failure, with the reason and message an AzureKeyVaultSecret
    /// gets for the same error (`reconcile::failure_of`, `identity`).
    #[error("{}", .0.message)]
    Failed(FetchFailure),
    #[error("writing Secret {name}: {source}")]
    Write {
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl SpcError {
    fn reason(&self) -> &'static str {
        match self {
            SpcError::Spec(_) => "InvalidSpec",
            SpcError::Identity(_) => "IdentityUnavailable",
            SpcError::Failed(f) => f.reason,
            SpcError::Write { .. } => "KubernetesWriteFailed",
        }
    }
}

/// Pure: the Secrets `objects` asks for, from the rendered files.
pub fn desired_secrets(
    objects: &[SecretObject],
    files: &[OutFile],
) -> Result<Vec<DesiredSecret>, SpcError> {
    let mut out = Vec::with_capacity(objects.len());
    for o in objects {
        if o.secret_name.is_empty() {
            return Err(SpcError::Spec("secretObjects[].secretName is empty".into()));
        }
        let mut data = BTreeMap::new();
        for d in &o.data {
            let file = files
                .iter()
                .find(|f| f.path == d.object_name)
                .ok_or_else(|| {
                    SpcError::Spec(format!(
                        "secretObjects {}: objectName {:?} is not a mounted object (objectName or objectAlias)",
                        o.secret_name, d.object_name
                    ))
                })?;
            data.insert(d.key.clone(), Zeroizing::new(file.contents.to_vec()));
        }
        out.push(DesiredSecret {
            name: o.secret_name.clone(),
            secret_type: if o.secret_type.is_empty() {
                "Opaque".into()
            } else {
                o.secret_type.clone()
            },
            data,
            labels: o.labels.clone(),
            annotations: o.annotations.clone(),
        });
    }
    Ok(out)
}

fn annotation<'a>(obj: &'a DynamicObject, key: &str) -> Option<&'a str> {
    obj.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the class opted in.
pub fn opted_in(obj: &DynamicObject) -> bool {
    annotation(obj, SYNC_ANNOTATION).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

async fn sync(obj: &DynamicObject, ctx: &Ctx) -> Result<Vec<(String, Outcome)>, SpcError> {
    let ns = obj.namespace().unwrap_or_default();
    let spec = &obj.data["spec"];
    if spec["provider"].as_str() != Some("azure") {
        return Err(SpcError::Spec("spec.provider is not azure".into()));
    }
    let mut params: BTreeMap<String, String> = match spec.get("parameters") {
        Some(p) => serde_json::from_value(p.clone())
            .map_err(|e| SpcError::Spec(format!("spec.parameters: {e}")))?,
        None => BTreeMap::new(),
    };
    let objects: Vec<SecretObject> = match spec.get("secretObjects") {
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| SpcError::Spec(format!("spec.secretObjects: {e}")))?,
        None => Vec::new(),
    };
    if objects.is_empty() {
        return Ok(Vec::new());
    }
    // The identity material, as the CSI driver would hand it to the provider for a pod.
    let mut attributes = BTreeMap::from([(ATTR_POD_NAMESPACE.to_string(), ns.clone())]);
    let mut secrets: BTreeMap<String, String> = BTreeMap::new();
    if let Some(sa) = annotation(obj, SA_ANNOTATION) {
        let (token, client_id, _tenant) = crate::identity::sa_token(ctx, &ns, sa)
            .await
            .map_err(SpcError::Failed)?;
        let tokens = serde_json::json!({
            WORKLOAD_IDENTITY_AUDIENCE: { "token": token.as_str(), "expirationTimestamp": "" }
        });
        attributes.insert(ATTR_SA_NAME.into(), sa.to_string());
        attributes.insert(ATTR_SA_TOKENS.into(), tokens.to_string());
        if let Some(c) = client_id {
            params.entry("clientID".into()).or_insert(c);
        }
    } else if let Some(name) = annotation(obj, SECRET_ANNOTATION) {
        let data = crate::identity::secret_data(ctx, &ns, name)
            .await
            .map_err(SpcError::Failed)?;
        secrets = data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().to_string()))
            .collect();
    }
    let (parsed, attributes) = tokio::task::spawn_blocking(move || {
        (render::params::Parameters::parse(&params), attributes)
    })
    .await
    .map_err(|_| SpcError::Spec("parsing the parameters was interrupted".into()))?;
    let parsed = parsed.map_err(|e| SpcError::Spec(e.to_string()))?;
    let identity = Identity::select(
        &parsed,
        &Sources {
            attributes: &attributes,
            secrets: &secrets,
            env: &|_| None,
            fallback: Fallback::Refuse {
                source_name: "kvbridge.io/secret annotation",
            },
        },
    )
    .map_err(|e| SpcError::Identity(e.to_string()));
    // The client secret now lives in the identity (zeroized there); wipe this copy.
    for v in secrets.values_mut() {
        zeroize::Zeroize::zeroize(v);
    }
    let identity = identity?;
    let target = ctx
        .cloud
        .resolve_async(&parsed)
        .await
        .map_err(|e| SpcError::Spec(e.to_string()))?;
    let (client, _) = ctx
        .clients
        .client(&identity, &target.cloud)
        .map_err(|e| SpcError::Identity(e.to_string()))?;
    let source = mount::VaultSource::new(client, target.vault_url.clone());
    let rendered = render_objects(&source, &parsed.objects).await?;
    let desired = desired_secrets(&objects, &rendered.files)?;

    let ar = api_resource();
    let owner = Owner {
        namespace: ns.clone(),
        uid: obj.uid().unwrap_or_default(),
        owner_ref: obj.controller_owner_ref(&ar),
        source: format!("secretproviderclass/{}", obj.name_any()),
    };
    let writer = write::Writer::<Secret> {
        client: &ctx.client,
        store: &ctx.secrets,
        written: &ctx.written,
        field_manager: &ctx.settings.field_manager,
    };
    let mut calls = write::Calls::default();
    let mut done = Vec::new();
    for d in &desired {
        let hash = d.content_hash();
        let secret = write::secret_object(&owner, d, &hash);
        let outcome = writer
            .write(&owner, secret, &hash, &mut calls)
            .await
            .map_err(|source| SpcError::Write {
                name: d.name.clone(),
                source,
            })?;
        done.push((d.name.clone(), outcome));
    }
    Ok(done)
}

/// The class's objects read and rendered as a mount would; a failure is classified as for an
/// AzureKeyVaultSecret.
async fn render_objects(
    source: &mount::VaultSource,
    objects: &[render::params::ObjectSpec],
) -> Result<render::render::Rendered, SpcError> {
    let options = RenderOptions {
        construct_pem_chain: true,
        write_cert_and_key_in_separate_files: false,
        default_file_mode: 0o644,
        system_trust: None,
    };
    mount::mount_files(source, objects, &options, 8)
        .await
        .map_err(|e| SpcError::Failed(crate::reconcile::failure_of(&e)))
}

async fn publish(ctx: &Ctx, obj: &DynamicObject, type_: EventType, reason: &str, note: String) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Sync".into(),
        secondary: None,
    };
    if let Err(e) = ctx
        .recorder
        .publish(&ev, &obj.object_ref(&api_resource()))
        .await
    {
        tracing::debug!(error = %e, "cannot publish an event");
    }
}

/// Reconciles one SecretProviderClass. Vault and spec failures never touch the Secrets; they
/// end in a warning event and a retry.
pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, SpcError> {
    if !opted_in(&obj) {
        return Ok(Action::await_change());
    }
    let refresh = ctx.settings.default_refresh;
    match sync(&obj, &ctx).await {
        Ok(done) => {
            let refused: Vec<String> = done
                .iter()
                .filter_map(|(n, o)| match o {
                    Outcome::NotOwned { owner } => Some(format!(
                        "Secret {n} exists and is not owned by this class ({owner})"
                    )),
                    _ => None,
                })
                .collect();
            let changed: Vec<&str> = done
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Created | Outcome::Updated))
                .map(|(n, _)| n.as_str())
                .collect();
            if !refused.is_empty() {
                publish(
                    &ctx,
                    &obj,
                    EventType::Warning,
                    "NotOwned",
                    refused.join("; "),
                )
                .await;
            }
            if !changed.is_empty() {
                publish(
                    &ctx,
                    &obj,
                    EventType::Normal,
                    "Synced",
                    format!("secretObjects synced: {}", changed.join(", ")),
                )
                .await;
            }
            Ok(Action::requeue(refresh))
        }
        Err(e) => {
            tracing::warn!(
                class = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()),
                error = %e,
                "SecretProviderClass sync failed"
            );
            publish(&ctx, &obj, EventType::Warning, e.reason(), e.to_string()).await;
            Ok(Action::requeue(refresh.min(Duration::from_secs(30))))
        }
    }
}

/// Retry after a short delay.
pub fn error_policy(_obj: Arc<DynamicObject>, _err: &SpcError, _ctx: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, contents: &str) -> OutFile {
        OutFile::new(path, 0o644, contents.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn a_vault_failure_has_the_reason_and_message_of_an_akvs() {
        let objects = "array:\n  - |\n    objectName: db\n    objectType: secret\n";
        let objects = render::params::parse_objects(objects).unwrap();
        // A vault URL the client refuses before sending anything.
        let client = crate::reconcile::tests::offline_client();
        let source = mount::VaultSource::new(client, "http://v.vault.azure.net");
        let e = render_objects(&source, &objects).await.unwrap_err();
        assert_eq!(e.reason(), "VaultRequestInvalid");
        assert_eq!(
            e.to_string(),
            "the vault request cannot be made as configured (fix the resource or the \
             controller's settings): secret/db (version latest): invalid vault URL \
             'http://v.vault.azure.net': it must use https (bearer tokens are never sent over \
             plain HTTP)"
        );
        assert!(matches!(&e, SpcError::Failed(f) if !f.transient));
    }

    #[test]
    fn secret_objects_map_files_to_keys() {
        let objects: Vec<SecretObject> = serde_json::from_value(serde_json::json!([
            {"secretName": "db", "type": "Opaque", "labels": {"a": "b"},
             "data": [{"objectName": "db-password", "key": "password"},
                      {"objectName": "alias", "key": "other"}]},
            {"secretName": "tls", "type": "kubernetes.io/tls",
             "data": [{"objectName": "cert", "key": "tls.crt"}]}
        ]))
        .unwrap();
        let files = [
            file("db-password", "pw"),
            file("alias", "x"),
            file("cert", "PEM"),
        ];
        let d = desired_secrets(&objects, &files).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "db");
        assert_eq!(d[0].secret_type, "Opaque");
        assert_eq!(d[0].labels["a"], "b");
        assert_eq!(d[0].data["password"].as_slice(), b"pw");
        assert_eq!(d[0].data["other"].as_slice(), b"x");
        assert_eq!(d[1].secret_type, "kubernetes.io/tls");
        assert_eq!(d[1].data["tls.crt"].as_slice(), b"PEM");

        let missing: Vec<SecretObject> = serde_json::from_value(serde_json::json!([
            {"secretName": "db", "type": "Opaque", "data": [{"objectName": "nope", "key": "k"}]}
        ]))
        .unwrap();
        let e = desired_secrets(&missing, &files).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert!(!e.to_string().contains("pw"));
    }
}
