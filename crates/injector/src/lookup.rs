//! What the webhook reads from the cluster for one pod, and fills into it before
//! [`crate::mutate::patch`] (which stays pure):
//!
//! - containers with placeholders but no `command` get the command the container runtime would
//!   run (Kubernetes' rules, [`ImageCommand::compose`]), read from the image's registry with the
//!   pod's `imagePullSecrets` and its ServiceAccount's;
//! - `serviceAccount` identities without `clientId` / `tenantId` get them from the
//!   ServiceAccount's `azure.workload.identity/client-id` / `tenant-id` annotations, as Azure
//!   workload identity's own webhook does.

use std::collections::BTreeMap;

use controller::crd::AzureKeyVaultSecretSpec;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::Api;

use crate::mutate::Use;
use crate::registry::{DockerConfig, ImageCommand, Platform};

/// ServiceAccount annotation naming the workload identity's client.
pub const CLIENT_ID_ANNOTATION: &str = "azure.workload.identity/client-id";
/// ServiceAccount annotation naming the workload identity's tenant.
pub const TENANT_ID_ANNOTATION: &str = "azure.workload.identity/tenant-id";
/// Bound on the pull secrets read for one pod (pod's and ServiceAccount's together).
pub const MAX_PULL_SECRETS: usize = 16;
/// Node label naming the architecture (`kubernetes.io/arch`), read from the pod's nodeSelector.
pub const ARCH_LABEL: &str = "kubernetes.io/arch";

/// kvbridge's own opt-in, on a pod: a label (what a MutatingWebhookConfiguration's
/// `objectSelector` can select) or, for registrations that send every pod, an annotation.
pub const OPT_IN_KEY: &str = "kvbridge.io/inject";
/// akv2k8s's opt-in, on a namespace (`azure-key-vault-env-injection: enabled`).
pub const NAMESPACE_LABEL: &str = "azure-key-vault-env-injection";
/// How long a namespace's opt-in is remembered.
pub const NAMESPACE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the pod opts in itself (label or annotation `kvbridge.io/inject: "true"`).
pub fn pod_opted_in(pod: &Pod) -> bool {
    let yes = |m: &Option<BTreeMap<String, String>>| {
        m.as_ref()
            .and_then(|m| m.get(OPT_IN_KEY))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    };
    yes(&pod.metadata.labels) || yes(&pod.metadata.annotations)
}

/// Namespaces' opt-in label, read through the API and remembered for [`NAMESPACE_TTL`]
/// (bounded), so that the webhook decides the same whichever way it is registered.
pub struct NamespaceOptIn {
    cache: moka::future::Cache<String, bool>,
}

impl Default for NamespaceOptIn {
    fn default() -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(4096)
                .time_to_live(NAMESPACE_TTL)
                .build(),
        }
    }
}

impl NamespaceOptIn {
    /// Whether `namespace` carries `azure-key-vault-env-injection: enabled` (a namespace that
    /// does not exist does not).
    pub async fn enabled(
        &self,
        client: &kube::Client,
        namespace: &str,
    ) -> Result<bool, kube::Error> {
        if let Some(hit) = self.cache.get(namespace).await {
            return Ok(hit);
        }
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let enabled = api.get_opt(namespace).await?.is_some_and(|ns| {
            ns.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(NAMESPACE_LABEL))
                .is_some_and(|v| v == "enabled")
        });
        self.cache.insert(namespace.to_string(), enabled).await;
        Ok(enabled)
    }
}

/// What the webhook does when an image's entrypoint cannot be read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnLookupFailure {
    /// Deny the admission, naming the image and the fix.
    #[default]
    Deny,
    /// Admit the pod unmodified (its placeholders stay literal values).
    Allow,
}

/// The pod's ServiceAccount (`default` when it names none).
pub fn service_account_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Containers (init containers first) that use placeholders and have no `command`:
/// `(container, image)`.
pub fn needing_entrypoint(pod: &Pod, uses: &[Use]) -> Vec<(String, String)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| c.command.as_ref().is_none_or(|c| c.is_empty()))
        .filter(|c| uses.iter().any(|u| u.container == c.name))
        .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
        .collect()
}

