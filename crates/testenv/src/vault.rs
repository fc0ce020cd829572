//! The dev vault for tests, two ways: in-process ([`DevVault`], real HTTPS on a free loopback
//! port) and as a `kvbridge dev-vault` child process ([`DevVaultProcess`]), plus the calls tests
//! make to it (tokens, Key Vault REST, admin counters and faults).
//!
//! The request helpers are assertions: they panic with the path and status when the dev vault
//! answers something a test did not expect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::process::{spawn, ChildGuard};
use crate::Error;

/// Tenant of `examples/dev-vault.yaml`.
pub const EXAMPLE_TENANT: &str = "6d2b6f1e-0e4c-4a8e-9a57-6b7662726467";
/// Service principal of `examples/dev-vault.yaml`: (client id, client secret).
pub const EXAMPLE_CLIENT: (&str, &str) = ("kvbridge-dev", "kvbridge-dev-secret");
/// The Key Vault REST API version tests speak.
pub const API_VERSION: &str = "7.4";

/// An HTTPS client that trusts only the CA in `ca` (PEM), resolving each `(host, addr)` itself.
pub fn https_client(ca: &Path, resolve: &[(&str, SocketAddr)]) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca).unwrap_or_else(|e| panic!("reading {}: {e}", ca.display()));
    let cert = reqwest::Certificate::from_pem(&pem)
        .unwrap_or_else(|e| panic!("{} is not a PEM certificate: {e}", ca.display()));
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert);
    for (host, addr) in resolve {
        builder = builder.resolve(host, *addr);
    }
    builder
        .build()
        .unwrap_or_else(|e| panic!("building the HTTPS client: {e}"))
}

/// An in-process dev vault on `127.0.0.1:0`.
pub struct DevVault {
    pub running: devvault::Running,
    /// Trusts only the dev vault's CA; `localhost` resolves to it.
    pub http: reqwest::Client,
    /// `https://localhost:PORT`: the Entra stand-in, IMDS, NMI and admin origin.
    pub origin: String,
    pub tenant: String,
    pub ca: PathBuf,
}

impl DevVault {
    /// Starts with its state in `state` and, if given, the seed file `seed`.
    pub async fn start(state: &Path, seed: Option<&Path>) -> DevVault {
        Self::start_with(state, seed, |_| {}).await
    }

    /// [`DevVault::start`] with the options adjusted by `tweak` first.
    pub async fn start_with(
        state: &Path,
        seed: Option<&Path>,
        tweak: impl FnOnce(&mut devvault::Options),
    ) -> DevVault {
        let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut opts = devvault::Options::new(listen, state);
        opts.seed = seed.map(Path::to_path_buf);
        tweak(&mut opts);
        let running = devvault::start(opts)
            .await
            .unwrap_or_else(|e| panic!("the dev vault did not start: {e:#}"));
        let http = https_client(&running.info.ca, &[("localhost", running.addr)]);
        DevVault {
            origin: format!("https://localhost:{}", running.addr.port()),
            tenant: running.info.tenant.clone(),
            ca: running.info.ca.clone(),
            http,
            running,
        }
    }

    pub fn port(&self) -> u16 {
        self.running.addr.port()
    }

