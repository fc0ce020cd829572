//! One reconcile of one `AzureKeyVaultSecret`: identity -> shared vault object -> pure mapping
//! -> Secret/ConfigMap writes (only when the content changed, only into objects it owns) ->
//! status (only when it changed) and events. A vault error never touches the outputs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use mount::clients::ClientPool;
use mount::identity::Identity;
use mount::target::CloudConfig;
use mount::{Source as _, VaultSource};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::crd::{AzureKeyVaultSecret, AzureKeyVaultSecretStatus, Condition, PendingRestart};
use crate::mapping::{self, MapOptions};
use crate::metrics::{Metrics, ReasonLabel, ResultLabel};
use crate::objects::{FetchFailure, ObjectCache, SlotKey};
use crate::write::{self, Calls, Outcome, Written};

/// The condition type.
pub const READY: &str = "Ready";
/// The condition that says a restart on rotation failed and is retried (`True`), or that the
/// retried restart went through (`False`).
pub const RESTART_PENDING: &str = "RestartPending";

/// `(kind, name, content hash)` of an output.
pub type OutputHash = (&'static str, String, String);

/// Controller-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Field manager of every write.
    pub field_manager: String,
    /// Refresh interval of resources without `spec.refreshInterval`.
    pub default_refresh: Duration,
    /// Shortest `spec.refreshInterval` honoured.
    pub min_refresh: Duration,
    pub map: MapOptions,
    /// The identity of resources without `spec.vault.identity`: the process's own credential
    /// chain, with managed identity (IMDS) last when true.
    pub ambient_managed_identity: bool,
    /// Tenant of per-object identities that name none (`--tenant-id`, `AZURE_TENANT_ID`).
    pub tenant_id: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            field_manager: "kvbridge-controller".into(),
            default_refresh: Duration::from_secs(600),
            min_refresh: Duration::from_secs(10),
            map: MapOptions::default(),
            ambient_managed_identity: true,
            tenant_id: None,
        }
    }
}

/// API calls made by reconciles (the "API calls per reconcile" figure).
#[derive(Debug, Default)]
pub struct ApiCalls {
    pub reads: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
}

/// What reconciles share.
pub struct Ctx {
    pub client: kube::Client,
    pub settings: Settings,
    pub objects: ObjectCache,
    pub clients: Arc<ClientPool>,
    pub cloud: CloudConfig,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub recorder: crate::events::Events,
    pub metrics: Arc<Metrics>,
    /// Reconcile requests for other resources (a shared object changed).
    pub trigger: mpsc::UnboundedSender<ObjectRef<AzureKeyVaultSecret>>,
    pub written: Written,
    pub api_calls: ApiCalls,
    pub identities: crate::identity::Cache,
    failures: Mutex<HashMap<ObjectRef<AzureKeyVaultSecret>, u32>>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        settings: Settings,
        clients: Arc<ClientPool>,
        cloud: CloudConfig,
        secrets: Store<PartialObjectMeta<Secret>>,
        config_maps: Store<PartialObjectMeta<ConfigMap>>,
        recorder: crate::events::Events,
        metrics: Arc<Metrics>,
        trigger: mpsc::UnboundedSender<ObjectRef<AzureKeyVaultSecret>>,
    ) -> Self {
        Self {
            client,
            settings,
            objects: ObjectCache::new(),
            clients,
            cloud,
            secrets,
            config_maps,
            recorder,
            metrics,
            trigger,
            written: Written::default(),
            api_calls: ApiCalls::default(),
            identities: crate::identity::Cache::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn count(&self, calls: Calls) {
        use std::sync::atomic::Ordering::Relaxed;
        self.api_calls.reads.fetch_add(calls.reads as u64, Relaxed);
        self.api_calls
            .writes
            .fetch_add(calls.writes as u64, Relaxed);
    }

    /// Back-off after consecutive failures: 5 s doubling, at most the refresh interval.
    fn failure_backoff(
        &self,
        oref: &ObjectRef<AzureKeyVaultSecret>,
        refresh: Duration,
    ) -> Duration {
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(oref.clone()).or_insert(0);
        *n = n.saturating_add(1);
        let secs = 5u64.saturating_mul(1u64 << (*n - 1).min(10));
        Duration::from_secs(secs).min(refresh)
    }

    fn succeeded(&self, oref: &ObjectRef<AzureKeyVaultSecret>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(oref);
    }

    /// Forgets a deleted resource.
    pub fn forget(&self, oref: &ObjectRef<AzureKeyVaultSecret>) {
        self.objects.unregister(oref);
        self.succeeded(oref);
    }
}

/// A reconcile that could not finish (the API server refused a write). Vault and mapping
/// failures are not errors: they end in a `Ready=False` status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing {kind} {name}: {source}")]
    Write {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating the status: {0}")]
    Status(#[source] kube::Error),
}

impl Error {
    /// Metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Write { .. } => "KubernetesWriteFailed",
            Error::Status(_) => "StatusWriteFailed",
        }
    }
}

/// Refresh interval of `akvs` (`spec.refreshInterval`, else the default; at least the minimum).
pub fn refresh_of(akvs: &AzureKeyVaultSecret, settings: &Settings) -> Duration {
    akvs.spec
        .refresh_interval
        .map(Duration::from)
        .unwrap_or(settings.default_refresh)
        .max(settings.min_refresh)
}

/// Oldest cached vault object a reconcile accepts: below the shortest jittered requeue delay
/// (90% of the interval), so a resource requeued for its refresh really fetches, while the other
/// users of the same object requeued a little later find that fetch fresh (one GET per object
/// per refresh, however many resources use it).
fn max_age(refresh: Duration) -> Duration {
    refresh.mul_f64(0.85)
}

