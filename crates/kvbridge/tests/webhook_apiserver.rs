//! `kvbridge webhook` as a real process behind a MutatingWebhookConfiguration on the real
//! kube-apiserver: Pods created through the API server come back (and are stored) mutated, and
//! the stored container, run as a real process the way kubelet would start it, gets the values
//! from the dev vault.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use common::*;
use testenv::registry::{Registry, PASSWORD, USER};
use testenv::webhook::{self, INJECTION_LABEL};

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
    let Some((cp, client)) = cluster().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(dir.path(), &repo().join("examples/dev-vault.yaml"));

    // The webhook process.
    let (_webhook, url, cert) = start_webhook_without_lookup(cp, &vault, dir.path());

    // A namespace not opted in (its pods opt in with kvbridge's own label).
    let other = cp.namespace(&client, "noinject").await.unwrap();

    // Registered as akv2k8s's injector was: namespaces labelled for injection; and, in a second
    // entry, pods labelled `kvbridge.io/inject: "true"` in the other namespaces (objectSelector;
    // restricted here to this test's namespace, `NotIn` the webhook's own and kube-system in a
    // deployment).
    let mut by_label = webhook_entry(
        "pods.env.kvbridge.io",
        &url,
        &cert,
        LabelSelector {
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: INJECTION_LABEL.into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["enabled".into()]),
                },
                LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![other.clone()]),
                },
            ]),
            ..Default::default()
        },
    );
    by_label.object_selector = Some(LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "kvbridge.io/inject".into(),
            "true".into(),
        )])),
        ..Default::default()
    });
    webhook::register(
        &client,
        "kvbridge-env-injector",
        vec![
            webhook::pod_create(
                "env.kvbridge.io",
                &url,
                Some(std::fs::read(&cert).unwrap()),
                webhook::labelled(INJECTION_LABEL, "enabled"),
            ),
            by_label,
        ],
    )
    .await
    .unwrap();

    // A namespace opted in, with a service principal's Secret and two AzureKeyVaultSecrets.
    let ns = webhook::labelled_namespace(&client, "inject-", &[(INJECTION_LABEL, "enabled")])
        .await
        .unwrap();
    for namespace in [&ns, &other] {
        webhook::service_principal_secret(&client, namespace)
            .await
            .unwrap();
        for (name, object) in [
            ("db", json!({"name": "db-password", "type": "secret"})),
            (
                "cfg",
                json!({"name": "app-config", "type": "multi-key-value-secret", "contentType": "application/x-json"}),
            ),
        ] {
            webhook::service_principal_akvs(&client, namespace, name, "kvbridge-demo", object)
                .await
                .unwrap();
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

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
    let mutated_dry = webhook::until_mutated(&pods, &app, "webhook").await;
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
    let volume = volume(spec, "kvbridge-bin");
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
    let container_env = c.env.as_ref().unwrap();
    let mut cmd = kubelet_command(&installed, container_env, &creds, Some("creds"));
    let out = succeeded(cmd.args(&command[1..]));
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

    // A namespace not opted in: the webhook is not called for pods without kvbridge's label.
    let other_pods: Api<Pod> = Api::namespaced(client.clone(), &other);
    let p = other_pods
        .create(&PostParams::default(), &app)
        .await
        .unwrap();
    assert!(p.spec.unwrap().init_containers.is_none());
    // With it, the pod is mutated as in an opted-in namespace.
    let mut labelled = app.clone();
    labelled.metadata.name = Some("labelled".into());
    labelled.metadata.labels = Some(BTreeMap::from([(
        "kvbridge.io/inject".into(),
        "true".into(),
    )]));
    let p = other_pods
        .create(&PostParams::default(), &labelled)
        .await
        .unwrap();
    assert_eq!(
        p.spec.as_ref().unwrap().containers[0].command,
        stored.spec.as_ref().unwrap().containers[0].command
    );
    assert_eq!(
        p.spec.unwrap().init_containers.unwrap()[0].name,
        "kvbridge-install"
    );

    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configs
        .delete("kvbridge-env-injector", &DeleteParams::default())
        .await
        .unwrap();
}

// ---- entrypoints from a private registry ----------------------------------------------------

/// One webhook entry for Pod CREATE at `url`, selecting namespaces by `selector`.
fn webhook_entry(name: &str, url: &str, cert: &Path, selector: LabelSelector) -> MutatingWebhook {
    MutatingWebhook {
        timeout_seconds: Some(15),
        ..webhook::pod_create(name, url, Some(std::fs::read(cert).unwrap()), selector)
    }
}

/// Registers the configuration `config` with one entry `entry` (see [`webhook_entry`]) for the
/// namespace `ns` alone.
async fn register_for_namespace(
    client: &kube::Client,
    config: &str,
    entry: &str,
    url: &str,
    cert: &Path,
    ns: &str,
) {
    let selector = webhook::namespace_named(ns);
    webhook::register(
        client,
        config,
        vec![webhook_entry(entry, url, cert, selector)],
    )
    .await
    .unwrap();
}

/// A stored container started as kubelet would (its secretKeyRef variables read from
/// `secret`), with this build's binary standing in for /kvbridge/kvbridge: its stdout.
fn run_as_kubelet(c: &k8s_openapi::api::core::v1::Container, secret: &Secret) -> String {
    let command = c.command.clone().unwrap();
    assert_eq!(command[0], "/kvbridge/kvbridge");
    let mut cmd = kubelet_command(Path::new(bin()), c.env.as_ref().unwrap(), secret, None);
    let out = succeeded(cmd.args(&command[1..]));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoints_come_from_a_private_registry_with_pull_secrets() {
    if testenv::registry::tools().is_none() {
        return;
    }
    let Some((cp, client)) = cluster().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vault = dev_vault(dir.path(), &repo().join("examples/dev-vault.yaml"));
    let (cert, key) = serving_cert(dir.path());

    // The registry (HTTPS, its own CA, htpasswd), and an image pushed to it with the credentials.
    let registry = Registry::start(&dir.path().join("registry")).unwrap_or_else(|e| panic!("{e}"));
    let host = registry.host.clone();
    let script = r#"printf '%s|%s|%s' "$DB_PASSWORD" "$0" "$*""#;
    let layout = dir.path().join("oci");
    testenv::registry::oci_layout(
        &layout,
        "v1",
        &[
            (
                "amd64",
                json!(["sh", "-c", script]),
                json!(["amd64-cmd", "a", "b"]),
            ),
            ("arm64", json!(["/arm64/entrypoint"]), json!(["arm64-cmd"])),
        ],
    )
    .unwrap();
    let image = registry
        .push(&layout, "v1", "team/app")
        .unwrap_or_else(|e| panic!("{e}"));
    // Without credentials the registry refuses (the lookup below needs the pull secret).
    let anonymous = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", "--no-creds"])
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(
        !anonymous.status.success(),
        "the registry must require credentials"
    );

    // A second registry with distribution's token authentication (Bearer challenge, a token
    // service asked with the pull credentials), holding the same image.
    let token_registry = Registry::start_with(
        &dir.path().join("token-registry"),
        testenv::registry::Auth::Token,
        &["team/app"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let token_image = token_registry
        .push(&layout, "v1", "team/app")
        .unwrap_or_else(|e| panic!("{e}"));

    // The webhook trusts both registries' CAs.
    let cas = dir.path().join("registry-cas.pem");
    std::fs::write(
        &cas,
        [
            std::fs::read(&registry.ca).unwrap(),
            std::fs::read(&token_registry.ca).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let (_webhook, url) = start_webhook(
        cp,
        &vault,
        &cert,
        &key,
        &[format!("--registry-ca-file={}", cas.display())],
    );

    // A namespace of this test only (the other test's configuration selects the injection
    // label; this one selects the namespace by name).
    let ns = webhook::labelled_namespace(&client, "registry-", &[])
        .await
        .unwrap();
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config_name = format!("kvbridge-env-{ns}");
    register_for_namespace(&client, &config_name, "env.kvbridge.io", &url, &cert, &ns).await;

    webhook::service_principal_secret(&client, &ns)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let dockerconfig = json!({"auths": {
        host.clone(): {"username": USER, "password": PASSWORD},
        token_registry.host.clone(): {"username": USER, "password": PASSWORD},
    }});
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "pull"},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": dockerconfig.to_string()}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "puller", "annotations": {
                "azure.workload.identity/client-id": "11111111-2222-3333-4444-555555555555",
                "azure.workload.identity/tenant-id": "66666666-7777-8888-9999-000000000000"}},
            "imagePullSecrets": [{"name": "pull"}]}))
        .unwrap(),
    )
    .await
    .unwrap();
    let db_password = json!({"name": "db-password", "type": "secret"});
    // Workload identity naming neither clientId nor tenantId: the ServiceAccount's annotations.
    webhook::akvs(
        &client,
        &ns,
        "wi",
        json!({"vault": {"name": "kvbridge-demo", "object": db_password.clone(),
            "identity": {"serviceAccount": {"name": "puller"}}}}),
    )
    .await
    .unwrap();
    webhook::service_principal_akvs(&client, &ns, "db", "kvbridge-demo", db_password)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let image_pod = |name: &str, extra: serde_json::Value| -> Pod {
        let mut p = json!({
            "metadata": {"name": name, "annotations": {"kvbridge.io/inject": "true"}},
            "spec": {"containers": [{"name": "app", "image": image,
                "env": [{"name": "DB_PASSWORD", "value": "db@azurekeyvault"}]}]}
        });
        for (k, v) in extra.as_object().unwrap() {
            if k == "args" {
                p["spec"]["containers"][0]["args"] = v.clone();
            } else {
                p["spec"][k] = v.clone();
            }
        }
        serde_json::from_value(p).unwrap()
    };
    let wrapped = |p: &Pod| -> Vec<String> {
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert!(c.args.is_none());
        let command = c.command.clone().unwrap();
        let sep = command.iter().position(|a| a == "--").unwrap();
        command[sep + 1..].to_vec()
    };

    // The pod's own pull secret, no command, no args: the image's entrypoint and Cmd (amd64).
    let with_secret = json!({"imagePullSecrets": [{"name": "pull"}]});
    // The API server picks the configuration up asynchronously: dry-run until it is in effect.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let t0 = Instant::now();
    while pods
        .create(&dry, &image_pod("own-secret", with_secret.clone()))
        .await
        .unwrap()
        .spec
        .unwrap()
        .init_containers
        .is_none()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "webhook never called"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let created = pods
        .create(
            &PostParams::default(),
            &image_pod("own-secret", with_secret.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        wrapped(&created),
        ["sh", "-c", script, "amd64-cmd", "a", "b"]
    );
    // Run as kubelet would: the value from the dev vault, $0 and $@ from the image's Cmd.
    let creds = secrets.get("creds").await.unwrap();
    assert_eq!(
        run_as_kubelet(&created.spec.as_ref().unwrap().containers[0], &creds),
        "correct-horse-battery-staple|amd64-cmd|a b"
    );

    // The token-authenticated registry, same pull secret.
    let mut p = image_pod("token-auth", with_secret.clone());
    p.spec.as_mut().unwrap().containers[0].image = Some(token_image.clone());
    let p = pods.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(wrapped(&p), ["sh", "-c", script, "amd64-cmd", "a", "b"]);
    let token_log = std::fs::read_to_string(dir.path().join("token-registry/token.log")).unwrap();
    // kvbridge's token request (skopeo's have `account=`): the challenge's service and scope.
    assert!(
        token_log.contains(
            "GET /token?service=kvbridge-test-registry&scope=repository%3Ateam%2Fapp%3Apull HTTP/1.1\" 200"
        ),
        "{token_log}"
    );

    // args given: the entrypoint with the pod's args instead of the image's Cmd.
    let p = pods
        .create(
            &PostParams::default(),
            &image_pod(
                "with-args",
                json!({"imagePullSecrets": [{"name": "pull"}], "args": ["zero", "one"]}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(wrapped(&p), ["sh", "-c", script, "zero", "one"]);
    assert_eq!(
        run_as_kubelet(&p.spec.as_ref().unwrap().containers[0], &creds),
        "correct-horse-battery-staple|zero|one"
    );

    // The ServiceAccount's pull secret, and the node architecture from the nodeSelector.
    let p = pods
        .create(
            &PostParams::default(),
            &image_pod(
                "sa-secret-arm64",
                json!({"serviceAccountName": "puller", "nodeSelector": {"kubernetes.io/arch": "arm64"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(wrapped(&p), ["/arm64/entrypoint", "arm64-cmd"]);

    // No credentials: denied, naming the image and the fix; the password is in no message.
    let e = pods
        .create(&PostParams::default(), &image_pod("no-secret", json!({})))
        .await
        .unwrap_err();
    let msg = api_message(e);
    assert!(
        msg.contains(&image) && msg.contains("HTTP 401") && msg.contains("imagePullSecret"),
        "{msg}"
    );
    // Wrong credentials: denied as well.
    let wrong = json!({"auths": {host.clone(): {"username": USER, "password": "wrong"}}});
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "wrong"},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": wrong.to_string()}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let e = pods
        .create(
            &PostParams::default(),
            &image_pod(
                "wrong-secret",
                json!({"imagePullSecrets": [{"name": "wrong"}]}),
            ),
        )
        .await
        .unwrap_err();
    let msg = api_message(e);
    assert!(
        msg.contains(&image) && msg.contains("not accepted") && !msg.contains(PASSWORD),
        "{msg}"
    );
    // An image that is not there.
    let missing = format!("{host}/team/nothing:v1");
    let mut p = image_pod("missing-image", with_secret.clone());
    p.spec.as_mut().unwrap().containers[0].image = Some(missing.clone());
    let msg = api_message(pods.create(&PostParams::default(), &p).await.unwrap_err());
    assert!(msg.contains(&missing) && msg.contains("404"), "{msg}");
    // Stored pods were mutated; the denied ones do not exist.
    assert!(pods.get_opt("no-secret").await.unwrap().is_none());

    // Workload identity from the ServiceAccount's annotations, with its projected token.
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "workload-identity", "annotations": {"kvbridge.io/inject": "true"}},
        "spec": {"serviceAccountName": "puller", "containers": [{"name": "app", "image": image,
            "command": ["true"], "env": [{"name": "V", "value": "wi@azurekeyvault"}]}]}
    }))
    .unwrap();
    let stored = pods.create(&PostParams::default(), &p).await.unwrap();
    let c = &stored.spec.as_ref().unwrap().containers[0];
    let spec = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == injector::spec::SPEC_ENV)
        .and_then(|e| e.value.clone())
        .unwrap();
    assert_eq!(
        injector::spec::EnvSpec::parse(&spec).unwrap().refs["wi"].identity,
        injector::spec::RuntimeIdentity::Workload {
            tenant_id: "66666666-7777-8888-9999-000000000000".into(),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            token_file: "/var/run/secrets/kvbridge/azure/token".into(),
        }
    );
    assert!(stored
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .any(|v| v.name == "kvbridge-azure-token" && v.projected.is_some()));

    // kvbridge's own opt-in, checked by the webhook itself (this registration sends every pod
    // of the namespace, which is not labelled for injection): without it the pod is stored as
    // it is; the label works as the annotation does.
    let mut p = image_pod("not-opted-in", with_secret.clone());
    p.metadata.annotations = None;
    let stored = pods.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(stored.spec.as_ref().unwrap().containers[0].command, None);
    assert!(stored.spec.unwrap().init_containers.is_none());
    p.metadata.name = Some("label-opt-in".into());
    p.metadata.labels = Some(BTreeMap::from([(
        "kvbridge.io/inject".into(),
        "true".into(),
    )]));
    let stored = pods.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(
        wrapped(&stored),
        ["sh", "-c", script, "amd64-cmd", "a", "b"]
    );

    // --on-lookup-failure allow: a second webhook process, for a namespace of its own; a pod
    // whose image cannot be read (no credentials) is stored unmodified.
    let (_lenient, lenient_url) = start_webhook(
        cp,
        &vault,
        &cert,
        &key,
        &[
            format!("--registry-ca-file={}", cas.display()),
            "--on-lookup-failure=allow".into(),
        ],
    );
    let lenient_ns = cp.namespace(&client, "lenient").await.unwrap();
    let lenient_config = format!("kvbridge-env-{lenient_ns}");
    register_for_namespace(
        &client,
        &lenient_config,
        "lenient.env.kvbridge.io",
        &lenient_url,
        &cert,
        &lenient_ns,
    )
    .await;
    let no_identity = json!({"vault": {"name": "kvbridge-demo", "object": {"name": "db-password", "type": "secret"}}});
    webhook::akvs(&client, &lenient_ns, "db", no_identity)
        .await
        .unwrap();
    let lenient_pods: Api<Pod> = Api::namespaced(client.clone(), &lenient_ns);
    let mut with_command = image_pod("with-command", json!({}));
    with_command.spec.as_mut().unwrap().containers[0].command = Some(vec!["true".into()]);
    webhook::until_mutated(&lenient_pods, &with_command, "lenient webhook").await;
    let p = lenient_pods
        .create(&PostParams::default(), &image_pod("no-secret", json!({})))
        .await
        .unwrap();
    let spec = p.spec.unwrap();
    assert!(spec.init_containers.is_none());
    assert_eq!(spec.containers[0].command, None);
    configs
        .delete(&lenient_config, &DeleteParams::default())
        .await
        .unwrap();

    configs
        .delete(&config_name, &DeleteParams::default())
        .await
        .unwrap();
}
