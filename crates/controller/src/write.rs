//! Writing the desired Secret/ConfigMap: never into an object this resource does not own, never
//! when nothing changed, server-side apply (own field manager) with a resourceVersion
//! precondition for updates, create for new objects.
//!
//! - The owned objects' metadata is watched (label [`MANAGED_BY`]); the content hash sits in
//!   annotation [`HASH_ANNOTATION`], so an unchanged object costs no API call at all.
//! - A new object is created with `POST` (atomic: a Secret someone else created in the
//!   meantime makes it fail with 409, it is never merged into). A 409 means: read it; ours (an
//!   owner reference to this resource's uid, e.g. one akv2k8s created) is taken over, anything
//!   else is refused.
//! - An update is a server-side apply with `force` (the data is ours) and the resourceVersion
//!   last seen (409 on a concurrent change: reconciled again). Data keys that are not desired
//!   (a renamed `dataKey`, keys someone added) are removed after the apply, guarded by the new
//!   resourceVersion. A changed Secret type (immutable) means delete (uid precondition) and
//!   create.
//! - Another writer's change (its resourceVersion differs from the one this process wrote) is
//!   put right by applying again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crd::AzureKeyVaultSecret;
use crate::mapping::{DesiredConfigMap, DesiredSecret};

/// Label on every object the controller writes (its watch selects them).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kvbridge");
/// Annotation with the content hash of what was written.
pub const HASH_ANNOTATION: &str = "kvbridge.io/content-hash";
/// Annotation naming the resource that wrote the object.
pub const SOURCE_ANNOTATION: &str = "kvbridge.io/source";

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Created,
    Updated,
    /// The object exists and belongs to someone else: left alone.
    NotOwned {
        owner: String,
    },
}

/// A Secret or a ConfigMap.
pub trait Output:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    /// Keys of its data maps, as `(field, key)`.
    fn data_keys(&self) -> Vec<(&'static str, String)>;
    /// Its type, when it has one that cannot change.
    fn immutable_type(&self) -> Option<&str> {
        None
    }
}

impl Output for Secret {
    const KIND: &'static str = "Secret";
    fn data_keys(&self) -> Vec<(&'static str, String)> {
        self.data
            .iter()
            .flatten()
            .map(|(k, _)| ("data", k.clone()))
            .collect()
    }
    fn immutable_type(&self) -> Option<&str> {
        self.type_.as_deref()
    }
}

impl Output for ConfigMap {
    const KIND: &'static str = "ConfigMap";
    fn data_keys(&self) -> Vec<(&'static str, String)> {
        let d = self.data.iter().flatten().map(|(k, _)| ("data", k.clone()));
        let b = self
            .binary_data
            .iter()
            .flatten()
            .map(|(k, _)| ("binaryData", k.clone()));
        d.chain(b).collect()
    }
}

/// The resourceVersions this process wrote, to tell its own writes from others', and the
/// objects it found owned by someone else.
#[derive(Default)]
pub struct Written(Mutex<HashMap<(&'static str, String, String), String>>);

/// Marker stored for an object found owned by someone else.
const REFUSED: &str = "\u{0}refused";

impl Written {
    fn refused(&self, kind: &'static str, ns: &str, name: &str) -> bool {
        self.get(kind, ns, name).as_deref() == Some(REFUSED)
    }
    fn refuse(&self, kind: &'static str, ns: &str, name: &str) {
        self.set(kind, ns, name, Some(REFUSED.to_string()));
    }
    fn get(&self, kind: &'static str, ns: &str, name: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
    }
    fn set(&self, kind: &'static str, ns: &str, name: &str, rv: Option<String>) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let k = (kind, ns.to_string(), name.to_string());
        match rv {
            Some(rv) => {
                m.insert(k, rv);
            }
            None => {
                m.remove(&k);
            }
        }
    }
}

/// The resource an output belongs to: an `AzureKeyVaultSecret`, or a SecretProviderClass
/// whose `secretObjects` are synced.
#[derive(Debug, Clone)]
pub struct Owner {
    pub namespace: String,
    pub uid: String,
    pub owner_ref: Option<OwnerReference>,
    /// [`SOURCE_ANNOTATION`] value: `<kind>/<name>`.
    pub source: String,
}

impl Owner {
    pub fn of(akvs: &AzureKeyVaultSecret) -> Self {
        Self {
            namespace: akvs.namespace().unwrap_or_default(),
            uid: akvs.uid().unwrap_or_default(),
            owner_ref: akvs.controller_owner_ref(&()),
            source: format!("azurekeyvaultsecret/{}", akvs.name_any()),
        }
    }
}

fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.uid == uid)
}

