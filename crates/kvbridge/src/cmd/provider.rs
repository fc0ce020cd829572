//! `kvbridge provider`: the Secrets Store CSI Driver provider (drop-in for the Azure provider).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use provider::{CacheConfig, ProviderConfig, ProviderService};

#[derive(clap::Args)]
pub struct Args {
    /// Unix socket to serve on (the driver scans /var/run/secrets-store-csi-providers and
    /// /etc/kubernetes/secrets-store-csi-providers for <provider>.sock).
    #[arg(
        long,
        default_value = "unix:///var/run/secrets-store-csi-providers/azure.sock"
    )]
    endpoint: String,
    /// Port for /healthz (0 = off).
    #[arg(long, default_value_t = 8989)]
    healthz_port: u16,
    /// Port for /metrics, Prometheus text format (0 = off).
    #[arg(long, default_value_t = 8898)]
    metrics_port: u16,
    /// Address the HTTP ports bind to.
    #[arg(long, default_value = "0.0.0.0")]
    http_bind: std::net::IpAddr,
    /// Order PEM chains leaf -> intermediates -> root (the Azure provider's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    construct_pem_chain: bool,
    /// Also write <name>.crt and <name>.key for certificate secrets.
    #[arg(long)]
    write_cert_and_key_in_separate_files: bool,
    /// Azure environment JSON used for classes that name neither cloudName nor cloudEnvFileName
    /// (Azure Stack, sovereign clouds, or the dev vault's cloud.json). Read once at start.
    #[arg(long, env = "AZURE_ENVIRONMENT_FILEPATH")]
    cloud_env_file: Option<PathBuf>,
    /// Directory a class's cloudEnvFileName must resolve into (symlinks followed); files
    /// elsewhere, FIFOs, devices and files over 64 KiB are refused.
    #[arg(long, default_value = mount::cloud_env::DEFAULT_CLOUD_ENV_DIR)]
    cloud_env_dir: PathBuf,
    /// Extra PEM CA certificates to trust for the vault and Entra ID.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Managed identity endpoint (default IMDS, http://169.254.169.254).
    #[arg(long)]
    imds_endpoint: Option<String>,
    /// AAD Pod Identity's NMI host token endpoint, for classes with usePodIdentity (default
    /// http://127.0.0.1:2579/host/token/; AAD Pod Identity is retired: prefer workload identity).
    #[arg(long)]
    nmi_endpoint: Option<String>,
    /// How long a `latest` object is served from the node cache (keep well below the rotation
    /// poll interval; 0s = always read the vault, concurrent identical reads still coalesce).
    #[arg(long, default_value = "30s", value_parser = crate::cmd::parse_duration)]
    cache_ttl: Duration,
    /// How long an explicitly versioned object is served from the node cache.
    #[arg(long, default_value = "10m", value_parser = crate::cmd::parse_duration)]
    cache_ttl_versioned: Duration,
    /// Bound on node cache entries.
    #[arg(long, default_value_t = 10_000)]
    cache_max_entries: usize,
    /// Mounts processed at once (more wait their turn; bounds memory when many pods start).
    #[arg(long, default_value_t = provider::config::DEFAULT_MAX_CONCURRENT_MOUNTS)]
    max_concurrent_mounts: usize,
    /// How long a Mount refused for invalid input waits before it answers (bounds how fast a
    /// caller can make the provider refuse hostile classes; 0s = answer at once).
    #[arg(long, default_value = "250ms", value_parser = crate::cmd::parse_duration)]
    refusal_delay: Duration,
    /// Concurrent Key Vault requests per mount.
    #[arg(long, default_value_t = mount::DEFAULT_CONCURRENCY)]
    concurrency: usize,
    /// Per-attempt Key Vault / Entra request timeout.
    #[arg(long, default_value = "30s", value_parser = crate::cmd::parse_duration)]
    request_timeout: Duration,
    /// Deadline for one object including retries and Retry-After waits.
    #[arg(long, default_value = "100s", value_parser = crate::cmd::parse_duration)]
    request_deadline: Duration,
    /// Retries after the first attempt.
    #[arg(long, default_value_t = 10)]
    max_retries: u32,
    /// Client-side Key Vault requests per second per vault from this node (0 = no limit).
    /// The default stays below Key Vault's published 4,000 GETs per 10 s per vault.
    #[arg(long, default_value_t = 200.0)]
    rate_limit: f64,
    /// System CA bundle that objects with objectFormat trust-bundle or truststore start from
    /// (read once at start): auto (the first distribution path that exists), none, or a file.
    #[arg(long, default_value = "auto")]
    system_bundle: mount::trust::SystemBundle,
}

/// The system bundle for the trust formats, read once. A bundle named with --system-bundle must
/// be readable; with `auto` an unreadable one is a warning (classes without trust objects, the
/// usual case, do not need it), and trust objects then hold the Key Vault CAs alone.
fn system_trust(choice: &mount::trust::SystemBundle) -> anyhow::Result<Option<Arc<Vec<u8>>>> {
    match choice.load() {
        Ok(loaded) => Ok(loaded.map(|(_, bytes)| Arc::new(bytes))),
        Err(e) if *choice == mount::trust::SystemBundle::Auto => {
            tracing::warn!(
                "{}; objectFormat trust-bundle/truststore will hold the Key Vault CAs alone",
                keyvault::ErrorChain(&e)
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let socket = provider::server::parse_endpoint(&args.endpoint)?;
    let mut config = ProviderConfig {
        construct_pem_chain: args.construct_pem_chain,
        write_cert_and_key_in_separate_files: args.write_cert_and_key_in_separate_files,
        default_cloud_env_file: args.cloud_env_file.clone(),
        cloud_env_dir: Some(args.cloud_env_dir.clone()),
        imds_endpoint: args.imds_endpoint.clone(),
        nmi_endpoint: args.nmi_endpoint.clone(),
        concurrency: args.concurrency.max(1),
        max_concurrent_mounts: args.max_concurrent_mounts.max(1),
        refusal_delay: args.refusal_delay,
        cache: CacheConfig {
            latest_ttl: args.cache_ttl,
            versioned_ttl: args.cache_ttl_versioned,
            max_entries: args.cache_max_entries.max(1),
        },
        system_trust: system_trust(&args.system_bundle)?,
        ..ProviderConfig::default()
    };
    config.client.ca_file = args.ca_file.clone();
    config.client.timeout = args.request_timeout;
    config.client.deadline = args.request_deadline;
    config.client.max_retries = args.max_retries;
    config.client.rate_limit_per_sec = (args.rate_limit > 0.0).then_some(args.rate_limit);
    let metrics = Arc::new(provider::metrics::Metrics::new());
    let service =
        Arc::new(ProviderService::new(config, metrics).context("provider configuration")?);
    let port = |p: u16| (p != 0).then(|| SocketAddr::new(args.http_bind, p));
    let running = provider::server::Running::start(
        service,
        &socket,
        port(args.healthz_port),
        port(args.metrics_port),
    )
    .await?;
    tracing::info!(
        socket = %socket.display(),
        healthz = ?running.healthz,
        metrics = ?running.metrics,
        cache_ttl = ?args.cache_ttl,
        "kvbridge provider serving"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    running.stop().await?;
    Ok(())
}
