//! `kvbridge dev-vault`, and the dev vault `kvbridge mount --dev-vault` embeds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use devvault::{FaultConfig, Options};
use keyvault::Cloud;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; see STATE/ready.json).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Directory for the CA, server certificate, signing key and vault state.
    #[arg(long, default_value = ".dev-vault")]
    state: PathBuf,
    /// YAML seed file with vaults, objects, identities and access policies.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Resource (token audience) to advertise in the 401 challenge (default: derived from the host).
    #[arg(long)]
    resource: Option<String>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 3599)]
    token_lifetime: i64,
    /// Fault injection at start, as JSON (also settable at run time: PUT /admin/faults).
    #[arg(long)]
    faults: Option<String>,
    /// Enforce Key Vault's throttling limit per vault (4,000 transactions per 10 s; beyond it
    /// 429 with Retry-After), unless --faults sets its own `vault_limit`.
    #[arg(long)]
    key_vault_limits: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut opts = Options::new(args.listen, &args.state);
    opts.seed = args.seed;
    opts.resource = args.resource;
    opts.token_lifetime_secs = args.token_lifetime;
    if let Some(f) = args.faults {
        opts.faults = serde_json::from_str::<FaultConfig>(&f)
            .with_context(|| format!("--faults is not a valid fault configuration: {f}"))?;
    }
    if args.key_vault_limits && opts.faults.vault_limit.is_none() {
        opts.faults.vault_limit = Some(devvault::faults::Budget::KEY_VAULT);
    }
    let running = devvault::start(opts)
        .await
        .context("the dev vault could not start")?;
    print_banner(&running.info);
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
    };
    stop.await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

fn print_banner(info: &devvault::ReadyInfo) {
    let ca = info.ca.display();
    let port = info.port;
    println!(
        "kvbridge dev-vault listening on https://{} (tenant {})",
        info.listen, info.tenant
    );
    for (name, url) in &info.vaults {
        let default = if *name == info.default_vault {
            format!("  (default vault; also https://localhost:{port})")
        } else {
            String::new()
        };
        println!("  vault {name:<16} {url}{default}");
    }
    println!("  CA certificate      {ca}");
    println!("  trust it:           export SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca} NODE_EXTRA_CA_CERTS={ca}");
    println!("                      (kvbridge: --ca-file {ca}; curl: --cacert {ca})");
    println!("  cloud env file      {}  (SecretProviderClass cloudEnvFileName / provider --cloud-env-file)", info.cloud_env_file.display());
    println!("  Entra authority     https://localhost:{port}  (token: https://localhost:{port}/{}/oauth2/v2.0/token)", info.tenant);
    println!("  get a token:        curl --cacert {ca} -d grant_type=client_credentials -d client_id={} \\", devvault::seed::DEFAULT_CLIENT_ID);
    println!(
        "                        -d client_secret=<secret from the seed; built-in: {}> \\",
        devvault::seed::DEFAULT_CLIENT_SECRET
    );
    println!("                        -d scope=https://vault.azure.net/.default https://localhost:{port}/{}/oauth2/v2.0/token", info.tenant);
    println!(
        "  mount from it:      AZURE_CLIENT_ID={} AZURE_CLIENT_SECRET={} kvbridge mount --class <class.yaml> --target <dir> --vault-url https://localhost:{port}/ --ca-file {ca} --authority-host https://localhost:{port}",
        devvault::seed::DEFAULT_CLIENT_ID,
        devvault::seed::DEFAULT_CLIENT_SECRET
    );
    println!("  AAD Pod Identity:   NMI host token endpoint https://localhost:{port}/host/token/ (seed: podIdentities)");
    println!("  admin:              https://localhost:{port}/admin/counters  https://localhost:{port}/admin/faults");
    println!("ready");
}

/// A dev vault started inside another command (`kvbridge mount --dev-vault SEED`): what a
/// mount needs from it.
pub struct Embedded {
    running: devvault::Running,
    /// Its cloud (authority, `NAME.localhost:PORT` vault names, resource).
    pub cloud: Cloud,
    pub ca: PathBuf,
    /// Its origin: Entra ID, IMDS and NMI stand-ins.
    pub url: String,
    /// The built-in service principal.
    pub client_id: &'static str,
    pub client_secret: &'static str,
}

impl Embedded {
    pub async fn start(seed: &Path, state: &Path) -> anyhow::Result<Embedded> {
        let mut opts = Options::new("127.0.0.1:0".parse()?, state);
        opts.seed = Some(seed.to_path_buf());
        let running = devvault::start(opts)
            .await
            .context("the embedded dev vault could not start")?;
        eprintln!(
            "embedded dev vault on {} (state {}, CA {})",
            running.info.url,
            state.display(),
            running.info.ca.display()
        );
        let cloud = Cloud::from_env_file(&running.info.cloud_env_file)
            .context("reading the embedded dev vault's cloud.json")?;
        Ok(Embedded {
            cloud,
            ca: running.info.ca.clone(),
            url: running.info.url.clone(),
            client_id: devvault::seed::DEFAULT_CLIENT_ID,
            client_secret: devvault::seed::DEFAULT_CLIENT_SECRET,
            running,
        })
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }
}
