//! Azure clouds: where to get tokens and how vault host names are formed.

use std::path::Path;

use serde::Deserialize;

use crate::Error;

/// An Azure cloud (or an Azure Stack / dev-vault environment from a JSON file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cloud {
    /// "AzurePublicCloud", "AzureUSGovernmentCloud", "AzureChinaCloud" or the file's `name`.
    pub name: String,
    /// Entra ID authority host with a trailing slash, e.g. `https://login.microsoftonline.com/`.
    pub authority_host: String,
    /// Vault DNS suffix without a leading dot, e.g. `vault.azure.net` (may carry a port).
    pub vault_dns_suffix: String,
    /// Key Vault resource (token audience) without a trailing slash, e.g. `https://vault.azure.net`.
    pub keyvault_resource: String,
}

/// The Azure SDK for Go (go-autorest `azure.Environment`) JSON the Azure provider reads from
/// `cloudEnvFileName` / `AZURE_ENVIRONMENT_FILEPATH`. Only the fields Key Vault needs.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvironmentFile {
    #[serde(default)]
    name: String,
    #[serde(default)]
    active_directory_endpoint: String,
    #[serde(default, rename = "keyVaultDNSSuffix")]
    key_vault_dns_suffix: String,
    #[serde(default)]
    key_vault_endpoint: String,
    #[serde(default)]
    resource_identifiers: ResourceIdentifiers,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceIdentifiers {
    #[serde(default)]
    key_vault: String,
}

fn with_slash(s: &str) -> String {
    if s.ends_with('/') {
        s.to_string()
    } else {
        format!("{s}/")
    }
}

impl Cloud {
    pub fn public() -> Cloud {
        Cloud {
            name: "AzurePublicCloud".into(),
            authority_host: "https://login.microsoftonline.com/".into(),
            vault_dns_suffix: "vault.azure.net".into(),
            keyvault_resource: "https://vault.azure.net".into(),
        }
    }

    /// A built-in cloud by name, case-insensitive; "" means public. Accepts the Azure SDK
    /// aliases `AzureCloud`, `AzureUSGovernment`, `AzureChina` too.
    pub fn by_name(name: &str) -> Result<Cloud, Error> {
        let n = name.trim().to_ascii_lowercase();
        Ok(match n.as_str() {
            "" | "azurepubliccloud" | "azurecloud" | "public" => Cloud::public(),
            "azureusgovernmentcloud" | "azureusgovernment" | "usgovernment" => Cloud {
                name: "AzureUSGovernmentCloud".into(),
                authority_host: "https://login.microsoftonline.us/".into(),
                vault_dns_suffix: "vault.usgovcloudapi.net".into(),
                keyvault_resource: "https://vault.usgovcloudapi.net".into(),
            },
            "azurechinacloud" | "azurechina" | "china" => Cloud {
                name: "AzureChinaCloud".into(),
                authority_host: "https://login.chinacloudapi.cn/".into(),
                vault_dns_suffix: "vault.azure.cn".into(),
                keyvault_resource: "https://vault.azure.cn".into(),
            },
            _ => {
                return Err(Error::invalid_config(
                    "cloud name",
                    format!("unknown cloud '{name}': expected AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud (or a cloud environment file)"),
                ))
            }
        })
    }

