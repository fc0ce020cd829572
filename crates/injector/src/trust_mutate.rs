//! The Pod mutation for CA trust, pure: a pod annotated [`TRUST_ANNOTATION`]` = "<akvs>[,<akvs>...]"`
//! gets
//!
//! - the `kvbridge-install` init container and the memory volume holding the binary (shared with
//!   `kvbridge env` injection, added once);
//! - an init container [`TRUST_CONTAINER`] running `kvbridge trust` **in the image of the pod's
//!   first container** (so the image's own system bundle is the base), with the resolved
//!   references in [`TRUST_SPEC_ENV`], writing into the memory volume [`TRUST_VOLUME`];
//! - in every other container and init container: the bundle mounted (read-only, `subPath`)
//!   over each distribution's trust-store file ([`render::trust::SYSTEM_BUNDLE_PATHS`]:
//!   Debian/Ubuntu, Alpine and distroless, RHEL family, openSUSE), the directory at
//!   [`TRUST_DIR`], and the client variables of [`trust_env`] (`JAVA_TOOL_OPTIONS` appended to
//!   the container's own value);
//! - the annotation [`TRUST_INJECTED_ANNOTATION`] (idempotence).
//!
//! It composes with the env mutation: [`apply_ops`] applies that mutation's whole-member
//! `add` operations to the pod, [`with_trust`] adds the trust parts, [`whole_member_ops`] gives
//! the final patch.

use std::collections::BTreeMap;
use std::path::Path;

use controller::crd::AzureKeyVaultSecretSpec;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, Pod, ProjectedVolumeSource,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use keyvault::Cloud;
use serde_json::json;

use crate::mutate::{
    self, MutateConfig, Refusal, BIN_DIR, BIN_VOLUME, INSTALL_CONTAINER, TOKEN_AUDIENCE, TOKEN_DIR,
    TOKEN_VOLUME,
};
use crate::spec::EnvSpec;
use crate::trust::{trust_env, TRUST_DIR, TRUST_SPEC_ENV};

/// The pod annotation naming the `AzureKeyVaultSecret`s whose CA certificates the pod trusts.
pub const TRUST_ANNOTATION: &str = "kvbridge.io/trust";
/// Set on a pod whose trust was injected.
pub const TRUST_INJECTED_ANNOTATION: &str = "kvbridge.io/trust-injected";
/// The init container building the bundle.
pub const TRUST_CONTAINER: &str = "kvbridge-trust";
/// The memory volume holding the bundle.
pub const TRUST_VOLUME: &str = "kvbridge-trust";
/// Most names in the annotation.
pub const MAX_TRUST_NAMES: usize = 32;

/// The names of [`TRUST_ANNOTATION`] (comma or whitespace separated, deduplicated, in order),
/// empty when the pod has none; a malformed list is a refusal.
pub fn requested(pod: &Pod) -> Result<Vec<String>, Refusal> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRUST_ANNOTATION))
    else {
        return Ok(Vec::new());
    };
    let refuse = |reason: String| Refusal::Identity {
        akvs: TRUST_ANNOTATION.to_string(),
        reason,
    };
    let mut names: Vec<String> = Vec::new();
    for name in value.split(|c: char| c == ',' || c.is_whitespace()) {
        if name.is_empty() {
            continue;
        }
        let valid = name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(refuse(format!(
                "{:?} is not an AzureKeyVaultSecret name (lower-case DNS subdomain)",
                name.chars().take(64).collect::<String>()
            )));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        return Err(refuse("names no AzureKeyVaultSecret".into()));
    }
    if names.len() > MAX_TRUST_NAMES {
        return Err(refuse(format!(
            "names {} AzureKeyVaultSecrets; at most {MAX_TRUST_NAMES} are allowed",
            names.len()
        )));
    }
    Ok(names)
}

/// Whether the trust mutation was applied already.
pub fn trust_injected(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(TRUST_INJECTED_ANNOTATION))
        || pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.name == TRUST_VOLUME))
}

