//! Where object data comes from: Key Vault itself, or something in front of it (a cache).

use std::future::Future;

use keyvault::{KeyVaultClient, ObjectKind};
use render::render::{FetchKey, Fetched, FetchedCert, FetchedKey, FetchedSecret, VersionInfo};

use crate::MountError;

/// Object data for a mount.
pub trait Source: Sync {
    fn get(&self, key: &FetchKey) -> impl Future<Output = Result<Fetched, MountError>> + Send;
    /// Versions newest first (by creation time).
    fn versions(
        &self,
        object_type: ObjectKind,
        name: &str,
    ) -> impl Future<Output = Result<Vec<VersionInfo>, MountError>> + Send;
}

/// Reads straight from one vault.
#[derive(Clone, Debug)]
pub struct VaultSource {
    pub client: KeyVaultClient,
    pub vault_url: String,
}

impl VaultSource {
    pub fn new(client: KeyVaultClient, vault_url: impl Into<String>) -> Self {
        Self {
            client,
            vault_url: vault_url.into(),
        }
    }
}

impl Source for VaultSource {
    async fn get(&self, key: &FetchKey) -> Result<Fetched, MountError> {
        let version = key.version.as_deref();
        let err = |source| MountError::Vault {
            key: key.clone(),
            source,
        };
        Ok(match key.object_type {
            ObjectKind::Secret => {
                let s = self
                    .client
                    .get_secret(&self.vault_url, &key.name, version)
                    .await
                    .map_err(err)?;
                Fetched::Secret(FetchedSecret {
                    version: s.version.clone(),
                    value: s.value.clone(),
                    content_type: s.content_type.clone(),
                    kid: s.kid.clone(),
                })
            }
            ObjectKind::Key => {
                let k = self
                    .client
                    .get_key(&self.vault_url, &key.name, version)
                    .await
                    .map_err(err)?;
                Fetched::Key(FetchedKey {
                    version: k.version.clone(),
                    jwk: k.jwk.clone(),
                })
            }
            ObjectKind::Certificate => {
                let c = self
                    .client
                    .get_certificate(&self.vault_url, &key.name, version)
                    .await
                    .map_err(err)?;
                Fetched::Cert(FetchedCert {
                    version: c.version.clone(),
                    cer_der: c.cer.clone(),
                })
            }
        })
    }

    async fn versions(
        &self,
        object_type: ObjectKind,
        name: &str,
    ) -> Result<Vec<VersionInfo>, MountError> {
        let list = self
            .client
            .list_versions(&self.vault_url, object_type, name)
            .await
            .map_err(|source| MountError::Versions {
                kind: object_type.object_type(),
                name: name.to_string(),
                source,
            })?;
        Ok(list
            .into_iter()
            .map(|v| VersionInfo {
                version: v.version,
                enabled: v.enabled,
            })
            .collect())
    }
}
