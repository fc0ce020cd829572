//! `kvbridge webhook`: the mutating admission webhook over HTTPS (AdmissionReview v1). Each
//! Pod CREATE naming `@azurekeyvault` placeholders has its `AzureKeyVaultSecret`s read from its
//! namespace and is patched by [`crate::mutate::patch`]. Pods are mutated when they opt in
//! (label or annotation `kvbridge.io/inject: "true"`) or their namespace does
//! (`azure-key-vault-env-injection: enabled`), whichever way the webhook is registered. No side
//! effects (`sideEffects: None`): dry-run requests are answered the same way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use controller::crd::{AzureKeyVaultSecret, AzureKeyVaultSecretSpec};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::Api;
use mount::target::CloudConfig;
use tokio::net::TcpListener;

use crate::admission::{self, AdmissionRequest, Verdict, MAX_BODY};
use crate::lookup::{self, OnLookupFailure};
use crate::mutate::{self, MutateConfig};
use crate::registry::Resolver;
use crate::trust_mutate;

/// Namespaces never mutated (besides the webhook's own).
pub const SKIPPED_NAMESPACES: [&str; 1] = ["kube-system"];
/// Bound on one AdmissionReview's `AzureKeyVaultSecret` reads.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on distinct `AzureKeyVaultSecret`s one pod may name.
pub const MAX_REFERENCES: usize = 64;

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the webhook needs.
pub struct Webhook {
    pub client: kube::Client,
    pub mutate: MutateConfig,
    pub cloud: CloudConfig,
    /// The webhook's own namespace (never mutated).
    pub own_namespace: Option<String>,
    /// Reads entrypoints of images whose containers have no `command` (`None`: such
    /// containers are refused).
    pub registry: Option<Arc<Resolver>>,
    /// What to do when an entrypoint cannot be read.
    pub on_lookup_failure: OnLookupFailure,
    /// Namespaces' `azure-key-vault-env-injection` label (pods without kvbridge's own opt-in).
    pub namespaces: lookup::NamespaceOptIn,
}