    /// The cloud environment file that points the Azure SDKs (and kvbridge) at this dev vault.
    pub fn cloud_env_file(&self) -> &Path {
        &self.running.info.cloud_env_file
    }

    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// An admin call (`/admin/...`) that must succeed; its JSON answer (or null).
    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        admin(&self.http, &self.origin, method, path, body).await
    }

    /// Sum of the request counters for which `keep(entry)` holds.
    pub async fn counters(&self, keep: impl Fn(&Value) -> bool) -> u64 {
        let c = self.admin("GET", "/admin/counters", None).await;
        sum_counters(&c, keep)
    }

    /// Requests for `operation` (on `object` if given; all vaults).
    pub async fn count(&self, operation: &str, object: Option<&str>) -> u64 {
        self.counters(|e| e["operation"] == operation && object.is_none_or(|o| e["object"] == o))
            .await
    }

    pub async fn reset_counters(&self) {
        self.admin("POST", "/admin/counters/reset", None).await;
    }

    pub async fn set_faults(&self, faults: Value) {
        self.admin("PUT", "/admin/faults", Some(faults)).await;
    }

    /// A token request to the Entra stand-in: (status, JSON body or null).
    pub async fn token_request(&self, form: &[(&str, &str)]) -> (u16, Value) {
        let url = format!("{}/{}/oauth2/v2.0/token", self.origin, self.tenant);
        let resp = self
            .http
            .post(url)
            .form(form)
            .send()
            .await
            .unwrap_or_else(|e| panic!("token request: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A Key Vault access token for a client-secret service principal (must succeed).
    pub async fn token(&self, client_id: &str, secret: &str) -> String {
        let (status, body) = self
            .token_request(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("scope", "https://vault.azure.net/.default"),
            ])
            .await;
        assert_eq!(status, 200, "token request for {client_id} failed: {body}");
        access_token(&body)
    }

    /// A Key Vault REST call on the default vault (`path` like `/secrets/x`, api-version added):
    /// (status, headers, JSON body or null).
    pub async fn kv_full(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}api-version={API_VERSION}", self.origin);
        let mut req = self
            .http
            .request(parse_method(method), url)
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            headers,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }

    /// [`DevVault::kv_full`] without the headers.
    pub async fn kv(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, _, value) = self.kv_full(method, path, token, body).await;
        (status, value)
    }
}

/// An admin call against `origin` that must succeed.
pub async fn admin(
    http: &reqwest::Client,
    origin: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let mut req = http.request(parse_method(method), format!("{origin}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"));
    assert!(
        resp.status().is_success(),
        "admin {method} {path}: {}",
        resp.status()
    );
    resp.json().await.unwrap_or(Value::Null)
}

/// Sum of the `count`s in an `/admin/counters` answer whose entries `keep` accepts.
pub fn sum_counters(counters: &Value, keep: impl Fn(&Value) -> bool) -> u64 {
    counters["counters"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| keep(e))
                .filter_map(|e| e["count"].as_u64())
                .sum()
        })
        .unwrap_or_else(|| panic!("not a counters answer: {counters}"))
}

fn parse_method(method: &str) -> reqwest::Method {
    method
        .parse()
        .unwrap_or_else(|_| panic!("not an HTTP method: {method}"))
}

fn access_token(body: &Value) -> String {
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {body}"))
        .to_string()
}

/// The dev vault's temporary state copies (`.<name>.tmp-<pid>...`) left in `state`: after any
/// save, crash or restart there must be none (each holds secret values).
pub fn temp_copies(state: &Path) -> Vec<String> {
    std::fs::read_dir(state)
        .unwrap_or_else(|e| panic!("{}: {e}", state.display()))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n.contains(".tmp-"))
        .collect()
}

/// `kvbridge dev-vault` as a child process (killed when dropped), started with
/// `--listen 127.0.0.1:0` and ready once it wrote `STATE/ready.json` with its own pid (a file
/// left by an earlier run of the same state does not count).
pub struct DevVaultProcess {
    pub child: ChildGuard,
    pub port: u16,
    pub ca: PathBuf,
    pub cloud_env_file: PathBuf,
    pub tenant: String,
    pub state: PathBuf,
}

impl DevVaultProcess {
    /// Starts `bin dev-vault` with `--state state --seed seed`; its output goes to `log`.
    pub fn start(bin: &Path, state: &Path, seed: &Path, log: &Path) -> Result<Self, Error> {
        Self::start_with_args(bin, state, seed, log, &[])
    }

