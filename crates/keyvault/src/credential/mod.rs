//! Entra ID credentials: client secret, client certificate (PEM/PFX), workload identity
//! (federated token file or a handed-in token), managed identity (IMDS), environment
//! variables, AKS `azure.json`, AAD Pod Identity (NMI, retired), and the default chain.

mod azure_json;
mod certificate;
mod chain;
mod environment;
mod managed_identity;
mod pod_identity;
mod response;
mod secret;
mod workload;

pub use azure_json::{AzureJsonCredential, AZURE_JSON_PATH};
pub use certificate::{AssertionAlgorithm, ClientCertificateCredential};
pub use chain::DefaultCredential;
pub use environment::EnvironmentCredential;
pub use managed_identity::{ManagedIdentityCredential, ManagedIdentityId, IMDS_ENDPOINT};
#[cfg(test)]
pub(crate) use pod_identity::parse_nmi_response;
pub use pod_identity::{PodIdentityCredential, NMI_ENDPOINT, POD_IDENTITY_RETIRED};
pub(crate) use response::parse_token_response;
pub use secret::ClientSecretCredential;
pub use workload::{WorkloadIdentityCredential, MAX_TOKEN_FILE, TOKEN_FILE_REREAD};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::Method;
use url::Url;
use zeroize::Zeroizing;

use crate::cloud::Cloud;
use crate::error::{Error, Target};
use crate::transport::{Request, Transport, MAX_TOKEN_BODY};

/// A boxed, sendable future (the trait is object-safe without `async-trait`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An OAuth access token. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    pub token: Zeroizing<String>,
    pub expires_on: SystemTime,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// Something that can obtain access tokens.
pub trait TokenCredential: Send + Sync + fmt::Debug {
    /// A token for `scope` (e.g. `https://vault.azure.net/.default`). `tenant` is the tenant a
    /// Key Vault challenge named; credentials that are not tenant-bound ignore it.
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>>;

    /// Human description without secrets, e.g. "client secret credential for app X".
    fn describe(&self) -> String;

    /// The resource rejected `rejected_token` (obtained for scope, tenant): caches drop it
    /// unless they already hold a newer one.
    fn invalidate(&self, _scope: &str, _tenant: Option<&str>, _rejected_token: &str) {}

    /// True when this credential already caches tokens (see [`crate::TokenCache`]).
    fn is_cached(&self) -> bool {
        false
    }
}

impl<T: TokenCredential + ?Sized> TokenCredential for Arc<T> {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        (**self).get_token(scope, tenant)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn invalidate(&self, scope: &str, tenant: Option<&str>, rejected_token: &str) {
        (**self).invalidate(scope, tenant, rejected_token)
    }
    fn is_cached(&self) -> bool {
        (**self).is_cached()
    }
}

/// Shared knobs for credentials built from configuration (environment, azure.json, default chain).
#[derive(Debug, Clone)]
pub struct CredentialOptions {
    pub transport: Transport,
    /// IMDS endpoint override (default `http://169.254.169.254`).
    pub imds_endpoint: Option<String>,
    /// Cloud override (e.g. from a SecretProviderClass `cloudEnvFileName`): azure.json uses its
    /// authority instead of the file's `cloud`; the environment credential uses it when
    /// `AZURE_AUTHORITY_HOST` is unset.
    pub cloud: Option<Cloud>,
}

impl Default for CredentialOptions {
    fn default() -> Self {
        Self {
            transport: Transport::shared_default(),
            imds_endpoint: None,
            cloud: None,
        }
    }
}

impl CredentialOptions {
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            imds_endpoint: None,
            cloud: None,
        }
    }
}

pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// The tenant a request goes to: the challenge's tenant when one was given (the vault knows
/// which tenant it trusts), else the configured one.
fn pick_tenant(
    credential: &str,
    configured: &str,
    challenge: Option<&str>,
) -> Result<String, Error> {
    let chosen = match challenge.filter(|t| !t.is_empty()) {
        Some(t) => {
            if !configured.is_empty() && !configured.eq_ignore_ascii_case(t) {
                tracing::debug!(
                    credential,
                    configured,
                    challenge = t,
                    "using the tenant named by the vault challenge"
                );
            }
            t
        }
        None => configured,
    };
    if !valid_tenant(chosen) {
        return Err(Error::invalid_config(
            "tenant id",
            format!("{credential}: no usable tenant id (configured '{configured}', none from the vault challenge)"),
        ));
    }
    Ok(chosen.to_string())
}

fn normalize_authority(host: &str) -> String {
    let h = host.trim();
    let h = if h.is_empty() { DEFAULT_AUTHORITY } else { h };
    let h = if h.contains("://") {
        h.to_string()
    } else {
        format!("https://{h}")
    };
    if h.ends_with('/') {
        h
    } else {
        format!("{h}/")
    }
}

pub(crate) fn token_endpoint(authority_host: &str, tenant: &str) -> Result<Url, Error> {
    Url::parse(authority_host)
        .and_then(|u| u.join(&format!("{tenant}/oauth2/v2.0/token")))
        .map_err(|e| Error::invalid_config("authority host", format!("'{authority_host}': {e}")))
}

fn target_for(credential: &str, url: &Url) -> Target {
    let mut u = url.clone();
    u.set_query(None);
    Target::op(u.as_str(), format!("token request of {credential}"))
}

/// POSTs a token request form and parses the answer.
async fn request_token(
    transport: &Transport,
    credential: &str,
    url: Url,
    form: &[(&str, &str)],
    redact: &[&str],
) -> Result<AccessToken, Error> {
    let body = Zeroizing::new(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish(),
    );
    let target = target_for(credential, &url);
    let req = Request {
        method: Method::POST,
        url,
        headers: vec![("accept", "application/json".into())],
        bearer: None,
        form: Some(body),
        max_body: MAX_TOKEN_BODY,
    };
    tracing::debug!(credential, endpoint = %target.vault, "requesting token");
    let resp = transport.execute(&req, &target, None).await?;
    parse_token_response(credential, &target, &resp, redact)
}

/// The client-credentials grant with a JWT-bearer client assertion (a signed certificate
/// assertion or a federated token); the assertion is redacted from errors.
async fn request_token_with_assertion(
    transport: &Transport,
    credential: &str,
    url: Url,
    client_id: &str,
    assertion: &str,
    scope: &str,
) -> Result<AccessToken, Error> {
    request_token(
        transport,
        credential,
        url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", scope),
        ],
        &[assertion],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_choice() {
        assert_eq!(pick_tenant("c", "a", Some("b")).unwrap(), "b");
        assert_eq!(pick_tenant("c", "a", None).unwrap(), "a");
        assert!(pick_tenant("c", "", None).is_err());
        assert!(pick_tenant("c", "../x", None).is_err());
        assert_eq!(
            token_endpoint(&normalize_authority("login.microsoftonline.us"), "t")
                .unwrap()
                .as_str(),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
        assert_eq!(
            token_endpoint(&normalize_authority("https://localhost:8443"), "t")
                .unwrap()
                .as_str(),
            "https://localhost:8443/t/oauth2/v2.0/token"
        );
    }
}