fn describe_owner(meta: &ObjectMeta) -> String {
    match meta.owner_references.as_deref().unwrap_or_default().first() {
        Some(o) => format!("{} {}", o.kind, o.name),
        None => "no owner (created by someone else)".into(),
    }
}

/// Labels and annotations every written object carries.
fn metadata(
    owner: &Owner,
    name: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    hash: &str,
) -> ObjectMeta {
    let mut labels = labels.clone();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    let mut annotations = annotations.clone();
    annotations.insert(HASH_ANNOTATION.into(), hash.into());
    annotations.insert(SOURCE_ANNOTATION.into(), owner.source.clone());
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(owner.namespace.clone()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: owner.owner_ref.clone().map(|o| vec![o]),
        ..Default::default()
    }
}

pub fn secret_object(owner: &Owner, d: &DesiredSecret, hash: &str) -> Secret {
    Secret {
        metadata: metadata(owner, &d.name, &d.labels, &d.annotations, hash),
        type_: Some(d.secret_type.clone()),
        data: Some(
            d.data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

pub fn config_map_object(owner: &Owner, d: &DesiredConfigMap, hash: &str) -> ConfigMap {
    ConfigMap {
        metadata: metadata(owner, &d.name, &d.labels, &d.annotations, hash),
        data: (!d.data.is_empty()).then(|| d.data.clone()),
        binary_data: (!d.binary_data.is_empty()).then(|| {
            d.binary_data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect()
        }),
        ..Default::default()
    }
}

/// API calls made by one write (for the "API calls per reconcile" figure).
#[derive(Debug, Default, Clone, Copy)]
pub struct Calls {
    pub reads: u32,
    pub writes: u32,
}

/// Everything a write needs.
pub struct Writer<'a, K: Output> {
    pub client: &'a kube::Client,
    pub store: &'a Store<PartialObjectMeta<K>>,
    pub written: &'a Written,
    pub field_manager: &'a str,
}

impl<K: Output> Writer<'_, K> {
    /// Writes `desired` (whose content hash is `hash`) for `owner`.
    pub async fn write(
        &self,
        owner: &Owner,
        desired: K,
        hash: &str,
        calls: &mut Calls,
    ) -> Result<Outcome, kube::Error> {
        let ns = owner.namespace.clone();
        let name = desired.meta().name.clone().unwrap_or_default();
        let uid = owner.uid.clone();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        let seen = self.store.get(&ObjectRef::new(&name).within(&ns));
        let current_rv = match seen {
            Some(meta) => {
                if !owned_by(&meta.metadata, &uid) {
                    return Ok(Outcome::NotOwned {
                        owner: describe_owner(&meta.metadata),
                    });
                }
                let same_hash = meta
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HASH_ANNOTATION))
                    .is_some_and(|h| h == hash);
                let rv = meta.metadata.resource_version.clone();
                let ours = match self.written.get(K::KIND, &ns, &name) {
                    Some(w) => Some(w) == rv,
                    // Not written by this process: trust the hash (after a restart).
                    None => true,
                };
                if same_hash && ours {
                    self.written.set(K::KIND, &ns, &name, rv);
                    return Ok(Outcome::Unchanged);
                }
                rv
            }
            None => {
                // Refused before: look first (a read), so a standing refusal costs no write.
                if self.written.refused(K::KIND, &ns, &name) {
                    calls.reads += 1;
                    if let Some(existing) = api.get_opt(&name).await? {
                        if !owned_by(existing.meta(), &uid) {
                            return Ok(Outcome::NotOwned {
                                owner: describe_owner(existing.meta()),
                            });
                        }
                    }
                }
                let pp = PostParams {
                    field_manager: Some(self.field_manager.to_string()),
                    ..Default::default()
                };
                calls.writes += 1;
                match api.create(&pp, &desired).await {
                    Ok(created) => {
                        self.written.set(
                            K::KIND,
                            &ns,
                            &name,
                            created.meta().resource_version.clone(),
                        );
                        return Ok(Outcome::Created);
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        calls.reads += 1;
                        let existing = api.get(&name).await?;
                        if !owned_by(existing.meta(), &uid) {
                            self.written.refuse(K::KIND, &ns, &name);
                            return Ok(Outcome::NotOwned {
                                owner: describe_owner(existing.meta()),
                            });
                        }
                        existing.meta().resource_version.clone()
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        self.update(&api, &ns, &name, desired, current_rv, calls)
            .await
    }

    async fn update(
        &self,
        api: &Api<K>,
        ns: &str,
        name: &str,
        desired: K,
        rv: Option<String>,
        calls: &mut Calls,
    ) -> Result<Outcome, kube::Error> {
        let mut body = serde_json::to_value(&desired).map_err(kube::Error::SerdeError)?;
        body["apiVersion"] = K::api_version(&()).into();
        body["kind"] = K::kind(&()).into();
        if let Some(rv) = &rv {
            body["metadata"]["resourceVersion"] = rv.clone().into();
        }
        let pp = PatchParams::apply(self.field_manager).force();
        calls.writes += 1;
        let applied = match api.patch(name, &pp, &Patch::Apply(&body)).await {
            Ok(o) => o,
            Err(kube::Error::Api(s))
                if s.code == 422
                    && desired.immutable_type().is_some()
                    && s.message.contains("immutable") =>
            {
                // The type changed: replace the object (still ours: uid precondition).
                calls.reads += 1;
                let existing = api.get(name).await?;
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: existing.meta().uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                calls.writes += 2;
                api.delete(name, &dp).await?;
                let pp = PostParams {
                    field_manager: Some(self.field_manager.to_string()),
                    ..Default::default()
                };
                let created = api.create(&pp, &desired).await?;
                self.written
                    .set(K::KIND, ns, name, created.meta().resource_version.clone());
                return Ok(Outcome::Updated);
            }
            Err(e) => return Err(e),
        };
        let want: Vec<(&'static str, String)> = desired.data_keys();
        let extra: Vec<(&'static str, String)> = applied
            .data_keys()
            .into_iter()
            .filter(|k| !want.contains(k))
            .collect();
        let mut final_rv = applied.meta().resource_version.clone();
        if !extra.is_empty() {
            let mut ops = vec![serde_json::json!({
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": final_rv.clone().unwrap_or_default(),
            })];
            for (field, key) in &extra {
                ops.push(serde_json::json!({
                    "op": "remove",
                    "path": format!("/{field}/{}", key.replace('~', "~0").replace('/', "~1")),
                }));
            }
            let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
                .map_err(kube::Error::SerdeError)?;
            calls.writes += 1;
            let patched = api
                .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await?;
            final_rv = patched.meta().resource_version.clone();
        }
        self.written.set(K::KIND, ns, name, final_rv);
        Ok(Outcome::Updated)
    }
}

/// Deletes `name`, an output `akvs` wrote before and no longer wants (renamed or dropped), if
/// the watch shows it still owned by `akvs`.
pub async fn delete_previous<K: Output>(
    owner: &Owner,
    client: &kube::Client,
    store: &Store<PartialObjectMeta<K>>,
    name: &str,
    calls: &mut Calls,
) -> Result<bool, kube::Error> {
    let ns = owner.namespace.clone();
    let Some(seen) = store.get(&ObjectRef::new(name).within(&ns)) else {
        return Ok(false);
    };
    if !owned_by(&seen.metadata, &owner.uid) {
        return Ok(false);
    }
    calls.writes += 1;
    delete_owned::<K>(client, &ns, name, seen.metadata.uid.clone()).await?;
    Ok(true)
}

/// Deletes an object this controller wrote for an owner that no longer wants it (uid
/// precondition: never a replacement someone else made).
pub async fn delete_owned<K: Output>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    uid: Option<String>,
) -> Result<(), kube::Error> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