/// `d` less a per-object jitter of up to 10% (spreads refreshes that would otherwise all fall
/// due together after a cold start).
fn jitter(akvs: &AzureKeyVaultSecret, d: Duration) -> Duration {
    let uid = akvs.metadata.uid.as_deref().unwrap_or_default();
    let h = ring::digest::digest(&ring::digest::SHA256, uid.as_bytes());
    let frac = f64::from(h.as_ref()[0]) / 255.0 * 0.1;
    d.mul_f64(1.0 - frac)
}

fn now_rfc3339() -> String {
    let ts = k8s_openapi::jiff::Timestamp::now();
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The `Ready` condition, keeping the transition time when the status did not flip.
fn ready(
    prev: Option<&AzureKeyVaultSecretStatus>,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    condition(prev, READY, ok, reason, message, generation)
}

/// Condition `type_` in `prev`, if any.
fn find_condition<'a>(prev: &'a AzureKeyVaultSecretStatus, type_: &str) -> Option<&'a Condition> {
    prev.conditions.iter().flatten().find(|c| c.type_ == type_)
}

/// Replaces (or adds) the condition of `c`'s type, keeping the others.
fn set_condition(status: &mut AzureKeyVaultSecretStatus, c: Condition) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => *x = c,
        None => conditions.push(c),
    }
}

/// A condition of `type_`, keeping the transition time when the status did not flip.
fn condition(
    prev: Option<&AzureKeyVaultSecretStatus>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let before = prev.and_then(|s| find_condition(s, type_));
    let last_transition_time = match before {
        Some(b) if b.status == status => b.last_transition_time.clone(),
        _ => now_rfc3339(),
    };
    // Condition messages are bounded (Kubernetes allows 32 KiB); keep them short.
    let message: String = message.chars().take(1024).collect();
    Condition {
        type_: type_.into(),
        status: status.into(),
        observed_generation: generation,
        last_transition_time,
        reason: reason.into(),
        message,
    }
}

/// The `Ready=False` reason, retry class and message of a failed vault read. A token the
/// identity provider refuses (IMDS 400 for an unknown client id, Entra 401 `invalid_client` for a
/// wrong service-principal secret) is `IdentityUnavailable` like every other failure to get a
/// token, not transient, and its message starts by saying the credential was refused (a fix in
/// the identity's configuration, not an outage); 429/5xx/408 from the identity provider are
/// transient. A vault error made before any answer (invalid vault URL, object name or version,
/// option, or a challenge resource that does not cover the vault's host) is
/// `VaultRequestInvalid`, not transient, its message saying what to fix; a malformed or oversized
/// answer from the vault is `VaultUnavailable`, transient.
pub(crate) fn failure_of(e: &mount::MountError) -> FetchFailure {
    // With its causes: the object alone does not say what failed. No layer carries a value:
    // server messages are sanitized (credential secrets, JWTs redacted) where the error is made.
    let chain = keyvault::ErrorChain(e).to_string();
    let (reason, transient, message) = match e.vault_error() {
        // The identity provider (Entra ID, IMDS) refused the token or the credential cannot be
        // used: its HTTP status is not the vault's.
        Some(v @ keyvault::Error::Auth { .. }) if !v.is_transient() => (
            "IdentityUnavailable",
            false,
            format!("the identity provider refused the credential: {chain}"),
        ),
        Some(
            v @ (keyvault::Error::Auth { .. } | keyvault::Error::CredentialUnavailable { .. }),
        ) => ("IdentityUnavailable", v.is_transient(), chain),
        Some(v) => match (v.status(), v.kind()) {
            (Some(401) | Some(403), _) => ("VaultAccessDenied", false, chain),
            (Some(404), _) => ("VaultObjectNotFound", false, chain),
            (Some(400), _) => ("VaultBadRequest", false, chain),
            // Made before any answer: the vault URL, a request parameter, the vault's challenge
            // resource or an option is wrong. Retrying cannot help; something must be fixed.
            (None, keyvault::ErrorKind::InvalidConfig | keyvault::ErrorKind::InvalidRequest) => (
                "VaultRequestInvalid",
                false,
                format!(
                    "the vault request cannot be made as configured (fix the resource or the \
                     controller's settings): {chain}"
                ),
            ),
            // A malformed or oversized answer is the vault's fault and may pass.
            (_, keyvault::ErrorKind::BadResponse) => ("VaultUnavailable", true, chain),
            _ => ("VaultUnavailable", v.is_transient(), chain),
        },
        None => ("VaultUnavailable", true, chain),
    };
    FetchFailure {
        reason,
        message,
        transient,
    }
}

/// Reconciles one resource.
pub async fn reconcile(akvs: Arc<AzureKeyVaultSecret>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let t0 = Instant::now();
    let _inflight = crate::metrics::InQueue::new(&ctx.metrics);
    let result = reconcile_inner(&akvs, &ctx).await;
    ctx.metrics.observe_reconcile(t0.elapsed());
    if let Err(e) = &result {
        ctx.metrics
            .reconciles
            .get_or_create(&ResultLabel { result: "failed" })
            .inc();
        ctx.metrics
            .failures
            .get_or_create(&ReasonLabel {
                reason: e.metric_label(),
            })
            .inc();
    }
    result
}

