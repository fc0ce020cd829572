//! The real Secrets Store CSI Driver as a process, and a CSI client to call it as kubelet does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint, Uri};

use crate::process::{self, ChildGuard};
use crate::{ControlPlane, Error};

/// Generated from proto/csi.proto (CSI v1: Identity and the Node calls kubelet makes).
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("csi.v1");
}

pub use v1::identity_client::IdentityClient;
pub use v1::node_client::NodeClient;

/// The driver name kubelet and the CSI volume source use.
pub const DRIVER_NAME: &str = "secrets-store.csi.k8s.io";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How to run `secrets-store-csi-driver`.
#[derive(Debug, Clone)]
pub struct CsiDriverOptions {
    /// `--nodeid`: Pods whose `spec.nodeName` equals it are this driver's (secret sync).
    pub node_id: String,
    /// `--provider-volume`: the directory holding the providers' `<provider>.sock`.
    pub provider_dir: PathBuf,
    /// `--enable-secret-rotation --rotation-poll-interval`: a repeated NodePublishVolume for the
    /// same target (kubelet's `requiresRepublish`) re-mounts once this much time has passed.
    pub rotation_poll_interval: Option<Duration>,
    /// More arguments, appended as given.
    pub extra_args: Vec<String>,
}

impl CsiDriverOptions {
    pub fn new(node_id: impl Into<String>, provider_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id: node_id.into(),
            provider_dir: provider_dir.into(),
            rotation_poll_interval: None,
            extra_args: Vec::new(),
        }
    }
}

/// A running driver. Dropping it kills the driver and detaches any mount left under its kubelet
/// directory.
#[derive(Debug)]
pub struct CsiDriver {
    node_id: String,
    socket: PathBuf,
    kubelet_dir: PathBuf,
    child: ChildGuard,
}

/// The pod a volume is published for, as kubelet describes it in the volume context.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub service_account: String,
}

impl ControlPlane {
    /// Starts the CSI driver against this API server (`KUBECONFIG`) and waits until its CSI
    /// socket answers Probe.
    pub async fn start_csi_driver(&self, opts: CsiDriverOptions) -> Result<CsiDriver, Error> {
        let bin = self.layout().bin("secrets-store-csi-driver");
        if self.layout().missing().contains(&bin) {
            return Err(Error::MissingBinary {
                what: "secrets-store-csi-driver".into(),
                path: bin,
            });
        }
        let dir = process::scratch_dir()?;
        let socket = dir.join("csi.sock");
        let kubelet_dir = dir.join("kubelet");
        let [metrics] = process::free_ports::<1>()?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--endpoint=unix://{}", socket.display()))
            .arg(format!("--nodeid={}", opts.node_id))
            .arg(format!("--provider-volume={}", opts.provider_dir.display()))
            // Default: /etc/kubernetes/secrets-store-csi-providers; keep the host out of it.
            .arg(format!(
                "--additional-provider-volume-paths={}",
                opts.provider_dir.display()
            ))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
            .arg("-v=2")
            .env("KUBECONFIG", self.kubeconfig());
        if let Some(every) = opts.rotation_poll_interval {
            cmd.arg("--enable-secret-rotation")
                .arg(format!("--rotation-poll-interval={}ms", every.as_millis()));
        }
        cmd.args(&opts.extra_args);
        let child = process::spawn("secrets-store-csi-driver", cmd, &dir.join("driver.log"))?;
        let driver = CsiDriver {
            node_id: opts.node_id,
            socket,
            kubelet_dir,
            child,
        };
        driver.wait_ready().await?;
        Ok(driver)
    }
}

impl CsiDriver {
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The driver's CSI endpoint (a unix socket).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The driver's log so far (its last `lines` lines).
    pub fn log_tail(&self, lines: usize) -> String {
        self.child.log_tail(lines)
    }

    pub fn log_path(&self) -> &Path {
        self.child.log_path()
    }

    /// Kubelet's target path for a CSI volume of a pod:
    /// `<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount` (the driver checks this
    /// layout before it syncs Kubernetes Secrets).
    pub fn target_path(&self, pod_uid: &str, volume: &str) -> PathBuf {
        self.kubelet_dir
            .join("pods")
            .join(pod_uid)
            .join("volumes")
            .join("kubernetes.io~csi")
            .join(volume)
            .join("mount")
    }

    pub async fn node(&self) -> Result<NodeClient<Channel>, Error> {
        Ok(NodeClient::new(unix_channel(&self.socket).await?))
    }

    pub async fn identity(&self) -> Result<IdentityClient<Channel>, Error> {
        Ok(IdentityClient::new(unix_channel(&self.socket).await?))
    }

    /// NodePublishVolume as kubelet sends it for an inline CSI volume of `pod` naming the
    /// SecretProviderClass `class` (read-only mount capability, pod identity in the volume
    /// context, the `nodePublishSecretRef` Secret's data in `secrets`).
    pub fn publish_request(
        &self,
        pod: &PodRef,
        volume: &str,
        class: &str,
        secrets: HashMap<String, String>,
    ) -> v1::NodePublishVolumeRequest {
        use v1::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
        let volume_context: HashMap<String, String> = [
            ("secretProviderClass", class),
            ("csi.storage.k8s.io/pod.name", &pod.name),
            ("csi.storage.k8s.io/pod.namespace", &pod.namespace),
            ("csi.storage.k8s.io/pod.uid", &pod.uid),
            (
                "csi.storage.k8s.io/serviceAccount.name",
                &pod.service_account,
            ),
            ("csi.storage.k8s.io/ephemeral", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        v1::NodePublishVolumeRequest {
            volume_id: format!("csi-{}-{volume}", pod.uid),
            target_path: self.target_path(&pod.uid, volume).display().to_string(),
            volume_capability: Some(v1::VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeReaderOnly as i32,
                }),
            }),
            readonly: true,
            secrets,
            volume_context,
            ..Default::default()
        }
    }

    /// NodeUnpublishVolume for what [`CsiDriver::publish_request`] published.
    pub fn unpublish_request(&self, pod: &PodRef, volume: &str) -> v1::NodeUnpublishVolumeRequest {
        v1::NodeUnpublishVolumeRequest {
            volume_id: format!("csi-{}-{volume}", pod.uid),
            target_path: self.target_path(&pod.uid, volume).display().to_string(),
        }
    }

    async fn wait_ready(&self) -> Result<(), Error> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.exited() {
                return Err(self.child.exited_error(status));
            }
            if self.socket.exists() {
                if let Ok(mut id) = self.identity().await {
                    if id.probe(v1::ProbeRequest {}).await.is_ok() {
                        return Ok(());
                    }
                }
            }
            if t0.elapsed() > READY_TIMEOUT {
                return Err(Error::NotReady {
                    what: "secrets-store-csi-driver Probe".into(),
                    secs: READY_TIMEOUT.as_secs(),
                    log: self.child.log_path().to_path_buf(),
                    tail: self.child.log_tail(40),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for CsiDriver {
    fn drop(&mut self) {
        self.child.kill();
        process::detach_mounts_under(&self.kubelet_dir);
    }
}

/// A gRPC channel over a unix socket.
pub async fn unix_channel(path: &Path) -> Result<Channel, Error> {
    let socket = path.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::from_static("http://[::1]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })
}
