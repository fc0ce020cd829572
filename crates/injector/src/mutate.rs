//! The Pod mutation, pure: which containers use placeholders, and the JSON Patch that runs them
//! through `kvbridge env` (an init container copying the binary into a memory `emptyDir`, each
//! such container's command wrapped, the resolved references handed over in [`SPEC_ENV`]).
//!
//! The command comes from the pod spec (the webhook fills it in beforehand from the image's
//! registry when the spec has none, [`crate::lookup`]); a container with placeholders and still
//! no `command` is refused with a message naming the image and the fix.

use std::collections::{BTreeMap, BTreeSet};

use controller::crd::AzureKeyVaultSecretSpec;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, Pod, ProjectedVolumeSource,
    SecretKeySelector, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keyvault::Cloud;
use serde_json::json;

use crate::placeholder;
use crate::spec::{EnvSpec, Reference, RuntimeIdentity, SPEC_ENV};

/// Annotation on a mutated pod (idempotence: a pod carrying it is left alone).
pub const INJECTED_ANNOTATION: &str = "kvbridge.io/env-injected";
/// The init container copying the binary.
pub const INSTALL_CONTAINER: &str = "kvbridge-install";
/// The memory volume holding the binary.
pub const BIN_VOLUME: &str = "kvbridge-bin";
/// Where the binary volume is mounted.
pub const BIN_DIR: &str = "/kvbridge";
/// The projected workload-identity token volume.
pub const TOKEN_VOLUME: &str = "kvbridge-azure-token";
/// Where the token volume is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/kvbridge/azure";
/// Audience of workload-identity tokens.
pub const TOKEN_AUDIENCE: &str = "api://AzureADTokenExchange";

/// How pods are rewritten.
#[derive(Debug, Clone)]
pub struct MutateConfig {
    /// Image holding `kvbridge` (the init container runs `kvbridge copy-self`).
    pub image: String,
    /// Extra arguments of `kvbridge env` (e.g. `--ca-file`).
    pub env_args: Vec<String>,
    /// Tenant of identities that name none.
    pub default_tenant: Option<String>,
}

/// A placeholder found in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Use {
    pub container: String,
    pub var: String,
    pub akvs: String,
}

/// Why a pod is refused (the message reaches `kubectl`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("container {container:?}, env {var}: {reason}")]
    Placeholder {
        container: String,
        var: String,
        reason: String,
    },
    #[error("container {container:?} (image {image:?}) uses @azurekeyvault placeholders but has no command in the pod spec; kvbridge runs it as `kvbridge env -- <command> <args>`, so set `command:` to the image's entrypoint (see `docker inspect` / `skopeo inspect`), or remove the placeholders")]
    NoCommand { container: String, image: String },
    #[error("AzureKeyVaultSecret {akvs:?} (container {container:?}, env {var}) does not exist in namespace {namespace:?}")]
    Missing {
        akvs: String,
        container: String,
        var: String,
        namespace: String,
    },
    #[error("AzureKeyVaultSecret {akvs:?}: {reason}")]
    Identity { akvs: String, reason: String },
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .chain(spec.map(|s| s.containers.iter()).into_iter().flatten())
}

/// Whether the pod was mutated already.
pub fn already_injected(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(INJECTED_ANNOTATION))
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.name == BIN_VOLUME))
}

/// Every placeholder of every container (init containers first), or the first malformed one.
pub fn uses(pod: &Pod) -> Result<Vec<Use>, Refusal> {
    let mut out = Vec::new();
    for c in all_containers(pod) {
        for e in c.env.iter().flatten() {
            let Some(value) = e.value.as_deref() else {
                continue;
            };
            match placeholder::parse(value) {
                Ok(Some(p)) => out.push(Use {
                    container: c.name.clone(),
                    var: e.name.clone(),
                    akvs: p.akvs,
                }),
                Ok(None) => {}
                Err(err) => {
                    return Err(Refusal::Placeholder {
                        container: c.name.clone(),
                        var: e.name.clone(),
                        reason: err.to_string(),
                    })
                }
            }
        }
    }
    Ok(out)
}

/// Variables a container needs besides the spec (service-principal credentials from Secrets).
type Extra = Vec<EnvVar>;