async fn reconcile_inner(akvs: &AzureKeyVaultSecret, ctx: &Ctx) -> Result<Action, Error> {
    let oref = ObjectRef::from_obj(akvs);
    let refresh = refresh_of(akvs, &ctx.settings);
    let generation = akvs.metadata.generation;
    let spec = &akvs.spec;
    let mut calls = Calls::default();

    // Spec checks the schema cannot express.
    let invalid = match model::check_vault_name(&spec.vault.name) {
        Err(e) => Some(format!("spec.vault.name: {e}")),
        Ok(()) if !model::valid_object_name(&spec.vault.object.name) => {
            Some("spec.vault.object.name: must be 1-127 letters, digits and hyphens".to_string())
        }
        Ok(()) => None,
    };
    if let Some(message) = invalid {
        return finish_failed(akvs, ctx, "InvalidSpec", message, refresh, calls, false).await;
    }
    let new_generation = akvs.status.as_ref().and_then(|s| s.observed_generation) != generation;
    if new_generation && spec.vault.azure_identity.is_some() && spec.vault.identity.is_none() {
        publish(
            ctx,
            akvs,
            EventType::Warning,
            "AzureIdentityIgnored",
            "spec.vault.azureIdentity (AAD Pod Identity) is not used by kvbridge; set spec.vault.identity or rely on the controller's identity".into(),
        )
        .await;
    }

    let identity = match crate::identity::for_resource(akvs, ctx).await {
        Ok(i) => i,
        Err(f) => {
            return finish_failed(akvs, ctx, f.reason, f.message, refresh, calls, f.transient).await
        }
    };
    let target = ctx.cloud.resolve_name(&spec.vault.name);
    let (client, identity_key) = match ctx.clients.client(&identity, &target.cloud) {
        Ok(c) => c,
        Err(e) => {
            return finish_failed(
                akvs,
                ctx,
                "IdentityUnavailable",
                e.to_string(),
                refresh,
                calls,
                false,
            )
            .await
        }
    };
    let fetch_key = mapping::fetch_key(spec);
    let slot = SlotKey {
        identity: identity_key,
        vault_url: target.vault_url.clone(),
        fetch: fetch_key.clone(),
    };
    ctx.objects.register(&oref, &slot);
    ctx.metrics.vault_objects.set(ctx.objects.len() as i64);
    let source = VaultSource::new(client, target.vault_url.clone());
    let got = ctx
        .objects
        .get(&slot, &oref, max_age(refresh), || async {
            source.get(&fetch_key).await.map_err(|e| failure_of(&e))
        })
        .await;
    if got.fetched {
        let result = if got.result.is_ok() { "ok" } else { "error" };
        ctx.metrics
            .vault_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    } else {
        ctx.metrics.vault_cache_hits.inc();
    }
    for other in got.notify {
        let _ = ctx.trigger.send(other);
    }
    let value = match got.result {
        Ok(v) => v,
        Err(f) => {
            return finish_failed(akvs, ctx, f.reason, f.message, refresh, calls, f.transient).await
        }
    };

    let desired = match mapping::desired(spec, &value.fetched, &ctx.settings.map) {
        Ok(d) => d,
        Err(e) => {
            return finish_failed(akvs, ctx, e.reason(), e.to_string(), refresh, calls, false).await
        }
    };
    if new_generation {
        for w in &desired.warnings {
            publish(ctx, akvs, EventType::Warning, "Ignored", w.clone()).await;
        }
    }

    let owner = write::Owner::of(akvs);
    let prev = akvs.status.clone().unwrap_or_default();
    let mut status = prev.clone();
    let mut changed_outputs: Vec<String> = Vec::new();
    // Outputs that existed and got new content: (kind, name, new hash), for restarts.
    let mut rotated: Vec<OutputHash> = Vec::new();
    let mut refused: Vec<String> = Vec::new();

    if let Some(ds) = &desired.secret {
        let hash = ds.content_hash();
        let obj = write::secret_object(&owner, ds, &hash);
        let writer = write::Writer::<Secret> {
            client: &ctx.client,
            store: &ctx.secrets,
            written: &ctx.written,
            field_manager: &ctx.settings.field_manager,
        };
        let outcome = writer
            .write(&owner, obj, &hash, &mut calls)
            .await
            .map_err(|source| Error::Write {
                kind: "Secret",
                name: ds.name.clone(),
                source,
            });
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                ctx.count(calls);
                return Err(e);
            }
        };
        if record_write(
            &ctx.metrics,
            "Secret",
            &ds.name,
            outcome,
            &hash,
            prev.secret_hash.as_deref(),
            &mut changed_outputs,
            &mut rotated,
            &mut refused,
        ) {
            status.secret_hash = Some(hash);
            status.secret_name = Some(ds.name.clone());
        }
    } else {
        status.secret_hash = None;
        status.secret_name = None;
    }
    if let Some(dc) = &desired.config_map {
        let hash = dc.content_hash();
        let obj = write::config_map_object(&owner, dc, &hash);
        let writer = write::Writer::<ConfigMap> {
            client: &ctx.client,
            store: &ctx.config_maps,
            written: &ctx.written,
            field_manager: &ctx.settings.field_manager,
        };
        let outcome = match writer.write(&owner, obj, &hash, &mut calls).await {
            Ok(o) => o,
            Err(source) => {
                ctx.count(calls);
                return Err(Error::Write {
                    kind: "ConfigMap",
                    name: dc.name.clone(),
                    source,
                });
            }
        };
        if record_write(
            &ctx.metrics,
            "ConfigMap",
            &dc.name,
            outcome,
            &hash,
            prev.config_map_hash.as_deref(),
            &mut changed_outputs,
            &mut rotated,
            &mut refused,
        ) {
            status.config_map_hash = Some(hash);
            status.config_map_name = Some(dc.name.clone());
        }
    } else {
        status.config_map_hash = None;
        status.config_map_name = None;
    }

    // Outputs renamed or dropped from the spec: the old objects go (only ours, uid precondition).
    let gone_secret = prev
        .secret_name
        .as_ref()
        .filter(|old| status.secret_name.as_ref() != Some(*old));
    if let Some(old) = gone_secret {
        write::delete_previous::<Secret>(&owner, &ctx.client, &ctx.secrets, old, &mut calls)
            .await
            .map_err(|source| Error::Write {
                kind: "Secret",
                name: old.clone(),
                source,
            })?;
    }
    let gone_cm = prev
        .config_map_name
        .as_ref()
        .filter(|old| status.config_map_name.as_ref() != Some(*old));
    if let Some(old) = gone_cm {
        write::delete_previous::<ConfigMap>(&owner, &ctx.client, &ctx.config_maps, old, &mut calls)
            .await
            .map_err(|source| Error::Write {
                kind: "ConfigMap",
                name: old.clone(),
                source,
            })?;
    }

    if !refused.is_empty() {
        let msg = refused.join("; ");
        if transition(&prev, "False", "NotOwned") {
            publish(ctx, akvs, EventType::Warning, "NotOwned", msg.clone()).await;
        }
        set_condition(
            &mut status,
            ready(Some(&prev), false, "NotOwned", msg, generation),
        );
    } else {
        set_condition(
            &mut status,
            ready(
                Some(&prev),
                true,
                "Synced",
                format!(
                    "{} version {} synced",
                    spec.vault.object.object_type.as_str(),
                    desired.object_version
                ),
                generation,
            ),
        );
    }
    status.object_version = Some(desired.object_version.clone());
    status.observed_generation = generation;
    if !changed_outputs.is_empty() {
        status.last_azure_update = Some(now_rfc3339());
        publish(
            ctx,
            akvs,
            EventType::Normal,
            "Synced",
            format!(
                "{} updated from {} {} version {}",
                changed_outputs.join(", "),
                spec.vault.object.object_type.as_str(),
                spec.vault.object.name,
                desired.object_version
            ),
        )
        .await;
    }
    // Restarts: the outputs rotated now plus those whose restart failed before.
    retry_restarts(akvs, ctx, &prev, &mut status, &rotated, &mut calls).await;
    let restart_pending = status
        .pending_restarts
        .as_ref()
        .is_some_and(|p| !p.is_empty());
    let result = write_status(akvs, ctx, &prev, status, &mut calls).await;
    ctx.count(calls);
    result?;
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabel {
            result: if changed_outputs.is_empty() {
                "unchanged"
            } else {
                "synced"
            },
        })
        .inc();
    if refused.is_empty() && !restart_pending {
        ctx.succeeded(&oref);
        Ok(Action::requeue(jitter(akvs, refresh)))
    } else {
        Ok(Action::requeue(ctx.failure_backoff(&oref, refresh)))
    }
}

