//! `kvbridge mount`: a SecretProviderClass's objects written to a directory, once or kept in
//! sync (`--watch`), optionally from an embedded dev vault (`--dev-vault SEED`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use keyvault::{ClientOptions, KeyVaultClient, Transport};
use mount::cloud_env::CloudEnvFiles;
use mount::identity::{Fallback, Identity, LocalEndpoints, Sources};
use mount::target::CloudConfig;
use mount::writer::AtomicWriter;
use render::render::RenderOptions;

use crate::cmd::dev_vault::Embedded;

#[derive(clap::Args)]
pub struct Args {
    /// SecretProviderClass manifest (provider azure), or a YAML map of just its parameters.
    #[arg(long)]
    class: PathBuf,
    /// Directory to write the files into (created if missing; kubelet-style atomic layout).
    #[arg(long)]
    target: PathBuf,
    /// Keep the directory in sync: re-read the vault every --interval (rotation).
    #[arg(long)]
    watch: bool,
    /// Re-read interval with --watch, e.g. 30s, 2m, 1h.
    #[arg(long, default_value = "2m", value_parser = crate::cmd::parse_duration)]
    interval: Duration,
    /// Vault URL to use instead of the one derived from keyvaultName and the cloud.
    #[arg(long)]
    vault_url: Option<String>,
    /// PEM file of CA certificates to trust for the vault and token endpoints.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Entra authority host (default: from the class's cloud; env AZURE_AUTHORITY_HOST).
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    authority_host: Option<String>,
    /// Managed identity endpoint (default: IMDS at 169.254.169.254).
    #[arg(long)]
    imds_endpoint: Option<String>,
    /// Start an embedded dev vault seeded from this file and mount from it.
    #[arg(long, value_name = "SEED")]
    dev_vault: Option<PathBuf>,
    /// State directory of the embedded dev vault.
    #[arg(long, default_value = ".dev-vault")]
    dev_vault_state: PathBuf,
    /// Default file mode (octal) for objects without filePermission.
    #[arg(long, default_value = "0644", value_parser = parse_mode)]
    permission: u32,
    /// Order PEM chains leaf -> intermediates -> root (the Azure provider's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    construct_pem_chain: bool,
    /// Also write <name>.crt and <name>.key for certificate secrets.
    #[arg(long)]
    write_cert_and_key_in_separate_files: bool,
    /// System CA bundle that objects with objectFormat trust-bundle or truststore start from:
    /// auto (the first distribution path that exists), none, or a PEM file.
    #[arg(long, default_value = "auto")]
    system_bundle: mount::trust::SystemBundle,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    render::params::parse_octal_mode(s)
}

/// Time a `--watch` refresh may take, retries included: the interval, within 5 s..=120 s.
fn refresh_deadline(interval: Duration) -> Duration {
    interval.clamp(Duration::from_secs(5), Duration::from_secs(120))
}

/// Object versions, (path, mode, size) per file, and the writer's outcome of one mount.
type Mounted = (
    Vec<render::render::ObjectVersion>,
    Vec<(String, u32, usize)>,
    mount::writer::WriteOutcome,
);