/// The platform whose image manifest the pod's node will pull: `linux/<arch>` when the pod's
/// nodeSelector names `kubernetes.io/arch`, or its required node affinity allows exactly one
/// architecture; else `None` (the webhook's default).
pub fn pod_platform(pod: &Pod) -> Option<Platform> {
    let spec = pod.spec.as_ref()?;
    if let Some(a) = spec
        .node_selector
        .as_ref()
        .and_then(|s| s.get(ARCH_LABEL))
        .filter(|a| !a.is_empty())
    {
        return Some(Platform::linux(a));
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    let mut archs: Vec<&str> = Vec::new();
    for term in terms {
        for e in term.match_expressions.iter().flatten() {
            if e.key == ARCH_LABEL && e.operator == "In" {
                archs.extend(e.values.iter().flatten().map(String::as_str));
            }
        }
    }
    archs.sort_unstable();
    archs.dedup();
    match archs.as_slice() {
        [one] if !one.is_empty() => Some(Platform::linux(one)),
        _ => None,
    }
}

/// The pull-secret names kubelet would use: the pod's, then its ServiceAccount's (deduplicated,
/// at most [`MAX_PULL_SECRETS`]).
pub fn pull_secret_names(pod: &Pod, sa: Option<&ServiceAccount>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let pod_refs = pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten();
    let sa_refs = sa
        .and_then(|s| s.image_pull_secrets.as_ref())
        .into_iter()
        .flatten();
    for r in pod_refs.chain(sa_refs) {
        if !r.name.is_empty() && !out.contains(&r.name) && out.len() < MAX_PULL_SECRETS {
            out.push(r.name.clone());
        }
    }
    out
}

/// The registry credentials of the named Secrets (`kubernetes.io/dockerconfigjson` or
/// `kubernetes.io/dockercfg`). Missing, unreadable or malformed Secrets are skipped (kubelet
/// also pulls without them), logged by name only.
pub async fn docker_configs(secrets: &Api<Secret>, names: &[String]) -> Vec<DockerConfig> {
    let reads = futures_util::future::join_all(names.iter().map(|n| secrets.get_opt(n))).await;
    let mut out = Vec::new();
    for (name, read) in names.iter().zip(reads) {
        let secret = match read {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::debug!(secret = %name, "imagePullSecret does not exist");
                continue;
            }
            Err(e) => {
                tracing::warn!(secret = %name, error = %e, "cannot read imagePullSecret");
                continue;
            }
        };
        let data = secret.data.unwrap_or_default();
        let Some(bytes) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            tracing::debug!(secret = %name, "imagePullSecret holds no .dockerconfigjson");
            continue;
        };
        match DockerConfig::parse(&bytes.0) {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!(secret = %name, reason = %e, "imagePullSecret is malformed"),
        }
    }
    out
}

/// Sets `container`'s command to what its image runs (entrypoint, then `args` or the image's
/// `Cmd`) and drops its `args`. `false` when the result is empty (nothing to run).
pub fn fill_command(pod: &mut Pod, container: &str, image: &ImageCommand) -> bool {
    let Some(spec) = pod.spec.as_mut() else {
        return false;
    };
    let Some(c) = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
        .find(|c| c.name == container)
    else {
        return false;
    };
    let command = image.compose(c.args.as_deref());
    if command.is_empty() {
        return false;
    }
    c.command = Some(command);
    c.args = None;
    true
}

/// Whether a `serviceAccount` identity of `specs`, for the pod's own ServiceAccount, lacks its
/// clientId or tenantId.
pub fn needs_workload_identity(
    specs: &BTreeMap<String, AzureKeyVaultSecretSpec>,
    pod_sa: &str,
) -> bool {
    specs.values().any(|s| {
        s.vault
            .identity
            .as_ref()
            .and_then(|i| i.service_account.as_ref())
            .is_some_and(|sa| {
                sa.name == pod_sa
                    && (sa.client_id.as_deref().is_none_or(|c| c.trim().is_empty())
                        || sa.tenant_id.as_deref().is_none_or(|t| t.trim().is_empty()))
            })
    })
}