/// Restarts the users of the outputs `rotated` now and of those whose restart failed before
/// (from the status, so a restarted controller or a new leader retries them too), and records
/// the outcome in `status` (`pendingRestarts`, `RestartPending`, a `RestartFailed` warning when
/// the failure is new). Needs no vault: the hashes are those of the outputs in `status` (and of
/// the kvbridge-written objects the watches see).
async fn retry_restarts(
    akvs: &AzureKeyVaultSecret,
    ctx: &Ctx,
    prev: &AzureKeyVaultSecretStatus,
    status: &mut AzureKeyVaultSecretStatus,
    rotated: &[OutputHash],
    calls: &mut Calls,
) {
    let mut current: Vec<OutputHash> = Vec::new();
    if let (Some(n), Some(h)) = (&status.secret_name, &status.secret_hash) {
        current.push(("Secret", n.clone(), h.clone()));
    }
    if let (Some(n), Some(h)) = (&status.config_map_name, &status.config_map_hash) {
        current.push(("ConfigMap", n.clone(), h.clone()));
    }
    let pending_before = prev.pending_restarts.clone().unwrap_or_default();
    let targets = restart_targets(rotated, &pending_before, &current);
    if targets.is_empty() && pending_before.is_empty() {
        return;
    }
    let failure = if targets.is_empty() {
        None
    } else {
        restart_workloads(akvs, ctx, &targets, calls).await
    };
    let generation = akvs.metadata.generation;
    if let Some(msg) = record_restart(status, prev, &targets, failure, generation) {
        publish(ctx, akvs, EventType::Warning, "RestartFailed", msg).await;
    }
}

/// The outputs whose users get restarted in this reconcile: those rotated now, and those still
/// pending from an earlier failed restart that are still outputs of the resource (with their
/// current hash; a pending output renamed or dropped since is forgotten).
pub(crate) fn restart_targets(
    rotated: &[OutputHash],
    pending: &[PendingRestart],
    current: &[OutputHash],
) -> Vec<OutputHash> {
    let mut out: Vec<OutputHash> = rotated.to_vec();
    for (kind, name, hash) in current {
        let is_pending = pending.iter().any(|p| p.kind == *kind && p.name == *name);
        let listed = out.iter().any(|(k, n, _)| k == kind && n == name);
        if is_pending && !listed {
            out.push((kind, name.clone(), hash.clone()));
        }
    }
    out
}

