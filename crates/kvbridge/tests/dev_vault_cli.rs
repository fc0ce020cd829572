//! `kvbridge dev-vault` as a separate process, used the way its banner tells users to
//! (issue 12.6), and how `kvbridge mount` reports Key Vault errors (issue 13.9).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use testenv::vault::{DevVaultProcess, EXAMPLE_CLIENT};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `kvbridge dev-vault` with the examples' seed, its output in `STATE.log`.
fn dev_vault(state: &Path) -> DevVaultProcess {
    let log = state.with_extension("log");
    DevVaultProcess::start(
        Path::new(bin()),
        state,
        &repo().join("examples/dev-vault.yaml"),
        &log,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The banner's "mount from it" line, with the placeholders filled in: (env, args).
fn printed_mount_command(
    v: &DevVaultProcess,
    class: &Path,
    target: &Path,
) -> (Vec<(String, String)>, Vec<String>) {
    let banner = v.banner();
    let line = banner
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("mount from it:"))
        .unwrap_or_else(|| panic!("no mount instructions in {banner:#?}"));
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

/// `kill -9` while the dev vault is saving (a stream of writes): the next start finds a
/// consistent state and leaves no temporary copy of it (secret values included) behind.
#[test]
fn kill_9_during_saves_leaves_no_temp_copies() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let vault = dev_vault(&state);
    let port = vault.port;
    let ca = vault.ca.clone();
    let token = vault.token(EXAMPLE_CLIENT.0, EXAMPLE_CLIENT.1);
    let auth = format!("Authorization: Bearer {token}");
    // Concurrent writers: one curl process issuing many PUTs over one connection each.
    let mut writers = Vec::new();
    for w in 0..3 {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-o", "/dev/null", "--cacert"]).arg(&ca);
        for i in 0..200 {
            if i > 0 {
                cmd.arg("--next")
                    .args(["-o", "/dev/null", "--cacert"])
                    .arg(&ca);
            }
            cmd.args([
                "-X",
                "PUT",
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
            ])
            .args(["-d", &format!("{{\"value\":\"kill9-value-{w}-{i}\"}}")])
            .arg(format!(
                "https://localhost:{port}/secrets/kill9-{w}?api-version=7.4"
            ));
        }
        writers.push(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    std::thread::sleep(Duration::from_millis(700));
    vault.child.kill(); // SIGKILL to the process group, then reaped
    for mut w in writers {
        let _ = w.kill();
        let _ = w.wait();
    }
    let before: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    eprintln!("temporary files after kill -9: {before:?}");
    drop(vault);
    let restarted = DevVaultProcess::start(
        Path::new(bin()),
        &state,
        &repo().join("examples/dev-vault.yaml"),
        &dir.path().join("restarted.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let leftovers = testenv::vault::temp_copies(&state);
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("state.json")).unwrap())
            .expect("the state file is whole");
    assert!(
        saved.to_string().contains("kill9-value-"),
        "writes happened before the kill"
    );
    drop(restarted);
}

/// The system trust store is found as OpenSSL finds it: with `SSL_CERT_FILE` naming the dev
/// vault's CA (the banner's "trust it" line) and no `--ca-file`, mount succeeds; with a store
/// that lacks the CA it fails on TLS and writes nothing.
#[test]
fn mount_trusts_the_system_store_named_by_ssl_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(&dir.path().join("state"));
    let class = dir.path().join("class.yaml");
    std::fs::write(
        &class,
        "keyvaultName: kvbridge-demo\ntenantID: 6d2b6f1e-0e4c-4a8e-9a57-6b7662726467\nobjects: |\n  array:\n    - |\n      objectName: db-password\n      objectType: secret\n",
    )
    .unwrap();
    let run = |target: &Path, store: &Path| {
        let (mut env, args) = printed_mount_command(&vault, &class, target);
        let mut without_ca = Vec::new();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            if a == "--ca-file" {
                it.next();
            } else {
                without_ca.push(a);
            }
        }
        let empty = dir.path().join("no-certs");
        std::fs::create_dir_all(&empty).unwrap();
        env.push(("SSL_CERT_FILE".into(), store.display().to_string()));
        env.push(("SSL_CERT_DIR".into(), empty.display().to_string()));
        kvbridge(&env, &without_ca)
    };
    let trusted = dir.path().join("trusted");
    let out = run(&trusted, &vault.ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(trusted.join("db-password")).unwrap(),
        "correct-horse-battery-staple"
    );

    // A store holding some other CA: the dev vault's certificate is not trusted.
    let other = dir.path().join("other-ca.pem");
    let c = testenv::chain::chain(pki::KeyKind::Ec(pki::Curve::P256), 1, "other");
    std::fs::write(&other, pki::pem_encode("CERTIFICATE", &c.certs[0])).unwrap();
    let untrusted = dir.path().join("untrusted");
    let out = run(&untrusted, &other);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("certificate") || stderr.contains("TLS"),
        "{stderr}"
    );
    assert!(!untrusted.join("db-password").exists());
}
