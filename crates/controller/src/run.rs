//! Wiring: watches (the resources; the metadata of the Secrets and ConfigMaps it wrote), the
//! kube-runtime controller, the shared-object triggers and the garbage sweep.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{future, StreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Resource, ResourceExt};
use mount::clients::ClientPool;
use mount::target::CloudConfig;
use tokio::sync::{mpsc, Notify};

use crate::crd::AzureKeyVaultSecret;
use crate::metrics::Metrics;
use crate::reconcile::{self, Ctx, Settings};
use crate::write::{self, HASH_ANNOTATION, MANAGED_BY};

/// How the controller runs.
pub struct Options {
    pub settings: Settings,
    /// Watch one namespace (`None` = all).
    pub namespace: Option<String>,
    /// Label selector on the resources.
    pub selector: Option<String>,
    /// Reconciles in parallel.
    pub concurrency: u16,
    pub cloud: CloudConfig,
    pub clients: Arc<ClientPool>,
    /// Events' reporting instance (the pod name).
    pub instance: Option<String>,
    /// Also sync the `secretObjects` of SecretProviderClasses that opt in (needs the Secrets
    /// Store CSI Driver's CRDs).
    pub sync_secret_provider_classes: bool,
}

/// Liveness and readiness, shared with the HTTP endpoints.
#[derive(Default)]
pub struct Health {
    /// Which watches listed everything once (one bit per watch).
    listed: AtomicU8,
    /// Every watch listed everything once.
    pub synced: AtomicBool,
    /// A follower waiting for the leader lease (ready: it does what it should).
    pub standby: AtomicBool,
}

/// The watches whose first listing readiness waits for.
#[derive(Debug, Clone, Copy)]
enum Watch {
    Resources = 1,
    Secrets = 2,
    ConfigMaps = 4,
}

impl Health {
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// `/readyz`: a follower on standby, or a leader whose watches listed.
    pub fn is_ready(&self) -> bool {
        self.standby.load(Ordering::SeqCst) || self.is_synced()
    }

