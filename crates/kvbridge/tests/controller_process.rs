//! `kvbridge controller` as a real process against the real kube-apiserver (crates/testenv)
//! and `kvbridge dev-vault`: akv2k8s manifests applied with kubectl sync into Secrets, a new
//! vault version reaches the Secret within the refresh interval, /readyz and /metrics answer,
//! a deleted resource loses its Secret, and SIGTERM stops the process cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::Value;
use testenv::vault::{sum_counters, DevVaultProcess, EXAMPLE_CLIENT};
use testenv::ChildGuard;

const TENANT: &str = "7a1c3f0e-5d2b-4c8e-9f61-2b3c4d5e6f70";
const VAULT: &str = "akv2k8s-test";
const WAIT: Duration = Duration::from_secs(45);

fn kvbridge() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `sa_issuer_key`: the API server's service-account public key (workload identity).
fn seed(sa_issuer_key: &Path) -> String {
    let sa_issuer_key = sa_issuer_key.display();
    format!(
        r#"
tenant: {TENANT}
vaults:
  - name: {VAULT}
    secrets:
      - {{name: my-secret, value: "hello from the vault"}}
    certificates:
      - name: ca
        generate: {{subject: "CN=Controller Process CA", ca: true, keyType: EC, curve: P-256, validityDays: 365}}
        contentType: application/x-pem-file
      - name: my-certificate
        generate: {{subject: "CN=app.test", sans: [app.test], issuer: ca, keyType: EC, curve: P-256, validityDays: 30}}
        contentType: application/x-pkcs12
    accessPolicies:
      - {{identity: controller, secrets: [all], certificates: [all], keys: [all]}}
      - {{identity: {dev}, secrets: [all]}}
  - name: team-vault
    secrets:
      - {{name: team-only, value: "team secret"}}
    accessPolicies:
      - {{identity: wi-client, secrets: [get]}}
  # Each readable by one managed identity only (IMDS: the dev vault's endpoint).
  - name: mi-vault
    secrets:
      - {{name: mi-only, value: "user-assigned secret"}}
    accessPolicies:
      - {{identity: mi-user, secrets: [get]}}
  - name: node-vault
    secrets:
      - {{name: node-only, value: "system-assigned secret"}}
    accessPolicies:
      - {{identity: mi-node, secrets: [get]}}
identities:
  - {{clientId: mi-user, managedIdentity: true}}
  - {{clientId: mi-node, managedIdentity: true, systemAssigned: true}}
  - {{clientId: controller, secret: controller-secret}}
  - {{clientId: {dev}, secret: {dev_secret}}}
  - clientId: wi-client
    federatedCredentials:
      - issuer: https://kubernetes.default.svc.cluster.local
        subject: system:serviceaccount:rbac:app
        issuerKey: {sa_issuer_key}
"#,
        dev = EXAMPLE_CLIENT.0,
        dev_secret = EXAMPLE_CLIENT.1,
    )
}

