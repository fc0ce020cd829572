//! CA trust through the real kube-apiserver: `kvbridge webhook` as a real process behind a
//! MutatingWebhookConfiguration; a Pod annotated `kvbridge.io/trust` is stored with the trust
//! init step, the bundle mounted over the distributions' trust-store paths and the client
//! variables; the stored init step, run as kubelet would (secretKeyRef variables from the
//! Secret), builds the bundle from the dev vault.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use common::*;
use testenv::webhook;

/// Its own namespace label, so that the other webhook tests' configurations never select
/// these namespaces (and this one never theirs).
const LABEL: &str = "kvbridge.test/trust-injection";
const CONFIG: &str = "kvbridge-trust-injector";

fn pod(name: &str, trust: Option<&str>) -> Pod {
    let annotations = trust.map(|t| json!({"kvbridge.io/trust": t}));
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "containers": [
                {"name": "app", "image": "registry.example/app:1", "command": ["java", "-jar", "app.jar"],
                 "env": [{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx64m"}]},
                {"name": "proxy", "image": "registry.example/proxy:2", "command": ["proxy"]}
            ]
        }
    }))
    .unwrap()
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_pods_get_the_trust_bundle_through_the_api_server() {
    let Some((cp, client)) = cluster().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.yaml");
    std::fs::write(&seed, include_str!("fixtures/trust-vault.yaml")).unwrap();
    let vault = dev_vault(dir.path(), &seed);

    let (_webhook, url, cert) = start_webhook_without_lookup(cp, &vault, dir.path());

    webhook::register(
        &client,
        CONFIG,
        vec![webhook::pod_create(
            "trust.kvbridge.io",
            &url,
            Some(std::fs::read(&cert).unwrap()),
            webhook::labelled(LABEL, "enabled"),
        )],
    )
    .await
    .unwrap();

    let ns = webhook::labelled_namespace(
        &client,
        "trust-",
        &[(LABEL, "enabled"), ("kvbridge.test/testenv", "true")],
    )
    .await
    .unwrap();
    webhook::service_principal_secret(&client, &ns)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let corp_root = json!({"name": "corp-root", "type": "certificate"});
    webhook::service_principal_akvs(&client, &ns, "corp-ca", "trust-demo", corp_root)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let app = pod("app", Some("corp-ca"));
    let mutated_dry = webhook::until_mutated(&pods, &app, "webhook").await;
    assert!(
        pods.get_opt("app").await.unwrap().is_none(),
        "dry-run stored nothing"
    );

    pods.create(&PostParams::default(), &app).await.unwrap();
    let stored = pods.get("app").await.unwrap();
    assert_eq!(
        stored.spec.as_ref().unwrap().containers,
        mutated_dry.spec.as_ref().unwrap().containers
    );
    let spec = stored.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["kvbridge-install", "kvbridge-trust"]);
    let builder = &init[1];
    assert_eq!(
        builder.image.as_deref(),
        Some("registry.example/app:1"),
        "the app's image"
    );
    let command = builder.command.clone().unwrap();
    assert_eq!(
        command,
        [
            "/kvbridge/kvbridge".to_string(),
            "trust".into(),
            "--out".into(),
            "/var/run/kvbridge/trust".into(),
            format!("--ca-file={}", vault.ca.display()),
        ]
    );
    let trust_volume = volume(spec, "kvbridge-trust");
    assert_eq!(
        trust_volume.empty_dir.as_ref().unwrap().medium.as_deref(),
        Some("Memory")
    );
    for c in &spec.containers {
        let mounts: Vec<(&str, Option<&str>)> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.name == "kvbridge-trust")
            .map(|m| (m.mount_path.as_str(), m.sub_path.as_deref()))
            .collect();
        for path in render::trust::SYSTEM_BUNDLE_PATHS {
            assert!(
                mounts.contains(&(path, Some("ca-certificates.crt"))),
                "{}: {mounts:?}",
                c.name
            );
        }
        let pem = "/var/run/kvbridge/trust/ca-certificates.crt";
        assert_eq!(env_value(c, "SSL_CERT_FILE"), Some(pem));
        assert_eq!(env_value(c, "REQUESTS_CA_BUNDLE"), Some(pem));
        assert_eq!(env_value(c, "NODE_EXTRA_CA_CERTS"), Some(pem));
        assert!(env_value(c, "JAVA_TOOL_OPTIONS")
            .unwrap()
            .contains("-Djavax.net.ssl.trustStore=/var/run/kvbridge/trust/truststore.p12 -Djavax.net.ssl.trustStoreType=PKCS12"));
    }
    assert!(env_value(&spec.containers[0], "JAVA_TOOL_OPTIONS")
        .unwrap()
        .starts_with("-Xmx64m -D"));
    assert_eq!(
        spec.containers[0].command.as_deref().unwrap(),
        ["java", "-jar", "app.jar"],
        "no placeholder: the command is untouched"
    );
    let annotations = stored.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["kvbridge.io/trust-injected"], "true");

    // The stored init step, started as kubelet would, writing into a directory standing in
    // for the memory volume.
    let out_dir = dir.path().join("trust-volume");
    let creds = secrets.get("creds").await.unwrap();
    let env = builder.env.as_ref().unwrap();
    let mut cmd = kubelet_command(Path::new(bin()), env, &creds, Some("creds"));
    succeeded(
        cmd.args(["trust", "--out"])
            .arg(&out_dir)
            .args(&command[4..]),
    );
    let text = std::fs::read_to_string(out_dir.join("ca-certificates.crt")).unwrap();
    let parsed = pki::parse_pem_bundle(&text).unwrap();
    assert!(parsed.certs.iter().any(|c| pki::cert_info(c)
        .unwrap()
        .subject
        .contains("kvbridge Trust Test Root CA")));
    let store = pki::parse_pfx(
        &std::fs::read(out_dir.join("truststore.p12")).unwrap(),
        render::trust::TRUSTSTORE_PASSWORD,
    )
    .unwrap();
    assert_eq!(store.certs.len(), parsed.certs.len());

    // A missing AzureKeyVaultSecret: refused, naming it; a malformed list: refused.
    for (name, trust, expect) in [
        ("ghost", "corp-ca,ghost-ca", "\"ghost-ca\""),
        ("bad", "Corp_CA", "kvbridge.io/trust"),
    ] {
        let e = pods
            .create(&PostParams::default(), &pod(name, Some(trust)))
            .await
            .unwrap_err();
        let msg = match e {
            kube::Error::Api(s) => s.message,
            other => panic!("expected a denial, got {other}"),
        };
        assert!(msg.contains(expect), "{msg}");
    }
    // No annotation: stored unchanged.
    let plain = pods
        .create(&PostParams::default(), &pod("plain", None))
        .await
        .unwrap();
    assert!(plain.spec.unwrap().init_containers.is_none());

    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configs
        .delete(CONFIG, &DeleteParams::default())
        .await
        .unwrap();
}
