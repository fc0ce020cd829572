//! etcd + kube-apiserver, started once per test binary.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::Deserialize as _;

use crate::error::chain;
use crate::process::{self, ChildGuard};
use crate::{certs, Error, Layout};

/// How long etcd + kube-apiserver may take to become ready (normally a few seconds).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a CRD may take to become Established.
const CRD_TIMEOUT: Duration = Duration::from_secs(30);
/// Field manager for server-side apply.
const MANAGER: &str = "kvbridge-testenv";

/// A running etcd + kube-apiserver on loopback ports with an admin kubeconfig.
#[derive(Debug)]
pub struct ControlPlane {
    layout: Layout,
    dir: PathBuf,
    url: String,
    kubeconfig: PathBuf,
    ca: PathBuf,
    etcd: ChildGuard,
    apiserver: ChildGuard,
    start_time: Duration,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();

/// The control plane shared by this test binary's tests, or `None` when the test must be skipped:
/// only when the binaries are absent **and** `KVBRIDGE_TESTENV=off` (the skip is announced on the
/// terminal, past the test harness's output capture). In every other case a control plane that
/// cannot start panics with the reason (for missing binaries: the build command to run).
pub async fn control_plane() -> Option<&'static ControlPlane> {
    let layout = Layout::locate();
    let missing = layout.missing();
    if !missing.is_empty() && std::env::var("KVBRIDGE_TESTENV").as_deref() == Ok("off") {
        let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED (KVBRIDGE_TESTENV=off): a test that needs the real Kubernetes control \
             plane did not run; missing: {}. Run `bash tests/k8s/build.sh` to build them. ***\n",
            list.join(", ")
        );
        return None;
    }
    match shared().await {
        Ok(cp) => Some(cp),
        Err(e) => panic!("the test control plane is not available: {e}"),
    }
}

/// The shared control plane, started on first use (the error is reported to every caller).
pub async fn shared() -> Result<&'static ControlPlane, String> {
    let joined = tokio::task::spawn_blocking(|| {
        SHARED.get_or_init(|| {
            // Started from a plain thread: readiness is awaited on a runtime of its own, and the
            // control plane must not depend on the runtime of whichever test came first.
            std::thread::Builder::new()
                .name("testenv-start".into())
                .spawn(|| ControlPlane::start(Layout::locate()).map_err(|e| chain(&e)))
                .map_err(|e| format!("cannot start a thread: {e}"))?
                .join()
                .unwrap_or_else(|_| Err("starting the control plane panicked".into()))
        })
    })
    .await;
    match joined {
        Ok(Ok(cp)) => Ok(cp),
        Ok(Err(e)) => Err(e.clone()),
        Err(e) => Err(format!("starting the control plane failed: {e}")),
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver from `layout` and waits for `/readyz`.
    pub fn start(layout: Layout) -> Result<ControlPlane, Error> {
        let t0 = Instant::now();
        for name in ["etcd", "kube-apiserver"] {
            let path = layout.bin(name);
            if layout.missing().contains(&path) {
                return Err(Error::MissingBinary {
                    what: name.to_string(),
                    path,
                });
            }
        }
        let dir = process::scratch_dir()?;
        let certs = certs::generate(&dir)?;
        let [etcd_client, etcd_peer, api_port] = process::free_ports::<3>()?;
        // Every request's metadata (user, verb, resource, name, status) in a JSON-lines audit
        // log: tests derive from it what a component's identity actually used (crate::rbac).
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(
            &audit_policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
        )
        .map_err(|e| Error::io("writing the audit policy", &audit_policy, e))?;

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let mut etcd = Command::new(layout.bin("etcd"));
        etcd.arg("--name=testenv")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=testenv={peer_url}"))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let etcd = process::spawn("etcd", etcd, &dir.join("etcd.log"))?;

        let path = |p: &Path| p.display().to_string();
        let mut api = Command::new(layout.bin("kube-apiserver"));
        api.arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            // Required on machines without a default route (no interface to derive it from).
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!("--tls-cert-file={}", path(&certs.serving_cert)))
            .arg(format!(
                "--tls-private-key-file={}",
                path(&certs.serving_key)
            ))
            .arg(format!("--client-ca-file={}", path(&certs.ca)))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                path(&certs.service_account_pub)
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                path(&certs.service_account_key)
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            // No controller-manager runs: nothing would create the default service accounts.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=true")
            .arg("--endpoint-reconciler-type=none")
            .arg("--profiling=false")
            .arg(format!("--audit-policy-file={}", audit_policy.display()))
            .arg(format!(
                "--audit-log-path={}",
                dir.join("audit.log").display()
            ))
            .arg("--audit-log-format=json")
            .arg("--audit-log-mode=blocking");
        let apiserver = process::spawn("kube-apiserver", api, &dir.join("kube-apiserver.log"))?;

        let url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &url, &certs)?;

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        rt.block_on(wait_ready(&kubeconfig, &etcd, &apiserver))?;
        let start_time = t0.elapsed();
        let _ = writeln!(
            std::io::stderr(),
            "testenv: etcd + kube-apiserver {} ready at {url} in {:.2} s (kubeconfig {})",
            crate::layout::version("K8S_VERSION"),
            start_time.as_secs_f64(),
            kubeconfig.display()
        );
        Ok(ControlPlane {
            layout,
            dir,
            url,
            kubeconfig,
            ca: certs.ca,
            etcd,
            apiserver,
            start_time,
        })
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An admin (`system:masters`) kubeconfig with file references to the certificates.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The CA that signed the API server's certificate (and the admin client certificate).
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// The API server's audit log (JSON lines, level Metadata, every request).
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// This control plane's scratch directory (removed when the test binary exits).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// From spawning etcd to kube-apiserver answering `/readyz` with `ok`.
    pub fn start_time(&self) -> Duration {
        self.start_time
    }

    /// The end of kube-apiserver's log, for failure messages.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        self.apiserver.log_tail(lines)
    }

    /// Whether both processes are still running.
    pub fn is_running(&self) -> bool {
        self.etcd.exited().is_none() && self.apiserver.exited().is_none()
    }

    /// A new admin client from the kubeconfig, bound to the calling test's runtime.
    pub async fn client(&self) -> Result<Client, Error> {
        client_from(&self.kubeconfig).await
    }

    /// Creates a fresh namespace `<prefix>-xxxxx` for one test and returns its name. Nothing
    /// deletes namespaces here (no controller-manager): the control plane goes away with the
    /// test binary.
    pub async fn namespace(&self, client: &Client, prefix: &str) -> Result<String, Error> {
        let api: Api<Namespace> = Api::all(client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some([("kvbridge.test/testenv".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let created = api
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| Error::kube(format!("creating a namespace {prefix}-*"), e))?;
        Ok(created.metadata.name.unwrap_or_default())
    }

    /// Installs the Secrets Store CSI Driver's CRDs (SecretProviderClass,
    /// SecretProviderClassPodStatus) and waits until they are served.
    pub async fn install_csi_driver_crds(&self, client: &Client) -> Result<Vec<String>, Error> {
        self.install_crds(client, &self.layout.crds()).await
    }

    /// Applies every CustomResourceDefinition in the `*.yaml`/`*.yml`/`*.json` files of `dir`
    /// (server-side apply, so repeated calls from concurrent tests are harmless) and waits until
    /// each is Established. Returns the CRD names.
    pub async fn install_crds(&self, client: &Client, dir: &Path) -> Result<Vec<String>, Error> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io("reading a CRD directory", dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
            })
            .collect();
        files.sort();
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut names = Vec::new();
        for file in &files {
            for crd in read_crds(file)? {
                let name = crd.metadata.name.clone().unwrap_or_default();
                api.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await
                .map_err(|e| Error::kube(format!("applying CRD {name}"), e))?;
                names.push(name);
            }
        }
        for name in &names {
            wait_established(&api, name).await?;
        }
        Ok(names)
    }
}

