//! The controller against the real kube-apiserver (testenv) and the dev vault (HTTPS, in
//! process): akv2k8s's manifests sync unchanged, one vault object shared across namespaces is
//! fetched once, new vault versions reach the Secrets, a foreign Secret is refused, a vault
//! outage leaves the Secrets alone and says so, deleted resources lose their outputs, and a
//! steady state writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use controller::crd::AzureKeyVaultSecret;
use controller::metrics::Metrics;
use controller::reconcile::Settings;
use controller::run::{Health, Options, Runner};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use tokio::time::Instant;

const TENANT: &str = "11111111-2222-3333-4444-555555555555";
const VAULT: &str = "akv2k8s-test";
const WAIT: Duration = Duration::from_secs(30);

/// `sa_issuer_key`: the test control plane's service-account public key, so that the dev vault
/// accepts the ServiceAccount tokens the TokenRequest API issues (workload identity).
fn seed(sa_issuer_key: &Path) -> String {
    let sa_issuer_key = sa_issuer_key.display();
    format!(
        r#"
tenant: {TENANT}
vaults:
  - name: {VAULT}
    secrets:
      - {{name: my-secret, value: "hello from the vault"}}
      - {{name: my-padded-secret, value: "  padded  "}}
      - {{name: akv2k8s-multi-key-test, value: '{{"host":"db.test","user":"app","password":"p@ss"}}'}}
      - {{name: shared, value: "shared-v1"}}
      - {{name: rotating, value: "r1"}}
      - {{name: evented, value: "e1"}}
    certificates:
      - name: ca
        generate: {{subject: "CN=Controller Test CA", ca: true, keyType: EC, curve: P-256, validityDays: 365}}
        contentType: application/x-pem-file
      - name: my-certificate
        generate: {{subject: "CN=app.test", sans: [app.test], issuer: ca, keyType: EC, curve: P-256, validityDays: 30}}
        contentType: application/x-pkcs12
    keys:
      - {{name: akv2k8s-test-key, kty: RSA, size: 2048}}
    accessPolicies:
      - {{identity: controller, secrets: [all], certificates: [all], keys: [all]}}
  # Readable only with a per-object identity, not with the controller's own.
  - name: team-vault
    secrets:
      - {{name: team-only, value: "team secret"}}
    accessPolicies:
      - {{identity: wi-client, secrets: [get]}}
      - {{identity: sp-client, secrets: [get]}}
identities:
  - {{clientId: controller, secret: controller-secret}}
  - {{clientId: sp-client, secret: sp-secret}}
  - clientId: wi-client
    federatedCredentials:
      - issuer: https://kubernetes.default.svc.cluster.local
        subject: system:serviceaccount:identities:app
        issuerKey: {sa_issuer_key}
"#
    )
}

struct Env {
    _dir: tempfile::TempDir,
    dv: devvault::Running,
    client: kube::Client,
    kubeconfig: PathBuf,
    runner_ctx: Arc<controller::reconcile::Ctx>,
    http: reqwest::Client,
}

