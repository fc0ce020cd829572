//! The Key Vault FlexVolume driver (`flexVolume.driver: "azure/kv"`), for clusters that still
//! use it: kubelet runs `DRIVER init`, `DRIVER mount DIR JSON`, `DRIVER unmount DIR` and reads
//! a JSON status from stdout.
//!
//! The legacy options (semicolon lists `keyvaultobjectnames`, `keyvaultobjecttypes`,
//! `keyvaultobjectversions`, `keyvaultobjectaliases`, plus `keyvaultname`, `tenantid`,
//! `usepodidentity`, `usevmmanagedidentity`, `vmmanagedidentityclientid`; `resourcegroup` and
//! `subscriptionid` are accepted and unused, as in the driver since v0.0.14) are turned into
//! SecretProviderClass parameters and mounted by the same [`ProviderService`] as the CSI
//! provider, so parsing, identity selection and rendering are one implementation. The service
//! principal comes from `kubernetes.io/secret/clientid` / `.../clientsecret` (base64, as
//! kubelet passes secretRef data).
//!
//! kubelet passes no flags, so node settings come from the environment:
//! `KVBRIDGE_CLOUD_ENV_FILE` (or `AZURE_ENVIRONMENT_FILEPATH`), `KVBRIDGE_CA_FILE`,
//! `KVBRIDGE_IMDS_ENDPOINT`, `KVBRIDGE_FLEXVOLUME_TMPFS` (`auto`, default, or `never`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::proto::MountRequest;
use crate::{ProviderConfig, ProviderError, ProviderService};

/// The driver's JSON reply.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Capabilities {
    pub attach: bool,
}

impl Status {
    pub fn success() -> Self {
        Status {
            status: "Success",
            message: None,
            capabilities: None,
        }
    }
    pub fn failure(message: impl Into<String>) -> Self {
        Status {
            status: "Failure",
            message: Some(message.into()),
            capabilities: None,
        }
    }
    pub fn not_supported(message: impl Into<String>) -> Self {
        Status {
            status: "Not supported",
            message: Some(message.into()),
            capabilities: None,
        }
    }
    /// Exit code kubelet expects with this status.
    pub fn exit_code(&self) -> i32 {
        if self.status == "Success" {
            0
        } else {
            1
        }
    }
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"status":"Failure"}"#.into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FlexError {
    #[error("invalid options JSON: {0}")]
    Json(String),
    #[error("validation failed, {0}")]
    Validation(String),
    #[error(transparent)]
    Provider(Box<ProviderError>),
    #[error("{path}: {detail}")]
    Io { path: PathBuf, detail: String },
}

impl From<ProviderError> for FlexError {
    fn from(e: ProviderError) -> Self {
        FlexError::Provider(Box::new(e))
    }
}

/// SecretProviderClass parameters and node-publish secrets.
pub type Translated = (BTreeMap<String, String>, BTreeMap<String, String>);

/// Node settings for the driver (from the environment).
#[derive(Debug, Clone, Default)]
pub struct FlexEnv {
    pub cloud_env_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub imds_endpoint: Option<String>,
    /// `KVBRIDGE_NMI_ENDPOINT`: AAD Pod Identity's NMI (for `usepodidentity: "true"`).
    pub nmi_endpoint: Option<String>,
    pub tmpfs: bool,
}

impl FlexEnv {
    pub fn from_env() -> Self {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        FlexEnv {
            cloud_env_file: var("KVBRIDGE_CLOUD_ENV_FILE")
                .or_else(|| var("AZURE_ENVIRONMENT_FILEPATH"))
                .map(PathBuf::from),
            ca_file: var("KVBRIDGE_CA_FILE").map(PathBuf::from),
            imds_endpoint: var("KVBRIDGE_IMDS_ENDPOINT"),
            nmi_endpoint: var("KVBRIDGE_NMI_ENDPOINT"),
            tmpfs: var("KVBRIDGE_FLEXVOLUME_TMPFS").as_deref() != Some("never"),
        }
    }
}

