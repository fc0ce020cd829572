//! Which cloud and vault URL a class reads from.
//!
//! A class's `cloudEnvFileName` (an Azure SDK environment JSON, read through
//! [`CloudEnvFiles`]) wins; a class naming no cloud uses the component's default environment
//! file when it has one (the provider's `--cloud-env-file`, the dev vault's `cloud.json`);
//! otherwise `cloudName` picks a built-in cloud (`AzureStackCloud` needs the file). Command-line
//! overrides (`--vault-url`, `--authority-host`) apply last.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keyvault::Cloud;
use render::params::Parameters;

use crate::cloud_env::{CloudEnvError, CloudEnvFiles};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    CloudEnv(#[from] CloudEnvError),
    #[error("parameter cloudName: unknown cloud {name:?} (AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud, or AzureStackCloud with cloudEnvFileName)")]
    UnknownCloud { name: String },
    #[error("parameter cloudName: AzureStackCloud needs cloudEnvFileName (the Azure environment JSON file on the node)")]
    StackCloudWithoutFile,
}

/// A vault and the cloud it lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultTarget {
    pub cloud: Cloud,
    pub vault_url: String,
}

/// How a component resolves clouds and vault URLs.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Environment files a class may name (confined to a directory in the provider).
    pub env_files: Arc<CloudEnvFiles>,
    /// Relative `cloudEnvFileName`s are taken from here (`kvbridge mount`: the class file's
    /// directory); `None` = the files' allowed directory.
    pub base_dir: Option<PathBuf>,
    /// For classes that name neither `cloudName` nor `cloudEnvFileName`.
    pub default_cloud: Option<Cloud>,
    /// For every class, whatever it names (`kvbridge mount --dev-vault`).
    pub override_cloud: Option<Cloud>,
    /// `--vault-url`: replaces the URL derived from `keyvaultName` and the cloud.
    pub vault_url: Option<String>,
    /// `--authority-host`: replaces the cloud's Entra ID authority.
    pub authority_host: Option<String>,
}

impl CloudConfig {
    pub fn new(env_files: CloudEnvFiles) -> Self {
        Self {
            env_files: Arc::new(env_files),
            base_dir: None,
            default_cloud: None,
            override_cloud: None,
            vault_url: None,
            authority_host: None,
        }
    }

    /// The target of `params`. Blocking when the class names an environment file (bounded,
    /// never on a FIFO); async callers use [`CloudConfig::resolve_async`].
    pub fn resolve(&self, params: &Parameters) -> Result<VaultTarget, TargetError> {
        let cloud = match (&self.override_cloud, &params.cloud_env_file_name) {
            (Some(cloud), _) => cloud.clone(),
            (None, Some(name)) => self.env_files.read(name, self.base_dir.as_deref())?,
            (None, None) => match (&self.default_cloud, params.cloud_name.as_str()) {
                (Some(default), "") => default.clone(),
                (_, name) => builtin(name)?,
            },
        };
        Ok(self.finish(cloud, &params.keyvault_name))
    }

    /// The target of a vault named outside any class (the controller's `spec.vault.name`): the
    /// override cloud, else the component's default cloud, else Azure public; then the
    /// command-line overrides. Never reads a file.
    pub fn resolve_name(&self, keyvault_name: &str) -> VaultTarget {
        let cloud = self
            .override_cloud
            .clone()
            .or_else(|| self.default_cloud.clone())
            .unwrap_or_else(Cloud::public);
        self.finish(cloud, keyvault_name)
    }

    fn finish(&self, mut cloud: Cloud, keyvault_name: &str) -> VaultTarget {
        if let Some(a) = &self.authority_host {
            cloud.authority_host = if a.ends_with('/') {
                a.clone()
            } else {
                format!("{a}/")
            };
        }
        let vault_url = self
            .vault_url
            .clone()
            .unwrap_or_else(|| cloud.vault_url(keyvault_name));
        VaultTarget { cloud, vault_url }
    }

