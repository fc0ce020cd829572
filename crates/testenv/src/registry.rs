//! A private image registry for tests: Debian's `docker-registry` (distribution 2.8) on loopback
//! with HTTPS (a CA of its own, [`crate::certs`]) and htpasswd Basic authentication or
//! distribution's token authentication ([`Auth`]), and images written as OCI layouts by hand and
//! pushed with `skopeo`.

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

/// How the registry authenticates pulls and pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// htpasswd: `WWW-Authenticate: Basic`.
    Basic,
    /// distribution's token protocol: `WWW-Authenticate: Bearer realm=...` naming a token
    /// service (a small HTTPS server in python3) that hands out, for [`USER`]/[`PASSWORD`] as
    /// Basic auth, an ES256 JWT (x5c header, chained to the registry's `rootcertbundle`) granting
    /// pull and push on every repository named in `start_with`'s `repositories`.
    Token,
}

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// The CA its serving certificate (and its token service's) chains to.
    pub ca: PathBuf,
    _child: ChildGuard,
    _token_service: Option<ChildGuard>,
}

/// The token service: GET with the right Basic credentials answers `{"token": ...}`, else 401.
const TOKEN_SERVICE: &str = r#"
import http.server, json, ssl, sys
token, expected, cert, key, port = sys.argv[1:]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Authorization") != expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="token"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"token": token, "expires_in": 300}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        sys.stderr.write("token service: %s%s" % (args[0] % args[1:], chr(10)))
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

fn wait_listening(child: &ChildGuard, port: u16, what: &str) -> Result<(), String> {
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.exited() {
            return Err(format!("{what} exited ({status}): {}", child.log_tail(20)));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(format!(
                "{what} did not listen within 20 s: {}",
                child.log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
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
        Self::start_with(dir, Auth::Basic, &[])
    }

    /// Starts the registry in `dir` (created): HTTPS on a free loopback port, `auth`
    /// (`repositories`: what a [`Auth::Token`] token grants).
    pub fn start_with(dir: &Path, auth: Auth, repositories: &[&str]) -> Result<Self, String> {
        let e = |what: &str| {
            let what = what.to_string();
            move |err: std::io::Error| format!("{what}: {err}")
        };
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(e("registry directory"))?;
        let pki = crate::certs::generate(&pki_dir).map_err(|err| format!("certificates: {err}"))?;
        let [port, token_port] =
            process::free_ports::<2>().map_err(|err| format!("free port: {err}"))?;
        let mut token_service = None;
        let auth_config = match auth {
            Auth::Basic => {
                let htpasswd = dir.join("htpasswd");
                std::fs::write(&htpasswd, format!("{USER}:{HTPASSWD_HASH}\n"))
                    .map_err(e("htpasswd"))?;
                format!(
                    "  htpasswd:\n    realm: kvbridge-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            Auth::Token => {
                let key = pki::generate_key(pki::KeyKind::Ec(pki::Curve::P256))
                    .map_err(|err| format!("token key: {err}"))?;
                let cert =
                    pki::self_signed(&crate::chain::request("kvbridge-token-issuer", true), &key)
                        .map_err(|err| format!("token certificate: {err}"))?;
                let bundle = dir.join("token-issuer.crt");
                std::fs::write(&bundle, pki::pem_encode("CERTIFICATE", &cert))
                    .map_err(e("token certificate"))?;
                let now = crate::jwt::now();
                let access: Vec<serde_json::Value> = repositories
                    .iter()
                    .map(|r| json!({"type": "repository", "name": r, "actions": ["pull", "push"]}))
                    .collect();
                use base64::Engine as _;
                let token = crate::jwt::sign(
                    "ES256",
                    json!({"x5c": [base64::engine::general_purpose::STANDARD.encode(&cert)]}),
                    &json!({"iss": "kvbridge-test-issuer", "sub": USER, "aud": "kvbridge-test-registry",
                        "iat": now, "nbf": now - 60, "exp": now + 3600, "jti": format!("t{now}"),
                        "access": access}),
                    &key,
                );
                let basic = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
                );
                let mut cmd = Command::new("python3");
                cmd.arg("-c")
                    .arg(TOKEN_SERVICE)
                    .arg(token)
                    .arg(basic)
                    .arg(&pki.serving_cert)
                    .arg(&pki.serving_key)
                    .arg(token_port.to_string());
                let child = process::spawn("token service", cmd, &dir.join("token.log"))
                    .map_err(|err| format!("python3 token service: {err}"))?;
                wait_listening(&child, token_port, "the token service")?;
                token_service = Some(child);
                format!(
                    "  token:\n    realm: https://127.0.0.1:{token_port}/token\n    service: kvbridge-test-registry\n    issuer: kvbridge-test-issuer\n    rootcertbundle: {}\n",
                    bundle.display()
                )
            }
        };
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: kvbridge-test\n  tls:\n    certificate: {}\n    key: {}\n\
                 auth:\n{auth_config}",
                dir.join("data").display(),
                pki.serving_cert.display(),
                pki.serving_key.display(),
            ),
        )
        .map_err(e("registry configuration"))?;
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&config);
        let child = process::spawn("docker-registry", cmd, &dir.join("registry.log"))
            .map_err(|err| format!("docker-registry: {err}"))?;
        wait_listening(&child, port, "docker-registry")?;
        Ok(Self {
            host: format!("127.0.0.1:{port}"),
            ca: pki.ca,
            _child: child,
            _token_service: token_service,
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