fn split_list(s: &str) -> Vec<String> {
    if s.trim().is_empty() {
        return Vec::new();
    }
    s.split(';').map(|p| p.trim().to_string()).collect()
}

/// Legacy options -> (SecretProviderClass parameters, node-publish secrets).
pub fn translate(options: &BTreeMap<String, Value>) -> Result<Translated, FlexError> {
    let get = |k: &str| -> String {
        match options.get(k) {
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        }
    };
    let required = |k: &str| -> Result<String, FlexError> {
        let v = get(k);
        if v.is_empty() {
            Err(FlexError::Validation(format!("{k} is empty")))
        } else {
            Ok(v)
        }
    };
    let vault = required("keyvaultname")?;
    let tenant = required("tenantid")?;
    // The single-object options of the first releases are accepted too.
    let names = split_list(&{
        let n = get("keyvaultobjectnames");
        if n.is_empty() {
            get("keyvaultobjectname")
        } else {
            n
        }
    });
    if names.is_empty() {
        return Err(FlexError::Validation("keyvaultobjectnames is empty".into()));
    }
    let list = |plural: &str, singular: &str| {
        let v = get(plural);
        split_list(if v.is_empty() { singular } else { &v })
    };
    let types = list("keyvaultobjecttypes", &get("keyvaultobjecttype"));
    let versions = list("keyvaultobjectversions", &get("keyvaultobjectversion"));
    let aliases = list("keyvaultobjectaliases", &get("alias"));
    if types.len() != names.len() {
        return Err(FlexError::Validation(format!(
            "keyvaultobjecttypes has {} entries for {} keyvaultobjectnames (semicolon-separated, one per object)",
            types.len(),
            names.len()
        )));
    }
    for (opt, l) in [
        ("keyvaultobjectversions", &versions),
        ("keyvaultobjectaliases", &aliases),
    ] {
        if !l.is_empty() && l.len() != names.len() {
            return Err(FlexError::Validation(format!(
                "{opt} has {} entries for {} keyvaultobjectnames (leave it empty or give one per object)",
                l.len(),
                names.len()
            )));
        }
    }
    let mut items = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut m = BTreeMap::new();
        m.insert("objectName", name.clone());
        m.insert("objectType", types[i].clone());
        if let Some(v) = versions.get(i).filter(|v| !v.is_empty()) {
            m.insert("objectVersion", v.clone());
        }
        if let Some(a) = aliases.get(i).filter(|a| !a.is_empty()) {
            m.insert("objectAlias", a.clone());
        }
        items.push(
            serde_yaml_ng::to_string(&m)
                .map_err(|e| FlexError::Validation(format!("object {name}: {e}")))?,
        );
    }
    let mut doc = BTreeMap::new();
    doc.insert("array", items);
    let objects =
        serde_yaml_ng::to_string(&doc).map_err(|e| FlexError::Validation(e.to_string()))?;

    let mut params = BTreeMap::new();
    params.insert("keyvaultName".to_string(), vault);
    params.insert("tenantID".to_string(), tenant);
    params.insert("objects".to_string(), objects);
    for (from, to) in [
        ("usepodidentity", "usePodIdentity"),
        ("usevmmanagedidentity", "useVMManagedIdentity"),
        ("vmmanagedidentityclientid", "userAssignedIdentityID"),
        ("cloudname", "cloudName"),
    ] {
        let v = get(from);
        if !v.is_empty() {
            params.insert(to.to_string(), v);
        }
    }
    for (from, to) in [
        ("kubernetes.io/pod.name", mount::identity::ATTR_POD_NAME),
        (
            "kubernetes.io/pod.namespace",
            mount::identity::ATTR_POD_NAMESPACE,
        ),
        ("kubernetes.io/pod.uid", mount::identity::ATTR_POD_UID),
        (
            "kubernetes.io/serviceAccount.name",
            mount::identity::ATTR_SA_NAME,
        ),
    ] {
        let v = get(from);
        if !v.is_empty() {
            params.insert(to.to_string(), v);
        }
    }

    // secretRef data arrives base64-encoded.
    let mut secrets = BTreeMap::new();
    for key in ["clientid", "clientsecret"] {
        let raw = get(&format!("kubernetes.io/secret/{key}"));
        if raw.is_empty() {
            continue;
        }
        let compact: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|_| {
                FlexError::Validation(format!("kubernetes.io/secret/{key} is not base64"))
            })?;
        let value = String::from_utf8(bytes).map_err(|_| {
            FlexError::Validation(format!("kubernetes.io/secret/{key} is not UTF-8"))
        })?;
        secrets.insert(key.to_string(), value.trim().to_string());
    }
    Ok((params, secrets))
}

