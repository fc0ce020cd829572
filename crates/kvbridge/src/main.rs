//! `kvbridge`: Azure Key Vault secrets, keys and certificates for Kubernetes workloads.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kvbridge",
    version,
    about = "Azure Key Vault secrets, keys and certificates for Kubernetes workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Key Vault + Entra ID compatible HTTPS dev server (local development and tests).
    DevVault(cmd::dev_vault::Args),
    /// Write a SecretProviderClass's Key Vault objects into a directory, once or kept in sync.
    Mount(cmd::mount::Args),
    /// Serve the Secrets Store CSI Driver provider API (drop-in for the Azure provider).
    Provider(cmd::provider::Args),
    /// Sync Key Vault objects named by AzureKeyVaultSecret resources (akv2k8s-compatible) into
    /// Kubernetes Secrets and ConfigMaps.
    Controller(cmd::controller::Args),
    /// The azure/kv FlexVolume driver: init | mount DIR JSON | unmount DIR.
    Flexvolume(cmd::flexvolume::Args),
    /// Resolve `<name>@azurekeyvault[?query]` environment placeholders, then exec the command.
    Env(cmd::env::Args),
    /// Serve the mutating admission webhook that runs containers through `kvbridge env`.
    Webhook(cmd::webhook::Args),
    /// Copy this binary to a path (the webhook's init container runs it).
    CopySelf(cmd::copy_self::Args),
    /// Write a CA trust bundle (system bundle + Key Vault CAs; PEM and PKCS#12) into a directory.
    Trust(cmd::trust::Args),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KVBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The command line, with the multi-call rule applied: installed as `<plugin dir>/azure~kv/kv`
/// (`kvbridge flexvolume --install`), kubelet runs `kv init|mount|unmount ...`, which is
/// `kvbridge flexvolume init|mount|unmount ...`.
fn args() -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n == cmd::flexvolume::DRIVER_NAME)
        .unwrap_or(false);
    if invoked_as {
        args.insert(1, "flexvolume".into());
    }
    args
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_from(args());
    // kubelet parses a FlexVolume driver's stdout and stderr together as one JSON status.
    let quiet = matches!(&cli.command, Command::Flexvolume(a) if a.is_driver_call());
    if !quiet {
        init_tracing();
    }
    // One TLS provider for the whole process (ring), installed before any TLS use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match cli.command {
        // Its own runtime, shut down before the exec.
        Command::Env(args) => return cmd::env::run(args),
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) if quiet => {
            let status = provider::flexvolume::Status::failure(format!(
                "cannot start the async runtime: {e}"
            ));
            println!("{}", status.to_json());
            return std::process::ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("kvbridge: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli {
            Command::DevVault(args) => cmd::dev_vault::run(args).await,
            Command::Mount(args) => cmd::mount::run(args).await,
            Command::Provider(args) => cmd::provider::run(args).await,
            Command::Flexvolume(args) => cmd::flexvolume::run(args).await,
            Command::Webhook(args) => cmd::webhook::run(args).await,
            Command::CopySelf(args) => cmd::copy_self::run(args),
            Command::Trust(args) => cmd::trust::run(args).await,
            Command::Controller(args) => cmd::controller::run(args).await,
            // Handled before this runtime exists.
            Command::Env(_) => Err(anyhow::anyhow!("kvbridge env runs without this runtime")),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if !quiet {
                eprintln!("kvbridge: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