/// Fetch and render (nothing is written when that fails), then publish; the writer's error says
/// what state the target is in.
async fn mount_once(
    source: &mount::VaultSource,
    objects: &[render::params::ObjectSpec],
    render_opts: &RenderOptions,
    writer: &AtomicWriter,
    vault_url: &str,
) -> anyhow::Result<Mounted> {
    let rendered = mount::mount_files(source, objects, render_opts, mount::DEFAULT_CONCURRENCY)
        .await
        .with_context(|| format!("mount from {vault_url} failed; nothing was written"))?;
    let summary: Vec<(String, u32, usize)> = rendered
        .files
        .iter()
        .map(|f| (f.path.clone(), f.mode, f.contents.len()))
        .collect();
    let render::render::Rendered { files, versions } = rendered;
    let outcome = writer
        .write_async(files)
        .await
        .with_context(|| format!("writing into {} failed", writer.target().display()))?;
    for w in &outcome.warnings {
        tracing::warn!(target_dir = %writer.target().display(), "{w}");
    }
    Ok((versions, summary, outcome))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.watch && args.interval.is_zero() {
        bail!("--interval must be longer than 0 with --watch");
    }
    let text = std::fs::read_to_string(&args.class)
        .with_context(|| format!("cannot read --class {}", args.class.display()))?;
    let class = render::manifest::parse_class(&text).with_context(|| {
        format!(
            "{} is not a usable SecretProviderClass",
            args.class.display()
        )
    })?;
    let params = class.parameters;
    let class_dir = args
        .class
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();

    // The embedded dev vault, when asked for, lives as long as this command.
    let mut dev = None;
    if let Some(seed) = &args.dev_vault {
        dev = Some(Embedded::start(seed, &args.dev_vault_state).await?);
    }
    // What the user configured -> cloud, vault URL, identity (the same layer as the provider).
    let mut clouds = CloudConfig::new(CloudEnvFiles::anywhere()).with_base_dir(&class_dir);
    clouds.vault_url = args.vault_url.clone();
    clouds.authority_host = args.authority_host.clone();
    let mut ca_file = args.ca_file.clone();
    let mut imds_endpoint = args.imds_endpoint.clone();
    let mut fallback = Fallback::Ambient {
        managed_identity: false,
    };
    if let Some(d) = &dev {
        // Every class reads from the embedded dev vault, whatever cloud it names; its built-in
        // client is the identity unless the environment names one.
        clouds.override_cloud = Some(d.cloud.clone());
        ca_file.get_or_insert_with(|| d.ca.clone());
        imds_endpoint.get_or_insert_with(|| d.url.clone());
        fallback = Fallback::Fixed {
            client_id: d.client_id.to_string(),
            secret: d.client_secret.to_string().into(),
        };
    }
    let target = clouds.resolve_async(&params).await?;
    let no_material = BTreeMap::new();
    let env = |k: &str| std::env::var(k).ok();
    let identity = Identity::select(
        &params,
        &Sources {
            attributes: &no_material,
            secrets: &no_material,
            env: &env,
            fallback,
        },
    )?;
    tracing::debug!(identity = %identity.describe(), vault = %target.vault_url, "mount");
    let vault_url = target.vault_url.clone();
    let options = ClientOptions {
        ca_file,
        ..ClientOptions::default()
    };
    // One transport (connection pool, CA trust, retries) for the vault and the token endpoints.
    let transport = Transport::new(&options).context("cannot build the HTTPS client")?;
    let endpoints = LocalEndpoints {
        imds: imds_endpoint,
        nmi: None,
    };
    let credential = identity.credential(&target.cloud, &endpoints, &transport)?;
    let client = KeyVaultClient::with_transport(credential.clone(), transport);
    let source = mount::VaultSource::new(client, vault_url.clone());
    // --watch: a refresh gives up (and warns, keeping the last good files) within about one
    // interval instead of retrying for minutes; the next interval is the next retry.
    let refresh_source = if args.watch {
        let refresh_options = ClientOptions {
            deadline: refresh_deadline(args.interval),
            ..options.clone()
        };
        let transport =
            Transport::new(&refresh_options).context("cannot build the HTTPS client")?;
        mount::VaultSource::new(
            KeyVaultClient::with_transport(credential, transport),
            vault_url.clone(),
        )
    } else {
        source.clone()
    };
    let system_trust = if params.objects.iter().any(|o| o.format.is_trust()) {
        let loaded = args.system_bundle.load()?;
        if let Some((path, bytes)) = &loaded {
            tracing::info!(path = %path.display(), bytes = bytes.len(), "system CA bundle for the trust objects");
        }
        loaded.map(|(_, bytes)| std::sync::Arc::new(bytes))
    } else {
        None
    };
    let render_opts = RenderOptions {
        construct_pem_chain: args.construct_pem_chain,
        write_cert_and_key_in_separate_files: args.write_cert_and_key_in_separate_files,
        default_file_mode: args.permission,
        system_trust,
    };
    std::fs::create_dir_all(&args.target)
        .with_context(|| format!("cannot create --target {}", args.target.display()))?;
    let writer = AtomicWriter::new(&args.target);
    let cleaned = writer
        .cleanup_async()
        .await
        .context("cleaning up the target directory")?;
    for w in &cleaned.warnings {
        tracing::warn!(target_dir = %args.target.display(), "{w}");
    }

    let (versions, summary, _) =
        mount_once(&source, &params.objects, &render_opts, &writer, &vault_url).await?;
    println!(
        "mounted {} objects ({} files) from {} into {}",
        params.objects.len(),
        summary.len(),
        vault_url,
        args.target.display()
    );
    for v in &versions {
        println!("  {:<40} {}", v.id, v.version);
    }
    for (path, mode, len) in &summary {
        println!(
            "  {}  {:o}  {} bytes",
            args.target.join(path).display(),
            mode,
            len
        );
    }
    if !args.watch {
        if let Some(d) = dev {
            d.stop().await;
        }
        return Ok(());
    }
    let mut last: Vec<(String, String)> = versions
        .iter()
        .map(|v| (v.id.clone(), v.version.clone()))
        .collect();
    let mut failures = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(args.interval) => {}
        }
        let refreshed = mount_once(
            &refresh_source,
            &params.objects,
            &render_opts,
            &writer,
            &vault_url,
        )
        .await;
        match refreshed {
            Ok((versions, _, outcome)) => {
                let now: Vec<(String, String)> = versions
                    .iter()
                    .map(|v| (v.id.clone(), v.version.clone()))
                    .collect();
                if outcome.changed {
                    for (id, version) in now.iter().filter(|x| !last.contains(x)) {
                        tracing::info!(object = %id, %version, "object changed; directory updated");
                    }
                }
                last = now;
                if failures > 0 {
                    tracing::info!(failures, "refresh succeeded again");
                    failures = 0;
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %format!("{e:#}"), failures, "refresh failed; keeping the last good files")
            }
        }
    }
    if let Some(d) = dev {
        d.stop().await;
    }
    Ok(())
}