/// An error and its causes on one line.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> FlexError {
    FlexError::Io {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// True when `dir` is a mount point (per /proc/self/mountinfo).
pub fn is_mount_point(dir: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(dir) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| p == want)
}

/// Mounts a small tmpfs at `dir` (secrets stay off disk); false when not permitted here.
fn try_tmpfs(dir: &Path) -> bool {
    if is_mount_point(dir) {
        return true;
    }
    std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0755,size=16m", "tmpfs"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `mount DIR JSON`: fetch every object and write one file per object into `dir`.
pub async fn mount(dir: &Path, options_json: &str, env: &FlexEnv) -> Result<(), FlexError> {
    let options: BTreeMap<String, Value> = serde_json::from_str(options_json)
        .map_err(|e| FlexError::Json(format!("line {}, column {}", e.line(), e.column())))?;
    let (params, secrets) = translate(&options)?;
    let mut config = ProviderConfig {
        default_cloud_env_file: env.cloud_env_file.clone(),
        imds_endpoint: env.imds_endpoint.clone(),
        nmi_endpoint: env.nmi_endpoint.clone(),
        ..ProviderConfig::default()
    };
    config.client.ca_file = env.ca_file.clone();
    let service = ProviderService::new(config, Arc::new(crate::metrics::Metrics::new()))?;
    let req = MountRequest {
        attributes: serde_json::to_string(&params).map_err(|e| FlexError::Json(e.to_string()))?,
        secrets: serde_json::to_string(&secrets).map_err(|e| FlexError::Json(e.to_string()))?,
        target_path: dir.to_string_lossy().into_owned(),
        permission: render::params::DEFAULT_FILE_MODE.to_string(),
        current_object_version: vec![],
    };
    // Fetch first: nothing is created on failure.
    let resp = service.mount(req).await?;
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let tmpfs = env.tmpfs && try_tmpfs(dir);
    tracing::debug!(dir = %dir.display(), tmpfs, "flexvolume target");
    let files: Vec<mount::writer::OutFile> = resp
        .files
        .into_iter()
        .map(|f| mount::writer::OutFile::new(f.path, f.mode as u32, f.contents))
        .collect();
    let writer = mount::writer::AtomicWriter::new(dir);
    let outcome = writer
        .write_async(files)
        .await
        .map_err(|e| io_err(dir, with_causes(&e)))?;
    for w in &outcome.warnings {
        tracing::warn!(dir = %dir.display(), "{w}");
    }
    Ok(())
}

/// `unmount DIR`: unmount the tmpfs (if any) and remove the directory, as the old driver did.
pub fn unmount(dir: &Path) -> Result<(), FlexError> {
    if !dir.exists() {
        return Ok(());
    }
    if is_mount_point(dir) {
        let ok = std::process::Command::new("umount")
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(io_err(dir, "umount failed"));
        }
    }
    std::fs::remove_dir_all(dir).map_err(|e| io_err(dir, e))
}

