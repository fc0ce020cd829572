//! `kvbridge mount` as users run it: a real process, real files, against the dev vault
//! (embedded with --dev-vault, or a separate `kvbridge dev-vault` process).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testenv::vault::DevVaultProcess;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET")
        .env_remove("AZURE_AUTHORITY_HOST");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run kvbridge")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn openssl(args: &[&str], input: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .arg("-in")
        .arg(input)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn mount_example_class_from_embedded_dev_vault() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("mnt");
    let state = dir.path().join("state");
    let seed = repo().join("examples/dev-vault.yaml");
    let class = repo().join("examples/secretproviderclass.yaml");
    let out = run(
        &[
            "mount",
            "--dev-vault",
            seed.to_str().unwrap(),
            "--dev-vault-state",
            state.to_str().unwrap(),
            "--class",
            class.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("mounted 9 objects"), "{stdout}");
    assert!(
        !stdout.contains("correct-horse"),
        "values are never printed"
    );

    assert_eq!(
        read(&target.join("db-password")),
        "correct-horse-battery-staple"
    );
    let mode = std::fs::metadata(target.join("db-password"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let cfg: serde_json::Value = serde_json::from_str(&read(&target.join("config.json"))).unwrap();
    assert_eq!(cfg["db_user"], "app");
    assert_eq!(
        std::fs::metadata(target.join("config.json"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o644
    );
    assert!(
        std::fs::symlink_metadata(target.join("db-password"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "kubelet-style layout"
    );
    assert!(target.join("..data").exists());

    // The CA secret is a CA certificate; the TLS bundle's chain verifies against it.
    let ca = target.join("ca.crt");
    assert!(openssl(&["x509", "-noout", "-text"], &ca).contains("CA:TRUE"));
    let tls = read(&target.join("tls.pem"));
    assert!(tls.starts_with("-----BEGIN PRIVATE KEY-----"), "key first");
    assert_eq!(tls.matches("BEGIN CERTIFICATE").count(), 2, "leaf then CA");
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca)
        .arg(target.join("tls.crt"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // The PFX (objectEncoding base64) is binary and opens with an empty password.
    let pfx_text = Command::new("openssl")
        .args(["pkcs12", "-passin", "pass:", "-nodes", "-in"])
        .arg(target.join("tls.pfx"))
        .output()
        .unwrap();
    assert!(
        pfx_text.status.success(),
        "{}",
        String::from_utf8_lossy(&pfx_text.stderr)
    );
    // Keys are PKIX public keys.
    for k in ["signing-rsa.pub", "signing-ec.pub"] {
        assert!(read(&target.join(k)).starts_with("-----BEGIN PUBLIC KEY-----"));
        openssl(&["pkey", "-pubin", "-noout"], &target.join(k));
    }
    // Version history: exactly 2 files, newest first.
    assert_eq!(read(&target.join("rotating-token/0")), "token-v3");
    assert_eq!(read(&target.join("rotating-token/1")), "token-v2");
    assert!(!target.join("rotating-token/2").exists());
}

#[test]
fn bad_class_and_missing_object_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("mnt");
    let state = dir.path().join("state");
    let seed = repo().join("examples/dev-vault.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "keyvaultName: kvbridge-demo\ntenantID: t\nobjects: |\n  array:\n    - |\n      objectName: db-password\n      objectType: password\n").unwrap();
    let out = run(
        &[
            "mount",
            "--dev-vault",
            seed.to_str().unwrap(),
            "--dev-vault-state",
            state.to_str().unwrap(),
            "--class",
            bad.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("objectType") && err.contains("db-password"),
        "{err}"
    );
    assert!(!target.exists() || std::fs::read_dir(&target).unwrap().next().is_none());

    let missing = dir.path().join("missing.yaml");
    std::fs::write(&missing, "keyvaultName: kvbridge-demo\ntenantID: 6d2b6f1e-0e4c-4a8e-9a57-6b7662726467\nobjects: |\n  array:\n    - |\n      objectName: db-password\n      objectType: secret\n    - |\n      objectName: no-such-secret\n      objectType: secret\n").unwrap();
    let out = run(
        &[
            "mount",
            "--dev-vault",
            seed.to_str().unwrap(),
            "--dev-vault-state",
            state.to_str().unwrap(),
            "--class",
            missing.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-secret") && err.contains("SecretNotFound"),
        "{err}"
    );
    assert!(!target.join("db-password").exists(), "no partial mount");
}

/// `kvbridge dev-vault` with the examples' seed, its output in `STATE.log`.
fn dev_vault(state: &Path) -> DevVaultProcess {
    DevVaultProcess::start(
        Path::new(bin()),
        state,
        &repo().join("examples/dev-vault.yaml"),
        &state.with_extension("log"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn watch_follows_rotation_and_keeps_files_when_the_vault_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(&dir.path().join("state"));
    let target = dir.path().join("mnt");
    let class = dir.path().join("class.yaml");
    std::fs::write(&class, "keyvaultName: kvbridge-demo\ntenantID: 6d2b6f1e-0e4c-4a8e-9a57-6b7662726467\nobjects: |\n  array:\n    - |\n      objectName: db-password\n      objectType: secret\n").unwrap();
    let mut watcher = Command::new(bin())
        .args(["mount", "--watch", "--interval", "300ms", "--class"])
        .arg(&class)
        .arg("--target")
        .arg(&target)
        .args([
            "--vault-url",
            &format!("https://kvbridge-demo.localhost:{}", vault.port),
        ])
        .arg("--ca-file")
        .arg(&vault.ca)
        .args([
            "--authority-host",
            &format!("https://localhost:{}", vault.port),
        ])
        .env("AZURE_CLIENT_ID", "kvbridge-dev")
        .env("AZURE_CLIENT_SECRET", "kvbridge-dev-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let file = target.join("db-password");
    let wait_for = |want: &str| {
        let t0 = Instant::now();
        loop {
            if std::fs::read_to_string(&file)
                .map(|s| s == want)
                .unwrap_or(false)
            {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "file never became {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // stderr collected as it comes, to see when the outage is reported
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        let mut stderr = watcher.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    wait_for("correct-horse-battery-staple");
    vault.set_secret("kvbridge-demo", "db-password", "rotated-value-2");
    wait_for("rotated-value-2");
    drop(vault);
    // Issue 13.9: the first failed refresh is reported (it took ~100 s of client retries with a
    // 2 s interval); generous bound, the refresh deadline is 5 s here.
    let t0 = Instant::now();
    while !log.lock().unwrap().contains("refresh failed") {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no warning 30 s into the outage: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("outage reported after {:?}", t0.elapsed());
    assert_eq!(
        read(&file),
        "rotated-value-2",
        "last good payload kept while the vault is down"
    );
    assert!(
        watcher.try_wait().unwrap().is_none(),
        "watch keeps running through vault failures"
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(
        !log.contains("rotated-value-2") && !log.contains("correct-horse"),
        "no values in logs: {log}"
    );
}
