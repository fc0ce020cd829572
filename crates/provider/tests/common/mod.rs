//! Test harness: a dev vault (HTTPS, in-process), a provider serving on a real unix socket and
//! pointed at the dev vault only through its default cloud environment file, and a gRPC client
//! generated from the same proto.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use provider::proto::csi_driver_provider_client::CsiDriverProviderClient;
use provider::proto::{MountRequest, MountResponse};
use provider::server::Running;
use provider::{ProviderConfig, ProviderService};
use serde_json::{json, Value};
use testenv::vault::{sum_counters, DevVault};
use tonic::transport::{Channel, Endpoint, Uri};

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const VAULT: &str = "provvault";
pub const ISSUER: &str = "https://oidc.test/cluster";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub dv: devvault::Running,
    /// Trusts only the dev vault's CA.
    pub http: reqwest::Client,
    /// `https://localhost:PORT`.
    pub origin: String,
    pub provider: Option<Running>,
    pub socket: PathBuf,
    pub issuer_key: pki::PrivateKey,
}

fn seed(extra_secrets: &str) -> String {
    format!(
        r#"
tenant: {TENANT}
vaults:
  - name: {VAULT}
    secrets:
      - {{name: plain, value: "hello world", contentType: text/plain}}
      - {{name: b64, value: "aGVsbG8gd29ybGQ="}}
      - {{name: hexval, value: "68656c6c6f"}}
      - name: rotated
        versions: [{{value: "v1"}}, {{value: "v2", enabled: false}}, {{value: "v3"}}]
{extra_secrets}
    certificates:
      - name: ca
        generate: {{subject: "CN=Provider Test CA", ca: true, keyType: EC, curve: P-256, validityDays: 365}}
        contentType: application/x-pem-file
      - name: tls
        generate: {{subject: "CN=app.test", sans: [app.test], issuer: ca, keyType: EC, curve: P-256, validityDays: 30}}
        contentType: application/x-pkcs12
      - name: tls-pem
        generate: {{subject: "CN=pem.test", issuer: ca, keyType: EC, curve: P-256, validityDays: 30}}
        contentType: application/x-pem-file
    keys:
      - {{name: rsa, kty: RSA, size: 2048}}
      - {{name: ec, kty: EC, crv: P-256}}
    accessPolicies:
      - {{identity: app, secrets: [all], certificates: [all], keys: [all]}}
      - {{identity: app2, secrets: [all], certificates: [all], keys: [all]}}
      - {{identity: wi-app, secrets: [all], certificates: [all], keys: [all]}}
      - {{identity: node-msi, secrets: [all], certificates: [all], keys: [all]}}
      - {{identity: user-msi, secrets: [all], certificates: [all], keys: [all]}}
      - {{identity: noaccess, secrets: [list], certificates: [], keys: []}}
identities:
  - {{clientId: app, secret: app-secret}}
  - {{clientId: app2, secret: app2-secret}}
  - {{clientId: noaccess, secret: noaccess-secret}}
  - clientId: wi-app
    federatedCredentials:
      - {{issuer: "{ISSUER}", subject: "system:serviceaccount:default:app", issuerKey: issuer.pem}}
  - {{clientId: node-msi, managedIdentity: true, systemAssigned: true}}
  - {{clientId: user-msi, managedIdentity: true}}
podIdentities:
  - {{namespace: default, podName: app-0, clientId: node-msi}}
"#
    )
}

pub fn test_config() -> ProviderConfig {
    let mut c = ProviderConfig::default();
    c.client.timeout = Duration::from_secs(3);
    c.client.max_retries = 2;
    c.client.retry_base_delay = Duration::from_millis(50);
    c.client.retry_max_delay = Duration::from_secs(1);
    c.client.deadline = Duration::from_secs(8);
    c.client.use_system_roots = false;
    c
}

pub async fn start() -> Env {
    start_with("", |_| {}).await
}

pub async fn start_with(extra_secrets: &str, tweak: impl FnOnce(&mut ProviderConfig)) -> Env {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (issuer_key, issuer_pem) = testenv::jwt::issuer_key();
    std::fs::write(dir.path().join("issuer.pem"), issuer_pem).unwrap();
    let seed_path = dir.path().join("seed.yaml");
    std::fs::write(&seed_path, seed(extra_secrets)).unwrap();
    let dv = DevVault::start(&dir.path().join("dv"), Some(&seed_path)).await;
    let (http, origin, dv) = (dv.http, dv.origin, dv.running);

    let mut cfg = test_config();
    cfg.default_cloud_env_file = Some(dv.info.cloud_env_file.clone());
    cfg.client.ca_file = Some(dv.info.ca.clone());
    cfg.imds_endpoint = Some(dv.info.url.clone());
    cfg.nmi_endpoint = Some(format!("{}/host/token/", dv.info.url));
    tweak(&mut cfg);
    let service =
        Arc::new(ProviderService::new(cfg, Arc::new(provider::metrics::Metrics::new())).unwrap());
    let socket = dir.path().join("sock").join("azure.sock");
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let running = Running::start(service, &socket, Some(local), Some(local))
        .await
        .unwrap();
    Env {
        dv,
        http,
        origin,
        provider: Some(running),
        socket,
        dir,
        issuer_key,
    }
}