    /// Records the first complete listing of `w`; true when that made every watch listed.
    /// (Seen on the streams themselves: a second waiter on `Store::wait_until_ready` of the
    /// resources' store, which the kube-runtime controller already waits on, was never woken.)
    fn listed(&self, w: Watch) -> bool {
        let all = Watch::Resources as u8 | Watch::Secrets as u8 | Watch::ConfigMaps as u8;
        let before = self.listed.fetch_or(w as u8, Ordering::SeqCst);
        if before | w as u8 == all && before != all {
            self.synced.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }
}

fn api<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A controller ready to run: the context exists (tests and benchmarks read its counters).
pub struct Runner {
    pub ctx: Arc<Ctx>,
    client: kube::Client,
    opts: Options,
    secret_writer: reflector::store::Writer<PartialObjectMeta<Secret>>,
    cm_writer: reflector::store::Writer<PartialObjectMeta<ConfigMap>>,
    trigger_rx: mpsc::UnboundedReceiver<ObjectRef<AzureKeyVaultSecret>>,
}

impl Runner {
    pub fn new(client: kube::Client, opts: Options, metrics: Arc<Metrics>) -> Self {
        let (secret_reader, secret_writer) = reflector::store::<PartialObjectMeta<Secret>>();
        let (cm_reader, cm_writer) = reflector::store::<PartialObjectMeta<ConfigMap>>();
        let (trigger_tx, trigger_rx) = mpsc::unbounded_channel();
        let recorder = crate::events::Events::new(
            client.clone(),
            Reporter {
                controller: "kvbridge-controller".into(),
                instance: opts.instance.clone(),
            },
        );
        let ctx = Arc::new(Ctx::new(
            client.clone(),
            opts.settings.clone(),
            opts.clients.clone(),
            opts.cloud.clone(),
            secret_reader.clone(),
            cm_reader.clone(),
            recorder,
            metrics,
            trigger_tx,
        ));
        Self {
            ctx,
            client,
            opts,
            secret_writer,
            cm_writer,
            trigger_rx,
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        self,
        health: Arc<Health>,
        shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ) {
        let Runner {
            ctx,
            client,
            opts,
            secret_writer,
            cm_writer,
            trigger_rx,
        } = self;
        let sweep = Arc::new(Notify::new());
        let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let secret_stream = reflector::reflector(
            secret_writer,
            watcher(
                api::<PartialObjectMeta<Secret>>(&client, &opts.namespace),
                watcher::Config::default().labels(&managed),
            )
            .modify(trim_output),
        )
        .default_backoff()
        .inspect(on_listed(&health, &sweep, Watch::Secrets))
        .touched_objects();
        let cm_stream = reflector::reflector(
            cm_writer,
            watcher(
                api::<PartialObjectMeta<ConfigMap>>(&client, &opts.namespace),
                watcher::Config::default().labels(&managed),
            )
            .modify(trim_output),
        )
        .default_backoff()
        .inspect(on_listed(&health, &sweep, Watch::ConfigMaps))
        .touched_objects();

        let mut wc = watcher::Config::default();
        if let Some(sel) = &opts.selector {
            wc = wc.labels(sel);
        }
        let (akvs_reader, akvs_writer) = reflector::store::<AzureKeyVaultSecret>();
        let akvs_stream = {
            let ctx = ctx.clone();
            let sweep = sweep.clone();
            let listed = on_listed(&health, &sweep, Watch::Resources);
            reflector::reflector(
                akvs_writer,
                watcher(api::<AzureKeyVaultSecret>(&client, &opts.namespace), wc)
                    .modify(trim_resource),
            )
            .default_backoff()
            .inspect(move |ev| {
                listed(ev);
                match ev {
                    Ok(watcher::Event::Delete(obj)) => {
                        ctx.forget(&ObjectRef::from_obj(obj));
                        sweep.notify_one();
                    }
                    Err(e) => tracing::warn!(error = %e, "AzureKeyVaultSecret watch"),
                    _ => {}
                }
            })
            .applied_objects()
        };

        let gc = tokio::spawn(garbage_loop(
            ctx.clone(),
            akvs_reader.clone(),
            health.clone(),
            sweep.clone(),
        ));

        let triggers = futures::stream::unfold(trigger_rx, |mut rx| async move {
            rx.recv().await.map(|r| (r, rx))
        });
        let config = controller::Config::default().concurrency(opts.concurrency.max(1));
        let shutdown = futures::FutureExt::shared(shutdown);
        let log_errors = |r: Result<_, controller::Error<_, _>>| {
            if let Err(e) = r {
                match e {
                    controller::Error::ReconcilerFailed(..) => {}
                    other => tracing::debug!(error = %other, "controller"),
                }
            }
            future::ready(())
        };
        let classes = {
            let (ctx, shutdown, client) = (ctx.clone(), shutdown.clone(), client.clone());
            let enabled = opts.sync_secret_provider_classes;
            let ns = opts.namespace.clone();
            async move {
                if !enabled {
                    return;
                }
                let ar = crate::spc::api_resource();
                let api: Api<kube::api::DynamicObject> = match &ns {
                    Some(ns) => Api::namespaced_with(client, ns, &ar),
                    None => Api::all_with(client, &ar),
                };
                Controller::new_with(api, watcher::Config::default(), ar)
                    .graceful_shutdown_on(shutdown)
                    .run(crate::spc::reconcile, crate::spc::error_policy, ctx)
                    .for_each(|r| {
                        if let Err(e) = r {
                            if !matches!(e, controller::Error::ReconcilerFailed(..)) {
                                tracing::debug!(error = %e, "SecretProviderClass controller");
                            }
                        }
                        future::ready(())
                    })
                    .await;
            }
        };
        let resources = Controller::for_stream(akvs_stream, akvs_reader)
            .owns_stream(secret_stream)
            .owns_stream(cm_stream)
            .reconcile_on(triggers)
            .with_config(config)
            .graceful_shutdown_on(shutdown)
            .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
            .for_each(log_errors);
        future::join(resources, classes).await;
        gc.abort();
    }
}

/// What the store of a resource keeps: everything but its managed fields and annotations (the
/// reconcile reads name, namespace, uid, generation, spec and status; at 10,000 resources the
/// managed fields alone were the largest share of the controller's memory).
fn trim_resource(akvs: &mut AzureKeyVaultSecret) {
    akvs.metadata.managed_fields = None;
    akvs.metadata.annotations = None;
}

/// What the stores of the written Secrets/ConfigMaps keep (their watches are metadata-only):
/// name, namespace, uid, resourceVersion, owner references and the content-hash annotation --
/// what the writer, the garbage sweep and restart-on-rotation read.
fn trim_output<K>(meta: &mut PartialObjectMeta<K>) {
    let m = &mut meta.metadata;
    m.managed_fields = None;
    m.labels = None;
    m.creation_timestamp = None;
    m.generate_name = None;
    m.finalizers = None;
    m.annotations = m
        .annotations
        .take()
        .and_then(|mut a| a.remove_entry(HASH_ANNOTATION))
        .map(|(k, v)| std::collections::BTreeMap::from([(k, v)]));
}

/// Marks `w` listed on its first `InitDone` (and asks for a garbage sweep once all are).
fn on_listed<T>(
    health: &Arc<Health>,
    sweep: &Arc<Notify>,
    w: Watch,
) -> impl Fn(&Result<watcher::Event<T>, watcher::Error>) + Send + Sync + 'static {
    let (health, sweep) = (health.clone(), sweep.clone());
    move |ev| {
        if matches!(ev, Ok(watcher::Event::InitDone)) && health.listed(w) {
            sweep.notify_one();
        }
    }
}

/// Deletes Secrets/ConfigMaps this controller wrote whose resource is gone or no longer names
/// them (what Kubernetes' garbage collector does for owner references, here also without one,
/// and for renamed outputs). Never because of a vault error.
async fn garbage_loop(
    ctx: Arc<Ctx>,
    akvs: Store<AzureKeyVaultSecret>,
    health: Arc<Health>,
    sweep: Arc<Notify>,
) {
    loop {
        tokio::select! {
            _ = sweep.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(300)) => {}
        }
        // Let a burst of deletions settle, and never sweep before the watches listed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !health.is_synced() {
            continue;
        }
        if let Err(e) = sweep_once(&ctx, &akvs).await {
            tracing::warn!(error = %e, "garbage sweep");
        }
    }
}

