//! Restart on rotation: Deployments, StatefulSets and DaemonSets annotated
//! [`OPT_IN`]` = "true"` get their pod template annotated ([`TEMPLATE_HASH`]) with a hash of the
//! kvbridge-written Secrets and ConfigMaps they use whenever kvbridge changes one of them, so
//! Kubernetes rolls their pods. "Use" is read from the pod template: volumes (also projected),
//! `env[].valueFrom`, `envFrom` of every container (init and ephemeral too) and
//! `imagePullSecrets`.
//!
//! The pure part ([`uses`], [`rollout_hash`]) is unit-tested; [`after_rotation`] lists the
//! namespace's workloads only when an output changed (or a restart is still pending), patches
//! only templates whose hash differs and tries every workload even when one fails. A failure is
//! kept in the resource's status by the reconcile and retried (see `reconcile::record_restart`).

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, PodSpec, PodTemplateSpec};
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::write::HASH_ANNOTATION;

/// Workload annotation that opts in.
pub const OPT_IN: &str = "kvbridge.io/restart-on-rotation";
/// Pod template annotation kvbridge sets.
pub const TEMPLATE_HASH: &str = "kvbridge.io/secrets-hash";

/// The Secrets and ConfigMaps a pod template uses, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Uses {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
}

impl Uses {
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.config_maps.is_empty()
    }
}

/// Whether a workload opted in (`"true"`, any case).
pub fn opted_in(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(OPT_IN))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn env_uses(uses: &mut Uses, env: Option<&Vec<EnvVar>>, env_from: Option<&Vec<EnvFromSource>>) {
    for e in env.into_iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        if let Some(s) = &from.secret_key_ref {
            uses.secrets.insert(s.name.clone());
        }
        if let Some(c) = &from.config_map_key_ref {
            uses.config_maps.insert(c.name.clone());
        }
    }
    for f in env_from.into_iter().flatten() {
        if let Some(s) = &f.secret_ref {
            uses.secrets.insert(s.name.clone());
        }
        if let Some(c) = &f.config_map_ref {
            uses.config_maps.insert(c.name.clone());
        }
    }
}

fn container_uses(uses: &mut Uses, c: &Container) {
    env_uses(uses, c.env.as_ref(), c.env_from.as_ref());
}

/// What `spec` uses.
pub fn uses(spec: &PodSpec) -> Uses {
    let mut u = Uses::default();
    for v in spec.volumes.iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            u.secrets.insert(name);
        }
        if let Some(c) = &v.config_map {
            u.config_maps.insert(c.name.clone());
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &p.secret {
                u.secrets.insert(s.name.clone());
            }
            if let Some(c) = &p.config_map {
                u.config_maps.insert(c.name.clone());
            }
        }
    }
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        container_uses(&mut u, c);
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        env_uses(&mut u, c.env.as_ref(), c.env_from.as_ref());
    }
    for r in spec.image_pull_secrets.iter().flatten() {
        u.secrets.insert(r.name.clone());
    }
    u.secrets.retain(|n| !n.is_empty());
    u.config_maps.retain(|n| !n.is_empty());
    u
}

/// SHA-256 (hex) over `(kind, name, content hash)` triples in sorted order.
pub fn rollout_hash(items: &BTreeSet<(&'static str, String, String)>) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (kind, name, hash) in items {
        for field in [kind.as_bytes(), name.as_bytes(), hash.as_bytes()] {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field);
        }
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A workload kind with a pod template.
trait Workload:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
    const KIND: &'static str;
    fn template(&self) -> Option<&PodTemplateSpec>;
}

impl Workload for Deployment {
    const KIND: &'static str = "Deployment";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

impl Workload for StatefulSet {
    const KIND: &'static str = "StatefulSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

impl Workload for DaemonSet {
    const KIND: &'static str = "DaemonSet";
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
}

/// The content hashes of the kvbridge-written objects, as the watches last saw them, with the
/// outputs just written taking precedence (the watch may not have caught up yet).
pub struct Hashes<'a> {
    pub secrets: &'a Store<PartialObjectMeta<k8s_openapi::api::core::v1::Secret>>,
    pub config_maps: &'a Store<PartialObjectMeta<k8s_openapi::api::core::v1::ConfigMap>>,
    /// `(kind, name, new hash)` of the outputs this reconcile changed.
    pub changed: &'a [(&'static str, String, String)],
}

