//! Benchmark (prints, not a timed test): a real `kvbridge provider` process on a unix socket,
//! against the dev vault on loopback.
//! - Mount latency p50/p99 for 1, 10 and 100 objects (node cache off: every mount reads the vault)
//! - vault GETs per 100 identical concurrent mounts of 10 objects (node cache on)
//! - provider peak RSS (VmHWM) after 100 concurrent mounts of 100 objects
//!
//! `cargo bench -p kvbridge-provider` (builds `kvbridge` in release first, unless `KVBRIDGE_BIN`
//! names a release binary).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use support::*;

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = kvbridge_binary();
    let dir = tempfile::tempdir().unwrap();
    let secrets: String = (0..100)
        .map(|i| {
            format!(
                "      - {{name: s-{i}, value: \"value-{i}-{}\"}}\n",
                "x".repeat(64)
            )
        })
        .collect();
    let seed = format!(
        "tenant: {TENANT}\nvaults:\n  - name: {VAULT}\n    secrets:\n{secrets}identities:\n  - {{clientId: app, secret: app-secret}}\n"
    );
    std::fs::write(dir.path().join("seed.yaml"), seed).unwrap();
    let mut opts = devvault::Options::new("127.0.0.1:0".parse().unwrap(), dir.path().join("dv"));
    opts.seed = Some(dir.path().join("seed.yaml"));
    let dv = devvault::start(opts).await.unwrap();
    let sp = sp_secrets("app", "app-secret");

    // 1. Latency with the node cache off: on bare loopback (the provider's own cost), then with
    //    20 ms added to every vault call (a typical Azure round trip), where concurrency matters.
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&dv.info.ca).unwrap()).unwrap(),
        )
        .use_rustls_tls()
        .build()
        .unwrap();
    let socket = dir.path().join("nocache.sock");
    let mut child = spawn_provider(
        &bin,
        &socket,
        &dv.info.cloud_env_file,
        &dv.info.ca,
        &["--cache-ttl", "0s"],
        "warn",
    );
    wait_socket(&socket).await;
    let mut client = connect(&socket).await;
    for (label, latency_ms, rounds) in [
        ("bare loopback", 0u64, 40usize),
        ("vault latency 20 ms", 20, 15),
    ] {
        http.put(format!("{}/admin/faults", dv.info.url))
            .json(&serde_json::json!({"latency_ms": latency_ms}))
            .send()
            .await
            .unwrap();
        println!("Mount latency, node cache off (every mount reads Key Vault), {label}, {rounds} sequential mounts each:");
        let mut p50s = Vec::new();
        for n in [1usize, 10, 100] {
            let a = attrs(&objects_n(n, n), &[]);
            mount(&mut client, request(&a, &sp, "420")).await.unwrap(); // warm: token, connections
            let mut lat = Vec::new();
            for _ in 0..rounds {
                let t = Instant::now();
                let r = mount(&mut client, request(&a, &sp, "420")).await.unwrap();
                lat.push(t.elapsed());
                assert_eq!(r.files.len(), n);
            }
            lat.sort();
            println!(
                "  {n:>3} objects: p50 {:>8.2?}  p99 {:>8.2?}",
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            );
            p50s.push(pct(&lat, 0.5));
        }
        println!(
            "  100 objects / 1 object p50 ratio: {:.2}x (target <= 3x)",
            p50s[2].as_secs_f64() / p50s[0].as_secs_f64()
        );
    }
    http.put(format!("{}/admin/faults", dv.info.url))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();

    // 2. + 3. Node cache on (default TTL 30 s).
    let socket = dir.path().join("azure.sock");
    let mut child = spawn_provider(
        &bin,
        &socket,
        &dv.info.cloud_env_file,
        &dv.info.ca,
        &["--cache-ttl", "30s"],
        "warn",
    );
    wait_socket(&socket).await;
    let origin = dv.info.url.clone();
    let total_gets = || {
        let http = http.clone();
        let origin = origin.clone();
        async move {
            let c = testenv::vault::admin(&http, &origin, "GET", "/admin/counters", None).await;
            testenv::vault::sum_counters(&c, |e| e["operation"] == "GetSecret")
        }
    };
    // Like the CSI driver, one gRPC connection to the provider carries every concurrent Mount.
    async fn burst(socket: &Path, n_mounts: usize, n_objects: usize, sp: &str) -> Duration {
        let a = attrs(&objects_n(n_objects, n_objects), &[]);
        let shared = connect(socket).await;
        let t = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..n_mounts {
            let mut c = shared.clone();
            let mut a = a.clone();
            a.insert("csi.storage.k8s.io/pod.name".into(), format!("pod-{i}"));
            let req = request(&a, sp, "420");
            tasks.push(tokio::spawn(async move {
                mount(&mut c, req).await.map(|r| r.files.len())
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), n_objects);
        }
        t.elapsed()
    }
    let before = total_gets().await;
    let took = burst(&socket, 100, 10, &sp).await;
    let gets = total_gets().await - before;
    println!("Node cache on: 100 identical concurrent mounts of 10 objects -> {gets} vault GETs ({:.2} per mount; Azure provider: 10 per mount), {took:.2?} total", gets as f64 / 100.0);

    let pid = child.id();
    let idle = vm_hwm_kib(pid);
    let took = burst(&socket, 100, 100, &sp).await;
    let peak = vm_hwm_kib(pid);
    println!(
        "Provider peak RSS (VmHWM): {:.1} MiB after start+above, {:.1} MiB after 100 concurrent mounts of 100 objects ({took:.2?}); target < 20 MiB",
        idle as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let _ = child.kill();
    let _ = child.wait();
    dv.stop().await;
}
