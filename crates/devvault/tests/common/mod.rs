//! Test harness: an in-process dev vault on a free loopback port and an HTTPS client that
//! trusts only its CA.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use devvault::{Options, Running};
use serde_json::Value;

pub struct Dv {
    pub running: Running,
    pub client: reqwest::Client,
    pub origin: String,
    pub tenant: String,
    pub dir: PathBuf,
}

pub fn client_for(ca: &Path, resolve: &[(&str, SocketAddr)]) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(ca).unwrap();
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .use_rustls_tls();
    for (host, addr) in resolve {
        b = b.resolve(host, *addr);
    }
    b.build().unwrap()
}

pub async fn start(dir: &Path, seed: Option<&Path>) -> Dv {
    start_with(dir, seed, |_| {}).await
}

pub async fn start_with(dir: &Path, seed: Option<&Path>, f: impl FnOnce(&mut Options)) -> Dv {
    let mut opts = Options::new("127.0.0.1:0".parse().unwrap(), dir);
    opts.seed = seed.map(Path::to_path_buf);
    f(&mut opts);
    let running = devvault::start(opts).await.expect("dev vault starts");
    let addr = running.addr;
    let client = client_for(&running.info.ca, &[("localhost", addr)]);
    Dv {
        origin: format!("https://localhost:{}", addr.port()),
        tenant: running.info.tenant.clone(),
        client,
        running,
        dir: dir.to_path_buf(),
    }
}

impl Dv {
    pub async fn token(&self, client_id: &str, secret: &str) -> String {
        let (status, body) = self
            .token_request(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", "https://vault.azure.net/.default"),
            ])
            .await;
        assert_eq!(status, 200, "token request failed: {body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}/{}/oauth2/v2.0/token", self.origin, self.tenant))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A data-plane call with api-version 7.4 on the default vault.
    pub async fn kv(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (s, _, v) = self.kv_full(method, path, token, body).await;
        (s, v)
    }

    pub async fn kv_full(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}api-version=7.4", self.origin);
        let mut req = self
            .client
            .request(method.parse().unwrap(), url)
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.origin));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        assert!(
            resp.status().is_success(),
            "admin {path}: {}",
            resp.status()
        );
        resp.json().await.unwrap_or(Value::Null)
    }

    pub async fn count(&self, operation: &str, object: &str) -> u64 {
        let c = self.admin("GET", "/admin/counters", None).await;
        c["counters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["operation"] == operation && e["object"] == object)
            .map(|e| e["count"].as_u64().unwrap())
            .sum()
    }
}
