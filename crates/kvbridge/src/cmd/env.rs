//! `kvbridge env -- CMD ARGS...`: every `<akvs-name>@azurekeyvault[?query]` placeholder in the
//! environment resolved from Key Vault, then `CMD` `exec`ed in place of this process (same pid,
//! so signals and the exit status are the program's own) with the values in its environment
//! only. Nothing is started when any placeholder fails; values are never logged.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use injector::env::{EnvOptions, Resolved};
use injector::spec::EnvSpec;

#[derive(clap::Args)]
pub struct Args {
    /// Read the references from this JSON file instead of $KVBRIDGE_ENV_SPEC (which the webhook
    /// sets).
    #[arg(long, value_name = "FILE")]
    spec: Option<PathBuf>,
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
    /// The program and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<OsString>,
}

/// Exit status when the placeholders cannot be resolved (the program was not started).
const EXIT_UNRESOLVED: u8 = 1;
/// Exit statuses when the program cannot be executed (as POSIX shells).
const EXIT_NOT_FOUND: u8 = 127;
const EXIT_NOT_EXECUTABLE: u8 = 126;

async fn resolve(args: &Args) -> anyhow::Result<Resolved> {
    let spec = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --spec {}", path.display()))?;
            Some(EnvSpec::parse(&text).with_context(|| format!("--spec {}", path.display()))?)
        }
        None => None,
    };
    let options = EnvOptions {
        ca_file: args.ca_file.clone(),
        imds_endpoint: args.imds_endpoint.clone(),
        deadline: args.deadline,
        spec,
        ..EnvOptions::default()
    };
    let resolved = injector::env::resolve(std::env::vars_os().collect(), &options).await?;
    tracing::info!(
        injected = resolved.injected.len(),
        reads = resolved.reads,
        variables = ?resolved.injected,
        "resolved Key Vault placeholders"
    );
    Ok(resolved)
}

/// Resolves on a short-lived runtime, shuts it down, then replaces this process.
pub fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvbridge env: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_UNRESOLVED);
        }
    };
    let resolved = runtime.block_on(resolve(&args));
    // No runtime threads left behind while exec replaces the process image.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let resolved = match resolved {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kvbridge env: {e:#}");
            return ExitCode::from(EXIT_UNRESOLVED);
        }
    };
    let Some((program, rest)) = args.command.split_first() else {
        eprintln!("kvbridge env: no command given (kvbridge env -- CMD ARGS...)");
        return ExitCode::from(EXIT_UNRESOLVED);
    };
    let err = injector::env::exec(program, rest, resolved.env);
    eprintln!(
        "kvbridge env: cannot execute {}: {err}",
        program.to_string_lossy()
    );
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_NOT_EXECUTABLE
    })
}
