//! `kvbridge env` as a container runs it: a real process resolving placeholders against a real
//! `kvbridge dev-vault` process over HTTPS, then exec'ing a real program.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use std::time::{Duration, Instant};
use testenv::vault::DevVaultProcess;

const TENANT: &str = "6d2b6f1e-0e4c-4a8e-9a57-6b7662726467";
const DB_PASSWORD: &str = "correct-horse-battery-staple";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

type Vault = DevVaultProcess;

fn dev_vault(dir: &Path, faults: Option<&str>) -> Vault {
    let v = DevVaultProcess::start(
        Path::new(bin()),
        &dir.join("state"),
        &repo().join("examples/dev-vault.yaml"),
        &dir.join("vault.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    if let Some(f) = faults {
        // The admin API, with curl as an independent client.
        let out = Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/json",
                "--cacert",
            ])
            .arg(&v.ca)
            .args(["-d", f])
            .arg(format!("https://localhost:{}/admin/faults", v.port))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    v
}

/// What the webhook would hand the container: one reference per (name, object), all read with
/// the service principal whose credentials kubelet would put into two variables.
fn spec(v: &Vault, refs: &[(&str, serde_json::Value)]) -> String {
    let origin = format!("https://localhost:{}", v.port);
    let refs: serde_json::Map<String, serde_json::Value> = refs
        .iter()
        .map(|(name, object)| {
            (
                name.to_string(),
                serde_json::json!({
                    "vaultUrl": format!("https://kvbridge-demo.localhost:{}", v.port),
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
                }),
            )
        })
        .collect();
    serde_json::json!({"version": 1, "refs": refs}).to_string()
}

fn env_cmd(v: &Vault, spec: &str, vars: &[(&str, &str)], program: &[&str]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KVBRIDGE_ENV_SPEC", spec)
        .env("KVBRIDGE_SP_0_CLIENT_ID", "kvbridge-dev")
        .env("KVBRIDGE_SP_0_CLIENT_SECRET", "kvbridge-dev-secret")
        .arg("env")
        .arg("--ca-file")
        .arg(&v.ca)
        .arg("--")
        .args(program);
    for (k, val) in vars {
        cmd.env(k, val);
    }
    cmd
}