fn dev_vault(cp: &testenv::ControlPlane, dir: &Path) -> DevVaultProcess {
    let seed_file = dir.join("seed.yaml");
    std::fs::write(&seed_file, seed(&cp.dir().join("service-account.pub"))).unwrap();
    DevVaultProcess::start(
        Path::new(kvbridge()),
        &dir.join("vault"),
        &seed_file,
        &dir.join("vault.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn eventually<T, F, Fut>(what: &str, controller: &ChildGuard, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            controller.exited().is_none(),
            "the controller exited: {}",
            controller.log_tail(30)
        );
        assert!(
            t0.elapsed() < WAIT,
            "timed out waiting for {what}; controller log:\n{}",
            controller.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn secret(client: &kube::Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

fn data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// The control plane with the CRD installed and namespace `ns`, or `None` (skipped).
async fn cluster(ns: &str) -> Option<(&'static testenv::ControlPlane, kube::Client)> {
    let cp = testenv::control_plane().await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = cp.client().await.unwrap();
    cp.install_crds(&client, &repo().join("deploy/helm/kvbridge/files/crds"))
        .await
        .unwrap();
    ensure_namespace(&client, ns).await;
    Some((cp, client))
}

/// A scenario's start: [`cluster`] with namespace `ns`, a temporary directory and a
/// `kvbridge dev-vault` process keeping its files there; `None` = skipped.
async fn scenario(
    ns: &str,
) -> Option<(
    &'static testenv::ControlPlane,
    kube::Client,
    tempfile::TempDir,
    DevVaultProcess,
)> {
    let (cp, client) = cluster(ns).await?;
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(cp, dir.path());
    Some((cp, client, dir, vault))
}

/// Creates the namespace `ns` unless it exists (the API server is shared by the tests).
async fn ensure_namespace(client: &kube::Client, ns: &str) {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {ns}: {e}"),
    }
}

/// The condition `type_` of the AzureKeyVaultSecret `name` in `ns`, if it has one.
async fn condition(
    client: &kube::Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Option<controller::crd::Condition> {
    let a = Api::<controller::crd::AzureKeyVaultSecret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .ok()?;
    a.status?.conditions?.into_iter().find(|c| c.type_ == type_)
}

/// The status (`True`/`False`) of the `Ready` condition of the AzureKeyVaultSecret `name`.
async fn ready_status(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    Some(condition(client, ns, name, "Ready").await?.status)
}

/// The events.k8s.io Events in `ns` as (type, reason, note).
fn events(cp: &testenv::ControlPlane, ns: &str) -> Vec<(String, String, String)> {
    let out = kubectl(cp, &["-n", ns, "get", "events.events.k8s.io", "-o", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let field = |f: &str| e[f].as_str().unwrap_or_default().to_string();
            (field("type"), field("reason"), field("note"))
        })
        .collect()
}

/// A running `kvbridge controller` and its HTTP ports.
struct Controller {
    child: ChildGuard,
    health_port: u16,
    metrics_port: u16,
}

impl Controller {
    /// `kvbridge controller` watching namespace `ns` only (tests in this file share one API
    /// server), its own credential a service principal from the environment.
    fn start(
        kubeconfig: &Path,
        vault: &DevVaultProcess,
        dir: &Path,
        (ns, lease_ns): (&str, &str),
        name: &str,
        extra: &[&str],
    ) -> Controller {
        let [health_port, metrics_port] = testenv::process::free_ports::<2>().unwrap();
        let mut cmd = Command::new(kvbridge());
        cmd.arg("controller")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--cloud-env-file")
            .arg(&vault.cloud_env_file)
            .arg("--ca-file")
            .arg(&vault.ca)
            .args(["--namespace", ns, "--lease-namespace", lease_ns])
            .args(["--refresh-interval", "2s", "--min-refresh-interval", "1s"])
            .args(["--managed-identity", "false", "--http-bind", "127.0.0.1"])
            .args(["--health-port", &health_port.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .args(extra)
            .env("AZURE_TENANT_ID", TENANT)
            .env("AZURE_CLIENT_ID", "controller")
            .env("AZURE_CLIENT_SECRET", "controller-secret")
            .env("POD_NAME", name)
            .env_remove("KUBECONFIG")
            .env("KVBRIDGE_LOG", "info");
        let child = testenv::process::spawn(name, cmd, &dir.join(format!("{name}.log"))).unwrap();
        Controller {
            child,
            health_port,
            metrics_port,
        }
    }

    /// Waits until /readyz answers 200 with `body` (`ok` or `standby`).
    async fn until_readyz(&self, what: &str, body: &str) {
        eventually(what, &self.child, || async {
            let (ok, got) = self.get("/readyz");
            (ok && got == body).then_some(())
        })
        .await;
    }

    fn get(&self, path: &str) -> (bool, String) {
        let port = if path == "/metrics" {
            self.metrics_port
        } else {
            self.health_port
        };
        curl(&["--fail", &format!("http://127.0.0.1:{port}{path}")])
    }
}

/// Runs kubectl against the control plane with `args`.
fn kubectl(cp: &testenv::ControlPlane, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(args)
        .output()
        .unwrap()
}

fn apply(cp: &testenv::ControlPlane, file: &Path) {
    let out = kubectl(cp, &["apply", "-f", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `manifest` to `path` and applies it with kubectl.
fn apply_text(cp: &testenv::ControlPlane, path: &Path, manifest: &str) {
    std::fs::write(path, manifest).unwrap();
    apply(cp, path);
}

async fn lease_holder(client: &kube::Client, ns: &str, name: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()?
        .spec?
        .holder_identity
}

/// The AzureKeyVaultSecret `app` in `ns`: the vault's `my-secret` into the Secret `app`, key
/// `value`.
fn app_akvs(ns: &str) -> String {
    format!(
        "apiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: app, namespace: {ns}}}\nspec:\n  vault: {{name: {VAULT}, object: {{name: my-secret, type: secret}}}}\n  output: {{secret: {{name: app, dataKey: value}}}}\n"
    )
}

/// `kvbridge controller` `name` in `ns` (its Lease there too) with its Event Grid endpoint on a
/// free port, wanting `token`; returns it and that port.
fn with_event_grid(
    cp: &testenv::ControlPlane,
    vault: &DevVaultProcess,
    dir: &Path,
    ns: &str,
    name: &str,
    token: &str,
) -> (Controller, u16) {
    let [eg_port] = testenv::process::free_ports::<1>().unwrap();
    let port = eg_port.to_string();
    let event_grid = ["--event-grid-port", &port, "--event-grid-token", token];
    let c = Controller::start(cp.kubeconfig(), vault, dir, (ns, ns), name, &event_grid);
    (c, eg_port)
}

/// A replica of the controller for the leader-election scenarios: namespace and Lease in `ns`,
/// lease duration 3 s.
fn replica(
    cp: &testenv::ControlPlane,
    vault: &DevVaultProcess,
    dir: &Path,
    ns: &str,
    name: &str,
) -> Controller {
    let lease = ["--lease-duration", "3s"];
    Controller::start(cp.kubeconfig(), vault, dir, (ns, ns), name, &lease)
}

/// Waits until the controller `name` holds the Lease `lease` in `ns`.
async fn until_leader(client: &kube::Client, ns: &str, lease: &str, c: &Controller, name: &str) {
    eventually(&format!("{name} leads"), &c.child, || async {
        (lease_holder(client, ns, lease).await.as_deref() == Some(name)).then_some(())
    })
    .await;
}

/// Waits until the key `key` of the Secret `name` in `ns` holds `value`.
async fn until_value(
    what: &str,
    controller: &ChildGuard,
    (client, ns): (&kube::Client, &str),
    (name, key): (&str, &str),
    value: &str,
) {
    eventually(what, controller, || async {
        let s = secret(client, ns, name).await?;
        (data(&s)[key] == value.as_bytes()).then_some(())
    })
    .await;
}

/// The `kvbridge.io/secrets-hash` annotation of the pod template of the workload `name` in
/// `ns` (a Deployment, StatefulSet or DaemonSet): `None` while it has none.
async fn secrets_hash<K>(client: &kube::Client, ns: &str, name: &str) -> Option<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    let w: K = Api::namespaced(client.clone(), ns).get(name).await.ok()?;
    let w = serde_json::to_value(w).ok()?;
    let hash = &w["spec"]["template"]["metadata"]["annotations"]["kvbridge.io/secrets-hash"];
    hash.as_str().map(str::to_string)
}

/// Sends SIGTERM and waits (15 s at most) for a successful exit; returns how long it took.
async fn stopped_by_sigterm(controller: &ChildGuard) -> Duration {
    sigterm(controller.pid());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = controller.exited() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}: {}", controller.log_tail(20));
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvbridge_controller_process_syncs_rotates_serves_health_and_stops() {
    let Some((cp, client, dir, vault)) = scenario("akv-test").await else {
        return;
    };
    let t_start = Instant::now();
    let (c, eg_port) = with_event_grid(cp, &vault, dir.path(), "akv-test", "controller-a", "tok");
    let controller = &c.child;

    // Ready once every watch listed.
    c.until_readyz("/readyz 200", "ok").await;
    eprintln!("kvbridge controller ready in {:?}", t_start.elapsed());
    // The Event Grid endpoint answers the subscription handshake (and wants the token).
    let validation = r#"[{"id":"v","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"code-123"}}]"#;
    let eg = format!("http://127.0.0.1:{eg_port}/eventgrid");
    let (ok, body) = curl(&["--fail", "-d", validation, &format!("{eg}?token=tok")]);
    assert!(ok && body.contains("code-123"), "{body}");
    let (ok, _) = curl(&["--fail", "-d", validation, &eg]);
    assert!(!ok, "a delivery without the token is refused");
    let (ok, body) = c.get("/healthz");
    assert!(ok && body == "ok", "{body}");

    // akv2k8s's documented manifests, unchanged, applied with kubectl.
    let fixtures = repo().join("crates/controller/tests/fixtures/akv2k8s");
    for f in ["secret-sync.yaml", "certificate-sync.yaml"] {
        apply(cp, &fixtures.join(f));
    }
    let t0 = Instant::now();
    let s = eventually("my-secret-from-akv", controller, || {
        secret(&client, "akv-test", "my-secret-from-akv")
    })
    .await;
    eprintln!(
        "kubectl apply returned -> Secret there after {:?}",
        t0.elapsed()
    );
    assert_eq!(data(&s)["secret-value"], b"hello from the vault");
    let tls = eventually("my-certificate-from-akv", controller, || {
        secret(&client, "akv-test", "my-certificate-from-akv")
    })
    .await;
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let tls = data(&tls);
    assert!(String::from_utf8_lossy(&tls["tls.crt"]).contains("BEGIN CERTIFICATE"));
    assert!(String::from_utf8_lossy(&tls["tls.key"]).contains("BEGIN PRIVATE KEY"));

    // A new vault version reaches the Secret within the 2 s refresh.
    let version = vault.set_secret(VAULT, "my-secret", "rotated value");
    let t0 = Instant::now();
    let output = ("my-secret-from-akv", "secret-value");
    until_value(
        "rotated Secret",
        controller,
        (&client, "akv-test"),
        output,
        "rotated value",
    )
    .await;
    eprintln!("vault version -> Secret updated in {:?}", t0.elapsed());
    let get_akvs = ["-n", "akv-test", "get", "akvs", "secret-sync", "-o", "json"];
    let out = kubectl(cp, &get_akvs);
    let akvs: Value = serde_json::from_slice(&out.stdout).unwrap();
    eventually("status.objectVersion", controller, || async {
        let out = kubectl(cp, &get_akvs);
        let a: Value = serde_json::from_slice(&out.stdout).ok()?;
        (a["status"]["objectVersion"] == version.as_str()).then_some(())
    })
    .await;
    assert_eq!(akvs["status"]["secretName"], "my-secret-from-akv");

    // Metrics: reconciles and vault GETs counted; no resource name or value in them.
    let (ok, metrics) = c.get("/metrics");
    assert!(ok, "{metrics}");
    assert!(
        metrics.contains("kvbridge_controller_reconciles_total{result=\"synced\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kvbridge_controller_vault_requests_total{result=\"ok\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("my-secret") && !metrics.contains("rotated value"));
    let log = std::fs::read_to_string(controller.log_path()).unwrap();
    assert!(
        !log.contains("rotated value") && !log.contains("hello from the vault"),
        "a secret value in the log"
    );

    // Delete: the Secret goes (no garbage collector runs in the test control plane).
    Api::<controller::crd::AzureKeyVaultSecret>::namespaced(client.clone(), "akv-test")
        .delete("secret-sync", &DeleteParams::default())
        .await
        .unwrap();
    eventually("Secret deleted", controller, || async {
        secret(&client, "akv-test", "my-secret-from-akv")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // SIGTERM: a clean, prompt exit.
    let took = stopped_by_sigterm(controller).await;
    eprintln!("SIGTERM -> exit in {took:?}");
}

/// Two replicas: one leads (holds the Lease and reconciles), the other stands by (ready, no
/// reconcile); when the leader dies the other takes over within the lease duration and keeps
/// the Secrets in sync; a clean shutdown releases the Lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_and_takeover() {
    const NS: &str = "replicas";
    const LEASE: &str = "kvbridge-controller";
    let Some((cp, client, dir, vault)) = scenario(NS).await else {
        return;
    };
    let a = replica(cp, &vault, dir.path(), NS, "replica-a");
    until_leader(&client, NS, LEASE, &a, "replica-a").await;
    a.until_readyz("replica-a ready", "ok").await;
    let b = replica(cp, &vault, dir.path(), NS, "replica-b");
    b.until_readyz("replica-b on standby", "standby").await;

    apply_text(cp, &dir.path().join("akvs.yaml"), &app_akvs(NS));
    let s = eventually("Secret from the leader", &a.child, || {
        secret(&client, NS, "app")
    })
    .await;
    let managers: Vec<String> = s
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "kvbridge-controller"),
        "{managers:?}"
    );
    // The follower reconciled nothing.
    let (ok, metrics) = b.get("/metrics");
    assert!(ok, "{metrics}");
    assert!(
        metrics.contains("kvbridge_controller_leader 0"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kvbridge_controller_reconciles_total{"),
        "{metrics}"
    );
    assert_eq!(
        lease_holder(&client, NS, LEASE).await.as_deref(),
        Some("replica-a")
    );

    // The leader dies without releasing: the follower takes over after the lease duration and
    // picks up a new vault version.
    a.child.kill();
    let t0 = Instant::now();
    until_leader(&client, NS, LEASE, &b, "replica-b").await;
    eprintln!(
        "leader killed -> follower holds the lease after {:?} (lease 3 s)",
        t0.elapsed()
    );
    vault.set_secret(VAULT, "my-secret", "after takeover");
    let output = ("app", "value");
    until_value(
        "Secret from the new leader",
        &b.child,
        (&client, NS),
        output,
        "after takeover",
    )
    .await;
    let (_, metrics) = b.get("/metrics");
    assert!(
        metrics.contains("kvbridge_controller_leader 1"),
        "{metrics}"
    );

    // A clean shutdown releases the lease at once.
    stopped_by_sigterm(&b.child).await;
    assert_eq!(lease_holder(&client, NS, LEASE).await, None);
}

/// The Helm chart's controller RBAC is exactly what the controller uses: it runs with a token of
/// its ServiceAccount (nothing else) and syncs Secrets and ConfigMaps, refuses outputs owned by
/// someone else, writes status and events, requests a workload identity token, restarts an
/// opted-in Deployment, StatefulSet and DaemonSet, deletes the outputs of deleted resources and
/// holds and renews its Lease; then the API server's audit log shows no forbidden request and
/// every rule atom of the chart as the only one allowing some request (testenv::rbac).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_manifest_rbac_is_sufficient() {
    const NS: &str = "rbac";
    let Some((cp, client)) = cluster(NS).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The chart's controller objects (release `kvbridge` in kvbridge-system), rendered by helm
    // from tests/k8s/build.sh.
    let helm = testenv::Layout::locate().bin("helm");
    let rendered = Command::new(&helm)
        .args(["template", "kvbridge"])
        .arg(repo().join("deploy/helm/kvbridge"))
        .args(["--namespace", "kvbridge-system"])
        .args([
            "--set",
            "linux.enabled=false,crds.install=false,controller.enabled=true",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/k8s/build.sh)", helm.display()));
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let chart = dir.path().join("chart.yaml");
    std::fs::write(&chart, &rendered.stdout).unwrap();
    ensure_namespace(&client, "kvbridge-system").await;
    apply(cp, &chart);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), "kvbridge-system")
        .create_subresource("token", "kvbridge-controller", &PostParams::default(), &req)
        .await
        .unwrap();
    let token = token.status.unwrap().token.unwrap();
    let kubeconfig = dir.path().join("sa.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\nusers:\n- name: sa\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: sa\n  context: {{cluster: t, user: sa}}\ncurrent-context: sa\n",
            cp.url(),
            cp.ca_file().display()
        ),
    )
    .unwrap();

    let vault = dev_vault(cp, dir.path());
    let c = Controller::start(
        &kubeconfig,
        &vault,
        dir.path(),
        (NS, "kvbridge-system"),
        "controller-rbac",
        // Renewed within the scenario (the Lease's update is one of the rules checked).
        &["--lease-duration=3s"],
    );
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("app".into()),
            annotations: Some(BTreeMap::from([(
                "azure.workload.identity/client-id".to_string(),
                "wi-client".to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    apply_text(
        cp,
        &dir.path().join("rbac.yaml"),
        &format!(
            "apiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: plain, namespace: {NS}}}\nspec:\n  vault: {{name: {VAULT}, object: {{name: my-secret, type: secret}}}}\n  output: {{secret: {{name: plain, dataKey: value}}}}\n---\napiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: wi, namespace: {NS}}}\nspec:\n  vault:\n    name: team-vault\n    object: {{name: team-only, type: secret}}\n    identity: {{serviceAccount: {{name: app}}}}\n  output: {{secret: {{name: wi, dataKey: value}}}}\n---\napiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: cm, namespace: {NS}}}\nspec:\n  vault: {{name: {VAULT}, object: {{name: my-secret, type: secret}}}}\n  output: {{configMap: {{name: cm, dataKey: value}}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: taken, namespace: {NS}}}\nstringData: {{value: someone else's}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: taken-cm, namespace: {NS}}}\ndata: {{value: someone else's}}\n---\napiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: taken, namespace: {NS}}}\nspec:\n  vault: {{name: {VAULT}, object: {{name: my-secret, type: secret}}}}\n  output: {{secret: {{name: taken, dataKey: value}}}}\n---\napiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: taken-cm, namespace: {NS}}}\nspec:\n  vault: {{name: {VAULT}, object: {{name: my-secret, type: secret}}}}\n  output: {{configMap: {{name: taken-cm, dataKey: value}}}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {NS}\n  annotations: {{kvbridge.io/restart-on-rotation: \"true\"}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n        - name: web\n          image: registry.example/web:1\n          envFrom: [{{secretRef: {{name: plain}}}}]\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: {NS}\n  annotations: {{kvbridge.io/restart-on-rotation: \"true\"}}\nspec:\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec:\n      containers:\n        - name: db\n          image: registry.example/db:1\n          envFrom: [{{secretRef: {{name: plain}}}}]\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\n  namespace: {NS}\n  annotations: {{kvbridge.io/restart-on-rotation: \"true\"}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec:\n      containers:\n        - name: agent\n          image: registry.example/agent:1\n          envFrom: [{{secretRef: {{name: plain}}}}]\n"
        ),
    );
    for (name, value) in [("plain", "hello from the vault"), ("wi", "team secret")] {
        until_value(name, &c.child, (&client, NS), (name, "value"), value).await;
    }
    eventually("status Ready", &c.child, || async {
        (ready_status(&client, NS, "plain").await? == "True").then_some(())
    })
    .await;
    let config_map = |want: &'static str| {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move {
                let cm: k8s_openapi::api::core::v1::ConfigMap =
                    Api::namespaced(client, NS).get("cm").await.ok()?;
                (cm.data?.get("value")? == want).then_some(())
            }
        }
    };
    eventually("ConfigMap", &c.child, config_map("hello from the vault")).await;
    // Outputs that exist and belong to someone else: refused (after a read), left unchanged.
    for name in ["taken", "taken-cm"] {
        eventually("refused", &c.child, || async {
            (ready_status(&client, NS, name).await? == "False").then_some(())
        })
        .await;
    }
    assert_eq!(
        data(&secret(&client, NS, "taken").await.unwrap())["value"],
        b"someone else's"
    );
    vault.set_secret(VAULT, "my-secret", "rotated for rbac");
    eventually(
        "ConfigMap rotated",
        &c.child,
        config_map("rotated for rbac"),
    )
    .await;
    eventually("Deployment restarted", &c.child, || {
        secrets_hash::<Deployment>(&client, NS, "web")
    })
    .await;
    eventually("StatefulSet restarted", &c.child, || {
        secrets_hash::<StatefulSet>(&client, NS, "db")
    })
    .await;
    eventually("DaemonSet restarted", &c.child, || {
        secrets_hash::<DaemonSet>(&client, NS, "agent")
    })
    .await;
    // Deleted resources: their outputs go (the controller reads the owner, then deletes).
    for akvs in ["cm", "wi"] {
        Api::<controller::crd::AzureKeyVaultSecret>::namespaced(client.clone(), NS)
            .delete(akvs, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually("outputs deleted", &c.child, || async {
        let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), NS)
            .get_opt("cm")
            .await
            .ok()?;
        (cm.is_none() && secret(&client, NS, "wi").await.is_none()).then_some(())
    })
    .await;
    let out = kubectl(cp, &["-n", NS, "get", "events.events.k8s.io", "-o", "json"]);
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(events.contains("RolloutTriggered"), "{events}");
    assert_eq!(
        lease_holder(&client, "kvbridge-system", "kvbridge-controller")
            .await
            .as_deref(),
        Some("controller-rbac")
    );
    // The Lease renewed at least once (an update).
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kvbridge-system");
    let renewed = leases.get("kvbridge-controller").await.unwrap();
    let first = renewed.spec.and_then(|s| s.renew_time);
    eventually("Lease renewed", &c.child, || async {
        let now = leases.get("kvbridge-controller").await.ok()?;
        (now.spec?.renew_time != first).then_some(())
    })
    .await;
    let log = std::fs::read_to_string(c.child.log_path()).unwrap();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.child.pid())).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or_default()
        .to_string();
    eprintln!("controller after the RBAC scenario: {rss}");

    // Exactly: no request forbidden, every rule atom (group x resource x verb) of the chart the
    // only one allowing some request the controller made (the API server's audit log).
    let manifests: Vec<serde_json::Value> =
        serde_yaml_ng::Deserializer::from_slice(&rendered.stdout)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &serde_json::Value| !v.is_null())
            .collect();
    let atoms = testenv::rbac::atoms_for(&manifests, "kvbridge-system", "kvbridge-controller");
    let requests = testenv::rbac::requests_by(
        &cp.audit_log(),
        "system:serviceaccount:kvbridge-system:kvbridge-controller",
    )
    .unwrap();
    let findings = testenv::rbac::check(&atoms, &requests);
    eprintln!("controller RBAC:\n{findings}");
    assert!(
        findings.exact(),
        "controller RBAC is not exact:\n{findings}"
    );
}

#[allow(unsafe_code)]
fn sigterm(pid: u32) {
    // SAFETY: kill(2) on the child's pid; no memory is touched.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

/// Event-driven refresh end to end: the dev vault (a process) has an Event Grid subscription
/// to the `kvbridge controller` process's endpoint (validated by the handshake, token in the
/// `aeg-sas-key` delivery header); a new vault version reaches the Secret at once, while the
/// resource's refresh interval is an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_vault_event_grid_events_refresh_long_before_the_interval() {
    const NS: &str = "eventgrid";
    let Some((cp, client, dir, vault)) = scenario(NS).await else {
        return;
    };
    let (c, eg_port) = with_event_grid(cp, &vault, dir.path(), NS, "controller-eg", "eg-token");
    let controller = &c.child;
    c.until_readyz("/readyz 200", "ok").await;

    // The subscription: the dev vault runs the Event Grid validation handshake against the
    // controller before accepting it; without the token the controller refuses it.
    let admin = format!(
        "https://localhost:{}/admin/eventgrid/subscriptions/controller",
        vault.port
    );
    let endpoint = format!("http://127.0.0.1:{eg_port}/eventgrid");
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&vault.ca)
        .args(["-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H"])
        .arg("Content-Type: application/json")
        .arg("-d")
        .arg(serde_json::json!({ "endpoint": endpoint }).to_string())
        .arg(&admin)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "400",
        "no token: refused"
    );
    let sub = serde_json::json!({
        "endpoint": endpoint,
        "schema": "EventGridSchema",
        "headers": {"aeg-sas-key": "eg-token"},
    });
    vault.curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "-d",
        &sub.to_string(),
        &admin,
    ]);

    apply_text(
        cp,
        &dir.path().join("akvs.yaml"),
        &format!(
            "apiVersion: spv.no/v2beta1
kind: AzureKeyVaultSecret
metadata: {{name: hourly, namespace: {NS}}}
spec:
  refreshInterval: 1h
  vault: {{name: {VAULT}, object: {{name: my-secret, type: secret}}}}
  output: {{secret: {{name: hourly, dataKey: value}}}}
"
        ),
    );
    eventually("Secret hourly", controller, || {
        secret(&client, NS, "hourly")
    })
    .await;

    // A new version: the dev vault's event, not the hourly refresh, brings it.
    vault.set_secret(VAULT, "my-secret", "new version via Event Grid");
    let t0 = Instant::now();
    let value = "new version via Event Grid";
    until_value(
        "Secret updated by the event",
        controller,
        (&client, NS),
        ("hourly", "value"),
        value,
    )
    .await;
    let took = t0.elapsed();
    eprintln!("dev vault new version -> Event Grid -> Secret updated in {took:?} (refresh 1 h)");
    assert!(took < Duration::from_secs(30), "{took:?}");
    let stats = vault.curl(&[&format!("https://localhost:{}/admin/eventgrid", vault.port)]);
    assert!(stats["stats"]["delivered"].as_u64() >= Some(1), "{stats}");
    let (ok, metrics) = c.get("/metrics");
    let triggered: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kvbridge_controller_event_reconciles_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(ok && triggered >= 1.0, "{metrics}");
}

/// A restart on rotation that fails is retried until it happens, across a controller that is
/// killed and a new leader: an admission policy denies every update of the namespace's
/// Deployments; a new vault version reaches the Secret, the status says the restart is pending
/// (`pendingRestarts`, `RestartPending=True`), a `RestartFailed` warning is published and the
/// pod template keeps its hash; the leader is SIGKILLed and another replica takes over (it
/// only has the status to know); once the policy goes, the template gets the new hash without
/// any further vault change and the pending state is cleared, even though the vault fails
/// (503) at that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_restart_on_rotation_is_retried_across_a_new_leader() {
    const NS: &str = "restart-retry";
    const POLICY: &str = "kvbridge-test-freeze-deployments";
    let Some((cp, client, dir, vault)) = scenario(NS).await else {
        return;
    };
    let a = replica(cp, &vault, dir.path(), NS, "retry-a");
    apply_text(
        cp,
        &dir.path().join("app.yaml"),
        &format!(
            "{}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {NS}\n  annotations: {{kvbridge.io/restart-on-rotation: \"true\"}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n        - name: web\n          image: registry.example/web:1\n          envFrom: [{{secretRef: {{name: app}}}}]\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n  namespace: {NS}\n  annotations: {{kvbridge.io/restart-on-rotation: \"true\"}}\nspec:\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec:\n      containers:\n        - name: db\n          image: registry.example/db:1\n          env: [{{name: V, valueFrom: {{secretKeyRef: {{name: app, key: value}}}}}}]\n",
            app_akvs(NS)
        ),
    );
    let akvs_api = Api::<controller::crd::AzureKeyVaultSecret>::namespaced(client.clone(), NS);
    let status = || async {
        akvs_api
            .get("app")
            .await
            .ok()
            .and_then(|a| a.status)
            .unwrap_or_default()
    };
    let condition = |st: &controller::crd::AzureKeyVaultSecretStatus, t: &str| {
        st.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .cloned()
    };
    eventually("first sync", &a.child, || async {
        let st = status().await;
        (condition(&st, "Ready")?.status == "True").then_some(())
    })
    .await;
    let template_hash = || secrets_hash::<Deployment>(&client, NS, "web");
    assert_eq!(template_hash().await, None, "first sync is no rotation");

    // Freeze the namespace's Deployments: a ValidatingAdmissionPolicy denying every UPDATE
    // (patches included), bound to this namespace only (the API server is shared).
    apply_text(
        cp,
        &dir.path().join("policy.yaml"),
        &format!(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata: {{name: {POLICY}}}\nspec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n      - {{apiGroups: [apps], apiVersions: [v1], operations: [UPDATE], resources: [deployments]}}\n  validations:\n    - {{expression: 'false', message: 'deployments are frozen by the test'}}\n---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata: {{name: {POLICY}}}\nspec:\n  policyName: {POLICY}\n  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchLabels: {{kubernetes.io/metadata.name: {NS}}}\n"
        ),
    );
    // The policy takes effect asynchronously: wait until a dry-run patch is denied.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let probe = serde_json::json!({"metadata": {"annotations": {"probe": "x"}}});
    let dry_run = kube::api::PatchParams {
        dry_run: true,
        ..Default::default()
    };
    eventually("the admission policy denies updates", &a.child, || async {
        let r = deployments
            .patch("web", &dry_run, &kube::api::Patch::Merge(&probe))
            .await;
        match r {
            Err(kube::Error::Api(e)) if e.message.contains("frozen") => Some(()),
            _ => None,
        }
    })
    .await;

    let version = vault.set_secret(VAULT, "my-secret", "rotated while frozen");
    let output = ("app", "value");
    until_value(
        "Secret rotated",
        &a.child,
        (&client, NS),
        output,
        "rotated while frozen",
    )
    .await;
    let t0 = Instant::now();
    let st = eventually("restart pending in the status", &a.child, || async {
        let st = status().await;
        let c = condition(&st, "RestartPending")?;
        (c.status == "True").then_some(st)
    })
    .await;
    eprintln!(
        "restart pending in the status {:?} after the rotation",
        t0.elapsed()
    );
    let pending = condition(&st, "RestartPending").unwrap();
    assert_eq!(pending.reason, "RestartFailed");
    assert!(
        pending.message.contains("Secret app")
            && pending.message.contains("Deployment web")
            && pending.message.contains("frozen"),
        "{}",
        pending.message
    );
    assert_eq!(
        st.pending_restarts,
        Some(vec![controller::crd::PendingRestart {
            kind: "Secret".into(),
            name: "app".into()
        }])
    );
    let ready = condition(&st, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Synced")
    );
    assert_eq!(st.object_version.as_deref(), Some(version.as_str()));
    let events = || events(cp, NS);
    assert!(
        events().iter().any(|(t, r, n)| t == "Warning"
            && r == "RestartFailed"
            && n.contains("Deployment web")),
        "{:?}",
        events()
    );
    assert_eq!(
        template_hash().await,
        None,
        "the denied patch changed nothing"
    );
    // The StatefulSet (not denied) was restarted all the same, once.
    let sts_hash = || secrets_hash::<StatefulSet>(&client, NS, "db");
    let sts = eventually("StatefulSet restarted", &a.child, sts_hash).await;
    assert!(
        !pending.message.contains("StatefulSet"),
        "{}",
        pending.message
    );
    assert!(
        events().iter().any(|(t, r, n)| t == "Normal"
            && r == "RolloutTriggered"
            && n.contains("StatefulSet db")),
        "{:?}",
        events()
    );

    // The leader dies without a word (SIGKILL: no lease release); another replica takes over
    // with nothing but the status to tell it a restart is pending, and keeps retrying.
    a.child.kill();
    // No vault retries in this one: its reads fail fast once the vault fails (below).
    let no_retries = ["--lease-duration", "3s", "--max-retries", "0"];
    let b = Controller::start(
        cp.kubeconfig(),
        &vault,
        dir.path(),
        (NS, NS),
        "retry-b",
        &no_retries,
    );
    let t0 = Instant::now();
    until_leader(&client, NS, "kvbridge-controller", &b, "retry-b").await;
    eventually("retry-b retries the restart", &b.child, || async {
        let log = std::fs::read_to_string(b.child.log_path()).ok()?;
        log.contains("restart on rotation failed").then_some(())
    })
    .await;
    eprintln!(
        "leader killed -> new leader retried the restart in {:?}",
        t0.elapsed()
    );
    let st = status().await;
    assert_eq!(condition(&st, "RestartPending").unwrap().status, "True");
    assert!(st.pending_restarts.is_some());
    assert_eq!(template_hash().await, None);

    // The vault fails (every data-plane request 503) and then the denial goes: the restart
    // happens without the vault, while the resource shows the vault failure.
    vault.set_faults(&serde_json::json!({"rate_503": 1.0}));
    eventually("Ready=False for the failing vault", &b.child, || async {
        let c = condition(&status().await, "Ready")?;
        (c.status == "False" && c.reason == "VaultUnavailable").then_some(())
    })
    .await;
    for kind in [
        "validatingadmissionpolicybinding",
        "validatingadmissionpolicy",
    ] {
        let out = kubectl(cp, &["delete", kind, POLICY]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let t0 = Instant::now();
    let hash = eventually(
        "Deployment restarted after the denial went",
        &b.child,
        template_hash,
    )
    .await;
    eprintln!("denial removed -> template annotated in {:?}", t0.elapsed());
    assert_eq!(hash, sts, "one hash for the same outputs");
    let st = eventually("pending state cleared", &b.child, || async {
        let st = status().await;
        let c = condition(&st, "RestartPending")?;
        (c.status == "False" && st.pending_restarts.is_none()).then_some(st)
    })
    .await;
    assert_eq!(
        condition(&st, "RestartPending").unwrap().reason,
        "Restarted"
    );
    let ready = condition(&st, "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "VaultUnavailable"),
        "restarted while the vault failed"
    );
    vault.set_faults(&serde_json::json!({}));
    let st = eventually("Ready again once the vault answers", &b.child, || async {
        let st = status().await;
        (condition(&st, "Ready")?.status == "True").then_some(st)
    })
    .await;
    assert_eq!(
        st.object_version.as_deref(),
        Some(version.as_str()),
        "no vault change was needed"
    );
    assert!(
        events().iter().any(|(t, r, n)| t == "Normal"
            && r == "RolloutTriggered"
            && n.contains("Deployment web")),
        "{:?}",
        events()
    );
    // Nothing left to retry: the template keeps its hash, no more patches.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(template_hash().await.as_deref(), Some(hash.as_str()));
    assert_eq!(sts_hash().await.as_deref(), Some(sts.as_str()));
    let log = std::fs::read_to_string(b.child.log_path()).unwrap();
    assert!(
        !log.contains("rotated while frozen"),
        "a secret value in the log"
    );
}

/// Per-object managed identity (IMDS; here the dev vault's IMDS-shaped endpoint through
/// `--imds-endpoint`): `managedIdentity: {clientId}` reads a vault only that user-assigned
/// identity may read (not the controller's own identity, not the system-assigned one);
/// `managedIdentity: {}` reads a vault only the system-assigned identity may read; a client id
/// the endpoint does not know ends with `Ready=False` naming the managed identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_object_managed_identity_user_and_system_assigned() {
    const NS: &str = "managed-identity";
    let Some((cp, client, dir, vault)) = scenario(NS).await else {
        return;
    };
    let imds = format!("https://localhost:{}", vault.port);
    let c = Controller::start(
        cp.kubeconfig(),
        &vault,
        dir.path(),
        (NS, NS),
        "controller-mi",
        &["--imds-endpoint", &imds],
    );
    let counters = format!("{imds}/admin/counters");
    let imds_tokens = || {
        sum_counters(&vault.curl(&[&counters]), |e| {
            e["operation"] == "ManagedIdentityToken"
        })
    };
    assert_eq!(imds_tokens(), 0);
    let akvs = |name: &str, (vault, object): (&str, &str), identity: &str| {
        format!(
            "apiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: {name}, namespace: {NS}}}\nspec:\n  vault:\n    name: {vault}\n    object: {{name: {object}, type: secret}}\n    {identity}\n  output: {{secret: {{name: {name}, dataKey: value}}}}\n"
        )
    };
    let user_vault = ("mi-vault", "mi-only");
    let manifests = [
        akvs(
            "user-assigned",
            user_vault,
            "identity: {managedIdentity: {clientId: mi-user}}",
        ),
        akvs(
            "system-assigned",
            ("node-vault", "node-only"),
            "identity: {managedIdentity: {}}",
        ),
        akvs(
            "unknown-client",
            user_vault,
            "identity: {managedIdentity: {clientId: not-on-this-node}}",
        ),
        akvs("controller-own", user_vault, ""),
    ];
    apply_text(cp, &dir.path().join("mi.yaml"), &manifests.join("---\n"));
    // The Ready condition of `name` once its status is `want`.
    let ready = |name: &'static str, want: &'static str| {
        let client = client.clone();
        move || {
            let client = client.clone();
            async move {
                let ready = condition(&client, NS, name, "Ready").await?;
                (ready.status == want).then_some(ready)
            }
        }
    };
    for (name, value) in [
        ("user-assigned", "user-assigned secret"),
        ("system-assigned", "system-assigned secret"),
    ] {
        until_value(name, &c.child, (&client, NS), (name, "value"), value).await;
        let synced = eventually(name, &c.child, ready(name, "True")).await;
        assert_eq!(synced.reason, "Synced");
    }
    // At least one IMDS token per identity (tokens are cached, so not one per refresh).
    assert!(imds_tokens() >= 2);
    let own = eventually(
        "controller-own denied",
        &c.child,
        ready("controller-own", "False"),
    )
    .await;
    // The dev vault's 403 names the caller: the controller's own identity.
    assert!(
        own.reason == "VaultAccessDenied" && own.message.contains("appid=controller;"),
        "{}: {}",
        own.reason,
        own.message
    );
    let unknown = eventually(
        "unknown-client fails",
        &c.child,
        ready("unknown-client", "False"),
    )
    .await;
    eprintln!("unknown client id: {}: {}", unknown.reason, unknown.message);
    assert!(
        unknown.reason == "IdentityUnavailable"
            && unknown
                .message
                .contains("managed identity credential (client id not-on-this-node)")
            && unknown.message.contains("Identity not found"),
        "{}: {}",
        unknown.reason,
        unknown.message
    );
    for name in ["unknown-client", "controller-own"] {
        assert!(secret(&client, NS, name).await.is_none(), "{name}");
    }
    let events = events(cp, NS);
    assert!(
        events.iter().any(|(t, r, n)| t == "Warning"
            && r == "IdentityUnavailable"
            && n.contains("not-on-this-node")),
        "{events:?}"
    );
    let log = std::fs::read_to_string(c.child.log_path()).unwrap();
    for value in ["user-assigned secret", "system-assigned secret"] {
        assert!(!log.contains(value), "a secret value in the log");
        assert!(
            !events.iter().any(|(_, _, n)| n.contains(value)),
            "a secret value in an event"
        );
    }
}