    /// [`DevVaultProcess::start`] with more `dev-vault` arguments (e.g. `--key-vault-limits`).
    pub fn start_with_args(
        bin: &Path,
        state: &Path,
        seed: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Result<Self, Error> {
        let mut cmd = Command::new(bin);
        cmd.args(["dev-vault", "--listen", "127.0.0.1:0", "--state"])
            .arg(state)
            .arg("--seed")
            .arg(seed)
            .args(extra)
            .env("RUST_LOG", "info");
        let child = spawn("kvbridge dev-vault", cmd, log)?;
        let ready = state.join("ready.json");
        let wait = Duration::from_secs(60);
        let t0 = Instant::now();
        let info: Value = loop {
            if let Some(v) = std::fs::read_to_string(&ready)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .filter(|v| v["pid"].as_u64() == Some(u64::from(child.pid())))
            {
                break v;
            }
            if let Some(status) = child.exited() {
                return Err(Error::Exited {
                    name: child.name().to_string(),
                    status: status.to_string(),
                    log: log.to_path_buf(),
                    tail: child.log_tail(20),
                });
            }
            if t0.elapsed() > wait {
                return Err(Error::NotReady {
                    what: "kvbridge dev-vault".into(),
                    secs: wait.as_secs(),
                    log: log.to_path_buf(),
                    tail: child.log_tail(20),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = |key: &str| info[key].as_str().unwrap_or_default().to_string();
        Ok(DevVaultProcess {
            port: info["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or_default(),
            ca: PathBuf::from(text("ca")),
            cloud_env_file: PathBuf::from(text("cloud_env_file")),
            tenant: text("tenant"),
            state: state.to_path_buf(),
            child,
        })
    }

    /// The lines the dev vault printed before `ready` (its banner). `ready.json` is written
    /// before the banner is printed, so this waits (at most 30 s) for the `ready` line.
    pub fn banner(&self) -> Vec<String> {
        let t0 = Instant::now();
        loop {
            let log = std::fs::read_to_string(self.child.log_path()).unwrap_or_default();
            if log.lines().any(|l| l == "ready") || t0.elapsed() > Duration::from_secs(30) {
                return log
                    .lines()
                    .take_while(|l| *l != "ready")
                    .map(str::to_string)
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `curl --fail` with this dev vault's CA and `args`, parsed as JSON (must succeed). curl is
    /// an independent client of the dev vault's HTTPS and REST surface.
    pub fn curl(&self, args: &[&str]) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(&self.ca)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running curl: {e}"));
        assert!(
            out.status.success(),
            "curl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Sets the dev vault's faults (`PUT /admin/faults`, see docs/dev-vault.md), through curl;
    /// `{}` turns them off.
    pub fn set_faults(&self, faults: &Value) {
        let url = format!("https://localhost:{}/admin/faults", self.port);
        let body = faults.to_string();
        self.curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &url,
        ]);
    }

    /// A Key Vault token for a client-secret service principal, through curl.
    pub fn token(&self, client_id: &str, secret: &str) -> String {
        let id = format!("client_id={client_id}");
        let secret = format!("client_secret={secret}");
        let url = format!(
            "https://localhost:{}/{}/oauth2/v2.0/token",
            self.port, self.tenant
        );
        let body = self.curl(&[
            "-d",
            "grant_type=client_credentials",
            "-d",
            &id,
            "-d",
            &secret,
            "-d",
            "scope=https://vault.azure.net/.default",
            &url,
        ]);
        access_token(&body)
    }

    /// A new version of secret `name` in vault `vault` with the examples' service principal;
    /// returns the new version id.
    pub fn set_secret(&self, vault: &str, name: &str, value: &str) -> String {
        let token = self.token(EXAMPLE_CLIENT.0, EXAMPLE_CLIENT.1);
        let auth = format!("Authorization: Bearer {token}");
        let body = serde_json::json!({ "value": value }).to_string();
        let url = format!(
            "https://{vault}.localhost:{}/secrets/{name}?api-version={API_VERSION}",
            self.port
        );
        let resolve = format!("{vault}.localhost:{}:127.0.0.1", self.port);
        let answer = self.curl(&[
            "--resolve",
            &resolve,
            "-X",
            "PUT",
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            &url,
        ]);
        answer["id"]
            .as_str()
            .and_then(|id| id.rsplit('/').next())
            .unwrap_or_else(|| panic!("no id in the set-secret answer for {name}"))
            .to_string()
    }
}