/// One sweep; returns the number of objects deleted.
pub async fn sweep_once(
    ctx: &Ctx,
    akvs: &Store<AzureKeyVaultSecret>,
) -> Result<usize, kube::Error> {
    let by_uid: std::collections::HashMap<String, Arc<AzureKeyVaultSecret>> = akvs
        .state()
        .into_iter()
        .filter_map(|a| a.uid().map(|u| (u, a)))
        .collect();
    let kind = AzureKeyVaultSecret::kind(&());
    let group = AzureKeyVaultSecret::group(&()).to_string();
    let mut deleted = 0;
    // Outputs whose owner is not in the store (deleted, or outside this controller's selector)
    // or no longer names them: (kind, namespace, name, uid, owner name, owner uid, owner known).
    type Candidate = (
        &'static str,
        String,
        String,
        Option<String>,
        String,
        String,
        bool,
    );
    let mut candidates: Vec<Candidate> = Vec::new();
    let wants = |owner: &AzureKeyVaultSecret, is_secret: bool, name: &str| {
        let out = owner.spec.output.as_ref();
        if is_secret {
            out.and_then(|o| o.secret.as_ref())
                .is_some_and(|s| s.name == name)
        } else {
            out.and_then(|o| o.config_map.as_ref())
                .is_some_and(|c| c.name == name)
        }
    };
    let mut consider = |k: &'static str, meta: &kube::api::ObjectMeta| {
        let Some(owner) = meta.owner_references.iter().flatten().find(|o| {
            o.controller == Some(true)
                && o.kind == kind
                && o.api_version.split('/').next() == Some(group.as_str())
        }) else {
            return;
        };
        let known = by_uid.get(&owner.uid);
        if known.is_some_and(|a| wants(a, k == "Secret", meta.name.as_deref().unwrap_or_default()))
        {
            return;
        }
        candidates.push((
            k,
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
            meta.uid.clone(),
            owner.name.clone(),
            owner.uid.clone(),
            known.is_some(),
        ));
    };
    for s in ctx.secrets.state() {
        consider("Secret", &s.metadata);
    }
    for c in ctx.config_maps.state() {
        consider("ConfigMap", &c.metadata);
    }
    for (k, ns, name, uid, owner_name, owner_uid, known) in candidates {
        if !known {
            // Not in the store: gone, or only outside this controller's selector.
            let api: Api<AzureKeyVaultSecret> = Api::namespaced(ctx.client.clone(), &ns);
            match api.get_opt(&owner_name).await? {
                Some(a) if a.uid().as_deref() == Some(owner_uid.as_str()) => continue,
                _ => {}
            }
        }
        tracing::info!(kind = k, namespace = %ns, name = %name, "deleting an output no AzureKeyVaultSecret wants");
        if k == "Secret" {
            write::delete_owned::<Secret>(&ctx.client, &ns, &name, uid).await?;
        } else {
            write::delete_owned::<ConfigMap>(&ctx.client, &ns, &name, uid).await?;
        }
        ctx.metrics.write(k, "deleted");
        deleted += 1;
    }
    Ok(deleted)
}

