//! Soak benchmark (prints, not a timed test): a real `kvbridge provider` process serving normal
//! Mounts while hostile clients hammer it with classes built to stall it (100k-deep YAML
//! nesting, an 80,000-object list, a FIFO as `cloudEnvFileName`, the largest classes the
//! provider reads, a typo'd objects list).
//! Reports the normal Mounts' p50/p99 unloaded and under that load (target: p99 within 2x),
//! and how long the class parser takes on the largest inputs the limits admit.
//!
//! `cargo bench -p kvbridge-provider --bench soak` (builds `kvbridge` in release first, unless
//! `KVBRIDGE_BIN` names a release binary).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use support::*;
use testenv::vault::DevVaultProcess;

fn spawn(bin: &Path, socket: &Path, dv: &DevVaultProcess, env_dir: &Path, delay: &str) -> Child {
    let env_dir = env_dir.to_string_lossy();
    spawn_provider(
        bin,
        socket,
        &dv.cloud_env_file,
        &dv.ca,
        &[
            "--cache-ttl",
            "0s",
            "--cloud-env-dir",
            &env_dir,
            "--refusal-delay",
            delay,
        ],
        "error",
    )
}

/// A hostile class: label, `objects`, extra parameters.
type Hostile = (&'static str, String, Vec<(&'static str, String)>);

async fn normal_mounts(socket: &Path, rounds: usize, sp: &str) -> Vec<Duration> {
    let mut client = connect(socket).await;
    let a = attrs(&objects_n(10, 10), &[]);
    mount(&mut client, request(&a, sp, "420")).await.unwrap();
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let r = mount(&mut client, request(&a, sp, "420")).await.unwrap();
        lat.push(t.elapsed());
        assert_eq!(r.files.len(), 10);
    }
    lat.sort();
    lat
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

/// Parse time of the largest admitted inputs (in this process, release build).
fn parser_figures() {
    let limit = render::limits::MAX_OBJECTS;
    let mut many = String::from("array:\n");
    for i in 0..limit {
        many.push_str(&format!(
            "  - |\n    objectName: o{i}\n    objectType: secret\n    objectAlias: d{}/f{i}\n",
            i % 7
        ));
    }
    let deep_name = "a/".repeat(render::params::MAX_PATH_BYTES / 2 - 3) + "z";
    let mut deep = String::from("array:\n");
    let mut n = 0;
    while deep.len() + deep_name.len() + 80 < render::limits::MAX_OBJECTS_BYTES {
        deep.push_str(&format!(
            "  - |\n    objectName: o{n}\n    objectType: secret\n    objectAlias: {deep_name}{n}\n"
        ));
        n += 1;
    }
    let nested = format!("array:\n  - |\n    objectName: {}\n", "[".repeat(200_000));
    let huge: String = objects_n(80_000, 10);
    println!("Class parser on the largest inputs (median of 9 runs):");
    for (label, text) in [
        (
            format!("{limit} objects ({} KiB)", many.len() / 1024),
            &many,
        ),
        (
            format!(
                "{n} objects with 2 KiB deep aliases ({} KiB)",
                deep.len() / 1024
            ),
            &deep,
        ),
        (
            format!("100k-deep nesting ({} KiB, refused)", nested.len() / 1024),
            &nested,
        ),
        (
            format!("80,000 objects ({} KiB, refused)", huge.len() / 1024),
            &huge,
        ),
    ] {
        let mut times: Vec<Duration> = (0..9)
            .map(|_| {
                let t = Instant::now();
                let _ = render::params::parse_objects(text);
                t.elapsed()
            })
            .collect();
        times.sort();
        println!("  {label:<50} {:>9.2?}", times[4]);
    }
}

/// A Mount sent as bytes encoded once: the generator shares the machine with the provider,
/// and re-encoding a multi-MB request per call would make it, not the provider, the load.
#[derive(Clone, Copy, Default)]
struct Preencoded;

