//! The default credential chain: environment, AKS azure.json, managed identity.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{
    AccessToken, AzureJsonCredential, BoxFuture, CredentialOptions, EnvironmentCredential,
    ManagedIdentityCredential, ManagedIdentityId, TokenCredential, AZURE_JSON_PATH,
};
use crate::error::Error;

/// The default chain, in order:
/// 1. environment variables ([`EnvironmentCredential`]: secret, certificate, federated token file);
/// 2. AKS azure.json (`AZURE_CREDENTIAL_FILE` or `/etc/kubernetes/azure.json`) when the file exists;
/// 3. managed identity via IMDS (user-assigned by `AZURE_CLIENT_ID` when set, else system-assigned).
///
/// Each link that is not configured is skipped at construction. At token time links are tried
/// in order; "unavailable", transport and timeout failures move on to the next link, a refusal
/// by Entra ID stops the chain (a configured but wrong credential must not be masked). The first
/// link that succeeds is used from then on.
pub struct DefaultCredential {
    chain: Vec<Arc<dyn TokenCredential>>,
    /// Position of the managed identity link, when there is one.
    managed_identity: Option<usize>,
    skipped: Vec<String>,
    selected: Mutex<Option<usize>>,
}

impl fmt::Debug for DefaultCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultCredential")
            .field("chain", &self.chain)
            .field("skipped", &self.skipped)
            .finish()
    }
}

impl DefaultCredential {
    pub fn new() -> Self {
        Self::with_options(&CredentialOptions::default())
    }

    pub fn with_options(options: &CredentialOptions) -> Self {
        let json = std::env::var_os("AZURE_CREDENTIAL_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(AZURE_JSON_PATH));
        Self::from_sources(|k| std::env::var(k).ok(), Some(&json), options)
    }

    /// Builds the chain from an injected environment and azure.json path.
    pub fn from_sources(
        lookup: impl Fn(&str) -> Option<String>,
        azure_json: Option<&Path>,
        options: &CredentialOptions,
    ) -> Self {
        let mut chain: Vec<Arc<dyn TokenCredential>> = Vec::new();
        let mut skipped = Vec::new();
        match EnvironmentCredential::from_vars(&lookup, options) {
            Ok(c) => chain.push(Arc::new(c)),
            Err(e) => skipped.push(e.to_string()),
        }
        if let Some(p) = azure_json {
            if p.exists() {
                match AzureJsonCredential::from_file_with(p, options) {
                    Ok(c) => chain.push(Arc::new(c)),
                    Err(e) => skipped.push(e.to_string()),
                }
            } else {
                skipped.push(format!("azure.json: {} does not exist", p.display()));
            }
        }
        let id = lookup("AZURE_CLIENT_ID")
            .filter(|v| !v.trim().is_empty())
            .map(ManagedIdentityId::ClientId)
            .unwrap_or(ManagedIdentityId::System);
        let mut managed_identity = None;
        match ManagedIdentityCredential::new(options.imds_endpoint.as_deref(), id) {
            Ok(c) => {
                managed_identity = Some(chain.len());
                chain.push(Arc::new(c.with_transport(options.transport.clone())));
            }
            Err(e) => skipped.push(e.to_string()),
        }
        Self {
            chain,
            managed_identity,
            skipped,
            selected: Mutex::new(None),
        }
    }

    /// The chain without its managed identity link: for processes that may run off Azure
    /// (a laptop), where asking IMDS would only wait for a timeout.
    pub fn without_managed_identity(mut self) -> Self {
        if let Some(i) = self.managed_identity.take() {
            self.chain.remove(i);
            self.skipped.push(
                "managed identity: not used here (set useVMManagedIdentity in the class)".into(),
            );
        }
        self
    }

    /// Descriptions of the links, in order.
    pub fn links(&self) -> Vec<String> {
        self.chain.iter().map(|c| c.describe()).collect()
    }
}

impl Default for DefaultCredential {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenCredential for DefaultCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let selected = *self.selected.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = selected {
                return self.chain[i].get_token(scope, tenant).await;
            }
            let mut failures = self.skipped.clone();
            for (i, c) in self.chain.iter().enumerate() {
                match c.get_token(scope, tenant).await {
                    Ok(t) => {
                        tracing::info!(credential = %c.describe(), "default credential chain selected");
                        *self.selected.lock().unwrap_or_else(|p| p.into_inner()) = Some(i);
                        return Ok(t);
                    }
                    Err(
                        e @ (Error::CredentialUnavailable { .. }
                        | Error::Transport { .. }
                        | Error::Timeout { .. }),
                    ) => {
                        let e = crate::error::ErrorChain(&e).to_string();
                        tracing::debug!(credential = %c.describe(), error = %e, "credential unavailable; trying the next");
                        failures.push(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(Error::CredentialUnavailable {
                credential: "default credential chain".into(),
                reason: failures.join("; "),
                source: None,
            })
        })
    }

    fn describe(&self) -> String {
        format!("default credential chain [{}]", self.links().join(" -> "))
    }
}