impl Webhook {
    /// The answer to one request (never an error: failures are denials carrying the reason).
    pub async fn decide(&self, req: &AdmissionRequest) -> Verdict {
        if !req.kind.group.is_empty() || req.kind.kind != "Pod" || req.operation != "CREATE" {
            return Verdict::Allow;
        }
        let Some(object) = &req.object else {
            return Verdict::Allow;
        };
        let pod: Pod = match serde_json::from_value(object.clone()) {
            Ok(p) => p,
            Err(e) => {
                return Verdict::Deny {
                    code: 400,
                    message: format!("kvbridge: the Pod does not parse: {e}"),
                }
            }
        };
        let namespace = req
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        if SKIPPED_NAMESPACES.contains(&namespace.as_str())
            || self.own_namespace.as_deref() == Some(namespace.as_str())
            || mutate::already_injected(&pod)
        {
            return Verdict::Allow;
        }
        let deny = |code: u16, message: String| Verdict::Deny {
            code,
            message: format!("kvbridge: {message}"),
        };
        let uses = match mutate::uses(&pod) {
            Ok(u) => u,
            Err(e) => return deny(400, e.to_string()),
        };
        let trust_names = match trust_mutate::requested(&pod) {
            Ok(n) => n,
            Err(e) => return deny(400, e.to_string()),
        };
        if uses.is_empty() && trust_names.is_empty() {
            return Verdict::Allow;
        }
        // Opted in by the pod (`kvbridge.io/inject`) or its namespace: checked here too, so that
        // a registration sending more pods than the opted-in ones mutates only those. The trust
        // annotation is its own explicit request: it applies whatever the opt-in.
        let mut uses = uses;
        if !uses.is_empty() && !lookup::pod_opted_in(&pod) {
            match tokio::time::timeout(
                LOOKUP_TIMEOUT,
                self.namespaces.enabled(&self.client, &namespace),
            )
            .await
            {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) if trust_names.is_empty() => return Verdict::Allow,
                Ok(Ok(false)) => uses.clear(),
                Ok(Err(e)) => {
                    return deny(500, format!("cannot read namespace {namespace:?}: {e}"))
                }
                Err(_) => {
                    return deny(
                        500,
                        format!(
                            "reading namespace {namespace:?} took longer than {LOOKUP_TIMEOUT:?}"
                        ),
                    )
                }
            }
        }
        let mut names: Vec<&str> = uses
            .iter()
            .map(|u| u.akvs.as_str())
            .chain(trust_names.iter().map(String::as_str))
            .collect();
        names.sort_unstable();
        names.dedup();
        if names.len() > MAX_REFERENCES {
            return deny(
                400,
                format!(
                    "the pod names {} AzureKeyVaultSecrets; at most {MAX_REFERENCES} are allowed",
                    names.len()
                ),
            );
        }
        let api: Api<AzureKeyVaultSecret> = Api::namespaced(self.client.clone(), &namespace);
        let reads = futures_util::future::join_all(names.iter().map(|name| {
            let api = api.clone();
            async move { (*name, api.get_opt(name).await) }
        }));
        let results = match tokio::time::timeout(LOOKUP_TIMEOUT, reads).await {
            Ok(r) => r,
            Err(_) => {
                return deny(
                    500,
                    format!(
                        "reading AzureKeyVaultSecrets in {namespace:?} took longer than {LOOKUP_TIMEOUT:?}"
                    ),
                )
            }
        };
        let mut specs: BTreeMap<String, AzureKeyVaultSecretSpec> = BTreeMap::new();
        for (name, result) in results {
            match result {
                Ok(Some(a)) => {
                    specs.insert(name.to_string(), a.spec);
                }
                Ok(None) => {}
                Err(e) => {
                    return deny(
                        500,
                        format!("cannot read AzureKeyVaultSecret {name:?} in {namespace:?}: {e}"),
                    )
                }
            }
        }
        let mut pod = pod;
        if let Err(verdict) = self
            .fill_from_cluster(&mut pod, &namespace, &uses, &mut specs)
            .await
        {
            return verdict;
        }
        let target = |vault: &str| {
            let t = self.cloud.resolve_name(vault);
            (t.cloud, t.vault_url)
        };
        let env_ops = if uses.is_empty() {
            Ok(None)
        } else {
            mutate::patch(&pod, &namespace, &specs, &self.mutate, &target)
        };
        let ops = env_ops.and_then(|ops| {
            trust_mutate::combine(&pod, ops, &namespace, &specs, &self.mutate, &target)
        });
        match ops {
            Ok(Some(ops)) => {
                tracing::info!(
                    namespace,
                    pod = pod
                        .metadata
                        .name
                        .as_deref()
                        .or(pod.metadata.generate_name.as_deref())
                        .unwrap_or(""),
                    references = specs.len(),
                    trust = trust_names.len(),
                    dry_run = req.dry_run.unwrap_or(false),
                    "pod mutated for kvbridge env / trust"
                );
                Verdict::Patch(ops)
            }
            Ok(None) => Verdict::Allow,
            Err(e) => deny(403, e.to_string()),
        }
    }
}

