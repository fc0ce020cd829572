//! `kvbridge webhook` as a real process behind a MutatingWebhookConfiguration on the real
//! kube-apiserver: Pods created through the API server come back (and are stored) mutated, and
//! the stored container, run as a real process the way kubelet would start it, gets the values
//! from the dev vault.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use serde_json::json;
use testenv::vault::DevVaultProcess;

const INJECTION_LABEL: &str = "azure-key-vault-env-injection";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvbridge")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A self-signed serving certificate for 127.0.0.1 (openssl as an independent tool).
fn serving_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", "/CN=kvbridge-webhook"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn pod(name: &str, command: Option<Vec<&str>>, env: &[(&str, &str)]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.example/app:1",
                "command": command,
                "env": env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
            }]
        }
    }))
    .unwrap()
}

fn api_message(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message,
        other => panic!("expected a denial, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_mutated_through_the_api_server_and_run() {
    let Some(cp) = testenv::control_plane().await else {
        return;
    };
    let client = cp.client().await.expect("client");
    cp.install_crds(&client, &repo().join("deploy/helm/kvbridge/files/crds"))
        .await
        .expect("CRDs");
    let dir = tempfile::tempdir().unwrap();
    let vault = DevVaultProcess::start(
        Path::new(bin()),
        &dir.path().join("vault"),
        &repo().join("examples/dev-vault.yaml"),
        &dir.path().join("vault.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // The webhook process.
    let (cert, key) = serving_cert(dir.path());
    let mut child = Command::new(bin())
        .args([
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--image",
            "kvbridge:test",
        ])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .args(["--tenant-id", &vault.tenant])
        .arg("--cloud-env-file")
        .arg(&vault.cloud_env_file)
        .arg(format!("--env-arg=--ca-file={}", vault.ca.display()))
        .env("KUBECONFIG", cp.kubeconfig())
        .env_remove("POD_NAMESPACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _webhook = Killed(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("kvbridge webhook listening on ")
        .unwrap_or_else(|| panic!("banner: {line:?}"))
        .to_string();

    // Registered as akv2k8s's injector was: namespaces labelled for injection.
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some("kvbridge-env-injector".into()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "env.kvbridge.io".into(),
            admission_review_versions: vec!["v1".into()],
            side_effects: "None".into(),
            failure_policy: Some("Fail".into()),
            timeout_seconds: Some(10),
            client_config: WebhookClientConfig {
                url: Some(url),
                ca_bundle: Some(ByteString(std::fs::read(&cert).unwrap())),
                service: None,
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: None,
            }]),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(INJECTION_LABEL.into(), "enabled".into())])),
                ..Default::default()
            }),
            ..Default::default()
        }]),
    };
    let _ = configs
        .delete("kvbridge-env-injector", &DeleteParams::default())
        .await;
    configs
        .create(&PostParams::default(), &config)
        .await
        .unwrap();

    // A namespace opted in, with a service principal's Secret and two AzureKeyVaultSecrets.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"generateName": "inject-",
                "labels": {INJECTION_LABEL: "enabled"}}}))
            .unwrap(),
        )
        .await
        .unwrap()
        .metadata
        .name
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "creds"},
                "stringData": {"clientid": "kvbridge-dev", "clientsecret": "kvbridge-dev-secret"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let akvs: Api<controller::crd::AzureKeyVaultSecret> = Api::namespaced(client.clone(), &ns);
    for (name, object) in [
        ("db", json!({"name": "db-password", "type": "secret"})),
        (
            "cfg",
            json!({"name": "app-config", "type": "multi-key-value-secret", "contentType": "application/x-json"}),
        ),
    ] {
        let a = serde_json::from_value(json!({
            "apiVersion": "spv.no/v2beta1", "kind": "AzureKeyVaultSecret",
            "metadata": {"name": name},
            "spec": {"vault": {"name": "kvbridge-demo", "object": object,
                "identity": {"servicePrincipal": {"secretRef": {"name": "creds"}}}}},
        }))
        .unwrap();
        akvs.create(&PostParams::default(), &a).await.unwrap();
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let env = [
        ("DB_PASSWORD", "db@azurekeyvault"),
        ("DB_HOST", "cfg@azurekeyvault?db_host"),
        ("PLAIN", "plain"),
    ];
    let script = r#"printf '%s|%s|%s' "$DB_PASSWORD" "$DB_HOST" "$PLAIN""#;
    let app = pod("app", Some(vec!["sh", "-c", script]), &env);

    // The API server picks the configuration up asynchronously: dry-run until it is in effect
    // (dry-run also shows the webhook answers without anything stored).
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mutated_dry = loop {
        let p = pods.create(&dry, &app).await.unwrap();
        if p.spec.as_ref().unwrap().init_containers.is_some() {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "webhook never called"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        pods.get_opt("app").await.unwrap().is_none(),
        "dry-run stored nothing"
    );

    let created = pods.create(&PostParams::default(), &app).await.unwrap();
    let stored = pods.get("app").await.unwrap();
    assert_eq!(stored.spec, created.spec);
    assert_eq!(
        stored.spec.as_ref().unwrap().containers,
        mutated_dry.spec.as_ref().unwrap().containers
    );
    let spec = stored.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].name, "kvbridge-install");
    assert_eq!(init[0].image.as_deref(), Some("kvbridge:test"));
    assert_eq!(
        init[0].command.as_deref().unwrap(),
        ["kvbridge", "copy-self", "/kvbridge/kvbridge"]
    );
    let c = &spec.containers[0];
    let command = c.command.clone().unwrap();
    assert_eq!(
        command,
        [
            "/kvbridge/kvbridge".to_string(),
            "env".into(),
            format!("--ca-file={}", vault.ca.display()),
            "--".into(),
            "sh".into(),
            "-c".into(),
            script.into()
        ]
    );
    let volume = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "kvbridge-bin")
        .unwrap();
    assert_eq!(
        volume.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
    assert_eq!(
        stored.metadata.annotations.as_ref().unwrap()["kvbridge.io/env-injected"],
        "true"
    );

    // The init container's command, run here: the binary copied into the "volume".
    let bin_dir = dir.path().join("kvbridge-bin");
    std::fs::create_dir(&bin_dir).unwrap();
    let installed = bin_dir.join("kvbridge");
    let init_command = init[0].command.as_ref().unwrap();
    let out = Command::new(bin())
        .args(&init_command[1..2])
        .arg(&installed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_dir(&bin_dir).unwrap().count(),
        1,
        "no temporary left"
    );

    // The stored container, started as kubelet would (secretKeyRef variables read from the
    // Secret), with the copied binary standing in for /kvbridge/kvbridge.
    let creds = secrets.get("creds").await.unwrap();
    let mut cmd = Command::new(&installed);
    cmd.args(&command[1..])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for e in c.env.as_ref().unwrap() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => {
                let r = from.secret_key_ref.as_ref().unwrap();
                assert_eq!(r.name, "creds");
                String::from_utf8(creds.data.as_ref().unwrap()[&r.key].0.clone()).unwrap()
            }
            _ => panic!("{e:?}"),
        };
        cmd.env(&e.name, value);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "correct-horse-battery-staple|db.demo.internal|plain"
    );

    // No command in the spec: refused, naming the image and the fix.
    let e = pods
        .create(&PostParams::default(), &pod("nocmd", None, &env))
        .await
        .unwrap_err();
    let msg = api_message(e);
    assert!(
        msg.contains("registry.example/app:1") && msg.contains("set `command:`"),
        "{msg}"
    );
    // An AzureKeyVaultSecret that does not exist: refused, naming it.
    let e = pods
        .create(
            &PostParams::default(),
            &pod("ghost", Some(vec!["true"]), &[("X", "ghost@azurekeyvault")]),
        )
        .await
        .unwrap_err();
    let msg = api_message(e);
    assert!(
        msg.contains("\"ghost\"") && msg.contains("does not exist"),
        "{msg}"
    );
    // No placeholders: stored unchanged.
    let plain = pods
        .create(
            &PostParams::default(),
            &pod("plain", Some(vec!["true"]), &[("A", "b")]),
        )
        .await
        .unwrap();
    assert!(plain.spec.unwrap().init_containers.is_none());

    // A namespace not opted in: the webhook is not called.
    let other = cp.namespace(&client, "noinject").await.unwrap();
    let other_pods: Api<Pod> = Api::namespaced(client.clone(), &other);
    let p = other_pods
        .create(&PostParams::default(), &app)
        .await
        .unwrap();
    assert!(p.spec.unwrap().init_containers.is_none());

    configs
        .delete("kvbridge-env-injector", &DeleteParams::default())
        .await
        .unwrap();
}
