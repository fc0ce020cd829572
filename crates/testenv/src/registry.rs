//! A private image registry for tests: Debian's `docker-registry` (distribution 2.8) on loopback
//! with HTTPS (a CA of its own, [`crate::certs`]) and htpasswd Basic authentication, and images
//! written as OCI layouts by hand and pushed with `skopeo`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::process::{self, ChildGuard};

/// The user of the registry's htpasswd file.
pub const USER: &str = "kvbridge";
/// Its password.
pub const PASSWORD: &str = "kvbridge-registry-test-password";
/// bcrypt of [`PASSWORD`] (docker-registry's htpasswd accepts bcrypt only; fixed so that tests
/// need no bcrypt tool).
const HTPASSWD_HASH: &str = "$2b$04$33.o8ORyjKpwfVCAl9RY5OGtsBR0y3YsSxCSiSmcQBBc5X4gMmW4u";

/// The tools, or `None` (announced on the terminal) when one is absent and
/// `KVBRIDGE_TESTENV=off` (the control plane's convention); absent otherwise: a panic naming the
/// packages to install.
pub fn tools() -> Option<()> {
    let missing: Vec<&str> = ["docker-registry", "skopeo"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    if std::env::var("KVBRIDGE_TESTENV").as_deref() == Ok("off") {
        eprintln!(
            "\n*** SKIPPED (KVBRIDGE_TESTENV=off): a registry test needs {missing:?} \
             (Debian packages docker-registry, skopeo). ***\n"
        );
        return None;
    }
    panic!("a registry test needs {missing:?}: apt-get install docker-registry skopeo");
}

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// The CA its serving certificate chains to.
    pub ca: PathBuf,
    _child: ChildGuard,
}

fn sha256(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn put_blob(layout: &Path, bytes: &[u8]) -> std::io::Result<(String, usize)> {
    let digest = sha256(bytes);
    let path = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::write(path, bytes)?;
    Ok((digest, bytes.len()))
}

/// One platform of a test image: architecture, `Entrypoint`, `Cmd`.
pub type PlatformImage<'a> = (&'a str, serde_json::Value, serde_json::Value);

/// Writes an OCI image layout whose tag `tag` is an image index of one linux image per entry
/// (an empty layer each; the configs differ in architecture, entrypoint and command).
pub fn oci_layout(layout: &Path, tag: &str, images: &[PlatformImage<'_>]) -> std::io::Result<()> {
    std::fs::create_dir_all(layout.join("blobs/sha256"))?;
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let layer = vec![0u8; 1024]; // an empty tar archive
    let (layer_digest, layer_size) = put_blob(layout, &layer)?;
    let mut manifests = Vec::new();
    for (arch, entrypoint, cmd) in images {
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": {"Entrypoint": entrypoint, "Cmd": cmd, "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let (config_digest, config_size) = put_blob(layout, config.to_string().as_bytes())?;
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
        });
        let (digest, size) = put_blob(layout, manifest.to_string().as_bytes())?;
        manifests.push(
            json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": {"os": "linux", "architecture": arch}}),
        );
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests});
    let (digest, size) = put_blob(layout, index.to_string().as_bytes())?;
    let top = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest, "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(layout.join("index.json"), top.to_string())
}

impl Registry {
    /// Starts the registry in `dir` (created): HTTPS on a free loopback port, htpasswd auth.
    pub fn start(dir: &Path) -> Result<Self, String> {
        let e = |what: &str| {
            let what = what.to_string();
            move |err: std::io::Error| format!("{what}: {err}")
        };
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(e("registry directory"))?;
        let pki = crate::certs::generate(&pki_dir).map_err(|err| format!("certificates: {err}"))?;
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{USER}:{HTPASSWD_HASH}\n")).map_err(e("htpasswd"))?;
        let [port] = process::free_ports::<1>().map_err(|err| format!("free port: {err}"))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: kvbridge-test\n  tls:\n    certificate: {}\n    key: {}\n\
                 auth:\n  htpasswd:\n    realm: kvbridge-test\n    path: {}\n",
                dir.join("data").display(),
                pki.serving_cert.display(),
                pki.serving_key.display(),
                htpasswd.display()
            ),
        )
        .map_err(e("registry configuration"))?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        let child = process::spawn("docker-registry", cmd, &dir.join("registry.log"))
            .map_err(|err| format!("docker-registry: {err}"))?;
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.exited() {
                return Err(format!(
                    "docker-registry exited ({status}): {}",
                    child.log_tail(20)
                ));
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!(
                    "docker-registry did not listen within 20 s: {}",
                    child.log_tail(20)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            host: format!("127.0.0.1:{port}"),
            ca: pki.ca,
            _child: child,
        })
    }

    /// Pushes tag `tag` of the OCI layout at `layout` (all platforms) as `<host>/<repository>:<tag>`
    /// with the registry's credentials; the image reference.
    pub fn push(&self, layout: &Path, tag: &str, repository: &str) -> Result<String, String> {
        let image = format!("{}/{repository}:{tag}", self.host);
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
            .arg(format!("--dest-creds={USER}:{PASSWORD}"))
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{image}"))
            .output()
            .map_err(|err| format!("skopeo: {err}"))?;
        if !out.status.success() {
            return Err(format!(
                "skopeo copy: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(image)
    }
}