/// Applies `add` operations on whole members (what [`mutate::patch`] emits) to `pod`.
pub fn apply_ops(pod: &Pod, ops: &[serde_json::Value]) -> Result<Pod, serde_json::Error> {
    let mut doc = serde_json::to_value(pod)?;
    for op in ops {
        let (Some("add"), Some(path)) = (op["op"].as_str(), op["path"].as_str()) else {
            continue;
        };
        let mut cur = &mut doc;
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        for (i, seg) in segments.iter().enumerate() {
            if !cur.is_object() {
                *cur = json!({});
            }
            let Some(map) = cur.as_object_mut() else {
                break;
            };
            if i + 1 == segments.len() {
                map.insert((*seg).to_string(), op["value"].clone());
                break;
            }
            cur = map.entry((*seg).to_string()).or_insert_with(|| json!({}));
        }
    }
    serde_json::from_value(doc)
}

/// The patch that turns `original` into `mutated`: one `add` per changed member
/// (`/spec/initContainers`, `/spec/containers`, `/spec/volumes`, `/metadata/annotations`).
pub fn whole_member_ops(mutated: &Pod) -> Vec<serde_json::Value> {
    let spec = mutated.spec.clone().unwrap_or_default();
    let value = |v: serde_json::Result<serde_json::Value>| v.unwrap_or(serde_json::Value::Null);
    vec![
        json!({"op": "add", "path": "/spec/initContainers", "value": value(serde_json::to_value(spec.init_containers.unwrap_or_default()))}),
        json!({"op": "add", "path": "/spec/containers", "value": value(serde_json::to_value(&spec.containers))}),
        json!({"op": "add", "path": "/spec/volumes", "value": value(serde_json::to_value(spec.volumes.unwrap_or_default()))}),
        json!({"op": "add", "path": "/metadata/annotations", "value": value(serde_json::to_value(mutated.metadata.annotations.clone().unwrap_or_default()))}),
    ]
}