/// Fills missing clientId / tenantId of `serviceAccount` identities naming `sa` from its
/// workload-identity annotations (the AzureKeyVaultSecret's own values win).
pub fn fill_workload_identity(
    specs: &mut BTreeMap<String, AzureKeyVaultSecretSpec>,
    sa: &ServiceAccount,
) {
    let name = sa.metadata.name.as_deref().unwrap_or_default();
    let annotations = sa.metadata.annotations.clone().unwrap_or_default();
    let get = |k: &str| {
        annotations
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    for spec in specs.values_mut() {
        let Some(id) = spec
            .vault
            .identity
            .as_mut()
            .and_then(|i| i.service_account.as_mut())
        else {
            continue;
        };
        if id.name != name {
            continue;
        }
        if id.client_id.as_deref().is_none_or(|c| c.trim().is_empty()) {
            id.client_id = get(CLIENT_ID_ANNOTATION);
        }
        if id.tenant_id.as_deref().is_none_or(|t| t.trim().is_empty()) {
            id.tenant_id = get(TENANT_ID_ANNOTATION);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn containers_needing_an_entrypoint() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": "i", "image": "init:1", "env": [{"name": "A", "value": "a@azurekeyvault"}]}],
        "containers": [
            {"name": "c1", "image": "app:1", "args": ["x"], "env": [{"name": "A", "value": "a@azurekeyvault"}]},
            {"name": "c2", "image": "app:1", "command": ["run"], "env": [{"name": "A", "value": "a@azurekeyvault"}]},
            {"name": "c3", "image": "plain:1"}
        ]}}));
        let uses = crate::mutate::uses(&p).unwrap();
        assert_eq!(
            needing_entrypoint(&p, &uses),
            [
                ("i".to_string(), "init:1".to_string()),
                ("c1".to_string(), "app:1".to_string())
            ]
        );
        let mut p = p;
        let image = ImageCommand {
            entrypoint: vec!["/ep".into()],
            cmd: vec!["dflt".into()],
        };
        assert!(fill_command(&mut p, "c1", &image));
        assert!(fill_command(&mut p, "i", &image));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.containers[0].command.as_deref().unwrap(), ["/ep", "x"]);
        assert_eq!(spec.containers[0].args, None);
        assert_eq!(
            spec.init_containers.as_ref().unwrap()[0]
                .command
                .as_deref()
                .unwrap(),
            ["/ep", "dflt"]
        );
        assert!(!fill_command(&mut p, "c3", &ImageCommand::default()));
        assert!(!fill_command(&mut p, "nope", &image));
    }

    #[test]
    fn pod_opt_in() {
        let p =
            |meta: serde_json::Value| pod(json!({"metadata": meta, "spec": {"containers": []}}));
        assert!(pod_opted_in(&p(json!({"labels": {OPT_IN_KEY: "true"}}))));
        assert!(pod_opted_in(&p(
            json!({"annotations": {OPT_IN_KEY: "True"}})
        )));
        assert!(!pod_opted_in(&p(
            json!({"annotations": {OPT_IN_KEY: "false"}})
        )));
        assert!(!pod_opted_in(&p(
            json!({"labels": {NAMESPACE_LABEL: "enabled"}})
        )));
        assert!(!pod_opted_in(&p(json!({}))));
    }

    #[test]
    fn pull_secrets_and_platform() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [],
            "nodeSelector": {"kubernetes.io/arch": "arm64"},
            "imagePullSecrets": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}}));
        let sa: ServiceAccount = serde_json::from_value(
            json!({"metadata": {"name": "default"}, "imagePullSecrets": [{"name": "b"}, {"name": "c"}]}),
        )
        .unwrap();
        assert_eq!(pull_secret_names(&p, Some(&sa)), ["a", "b", "c"]);
        assert_eq!(pull_secret_names(&p, None), ["a", "b"]);
        assert_eq!(pod_platform(&p), Some(Platform::linux("arm64")));
        let affinity = |values: serde_json::Value| {
            pod(
                json!({"metadata": {"name": "p"}, "spec": {"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                        {"key": ARCH_LABEL, "operator": "In", "values": values}]}]}}}}}),
            )
        };
        assert_eq!(
            pod_platform(&affinity(json!(["arm64"]))),
            Some(Platform::linux("arm64"))
        );
        assert_eq!(pod_platform(&affinity(json!(["amd64", "arm64"]))), None);
        assert_eq!(
            pod_platform(&pod(
                json!({"metadata": {"name": "p"}, "spec": {"containers": []}})
            )),
            None
        );
        assert_eq!(service_account_name(&p), "default");
    }

    #[test]
    fn workload_identity_from_service_account_annotations() {
        let spec = |identity: serde_json::Value| -> AzureKeyVaultSecretSpec {
            serde_json::from_value(
                json!({"vault": {"name": "kv", "object": {"name": "s", "type": "secret"},
                "identity": identity}}),
            )
            .unwrap()
        };
        let mut specs = BTreeMap::from([
            (
                "bare".to_string(),
                spec(json!({"serviceAccount": {"name": "app"}})),
            ),
            (
                "own".to_string(),
                spec(
                    json!({"serviceAccount": {"name": "app", "clientId": "mine", "tenantId": "t-mine"}}),
                ),
            ),
            (
                "other".to_string(),
                spec(json!({"serviceAccount": {"name": "other"}})),
            ),
        ]);
        assert!(needs_workload_identity(&specs, "app"));
        assert!(needs_workload_identity(&specs, "other"));
        assert!(!needs_workload_identity(&specs, "nobody"));
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "app", "annotations": {
            CLIENT_ID_ANNOTATION: "cid-from-sa", TENANT_ID_ANNOTATION: " tid-from-sa "}}}))
            .unwrap();
        fill_workload_identity(&mut specs, &sa);
        let id = |k: &str| {
            let s = specs[k]
                .vault
                .identity
                .as_ref()
                .unwrap()
                .service_account
                .clone()
                .unwrap();
            (s.client_id, s.tenant_id)
        };
        assert_eq!(
            id("bare"),
            (Some("cid-from-sa".into()), Some("tid-from-sa".into()))
        );
        assert_eq!(id("own"), (Some("mine".into()), Some("t-mine".into())));
        assert_eq!(id("other"), (None, None));
        assert!(!needs_workload_identity(&specs, "app"));
    }
}
