//! An in-process dev vault (real HTTPS on 127.0.0.1:0) seeded with identities for every
//! credential mode, plus helpers to reach its admin endpoints.
#![allow(dead_code)]

pub mod hostile;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keyvault::{ClientOptions, KeyVaultClient, TokenCredential, Transport};
use serde_json::{json, Value};
use testenv::vault::DevVault;

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const CANARY_SECRET_VALUE: &str = "CANARY-SECRET-VALUE-7f3a9c";
pub const CANARY_CLIENT_SECRET: &str = "CANARY-CLIENT-SECRET-51c2e0";
pub const LOAD_OBJECTS: usize = 50;

pub struct Env {
    pub dir: tempfile::TempDir,
    pub dv: Option<DevVault>,
    pub port: u16,
    pub ca: PathBuf,
    pub tenant: String,
    pub issuer_key: pki::PrivateKey,
}

pub use testenv::jwt::now;

pub fn jwt(alg: &str, header_extra: Value, claims: Value, key: &pki::PrivateKey) -> String {
    testenv::jwt::sign(alg, header_extra, &claims, key)
}

fn seed(load: bool) -> String {
    let mut secrets = format!(
        r#"      - {{name: open, value: "open-value"}}
      - {{name: canary, value: "{CANARY_SECRET_VALUE}"}}
      - name: rotated
        versions: [{{value: "v1"}}, {{value: "v2", enabled: false}}, {{value: "v3"}}]
"#
    );
    if load {
        for i in 0..LOAD_OBJECTS {
            secrets.push_str(&format!(
                "      - {{name: load-{i}, value: \"value-{i}\"}}\n"
            ));
        }
    }
    format!(
        r#"
tenant: {TENANT}
vaults:
  - name: kvtest
    secrets:
{secrets}    certificates:
      - name: app-tls
        generate: {{subject: "CN=app.internal", sans: [app.internal], keyType: EC, curve: P-256}}
        contentType: application/x-pem-file
    keys:
      - {{name: ec-key, kty: EC, crv: P-256}}
    accessPolicies:
      - {{identity: full-app, secrets: [all], certificates: [all], keys: [all]}}
      - {{identity: canary-app, secrets: [all]}}
      - {{identity: list-only, secrets: [list]}}
      - {{identity: node-msi, secrets: [get, list]}}
      - {{identity: user-msi, secrets: [get, list]}}
identities:
  - clientId: full-app
    secret: full-secret
    certificates: [sp.pem]
    federatedCredentials:
      - issuer: https://oidc.test/cluster
        subject: system:serviceaccount:default:app
        issuerKey: issuer.pem
  - clientId: canary-app
    secret: {CANARY_CLIENT_SECRET}
  - clientId: list-only
    secret: list-secret
  - clientId: node-msi
    managedIdentity: true
    systemAssigned: true
  - clientId: user-msi
    managedIdentity: true
    objectId: 00000000-0000-0000-0000-0000000000aa
    resourceId: /subscriptions/s/resourceGroups/g/providers/Microsoft.ManagedIdentity/userAssignedIdentities/u
podIdentities:
  - {{namespace: default, podName: app-0, clientId: user-msi}}
  - {{namespace: other, podName: app-1, clientId: list-only}}
"#
    )
}

impl Env {
    pub async fn start() -> Env {
        Self::start_with(false).await
    }

    /// `load`: also seed `load-0` .. `load-49`.
    pub async fn start_with(load: bool) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KV_TEST_LOG")
                    .unwrap_or_else(|_| "off".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        // A service principal certificate: public part in the seed, key + cert as PEM and as
        // PFX (empty password) for the credential.
        testenv::chain::service_principal_certificate(dir.path());
        let (issuer_key, issuer_pem) = testenv::jwt::issuer_key();
        std::fs::write(dir.path().join("issuer.pem"), issuer_pem).unwrap();
        std::fs::write(dir.path().join("seed.yaml"), seed(load)).unwrap();

        let seed = dir.path().join("seed.yaml");
        let dv = DevVault::start(&dir.path().join("state"), Some(&seed)).await;
        assert_eq!(dv.tenant, TENANT);
        Env {
            port: dv.port(),
            ca: dv.ca.clone(),
            tenant: dv.tenant.clone(),
            dir,
            dv: Some(dv),
            issuer_key,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `https://localhost:PORT/` — the Entra stand-in's authority host.
    pub fn authority(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }

    /// `https://localhost:PORT` — IMDS / admin origin.
    pub fn origin(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// The seeded vault through a `*.localhost` name (resolved by the client's own resolver).
    pub fn vault(&self) -> String {
        format!("https://kvtest.localhost:{}", self.port)
    }

    /// Client options trusting only the dev vault CA, with short backoff for tests.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            ca_file: Some(self.ca.clone()),
            use_system_roots: false,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(2),
            ..Default::default()
        }
    }

    pub fn transport(&self) -> Transport {
        Transport::new(&self.options()).unwrap()
    }

    pub fn client(&self, cred: Arc<dyn TokenCredential>) -> KeyVaultClient {
        KeyVaultClient::new(cred, self.options()).unwrap()
    }

    pub fn federated_token(&self, sub: &str, exp: i64) -> String {
        jwt(
            "ES256",
            json!({"kid": "k"}),
            json!({"iss": "https://oidc.test/cluster", "sub": sub, "aud": ["api://AzureADTokenExchange"], "iat": now(), "nbf": now() - 5, "exp": exp}),
            &self.issuer_key,
        )
    }

    fn dev_vault(&self) -> &DevVault {
        self.dv.as_ref().expect("the dev vault was stopped")
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.dev_vault().admin(method, path, body).await
    }

    pub async fn set_faults(&self, faults: Value) {
        self.dev_vault().set_faults(faults).await;
    }

    pub async fn reset_counters(&self) {
        self.dev_vault().reset_counters().await;
    }

    /// Sum of an operation's counters (all vaults and objects).
    pub async fn count(&self, operation: &str) -> u64 {
        self.dev_vault().count(operation, None).await
    }

    pub async fn stop(&mut self) {
        if let Some(dv) = self.dv.take() {
            dv.stop().await;
        }
    }
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}