impl Hashes<'_> {
    fn get(&self, ns: &str, kind: &'static str, name: &str) -> Option<String> {
        if let Some((_, _, h)) = self
            .changed
            .iter()
            .find(|(k, n, _)| *k == kind && n == name)
        {
            return Some(h.clone());
        }
        let key = |m: &ObjectMeta| {
            m.annotations
                .as_ref()
                .and_then(|a| a.get(HASH_ANNOTATION))
                .cloned()
        };
        if kind == "Secret" {
            self.secrets
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|m| key(&m.metadata))
        } else {
            self.config_maps
                .get(&ObjectRef::new(name).within(ns))
                .and_then(|m| key(&m.metadata))
        }
    }

    /// The rollout hash of a template that uses `u`, when it uses any kvbridge output.
    fn of(&self, ns: &str, u: &Uses) -> Option<String> {
        let mut items = BTreeSet::new();
        for s in &u.secrets {
            if let Some(h) = self.get(ns, "Secret", s) {
                items.insert(("Secret", s.clone(), h));
            }
        }
        for c in &u.config_maps {
            if let Some(h) = self.get(ns, "ConfigMap", c) {
                items.insert(("ConfigMap", c.clone(), h));
            }
        }
        (!items.is_empty()).then(|| rollout_hash(&items))
    }
}

/// A workload whose template was annotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    pub kind: &'static str,
    pub name: String,
}

/// A workload kind that could not be listed (`name` is `None`) or a workload whose template
/// could not be patched (API error, RBAC or admission denial, conflict).
#[derive(Debug)]
pub struct Failed {
    pub kind: &'static str,
    pub name: Option<String>,
    pub error: kube::Error,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{} {name}: {}", self.kind, self.error),
            None => write!(f, "listing {}s: {}", self.kind, self.error),
        }
    }
}

/// What [`after_rotation`] did: every workload is tried, one failure does not stop the others.
#[derive(Debug, Default)]
pub struct Report {
    pub restarted: Vec<Restarted>,
    pub failed: Vec<Failed>,
}

async fn restart_kind<W: Workload>(
    client: &kube::Client,
    ns: &str,
    hashes: &Hashes<'_>,
    field_manager: &str,
    report: &mut Report,
) {
    let api: Api<W> = Api::namespaced(client.clone(), ns);
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l,
        Err(error) => {
            report.failed.push(Failed {
                kind: W::KIND,
                name: None,
                error,
            });
            return;
        }
    };
    for w in list {
        if !opted_in(w.meta()) {
            continue;
        }
        let Some(template) = w.template() else {
            continue;
        };
        let Some(spec) = &template.spec else { continue };
        let u = uses(spec);
        let touched = hashes.changed.iter().any(|(k, n, _)| {
            if *k == "Secret" {
                u.secrets.contains(n)
            } else {
                u.config_maps.contains(n)
            }
        });
        if !touched {
            continue;
        }
        let Some(hash) = hashes.of(ns, &u) else {
            continue;
        };
        let current = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(TEMPLATE_HASH));
        if current == Some(&hash) {
            continue;
        }
        let patch = serde_json::json!({
            "spec": { "template": { "metadata": { "annotations": { TEMPLATE_HASH: hash } } } }
        });
        let pp = PatchParams {
            field_manager: Some(field_manager.to_string()),
            ..Default::default()
        };
        match api.patch(&w.name_any(), &pp, &Patch::Merge(&patch)).await {
            Ok(_) => report.restarted.push(Restarted {
                kind: W::KIND,
                name: w.name_any(),
            }),
            Err(error) => report.failed.push(Failed {
                kind: W::KIND,
                name: Some(w.name_any()),
                error,
            }),
        }
    }
}

