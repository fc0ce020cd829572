//! `kvbridge trust --out DIR`: the pod's CA trust bundle (the image's system bundle plus the
//! Key Vault CAs the spec names) written as `ca-certificates.crt` (PEM) and `truststore.p12`
//! (PKCS#12 for Java). The webhook runs it as an init step in the application's image; the
//! spec comes from $KVBRIDGE_TRUST_SPEC (or --spec FILE), the identity from the environment
//! as for `kvbridge env`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use injector::spec::EnvSpec;
use injector::trust::{TrustOptions, TrustRunError, TRUST_SPEC_ENV};

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write ca-certificates.crt and truststore.p12 into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Read the references from this JSON file instead of $KVBRIDGE_TRUST_SPEC (which the
    /// webhook sets).
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
    /// The system CA bundle to start from: auto (the first of the Debian/Ubuntu/Alpine,
    /// RHEL-family, openSUSE paths that exists; none found is fine), none, or a PEM file.
    #[arg(long, default_value = "auto")]
    system_bundle: mount::trust::SystemBundle,
    /// PEM file of CA certificates to trust for the vault and token endpoints (besides the
    /// system roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Managed identity endpoint (default: IMDS at 169.254.169.254).
    #[arg(long)]
    imds_endpoint: Option<String>,
    /// Time every vault read may take, retries included.
    #[arg(long, default_value = "60s", value_parser = crate::cmd::parse_duration)]
    deadline: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let text = match &args.spec {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --spec {}", path.display()))?,
        None => std::env::var(TRUST_SPEC_ENV).map_err(|_| TrustRunError::NoSpec)?,
    };
    let spec = EnvSpec::parse(&text).context("the trust spec")?;
    let options = TrustOptions {
        ca_file: args.ca_file.clone(),
        imds_endpoint: args.imds_endpoint.clone(),
        deadline: args.deadline,
        system_bundle: args.system_bundle.clone(),
    };
    let env: Vec<_> = std::env::vars_os().collect();
    let built = injector::trust::build(&spec, &env, &options).await?;
    let (pem, p12) = injector::trust::write(&args.out, &built.bundle)?;
    tracing::info!(
        system_bundle = %built.system_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none".into()),
        system_certs = built.bundle.system_certs,
        system_skipped = built.bundle.system_skipped,
        vault_cas = built.bundle.vault_cas,
        reads = built.reads,
        pem_bytes = built.bundle.pem.len(),
        p12_bytes = built.bundle.p12.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "wrote {} and {}",
        pem.display(),
        p12.display()
    );
    Ok(())
}
