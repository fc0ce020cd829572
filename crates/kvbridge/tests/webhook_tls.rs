//! `kvbridge webhook`'s serving certificate, as real processes against the real kube-apiserver:
//! self-managed (CA + certificate created in a Secret shared by replicas, the webhook's own
//! MutatingWebhookConfiguration created with an empty caBundle and patched by the webhook, the
//! API server calling it through that CA, rotation of the certificate and of the CA with no
//! failed admission), and from files (re-read when they change, as cert-manager renews them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use common::*;
use testenv::webhook::{self, INJECTION_LABEL};

/// Starts `kvbridge webhook` with `args` and waits for its banner (printed once it serves).
fn start_webhook(kubeconfig: &Path, port: u16, args: &[String]) -> Killed {
    let mut cmd = Command::new(bin());
    cmd.args(["webhook", "--image", "kvbridge:test"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info");
    let (killed, line) = spawn_webhook(cmd);
    assert!(
        line.starts_with("kvbridge webhook listening on https://"),
        "banner: {line:?}"
    );
    killed
}

/// The certificate served on `port` (PEM), fetched by openssl; with `ca`, openssl must also
/// verify it for 127.0.0.1 against that bundle.
fn served(port: u16, ca: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost"]);
    if let Some(ca) = ca {
        cmd.arg("-CAfile")
            .arg(ca)
            .args(["-verify_return_error", "-verify_ip", "127.0.0.1"]);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (Some(begin), Some(end)) = (
        text.find("-----BEGIN CERTIFICATE-----"),
        text.find("-----END CERTIFICATE-----"),
    ) else {
        return Err(format!(
            "no certificate: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    };
    if ca.is_some() && !text.contains("Verify return code: 0 (ok)") {
        return Err(format!(
            "not verified: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text[begin..end + "-----END CERTIFICATE-----".len()].to_string())
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn pem_count(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// The webhook configuration of the self-managed test: an empty caBundle, reached by URL.
fn configuration(name: &str, port: u16) -> MutatingWebhookConfiguration {
    webhook::configuration(
        name,
        vec![webhook::pod_create(
            "env.kvbridge.io",
            &format!("https://127.0.0.1:{port}/mutate"),
            None,
            webhook::labelled(INJECTION_LABEL, "enabled"),
        )],
    )
}

/// A dry-run Pod create in `pods` naming an AzureKeyVaultSecret placeholder: `Ok` when the
/// API server called the webhook and got the pod mutated.
async fn admitted(pods: &Api<Pod>) -> Result<(), String> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
            "command": ["true"], "env": [{"name": "DB", "value": "db@azurekeyvault"}]}]},
    }))
    .unwrap();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match pods.create(&dry, &pod).await {
        Ok(p) if p.spec.as_ref().unwrap().init_containers.is_some() => Ok(()),
        Ok(_) => Err("admitted but not mutated".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_certificate_is_trusted_by_the_api_server_and_rotates() {
    let Some((cp, client)) = cluster().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // The webhook's namespace, and a namespace opted in with an AzureKeyVaultSecret.
    let own = cp.namespace(&client, "kvbridge-webhook").await.unwrap();
    let apps = cp.namespace(&client, "inject").await.unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &apps,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {INJECTION_LABEL: "enabled"}}})),
        )
        .await
        .unwrap();
    let db_password = json!({"name": "db-password", "type": "secret"});
    webhook::service_principal_akvs(&client, &apps, "db", "kvbridge-demo", db_password)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &apps);

    // The configuration exists first, with no caBundle (as the chart installs it).
    let config_name = format!("{own}-injector");
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let port = testenv::process::free_ports::<1>().unwrap()[0];
    configs
        .create(&PostParams::default(), &configuration(&config_name, port))
        .await
        .unwrap();
    let ca_bundle = |c: MutatingWebhookConfiguration| {
        c.webhooks.unwrap()[0]
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| String::from_utf8(b.0.clone()).unwrap())
            .unwrap_or_default()
    };
    assert_eq!(ca_bundle(configs.get(&config_name).await.unwrap()), "");

    // Two replicas started at once share one Secret. Short validities: the certificate is
    // renewed every 4 s, the CA's successor published at 6 s and signing from ~12 s.
    let args: Vec<String> = [
        format!("--namespace={own}"),
        "--cert-secret=webhook-tls".into(),
        "--service=kvbridge-webhook".into(),
        "--cert-san=127.0.0.1".into(),
        format!("--webhook-configuration={config_name}"),
        "--tenant-id=00000000-0000-0000-0000-000000000001".into(),
        "--cert-validity=6s".into(),
        "--ca-validity=24s".into(),
        "--cert-check-interval=500ms".into(),
    ]
    .into();
    let port_b = testenv::process::free_ports::<1>().unwrap()[0];
    let kubeconfig = cp.kubeconfig().to_path_buf();
    let (a, b) = {
        let (k1, k2) = (kubeconfig.clone(), kubeconfig.clone());
        let (a1, a2) = (args.clone(), args.clone());
        let ta = std::thread::spawn(move || start_webhook(&k1, port, &a1));
        let tb = std::thread::spawn(move || start_webhook(&k2, port_b, &a2));
        (ta.join().unwrap(), tb.join().unwrap())
    };
    let _replicas = (a, b);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &own);
    let secret = secrets.get("webhook-tls").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let bundle = ca_bundle(configs.get(&config_name).await.unwrap());
    assert_eq!(
        bundle,
        data(&secret, "ca.crt"),
        "caBundle patched from the Secret"
    );
    assert_eq!(pem_count(&bundle), 1);
    let bundle_file = dir.path().join("bundle.pem");
    std::fs::write(&bundle_file, &bundle).unwrap();
    let first = served(port, Some(&bundle_file)).unwrap();
    assert_eq!(first.trim(), data(&secret, "tls.crt").trim());
    assert_eq!(
        served(port_b, Some(&bundle_file)).unwrap(),
        first,
        "both replicas serve the one stored certificate"
    );

    // The API server calls the webhook through the patched caBundle (its informer picks the
    // patch up asynchronously: retried until the first success).
    let t0 = Instant::now();
    loop {
        match admitted(&pods).await {
            Ok(()) => break,
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(30), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Rotation: every served certificate verifies against the caBundle in effect, and every
    // admission succeeds, until the certificate was renewed twice and the CA once.
    let first_signer = data(&secret, "signer.crt");
    let mut leaves = BTreeSet::from([first.clone()]);
    let mut bundles_seen = BTreeSet::from([bundle.clone()]);
    let mut admissions = 0;
    let t0 = Instant::now();
    loop {
        let bundle = ca_bundle(configs.get(&config_name).await.unwrap());
        std::fs::write(&bundle_file, &bundle).unwrap();
        let leaf = served(port, Some(&bundle_file))
            .unwrap_or_else(|e| panic!("after {:?}: {e}", t0.elapsed()));
        leaves.insert(leaf);
        bundles_seen.insert(bundle);
        admitted(&pods)
            .await
            .unwrap_or_else(|e| panic!("admission after {:?}: {e}", t0.elapsed()));
        admissions += 1;
        let signer = data(&secrets.get("webhook-tls").await.unwrap(), "signer.crt");
        if leaves.len() >= 3 && signer != first_signer {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{} certificates, CA replaced: {}",
            leaves.len(),
            signer != first_signer
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        bundles_seen.iter().any(|b| pem_count(b) == 2),
        "the CA successor was published beside the old CA"
    );
    // The second replica serves the renewed certificate too.
    let secret = secrets.get("webhook-tls").await.unwrap();
    let stored = data(&secret, "tls.crt");
    let t1 = Instant::now();
    while served(port_b, None).unwrap().trim() != stored.trim() {
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "replica B never reloaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "rotation: {} certificates, {} bundles, {admissions} admissions in {:?}",
        leaves.len(),
        bundles_seen.len(),
        t0.elapsed()
    );

    configs
        .delete(&config_name, &DeleteParams::default())
        .await
        .unwrap();
}

/// An openssl key pair for 127.0.0.1 with `cn`.
fn openssl_pair(dir: &Path, cn: &str) -> (Vec<u8>, Vec<u8>) {
    let (cert, key) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    testenv::webhook::openssl_self_signed(&cert, &key, cn);
    (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
}

fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_reloaded_when_they_change() {
    let Some(cp) = testenv::control_plane().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert1, key1) = openssl_pair(dir.path(), "first");
    let (cert2, key2) = openssl_pair(dir.path(), "second");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    replace(&cert, &cert1);
    replace(&key, &key1);
    let port = testenv::process::free_ports::<1>().unwrap()[0];
    let _webhook = start_webhook(
        cp.kubeconfig(),
        port,
        &[
            format!("--tls-cert-file={}", cert.display()),
            format!("--tls-key-file={}", key.display()),
            "--cert-check-interval=200ms".into(),
        ],
    );
    let pem = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap().trim().to_string();
    assert_eq!(served(port, None).unwrap().trim(), pem(&cert1));

    // A half-written pair (new certificate, old key) is not served; the previous pair is.
    replace(&cert, &cert2);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(served(port, None).unwrap().trim(), pem(&cert1));
    // Completed: served from the next check on, without a restart.
    replace(&key, &key2);
    let t0 = Instant::now();
    while served(port, None).unwrap().trim() != pem(&cert2) {
        assert!(t0.elapsed() < Duration::from_secs(10), "never reloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Garbage keeps the current pair.
    replace(&cert, b"not a certificate");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(served(port, None).unwrap().trim(), pem(&cert2));

    // Missing files at start: refused with the path named.
    let out = Command::new(bin())
        .args(["webhook", "--image", "x", "--listen=127.0.0.1:0"])
        .arg(format!(
            "--tls-cert-file={}",
            dir.path().join("missing.crt").display()
        ))
        .arg(format!("--tls-key-file={}", key.display()))
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.crt"), "{err}");
}
