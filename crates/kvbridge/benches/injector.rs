//! `cargo bench -p kvbridge --bench injector`: what `kvbridge env` adds to a container's start
//! (20 placeholders, real process, dev vault over HTTPS on loopback) and what `kvbridge webhook`
//! adds to a Pod admission (dry-run creates through the real kube-apiserver, with and without
//! the webhook in the path). Prints figures; asserts nothing about speed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use testenv::vault::DevVaultProcess;
use testenv::webhook;

const PLACEHOLDERS: usize = 20;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "p50 {:.1} ms, p99 {:.1} ms (n={})",
        percentile(&v, 0.5).as_secs_f64() * 1e3,
        percentile(&v, 0.99).as_secs_f64() * 1e3,
        v.len()
    )
}

fn env_startup(dir: &Path) {
    let mut seed = String::from("vaults:\n  - name: bench\n    secrets:\n");
    for i in 0..PLACEHOLDERS {
        seed.push_str(&format!("      - {{name: s{i}, value: \"value-{i}\"}}\n"));
    }
    seed.push_str("identities:\n  - clientId: kvbridge-dev\n    secret: kvbridge-dev-secret\n");
    let seed_file = dir.join("seed.yaml");
    std::fs::write(&seed_file, seed).unwrap();
    let v = DevVaultProcess::start(
        Path::new(bin()),
        &dir.join("vault"),
        &seed_file,
        &dir.join("vault.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let origin = format!("https://localhost:{}", v.port);
    let refs: serde_json::Map<String, serde_json::Value> = (0..PLACEHOLDERS)
        .map(|i| {
            (
                format!("s{i}"),
                json!({
                    "vaultUrl": format!("https://bench.localhost:{}", v.port),
                    "cloud": {"name": "dev", "authorityHost": format!("{origin}/"),
                        "vaultDnsSuffix": format!("localhost:{}", v.port), "keyvaultResource": origin},
                    "object": {"name": format!("s{i}"), "type": "secret"},
                    "identity": {"type": "servicePrincipal", "tenantId": v.tenant,
                        "clientIdEnv": "SP_ID", "clientSecretEnv": "SP_SECRET"},
                }),
            )
        })
        .collect();
    let spec = json!({"version": 1, "refs": refs}).to_string();
    let run = |placeholders: usize| {
        let mut cmd = Command::new(bin());
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KVBRIDGE_LOG", "warn")
            .env("KVBRIDGE_ENV_SPEC", &spec)
            .env("SP_ID", "kvbridge-dev")
            .env("SP_SECRET", "kvbridge-dev-secret")
            .arg("env")
            .arg("--ca-file")
            .arg(&v.ca)
            .args(["--", "true"]);
        for i in 0..placeholders {
            cmd.env(format!("V{i}"), format!("s{i}@azurekeyvault"));
        }
        let t0 = Instant::now();
        let out = cmd.output().unwrap();
        let t = t0.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    };
    let direct = |_: usize| {
        let t0 = Instant::now();
        assert!(Command::new("true").status().unwrap().success());
        t0.elapsed()
    };
    run(PLACEHOLDERS); // warm-up
    let n = 30;
    let plain: Vec<Duration> = (0..n).map(direct).collect();
    let none: Vec<Duration> = (0..n).map(|_| run(0)).collect();
    let full: Vec<Duration> = (0..n).map(|_| run(PLACEHOLDERS)).collect();
    println!("kvbridge env start-up (program `true`):");
    println!("  `true` alone:                      {}", summary(plain));
    println!("  kvbridge env, no placeholders:     {}", summary(none));
    println!(
        "  kvbridge env, {PLACEHOLDERS} placeholders (20 GETs + 1 token): {}",
        summary(full)
    );
}

async fn admission(dir: &Path) {
    let Some(cp) = testenv::control_plane().await else {
        println!("webhook admission: skipped (no control plane)");
        return;
    };
    let client = cp.client().await.unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    cp.install_crds(&client, &repo.join("deploy/helm/kvbridge/files/crds"))
        .await
        .unwrap();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    webhook::openssl_self_signed(&cert, &key, "kvbridge-webhook");
    let mut child = Command::new(bin())
        .args([
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--image",
            "kvbridge:bench",
            "--tenant-id",
            "t",
        ])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .env("KUBECONFIG", cp.kubeconfig())
        .env("KVBRIDGE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    webhook::register(
        &client,
        "kvbridge-bench",
        vec![webhook::pod_create(
            "env.kvbridge.io",
            &url,
            Some(std::fs::read(&cert).unwrap()),
            webhook::labelled(webhook::INJECTION_LABEL, "enabled"),
        )],
    )
    .await
    .unwrap();

    let injected =
        webhook::labelled_namespace(&client, "bench-", &[(webhook::INJECTION_LABEL, "enabled")])
            .await
            .unwrap();
    let plain = webhook::labelled_namespace(&client, "bench-", &[])
        .await
        .unwrap();
    let spec = json!({"vault": {"name": "kv", "object": {"name": "db", "type": "secret"}}});
    webhook::akvs(&client, &injected, "db", spec).await.unwrap();
    let pod: Pod = serde_json::from_value(json!({"metadata": {"generateName": "p-"}, "spec": {"containers": [
        {"name": "app", "image": "app:1", "command": ["app"], "env": [{"name": "DB", "value": "db@azurekeyvault"}]}]}}))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    // Until the API server calls the webhook.
    let injected_pods: Api<Pod> = Api::namespaced(client.clone(), &injected);
    webhook::until_mutated(&injected_pods, &pod, "webhook").await;
    let rate = 200.0;
    let n = 1000;
    for (label, ns) in [("without webhook", &plain), ("with webhook", &injected)] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..n {
            let at = start + Duration::from_secs_f64(i as f64 / rate);
            let pods = pods.clone();
            let pod = pod.clone();
            let dry = dry.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                let t0 = Instant::now();
                let p = pods.create(&dry, &pod).await.unwrap();
                (t0.elapsed(), p.spec.unwrap().init_containers.is_some())
            }));
        }
        let mut times = Vec::new();
        let mut mutated = 0;
        for t in tasks {
            let (d, m) = t.await.unwrap();
            times.push(d);
            mutated += usize::from(m);
        }
        let achieved = n as f64 / start.elapsed().as_secs_f64();
        println!(
            "dry-run Pod create through kube-apiserver at {rate} req/s ({label}; {achieved:.0} req/s achieved, {mutated} mutated): {}",
            summary(times)
        );
    }
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = configs
        .delete("kvbridge-bench", &DeleteParams::default())
        .await;
    let _ = child.kill();
    let _ = child.wait();
}