/// Runs one driver call (`args` without the program name) and returns the status to print.
pub async fn run(args: &[String], env: &FlexEnv) -> Status {
    match args.first().map(String::as_str) {
        Some("init") => Status {
            status: "Success",
            message: None,
            capabilities: Some(Capabilities { attach: false }),
        },
        Some("mount") => match (args.get(1), args.get(2)) {
            (Some(dir), Some(json)) => match mount(Path::new(dir), json, env).await {
                Ok(()) => Status::success(),
                Err(e) => Status::failure(keyvault::ErrorChain(&e).to_string()),
            },
            _ => Status::failure("usage: mount <mount dir> <json options>"),
        },
        Some("unmount") => match args.get(1) {
            Some(dir) => match unmount(Path::new(dir)) {
                Ok(()) => Status::success(),
                Err(e) => Status::failure(keyvault::ErrorChain(&e).to_string()),
            },
            None => Status::failure("usage: unmount <mount dir>"),
        },
        Some(other) => Status::not_supported(format!("{other} is not supported")),
        None => {
            Status::failure("usage: init | mount <mount dir> <json options> | unmount <mount dir>")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn documented_example_translates() {
        let o = opts(json!({
            "usepodidentity": "false", "keyvaultname": "testkeyvault",
            "keyvaultobjectnames": "testsecret;testkey", "keyvaultobjectaliases": "secret.json;",
            "keyvaultobjecttypes": "secret;key", "keyvaultobjectversions": "testversion;",
            "resourcegroup": "testresourcegroup", "subscriptionid": "testsub", "tenantid": "testtenant",
            "kubernetes.io/secret/clientid": "Y2xpZW50",
            "kubernetes.io/secret/clientsecret": "c2VjcmV0\n",
            "kubernetes.io/pod.name": "nginx-flex-kv", "kubernetes.io/fsType": "", "kubernetes.io/readwrite": "ro"
        }));
        let (params, secrets) = translate(&o).unwrap();
        let p = render::params::Parameters::parse(&params).unwrap();
        assert_eq!(p.keyvault_name, "testkeyvault");
        assert_eq!(p.tenant_id.as_deref(), Some("testtenant"));
        assert_eq!(p.objects.len(), 2);
        assert_eq!(p.objects[0].name, "testsecret");
        assert_eq!(p.objects[0].version.as_deref(), Some("testversion"));
        assert_eq!(p.objects[0].file_name(), "secret.json");
        assert_eq!(p.objects[1].object_type, render::params::ObjectKind::Key);
        assert_eq!(p.objects[1].version, None);
        assert_eq!(p.objects[1].file_name(), "testkey");
        assert_eq!(secrets["clientid"], "client");
        assert_eq!(secrets["clientsecret"], "secret");
    }

    #[test]
    fn validation_names_the_option() {
        let e = translate(&opts(json!({"tenantid": "t"})))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "validation failed, keyvaultname is empty");
        let e = translate(&opts(json!({"tenantid": "t", "keyvaultname": "kv", "keyvaultobjectnames": "a;b", "keyvaultobjecttypes": "secret"})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("keyvaultobjecttypes"), "{e}");
        let e = translate(&opts(json!({"tenantid": "t", "keyvaultname": "kv", "keyvaultobjectnames": "a", "keyvaultobjecttypes": "secret", "kubernetes.io/secret/clientsecret": "!!"})))
            .unwrap_err()
            .to_string();
        assert!(e.contains("clientsecret") && !e.contains("!!"), "{e}");
    }

    #[tokio::test]
    async fn init_and_unknown_calls() {
        let env = FlexEnv::default();
        assert_eq!(
            run(&["init".into()], &env).await.to_json(),
            r#"{"status":"Success","capabilities":{"attach":false}}"#
        );
        let s = run(&["attach".into()], &env).await;
        assert_eq!(s.status, "Not supported");
        assert_eq!(s.exit_code(), 1);
    }
}