pub async fn connect(socket: &Path) -> CsiDriverProviderClient<Channel> {
    CsiDriverProviderClient::new(channel(socket).await).max_decoding_message_size(64 << 20)
}

/// An HTTP/2 channel to the provider socket.
pub async fn channel(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .expect("connect to the provider socket");
    channel
}

/// The `objects` parameter from YAML object documents.
pub fn objects(items: &[&str]) -> String {
    let mut s = String::from("array:\n");
    for item in items {
        s.push_str("  - |\n");
        for line in item.trim().lines() {
            s.push_str("    ");
            s.push_str(line.trim());
            s.push('\n');
        }
    }
    s
}

pub fn attrs(objects_yaml: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("keyvaultName".to_string(), VAULT.to_string());
    m.insert("tenantID".to_string(), TENANT.to_string());
    m.insert("objects".to_string(), objects_yaml.to_string());
    m.insert("csi.storage.k8s.io/pod.name".into(), "app-0".into());
    m.insert("csi.storage.k8s.io/pod.namespace".into(), "default".into());
    m.insert(
        "csi.storage.k8s.io/pod.uid".into(),
        "0b0e7a5c-5b0c-4a5e-8f77-1f2a3b4c5d6e".into(),
    );
    m.insert(
        "csi.storage.k8s.io/serviceAccount.name".into(),
        "app".into(),
    );
    m.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    m.insert("secretProviderClass".into(), "azure-kv".into());
    for (k, v) in extra {
        m.insert(k.to_string(), v.to_string());
    }
    m
}

pub fn sp_secrets(id: &str, secret: &str) -> String {
    json!({"clientid": id, "clientsecret": secret}).to_string()
}

pub fn request(attrs: &BTreeMap<String, String>, secrets: &str, permission: &str) -> MountRequest {
    MountRequest {
        attributes: serde_json::to_string(attrs).unwrap(),
        secrets: secrets.to_string(),
        target_path: "/var/lib/kubelet/pods/0b0e7a5c/volumes/kubernetes.io~csi/kv/mount".into(),
        permission: permission.to_string(),
        current_object_version: vec![],
    }
}

pub async fn mount(
    client: &mut CsiDriverProviderClient<Channel>,
    req: MountRequest,
) -> Result<MountResponse, tonic::Status> {
    client.mount(req).await.map(|r| r.into_inner())
}

pub fn file<'a>(resp: &'a MountResponse, path: &str) -> &'a provider::proto::File {
    resp.files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| {
            panic!(
                "no file {path}: {:?}",
                resp.files.iter().map(|f| &f.path).collect::<Vec<_>>()
            )
        })
}

pub fn version_of<'a>(resp: &'a MountResponse, id: &str) -> &'a str {
    &resp
        .object_version
        .iter()
        .find(|v| v.id == id)
        .unwrap_or_else(|| panic!("no object version {id}: {:?}", resp.object_version))
        .version
}

/// A projected service-account token as kubelet issues it for `aud`.
pub fn sa_token(key: &pki::PrivateKey, sub: &str, aud: &str) -> String {
    testenv::jwt::service_account_token(key, ISSUER, sub, aud, testenv::jwt::now() + 3600)
}

pub fn tokens_attr(token: &str) -> String {
    json!({"api://AzureADTokenExchange": {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"}})
        .to_string()
}

impl Env {
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        testenv::vault::admin(&self.http, &self.origin, method, path, body).await
    }

    /// Vault requests for `operation` on `object` (authenticated ones; challenges excluded).
    pub async fn count(&self, operation: &str, object: &str) -> u64 {
        let c = self.admin("GET", "/admin/counters", None).await;
        sum_counters(&c, |e| e["operation"] == operation && e["object"] == object)
    }

    pub async fn total(&self, operation: &str) -> u64 {
        let c = self.admin("GET", "/admin/counters", None).await;
        sum_counters(&c, |e| e["operation"] == operation)
    }

    pub async fn client(&self) -> CsiDriverProviderClient<Channel> {
        connect(&self.socket).await
    }

    pub fn healthz(&self) -> SocketAddr {
        self.provider.as_ref().unwrap().healthz.unwrap()
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.provider.as_ref().unwrap().metrics.unwrap()
    }

    /// The provider's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::Client::new()
            .get(format!("http://{}/metrics", self.metrics_addr()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(p) = self.provider.take() {
            p.stop().await.unwrap();
        }
        self.dv.stop().await;
    }
}
