//! `kvbridge flexvolume init|mount DIR JSON|unmount DIR`: the `azure/kv` FlexVolume driver.
//! kubelet reads the JSON status on stdout; node settings come from the environment
//! (KVBRIDGE_CLOUD_ENV_FILE, KVBRIDGE_CA_FILE, KVBRIDGE_IMDS_ENDPOINT, KVBRIDGE_FLEXVOLUME_TMPFS).
//!
//! `kvbridge flexvolume --install PLUGIN_DIR [--wait]` is the installer the Helm chart's
//! DaemonSet runs (the image has no shell and no `cp`): it copies this executable to
//! `PLUGIN_DIR/azure~kv/kv`, where kubelet looks for the driver. Run under the name `kv`, the
//! binary is the driver (see `main.rs`), so one static executable serves both.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The directory kubelet expects for the driver `azure/kv` (vendor `azure`, name `kv`).
pub const DRIVER_DIR: &str = "azure~kv";
/// The executable's name inside [`DRIVER_DIR`].
pub const DRIVER_NAME: &str = "kv";

#[derive(clap::Args)]
pub struct Args {
    /// Install this executable as PLUGIN_DIR/azure~kv/kv (kubelet's FlexVolume plugin
    /// directory, e.g. /usr/libexec/kubernetes/kubelet-plugins/volume/exec) and exit.
    #[arg(long, value_name = "PLUGIN_DIR", conflicts_with = "call")]
    install: Option<PathBuf>,
    /// With --install: keep running after installing until SIGTERM (a DaemonSet's container).
    #[arg(long, requires = "install")]
    wait: bool,
    /// init | mount <mount dir> <json options> | unmount <mount dir>
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    call: Vec<String>,
}

impl Args {
    /// A call from kubelet, which reads stdout and stderr together (`CombinedOutput`) as one
    /// JSON document: nothing but the status may be printed, no logs, no error line.
    pub fn is_driver_call(&self) -> bool {
        self.install.is_none()
    }
}

/// Prints the status and returns an error (exit 1) unless it is Success.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(plugin_dir) = args.install {
        let installed = tokio::task::spawn_blocking(move || install(&plugin_dir))
            .await
            .context("the install task failed")??;
        tracing::info!(path = %installed.display(), "installed the azure/kv FlexVolume driver");
        if args.wait {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        return Ok(());
    }
    let status =
        provider::flexvolume::run(&args.call, &provider::flexvolume::FlexEnv::from_env()).await;
    println!("{}", status.to_json());
    if status.exit_code() != 0 {
        anyhow::bail!("{}", status.message.as_deref().unwrap_or(status.status));
    }
    Ok(())
}

/// Copies the running executable to `plugin_dir/azure~kv/kv`: written beside the final name,
/// made executable and synced, then renamed over it, so kubelet never runs a half-written file
/// (a running driver keeps its old inode). Returns the installed path.
fn install(plugin_dir: &Path) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let dir = plugin_dir.join(DRIVER_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let target = dir.join(DRIVER_NAME);
    let tmp = dir.join(format!(".{DRIVER_NAME}.install-{}", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mut src =
            std::fs::File::open(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
        let mut dst = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o755)
                .open(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?
        };
        {
            use std::os::unix::fs::PermissionsExt as _;
            // Whatever the umask: kubelet must be able to execute it.
            dst.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        }
        std::io::copy(&mut src, &mut dst)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        dst.flush()?;
        dst.sync_all()
            .with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, &target)
            .with_context(|| format!("cannot rename to {}", target.display()))?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| target)
}
