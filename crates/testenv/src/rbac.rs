//! RBAC "exactly": which of a ServiceAccount's rules its process needed, from the requests the
//! API server's audit log ([`crate::ControlPlane::audit_log`]) recorded for it.
//!
//! Rules are split into atoms (one API group, resource, verb and binding namespace; resource names
//! kept). An atom is **needed** when some request of the process that the API server allowed
//! matches it and no other atom: without it that request would have been forbidden. A rule set is
//! exact when every atom is needed (minimal) and no request was forbidden (sufficient).

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// One request of the audit log (stage ResponseComplete, or ResponseStarted for watches).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Request {
    pub verb: String,
    pub api_group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub code: u16,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{} ns={} name={} -> {}",
            self.verb,
            self.api_group,
            self.resource,
            self.namespace.as_deref().unwrap_or("-"),
            self.name.as_deref().unwrap_or("-"),
            self.code
        )
    }
}

/// The resource requests (not `/version`, discovery, ...) `user` made, read from `audit_log`.
pub fn requests_by(audit_log: &Path, user: &str) -> Result<Vec<Request>, String> {
    let text = std::fs::read_to_string(audit_log)
        .map_err(|e| format!("reading {}: {e}", audit_log.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        // Watches still open when the log is read have only ResponseStarted.
        let stage = e["stage"].as_str().unwrap_or_default();
        if !matches!(stage, "ResponseComplete" | "ResponseStarted") || e["user"]["username"] != user
        {
            continue;
        }
        let Some(obj) = e["objectRef"].as_object() else {
            continue;
        };
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let Some(resource) = s("resource") else {
            continue;
        };
        let resource = match s("subresource") {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource,
        };
        let verb = e["verb"].as_str().unwrap_or_default().to_string();
        // RBAC authorizes create (and collection verbs) without a name.
        let name = match verb.as_str() {
            "create" | "list" | "watch" | "deletecollection" => None,
            _ => s("name"),
        };
        out.push(Request {
            verb,
            api_group: s("apiGroup").unwrap_or_default(),
            resource,
            namespace: s("namespace"),
            name,
            code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
        });
    }
    Ok(out)
}

/// One API group × resource × verb of a rule, where its binding applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Atom {
    /// `Some(ns)` for a Role (or a ClusterRole bound by a RoleBinding) in ns; `None` cluster-wide.
    pub namespace: Option<String>,
    pub role: String,
    pub api_group: String,
    pub resource: String,
    pub verb: String,
    pub resource_names: Vec<String>,
}

impl std::fmt::Display for Atom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {}/{}{} ({})",
            self.role,
            self.verb,
            self.api_group,
            self.resource,
            if self.resource_names.is_empty() {
                String::new()
            } else {
                format!(" names={:?}", self.resource_names)
            },
            self.namespace
                .as_deref()
                .map_or("cluster-wide".to_string(), |n| format!("in {n}"))
        )
    }
}

impl Atom {
    fn matches(&self, r: &Request) -> bool {
        let any = |v: &str, want: &str| v == "*" || v == want;
        any(&self.api_group, &r.api_group)
            && any(&self.resource, &r.resource)
            && any(&self.verb, &r.verb)
            && (self.namespace.is_none() || self.namespace == r.namespace)
            && (self.resource_names.is_empty()
                || r.name
                    .as_ref()
                    .is_some_and(|n| self.resource_names.contains(n)))
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The atoms of every Role/ClusterRole bound to ServiceAccount `namespace/name` in `manifests`
/// (the rendered chart, as JSON values).
pub fn atoms_for(manifests: &[Value], namespace: &str, name: &str) -> Vec<Atom> {
    let mut atoms = BTreeSet::new();
    for binding in manifests {
        let kind = binding["kind"].as_str().unwrap_or_default();
        if kind != "RoleBinding" && kind != "ClusterRoleBinding" {
            continue;
        }
        let bound = binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == name && s["namespace"] == namespace
            })
        });
        if !bound {
            continue;
        }
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let Some(role) = manifests
            .iter()
            .find(|d| d["kind"] == role_kind && d["metadata"]["name"] == role_name)
        else {
            continue;
        };
        let scope = (kind == "RoleBinding").then(|| {
            binding["metadata"]["namespace"]
                .as_str()
                .unwrap_or(namespace)
                .to_string()
        });
        for rule in role["rules"].as_array().into_iter().flatten() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        atoms.insert(Atom {
                            namespace: scope.clone(),
                            role: format!("{role_kind}/{role_name}"),
                            api_group: group.clone(),
                            resource: resource.clone(),
                            verb,
                            resource_names: strings(&rule["resourceNames"]),
                        });
                    }
                }
            }
        }
    }
    atoms.into_iter().collect()
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Atoms no allowed request needed (removable).
    pub unneeded: Vec<Atom>,
    /// Requests the API server forbade (missing permissions).
    pub forbidden: Vec<Request>,
    /// Allowed requests no atom explains (granted by something outside `atoms`).
    pub unexplained: Vec<Request>,
    /// Distinct allowed requests per needed atom (for the report).
    pub needed: Vec<(Atom, Request)>,
}