async fn start() -> Option<Env> {
    let cp = testenv::control_plane().await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = cp.client().await.expect("client");
    cp.install_crds(
        &client,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/kvbridge/files/crds"),
    )
    .await
    .expect("CRD");
    cp.install_csi_driver_crds(&client)
        .await
        .expect("SecretProviderClass CRD");

    let dir = tempfile::tempdir().unwrap();
    let seed_path = dir.path().join("seed.yaml");
    std::fs::write(&seed_path, seed(&cp.dir().join("service-account.pub"))).unwrap();
    let mut opts = devvault::Options::new("127.0.0.1:0".parse().unwrap(), dir.path().join("dv"));
    opts.seed = Some(seed_path);
    let dv = devvault::start(opts).await.expect("dev vault");

    // The controller's own credential: the environment (as in a pod with a service principal).
    std::env::set_var("AZURE_TENANT_ID", TENANT);
    std::env::set_var("AZURE_CLIENT_ID", "controller");
    std::env::set_var("AZURE_CLIENT_SECRET", "controller-secret");

    let transport = keyvault::Transport::new(&keyvault::ClientOptions {
        ca_file: Some(dv.info.ca.clone()),
        use_system_roots: false,
        timeout: Duration::from_secs(3),
        max_retries: 1,
        retry_base_delay: Duration::from_millis(50),
        retry_max_delay: Duration::from_millis(200),
        deadline: Duration::from_secs(5),
        ..keyvault::ClientOptions::default()
    })
    .unwrap();
    let mut cloud = mount::target::CloudConfig::new(mount::cloud_env::CloudEnvFiles::anywhere());
    cloud.default_cloud = Some(keyvault::Cloud::from_env_file(&dv.info.cloud_env_file).unwrap());
    let opts = Options {
        settings: Settings {
            default_refresh: Duration::from_secs(3),
            min_refresh: Duration::from_secs(1),
            tenant_id: Some(TENANT.into()),
            ..Settings::default()
        },
        namespace: None,
        selector: None,
        concurrency: 8,
        cloud,
        clients: Arc::new(mount::clients::ClientPool::new(
            transport,
            mount::identity::LocalEndpoints::default(),
        )),
        instance: Some("test".into()),
        sync_secret_provider_classes: true,
    };
    let runner = Runner::new(client.clone(), opts, Arc::new(Metrics::new()));
    let ctx = runner.ctx.clone();
    tokio::spawn(runner.run(Arc::new(Health::default()), std::future::pending()));
    let ca = std::fs::read(&dv.info.ca).unwrap();
    let http = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve(&format!("{VAULT}.localhost"), dv.addr)
        .use_rustls_tls()
        .build()
        .unwrap();
    Some(Env {
        kubeconfig: cp.kubeconfig().to_path_buf(),
        _dir: dir,
        dv,
        client,
        runner_ctx: ctx,
        http,
    })
}

