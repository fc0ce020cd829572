//! End to end with the real Secrets Store CSI Driver: a real kube-apiserver (crates/testenv), the
//! driver built from its Go module, `kvbridge provider` serving `azure.sock`, and `kvbridge
//! dev-vault` behind it. The test plays kubelet: it creates the Pod object and calls
//! NodePublishVolume / NodeUnpublishVolume on the driver's CSI socket; the driver does the rest
//! (reads the SecretProviderClass, calls the provider, mounts a tmpfs, writes the files, records a
//! SecretProviderClassPodStatus, syncs `secretObjects` into Kubernetes Secrets, re-mounts on
//! rotation).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{json, Value};
use testenv::csi::v1 as csi;
use testenv::vault::DevVaultProcess;
use testenv::{ChildGuard, CsiDriverOptions, PodRef};

const CLASS: &str = "kvbridge-demo";
const VOLUME: &str = "secrets-store";
const POD: &str = "app";
/// `--rotation-poll-interval`: a republish re-mounts once this much time has passed.
const ROTATION: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(45);

fn kvbridge() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `kvbridge dev-vault` with the examples' seed (db-password, app-config, app-tls, ...).
fn dev_vault(dir: &Path) -> DevVaultProcess {
    DevVaultProcess::start(
        Path::new(kvbridge()),
        &dir.join("vault"),
        &repo().join("examples/dev-vault.yaml"),
        &dir.join("vault.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `kvbridge provider` serving `<providers>/azure.sock`, pointed at the dev vault by its default
/// cloud environment file (the class names no cloud), with no cache for `latest`.
fn provider(dir: &Path, providers: &Path, vault: &DevVaultProcess) -> ChildGuard {
    let socket = providers.join("azure.sock");
    let mut cmd = Command::new(kvbridge());
    cmd.arg("provider")
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg("--cloud-env-file")
        .arg(&vault.cloud_env_file)
        .arg("--ca-file")
        .arg(&vault.ca)
        .args([
            "--healthz-port",
            "0",
            "--metrics-port",
            "0",
            "--cache-ttl",
            "0s",
        ])
        .env_remove("AZURE_CLIENT_ID")
        .env_remove("AZURE_CLIENT_SECRET")
        .env("RUST_LOG", "info");
    let child =
        testenv::process::spawn("kvbridge provider", cmd, &dir.join("provider.log")).unwrap();
    let t0 = Instant::now();
    while !socket.exists() {
        assert!(
            child.exited().is_none() && t0.elapsed() < WAIT,
            "provider did not start: {}",
            child.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn pem_blocks(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
        .map(str::to_string)
        .collect()
}

/// The public key of a private key or certificate PEM, via openssl (an independent parser).
fn public_key(pem: &[u8], cert: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("in.pem");
    std::fs::write(&f, pem).unwrap();
    let args: &[&str] = if cert {
        &["x509", "-noout", "-pubkey", "-in"]
    } else {
        &["pkey", "-pubout", "-in"]
    };
    let out = Command::new("openssl").args(args).arg(&f).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `f` until it returns Some, for at most [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(t0.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secret_data(s: &Secret, key: &str) -> Vec<u8> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_csi_driver_mounts_syncs_and_rotates_through_kvbridge_provider() {
    let Some(cp) = testenv::control_plane().await else {
        return;
    };
    let t_start = Instant::now();
    let client = cp.client().await.expect("client");
    cp.install_csi_driver_crds(&client)
        .await
        .expect("the CSI driver's CRDs");
    let ns = cp.namespace(&client, "csi-e2e").await.expect("namespace");

    let dir = testenv::process::scratch_dir().unwrap();
    let providers = dir.join("providers");
    std::fs::create_dir_all(&providers).unwrap();
    let vault = dev_vault(&dir);
    let provider = provider(&dir, &providers, &vault);

    // The node-publish secret (what `nodePublishSecretRef` names; kubelet reads it and passes
    // its data in NodePublishVolume).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let creds: Secret = serde_json::from_value(json!({
        "metadata": {"name": "kv-creds", "labels": {"secrets-store.csi.k8s.io/used": "true"}},
        "stringData": {"clientid": "kvbridge-dev", "clientsecret": "kvbridge-dev-secret"},
    }))
    .unwrap();
    let creds = secrets
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();

    // The SecretProviderClass from examples/ unchanged, plus secretObjects to sync.
    let mut spc: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("examples/secretproviderclass.yaml")).unwrap(),
    )
    .unwrap();
    spc["metadata"]["namespace"] = json!(ns);
    spc["spec"]["secretObjects"] = json!([
        {"secretName": "app-db", "type": "Opaque", "labels": {"app": "demo"},
         "data": [{"objectName": "db-password", "key": "password"},
                  {"objectName": "config.json", "key": "config.json"}]},
        {"secretName": "app-tls", "type": "kubernetes.io/tls",
         "data": [{"objectName": "tls.pem", "key": "tls.key"},
                  {"objectName": "tls.pem", "key": "tls.crt"}]},
    ]);
    let spc_ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "secrets-store.csi.x-k8s.io",
        "v1",
        "SecretProviderClass",
    ));
    Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &spc_ar)
        .create(
            &PostParams::default(),
            &serde_json::from_value(spc).unwrap(),
        )
        .await
        .expect("create the SecretProviderClass");

    // The driver, then the Pod object scheduled to its node (no scheduler or kubelet runs).
    let node_id = format!("node-{ns}");
    let mut opts = CsiDriverOptions::new(&node_id, &providers);
    opts.rotation_poll_interval = Some(ROTATION);
    let driver = cp
        .start_csi_driver(opts)
        .await
        .expect("secrets-store-csi-driver starts");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": POD},
        "spec": {
            "nodeName": node_id,
            "serviceAccountName": "default",
            "containers": [{"name": "app", "image": "registry.invalid/app:1",
                            "volumeMounts": [{"name": VOLUME, "mountPath": "/mnt/secrets", "readOnly": true}]}],
            "volumes": [{"name": VOLUME, "csi": {
                "driver": testenv::csi::DRIVER_NAME, "readOnly": true,
                "volumeAttributes": {"secretProviderClass": CLASS},
                "nodePublishSecretRef": {"name": "kv-creds"}}}],
        },
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let pod_ref = PodRef {
        name: POD.into(),
        namespace: ns.clone(),
        uid: pod.metadata.uid.clone().unwrap(),
        service_account: "default".into(),
    };

    let mut node = driver.node().await.unwrap();
    let info = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, node_id);

    // NodePublishVolume as kubelet sends it.
    let publish_secrets: HashMap<String, String> = creds
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect();
    let request = driver.publish_request(&pod_ref, VOLUME, CLASS, publish_secrets);
    let target = driver.target_path(&pod_ref.uid, VOLUME);
    let t_publish = Instant::now();
    if let Err(status) = node.node_publish_volume(request.clone()).await {
        panic!(
            "NodePublishVolume failed: {status}\n(the driver mounts a tmpfs at the target: that \
             needs root with CAP_SYS_ADMIN)\ndriver log:\n{}\nprovider log:\n{}",
            driver.log_tail(30),
            provider.log_tail(30)
        );
    }
    let publish_time = t_publish.elapsed();

    // The driver mounted a tmpfs and wrote what the provider returned.
    assert_eq!(
        testenv::process::mount_type(&target).as_deref(),
        Some("tmpfs"),
        "target {} is a tmpfs mount",
        target.display()
    );
    assert_eq!(
        read(&target.join("db-password")),
        b"correct-horse-battery-staple"
    );
    let mode = std::fs::metadata(target.join("db-password"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "filePermission from the class");
    let config: Value = serde_json::from_slice(&read(&target.join("config.json"))).unwrap();
    assert_eq!(config["db_user"], "app");
    let ca = String::from_utf8(read(&target.join("ca.crt"))).unwrap();
    assert_eq!(pem_blocks(&ca), ["CERTIFICATE"]);
    let tls_pem = read(&target.join("tls.pem"));
    assert_eq!(
        pem_blocks(&String::from_utf8(tls_pem.clone()).unwrap()),
        ["PRIVATE KEY", "CERTIFICATE", "CERTIFICATE"],
        "key, then leaf and CA"
    );
    assert_eq!(
        pem_blocks(&String::from_utf8(read(&target.join("tls.crt"))).unwrap()),
        ["CERTIFICATE"]
    );
    assert!(!read(&target.join("tls.pfx")).is_empty());
    for k in ["signing-rsa.pub", "signing-ec.pub"] {
        assert_eq!(
            pem_blocks(&String::from_utf8(read(&target.join(k))).unwrap()),
            ["PUBLIC KEY"]
        );
    }
    assert_eq!(read(&target.join("rotating-token/0")), b"token-v3");
    assert_eq!(read(&target.join("rotating-token/1")), b"token-v2");

    // SecretProviderClassPodStatus, written by the driver, owned by the pod.
    let spcps_ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "secrets-store.csi.x-k8s.io",
        "v1",
        "SecretProviderClassPodStatus",
    ));
    let spcps_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &spcps_ar);
    let spcps_name = format!("{POD}-{ns}-{CLASS}");
    let spcps = spcps_api
        .get(&spcps_name)
        .await
        .expect("SecretProviderClassPodStatus");
    let status = &spcps.data["status"];
    assert_eq!(status["mounted"], true, "{status}");
    assert_eq!(status["podName"], POD);
    assert_eq!(status["secretProviderClassName"], CLASS);
    assert_eq!(status["targetPath"], target.display().to_string());
    assert_eq!(
        spcps.metadata.labels.as_ref().unwrap()["internal.secrets-store.csi.k8s.io/node-name"],
        node_id
    );
    assert_eq!(
        spcps.metadata.owner_references.as_ref().unwrap()[0].uid,
        pod_ref.uid
    );
    let versions = |status: &Value| -> BTreeMap<String, String> {
        status["objects"]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|o| {
                (
                    o["id"].as_str().unwrap_or_default().to_string(),
                    o["version"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let before = versions(status);
    let db_version = before
        .get("secret/db-password")
        .unwrap_or_else(|| panic!("no db-password version in {before:?}"))
        .clone();
    assert!(
        db_version.len() == 32 && db_version.chars().all(|c| c.is_ascii_hexdigit()),
        "{db_version}"
    );

    // secretObjects: the driver's controller creates the Secrets from the mounted files.
    let app_db = eventually("the synced Secret app-db", || async {
        secrets.get_opt("app-db").await.unwrap()
    })
    .await;
    assert_eq!(app_db.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        secret_data(&app_db, "password"),
        b"correct-horse-battery-staple"
    );
    assert_eq!(
        secret_data(&app_db, "config.json"),
        read(&target.join("config.json"))
    );
    let labels = app_db.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("app").map(String::as_str), Some("demo"));
    assert_eq!(
        labels
            .get("secrets-store.csi.k8s.io/managed")
            .map(String::as_str),
        Some("true")
    );
    let app_tls = eventually("the synced Secret app-tls", || async {
        secrets.get_opt("app-tls").await.unwrap()
    })
    .await;
    assert_eq!(app_tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let tls_crt = secret_data(&app_tls, "tls.crt");
    let tls_key = secret_data(&app_tls, "tls.key");
    assert_eq!(
        pem_blocks(&String::from_utf8(tls_crt.clone()).unwrap()),
        ["CERTIFICATE", "CERTIFICATE"],
        "leaf and CA from tls.pem"
    );
    assert!(
        String::from_utf8_lossy(&tls_pem).contains(&String::from_utf8(tls_crt.clone()).unwrap()),
        "tls.crt is the certificate part of the mounted tls.pem"
    );
    assert_eq!(
        public_key(&tls_key, false),
        public_key(&tls_crt, true),
        "tls.key belongs to the leaf certificate"
    );
    // The driver's patcher (every 5 s) makes the SecretProviderClassPodStatus own the Secrets.
    eventually("owner references on the synced Secrets", || async {
        let s = secrets.get("app-db").await.unwrap();
        s.metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| o.kind == "SecretProviderClassPodStatus" && o.name == spcps_name)
            .then_some(())
    })
    .await;

    // Rotation: a new version in the vault; kubelet republishes periodically (requiresRepublish)
    // and the driver re-mounts once the rotation interval has passed.
    let t_rotate = Instant::now();
    let new_version = vault.set_secret("kvbridge-demo", "db-password", "rotated-value-2");
    assert_ne!(new_version, db_version);
    eventually("the rotated file", || {
        let mut node = node.clone();
        let request = request.clone();
        let file = target.join("db-password");
        async move {
            node.node_publish_volume(request).await.unwrap();
            (std::fs::read(&file).ok()? == b"rotated-value-2").then_some(())
        }
    })
    .await;
    assert_eq!(read(&target.join("rotating-token/0")), b"token-v3");
    let spcps = eventually("the rotated version in the pod status", || async {
        let s = spcps_api.get(&spcps_name).await.unwrap();
        (versions(&s.data["status"]).get("secret/db-password") == Some(&new_version)).then_some(s)
    })
    .await;
    let after = versions(&spcps.data["status"]);
    assert_eq!(after.len(), before.len());
    let app_db = eventually("the rotated value in the synced Secret", || async {
        let s = secrets.get("app-db").await.unwrap();
        (secret_data(&s, "password") == b"rotated-value-2").then_some(s)
    })
    .await;
    assert_eq!(
        secret_data(&app_db, "config.json"),
        read(&target.join("config.json"))
    );
    let rotation_time = t_rotate.elapsed();

    // NodeUnpublishVolume: files gone, tmpfs unmounted, target removed.
    node.node_unpublish_volume(driver.unpublish_request(&pod_ref, VOLUME))
        .await
        .expect("NodeUnpublishVolume");
    assert_eq!(testenv::process::mount_type(&target), None, "unmounted");
    assert!(!target.exists(), "target removed");

    // No secret value in the provider's log.
    let log = std::fs::read_to_string(dir.join("provider.log")).unwrap();
    for value in [
        "correct-horse-battery-staple",
        "rotated-value-2",
        "kvbridge-dev-secret",
    ] {
        assert!(!log.contains(value), "provider log mentions a secret value");
    }
    eprintln!(
        "csi e2e: control plane start {:.2} s (shared), test {:.2} s, first NodePublishVolume \
         {:.0} ms, rotation to synced Secret {:.2} s",
        cp.start_time().as_secs_f64(),
        t_start.elapsed().as_secs_f64(),
        publish_time.as_secs_f64() * 1000.0,
        rotation_time.as_secs_f64()
    );
}