/// `/proc/<pid>/environ`-style NUL-separated `K=V` entries.
fn parse_environ(raw: &[u8]) -> BTreeMap<String, String> {
    raw.split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let s = String::from_utf8_lossy(e);
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn placeholders_resolved_and_program_execed_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(dir.path(), None);
    let spec = spec(
        &vault,
        &[
            (
                "db",
                serde_json::json!({"name": "db-password", "type": "secret"}),
            ),
            (
                "cfg",
                serde_json::json!({"name": "app-config", "type": "multi-key-value-secret", "contentType": "application/x-json"}),
            ),
            (
                "tls",
                serde_json::json!({"name": "app-tls", "type": "certificate"}),
            ),
            (
                "tls-pem",
                serde_json::json!({"name": "app-tls-pem", "type": "certificate"}),
            ),
            (
                "sign",
                serde_json::json!({"name": "signing-ec", "type": "key"}),
            ),
        ],
    );
    let pidfile = dir.path().join("pid");
    let child = env_cmd(
        &vault,
        &spec,
        &[
            ("DB_PASSWORD", "db@azurekeyvault"),
            ("DB_PASSWORD_AGAIN", "db@azurekeyvault?"),
            ("DB_HOST", "cfg@azurekeyvault?db_host"),
            ("API_KEY", "cfg@azurekeyvault?api_key"),
            ("TLS_CRT", "tls@azurekeyvault?tls.crt"),
            ("TLS_KEY", "tls@azurekeyvault?tls.key"),
            ("TLS_CHAIN", "tls@azurekeyvault"),
            ("TLS_RAW", "tls@azurekeyvault?raw"),
            ("PEM_KEY", "tls-pem@azurekeyvault?tls.key"),
            ("SIGNING_KEY", "sign@azurekeyvault"),
            ("OWNER", "ops@azurekeyvault.example.com"),
            ("PLAIN", "hello"),
            ("PIDFILE", pidfile.to_str().unwrap()),
        ],
        &[
            "sh",
            "-c",
            r#"echo $$ > "$PIDFILE"; exec cat /proc/self/environ"#,
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let wrapper_pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // exec, not fork: the program ran as the wrapper's own process.
    let program_pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(program_pid, wrapper_pid, "same pid");

    let env = parse_environ(&out.stdout);
    assert_eq!(env["DB_PASSWORD"], DB_PASSWORD);
    assert_eq!(env["DB_PASSWORD_AGAIN"], DB_PASSWORD);
    assert_eq!(env["DB_HOST"], "db.demo.internal");
    assert_eq!(env["API_KEY"], "demo-api-key-123");
    assert!(
        env["TLS_KEY"].starts_with("-----BEGIN PRIVATE KEY-----"),
        "{}",
        &env["TLS_KEY"][..40]
    );
    assert!(env["PEM_KEY"].starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(!env["TLS_CRT"].contains("PRIVATE KEY"));
    assert_eq!(
        env["TLS_CRT"].matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and CA"
    );
    assert_eq!(env["TLS_CHAIN"], env["TLS_CRT"]);
    assert!(
        !env["TLS_RAW"].contains("-----") && env["TLS_RAW"].len() > 1000,
        "raw: the stored base64 PKCS#12"
    );
    assert!(env["SIGNING_KEY"].starts_with("-----BEGIN PUBLIC KEY-----"));
    assert_eq!(
        env["OWNER"], "ops@azurekeyvault.example.com",
        "not a placeholder"
    );
    assert_eq!(env["PLAIN"], "hello");
    for control in [
        "KVBRIDGE_ENV_SPEC",
        "KVBRIDGE_SP_0_CLIENT_ID",
        "KVBRIDGE_SP_0_CLIENT_SECRET",
    ] {
        assert!(
            !env.contains_key(control),
            "{control} handed to the program"
        );
    }
    // The certificate and key really belong together (checked by openssl, an independent parser).
    let crt = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&crt, &env["TLS_CRT"]).unwrap();
    std::fs::write(&key, &env["TLS_KEY"]).unwrap();
    let pubkey = |args: &[&str], path: &Path| {
        let o = Command::new("openssl")
            .args(args)
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        o.stdout
    };
    assert_eq!(
        pubkey(&["x509", "-noout", "-pubkey", "-in"], &crt),
        pubkey(&["pkey", "-pubout", "-in"], &key)
    );
    // Values never logged.
    let log = stderr(&out);
    assert!(
        !log.contains(DB_PASSWORD) && !log.contains("demo-api-key"),
        "{log}"
    );
    assert!(log.contains("TLS_KEY"), "names are logged: {log}");
}

#[test]
fn any_failure_names_the_variable_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(dir.path(), None);
    let spec = spec(
        &vault,
        &[
            (
                "db",
                serde_json::json!({"name": "db-password", "type": "secret"}),
            ),
            (
                "missing",
                serde_json::json!({"name": "no-such-secret", "type": "secret"}),
            ),
            (
                "cfg",
                serde_json::json!({"name": "app-config", "type": "multi-key-value-secret", "contentType": "application/x-json"}),
            ),
        ],
    );
    let marker = dir.path().join("started");
    let script = format!("touch {}", marker.display());
    let run = |vars: &[(&str, &str)]| {
        env_cmd(&vault, &spec, vars, &["sh", "-c", &script])
            .output()
            .unwrap()
    };

    let out = run(&[
        ("GOOD", "db@azurekeyvault"),
        ("GONE", "missing@azurekeyvault"),
        ("NO_ENTRY", "cfg@azurekeyvault?nope"),
        ("UNKNOWN_REF", "ghost@azurekeyvault"),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!marker.exists(), "nothing started");
    // Reference and query problems are found before any vault read.
    assert!(err.contains("UNKNOWN_REF (ghost@azurekeyvault)"), "{err}");
    assert!(!err.contains(DB_PASSWORD), "{err}");

    let out = run(&[
        ("GOOD", "db@azurekeyvault"),
        ("GONE", "missing@azurekeyvault"),
        ("NO_ENTRY", "cfg@azurekeyvault?nope"),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!marker.exists(), "nothing started");
    assert!(err.contains("GONE (missing@azurekeyvault)"), "{err}");
    assert!(err.contains("no-such-secret"), "names the object: {err}");
    assert!(err.contains("NO_ENTRY (cfg@azurekeyvault?nope)"), "{err}");
    assert!(err.contains("\"nope\""), "{err}");
    assert!(!err.contains("GOOD"), "only failures listed: {err}");
    assert!(
        !err.contains(DB_PASSWORD) && !err.contains("db.demo.internal"),
        "{err}"
    );

    let out = run(&[
        ("BAD", "Bad_Name@azurekeyvault"),
        ("Q", "db@azurekeyvault?tls.key/x"),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("BAD: ") && err.contains("Q: "), "{err}");

    let out = run(&[("Q", "db@azurekeyvault?nonsense")]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("Q (db@azurekeyvault?nonsense)") && err.contains("valid:"),
        "{err}"
    );

    // Without the spec, placeholders are an error, not passed through.
    let out = Command::new(bin())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DB", "db@azurekeyvault")
        .args(["env", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("KVBRIDGE_ENV_SPEC is not set") && err.contains("DB"),
        "{err}"
    );
    assert!(!marker.exists(), "nothing started");

    // A wrong service-principal secret: Entra refuses, the variable and the object are named.
    let out = env_cmd(
        &vault,
        &spec,
        &[("GOOD", "db@azurekeyvault")],
        &["sh", "-c", &script],
    )
    .env("KVBRIDGE_SP_0_CLIENT_SECRET", "wrong")
    .output()
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("GOOD (db@azurekeyvault)"), "{err}");
    assert!(!marker.exists(), "nothing started");
}

#[allow(unsafe_code)]
fn kill(pid: u32, signal: i32) -> i32 {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, signal) }
}

#[test]
fn exit_status_and_signals_are_the_programs() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(dir.path(), None);
    let spec = spec(
        &vault,
        &[(
            "db",
            serde_json::json!({"name": "db-password", "type": "secret"}),
        )],
    );
    let vars = [("DB", "db@azurekeyvault")];

    let out = env_cmd(&vault, &spec, &vars, &["sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));

    let out = env_cmd(&vault, &spec, &vars, &["/no/such/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(stderr(&out).contains("/no/such/program"));

    // A signal sent to the pid the container runtime knows reaches the program itself.
    let mut child = env_cmd(&vault, &spec, &vars, &["sleep", "60"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    loop {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("sleep"))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "sleep never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(kill(pid, libc::SIGTERM), 0);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
}

/// While the vault is slow, the wrapper's own environment (what `/proc/<pid>/environ` shows to
/// anyone who may read it) holds the placeholders, never the values.
#[test]
fn values_never_in_the_wrappers_environment() {
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(dir.path(), Some(r#"{"latency_ms": 1500}"#));
    let spec = spec(
        &vault,
        &[(
            "db",
            serde_json::json!({"name": "db-password", "type": "secret"}),
        )],
    );
    let child = env_cmd(
        &vault,
        &spec,
        &[("DB", "db@azurekeyvault")],
        &["cat", "/proc/self/environ"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let pid = child.id();
    let mut samples = 0;
    loop {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if exe.as_os_str() != bin() {
            break;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/environ")) else {
            break;
        };
        // Read the exe again: the sample counts only if the exec had not happened yet.
        let still = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if still.as_os_str() != bin() {
            break;
        }
        let env = parse_environ(&raw);
        if env.is_empty() {
            continue;
        }
        assert_eq!(env["DB"], "db@azurekeyvault");
        assert!(!String::from_utf8_lossy(&raw).contains(DB_PASSWORD));
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(samples >= 5, "sampled the wrapper {samples} times");
    assert_eq!(parse_environ(&out.stdout)["DB"], DB_PASSWORD);
}