impl Env {
    async fn namespace(&self, name: &str) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("{e}"),
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubectl {args:?}: {text}");
        text
    }

    fn apply_yaml(&self, yaml: &str) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.yaml");
        std::fs::write(&p, yaml).unwrap();
        self.kubectl(&["apply", "-f", p.to_str().unwrap()]);
    }

    /// A new version of a vault secret through the Key Vault REST API.
    async fn set_secret(&self, name: &str, value: &str) -> String {
        let token: Value = self
            .http
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", self.dv.info.url))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "controller"),
                ("client_secret", "controller-secret"),
                ("scope", "https://vault.azure.net/.default"),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = format!(
            "{}/secrets/{name}?api-version=7.4",
            self.dv.info.vaults[VAULT]
        );
        let bundle: Value = self
            .http
            .put(url)
            .bearer_auth(token["access_token"].as_str().unwrap())
            .json(&json!({ "value": value }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        bundle["id"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string()
    }

    fn gets(&self, object: &str) -> u64 {
        let snap = self.dv.app.counters.snapshot();
        snap["counters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["object"] == object && c["operation"].as_str().unwrap().starts_with("Get")
            })
            .map(|c| c["count"].as_u64().unwrap())
            .sum()
    }
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
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

async fn secret_data(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Option<BTreeMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = api.get_opt(name).await.unwrap()?;
    Some(
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    )
}

async fn ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> Option<(String, String, AzureKeyVaultSecret)> {
    let api: Api<AzureKeyVaultSecret> = Api::namespaced(client.clone(), ns);
    let a = api.get(name).await.unwrap();
    let c = a
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?
        .clone();
    Some((c.status, c.reason, a))
}

async fn wait_ready(
    client: &kube::Client,
    ns: &str,
    name: &str,
    status: &str,
    reason: &str,
) -> AzureKeyVaultSecret {
    wait_for(&format!("{ns}/{name} Ready={status} {reason}"), || async {
        let (s, r, a) = ready(client, ns, name).await?;
        (s == status && r == reason).then_some(a)
    })
    .await
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/akv2k8s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_against_the_real_api_server_and_dev_vault() {
    let Some(env) = start().await else { return };
    let c = &env.client;

    // --- akv2k8s's manifests, applied with kubectl unchanged, sync.
    env.namespace("akv-test").await;
    env.kubectl(&["apply", "-f", fixtures().to_str().unwrap()]);
    for name in [
        "secret-sync",
        "certificate-sync",
        "db-config",
        "secret-configmap-sync",
        "signing-key-sync",
        "v1-transform",
        "v1alpha1-transforms",
        "v2alpha1-tls",
    ] {
        let a = wait_ready(c, "akv-test", name, "True", "Synced").await;
        let st = a.status.unwrap();
        assert_eq!(st.observed_generation, a.metadata.generation, "{name}");
        assert!(st.object_version.is_some_and(|v| v.len() == 32), "{name}");
    }
    let d = secret_data(c, "akv-test", "my-secret-from-akv")
        .await
        .unwrap();
    assert_eq!(d["secret-value"], b"hello from the vault");
    let cm: ConfigMap = Api::namespaced(c.clone(), "akv-test")
        .get("my-secret-from-akv")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["secret-value"], "hello from the vault");
    let tls: Secret = Api::namespaced(c.clone(), "akv-test")
        .get("my-certificate-from-akv")
        .await
        .unwrap();
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let tls_data = tls.data.unwrap();
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(tls_data.contains_key(k), "{k}");
    }
    assert!(
        String::from_utf8_lossy(&tls_data["tls.key"].0).starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let db = secret_data(c, "akv-test", "db-config").await.unwrap();
    assert_eq!(db["host"], b"db.test");
    assert_eq!(db["password"], b"p@ss");
    let key = secret_data(c, "akv-test", "my-signing-key-from-akv")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&key["signing-key"]).starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(
        secret_data(c, "akv-test", "v1-transform").await.unwrap()["value"],
        b"padded"
    );
    assert_eq!(
        secret_data(c, "akv-test", "v1alpha1-transforms")
            .await
            .unwrap()["value"],
        b"cGFkZGVk"
    );
    // Owner reference, managed-by label, content hash = status.secretHash.
    let s: Secret = Api::namespaced(c.clone(), "akv-test")
        .get("my-secret-from-akv")
        .await
        .unwrap();
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    let (_, _, akvs) = ready(c, "akv-test", "secret-sync").await.unwrap();
    assert_eq!(owner.uid, akvs.uid().unwrap());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(s.labels()["app.kubernetes.io/managed-by"], "kvbridge");
    assert_eq!(
        s.annotations().get("kvbridge.io/content-hash"),
        akvs.status.as_ref().unwrap().secret_hash.as_ref()
    );
    let out = env.kubectl(&["-n", "akv-test", "get", "akvs", "secret-sync"]);
    assert!(
        out.contains("True") && out.contains("my-secret-from-akv"),
        "{out}"
    );

    // --- One vault object in three namespaces: one GET per refresh; a new version reaches all.
    let shared = |ns: &str| {
        format!(
            "apiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: shared, namespace: {ns}}}\nspec:\n  vault: {{name: {VAULT}, object: {{name: shared, type: secret}}}}\n  refreshInterval: 1h\n  output: {{secret: {{name: shared, dataKey: value}}}}\n"
        )
    };
    let before = env.gets("shared");
    for ns in ["team-a", "team-b", "team-c"] {
        env.namespace(ns).await;
        env.apply_yaml(&shared(ns));
    }
    for ns in ["team-a", "team-b", "team-c"] {
        wait_ready(c, ns, "shared", "True", "Synced").await;
        assert_eq!(
            secret_data(c, ns, "shared").await.unwrap()["value"],
            b"shared-v1"
        );
    }
    assert_eq!(
        env.gets("shared") - before,
        1,
        "one GET for three resources"
    );

    // A new version, picked up by the 3 s refresh of a fourth resource using the same object:
    // the change fans out to the three 1h resources at once.
    env.namespace("team-d").await;
    env.apply_yaml(&shared("team-d").replace("refreshInterval: 1h", "refreshInterval: 2s"));
    wait_ready(c, "team-d", "shared", "True", "Synced").await;
    let v2 = env.set_secret("shared", "shared-v2").await;
    let t0 = Instant::now();
    for ns in ["team-a", "team-b", "team-c", "team-d"] {
        wait_for(&format!("{ns}/shared v2"), || async {
            let d = secret_data(c, ns, "shared").await?;
            (d["value"] == b"shared-v2").then_some(())
        })
        .await;
    }
    eprintln!(
        "vault change -> 4 Secrets updated in {:?} (refresh 2 s)",
        t0.elapsed()
    );
    let a = wait_ready(c, "team-a", "shared", "True", "Synced").await;
    wait_for("team-a status v2", || async {
        let (_, _, a) = ready(c, "team-a", "shared").await?;
        (a.status?.object_version? == v2).then_some(())
    })
    .await;
    assert!(a.status.unwrap().last_azure_update.is_some());

    // --- A Secret someone else owns is refused, untouched, with an event and a condition.
    env.namespace("foreign").await;
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("theirs".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("k".to_string(), "mine".to_string())])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(c.clone(), "foreign")
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    env.apply_yaml(&format!(
        "apiVersion: spv.no/v1\nkind: AzureKeyVaultSecret\nmetadata: {{name: grabby, namespace: foreign}}\nspec:\n  vault: {{name: {VAULT}, object: {{name: my-secret, type: secret}}}}\n  output: {{secret: {{name: theirs, dataKey: k}}}}\n"
    ));
    let a = wait_ready(c, "foreign", "grabby", "False", "NotOwned").await;
    assert!(a.status.unwrap().conditions.unwrap()[0]
        .message
        .contains("theirs"));
    assert_eq!(
        secret_data(c, "foreign", "theirs").await.unwrap()["k"],
        b"mine"
    );
    let events = env.kubectl(&["-n", "foreign", "get", "events.events.k8s.io", "-o", "json"]);
    assert!(events.contains("NotOwned"), "{events}");

    // --- Vault outage: Secrets untouched, Ready=False VaultUnavailable; back to True after.
    let before = secret_data(c, "team-d", "shared").await.unwrap();
    env.dv.app.faults.set(devvault::FaultConfig {
        rate_503: 1.0,
        ..Default::default()
    });
    wait_ready(c, "team-d", "shared", "False", "VaultUnavailable").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        secret_data(c, "team-d", "shared").await.unwrap(),
        before,
        "outage never blanks"
    );
    env.dv.app.faults.set(devvault::FaultConfig::default());
    wait_ready(c, "team-d", "shared", "True", "Synced").await;
    // Every resource recovers (the others within their back-off or refresh).
    for ns in ["team-a", "team-b", "team-c"] {
        wait_ready(c, ns, "shared", "True", "Synced").await;
    }
    for name in [
        "secret-sync",
        "certificate-sync",
        "db-config",
        "secret-configmap-sync",
        "signing-key-sync",
        "v1-transform",
        "v1alpha1-transforms",
        "v2alpha1-tls",
    ] {
        wait_ready(c, "akv-test", name, "True", "Synced").await;
    }
    wait_ready(c, "foreign", "grabby", "False", "NotOwned").await;

    // --- Steady state: nothing changes, nothing is written (status included).
    let writes = |ctx: &controller::reconcile::Ctx| {
        ctx.api_calls
            .writes
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w0 = writes(&env.runner_ctx);
    let gets0 = env.gets("shared");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        writes(&env.runner_ctx),
        w0,
        "no API writes when nothing changed"
    );
    let gets = env.gets("shared") - gets0;
    assert!(
        (2..=5).contains(&gets),
        "one GET per 2 s refresh of the shared object: {gets}"
    );

    // --- Delete: the outputs go (no garbage collector runs in the test control plane).
    Api::<AzureKeyVaultSecret>::namespaced(c.clone(), "team-b")
        .delete("shared", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("team-b/shared Secret deleted", || async {
        secret_data(c, "team-b", "shared")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // A renamed output: the old Secret goes, the new one comes.
    env.apply_yaml(&shared("team-c").replace("name: shared, dataKey", "name: renamed, dataKey"));
    wait_for("team-c rename", || async {
        let old = secret_data(c, "team-c", "shared").await;
        let new = secret_data(c, "team-c", "renamed").await;
        (old.is_none() && new.is_some()).then_some(())
    })
    .await;
    // The foreign Secret is still there.
    assert!(secret_data(c, "foreign", "theirs").await.is_some());

    // --- Per-object identity: workload identity through a ServiceAccount (TokenRequest API,
    // the token checked by the dev vault against the API server's signing key) and a service
    // principal from a Secret read a vault the controller's own identity cannot.
    env.namespace("identities").await;
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
    Api::<ServiceAccount>::namespaced(c.clone(), "identities")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let creds = Secret {
        metadata: ObjectMeta {
            name: Some("sp-creds".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([
            ("clientid".to_string(), "sp-client".to_string()),
            ("clientsecret".to_string(), "sp-secret".to_string()),
        ])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(c.clone(), "identities")
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let team = |name: &str, identity: &str| {
        format!(
            "apiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: {name}, namespace: identities}}\nspec:\n  vault:\n    name: team-vault\n    object: {{name: team-only, type: secret}}\n{identity}  output: {{secret: {{name: {name}, dataKey: value}}}}\n"
        )
    };
    env.apply_yaml(&team(
        "via-sa",
        "    identity: {serviceAccount: {name: app}}\n",
    ));
    env.apply_yaml(&team(
        "via-sp",
        "    identity: {servicePrincipal: {secretRef: {name: sp-creds}}}\n",
    ));
    env.apply_yaml(&team("via-controller", ""));
    env.apply_yaml(&team(
        "via-unknown-sa",
        "    identity: {serviceAccount: {name: nobody}}\n",
    ));
    for name in ["via-sa", "via-sp"] {
        wait_ready(c, "identities", name, "True", "Synced").await;
        assert_eq!(
            secret_data(c, "identities", name).await.unwrap()["value"],
            b"team secret",
            "{name}"
        );
    }
    wait_ready(
        c,
        "identities",
        "via-controller",
        "False",
        "VaultAccessDenied",
    )
    .await;
    wait_ready(
        c,
        "identities",
        "via-unknown-sa",
        "False",
        "IdentityUnavailable",
    )
    .await;
    assert!(secret_data(c, "identities", "via-controller")
        .await
        .is_none());

    // --- Restart on rotation: an opted-in Deployment using the Secret gets its pod template
    // annotated when a new vault version changes the Secret (not at first sync); a Deployment
    // that did not opt in, or uses other Secrets, is left alone.
    env.namespace("rollout").await;
    env.apply_yaml(&format!(
        "apiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: app-secret, namespace: rollout}}\nspec:\n  vault: {{name: {VAULT}, object: {{name: rotating, type: secret}}}}\n  refreshInterval: 1s\n  output: {{secret: {{name: app-secret, dataKey: token}}}}\n"
    ));
    let deployment = |name: &str, opt_in: bool, secret: &str| {
        let annotations = if opt_in {
            "  annotations: {kvbridge.io/restart-on-rotation: \"true\"}\n"
        } else {
            ""
        };
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: rollout\n{annotations}spec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec:\n      containers:\n        - name: app\n          image: registry.example/app:1\n          env:\n            - name: TOKEN\n              valueFrom: {{secretKeyRef: {{name: {secret}, key: token}}}}\n"
        )
    };
    env.apply_yaml(&deployment("opted", true, "app-secret"));
    env.apply_yaml(&deployment("not-opted", false, "app-secret"));
    env.apply_yaml(&deployment("unrelated", true, "something-else"));
    wait_ready(c, "rollout", "app-secret", "True", "Synced").await;
    let template_hash = |name: &'static str| async move {
        let d: Deployment = Api::namespaced(c.clone(), "rollout")
            .get(name)
            .await
            .unwrap();
        d.spec?
            .template
            .metadata?
            .annotations?
            .get("kvbridge.io/secrets-hash")
            .cloned()
    };
    assert_eq!(
        template_hash("opted").await,
        None,
        "first sync is no rotation"
    );
    env.set_secret("rotating", "r2").await;
    let h1 = wait_for("opted Deployment annotated", || template_hash("opted")).await;
    assert_eq!(
        secret_data(c, "rollout", "app-secret").await.unwrap()["token"],
        b"r2"
    );
    env.set_secret("rotating", "r3").await;
    wait_for("opted Deployment annotated again", || async {
        template_hash("opted").await.filter(|h| *h != h1)
    })
    .await;
    assert_eq!(template_hash("not-opted").await, None);
    assert_eq!(template_hash("unrelated").await, None);
    let events = env.kubectl(&["-n", "rollout", "get", "events.events.k8s.io", "-o", "json"]);
    assert!(
        events.contains("RolloutTriggered") && events.contains("Deployment opted"),
        "{events}"
    );

    // --- SecretProviderClass secretObjects synced without any pod: a class that opts in with a
    // service-principal Secret, one with a ServiceAccount (workload identity), one that does
    // not opt in.
    env.namespace("spc").await;
    Api::<Secret>::namespaced(c.clone(), "spc")
        .create(&PostParams::default(), &creds)
        .await
        .unwrap();
    let class = |ns: &str, name: &str, annotations: &str| {
        format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: {name}\n  namespace: {ns}\n  annotations: {{{annotations}}}\nspec:\n  provider: azure\n  parameters:\n    keyvaultName: team-vault\n    tenantID: {TENANT}\n    objects: |\n      array:\n        - |\n          objectName: team-only\n          objectType: secret\n          objectAlias: team-alias\n  secretObjects:\n    - secretName: {name}-synced\n      type: Opaque\n      labels: {{app: demo}}\n      data:\n        - {{objectName: team-alias, key: token}}\n"
        )
    };
    env.apply_yaml(&class(
        "spc",
        "via-secret",
        "kvbridge.io/sync-secret-objects: \"true\", kvbridge.io/secret: sp-creds",
    ));
    env.apply_yaml(&class(
        "identities",
        "via-sa",
        "kvbridge.io/sync-secret-objects: \"true\", kvbridge.io/service-account: app",
    ));
    env.apply_yaml(&class("spc", "not-opted", "team: a"));
    for (ns, name) in [
        ("spc", "via-secret-synced"),
        ("identities", "via-sa-synced"),
    ] {
        let d = wait_for(name, || secret_data(c, ns, name)).await;
        assert_eq!(d["token"], b"team secret", "{name}");
        let s: Secret = Api::namespaced(c.clone(), ns).get(name).await.unwrap();
        assert_eq!(s.labels()["app"], "demo");
        let owner = &s.metadata.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "SecretProviderClass");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(secret_data(c, "spc", "not-opted-synced").await.is_none());

    // --- Event Grid: a Key Vault event refreshes a resource with a 1 h interval at once; the
    // subscription handshakes are answered; a delivery without the token is refused.
    env.namespace("events").await;
    env.apply_yaml(&format!(
        "apiVersion: spv.no/v2beta1\nkind: AzureKeyVaultSecret\nmetadata: {{name: evented, namespace: events}}\nspec:\n  vault: {{name: {VAULT}, object: {{name: evented, type: secret}}}}\n  refreshInterval: 1h\n  output: {{secret: {{name: evented, dataKey: value}}}}\n"
    ));
    wait_ready(c, "events", "evented", "True", "Synced").await;
    let (addr, _server) = controller::http::spawn(
        "127.0.0.1:0".parse().unwrap(),
        controller::eventgrid::router(controller::eventgrid::Endpoint {
            ctx: env.runner_ctx.clone(),
            token: Some("s3cret".into()),
        }),
    )
    .await
    .unwrap();
    let url = format!("http://{addr}/eventgrid");
    let validation = json!([{"id": "v", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
        "subject": "", "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1",
        "data": {"validationCode": "0f4a4a1e-code"}}]);
    let r: Value = env
        .http
        .post(format!("{url}?token=s3cret"))
        .json(&validation)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["validationResponse"], "0f4a4a1e-code");
    let r = env
        .http
        .request(reqwest::Method::OPTIONS, format!("{url}?token=s3cret"))
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["webhook-allowed-origin"], "eventgrid.azure.net");
    let v2 = env.set_secret("evented", "e2").await;
    let event = json!([{"id": "1", "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
        "subject": "evented", "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1",
        "data": {"Id": format!("https://{VAULT}.vault.azure.net/secrets/evented/{v2}"),
                 "VaultName": VAULT, "ObjectType": "Secret", "ObjectName": "evented", "Version": v2}}]);
    let r = env.http.post(&url).json(&event).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::UNAUTHORIZED);
    let r = env
        .http
        .post(&url)
        .header("aeg-sas-key", "s3cret")
        .json(&event)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let t0 = Instant::now();
    wait_for("Secret updated by the event", || async {
        let d = secret_data(c, "events", "evented").await?;
        (d["value"] == b"e2").then_some(())
    })
    .await;
    eprintln!(
        "Key Vault event -> Secret updated in {:?} (refresh interval 1 h)",
        t0.elapsed()
    );
}
