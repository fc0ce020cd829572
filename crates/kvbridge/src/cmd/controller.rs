//! `kvbridge controller`: syncs Key Vault objects named by `AzureKeyVaultSecret` resources
//! (akv2k8s-compatible) into Kubernetes Secrets and ConfigMaps.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use controller::lease::{Elector, LeaseConfig};
use controller::mapping::{KeyFormat, MapOptions};
use controller::reconcile::Settings;
use controller::run::{Health, Options, Runner};
use keyvault::{ClientOptions, Cloud, Transport};
use mount::cloud_env::CloudEnvFiles;
use mount::identity::LocalEndpoints;
use mount::target::CloudConfig;

#[derive(clap::Args)]
pub struct Args {
    /// Kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the in-cluster service
    /// account).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Watch AzureKeyVaultSecrets (and write outputs) in this namespace only (default: all).
    #[arg(long, env = "KVBRIDGE_NAMESPACE")]
    namespace: Option<String>,
    /// Only AzureKeyVaultSecrets matching this label selector (e.g. `team=payments`).
    #[arg(long)]
    selector: Option<String>,
    /// Refresh interval of resources without spec.refreshInterval.
    #[arg(long, default_value = "10m", value_parser = crate::cmd::parse_duration)]
    refresh_interval: Duration,
    /// Shortest spec.refreshInterval honoured (shorter ones are raised to it).
    #[arg(long, default_value = "10s", value_parser = crate::cmd::parse_duration)]
    min_refresh_interval: Duration,
    /// Reconciles in parallel.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Field manager of every Secret/ConfigMap write.
    #[arg(long, default_value = "kvbridge-controller")]
    field_manager: String,
    /// akv2k8s compatibility: write `key` objects as the raw RSA modulus (base64url) instead
    /// of a PKIX PUBLIC KEY PEM.
    #[arg(long)]
    akv2k8s_key_modulus: bool,
    /// Tenant of per-object identities (spec.vault.identity) that name none.
    #[arg(long, env = "AZURE_TENANT_ID")]
    tenant_id: Option<String>,
    /// Let the controller's own credential chain end with managed identity (IMDS).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    managed_identity: bool,
    /// Azure environment JSON for the vaults (Azure Stack, sovereign clouds, or the dev vault's
    /// cloud.json); default: Azure public cloud.
    #[arg(long, env = "AZURE_ENVIRONMENT_FILEPATH")]
    cloud_env_file: Option<PathBuf>,
    /// Replaces the cloud's Entra ID authority host.
    #[arg(long)]
    authority_host: Option<String>,
    /// Extra PEM CA certificates to trust for the vault and Entra ID.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Managed identity endpoint (default IMDS, http://169.254.169.254).
    #[arg(long)]
    imds_endpoint: Option<String>,
    /// Per-attempt Key Vault / Entra request timeout.
    #[arg(long, default_value = "30s", value_parser = crate::cmd::parse_duration)]
    request_timeout: Duration,
    /// Deadline for one object including retries and Retry-After waits.
    #[arg(long, default_value = "60s", value_parser = crate::cmd::parse_duration)]
    request_deadline: Duration,
    /// Retries after the first attempt.
    #[arg(long, default_value_t = 5)]
    max_retries: u32,
    /// Client-side Key Vault requests per second per vault (0 = no limit). The default stays
    /// below Key Vault's published 4,000 GETs per 10 s per vault.
    #[arg(long, default_value_t = 200.0)]
    rate_limit: f64,
    /// Port for /healthz and /readyz (0 = any free port, logged at start).
    #[arg(long, default_value_t = 8081)]
    health_port: u16,
    /// Port for /metrics (OpenMetrics text).
    #[arg(long, default_value_t = 8080)]
    metrics_port: u16,
    /// Address the HTTP ports bind to.
    #[arg(long, default_value = "0.0.0.0")]
    http_bind: std::net::IpAddr,
    /// Also sync the secretObjects of SecretProviderClasses annotated
    /// kvbridge.io/sync-secret-objects: "true" into Secrets, without any pod mounting them
    /// (needs the Secrets Store CSI Driver's CRDs).
    #[arg(long)]
    sync_secret_provider_classes: bool,
    /// Port for Azure Event Grid deliveries of Key Vault events (`POST /eventgrid`, Event Grid
    /// schema or CloudEvents): the named objects are refreshed at once. Plain HTTP, served by
    /// the leader only: expose it through an Ingress with TLS (Event Grid delivers to HTTPS).
    #[arg(long)]
    event_grid_port: Option<u16>,
    /// Token Event Grid deliveries must carry (`?token=` in the subscription URL, or the
    /// `aeg-sas-key` header).
    #[arg(long, env = "KVBRIDGE_EVENT_GRID_TOKEN", hide_env_values = true)]
    event_grid_token: Option<String>,
    /// Serve no HTTP port.
    #[arg(long)]
    no_http: bool,
    /// Elect a leader on a Lease so that several replicas are safe (only the leader
    /// reconciles).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "kvbridge-controller")]
    lease_name: String,
    /// Namespace of the Lease (in a pod: its own namespace through the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// A leader that stopped renewing is replaced after this long.
    #[arg(long, default_value = "15s", value_parser = crate::cmd::parse_duration)]
    lease_duration: Duration,
}

/// This replica's name in the Lease: the pod name, else host name and process id.
fn replica_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        if !pod.trim().is_empty() {
            return pod.trim().to_string();
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kvbridge".into());
    format!("{host}-{}", std::process::id())
}

