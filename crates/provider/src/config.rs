//! Provider configuration (the `kvbridge provider` flags).

use std::path::PathBuf;
use std::time::Duration;

/// Per-node cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// How long a `latest` fetch (and a version listing) is reused. Default 30 s: well below the
    /// driver's usual 2-minute rotation poll, so rotation still sees new versions.
    pub latest_ttl: Duration,
    /// How long an explicitly versioned object is reused (its content never changes; only its
    /// enabled flag can). Default 10 min.
    pub versioned_ttl: Duration,
    /// Entry bound; beyond it expired, then oldest entries are dropped.
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            latest_ttl: Duration::from_secs(30),
            versioned_ttl: Duration::from_secs(600),
            max_entries: 10_000,
        }
    }
}

/// Everything a [`crate::ProviderService`] needs.
/// Default for [`ProviderConfig::max_concurrent_mounts`].
pub const DEFAULT_MAX_CONCURRENT_MOUNTS: usize = 16;

/// Default for [`ProviderConfig::refusal_delay`].
pub const DEFAULT_REFUSAL_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// `--construct-pem-chain` (default true).
    pub construct_pem_chain: bool,
    /// `--write-cert-and-key-in-separate-files`.
    pub write_cert_and_key_in_separate_files: bool,
    /// Cloud environment file used when a class names neither `cloudEnvFileName` nor `cloudName`.
    pub default_cloud_env_file: Option<PathBuf>,
    /// Directory a class's `cloudEnvFileName` must resolve into (`None` = anywhere; only for
    /// tests and single-tenant nodes).
    pub cloud_env_dir: Option<PathBuf>,
    /// IMDS endpoint for managed identity (default `http://169.254.169.254`).
    pub imds_endpoint: Option<String>,
    /// AAD Pod Identity's NMI host token endpoint (default `http://127.0.0.1:2579/host/token/`).
    pub nmi_endpoint: Option<String>,
    /// HTTP options: extra CA file, per-attempt timeout, retries, overall deadline, rate limit.
    pub client: keyvault::ClientOptions,
    /// Concurrent Key Vault requests per mount.
    pub concurrency: usize,
    /// Mounts processed at once; more wait their turn. Bounds memory when many pods start
    /// together (each mount holds its objects and rendered files until it answers).
    pub max_concurrent_mounts: usize,
    /// How long a Mount refused for invalid input (InvalidArgument) waits before it answers
    /// (1x to 1.5x of it, at random).
    /// The refusal is computed first and holds no mount slot or CPU while it waits; the wait
    /// bounds how fast one caller can make the provider refuse classes (a flood of hostile
    /// classes), and is far below kubelet's own retry backoff, so users see no difference.
    pub refusal_delay: std::time::Duration,
    /// Bytes of large Mount requests (over [`crate::gate::LARGE_REQUEST_BYTES`]) read and
    /// parsed per second, at most; they go one at a time (see [`crate::gate`]).
    pub large_read_rate: u64,
    pub cache: CacheConfig,
    /// Bounds on the provider socket's connections.
    pub connections: crate::listener::ConnLimits,
    /// The system CA bundle (PEM) that objects with kvbridge's `objectFormat: trust-bundle` /
    /// `truststore` start from (read once at start; `None`: the Key Vault CAs alone).
    pub system_trust: Option<std::sync::Arc<Vec<u8>>>,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            construct_pem_chain: true,
            write_cert_and_key_in_separate_files: false,
            default_cloud_env_file: None,
            cloud_env_dir: Some(PathBuf::from(mount::cloud_env::DEFAULT_CLOUD_ENV_DIR)),
            imds_endpoint: None,
            nmi_endpoint: None,
            client: keyvault::ClientOptions::default(),
            concurrency: mount::DEFAULT_CONCURRENCY,
            max_concurrent_mounts: DEFAULT_MAX_CONCURRENT_MOUNTS,
            refusal_delay: DEFAULT_REFUSAL_DELAY,
            large_read_rate: crate::gate::DEFAULT_LARGE_READ_RATE,
            cache: CacheConfig::default(),
            connections: crate::listener::ConnLimits::default(),
            system_trust: None,
        }
    }
}
