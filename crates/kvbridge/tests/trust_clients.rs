//! CA trust end to end: a TLS server (`openssl s_server`) whose certificate chains to a CA kept in
//! a `kvbridge dev-vault` process; the bundle built by `kvbridge trust` (the webhook's init step)
//! and by `kvbridge mount` (objectFormat trust-bundle / truststore, the CSI path); real clients
//! run as processes (curl, Python `requests`, Node.js `https`, Java `HttpClient`, `openssl
//! s_client`) trust the server with the bundle applied as the webhook applies it (the
//! environment of [`injector::trust::trust_env`], the bundle mounted over the distribution's
//! path) and reject it without.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use testenv::process::ChildGuard;
use testenv::vault::DevVaultProcess;

const TENANT: &str = "6d2b6f1e-0e4c-4a8e-9a57-6b7662726467";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A vault holding a root CA (as a certificate and as a PEM secret) and a server certificate
/// for 127.0.0.1 / localhost issued by it.
const SEED: &str = include_str!("fixtures/trust-vault.yaml");

fn stderr(o: &Output) -> String {
    format!(
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn kvbridge(v: &DevVaultProcess) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env("AZURE_CLIENT_ID", "kvbridge-dev")
        .env("AZURE_CLIENT_SECRET", "kvbridge-dev-secret")
        .env("AZURE_TENANT_ID", TENANT)
        .env(
            "AZURE_AUTHORITY_HOST",
            format!("https://localhost:{}", v.port),
        );
    cmd
}

fn spec(v: &DevVaultProcess) -> String {
    let origin = format!("https://localhost:{}", v.port);
    let reference = |object: serde_json::Value| {
        serde_json::json!({
            "vaultUrl": format!("https://trust-demo.localhost:{}", v.port),
            "cloud": {
                "name": "KvbridgeDevVault",
                "authorityHost": format!("{origin}/"),
                "vaultDnsSuffix": format!("localhost:{}", v.port),
                "keyvaultResource": origin,
            },
            "object": object,
            "identity": {
                "type": "servicePrincipal",
                "tenantId": TENANT,
                "clientIdEnv": "KVBRIDGE_SP_0_CLIENT_ID",
                "clientSecretEnv": "KVBRIDGE_SP_0_CLIENT_SECRET",
            },
        })
    };
    serde_json::json!({"version": 1, "refs": {
        "corp-root": reference(serde_json::json!({"name": "corp-root", "type": "certificate"})),
        "corp-root-pem": reference(serde_json::json!({"name": "corp-root-pem", "type": "secret"})),
    }})
    .to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `openssl s_server` on 127.0.0.1 with the vault's server certificate, answering HTTP (`-www`).
fn tls_server(dir: &Path, key_and_chain: &Path) -> (ChildGuard, u16) {
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(key_and_chain)
        .arg("-key")
        .arg(key_and_chain);
    let child = testenv::process::spawn("openssl s_server", cmd, &dir.join("s_server.log"))
        .unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            child.exited().is_none(),
            "s_server exited: {}",
            child.log_tail(20)
        );
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "s_server not listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port)
}

/// One client: a name, and the command that exits 0 only when the TLS handshake (and the
/// HTTP request) succeeded.
struct Client {
    name: &'static str,
    cmd: Command,
}

fn clients(dir: &Path, port: u16) -> Vec<Client> {
    let url = format!("https://127.0.0.1:{port}/");
    let mut out = Vec::new();

    let mut curl = Command::new("curl");
    curl.args(["-sS", "--fail", "-o", "/dev/null", "--max-time", "20", &url]);
    out.push(Client {
        name: "curl",
        cmd: curl,
    });

    let python = std::env::var("KVBRIDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut py = Command::new(python);
    py.args([
        "-c",
        "import sys, requests; r = requests.get(sys.argv[1], timeout=20); print(r.status_code); sys.exit(0 if r.ok else 1)",
        &url,
    ]);
    out.push(Client {
        name: "python requests",
        cmd: py,
    });

    let mut node = Command::new("node");
    node.args([
        "-e",
        "require('https').get(process.argv[1], r => { r.resume(); r.on('end', () => process.exit(r.statusCode === 200 ? 0 : 1)); }).on('error', e => { console.error(String(e)); process.exit(1); });",
        &url,
    ]);
    out.push(Client {
        name: "node https",
        cmd: node,
    });

    let java_src = dir.join("TrustCheck.java");
    std::fs::write(
        &java_src,
        r#"import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;

public class TrustCheck {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
            .connectTimeout(Duration.ofSeconds(20)).build();
        HttpRequest request = HttpRequest.newBuilder(URI.create(args[0]))
            .timeout(Duration.ofSeconds(20)).GET().build();
        // s_server -www answers HTTP/1.0 and may keep the connection: the status is enough.
        HttpResponse<java.io.InputStream> response =
            client.send(request, HttpResponse.BodyHandlers.ofInputStream());
        System.out.println(response.statusCode());
        System.exit(response.statusCode() == 200 ? 0 : 1);
    }
}
"#,
    )
    .unwrap();
    let mut java = Command::new("java");
    java.arg(&java_src).arg(&url);
    out.push(Client {
        name: "java HttpClient",
        cmd: java,
    });

    let mut s_client = Command::new("openssl");
    s_client
        .args(["s_client", "-verify_return_error", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-verify_ip", "127.0.0.1"])
        .stdin(Stdio::null());
    out.push(Client {
        name: "openssl s_client",
        cmd: s_client,
    });
    out
}

fn keytool_list(p12: &Path) -> String {
    let out = Command::new("keytool")
        .args(["-list", "-v", "-storetype", "PKCS12", "-storepass"])
        .arg(render::trust::TRUSTSTORE_PASSWORD)
        .arg("-keystore")
        .arg(p12)
        .output()
        .unwrap();
    assert!(out.status.success(), "keytool: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn run_client(mut c: Client, env: &[(String, String)]) -> Output {
    // Whatever the test process has must not decide the outcome.
    for var in [
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "JAVA_TOOL_OPTIONS",
    ] {
        c.cmd.env_remove(var);
    }
    for (k, v) in env {
        c.cmd.env(k, v);
    }
    // Bounded: a client that hangs is a failure, not a stuck test.
    let mut child = c
        .cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn real_clients_trust_the_vault_ca_with_the_bundle_and_reject_without() {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(&seed, SEED).unwrap();
    let vault = DevVaultProcess::start(
        Path::new(bin()),
        &dir.path().join("state"),
        &seed,
        &dir.path().join("vault.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // The CSI path: kvbridge mount with kvbridge's trust formats (and the server's key+chain).
    let class = dir.path().join("class.yaml");
    std::fs::write(
        &class,
        format!(
            "keyvaultName: trust-demo\ntenantID: {TENANT}\nobjects: |\n  array:\n    - |\n      objectName: server-tls\n      objectType: secret\n      objectAlias: server.pem\n    - |\n      objectName: corp-root\n      objectType: cert\n      objectFormat: trust-bundle\n      objectAlias: bundle.pem\n    - |\n      objectName: corp-root-pem\n      objectType: secret\n      objectFormat: truststore\n      objectAlias: truststore.p12\n"
        ),
    )
    .unwrap();
    let mnt = dir.path().join("mnt");
    let out = kvbridge(&vault)
        .arg("mount")
        .arg("--class")
        .arg(&class)
        .arg("--target")
        .arg(&mnt)
        .args([
            "--vault-url",
            &format!("https://trust-demo.localhost:{}", vault.port),
        ])
        .arg("--ca-file")
        .arg(&vault.ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "kvbridge mount: {}", stderr(&out));

    // The init step: kvbridge trust with the spec the webhook writes.
    let trust_dir = dir.path().join("kvbridge-trust");
    let t0 = Instant::now();
    let out = kvbridge(&vault)
        .env("KVBRIDGE_TRUST_SPEC", spec(&vault))
        .env("KVBRIDGE_SP_0_CLIENT_ID", "kvbridge-dev")
        .env("KVBRIDGE_SP_0_CLIENT_SECRET", "kvbridge-dev-secret")
        .arg("trust")
        .arg("--out")
        .arg(&trust_dir)
        .arg("--ca-file")
        .arg(&vault.ca)
        .output()
        .unwrap();
    let trust_elapsed = t0.elapsed();
    assert!(out.status.success(), "kvbridge trust: {}", stderr(&out));
    let pem = trust_dir.join(render::trust::PEM_FILE);
    let p12 = trust_dir.join(render::trust::P12_FILE);
    let system = mount::trust::find_system_bundle(Path::new("/")).unwrap();
    let system_count = system
        .as_ref()
        .map(|(_, b)| render::trust::system_certs(b).unwrap().0.len())
        .unwrap_or(0);
    eprintln!(
        "kvbridge trust: {:?} (process), {} system certificates, PEM {} bytes, PKCS#12 {} bytes",
        trust_elapsed,
        system_count,
        std::fs::metadata(&pem).unwrap().len(),
        std::fs::metadata(&p12).unwrap().len()
    );

    // Both paths carry the vault's root (once: the certificate and the PEM secret are one CA),
    // after the system bundle.
    let root_subject = "kvbridge Trust Test Root CA";
    for bundle in [&pem, &mnt.join("bundle.pem")] {
        let text = std::fs::read_to_string(bundle).unwrap();
        let parsed = pki::parse_pem_bundle(&text).unwrap();
        let roots = parsed
            .certs
            .iter()
            .filter(|c| pki::cert_info(c).unwrap().subject.contains(root_subject))
            .count();
        assert_eq!(roots, 1, "{}", bundle.display());
        assert!(parsed.certs.len() > system_count.saturating_sub(1));
    }
    // Java sees every entry as a trusted certificate, the vault's root among them.
    for store in [&p12, &mnt.join("truststore.p12")] {
        let listing = keytool_list(store);
        let entries = listing.matches("Entry type: trustedCertEntry").count();
        assert!(entries >= 1, "{listing}");
        assert!(!listing.contains("PrivateKeyEntry"), "{listing}");
        assert!(listing.contains(root_subject), "{listing}");
        assert_eq!(
            entries,
            listing.matches("Alias name:").count(),
            "every entry is trusted"
        );
    }

    let (_server, port) = tls_server(dir.path(), &mnt.join("server.pem"));
    let env = injector::trust::trust_env(&trust_dir, None);
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for expected in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "JAVA_TOOL_OPTIONS",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }

    let mut failures = Vec::new();
    for c in clients(dir.path(), port) {
        let name = c.name;
        let out = run_client(c, &[]);
        if out.status.success() {
            failures.push(format!("{name} trusted the server without the bundle"));
        }
    }
    for c in clients(dir.path(), port) {
        let name = c.name;
        let out = run_client(c, &env);
        if !out.status.success() {
            failures.push(format!(
                "{name} rejected the server with the bundle: {}",
                stderr(&out)
            ));
        }
    }
    // The bundle mounted over the distribution's path (as the webhook mounts it), no
    // environment: curl and openssl find it where the image's own bundle was.
    let system_path = render::trust::SYSTEM_BUNDLE_PATHS[0];
    if Path::new(system_path).exists() {
        let script = format!(
            "mount --bind \"$1\" {system_path} && curl -sS --fail -o /dev/null --max-time 20 https://127.0.0.1:{port}/ && openssl s_client -verify_return_error -brief -connect 127.0.0.1:{port} </dev/null"
        );
        let out = Command::new("unshare")
            .args(["--mount", "sh", "-c", &script, "sh"])
            .arg(&pem)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "curl/openssl with the bundle mounted over {system_path}: {}",
                stderr(&out)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let _ = repo();
}