/// Why the controller could not reach Kubernetes.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("reading the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: std::path::PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "finding the Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster): {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A Kubernetes client from `kubeconfig`, else the usual places (`KUBECONFIG`,
/// `~/.kube/config`, the in-cluster service account).
pub async fn kube_client(
    kubeconfig: Option<&std::path::Path>,
) -> Result<kube::Client, ConnectError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ConnectError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ConnectError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(ConnectError::Infer)?,
    };
    kube::Client::try_from(config).map_err(ConnectError::Client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;

    fn meta() -> ObjectMeta {
        ObjectMeta {
            name: Some("out".into()),
            namespace: Some("ns".into()),
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.into(), MANAGED_BY.1.into())])),
            annotations: Some(BTreeMap::from([
                (HASH_ANNOTATION.into(), "h".into()),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    "{...}".into(),
                ),
            ])),
            owner_references: Some(vec![OwnerReference {
                uid: "owner".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            managed_fields: Some(vec![ManagedFieldsEntry::default(); 3]),
            ..Default::default()
        }
    }

    #[test]
    fn stores_keep_what_the_controller_reads() {
        let mut out = PartialObjectMeta::<Secret> {
            types: None,
            metadata: meta(),
            _phantom: Default::default(),
        };
        trim_output(&mut out);
        let m = &out.metadata;
        assert_eq!(
            m.annotations,
            Some(BTreeMap::from([(HASH_ANNOTATION.into(), "h".into())]))
        );
        assert!(m.managed_fields.is_none() && m.labels.is_none());
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(m.uid.as_deref(), Some("u-1"));
        assert_eq!(m.owner_references.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            (m.name.as_deref(), m.namespace.as_deref()),
            (Some("out"), Some("ns"))
        );

        let mut out = PartialObjectMeta::<ConfigMap> {
            types: None,
            metadata: ObjectMeta {
                annotations: None,
                ..meta()
            },
            _phantom: Default::default(),
        };
        trim_output(&mut out);
        assert!(out.metadata.annotations.is_none());

        let mut akvs: AzureKeyVaultSecret = serde_json::from_value(serde_json::json!({
            "apiVersion": "spv.no/v2beta1", "kind": "AzureKeyVaultSecret",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u", "generation": 3},
            "spec": {"vault": {"name": "kv", "object": {"name": "s", "type": "secret"}},
                     "output": {"secret": {"name": "s", "dataKey": "v"}}},
            "status": {"secretHash": "h"}
        }))
        .unwrap();
        akvs.metadata.managed_fields = meta().managed_fields;
        akvs.metadata.annotations = meta().annotations;
        let spec = serde_json::to_value(&akvs.spec).unwrap();
        trim_resource(&mut akvs);
        assert!(akvs.metadata.managed_fields.is_none() && akvs.metadata.annotations.is_none());
        assert_eq!(akvs.metadata.generation, Some(3));
        assert_eq!(akvs.metadata.uid.as_deref(), Some("u"));
        assert_eq!(serde_json::to_value(&akvs.spec).unwrap(), spec);
        assert_eq!(akvs.status.unwrap().secret_hash.as_deref(), Some("h"));
    }
}