/// One `AzureKeyVaultSecret` as the container will use it.
pub(crate) fn reference(
    name: &str,
    spec: &AzureKeyVaultSecretSpec,
    pod: &Pod,
    index: usize,
    config: &MutateConfig,
    target: &dyn Fn(&str) -> (Cloud, String),
) -> Result<(Reference, Extra, bool), Refusal> {
    let refuse = |reason: String| Refusal::Identity {
        akvs: name.to_string(),
        reason,
    };
    let tenant = |t: &Option<String>| {
        t.clone()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| config.default_tenant.clone())
            .ok_or_else(|| {
                refuse("the identity names no tenantId and the webhook has no --tenant-id".into())
            })
    };
    let mut extra = Vec::new();
    let mut token = false;
    let identity = match &spec.vault.identity {
        None => RuntimeIdentity::Pod,
        Some(id) => {
            match (
                &id.service_account,
                &id.service_principal,
                &id.managed_identity,
            ) {
                (None, None, Some(m)) => RuntimeIdentity::Managed {
                    client_id: m.client_id.clone(),
                },
                (None, Some(sp), None) => {
                    let client_id_env = format!("KVBRIDGE_SP_{index}_CLIENT_ID");
                    let client_secret_env = format!("KVBRIDGE_SP_{index}_CLIENT_SECRET");
                    let from = |env: &str, key: &str| EnvVar {
                        name: env.to_string(),
                        value: None,
                        value_from: Some(EnvVarSource {
                            secret_key_ref: Some(SecretKeySelector {
                                name: sp.secret_ref.name.clone(),
                                key: key.to_string(),
                                optional: Some(false),
                            }),
                            ..Default::default()
                        }),
                    };
                    extra.push(from(
                        &client_id_env,
                        sp.secret_ref.client_id_key.as_deref().unwrap_or("clientid"),
                    ));
                    extra.push(from(
                        &client_secret_env,
                        sp.secret_ref
                            .client_secret_key
                            .as_deref()
                            .unwrap_or("clientsecret"),
                    ));
                    RuntimeIdentity::ServicePrincipal {
                        tenant_id: tenant(&sp.tenant_id)?,
                        client_id_env,
                        client_secret_env,
                    }
                }
                (Some(sa), None, None) => {
                    let pod_sa = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "default".into());
                    if sa.name != pod_sa {
                        return Err(refuse(format!(
                        "its identity is ServiceAccount {:?} but the pod runs as {pod_sa:?}; a container can only present its own ServiceAccount's token",
                        sa.name
                    )));
                    }
                    let client_id =
                        sa.client_id
                            .clone()
                            .filter(|c| !c.is_empty())
                            .ok_or_else(|| {
                                refuse(
                                "identity.serviceAccount needs clientId for environment injection"
                                    .into(),
                            )
                            })?;
                    token = true;
                    RuntimeIdentity::Workload {
                        tenant_id: tenant(&sa.tenant_id)?,
                        client_id,
                        token_file: format!("{TOKEN_DIR}/token"),
                    }
                }
                _ => return Err(refuse("identity must set exactly one member".into())),
            }
        }
    };
    let (cloud, vault_url) = target(&spec.vault.name);
    let output = spec.output.clone().unwrap_or_default();
    Ok((
        Reference {
            vault_url,
            cloud: (&cloud).into(),
            object: spec.vault.object.clone(),
            transforms: output.transforms_in_order(),
            chain_order: output.secret.as_ref().and_then(|s| s.chain_order),
            identity,
        },
        extra,
        token,
    ))
}