/// Records the restart attempt over `targets` in `status`: on `failure`, the targets become
/// `pendingRestarts` and `RestartPending=True`; on success the pending list goes and a
/// `RestartPending` condition left from before turns `False`. Returns the message of a failure
/// that is new (not the same pending state as in `prev`), for the warning event.
pub(crate) fn record_restart(
    status: &mut AzureKeyVaultSecretStatus,
    prev: &AzureKeyVaultSecretStatus,
    targets: &[OutputHash],
    failure: Option<String>,
    generation: Option<i64>,
) -> Option<String> {
    match failure {
        Some(error) => {
            let mut pending: Vec<PendingRestart> = targets
                .iter()
                .map(|(kind, name, _)| PendingRestart {
                    kind: (*kind).to_string(),
                    name: name.clone(),
                })
                .collect();
            pending.sort();
            pending.dedup();
            let outputs: Vec<String> = pending
                .iter()
                .map(|p| format!("{} {}", p.kind, p.name))
                .collect();
            let message = format!(
                "restart of the workloads using {} failed, retrying: {error}",
                outputs.join(", ")
            );
            let c = condition(
                Some(prev),
                RESTART_PENDING,
                true,
                "RestartFailed",
                message,
                generation,
            );
            let new = find_condition(prev, RESTART_PENDING)
                .is_none_or(|b| b.status != "True" || b.message != c.message);
            let event = new.then(|| c.message.clone());
            status.pending_restarts = Some(pending);
            set_condition(status, c);
            event
        }
        None => {
            status.pending_restarts = None;
            if find_condition(prev, RESTART_PENDING).is_some() {
                let c = condition(
                    Some(prev),
                    RESTART_PENDING,
                    false,
                    // Nothing left to restart: the outputs pending before were renamed or
                    // dropped from the spec.
                    if targets.is_empty() {
                        "OutputsGone"
                    } else {
                        "Restarted"
                    },
                    "no restart pending".into(),
                    generation,
                );
                set_condition(status, c);
            }
            None
        }
    }
}

/// Rolls the opted-in workloads that use a rotated output. A failure (e.g. no RBAC on the
/// workloads, an admission denial) does not fail the reconcile (the outputs are already
/// written): its message is returned, recorded in the status and the restart retried.
async fn restart_workloads(
    akvs: &AzureKeyVaultSecret,
    ctx: &Ctx,
    rotated: &[OutputHash],
    calls: &mut Calls,
) -> Option<String> {
    let ns = akvs.namespace().unwrap_or_default();
    let hashes = crate::restart::Hashes {
        secrets: &ctx.secrets,
        config_maps: &ctx.config_maps,
        changed: rotated,
    };
    calls.reads += 3;
    let report =
        crate::restart::after_rotation(&ctx.client, &ns, &hashes, &ctx.settings.field_manager)
            .await;
    let done = &report.restarted;
    if !done.is_empty() {
        calls.writes += done.len() as u32;
        for r in done {
            ctx.metrics.write(r.kind, "restarted");
        }
        let names: Vec<String> = done
            .iter()
            .map(|r| format!("{} {}", r.kind, r.name))
            .collect();
        publish(
            ctx,
            akvs,
            EventType::Normal,
            "RolloutTriggered",
            format!("rotation: restarting {}", names.join(", ")),
        )
        .await;
    }
    if report.failed.is_empty() {
        return None;
    }
    calls.writes += report.failed.iter().filter(|f| f.name.is_some()).count() as u32;
    let failed: Vec<String> = report.failed.iter().map(|f| f.to_string()).collect();
    let message = failed.join("; ");
    tracing::warn!(
        resource = %format!("{ns}/{}", akvs.name_any()),
        error = %message,
        "restart on rotation failed; retrying"
    );
    Some(message)
}

/// A failure that leaves the outputs alone: `Ready=False` with `reason`, a warning event,
/// a retry after a back-off (transient) or the refresh interval. Restarts pending from an
/// earlier rotation are retried all the same (the outputs they are for are already written).
#[allow(clippy::too_many_arguments)]
async fn finish_failed(
    akvs: &AzureKeyVaultSecret,
    ctx: &Ctx,
    reason: &'static str,
    message: String,
    refresh: Duration,
    mut calls: Calls,
    transient: bool,
) -> Result<Action, Error> {
    let oref = ObjectRef::from_obj(akvs);
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabel { result: "failed" })
        .inc();
    ctx.metrics
        .failures
        .get_or_create(&ReasonLabel { reason })
        .inc();
    let prev = akvs.status.clone().unwrap_or_default();
    // One event per change of condition (not one per retry).
    if transition(&prev, "False", reason) {
        publish(ctx, akvs, EventType::Warning, reason, message.clone()).await;
    }
    let mut status = prev.clone();
    set_condition(
        &mut status,
        ready(
            Some(&prev),
            false,
            reason,
            message,
            akvs.metadata.generation,
        ),
    );
    status.observed_generation = akvs.metadata.generation;
    retry_restarts(akvs, ctx, &prev, &mut status, &[], &mut calls).await;
    let restart_pending = status
        .pending_restarts
        .as_ref()
        .is_some_and(|p| !p.is_empty());
    let r = write_status(akvs, ctx, &prev, status, &mut calls).await;
    ctx.count(calls);
    r?;
    let backoff = ctx.failure_backoff(&oref, refresh);
    // A pending restart is retried on the back-off, as after a successful read.
    Ok(Action::requeue(if transient || restart_pending {
        backoff
    } else {
        refresh.min(backoff.max(Duration::from_secs(60)))
    }))
}

/// Whether `Ready` is not already `status` with `reason`.
fn transition(prev: &AzureKeyVaultSecretStatus, status: &str, reason: &str) -> bool {
    !prev
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == READY && c.status == status && c.reason == reason)
}

async fn write_status(
    akvs: &AzureKeyVaultSecret,
    ctx: &Ctx,
    prev: &AzureKeyVaultSecretStatus,
    status: AzureKeyVaultSecretStatus,
    calls: &mut Calls,
) -> Result<(), Error> {
    if akvs.status.is_some() && *prev == status {
        return Ok(());
    }
    let api: Api<AzureKeyVaultSecret> =
        Api::namespaced(ctx.client.clone(), &akvs.namespace().unwrap_or_default());
    let Some(patch) = status_patch(prev, &status) else {
        return Ok(());
    };
    calls.writes += 1;
    match api
        .patch_status(
            &akvs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing to report to.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::Status(e)),
    }
}

