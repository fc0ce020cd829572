//! `kvbridge dev-vault` as a separate process, used the way its banner tells users to
//! (issue 12.6), and how `kvbridge mount` reports Key Vault errors (issue 13.9).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Vault {
    child: Child,
    banner: Vec<String>,
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kvbridge dev-vault` and reads its banner up to `ready`.
fn dev_vault(state: &Path) -> Vault {
    let mut child = Command::new(bin())
        .args(["dev-vault", "--listen", "127.0.0.1:0", "--state"])
        .arg(state)
        .arg("--seed")
        .arg(repo().join("examples/dev-vault.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let done = line == "ready";
            let _ = tx.send(line);
            if done {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    let t0 = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60).saturating_sub(t0.elapsed()))
            .expect("dev vault prints its banner");
        if line == "ready" {
            break;
        }
        banner.push(line);
    }
    Vault { child, banner }
}

/// The banner's "mount from it" line, with the placeholders filled in: (env, args).
fn printed_mount_command(
    v: &Vault,
    class: &Path,
    target: &Path,
) -> (Vec<(String, String)>, Vec<String>) {
    let line = v
        .banner
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("mount from it:"))
        .unwrap_or_else(|| panic!("no mount instructions in {:#?}", v.banner));
    let mut env = Vec::new();
    let mut args = Vec::new();
    let mut words = line.split_whitespace();
    for w in words.by_ref() {
        if w == "kvbridge" {
            break;
        }
        let (k, v) = w.split_once('=').expect("VAR=value before the command");
        env.push((k.to_string(), v.to_string()));
    }
    for w in words {
        args.push(match w {
            "<class.yaml>" => class.display().to_string(),
            "<dir>" => target.display().to_string(),
            other => other.to_string(),
        });
    }
    (env, args)
}

fn kvbridge(env: &[(String, String)], args: &[String]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET")
        .env_remove("AZURE_AUTHORITY_HOST")
        .env_remove("AZURE_TENANT_ID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kvbridge")
}

#[test]
fn mount_following_the_dev_vault_banner_works_with_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(&dir.path().join("state"));
    let target = dir.path().join("mnt");
    let class = dir.path().join("class.yaml");
    std::fs::write(
        &class,
        "keyvaultName: kvbridge-demo\ntenantID: 6d2b6f1e-0e4c-4a8e-9a57-6b7662726467\nobjects: |\n  array:\n    - |\n      objectName: db-password\n      objectType: secret\n",
    )
    .unwrap();
    let (env, args) = printed_mount_command(&vault, &class, &target);
    assert!(
        args.iter().any(|a| a.starts_with("https://localhost:")),
        "the banner's command uses https://localhost:PORT: {args:?}"
    );
    let out = kvbridge(&env, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}\n{stderr}");
    assert!(!stderr.contains("verify_challenge_resource"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(target.join("db-password")).unwrap(),
        "correct-horse-battery-staple"
    );
}

#[test]
fn key_vault_errors_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(&dir.path().join("state"));
    let target = dir.path().join("mnt");
    let class = dir.path().join("class.yaml");
    std::fs::write(
        &class,
        "keyvaultName: kvbridge-demo\ntenantID: 6d2b6f1e-0e4c-4a8e-9a57-6b7662726467\nobjects: |\n  array:\n    - |\n      objectName: no-such-secret\n      objectType: secret\n",
    )
    .unwrap();
    let (env, args) = printed_mount_command(&vault, &class, &target);
    let out = kvbridge(&env, &args);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("kvbridge: "), "{stderr}");
    for needle in ["not found (", "SecretNotFound", "no-such-secret' (latest)"] {
        assert_eq!(
            last.matches(needle).count(),
            1,
            "'{needle}' must appear once in: {last}"
        );
    }
}