/// Annotates the pod templates of opted-in workloads in `ns` that use an output in
/// `hashes.changed` and whose annotation differs (so a repeated call after a success patches
/// nothing); reports those it annotated and those it could not.
pub async fn after_rotation(
    client: &kube::Client,
    ns: &str,
    hashes: &Hashes<'_>,
    field_manager: &str,
) -> Report {
    let mut report = Report::default();
    if hashes.changed.is_empty() {
        return report;
    }
    restart_kind::<Deployment>(client, ns, hashes, field_manager, &mut report).await;
    restart_kind::<StatefulSet>(client, ns, hashes, field_manager, &mut report).await;
    restart_kind::<DaemonSet>(client, ns, hashes, field_manager, &mut report).await;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, ConfigMapProjection, ConfigMapVolumeSource,
        EnvVarSource, LocalObjectReference, ProjectedVolumeSource, SecretEnvSource,
        SecretKeySelector, SecretProjection, SecretVolumeSource, Volume, VolumeProjection,
    };
    use std::collections::BTreeMap;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_way_a_pod_uses_a_secret_or_config_map() {
        let spec = PodSpec {
            volumes: Some(vec![
                Volume {
                    name: "a".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some("vol-secret".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "b".into(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: "vol-cm".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "c".into(),
                    projected: Some(ProjectedVolumeSource {
                        sources: Some(vec![
                            VolumeProjection {
                                secret: Some(SecretProjection {
                                    name: "proj-secret".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                            VolumeProjection {
                                config_map: Some(ConfigMapProjection {
                                    name: "proj-cm".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            },
                        ]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            containers: vec![Container {
                name: "app".into(),
                env: Some(vec![
                    EnvVar {
                        name: "A".into(),
                        value_from: Some(EnvVarSource {
                            secret_key_ref: Some(SecretKeySelector {
                                name: "env-secret".into(),
                                key: "k".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    EnvVar {
                        name: "B".into(),
                        value_from: Some(EnvVarSource {
                            config_map_key_ref: Some(ConfigMapKeySelector {
                                name: "env-cm".into(),
                                key: "k".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    EnvVar {
                        name: "PLAIN".into(),
                        value: Some("x".into()),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }],
            init_containers: Some(vec![Container {
                name: "init".into(),
                env_from: Some(vec![
                    EnvFromSource {
                        secret_ref: Some(SecretEnvSource {
                            name: "init-secret".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    EnvFromSource {
                        config_map_ref: Some(ConfigMapEnvSource {
                            name: "init-cm".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }]),
            image_pull_secrets: Some(vec![LocalObjectReference {
                name: "registry".into(),
            }]),
            ..Default::default()
        };
        let u = uses(&spec);
        assert_eq!(
            u.secrets,
            set(&[
                "env-secret",
                "init-secret",
                "proj-secret",
                "registry",
                "vol-secret"
            ])
        );
        assert_eq!(
            u.config_maps,
            set(&["env-cm", "init-cm", "proj-cm", "vol-cm"])
        );
        assert!(uses(&PodSpec::default()).is_empty());
    }

    #[test]
    fn opt_in_and_hash() {
        let meta = |v: Option<&str>| ObjectMeta {
            annotations: v.map(|v| BTreeMap::from([(OPT_IN.to_string(), v.to_string())])),
            ..Default::default()
        };
        assert!(opted_in(&meta(Some("true"))));
        assert!(opted_in(&meta(Some(" TRUE "))));
        assert!(!opted_in(&meta(Some("false"))));
        assert!(!opted_in(&meta(Some("yes"))));
        assert!(!opted_in(&meta(None)));

        let items = |h: &str| {
            BTreeSet::from([
                ("Secret", "a".to_string(), h.to_string()),
                ("ConfigMap", "a".to_string(), "c1".to_string()),
            ])
        };
        assert_eq!(rollout_hash(&items("h1")), rollout_hash(&items("h1")));
        assert_ne!(rollout_hash(&items("h1")), rollout_hash(&items("h2")));
        // Field boundaries count: ("ab","c") differs from ("a","bc").
        let x = BTreeSet::from([("Secret", "ab".to_string(), "c".to_string())]);
        let y = BTreeSet::from([("Secret", "a".to_string(), "bc".to_string())]);
        assert_ne!(rollout_hash(&x), rollout_hash(&y));
        assert_eq!(rollout_hash(&items("h1")).len(), 64);
    }
}