/// Entrypoint lookups against docker-registry on loopback (HTTPS, htpasswd Basic auth, an image
/// index of two platforms): cold (a new resolver: TLS handshake, 401 challenge, index, manifest,
/// config) and warm (cached digest: one manifest request by tag, none by digest).
async fn entrypoint_lookup(dir: &Path) {
    use injector::registry::{Credentials, Resolver, ResolverOptions};
    if testenv::registry::tools().is_none() {
        return;
    }
    let registry = testenv::registry::Registry::start(&dir.join("registry")).unwrap();
    let layout = dir.join("oci");
    testenv::registry::oci_layout(
        &layout,
        "v1",
        &[
            ("amd64", json!(["/app"]), json!(["serve"])),
            ("arm64", json!(["/app"]), json!(["serve"])),
        ],
    )
    .unwrap();
    let image = registry.push(&layout, "v1", "bench/app").unwrap();
    let creds = Credentials::new(testenv::registry::USER, testenv::registry::PASSWORD);
    let options = ResolverOptions {
        ca_file: Some(registry.ca.clone()),
        system_roots: false,
        ..ResolverOptions::default()
    };
    let mut cold = Vec::new();
    for _ in 0..30 {
        let resolver = Resolver::new(options.clone()).unwrap();
        let t0 = Instant::now();
        let c = resolver.lookup(&image, Some(&creds), None).await.unwrap();
        cold.push(t0.elapsed());
        assert_eq!(c.entrypoint, ["/app"]);
    }
    let resolver = Resolver::new(options).unwrap();
    resolver.lookup(&image, Some(&creds), None).await.unwrap();
    let mut warm = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        resolver.lookup(&image, Some(&creds), None).await.unwrap();
        warm.push(t0.elapsed());
    }
    let digest = {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!(
                "--creds={}:{}",
                testenv::registry::USER,
                testenv::registry::PASSWORD
            ))
            .arg(format!("docker://{image}"))
            .output()
            .unwrap();
        let d = sha256_of(&out.stdout);
        format!("{}@{d}", image.rsplit_once(':').unwrap().0)
    };
    resolver.lookup(&digest, Some(&creds), None).await.unwrap();
    let mut by_digest = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        resolver.lookup(&digest, Some(&creds), None).await.unwrap();
        by_digest.push(t0.elapsed());
    }
    println!(
        "entrypoint lookup (docker-registry on loopback, HTTPS + Basic auth, image index): cold {}; warm by tag {}; warm by digest {}",
        summary(cold),
        summary(warm),
        summary(by_digest)
    );
}

/// sha256 of `bytes` as `sha256:<hex>` (sha256sum, to keep the bench's dependencies as they are).
fn sha256_of(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", hex.split_whitespace().next().unwrap())
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(entrypoint_lookup(dir.path()));
    if std::env::var_os("KVBRIDGE_BENCH_ONLY_LOOKUP").is_some() {
        return;
    }
    env_startup(dir.path());
    rt.block_on(admission(dir.path()));
}