    /// Reads an Azure SDK for Go environment JSON file (`cloudEnvFileName`, Azure Stack).
    pub fn from_env_file(path: &Path) -> Result<Cloud, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::read_file("cloud environment file", path, e))?;
        Self::from_env_json(&text)
            .map_err(|e| Error::invalid_file("cloud environment file", path, e))
    }

    /// Parses the environment JSON (see [`Cloud::from_env_file`]).
    pub fn from_env_json(text: &str) -> Result<Cloud, String> {
        let env: EnvironmentFile = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a valid environment JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if env.active_directory_endpoint.is_empty() {
            return Err("activeDirectoryEndpoint is missing".into());
        }
        let suffix = env
            .key_vault_dns_suffix
            .trim()
            .trim_start_matches('.')
            .to_string();
        if suffix.is_empty() {
            return Err("keyVaultDNSSuffix is missing".into());
        }
        let resource = [
            env.resource_identifiers.key_vault.as_str(),
            env.key_vault_endpoint.as_str(),
        ]
        .into_iter()
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("https://{suffix}"));
        Ok(Cloud {
            name: if env.name.is_empty() {
                "AzureStackCloud".into()
            } else {
                env.name
            },
            authority_host: with_slash(env.active_directory_endpoint.trim()),
            vault_dns_suffix: suffix,
            keyvault_resource: resource,
        })
    }

    /// `https://{vault_name}.{suffix}`: the URL the Azure provider builds from `keyvaultName`.
    pub fn vault_url(&self, vault_name: &str) -> String {
        format!("https://{vault_name}.{}", self.vault_dns_suffix)
    }

    /// The scope to request for Key Vault without a challenge: `{resource}/.default`.
    pub fn keyvault_scope(&self) -> String {
        format!("{}/.default", self.keyvault_resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_clouds() {
        for (n, login, suffix) in [
            ("", "https://login.microsoftonline.com/", "vault.azure.net"),
            (
                "AzurePublicCloud",
                "https://login.microsoftonline.com/",
                "vault.azure.net",
            ),
            (
                "azureusgovernmentcloud",
                "https://login.microsoftonline.us/",
                "vault.usgovcloudapi.net",
            ),
            (
                "AZURECHINACLOUD",
                "https://login.chinacloudapi.cn/",
                "vault.azure.cn",
            ),
        ] {
            let c = Cloud::by_name(n).unwrap();
            assert_eq!(c.authority_host, login, "{n}");
            assert_eq!(c.vault_dns_suffix, suffix, "{n}");
            assert_eq!(c.keyvault_resource, format!("https://{suffix}"));
        }
        let e = Cloud::by_name("AzureGermanCloud").unwrap_err().to_string();
        assert!(e.contains("AzureGermanCloud"), "{e}");
        assert_eq!(
            Cloud::by_name("AzureChinaCloud").unwrap().vault_url("kv"),
            "https://kv.vault.azure.cn"
        );
    }

    #[test]
    fn env_file_for_dev_vault_and_azure_stack() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env.json");
        std::fs::write(
            &p,
            r#"{"name": "AzureStackCloud", "managementPortalURL": "https://portal.local/",
                "activeDirectoryEndpoint": "https://localhost:8443/",
                "keyVaultDNSSuffix": "localhost:8443", "keyVaultEndpoint": "https://localhost:8443/",
                "resourceIdentifiers": {"graph": "https://graph.local/", "keyVault": "https://localhost:8443"},
                "tokenAudience": "https://management.local/"}"#,
        )
        .unwrap();
        let c = Cloud::from_env_file(&p).unwrap();
        assert_eq!(c.authority_host, "https://localhost:8443/");
        assert_eq!(
            c.vault_url("kvbridge-demo"),
            "https://kvbridge-demo.localhost:8443"
        );
        assert_eq!(c.keyvault_resource, "https://localhost:8443");
        assert_eq!(c.keyvault_scope(), "https://localhost:8443/.default");

        // Azure Stack style: no resourceIdentifiers.keyVault, endpoint without the slash trick.
        let c = Cloud::from_env_json(
            r#"{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://adfs.local/adfs","keyVaultDNSSuffix":".vault.local.azurestack.external","keyVaultEndpoint":"https://vault.local.azurestack.external/"}"#,
        )
        .unwrap();
        assert_eq!(c.authority_host, "https://adfs.local/adfs/");
        assert_eq!(c.vault_dns_suffix, "vault.local.azurestack.external");
        assert_eq!(
            c.keyvault_resource,
            "https://vault.local.azurestack.external"
        );
        assert!(Cloud::from_env_json(r#"{"name":"x"}"#).is_err());
        assert!(Cloud::from_env_file(&dir.path().join("missing.json")).is_err());
    }
}