impl Webhook {
    /// Reads what the pod needs from the cluster and its registries (ServiceAccount, pull
    /// secrets, image entrypoints) and fills it in; `Err` is the answer when that fails.
    async fn fill_from_cluster(
        &self,
        pod: &mut Pod,
        namespace: &str,
        uses: &[mutate::Use],
        specs: &mut BTreeMap<String, AzureKeyVaultSecretSpec>,
    ) -> Result<(), Verdict> {
        let deny = |code: u16, message: String| Verdict::Deny {
            code,
            message: format!("kvbridge: {message}"),
        };
        let sa_name = lookup::service_account_name(pod);
        let missing = lookup::needing_entrypoint(pod, uses);
        let need_identity = lookup::needs_workload_identity(specs, &sa_name);
        let lookups = if missing.is_empty() {
            None
        } else {
            self.registry.as_ref()
        };
        if lookups.is_none() && !need_identity {
            // Containers without command are refused by `mutate::patch`.
            return Ok(());
        }
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let sa = match tokio::time::timeout(LOOKUP_TIMEOUT, sas.get_opt(&sa_name)).await {
            Ok(Ok(sa)) => sa,
            Ok(Err(e)) => {
                return Err(deny(
                    500,
                    format!("cannot read ServiceAccount {sa_name:?} in {namespace:?}: {e}"),
                ))
            }
            Err(_) => {
                return Err(deny(
                    500,
                    format!(
                        "reading ServiceAccount {sa_name:?} took longer than {LOOKUP_TIMEOUT:?}"
                    ),
                ))
            }
        };
        if need_identity {
            if let Some(sa) = &sa {
                lookup::fill_workload_identity(specs, sa);
            }
        }
        let Some(resolver) = lookups else {
            return Ok(());
        };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let names = lookup::pull_secret_names(pod, sa.as_ref());
        let configs =
            match tokio::time::timeout(LOOKUP_TIMEOUT, lookup::docker_configs(&secrets, &names))
                .await
            {
                Ok(c) => c,
                Err(_) => {
                    return Err(deny(
                        500,
                        format!("reading imagePullSecrets took longer than {LOOKUP_TIMEOUT:?}"),
                    ))
                }
            };
        let platform = lookup::pod_platform(pod);
        let mut images: Vec<&str> = missing.iter().map(|(_, i)| i.as_str()).collect();
        images.sort_unstable();
        images.dedup();
        let found = futures_util::future::join_all(images.iter().map(|image| {
            let creds = crate::registry::ImageRef::parse(image)
                .ok()
                .and_then(|r| crate::registry::credentials_for(&configs, &r));
            let platform = platform.as_ref();
            async move { (*image, resolver.lookup(image, creds, platform).await) }
        }))
        .await;
        let mut commands = BTreeMap::new();
        for (image, result) in found {
            match result {
                Ok(c) => {
                    commands.insert(image, c);
                }
                Err(e) => {
                    let containers: Vec<&str> = missing
                        .iter()
                        .filter(|(_, i)| i == image)
                        .map(|(c, _)| c.as_str())
                        .collect();
                    let reason = error_chain(&e);
                    if self.on_lookup_failure == OnLookupFailure::Allow {
                        tracing::warn!(
                            namespace,
                            image,
                            reason,
                            "entrypoint lookup failed; pod admitted unmodified"
                        );
                        return Err(Verdict::Allow);
                    }
                    return Err(deny(
                        403,
                        format!(
                            "container(s) {containers:?} use @azurekeyvault placeholders and have no `command`, and the entrypoint of image {image:?} cannot be read: {reason}. Fix: set `command:` (and `args:`) in the container to what the image runs, or give the pod (or its ServiceAccount) an imagePullSecret that can read {image:?}"
                        ),
                    ));
                }
            }
        }
        for (container, image) in &missing {
            let Some(c) = commands.get(image.as_str()) else {
                continue;
            };
            if !lookup::fill_command(pod, container, c) {
                return Err(deny(
                    403,
                    format!(
                        "container {container:?}: image {image:?} has neither an entrypoint nor a command; set `command:` in the container"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// An error and its sources, `: `-separated (registry errors carry no credentials).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        if depth >= 8 {
            break;
        }
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
        depth += 1;
    }
    out
}

async fn mutate_handler(State(webhook): State<Arc<Webhook>>, body: Bytes) -> Response {
    match admission::parse(&body) {
        Ok(req) => {
            let verdict = webhook.decide(&req).await;
            if let Verdict::Deny { message, .. } = &verdict {
                tracing::info!(uid = %req.uid, "denied: {message}");
            }
            Json(admission::response(&req.uid, &verdict)).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

/// The webhook's routes: `POST /mutate`, `GET /healthz`.
pub fn router(webhook: Arc<Webhook>) -> Router {
    Router::new()
        .route("/mutate", post(mutate_handler))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(webhook)
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Listen { addr, source })
}

/// Serves HTTPS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Arc<Webhook>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = router(webhook);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            // A client that never finishes the handshake does not hold a task forever.
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