fn trust_mounts() -> Vec<VolumeMount> {
    let mut mounts: Vec<VolumeMount> = render::trust::SYSTEM_BUNDLE_PATHS
        .iter()
        .map(|path| VolumeMount {
            name: TRUST_VOLUME.into(),
            mount_path: (*path).into(),
            sub_path: Some(render::trust::PEM_FILE.into()),
            read_only: Some(true),
            ..Default::default()
        })
        .collect();
    mounts.push(VolumeMount {
        name: TRUST_VOLUME.into(),
        mount_path: TRUST_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    mounts
}

/// A container that trusts the bundle: mounts and variables.
fn trusting(c: &Container) -> Container {
    let mut out = c.clone();
    let mounts = out.volume_mounts.get_or_insert_with(Vec::new);
    let ours = trust_mounts();
    // A path the container mounts itself stays the container's.
    let taken: Vec<String> = mounts.iter().map(|m| m.mount_path.clone()).collect();
    mounts.extend(ours.into_iter().filter(|m| !taken.contains(&m.mount_path)));
    let env = out.env.get_or_insert_with(Vec::new);
    let java = env
        .iter()
        .find(|e| e.name == "JAVA_TOOL_OPTIONS")
        .map(|e| (e.value.clone(), e.value_from.is_some()));
    for (name, value) in trust_env(
        Path::new(TRUST_DIR),
        java.as_ref().and_then(|(v, _)| v.as_deref()),
    ) {
        // A JAVA_TOOL_OPTIONS taken from a ConfigMap/Secret cannot be appended to: left as is.
        if name == "JAVA_TOOL_OPTIONS" && java.as_ref().is_some_and(|(_, from)| *from) {
            continue;
        }
        env.retain(|e| e.name != name);
        env.push(EnvVar {
            name,
            value: Some(value),
            value_from: None,
        });
    }
    out
}

/// `pod` (possibly already mutated for `kvbridge env`) with the trust parts added, or `None`
/// when it asks for none or has them. `akvs` holds the `AzureKeyVaultSecret`s the annotation
/// names (missing ones are refused).
pub fn with_trust(
    pod: &Pod,
    namespace: &str,
    akvs: &BTreeMap<String, AzureKeyVaultSecretSpec>,
    config: &MutateConfig,
    target: &dyn Fn(&str) -> (Cloud, String),
) -> Result<Option<Pod>, Refusal> {
    let names = requested(pod)?;
    if names.is_empty() || trust_injected(pod) {
        return Ok(None);
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(None);
    };
    let Some(first) = spec.containers.first() else {
        return Ok(None);
    };
    let mut trust_spec = EnvSpec::new();
    let mut extra: Vec<EnvVar> = Vec::new();
    let mut token = false;
    for (index, name) in names.iter().enumerate() {
        let Some(s) = akvs.get(name) else {
            return Err(Refusal::Missing {
                akvs: name.clone(),
                container: TRUST_CONTAINER.into(),
                var: TRUST_ANNOTATION.into(),
                namespace: namespace.to_string(),
            });
        };
        let (reference, e, t) = mutate::reference(name, s, pod, index, config, target)?;
        trust_spec.refs.insert(name.clone(), reference);
        extra.extend(e);
        token |= t;
    }

    let mut out = pod.clone();
    let spec = out.spec.get_or_insert_with(Default::default);
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    let has_bin = volumes.iter().any(|v| v.name == BIN_VOLUME);
    let memory = |size: &str| EmptyDirVolumeSource {
        medium: Some("Memory".into()),
        size_limit: Some(Quantity(size.into())),
    };
    if !has_bin {
        volumes.push(Volume {
            name: BIN_VOLUME.into(),
            empty_dir: Some(memory("64Mi")),
            ..Default::default()
        });
    }
    volumes.push(Volume {
        name: TRUST_VOLUME.into(),
        empty_dir: Some(memory("16Mi")),
        ..Default::default()
    });
    if token && !volumes.iter().any(|v| v.name == TOKEN_VOLUME) {
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

    let mut builder_env = extra;
    builder_env.push(EnvVar {
        name: TRUST_SPEC_ENV.into(),
        value: Some(trust_spec.to_json()),
        value_from: None,
    });
    let mut builder_mounts = vec![
        VolumeMount {
            name: BIN_VOLUME.into(),
            mount_path: BIN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: TRUST_VOLUME.into(),
            mount_path: TRUST_DIR.into(),
            ..Default::default()
        },
    ];
    if token {
        builder_mounts.push(VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let mut command = vec![
        format!("{BIN_DIR}/kvbridge"),
        "trust".to_string(),
        "--out".to_string(),
        TRUST_DIR.to_string(),
    ];
    command.extend(config.env_args.iter().cloned());
    let builder = Container {
        name: TRUST_CONTAINER.into(),
        image: first.image.clone(),
        image_pull_policy: first.image_pull_policy.clone(),
        command: Some(command),
        env: Some(builder_env),
        volume_mounts: Some(builder_mounts),
        security_context: first.security_context.clone(),
        ..Default::default()
    };

    let mut init: Vec<Container> = Vec::new();
    let existing = spec.init_containers.take().unwrap_or_default();
    if !existing.iter().any(|c| c.name == INSTALL_CONTAINER) {
        init.push(Container {
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
        });
    }
    let mut builder = Some(builder);
    for c in existing {
        let is_install = c.name == INSTALL_CONTAINER;
        init.push(if is_install { c } else { trusting(&c) });
        if is_install {
            init.extend(builder.take());
        }
    }
    // Without an existing install container, the builder follows ours (the first).
    if let Some(b) = builder.take() {
        init.insert(1, b);
    }
    spec.init_containers = Some(init);
    spec.containers = spec.containers.iter().map(trusting).collect();
    out.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(TRUST_INJECTED_ANNOTATION.into(), "true".into());
    Ok(Some(out))
}

/// The whole patch of a pod: the env mutation's operations (`env_ops`, from
/// [`mutate::patch`]) and the trust parts, or `None` when nothing changes.
pub fn combine(
    pod: &Pod,
    env_ops: Option<Vec<serde_json::Value>>,
    namespace: &str,
    akvs: &BTreeMap<String, AzureKeyVaultSecretSpec>,
    config: &MutateConfig,
    target: &dyn Fn(&str) -> (Cloud, String),
) -> Result<Option<Vec<serde_json::Value>>, Refusal> {
    let base = match &env_ops {
        Some(ops) => apply_ops(pod, ops).map_err(|e| Refusal::Identity {
            akvs: TRUST_ANNOTATION.into(),
            reason: format!("the mutated pod does not parse: {e}"),
        })?,
        None => pod.clone(),
    };
    Ok(match with_trust(&base, namespace, akvs, config, target)? {
        Some(mutated) => Some(whole_member_ops(&mutated)),
        None => env_ops,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mutate::tests::{apply, config, target};
    use crate::spec::RuntimeIdentity;

    fn namespace_akvs() -> BTreeMap<String, AzureKeyVaultSecretSpec> {
        let akvs = |v: serde_json::Value| serde_json::from_value(v).unwrap();
        BTreeMap::from([
            (
                "corp-ca".to_string(),
                akvs(
                    json!({"vault": {"name": "kv1", "object": {"name": "corp-root", "type": "certificate"}}}),
                ),
            ),
            (
                "partner-ca".to_string(),
                akvs(
                    json!({"vault": {"name": "kv2", "object": {"name": "partner-ca-pem", "type": "secret"},
                    "identity": {"servicePrincipal": {"secretRef": {"name": "creds"}}}}}),
                ),
            ),
            (
                "db".to_string(),
                akvs(
                    json!({"vault": {"name": "kv1", "object": {"name": "db-password", "type": "secret"}}}),
                ),
            ),
        ])
    }

    fn pod(annotation: &str, with_placeholder: bool) -> serde_json::Value {
        let env = if with_placeholder {
            json!([{"name": "DB_PASSWORD", "value": "db@azurekeyvault"}, {"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx256m"}])
        } else {
            json!([{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx256m"}])
        };
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "namespace": "apps",
                "annotations": {TRUST_ANNOTATION: annotation}},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "migrate:1", "command": ["migrate"]}],
                "containers": [
                    {"name": "web", "image": "web:1", "imagePullPolicy": "IfNotPresent", "command": ["/app/web"], "env": env,
                     "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                    {"name": "sidecar", "image": "proxy:1",
                     "volumeMounts": [{"name": "own-ca", "mountPath": "/etc/ssl/cert.pem"}]}
                ],
                "volumes": [{"name": "data", "emptyDir": {}}, {"name": "own-ca", "emptyDir": {}}]
            }
        })
    }

    fn run(pod: &serde_json::Value) -> Result<Option<Vec<serde_json::Value>>, Refusal> {
        let p: Pod = serde_json::from_value(pod.clone()).unwrap();
        let env_ops = crate::mutate::patch(&p, "apps", &namespace_akvs(), &config(), &target)?;
        combine(&p, env_ops, "apps", &namespace_akvs(), &config(), &target)
    }

    fn env_of<'a>(c: &'a serde_json::Value, name: &str) -> Option<&'a str> {
        c["env"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
    }

    fn mount_paths(c: &serde_json::Value) -> Vec<(String, Option<String>)> {
        c["volumeMounts"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["name"] == TRUST_VOLUME)
                    .map(|m| {
                        (
                            m["mountPath"].as_str().unwrap().to_string(),
                            m["subPath"].as_str().map(str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn trust_only_pod_gets_builder_mounts_and_variables() {
        let original = pod("corp-ca, partner-ca corp-ca", false);
        let ops = run(&original).unwrap().unwrap();
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
        let mutated = apply(&original, &ops);
        let init = mutated["spec"]["initContainers"].as_array().unwrap();
        let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, [INSTALL_CONTAINER, TRUST_CONTAINER, "migrate"]);

        // The builder runs in the application's image with the resolved references.
        let builder = &init[1];
        assert_eq!(builder["image"], "web:1");
        assert_eq!(builder["imagePullPolicy"], "IfNotPresent");
        assert_eq!(
            builder["command"],
            json!(["/kvbridge/kvbridge", "trust", "--out", TRUST_DIR])
        );
        let spec = EnvSpec::parse(env_of(builder, TRUST_SPEC_ENV).unwrap()).unwrap();
        assert_eq!(
            spec.refs.keys().collect::<Vec<_>>(),
            ["corp-ca", "partner-ca"]
        );
        assert_eq!(spec.refs["corp-ca"].identity, RuntimeIdentity::Pod);
        assert_eq!(
            spec.refs["corp-ca"].vault_url,
            "https://kv1.vault.azure.net"
        );
        assert!(matches!(
            spec.refs["partner-ca"].identity,
            RuntimeIdentity::ServicePrincipal { .. }
        ));
        // The service principal's credentials come from its Secret, through kubelet.
        let sp_env: Vec<&serde_json::Value> = builder["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["valueFrom"]["secretKeyRef"]["name"] == "creds")
            .collect();
        assert_eq!(sp_env.len(), 2);
        assert_eq!(
            mount_paths(builder),
            [(TRUST_DIR.to_string(), None)],
            "the builder reads the image's own bundle: nothing over the system paths"
        );

        // Every other container trusts the bundle.
        let web = &mutated["spec"]["containers"][0];
        let mut expected: Vec<(String, Option<String>)> = render::trust::SYSTEM_BUNDLE_PATHS
            .iter()
            .map(|p| (p.to_string(), Some("ca-certificates.crt".to_string())))
            .collect();
        expected.push((TRUST_DIR.to_string(), None));
        assert_eq!(mount_paths(web), expected);
        assert_eq!(mount_paths(&init[2]), expected, "init containers too");
        let pem = format!("{TRUST_DIR}/ca-certificates.crt");
        for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
            assert_eq!(env_of(web, var), Some(pem.as_str()), "{var}");
        }
        assert_eq!(
            env_of(web, "JAVA_TOOL_OPTIONS"),
            Some(format!("-Xmx256m -Djavax.net.ssl.trustStore={TRUST_DIR}/truststore.p12 -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword=changeit").as_str())
        );
        assert_eq!(
            web["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == "JAVA_TOOL_OPTIONS")
                .count(),
            1
        );
        assert_eq!(web["command"], json!(["/app/web"]), "command untouched");
        // A path the container mounts itself stays its own.
        let sidecar = &mutated["spec"]["containers"][1];
        assert!(!mount_paths(sidecar)
            .iter()
            .any(|(p, _)| p == "/etc/ssl/cert.pem"));
        assert!(sidecar["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "own-ca"));
        assert_eq!(env_of(sidecar, "SSL_CERT_FILE"), Some(pem.as_str()));
        assert_eq!(
            env_of(sidecar, "JAVA_TOOL_OPTIONS").map(|v| v.starts_with("-Djavax")),
            Some(true)
        );

        let volumes = mutated["spec"]["volumes"].as_array().unwrap();
        let trust_volume = volumes.iter().find(|v| v["name"] == TRUST_VOLUME).unwrap();
        assert_eq!(trust_volume["emptyDir"]["medium"], "Memory");
        assert!(volumes.iter().any(|v| v["name"] == BIN_VOLUME));
        assert_eq!(
            mutated["metadata"]["annotations"][TRUST_INJECTED_ANNOTATION],
            "true"
        );

        // Idempotent: the mutated pod is left alone.
        assert_eq!(run(&mutated).unwrap(), None);
    }

    #[test]
    fn composes_with_env_injection() {
        let original = pod("corp-ca", true);
        let ops = run(&original).unwrap().unwrap();
        let mutated = apply(&original, &ops);
        let init = mutated["spec"]["initContainers"].as_array().unwrap();
        let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, [INSTALL_CONTAINER, TRUST_CONTAINER, "migrate"]);
        let volumes = mutated["spec"]["volumes"].as_array().unwrap();
        assert_eq!(
            volumes.iter().filter(|v| v["name"] == BIN_VOLUME).count(),
            1,
            "one binary volume for both"
        );
        let web = &mutated["spec"]["containers"][0];
        assert_eq!(web["command"][1], "env", "still run through kvbridge env");
        assert!(env_of(web, crate::spec::SPEC_ENV).is_some());
        assert!(env_of(web, "SSL_CERT_FILE").is_some());
        let annotations = &mutated["metadata"]["annotations"];
        assert_eq!(annotations[crate::mutate::INJECTED_ANNOTATION], "true");
        assert_eq!(annotations[TRUST_INJECTED_ANNOTATION], "true");
        assert_eq!(run(&mutated).unwrap(), None);
    }

    #[test]
    fn refusals_and_untouched_pods() {
        // No annotation, no placeholder: nothing.
        let mut plain = pod("corp-ca", false);
        plain["metadata"]["annotations"] = json!({});
        assert_eq!(run(&plain).unwrap(), None);
        let e = run(&pod("missing-ca", false)).unwrap_err();
        assert!(
            matches!(e, Refusal::Missing { ref akvs, .. } if akvs == "missing-ca"),
            "{e}"
        );
        for bad in ["", " , ", "Corp_CA", "-x", "a/b"] {
            let e = run(&pod(bad, false)).unwrap_err();
            assert!(e.to_string().contains(TRUST_ANNOTATION), "{bad:?}: {e}");
        }
        let many: Vec<String> = (0..=MAX_TRUST_NAMES).map(|i| format!("ca-{i}")).collect();
        let e = run(&pod(&many.join(","), false)).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        // An ops list that is not whole-member adds leaves the pod as it was.
        let p: Pod = serde_json::from_value(pod("corp-ca", false)).unwrap();
        let same = apply_ops(&p, &[json!({"op": "remove", "path": "/spec"})]).unwrap();
        assert_eq!(same, p);
    }
}
