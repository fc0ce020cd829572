//! Shared by the webhook tests: the `kvbridge` binary, the repository root, a child process
//! killed on drop, an openssl serving certificate, and `kvbridge webhook` started with it.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use testenv::vault::DevVaultProcess;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A child process, killed and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A self-signed serving certificate for 127.0.0.1 (openssl as an independent tool).
pub fn serving_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    testenv::webhook::openssl_self_signed(&cert, &key, "kvbridge-webhook");
    (cert, key)
}

/// `kvbridge webhook` on a free loopback port serving `cert`/`key`, reading the API server of
/// `cp` and giving `kvbridge env` the dev vault's cloud and CA; returns it and its URL (from its
/// banner).
pub fn start_webhook(
    cp: &testenv::ControlPlane,
    vault: &DevVaultProcess,
    cert: &Path,
    key: &Path,
    extra: &[String],
) -> (Killed, String) {
    let mut child = Command::new(bin())
        .args([
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--image",
            "kvbridge:test",
        ])
        .arg("--tls-cert-file")
        .arg(cert)
        .arg("--tls-key-file")
        .arg(key)
        .args(["--tenant-id", &vault.tenant])
        .arg("--cloud-env-file")
        .arg(&vault.cloud_env_file)
        .arg(format!("--env-arg=--ca-file={}", vault.ca.display()))
        .args(extra)
        .env("KUBECONFIG", cp.kubeconfig())
        .env_remove("POD_NAMESPACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let killed = Killed(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("kvbridge webhook listening on ")
        .unwrap_or_else(|| panic!("banner: {line:?}"))
        .to_string();
    (killed, url)
}
