//! Shared by the webhook tests: the `kvbridge` binary, the repository root, the control plane
//! with kvbridge's CRDs, the dev vault, a child process killed on drop, an openssl serving
//! certificate, `kvbridge webhook` started with it, and a stored container run as kubelet would.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::{EnvVar, PodSpec, Secret, Volume};
use testenv::vault::DevVaultProcess;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The control plane with kvbridge's CRDs installed and a client, or `None` (skipped).
pub async fn cluster() -> Option<(&'static testenv::ControlPlane, kube::Client)> {
    let cp = testenv::control_plane().await?;
    let client = cp.client().await.expect("client");
    cp.install_crds(&client, &repo().join("deploy/helm/kvbridge/files/crds"))
        .await
        .expect("CRDs");
    Some((cp, client))
}

/// `kvbridge dev-vault` seeded from `seed`, its state and log in `dir`.
pub fn dev_vault(dir: &Path, seed: &Path) -> DevVaultProcess {
    DevVaultProcess::start(
        Path::new(bin()),
        &dir.join("vault"),
        seed,
        &dir.join("vault.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `program` with a clean environment (PATH only) and the container variables `env` set as
/// kubelet sets them: values as they are, `secretKeyRef`s read from `secret` (whose name they
/// must give when `secret_name` is given).
pub fn kubelet_command(
    program: &Path,
    env: &[EnvVar],
    secret: &Secret,
    secret_name: Option<&str>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for e in env {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let r = from.secret_key_ref.as_ref().unwrap();
                if let Some(name) = secret_name {
                    assert_eq!(r.name, name);
                }
                String::from_utf8(secret.data.as_ref().unwrap()[&r.key].0.clone()).unwrap()
            }
            _ => panic!("{e:?}"),
        };
        cmd.env(&e.name, value);
    }
    cmd
}

/// The volume `name` of the pod spec `spec` (panics when there is none).
pub fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    let volumes = spec.volumes.as_ref().unwrap();
    volumes.iter().find(|v| v.name == name).unwrap()
}

/// Runs `cmd`, asserting it succeeded (its stderr in the message).
pub fn succeeded(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Spawns `cmd` (a `kvbridge webhook`) without POD_NAMESPACE, its stderr inherited; returns it
/// and the first line of its stdout (the banner).
pub fn spawn_webhook(mut cmd: Command) -> (Killed, String) {
    let mut child = cmd
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
    (killed, line)
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

/// [`start_webhook`] with a fresh [`serving_cert`] in `dir` and no registry lookup; also
/// returns the certificate (the caBundle to register).
pub fn start_webhook_without_lookup(
    cp: &testenv::ControlPlane,
    vault: &DevVaultProcess,
    dir: &Path,
) -> (Killed, String, PathBuf) {
    let (cert, key) = serving_cert(dir);
    let (webhook, url) = start_webhook(
        cp,
        vault,
        &cert,
        &key,
        &["--no-registry-lookup".to_string()],
    );
    (webhook, url, cert)
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
    let mut cmd = Command::new(bin());
    cmd.args([
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
    .env("KUBECONFIG", cp.kubeconfig());
    let (killed, line) = spawn_webhook(cmd);
    let url = line
        .trim()
        .strip_prefix("kvbridge webhook listening on ")
        .unwrap_or_else(|| panic!("banner: {line:?}"))
        .to_string();
    (killed, url)
}
