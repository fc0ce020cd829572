//! What the provider benchmarks share: the release `kvbridge` binary, a `kvbridge provider`
//! child on a unix socket, classes of N objects, percentiles.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// `$KVBRIDGE_BIN` when set (a release binary built beforehand), else
/// `cargo build --release -p kvbridge` (a no-op when fresh; a stale binary would lack the
/// provider) next to this benchmark.
pub fn kvbridge_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("KVBRIDGE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("bench path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "kvbridge"])
        .status()
        .expect("cargo build");
    assert!(status.success());
    profile_dir.join("kvbridge")
}

/// `kvbridge provider` on `socket`, trusting the dev vault (`ca`) and defaulting to its cloud
/// (`cloud_env_file`); no health or metrics ports, no client-side rate limit (the benchmarks
/// measure the provider); `extra` flags after those, `log` as `KVBRIDGE_LOG`, stderr dropped.
pub fn spawn_provider(
    bin: &Path,
    socket: &Path,
    cloud_env_file: &Path,
    ca: &Path,
    extra: &[&str],
    log: &str,
) -> Child {
    let _ = std::fs::remove_file(socket);
    Command::new(bin)
        .args([
            "provider",
            "--healthz-port",
            "0",
            "--metrics-port",
            "0",
            "--rate-limit",
            "0",
        ])
        .arg("--endpoint")
        .arg(format!("unix://{}", socket.display()))
        .arg("--cloud-env-file")
        .arg(cloud_env_file)
        .arg("--ca-file")
        .arg(ca)
        .args(extra)
        .env("KVBRIDGE_LOG", log)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn kvbridge provider")
}

pub async fn wait_socket(socket: &Path) {
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("provider socket never came up");
}

/// A class's `objects` with `n` secrets named `s-0` .. `s-{names - 1}` (repeating).
pub fn objects_n(n: usize, names: usize) -> String {
    let items: Vec<String> = (0..n)
        .map(|i| format!("objectName: s-{}\nobjectType: secret", i % names.max(1)))
        .collect();
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    super::common::objects(&refs)
}

pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