async fn signalled() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let client = controller::run::kube_client(args.kubeconfig.as_deref()).await?;

    let options = ClientOptions {
        ca_file: args.ca_file.clone(),
        timeout: args.request_timeout,
        deadline: args.request_deadline,
        max_retries: args.max_retries,
        rate_limit_per_sec: (args.rate_limit > 0.0).then_some(args.rate_limit),
        ..ClientOptions::default()
    };
    let transport = Transport::new(&options).context("cannot build the HTTPS client")?;
    // The same identity/cloud/client layer as the provider and `kvbridge mount`.
    let mut cloud = CloudConfig::new(CloudEnvFiles::anywhere());
    if let Some(file) = &args.cloud_env_file {
        cloud.default_cloud = Some(
            Cloud::from_env_file(file)
                .with_context(|| format!("--cloud-env-file {}", file.display()))?,
        );
    }
    cloud.authority_host = args.authority_host.clone();
    let clients = Arc::new(mount::clients::ClientPool::new(
        transport,
        LocalEndpoints {
            imds: args.imds_endpoint.clone(),
            nmi: None,
        },
    ));
    let settings = Settings {
        field_manager: args.field_manager.clone(),
        default_refresh: args.refresh_interval.max(args.min_refresh_interval),
        min_refresh: args.min_refresh_interval,
        map: MapOptions {
            key_format: if args.akv2k8s_key_modulus {
                KeyFormat::Akv2k8sModulus
            } else {
                KeyFormat::Pem
            },
        },
        ambient_managed_identity: args.managed_identity,
        tenant_id: args.tenant_id.clone().filter(|t| !t.trim().is_empty()),
    };
    let opts = Options {
        settings,
        namespace: args.namespace.clone().filter(|n| !n.is_empty()),
        selector: args.selector.clone().filter(|s| !s.is_empty()),
        concurrency: args.concurrency.max(1),
        cloud,
        clients,
        instance: std::env::var("POD_NAME").ok(),
        sync_secret_provider_classes: args.sync_secret_provider_classes,
    };
    let metrics = Arc::new(controller::metrics::Metrics::new());
    let health = Arc::new(Health::default());
    let mut http = Vec::new();
    if !args.no_http {
        let at = |p: u16| SocketAddr::new(args.http_bind, p);
        let (h, t) = controller::http::spawn(
            at(args.health_port),
            controller::http::health_router(health.clone()),
        )
        .await?;
        http.push(t);
        let (m, t) = controller::http::spawn(
            at(args.metrics_port),
            controller::http::metrics_router(metrics.clone()),
        )
        .await?;
        http.push(t);
        tracing::info!(health = %h, metrics = %m, "serving /healthz, /readyz, /metrics");
    }
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("(all)"),
        selector = args.selector.as_deref().unwrap_or(""),
        refresh = ?args.refresh_interval,
        "kvbridge controller starting"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signalled().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut elector = args.leader_election.then(|| {
        Elector::new(
            client.clone(),
            LeaseConfig {
                name: args.lease_name.clone(),
                namespace: args.lease_namespace.clone(),
                identity: replica_identity(),
                duration: args.lease_duration.max(Duration::from_secs(1)),
            },
        )
    });
    if let Some(el) = elector.as_mut() {
        health.standby.store(true, Ordering::SeqCst);
        tracing::info!(
            lease = %format!("{}/{}", el.config().namespace, el.config().name),
            identity = %el.config().identity,
            "waiting for the leader lease"
        );
        tokio::select! {
            _ = el.acquire() => {}
            _ = stopped(stop_rx.clone()) => return Ok(()),
        }
        health.standby.store(false, Ordering::SeqCst);
        tracing::info!(identity = %el.config().identity, "leading");
    }
    metrics.leader.set(1);

    // The controller runs until a signal, or until this replica stops holding the lease.
    let lost = Arc::new(AtomicBool::new(false));
    let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
    let mut keeper = {
        let (lost, stop_rx) = (lost.clone(), stop_rx.clone());
        tokio::spawn(async move {
            match elector {
                Some(mut el) => {
                    tokio::select! {
                        _ = el.keep() => lost.store(true, Ordering::SeqCst),
                        _ = stopped(stop_rx) => {}
                    }
                    let _ = end_tx.send(());
                    Some(el)
                }
                None => {
                    stopped(stop_rx).await;
                    let _ = end_tx.send(());
                    None
                }
            }
        })
    };
    let runner = Runner::new(client, opts, metrics.clone());
    if let Some(port) = args.event_grid_port {
        let (addr, t) = controller::http::spawn(
            SocketAddr::new(args.http_bind, port),
            controller::eventgrid::router(controller::eventgrid::Endpoint {
                ctx: runner.ctx.clone(),
                token: args.event_grid_token.clone().filter(|t| !t.is_empty()),
            }),
        )
        .await?;
        http.push(t);
        tracing::info!(eventgrid = %addr, "serving POST /eventgrid");
    }
    runner
        .run(health, async move {
            let _ = end_rx.await;
        })
        .await;
    metrics.leader.set(0);
    // The keeper ends right after it stopped the controller; if the controller ended on its
    // own, the keeper is still waiting: stop it.
    let elector = match tokio::time::timeout(Duration::from_secs(2), &mut keeper).await {
        Ok(Ok(el)) => el,
        _ => {
            keeper.abort();
            None
        }
    };
    for t in http {
        t.abort();
    }
    if lost.load(Ordering::SeqCst) {
        anyhow::bail!("lost the leader lease; exiting so that this replica restarts as a follower");
    }
    if let Some(el) = elector {
        if let Err(e) = el.release().await {
            tracing::warn!(error = %e, "releasing the leader lease");
        }
    }
    Ok(())
}