impl Findings {
    pub fn exact(&self) -> bool {
        self.unneeded.is_empty() && self.forbidden.is_empty() && self.unexplained.is_empty()
    }
}

impl std::fmt::Display for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (a, r) in &self.needed {
            writeln!(f, "needed   {a}  <- {r}")?;
        }
        for a in &self.unneeded {
            writeln!(f, "UNNEEDED {a}")?;
        }
        for r in &self.forbidden {
            writeln!(f, "FORBIDDEN {r}")?;
        }
        for r in &self.unexplained {
            writeln!(f, "UNEXPLAINED {r}")?;
        }
        Ok(())
    }
}

/// Compares `atoms` with the `requests` a process made.
pub fn check(atoms: &[Atom], requests: &[Request]) -> Findings {
    let mut findings = Findings::default();
    let allowed: BTreeSet<&Request> = requests
        .iter()
        .filter(|r| r.code != 403 && r.code != 0)
        .collect();
    let forbidden: BTreeSet<&Request> = requests.iter().filter(|r| r.code == 403).collect();
    findings.forbidden = forbidden.into_iter().cloned().collect();
    for r in &allowed {
        if !atoms.iter().any(|a| a.matches(r)) {
            findings.unexplained.push((*r).clone());
        }
    }
    for (i, atom) in atoms.iter().enumerate() {
        let sole = allowed.iter().find(|r| {
            atom.matches(r)
                && !atoms
                    .iter()
                    .enumerate()
                    .any(|(j, other)| j != i && other.matches(r))
        });
        match sole {
            Some(r) => findings.needed.push((atom.clone(), (*r).clone())),
            None => findings.unneeded.push(atom.clone()),
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(
        verb: &str,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> Request {
        Request {
            verb: verb.into(),
            api_group: group.into(),
            resource: resource.into(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
            code: 200,
        }
    }

    #[test]
    fn overlapping_and_unused_rules_are_found() {
        let manifests = vec![
            json!({"kind": "ClusterRole", "metadata": {"name": "c"}, "rules": [
                {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get"]},
            ]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "c"},
                "roleRef": {"kind": "ClusterRole", "name": "c"},
                "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "sys"}]}),
            json!({"kind": "Role", "metadata": {"name": "r", "namespace": "sys"}, "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["tls"], "verbs": ["get", "update"]},
            ]}),
            json!({"kind": "RoleBinding", "metadata": {"name": "r", "namespace": "sys"},
                "roleRef": {"kind": "Role", "name": "r"},
                "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "sys"}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "other"},
                "roleRef": {"kind": "ClusterRole", "name": "c"},
                "subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": "sys"}]}),
        ];
        let atoms = atoms_for(&manifests, "sys", "sa");
        assert_eq!(atoms.len(), 4);
        let requests = vec![
            req("get", "", "secrets", Some("sys"), Some("tls")),
            req("update", "", "secrets", Some("sys"), Some("tls")),
            req("get", "", "secrets", Some("app"), Some("pull")),
        ];
        let f = check(&atoms, &requests);
        // get secrets/tls is covered twice: the Role's get is not needed; configmaps unused.
        let unneeded: Vec<String> = f.unneeded.iter().map(|a| a.to_string()).collect();
        assert_eq!(unneeded.len(), 2, "{f}");
        assert!(unneeded.iter().any(|a| a.contains("configmaps")), "{f}");
        assert!(unneeded.iter().any(|a| a.contains("Role/r: get")), "{f}");
        assert!(!f.exact());

        let mut forbidden = req("list", "", "pods", None, None);
        forbidden.code = 403;
        let f = check(&atoms, &[forbidden]);
        assert_eq!(f.forbidden.len(), 1);
        // A request in another namespace is not explained by the Role.
        let f = check(
            &atoms[2..],
            &[req("update", "", "secrets", Some("app"), Some("tls"))],
        );
        assert_eq!(f.unexplained.len(), 1, "{f}");
    }
}