/// The merge patch from `prev` to `status`. A merge patch leaves absent fields alone, so a field
/// set before and unset now (e.g. `pendingRestarts` once the restart went through) is sent as
/// `null`.
fn status_patch(
    prev: &AzureKeyVaultSecretStatus,
    status: &AzureKeyVaultSecretStatus,
) -> Option<serde_json::Value> {
    let mut body = serde_json::to_value(status).ok()?;
    if let (Ok(serde_json::Value::Object(before)), serde_json::Value::Object(now)) =
        (serde_json::to_value(prev), &mut body)
    {
        for k in before.keys() {
            if !now.contains_key(k) {
                now.insert(k.clone(), serde_json::Value::Null);
            }
        }
    }
    Some(serde_json::json!({ "status": body }))
}

async fn publish(
    ctx: &Ctx,
    akvs: &AzureKeyVaultSecret,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &akvs.object_ref(&())).await {
        tracing::debug!(error = %e, "cannot publish an event");
    }
}

/// What kube-runtime does with an [`Error`]: retry after a short delay.
pub fn error_policy(akvs: Arc<AzureKeyVaultSecret>, err: &Error, ctx: Arc<Ctx>) -> Action {
    tracing::warn!(
        resource = %format!("{}/{}", akvs.namespace().unwrap_or_default(), akvs.name_any()),
        error = %err,
        "reconcile failed"
    );
    let oref = ObjectRef::from_obj(akvs.as_ref());
    Action::requeue(ctx.failure_backoff(&oref, refresh_of(&akvs, &ctx.settings)))
}

/// Re-exported for the identity module.
pub(crate) fn default_identity(ctx: &Ctx) -> Identity {
    Identity::Ambient {
        managed_identity: ctx.settings.ambient_managed_identity,
    }
}