pub(crate) async fn client_from(kubeconfig: &Path) -> Result<Client, Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|source| Error::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        source,
    })?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: kubeconfig.to_path_buf(),
            source,
        })?;
    Client::try_from(config).map_err(|e| Error::kube("building a client", e))
}

fn write_kubeconfig(path: &Path, url: &str, certs: &certs::Files) -> Result<(), Error> {
    let kc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testenv", "cluster": {
            "server": url,
            "certificate-authority": certs.ca,
        }}],
        "users": [{"name": certs::ADMIN_USER, "user": {
            "client-certificate": certs.admin_cert,
            "client-key": certs.admin_key,
        }}],
        "contexts": [{"name": "testenv", "context": {"cluster": "testenv", "user": certs::ADMIN_USER}}],
        "current-context": "testenv",
    });
    std::fs::write(path, kc.to_string()).map_err(|e| Error::io("writing the kubeconfig", path, e))
}

async fn wait_ready(kubeconfig: &Path, etcd: &ChildGuard, api: &ChildGuard) -> Result<(), Error> {
    let client = client_from(kubeconfig).await?;
    let t0 = Instant::now();
    loop {
        for child in [etcd, api] {
            if let Some(status) = child.exited() {
                return Err(child.exited_error(status));
            }
        }
        let req = http::Request::get("/readyz").body(Vec::new());
        if let Ok(req) = req {
            if let Ok(body) = client.request_text(req).await {
                if body.trim() == "ok" {
                    return Ok(());
                }
            }
        }
        if t0.elapsed() > READY_TIMEOUT {
            return Err(Error::NotReady {
                what: "kube-apiserver /readyz".into(),
                secs: READY_TIMEOUT.as_secs(),
                log: api.log_path().to_path_buf(),
                tail: api.log_tail(40),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_crds(file: &Path) -> Result<Vec<CustomResourceDefinition>, Error> {
    let text =
        std::fs::read_to_string(file).map_err(|e| Error::io("reading a CRD file", file, e))?;
    let mut crds = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc).map_err(|source| Error::Yaml {
            path: file.to_path_buf(),
            source,
        })?;
        if value.is_null() {
            continue;
        }
        crds.push(
            serde_json::from_value(value).map_err(|source| Error::NotACrd {
                path: file.to_path_buf(),
                source,
            })?,
        );
    }
    Ok(crds)
}

async fn wait_established(api: &Api<CustomResourceDefinition>, name: &str) -> Result<(), Error> {
    let t0 = Instant::now();
    loop {
        let crd = api
            .get(name)
            .await
            .map_err(|e| Error::kube(format!("reading CRD {name}"), e))?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if t0.elapsed() > CRD_TIMEOUT {
            return Err(Error::NotReady {
                what: format!("CRD {name} Established"),
                secs: CRD_TIMEOUT.as_secs(),
                log: PathBuf::new(),
                tail: String::new(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