fn to_value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// The JSON Patch for `pod` given the `AzureKeyVaultSecret`s of its namespace that it names
/// (`akvs`), or `None` when nothing is to change. `target` maps a vault name to its cloud and
/// URL (the shared [`mount::target::CloudConfig`]).
pub fn patch(
    pod: &Pod,
    namespace: &str,
    akvs: &BTreeMap<String, AzureKeyVaultSecretSpec>,
    config: &MutateConfig,
    target: &dyn Fn(&str) -> (Cloud, String),
) -> Result<Option<Vec<serde_json::Value>>, Refusal> {
    if already_injected(pod) {
        return Ok(None);
    }
    let found = uses(pod)?;
    if found.is_empty() {
        return Ok(None);
    }
    // Every reference resolved once, in name order (stable variable names).
    let mut refs: BTreeMap<&str, (Reference, Extra, bool)> = BTreeMap::new();
    for u in &found {
        if refs.contains_key(u.akvs.as_str()) {
            continue;
        }
        let Some(spec) = akvs.get(&u.akvs) else {
            return Err(Refusal::Missing {
                akvs: u.akvs.clone(),
                container: u.container.clone(),
                var: u.var.clone(),
                namespace: namespace.to_string(),
            });
        };
        let index = refs.len();
        refs.insert(
            &u.akvs,
            reference(&u.akvs, spec, pod, index, config, target)?,
        );
    }
    let any_token = refs.values().any(|(_, _, t)| *t);

    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    let rewrite = |c: &Container| -> Result<Container, Refusal> {
        let used: BTreeSet<&str> = found
            .iter()
            .filter(|u| u.container == c.name)
            .map(|u| u.akvs.as_str())
            .collect();
        if used.is_empty() {
            return Ok(c.clone());
        }
        let Some(command) = c.command.as_ref().filter(|c| !c.is_empty()) else {
            return Err(Refusal::NoCommand {
                container: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
            });
        };
        let mut env_spec = EnvSpec::new();
        let mut extra = Vec::new();
        let mut token = false;
        for name in &used {
            if let Some((r, e, t)) = refs.get(name) {
                env_spec.refs.insert(name.to_string(), r.clone());
                extra.extend(e.iter().cloned());
                token |= t;
            }
        }
        let mut out = c.clone();
        let mut new_command = vec![format!("{BIN_DIR}/kvbridge"), "env".to_string()];
        new_command.extend(config.env_args.iter().cloned());
        new_command.push("--".into());
        new_command.extend(command.iter().cloned());
        new_command.extend(c.args.iter().flatten().cloned());
        out.command = Some(new_command);
        out.args = None;
        let env = out.env.get_or_insert_with(Vec::new);
        // Before the placeholders' own variables, so nothing the pod sets can shadow them.
        let mut control = extra;
        control.push(EnvVar {
            name: SPEC_ENV.into(),
            value: Some(env_spec.to_json()),
            value_from: None,
        });
        env.splice(0..0, control);
        let mounts = out.volume_mounts.get_or_insert_with(Vec::new);
        mounts.push(VolumeMount {
            name: BIN_VOLUME.into(),
            mount_path: BIN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        if token {
            mounts.push(VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            });
        }
        Ok(out)
    };

    let containers = spec
        .containers
        .iter()
        .map(rewrite)
        .collect::<Result<Vec<_>, _>>()?;
    let mut init = vec![Container {
        name: INSTALL_CONTAINER.into(),
        image: Some(config.image.clone()),
        command: Some(vec![
            "kvbridge".into(),
            "copy-self".into(),
            format!("{BIN_DIR}/kvbridge"),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: BIN_VOLUME.into(),
            mount_path: BIN_DIR.into(),
            ..Default::default()
        }]),
        ..Default::default()
    }];
    for c in spec.init_containers.iter().flatten() {
        init.push(rewrite(c)?);
    }
    let mut volumes = spec.volumes.clone().unwrap_or_default();
    volumes.push(Volume {
        name: BIN_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("64Mi".into())),
        }),
        ..Default::default()
    });
    if any_token {
        volumes.push(Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(3600),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(INJECTED_ANNOTATION.into(), "true".into());
    // `add` replaces a member that exists (RFC 6902 4.1): whole lists, no index arithmetic.
    Ok(Some(vec![
        json!({"op": "add", "path": "/spec/initContainers", "value": to_value(&init)}),
        json!({"op": "add", "path": "/spec/containers", "value": to_value(&containers)}),
        json!({"op": "add", "path": "/spec/volumes", "value": to_value(&volumes)}),
        json!({"op": "add", "path": "/metadata/annotations", "value": to_value(&annotations)}),
    ]))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn config() -> MutateConfig {
        MutateConfig {
            image: "registry.example/kvbridge:1".into(),
            env_args: vec![],
            default_tenant: Some("tenant-1".into()),
        }
    }

    pub(crate) fn target(name: &str) -> (Cloud, String) {
        let cloud = Cloud::public();
        let url = cloud.vault_url(name);
        (cloud, url)
    }

    fn akvs(yaml: serde_json::Value) -> AzureKeyVaultSecretSpec {
        serde_json::from_value(yaml).unwrap()
    }

    fn namespace_akvs() -> BTreeMap<String, AzureKeyVaultSecretSpec> {
        BTreeMap::from([
            (
                "db".to_string(),
                akvs(
                    json!({"vault": {"name": "kv1", "object": {"name": "db-password", "type": "secret"}},
                    "output": {"transform": ["trim"]}}),
                ),
            ),
            (
                "tls".to_string(),
                akvs(
                    json!({"vault": {"name": "kv1", "object": {"name": "app-tls", "type": "certificate"}},
                    "output": {"secret": {"name": "x", "chainOrder": "ensureserverfirst"}}}),
                ),
            ),
            (
                "sp".to_string(),
                akvs(
                    json!({"vault": {"name": "kv2", "object": {"name": "s", "type": "secret"},
                    "identity": {"servicePrincipal": {"secretRef": {"name": "creds"}}}}}),
                ),
            ),
            (
                "wi".to_string(),
                akvs(
                    json!({"vault": {"name": "kv3", "object": {"name": "s", "type": "secret"},
                    "identity": {"serviceAccount": {"name": "app", "clientId": "cid", "tenantId": "t3"}}}}),
                ),
            ),
        ])
    }

    /// A pod as a Deployment's ReplicaSet creates it: generateName, owner, no name.
    fn deployment_pod() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-7d9f8-", "namespace": "apps",
                "labels": {"app": "web", "pod-template-hash": "7d9f8"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8", "uid": "u", "controller": true}]},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "migrate:1", "command": ["migrate"],
                    "env": [{"name": "DB_PASSWORD", "value": "db@azurekeyvault"}]}],
                "containers": [
                    {"name": "web", "image": "web:1", "command": ["/app/web"], "args": ["--port", "8080"],
                     "env": [{"name": "PLAIN", "value": "x"},
                             {"name": "DB_PASSWORD", "value": "db@azurekeyvault"},
                             {"name": "TLS_KEY", "value": "tls@azurekeyvault?tls.key"}],
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                    {"name": "sidecar", "image": "proxy:1", "env": [{"name": "A", "value": "ops@azurekeyvault.example"}]}
                ],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }
        })
    }

    pub(crate) fn apply(pod: &serde_json::Value, ops: &[serde_json::Value]) -> serde_json::Value {
        let mut doc = pod.clone();
        let p: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(ops.to_vec())).unwrap();
        json_patch::patch(&mut doc, &p).unwrap();
        doc
    }

    fn run(pod: &serde_json::Value) -> Result<Option<Vec<serde_json::Value>>, Refusal> {
        let p: Pod = serde_json::from_value(pod.clone()).unwrap();
        patch(&p, "apps", &namespace_akvs(), &config(), &target)
    }

    fn env_spec(container: &serde_json::Value) -> EnvSpec {
        let env = container["env"].as_array().unwrap();
        let v = env.iter().find(|e| e["name"] == SPEC_ENV).unwrap();
        EnvSpec::parse(v["value"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn deployment_pod_with_init_and_several_containers() {
        let pod = deployment_pod();
        let ops = run(&pod).unwrap().unwrap();
        let paths: Vec<&str> = ops.iter().map(|o| o["path"].as_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/spec/initContainers",
                "/spec/containers",
                "/spec/volumes",
                "/metadata/annotations"
            ]
        );
        assert!(ops.iter().all(|o| o["op"] == "add"));
        let out = apply(&pod, &ops);

        let init = out["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init.len(), 2);
        assert_eq!(init[0]["name"], INSTALL_CONTAINER);
        assert_eq!(init[0]["image"], "registry.example/kvbridge:1");
        assert_eq!(
            init[0]["command"],
            json!(["kvbridge", "copy-self", "/kvbridge/kvbridge"])
        );
        assert_eq!(
            init[0]["volumeMounts"],
            json!([{"name": BIN_VOLUME, "mountPath": BIN_DIR}])
        );
        assert_eq!(
            init[1]["command"],
            json!(["/kvbridge/kvbridge", "env", "--", "migrate"])
        );
        assert_eq!(env_spec(&init[1]).refs.keys().collect::<Vec<_>>(), ["db"]);

        let web = &out["spec"]["containers"][0];
        assert_eq!(
            web["command"],
            json!([
                "/kvbridge/kvbridge",
                "env",
                "--",
                "/app/web",
                "--port",
                "8080"
            ])
        );
        assert!(web.get("args").is_none());
        let names: Vec<&str> = web["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, [SPEC_ENV, "PLAIN", "DB_PASSWORD", "TLS_KEY"]);
        // Placeholders stay as they are: kvbridge env replaces them in the process only.
        assert_eq!(web["env"][2]["value"], "db@azurekeyvault");
        let spec = env_spec(web);
        assert_eq!(spec.refs.keys().collect::<Vec<_>>(), ["db", "tls"]);
        assert_eq!(spec.refs["db"].vault_url, "https://kv1.vault.azure.net");
        assert_eq!(
            spec.refs["db"].transforms,
            [controller::crd::Transform::Trim]
        );
        assert_eq!(spec.refs["db"].identity, RuntimeIdentity::Pod);
        assert_eq!(
            spec.refs["tls"].chain_order,
            Some(controller::crd::ChainOrder::EnsureServerFirst)
        );
        assert_eq!(
            web["volumeMounts"],
            json!([{"name": "data", "mountPath": "/data"}, {"name": BIN_VOLUME, "mountPath": BIN_DIR, "readOnly": true}])
        );
        // A container without placeholders (an e-mail address is not one) is untouched.
        assert_eq!(out["spec"]["containers"][1], pod["spec"]["containers"][1]);
        assert_eq!(
            out["spec"]["volumes"],
            json!([{"name": "data", "emptyDir": {}}, {"name": BIN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}])
        );
        assert_eq!(out["metadata"]["annotations"][INJECTED_ANNOTATION], "true");
        assert_eq!(
            out["metadata"]["ownerReferences"],
            pod["metadata"]["ownerReferences"]
        );

        // Idempotent: the mutated pod is left as it is.
        assert_eq!(run(&out).unwrap(), None);
    }

    #[test]
    fn pods_without_placeholders_are_not_patched() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i",
            "env": [{"name": "A", "value": "b"}, {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}});
        assert_eq!(run(&pod).unwrap(), None);
        assert_eq!(run(&json!({"metadata": {"name": "p"}})).unwrap(), None);
    }

    #[test]
    fn refusals_name_the_container_and_the_fix() {
        let no_command = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "private.example/app:2", "args": ["serve"],
             "env": [{"name": "DB", "value": "db@azurekeyvault"}]}]}});
        let e = run(&no_command).unwrap_err();
        assert!(
            matches!(&e, Refusal::NoCommand { container, image } if container == "app" && image == "private.example/app:2")
        );
        assert!(e.to_string().contains("set `command:`"), "{e}");

        let missing = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "i", "command": ["x"], "env": [{"name": "DB", "value": "nope@azurekeyvault"}]}]}});
        let e = run(&missing).unwrap_err().to_string();
        assert!(
            e.contains("\"nope\"") && e.contains("\"apps\"") && e.contains("DB"),
            "{e}"
        );

        let malformed = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "i", "command": ["x"], "env": [{"name": "DB", "value": "Bad_Name@azurekeyvault"}]}]}});
        let e = run(&malformed).unwrap_err();
        assert!(
            matches!(&e, Refusal::Placeholder { var, .. } if var == "DB"),
            "{e}"
        );
    }

    #[test]
    fn identities() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "app", "containers": [
            {"name": "app", "image": "i", "command": ["x"], "env": [
                {"name": "A", "value": "sp@azurekeyvault"}, {"name": "B", "value": "wi@azurekeyvault"}]}]}});
        let out = apply(&pod, &run(&pod).unwrap().unwrap());
        let c = &out["spec"]["containers"][0];
        let spec = env_spec(c);
        assert_eq!(
            spec.refs["sp"].identity,
            RuntimeIdentity::ServicePrincipal {
                tenant_id: "tenant-1".into(),
                client_id_env: "KVBRIDGE_SP_0_CLIENT_ID".into(),
                client_secret_env: "KVBRIDGE_SP_0_CLIENT_SECRET".into(),
            }
        );
        assert_eq!(
            c["env"][0],
            json!({"name": "KVBRIDGE_SP_0_CLIENT_ID", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "clientid", "optional": false}}})
        );
        assert_eq!(
            c["env"][1]["valueFrom"]["secretKeyRef"]["key"],
            "clientsecret"
        );
        assert_eq!(
            spec.refs["wi"].identity,
            RuntimeIdentity::Workload {
                tenant_id: "t3".into(),
                client_id: "cid".into(),
                token_file: format!("{TOKEN_DIR}/token"),
            }
        );
        let token_volume = out["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == TOKEN_VOLUME)
            .unwrap();
        assert_eq!(
            token_volume["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            TOKEN_AUDIENCE
        );
        assert!(c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == TOKEN_DIR));

        // Another ServiceAccount's identity cannot be used from this pod.
        let other = json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "app", "image": "i", "command": ["x"], "env": [{"name": "B", "value": "wi@azurekeyvault"}]}]}});
        let e = run(&other).unwrap_err().to_string();
        assert!(e.contains("\"default\""), "{e}");
    }
}
