//! `cargo bench -p kvbridge --bench dev_vault`: start-up time and idle memory of
//! `kvbridge dev-vault` as a real process. Prints figures; asserts nothing about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start(state: &Path, seed: Option<&Path>) -> (Child, Duration) {
    let _ = std::fs::remove_file(state.join("ready.json"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvbridge"));
    cmd.args(["dev-vault", "--listen", "127.0.0.1:0", "--state"])
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(s) = seed {
        cmd.arg("--seed").arg(s);
    }
    let t0 = Instant::now();
    let child = cmd.spawn().expect("spawn kvbridge");
    while !state.join("ready.json").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "dev vault did not become ready"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    (child, t0.elapsed())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/dev-vault.yaml");

    let cold = dir.path().join("cold");
    let (child, first) = start(&cold, None);
    stop(child);
    let mut warm = Vec::new();
    let mut rss = 0;
    for i in 0..5 {
        let (child, t) = start(&cold, None);
        warm.push(t);
        if i == 4 {
            std::thread::sleep(Duration::from_secs(1));
            rss = rss_kib(child.id());
        }
        stop(child);
    }
    warm.sort();

    let seeded = dir.path().join("seeded");
    let (child, seed_first) = start(&seeded, Some(&seed));
    stop(child);
    let (child, seed_warm) = start(&seeded, Some(&seed));
    std::thread::sleep(Duration::from_secs(1));
    let seed_rss = rss_kib(child.id());
    stop(child);

    println!(
        "dev-vault start, first run (creates CA, server cert, signing key): {:>7.1} ms",
        first.as_secs_f64() * 1e3
    );
    println!(
        "dev-vault start, warm (median of 5, reuses state):                 {:>7.1} ms",
        warm[2].as_secs_f64() * 1e3
    );
    println!(
        "dev-vault idle RSS, no seed:                                       {:>7.1} MiB",
        rss as f64 / 1024.0
    );
    println!(
        "dev-vault start with examples/dev-vault.yaml, first (generates keys): {:>7.1} ms",
        seed_first.as_secs_f64() * 1e3
    );
    println!(
        "dev-vault start with examples/dev-vault.yaml, warm:                {:>7.1} ms",
        seed_warm.as_secs_f64() * 1e3
    );
    println!(
        "dev-vault idle RSS, example seed:                                  {:>7.1} MiB",
        seed_rss as f64 / 1024.0
    );
}