    /// [`CloudConfig::resolve`] with the file read off the async workers.
    pub async fn resolve_async(&self, params: &Parameters) -> Result<VaultTarget, TargetError> {
        if params.cloud_env_file_name.is_none() || self.override_cloud.is_some() {
            return self.resolve(params);
        }
        let this = self.clone();
        let params = params.clone();
        tokio::task::spawn_blocking(move || this.resolve(&params))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Relative `cloudEnvFileName`s are read from `dir`.
    pub fn with_base_dir(mut self, dir: &Path) -> Self {
        self.base_dir = Some(dir.to_path_buf());
        self
    }
}

/// A built-in cloud by its `cloudName` (empty = public).
fn builtin(name: &str) -> Result<Cloud, TargetError> {
    if name.eq_ignore_ascii_case("AzureStackCloud") {
        return Err(TargetError::StackCloudWithoutFile);
    }
    Cloud::by_name(name).map_err(|_| TargetError::UnknownCloud {
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn params(extra: &[(&str, &str)]) -> Parameters {
        let mut m = BTreeMap::new();
        m.insert("keyvaultName".to_string(), "kv1".to_string());
        m.insert(
            "objects".to_string(),
            "array:\n  - |\n    objectName: s\n    objectType: secret\n".to_string(),
        );
        for (k, v) in extra {
            m.insert(k.to_string(), v.to_string());
        }
        Parameters::parse(&m).unwrap()
    }

    #[test]
    fn builtin_default_and_file_clouds() {
        let cfg = CloudConfig::new(CloudEnvFiles::anywhere());
        let t = cfg.resolve(&params(&[])).unwrap();
        assert_eq!(t.vault_url, "https://kv1.vault.azure.net");
        assert_eq!(t.cloud.authority_host, "https://login.microsoftonline.com/");
        let t = cfg
            .resolve(&params(&[("cloudName", "azurechinacloud")]))
            .unwrap();
        assert_eq!(t.vault_url, "https://kv1.vault.azure.cn");
        let e = cfg.resolve(&params(&[("cloudName", "Mars")])).unwrap_err();
        assert!(e.to_string().contains("cloudName"), "{e}");
        let e = cfg
            .resolve(&params(&[("cloudName", "AzureStackCloud")]))
            .unwrap_err();
        assert!(matches!(e, TargetError::StackCloudWithoutFile), "{e}");

        // A default environment file applies only when the class names no cloud.
        let mut dflt = Cloud::public();
        dflt.vault_dns_suffix = "localhost:8443".into();
        let cfg = CloudConfig {
            default_cloud: Some(dflt),
            ..cfg
        };
        assert_eq!(
            cfg.resolve(&params(&[])).unwrap().vault_url,
            "https://kv1.localhost:8443"
        );
        assert_eq!(
            cfg.resolve(&params(&[("cloudName", "AzureUSGovernmentCloud")]))
                .unwrap()
                .vault_url,
            "https://kv1.vault.usgovcloudapi.net"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("env.json"),
            r#"{"activeDirectoryEndpoint":"https://login.stack/","keyVaultDNSSuffix":"vault.stack"}"#,
        )
        .unwrap();
        let cfg = CloudConfig::new(CloudEnvFiles::anywhere()).with_base_dir(dir.path());
        let t = cfg
            .resolve(&params(&[
                ("cloudName", "AzureStackCloud"),
                ("cloudEnvFileName", "env.json"),
            ]))
            .unwrap();
        assert_eq!(t.vault_url, "https://kv1.vault.stack");
        assert_eq!(t.cloud.authority_host, "https://login.stack/");
    }

    #[test]
    fn resolve_name_uses_the_default_cloud() {
        let cfg = CloudConfig::new(CloudEnvFiles::anywhere());
        assert_eq!(
            cfg.resolve_name("kv1").vault_url,
            "https://kv1.vault.azure.net"
        );
        let mut dflt = Cloud::public();
        dflt.vault_dns_suffix = "localhost:8443".into();
        let cfg = CloudConfig {
            default_cloud: Some(dflt),
            authority_host: Some("https://login.test".into()),
            ..cfg
        };
        let t = cfg.resolve_name("kv1");
        assert_eq!(t.vault_url, "https://kv1.localhost:8443");
        assert_eq!(t.cloud.authority_host, "https://login.test/");
    }

    #[test]
    fn overrides_apply_last() {
        let cfg = CloudConfig {
            vault_url: Some("https://localhost:9/".into()),
            authority_host: Some("https://localhost:9".into()),
            ..CloudConfig::new(CloudEnvFiles::anywhere())
        };
        let t = cfg.resolve(&params(&[])).unwrap();
        assert_eq!(t.vault_url, "https://localhost:9/");
        assert_eq!(t.cloud.authority_host, "https://localhost:9/");
    }
}
