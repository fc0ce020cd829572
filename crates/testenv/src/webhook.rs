//! Admission webhook setup shared by the webhook tests and benches: a MutatingWebhookConfiguration
//! for Pod CREATE reaching a webhook by URL, labelled namespaces, and the objects the injector
//! reads (the service principal's `creds` Secret, AzureKeyVaultSecrets).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::ByteString;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, PostParams,
};
use kube::Client;
use serde_json::json;

/// The namespace label akv2k8s's env injector selects (`enabled` opts a namespace in).
pub const INJECTION_LABEL: &str = "azure-key-vault-env-injection";

/// A webhook entry for Pod CREATE at `url` (failurePolicy Fail, timeout 10 s), trusting
/// `ca_bundle` (none: the API server's roots, or a caBundle patched in later), for the namespaces
/// `namespace_selector` selects.
pub fn pod_create(
    name: &str,
    url: &str,
    ca_bundle: Option<Vec<u8>>,
    namespace_selector: LabelSelector,
) -> MutatingWebhook {
    MutatingWebhook {
        name: name.into(),
        admission_review_versions: vec!["v1".into()],
        side_effects: "None".into(),
        failure_policy: Some("Fail".into()),
        timeout_seconds: Some(10),
        client_config: WebhookClientConfig {
            url: Some(url.into()),
            ca_bundle: ca_bundle.map(ByteString),
            service: None,
        },
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            scope: None,
        }]),
        namespace_selector: Some(namespace_selector),
        ..Default::default()
    }
}

/// A selector of the objects labelled `key=value`.
pub fn labelled(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(key.into(), value.into())])),
        ..Default::default()
    }
}

/// A selector of the one namespace named `ns`.
pub fn namespace_named(ns: &str) -> LabelSelector {
    labelled("kubernetes.io/metadata.name", ns)
}

/// A MutatingWebhookConfiguration `name` holding `webhooks`.
pub fn configuration(name: &str, webhooks: Vec<MutatingWebhook>) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        webhooks: Some(webhooks),
    }
}

/// Registers the MutatingWebhookConfiguration `name` with `webhooks`, replacing one of that name
/// left by an earlier run.
pub async fn register(
    client: &Client,
    name: &str,
    webhooks: Vec<MutatingWebhook>,
) -> Result<MutatingWebhookConfiguration, kube::Error> {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = configs.delete(name, &DeleteParams::default()).await;
    configs
        .create(&PostParams::default(), &configuration(name, webhooks))
        .await
}

/// Creates a namespace named `{prefix}{random}` with `labels`; returns its name.
pub async fn labelled_namespace(
    client: &Client,
    prefix: &str,
    labels: &[(&str, &str)],
) -> Result<String, kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let ns = Namespace {
        metadata: ObjectMeta {
            generate_name: Some(prefix.into()),
            labels: (!labels.is_empty()).then_some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = namespaces.create(&PostParams::default(), &ns).await?;
    Ok(created.metadata.name.unwrap_or_default())
}

/// The Secret `creds` in `ns` holding the dev vault's service principal
/// (`clientid`/`clientsecret`), as AzureKeyVaultSecrets with a `servicePrincipal` identity name it.
pub async fn service_principal_secret(client: &Client, ns: &str) -> Result<Secret, kube::Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "creds"},
        "stringData": {"clientid": "kvbridge-dev", "clientsecret": "kvbridge-dev-secret"}}))
    .map_err(kube::Error::SerdeError)?;
    secrets.create(&PostParams::default(), &secret).await
}

/// Creates the AzureKeyVaultSecret `name` in `ns` for `object` (its `spec.vault.object`) in
/// vault `vault`, read with the service principal of the Secret `creds`.
pub async fn service_principal_akvs(
    client: &Client,
    ns: &str,
    name: &str,
    vault: &str,
    object: serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    akvs(
        client,
        ns,
        name,
        json!({"vault": {"name": vault, "object": object,
            "identity": {"servicePrincipal": {"secretRef": {"name": "creds"}}}}}),
    )
    .await
}

/// Creates the AzureKeyVaultSecret (`spv.no/v2beta1`) `name` in `ns` with `spec`.
pub async fn akvs(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "spv.no",
        "v2beta1",
        "AzureKeyVaultSecret",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let object = DynamicObject::new(name, &resource).data(json!({ "spec": spec }));
    api.create(&PostParams::default(), &object).await
}

/// Dry-run creates `pod` in `pods` until the API server has the webhook in effect (it picks a new
/// configuration up asynchronously) and the pod comes back mutated (with init containers);
/// returns the mutated pod. Panics after 30 s ("`what` never called") or on an error.
pub async fn until_mutated(pods: &Api<Pod>, pod: &Pod, what: &str) -> Pod {
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let t0 = Instant::now();
    loop {
        let p = match pods.create(&dry, pod).await {
            Ok(p) => p,
            Err(e) => panic!("dry-run pod create: {e}"),
        };
        if p.spec.as_ref().is_some_and(|s| s.init_containers.is_some()) {
            return p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{what} never called"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes a self-signed P-256 certificate for 127.0.0.1 with common name `cn` to `cert` and its
/// key to `key` (openssl as an independent tool). Panics with openssl's message if it fails.
pub fn openssl_self_signed(cert: &Path, key: &Path, cn: &str) {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("openssl: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!("running openssl: {e}"),
    }
}