/// Folds one output's write into the reconcile's tallies (metrics, changed outputs, rotations for
/// restarts, refusals). True when the output is ours and its hash and name go into the status.
#[allow(clippy::too_many_arguments)]
fn record_write(
    metrics: &Metrics,
    kind: &'static str,
    name: &str,
    outcome: Outcome,
    hash: &str,
    prev_hash: Option<&str>,
    changed_outputs: &mut Vec<String>,
    rotated: &mut Vec<OutputHash>,
    refused: &mut Vec<String>,
) -> bool {
    if let Outcome::NotOwned { owner } = outcome {
        metrics.write(kind, "not_owned");
        refused.push(format!(
            "{kind} {name} exists and is not owned by this resource ({owner})"
        ));
        return false;
    }
    if outcome != Outcome::Unchanged {
        let result = if outcome == Outcome::Created {
            "created"
        } else {
            "updated"
        };
        metrics.write(kind, result);
        if prev_hash != Some(hash) {
            changed_outputs.push(format!("{kind} {name}"));
            if outcome == Outcome::Updated && prev_hash.is_some() {
                rotated.push((kind, name.to_string(), hash.to_string()));
            }
        }
    }
    true
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn out(kind: &'static str, name: &str, hash: &str) -> OutputHash {
        (kind, name.to_string(), hash.to_string())
    }

    fn pending(kind: &str, name: &str) -> PendingRestart {
        PendingRestart {
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn restart_targets_merge_rotated_and_pending() {
        let current = [out("Secret", "s", "h2"), out("ConfigMap", "c", "c1")];
        // Nothing rotated, nothing pending: nothing to restart.
        assert!(restart_targets(&[], &[], &current).is_empty());
        // Rotated only.
        assert_eq!(
            restart_targets(&[out("Secret", "s", "h2")], &[], &current),
            [out("Secret", "s", "h2")]
        );
        // Pending only (the controller restarted, or the vault did not change again): the
        // current hash of the output, from this reconcile.
        assert_eq!(
            restart_targets(&[], &[pending("ConfigMap", "c")], &current),
            [out("ConfigMap", "c", "c1")]
        );
        // Both, the same output once.
        assert_eq!(
            restart_targets(
                &[out("Secret", "s", "h2")],
                &[pending("Secret", "s"), pending("ConfigMap", "c")],
                &current
            ),
            [out("Secret", "s", "h2"), out("ConfigMap", "c", "c1")]
        );
        // A pending output that is no output any more (renamed, dropped, not owned) is
        // forgotten; the same name of the other kind does not count.
        assert!(restart_targets(
            &[],
            &[pending("Secret", "old"), pending("Secret", "c")],
            &current
        )
        .is_empty());
    }

    #[test]
    fn record_restart_failure_then_success() {
        let targets = [out("Secret", "s", "h2"), out("ConfigMap", "c", "c1")];
        let prev = AzureKeyVaultSecretStatus {
            conditions: Some(vec![ready(None, true, "Synced", "ok".into(), Some(1))]),
            ..Default::default()
        };
        // Failure: pending list (sorted, names only), RestartPending=True naming the outputs
        // and the error, Ready untouched, an event.
        let mut failed = prev.clone();
        let event = record_restart(
            &mut failed,
            &prev,
            &targets,
            Some("Deployment web: denied".into()),
            Some(1),
        );
        assert_eq!(
            failed.pending_restarts,
            Some(vec![pending("ConfigMap", "c"), pending("Secret", "s")])
        );
        let c = find_condition(&failed, RESTART_PENDING).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "RestartFailed")
        );
        assert!(c.message.contains("Secret s") && c.message.contains("ConfigMap c"));
        assert!(c.message.contains("Deployment web: denied"));
        assert!(!c.message.contains("h2"), "no hashes in the message");
        assert_eq!(event.as_deref(), Some(c.message.as_str()));
        assert_eq!(find_condition(&failed, READY), find_condition(&prev, READY));

        // The same failure again: same status (no write), no second event.
        let mut again = failed.clone();
        let event = record_restart(
            &mut again,
            &failed,
            &targets,
            Some("Deployment web: denied".into()),
            Some(1),
        );
        assert_eq!(again, failed);
        assert_eq!(event, None);
        // Another error: a new event.
        let mut other = failed.clone();
        let event = record_restart(
            &mut other,
            &failed,
            &targets,
            Some("Deployment web: conflict".into()),
            Some(1),
        );
        assert!(event.unwrap().contains("conflict"));

        // Success: the pending list goes, RestartPending=False, Ready untouched.
        let mut done = failed.clone();
        assert_eq!(
            record_restart(&mut done, &failed, &targets, None, Some(1)),
            None
        );
        assert_eq!(done.pending_restarts, None);
        let c = find_condition(&done, RESTART_PENDING).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Restarted")
        );
        assert_eq!(find_condition(&done, READY), find_condition(&prev, READY));
        // Pending outputs that are no outputs any more: cleared, said so.
        let mut gone = failed.clone();
        record_restart(&mut gone, &failed, &[], None, Some(1));
        assert_eq!(gone.pending_restarts, None);
        assert_eq!(
            find_condition(&gone, RESTART_PENDING).unwrap().reason,
            "OutputsGone"
        );
        // A success without a pending restart before adds no condition.
        let mut plain = prev.clone();
        record_restart(&mut plain, &prev, &targets, None, Some(1));
        assert_eq!(plain, prev);
    }

    #[test]
    fn status_patch_clears_what_went() {
        let prev = AzureKeyVaultSecretStatus {
            secret_name: Some("s".into()),
            pending_restarts: Some(vec![pending("Secret", "s")]),
            ..Default::default()
        };
        let now = AzureKeyVaultSecretStatus {
            secret_name: Some("s".into()),
            ..Default::default()
        };
        let patch = status_patch(&prev, &now).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"status": {"secretName": "s", "pendingRestarts": null}})
        );
        let patch = status_patch(&now, &prev).unwrap();
        assert_eq!(
            patch,
            serde_json::json!({"status": {"secretName": "s",
                "pendingRestarts": [{"kind": "Secret", "name": "s"}]}})
        );
    }

    fn vault_err(source: keyvault::Error) -> mount::MountError {
        mount::MountError::Vault {
            key: render::render::FetchKey {
                object_type: keyvault::ObjectKind::Secret,
                name: "db".into(),
                version: None,
            },
            source,
        }
    }

    fn target() -> Box<keyvault::Target> {
        Box::new(keyvault::Target {
            vault: "https://v.vault.azure.net".into(),
            kind: Some(keyvault::ObjectKind::Secret),
            name: Some("db".into()),
            version: None,
            operation: None,
        })
    }

    /// The vault error the client makes of an HTTP `status` answer (the variant by status).
    fn http(status: u16, code: &str) -> keyvault::Error {
        let (target, code, message) = (target(), code.to_string(), format!("{code} text"));
        macro_rules! answer {
            ($variant:ident $(, $field:ident: $value:expr)*) => {
                keyvault::Error::$variant { target, status, code, message $(, $field: $value)* }
            };
        }
        match status {
            404 => answer!(NotFound),
            403 => answer!(Forbidden),
            401 => answer!(Unauthorized),
            429 => answer!(Throttled, attempts: 3, retry_after: None, beyond_deadline: None),
            _ => answer!(Http, attempts: 1),
        }
    }

    fn auth(credential: &str, status: u16, code: &str, message: &str) -> keyvault::Error {
        keyvault::Error::Auth {
            credential: credential.into(),
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    #[test]
    fn failure_of_maps_each_error_kind() {
        let mi = "managed identity credential (client id x)";
        let sp = "client secret credential (tenant t, client id app)";
        let cases: Vec<(keyvault::Error, &str, bool)> = vec![
            (http(403, "Forbidden"), "VaultAccessDenied", false),
            (http(401, "Unauthorized"), "VaultAccessDenied", false),
            (http(404, "SecretNotFound"), "VaultObjectNotFound", false),
            (http(400, "BadParameter"), "VaultBadRequest", false),
            (http(429, "Throttled"), "VaultUnavailable", true),
            (http(500, "InternalError"), "VaultUnavailable", true),
            (http(503, "ServiceUnavailable"), "VaultUnavailable", true),
            (http(408, "RequestTimeout"), "VaultUnavailable", true),
            (http(409, "Conflict"), "VaultUnavailable", false),
            (
                keyvault::Error::CredentialUnavailable {
                    credential: "workload identity credential".into(),
                    reason: "token file missing".into(),
                    source: None,
                },
                "IdentityUnavailable",
                false,
            ),
            (
                keyvault::Error::Transport {
                    target: target(),
                    attempts: 3,
                    last: Some("connection refused".into()),
                    source: None,
                },
                "VaultUnavailable",
                true,
            ),
            (
                keyvault::Error::Timeout {
                    target: target(),
                    deadline: Duration::from_secs(30),
                    attempts: 2,
                    last: Some("connection reset".into()),
                    source: None,
                },
                "VaultUnavailable",
                true,
            ),
        ];
        // Token refusals and failures: the identity provider's status is not the vault's; only
        // 429/5xx/408 are transient.
        let mut cases = cases;
        for (credential, status, code, transient) in [
            (mi, 400, "invalid_request", false),
            (sp, 401, "AADSTS7000215", false),
            (sp, 429, "AADSTS50196", true),
            (mi, 500, "unknown", true),
            (mi, 503, "unknown", true),
            (mi, 408, "timeout", true),
        ] {
            let e = auth(credential, status, code, "provider text");
            cases.push((e, "IdentityUnavailable", transient));
        }
        for (err, reason, transient) in cases {
            let shown = err.to_string();
            let f = failure_of(&vault_err(err));
            assert_eq!((f.reason, f.transient), (reason, transient), "{shown}");
            // The object and the vault error (its cause) are both in the message.
            assert!(
                f.message.contains("secret/db (version latest): ") && f.message.contains(&shown),
                "{}",
                f.message
            );
        }
        // Not a vault error: the mount layer was interrupted (retry).
        let f = failure_of(&mount::MountError::Interrupted("the vault read"));
        assert_eq!((f.reason, f.transient), ("VaultUnavailable", true));
        assert_eq!(f.message, "the vault read was interrupted");
    }

    /// A client that fails before sending anything (no token is ever asked for).
    pub(crate) fn offline_client() -> keyvault::KeyVaultClient {
        let credential =
            keyvault::ClientSecretCredential::new("https://login.invalid", "t", "app", "s");
        keyvault::KeyVaultClient::new(Arc::new(credential), keyvault::ClientOptions::default())
            .unwrap()
    }

    #[tokio::test]
    async fn failure_of_tells_to_fix_a_request_that_cannot_be_made() {
        let client = offline_client();
        let vault = "https://v.vault.azure.net";
        let get = |url: &'static str, name: &'static str, version: Option<&'static str>| {
            let client = client.clone();
            async move { client.get_secret(url, name, version).await.err().unwrap() }
        };
        // Made by the client itself, before any request: wrong vault URL, name, version.
        let mut cases = vec![
            get("http://v.vault.azure.net", "db", None).await,
            get(vault, "no_underscores", None).await,
            get(vault, "db", Some("not/a/version")).await,
            keyvault::Error::ChallengeResourceMismatch {
                target: target(),
                resource: "https://elsewhere.example".into(),
                host: "v.vault.azure.net".into(),
            },
            keyvault::Error::invalid_config("cloud", "unknown cloud 'Mars'"),
        ];
        let kinds: Vec<_> = cases.iter().map(|e| e.kind()).collect();
        use keyvault::ErrorKind::{InvalidConfig, InvalidRequest};
        let expected = [
            InvalidConfig,
            InvalidRequest,
            InvalidConfig,
            InvalidConfig,
            InvalidConfig,
        ];
        assert_eq!(kinds, expected, "{cases:?}");
        for err in cases.drain(..) {
            let shown = err.to_string();
            let f = failure_of(&vault_err(err));
            assert_eq!(
                (f.reason, f.transient),
                ("VaultRequestInvalid", false),
                "{shown}"
            );
            assert!(
                f.message.starts_with(
                    "the vault request cannot be made as configured (fix the resource or the \
                     controller's settings): secret/db (version latest): "
                ) && f.message.ends_with(&shown),
                "{}",
                f.message
            );
        }
        // A malformed or oversized answer is the vault's: transient, no "fix" in the message.
        for err in [
            keyvault::Error::BadResponse {
                target: target(),
                detail: "invalid JSON at line 1 column 2".into(),
            },
            keyvault::Error::ResponseTooLarge {
                target: target(),
                status: 200,
                limit: 4 << 20,
            },
        ] {
            let f = failure_of(&vault_err(err));
            assert_eq!((f.reason, f.transient), ("VaultUnavailable", true));
            assert!(!f.message.contains("fix"), "{}", f.message);
        }
    }

    #[test]
    fn failure_of_says_a_refused_credential_was_refused() {
        // A wrong service-principal secret: Entra 401 invalid_client. A configuration error in
        // the user's Secret, so not transient, and the message says the credential was refused.
        let sp = "client secret credential (tenant t, client id app)";
        let f = failure_of(&vault_err(auth(
            sp,
            401,
            "AADSTS7000215",
            "AADSTS7000215: Invalid client secret provided.",
        )));
        assert_eq!((f.reason, f.transient), ("IdentityUnavailable", false));
        assert_eq!(
            f.message,
            "the identity provider refused the credential: secret/db (version latest): \
             client secret credential (tenant t, client id app): token request failed \
             (HTTP 401 AADSTS7000215): AADSTS7000215: Invalid client secret provided."
        );
        // Throttled or failing identity provider: not "refused".
        let f = failure_of(&vault_err(auth(sp, 503, "unknown", "busy")));
        assert!(!f.message.contains("refused"), "{}", f.message);
    }

    #[test]
    fn failure_message_has_every_cause_and_is_capped() {
        // A cause below the vault error (an I/O error) is in the message too.
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let f = failure_of(&vault_err(keyvault::Error::CredentialUnavailable {
            credential: "workload identity credential".into(),
            reason: "cannot read the token file".into(),
            source: Some(Arc::new(io)),
        }));
        assert_eq!(
            f.message,
            "secret/db (version latest): workload identity credential: unavailable: cannot \
             read the token file: no such file"
        );
        // A long chain is cut at 1024 characters in the condition (multi-byte text included).
        let long = auth("credential é", 400, "invalid_request", &"é".repeat(3000));
        let f = failure_of(&vault_err(long));
        assert!(f.message.chars().count() > 1024);
        let c = ready(None, false, f.reason, f.message.clone(), Some(1));
        assert_eq!(c.message.chars().count(), 1024);
        assert!(f.message.starts_with(&c.message));
    }
}