impl tonic::codec::Encoder for Preencoded {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put(item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Preencoded {
    type Item = ();
    type Error = tonic::Status;
    fn decode(&mut self, _: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        Ok(Some(()))
    }
}

impl tonic::codec::Codec for Preencoded {
    type Encode = bytes::Bytes;
    type Decode = ();
    type Encoder = Self;
    type Decoder = Self;
    fn encoder(&mut self) -> Self {
        *self
    }
    fn decoder(&mut self) -> Self {
        *self
    }
}

async fn raw_mount(
    client: &mut tonic::client::Grpc<tonic::transport::Channel>,
    body: bytes::Bytes,
) -> Result<(), tonic::Status> {
    client
        .ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/v1alpha1.CSIDriverProvider/Mount");
    client
        .unary(tonic::Request::new(body), path, Preencoded)
        .await
        .map(|_| ())
}

/// Mounts each hostile client keeps in flight on its connection.
const HOSTILE_STREAMS: usize = 16;

/// Hostile clients: each sends its class in a loop on its own connection until `stop`.
async fn hostile_load(
    socket: PathBuf,
    hostile: Vec<Hostile>,
    sp: String,
    stop: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
) {
    let mut tasks = Vec::new();
    for (_, objs, extra) in hostile {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let req = request(&attrs(&objs, &extra), &sp, "420");
        let req = bytes::Bytes::from(prost::Message::encode_to_vec(&req));
        let client = tonic::client::Grpc::new(channel(&socket).await);
        for _ in 0..HOSTILE_STREAMS {
            let (stop, refused, req) = (stop.clone(), refused.clone(), req.clone());
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if raw_mount(&mut c, req.clone()).await.is_err() {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// `KVBRIDGE_SOAK_CLASSES` (comma-separated label prefixes, e.g. `80,FIFO`) keeps only those
/// hostile classes, to see what each one costs; unset runs them all.
fn hostile_classes() -> Vec<Hostile> {
    let only = std::env::var("KVBRIDGE_SOAK_CLASSES").ok();
    let all: Vec<Hostile> = vec![
        (
            "100k-deep nesting",
            format!(
                "array:\n  - |\n    objectName: {}{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            vec![],
        ),
        ("80,000 objects", objects_n(80_000, 10), vec![]),
        (
            "FIFO cloudEnvFileName",
            objects_n(1, 10),
            vec![("cloudEnvFileName", "fifo".into())],
        ),
        (
            "3.3 MiB class (read, then refused)",
            objects_n(1, 10),
            vec![("padding", "p".repeat(3300 * 1024))],
        ),
        (
            "1.9 MiB class (read, JSON parsed, refused)",
            objects_n(1, 10),
            vec![("padding", "p".repeat(1900 * 1024))],
        ),
        (
            "typo'd objects",
            "arrray:\n  - |\n    objectName: s-1\n    objectType: secret\n".into(),
            vec![],
        ),
    ];
    match only {
        None => all,
        Some(only) => all
            .into_iter()
            .filter(|h| only.split(',').any(|p| h.0.starts_with(p.trim())))
            .collect(),
    }
}

/// How the hostile clients run: on a thread of this process (normal priority, sharing the two
/// cores with everything else), or as a separate process at `nice 19` (the provider is still
/// flooded as fast as it answers; only the generator's own CPU yields to the rest).
#[derive(Clone, Copy)]
enum Generator {
    Thread,
    NicedProcess,
}

const HOSTILE_ENV: &str = "KVBRIDGE_SOAK_HOSTILE";

/// The `nice 19` generator process: floods until the stop file exists, prints its count.
fn hostile_process(socket: PathBuf) {
    let stop_file = socket.with_extension("stop");
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let sp = sp_secrets("app", "app-secret");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let watch = tokio::spawn({
                let stop = stop.clone();
                async move {
                    while !stop_file.exists() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    stop.store(true, Ordering::Relaxed);
                }
            });
            hostile_load(socket, hostile_classes(), sp, stop, refused.clone()).await;
            watch.await.unwrap();
        });
    println!("{}", refused.load(Ordering::Relaxed));
}

/// Runs `normal` while the hostile clients flood; returns its result and the refusal count.
fn under_load<T>(
    generator: Generator,
    socket: &Path,
    sp: &str,
    normal: impl FnOnce() -> T,
) -> (T, u64) {
    match generator {
        Generator::Thread => {
            let stop = Arc::new(AtomicBool::new(false));
            let refused = Arc::new(AtomicU64::new(0));
            let load = std::thread::spawn({
                let (socket, sp) = (socket.to_path_buf(), sp.to_string());
                let (stop, refused) = (stop.clone(), refused.clone());
                move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(hostile_load(socket, hostile_classes(), sp, stop, refused))
                }
            });
            std::thread::sleep(Duration::from_millis(200));
            let out = normal();
            stop.store(true, Ordering::Relaxed);
            load.join().unwrap();
            (out, refused.load(Ordering::Relaxed))
        }
        Generator::NicedProcess => {
            let stop_file = socket.with_extension("stop");
            let _ = std::fs::remove_file(&stop_file);
            let child = Command::new("nice")
                .args(["-n", "19"])
                .arg(std::env::current_exe().unwrap())
                .env(HOSTILE_ENV, socket)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("hostile generator process");
            std::thread::sleep(Duration::from_millis(300));
            let out = normal();
            std::fs::write(&stop_file, b"").unwrap();
            let output = child.wait_with_output().unwrap();
            let count = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            (out, count)
        }
    }
}

// Three separate parties, as on a node: the dev vault is its own process (Key Vault is remote),
// the hostile clients run on their own thread (they stand for other pods' mounts arriving
// through the driver), and the normal client measures on this thread.
fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(socket) = std::env::var_os(HOSTILE_ENV) {
        return hostile_process(PathBuf::from(socket));
    }
    parser_figures();
    let bin = kvbridge_binary();
    let dir = tempfile::tempdir().unwrap();
    let secrets: String = (0..10)
        .map(|i| format!("      - {{name: s-{i}, value: \"value-{i}\"}}\n"))
        .collect();
    let seed = format!(
        "tenant: {TENANT}\nvaults:\n  - name: {VAULT}\n    secrets:\n{secrets}identities:\n  - {{clientId: app, secret: app-secret}}\n"
    );
    std::fs::write(dir.path().join("seed.yaml"), seed).unwrap();
    let dv = DevVaultProcess::start(
        &bin,
        &dir.path().join("dv"),
        &dir.path().join("seed.yaml"),
        &dir.path().join("dv.log"),
    )
    .expect("kvbridge dev-vault");
    let env_dir = dir.path().join("envs");
    std::fs::create_dir(&env_dir).unwrap();
    mkfifo(&env_dir.join("fifo"));
    let sp = sp_secrets("app", "app-secret");
    let socket = dir.path().join("azure.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let hostile = hostile_classes();

    for (provider_label, refusal_delay) in [
        ("refusal delay 250ms (the default)", "250ms"),
        ("refusal delay off", "0s"),
    ] {
        let mut child = spawn(&bin, &socket, &dv, &env_dir, refusal_delay);
        rt.block_on(wait_socket(&socket));
        println!("Provider with {provider_label}:");
        for (label, latency_ms, rounds) in [
            ("bare loopback", 0u64, 3000usize),
            ("vault latency 20 ms", 20, 100),
        ] {
            dv.set_faults(&serde_json::json!({ "latency_ms": latency_ms }));
            let unloaded = rt.block_on(normal_mounts(&socket, rounds, &sp));

            println!("Normal mounts of 10 objects (cache off), {label}, {rounds} sequential:");
            println!(
                "  unloaded                                  p50 {:>9.2?}  p99 {:>9.2?}",
                pct(&unloaded, 0.5),
                pct(&unloaded, 0.99)
            );
            for (generator, what) in [
                (Generator::Thread, "hostile clients on a thread"),
                (Generator::NicedProcess, "hostile clients at nice 19"),
            ] {
                let (loaded, refused) = under_load(generator, &socket, &sp, || {
                    rt.block_on(normal_mounts(&socket, rounds, &sp))
                });
                let (u99, l99) = (pct(&unloaded, 0.99), pct(&loaded, 0.99));
                println!(
                    "  {what:<40} p50 {:>9.2?}  p99 {:>9.2?}  p99 ratio {:.2}x (target <= 2x; {refused} hostile mounts refused meanwhile)",
                    pct(&loaded, 0.5),
                    l99,
                    l99.as_secs_f64() / u99.as_secs_f64()
                );
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    println!(
        "Hostile classes, one client (connection) each keeping {HOSTILE_STREAMS} mounts of it in flight: {}",
        hostile.iter().map(|h| h.0).collect::<Vec<_>>().join(", ")
    );
}
