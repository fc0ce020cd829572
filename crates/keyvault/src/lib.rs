//! Azure Key Vault data-plane client and Entra ID credentials for kvbridge.
//!
//! - [`KeyVaultClient`]: get secret / key / certificate by name and version, list versions,
//!   challenge-based authentication (tenant and scope learned from the vault's 401 per origin).
//! - Credentials ([`TokenCredential`]): client secret, client certificate (PEM/PFX),
//!   workload identity (token file or handed-in token), managed identity (IMDS), environment,
//!   AKS azure.json, AAD Pod Identity ([`PodIdentityCredential`], retired, through NMI), and
//!   [`DefaultCredential`]; [`TokenCache`] adds caching with single-flight.
//! - Errors: one [`Error`] enum whose variants keep their causes as `source()`; its
//!   [`Error::kind`] ([`ErrorKind`]) decides gRPC codes and metric labels. Response bodies are
//!   capped ([`MAX_VAULT_BODY`], [`MAX_TOKEN_BODY`]); server-directed waits beyond the deadline
//!   fail at once.
//! - [`Cloud`]: public, US Gov, China, or an Azure SDK environment JSON file.
//! - Resilience lives in [`Transport`]: pooling, per-attempt timeout, retries with jittered
//!   backoff, Retry-After, an overall deadline, per-vault rate limit, measurable [`TransportStats`].
//!
//! Secret values and tokens never appear in `Debug`, `Display` of errors, or logs.

mod cache;
mod client;
mod cloud;
mod credential;
mod error;
#[cfg(test)]
mod proptests;
mod transport;

use std::fmt;

pub use cache::{TokenCache, REFRESH_MARGIN};
pub use client::{CertificateBundle, KeyBundle, KeyVaultClient, SecretBundle, VersionInfo};
pub use cloud::Cloud;
pub use credential::{
    AccessToken, AssertionAlgorithm, AzureJsonCredential, BoxFuture, ClientCertificateCredential,
    ClientSecretCredential, CredentialOptions, DefaultCredential, EnvironmentCredential,
    ManagedIdentityCredential, ManagedIdentityId, PodIdentityCredential, TokenCredential,
    WorkloadIdentityCredential, AZURE_JSON_PATH, IMDS_ENDPOINT, MAX_TOKEN_FILE, NMI_ENDPOINT,
    POD_IDENTITY_RETIRED, TOKEN_FILE_REREAD,
};
pub use error::{Error, ErrorChain, ErrorKind, HttpSource, IoSource, PkiSource, Target};
pub use transport::{
    ClientOptions, LoopbackAwareResolver, Transport, TransportStats, MAX_SERVER_WAIT,
    MAX_TOKEN_BODY, MAX_VAULT_BODY,
};

/// The three Key Vault object kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Secret,
    Key,
    Certificate,
}

impl ObjectKind {
    /// The URL collection: `secrets`, `keys`, `certificates`.
    pub fn collection(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secrets",
            ObjectKind::Key => "keys",
            ObjectKind::Certificate => "certificates",
        }
    }

    /// Parses the SecretProviderClass `objectType` (secret | key | cert) and longer forms.
    pub fn parse(s: &str) -> Option<ObjectKind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "secret" | "secrets" => Some(ObjectKind::Secret),
            "key" | "keys" => Some(ObjectKind::Key),
            "cert" | "certificate" | "certificates" => Some(ObjectKind::Certificate),
            _ => None,
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Key => "key",
            ObjectKind::Certificate => "certificate",
        })
    }
}
