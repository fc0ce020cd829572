//! `cargo bench -p kvbridge --bench controller_scale`: `kvbridge controller` as a real process
//! against the test control plane and `kvbridge dev-vault`, with many AzureKeyVaultSecrets over
//! fewer distinct vault objects. Prints: cold sync time, vault GETs in one refresh interval,
//! Secret/ConfigMap writes in that steady interval, the controller's CPU and RSS, and how many
//! GETs the dev vault (enforcing Key Vault's 4,000-per-10-s limit) answered 429. Sizes from the
//! environment: KVBRIDGE_BENCH_RESOURCES (default 1000), KVBRIDGE_BENCH_OBJECTS (200),
//! KVBRIDGE_BENCH_REFRESH_SECS (20). Asserts only what must hold at any size: every Secret
//! synced, and no write in a steady interval.
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed unwrap is a failed run

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde_json::json;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn proc_status(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

/// User + system CPU seconds of `pid` (clock ticks of 1/100 s on Linux).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(i) = stat.rfind(')') else { return 0.0 };
    let f: Vec<&str> = stat[i + 2..].split(' ').collect();
    let t = |k: usize| f.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

async fn managed_secrets(client: &kube::Client) -> usize {
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=kvbridge");
    Api::<Secret>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let resources = env_num("KVBRIDGE_BENCH_RESOURCES", 1000) as usize;
    let objects = env_num("KVBRIDGE_BENCH_OBJECTS", 200).max(1) as usize;
    let refresh = env_num("KVBRIDGE_BENCH_REFRESH_SECS", 20).max(2);
    let Some(cp) = testenv::control_plane().await else {
        return;
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = cp.client().await.unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    cp.install_crds(&client, &repo.join("deploy/helm/kvbridge/files/crds"))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let tenant = "5b1c0d2e-3f4a-4b5c-8d6e-7f8091a2b3c4";
    let mut seed = format!("tenant: {tenant}\nvaults:\n  - name: scale\n    secrets:\n");
    for i in 0..objects {
        seed.push_str(&format!("      - {{name: s{i}, value: \"value-{i}\"}}\n"));
    }
    seed.push_str("identities:\n  - {clientId: controller, secret: controller-secret}\n");
    let seed_file = dir.path().join("seed.yaml");
    std::fs::write(&seed_file, seed).unwrap();
    // Key Vault's throttling limit enforced by the dev vault (4,000 transactions per 10 s per
    // vault; 429 with Retry-After beyond it). KVBRIDGE_BENCH_VAULT_FAULTS: the dev vault's
    // `--faults` JSON instead (e.g. a tighter `vault_limit`, to watch the controller throttled).
    let faults = std::env::var("KVBRIDGE_BENCH_VAULT_FAULTS").ok();
    let vault_args: Vec<&str> = match &faults {
        Some(f) => vec!["--faults", f],
        None => vec!["--key-vault-limits"],
    };
    let vault = testenv::vault::DevVaultProcess::start_with_args(
        Path::new(env!("CARGO_BIN_EXE_kvbridge")),
        &dir.path().join("vault"),
        &seed_file,
        &dir.path().join("vault.log"),
        &vault_args,
    )
    .unwrap();
    let vault_counters = || {
        let c = vault.curl(&[&format!("https://localhost:{}/admin/counters", vault.port)]);
        let sum = |op: &str| testenv::vault::sum_counters(&c, |e| e["operation"] == op);
        (sum("GetSecret"), sum("Throttled"))
    };

    let namespaces = 10;
    for n in 0..namespaces {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(format!("scale-{n}")),
                ..Default::default()
            },
            ..Default::default()
        };
        let _ = Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await;
    }
    let [health, metrics] = testenv::process::free_ports::<2>().unwrap();
    // KVBRIDGE_BENCH_WRAP: a profiler to run the controller under (e.g. `heaptrack -o FILE`).
    let wrap = std::env::var("KVBRIDGE_BENCH_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let mut cmd = match wrap.next() {
        Some(prog) => {
            let mut c = Command::new(prog);
            c.args(wrap).arg(env!("CARGO_BIN_EXE_kvbridge"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_kvbridge")),
    };
    cmd.arg("controller")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .arg("--cloud-env-file")
        .arg(&vault.cloud_env_file)
        .arg("--ca-file")
        .arg(&vault.ca)
        .args(["--refresh-interval", &format!("{refresh}s")])
        .args([
            "--min-refresh-interval",
            "1s",
            "--managed-identity",
            "false",
        ])
        .args(["--concurrency", "32", "--http-bind", "127.0.0.1"])
        .args(["--health-port", &health.to_string()])
        .args(["--metrics-port", &metrics.to_string()])
        .env("AZURE_TENANT_ID", tenant)
        .env("AZURE_CLIENT_ID", "controller")
        .env("AZURE_CLIENT_SECRET", "controller-secret")
        .env("KVBRIDGE_LOG", "warn");
    let controller =
        testenv::process::spawn("kvbridge controller", cmd, &dir.path().join("c.log")).unwrap();
    let pid = controller.pid();

    // Create the resources (32 at a time), then wait until every Secret exists.
    let t0 = Instant::now();
    let api = |ns: &str| {
        Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            ns,
            &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "spv.no",
                "v2beta1",
                "AzureKeyVaultSecret",
            )),
        )
    };
    use futures::StreamExt as _;
    futures::stream::iter(0..resources)
        .map(|i| {
            let ns = format!("scale-{}", i % namespaces);
            let api = api(&ns);
            async move {
                let obj: kube::api::DynamicObject = serde_json::from_value(json!({
                    "apiVersion": "spv.no/v2beta1",
                    "kind": "AzureKeyVaultSecret",
                    "metadata": {"name": format!("r{i}"), "namespace": ns},
                    "spec": {
                        "vault": {"name": "scale", "object": {"name": format!("s{}", i % objects), "type": "secret"}},
                        "output": {"secret": {"name": format!("r{i}"), "dataKey": "value"}}
                    }
                }))
                .unwrap();
                api.create(&PostParams::default(), &obj).await.unwrap();
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let created = t0.elapsed();
    loop {
        let n = managed_secrets(&client).await;
        if n >= resources {
            break;
        }
        assert!(
            controller.exited().is_none(),
            "controller exited: {}",
            controller.log_tail(20)
        );
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "only {n} of {resources} Secrets after 30 min"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cold = t0.elapsed();
    let cold_cpu = cpu_secs(pid);
    let (cold_gets, cold_429) = vault_counters();

    // One steady refresh interval (after the first refresh round has passed).
    tokio::time::sleep(Duration::from_secs(refresh + 2)).await;
    let m0 = scrape(metrics);
    let cpu0 = cpu_secs(pid);
    tokio::time::sleep(Duration::from_secs(refresh)).await;
    let m1 = scrape(metrics);
    let cpu1 = cpu_secs(pid);
    let (all_gets, all_429) = vault_counters();
    let delta = |p: &str| metric(&m1, p) - metric(&m0, p);
    let gets = delta("kvbridge_controller_vault_requests_total");
    let writes = delta("kvbridge_controller_writes_total");
    let unchanged = delta("kvbridge_controller_reconciles_total{result=\"unchanged\"}");
    println!(
        "controller_scale: {resources} AzureKeyVaultSecrets over {objects} vault objects, refresh {refresh} s"
    );
    println!(
        "  created in {:.1} s; cold sync (all Secrets written) {:.1} s; controller CPU for it {:.1} s",
        created.as_secs_f64(),
        cold.as_secs_f64(),
        cold_cpu
    );
    println!(
        "  one steady refresh interval: {gets} vault GETs, {unchanged} reconciles, {writes} Secret/ConfigMap writes, controller CPU {:.2} s ({:.1}% of one core)",
        cpu1 - cpu0,
        (cpu1 - cpu0) / refresh as f64 * 100.0
    );
    println!(
        "  dev vault ({}): cold sync {cold_gets} GETs (incl. 429s), {cold_429} answered 429; whole run {all_gets} GETs, {all_429} answered 429",
        faults.as_deref().unwrap_or("Key Vault's limit, 4,000 per 10 s per vault")
    );
    println!(
        "  controller RSS {} (peak {})",
        proc_status(pid, "VmRSS:"),
        proc_status(pid, "VmHWM:")
    );
    assert_eq!(writes, 0.0, "writes in a steady interval");
}
