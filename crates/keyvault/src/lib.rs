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

pub use model::{valid_object_name, valid_vault_name, ObjectKind};
