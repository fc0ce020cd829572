//! Credentials from `AZURE_*` environment variables.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{
    normalize_authority, AccessToken, BoxFuture, ClientCertificateCredential,
    ClientSecretCredential, CredentialOptions, TokenCredential, WorkloadIdentityCredential,
};
use crate::error::Error;

/// `AZURE_*` environment variables: client secret, else client certificate, else federated
/// token file (workload identity).
pub struct EnvironmentCredential {
    inner: Arc<dyn TokenCredential>,
}

impl fmt::Debug for EnvironmentCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EnvironmentCredential")
            .field(&self.inner)
            .finish()
    }
}

impl EnvironmentCredential {
    /// From the process environment with the shared default transport.
    pub fn from_env() -> Result<Self, Error> {
        Self::from_vars(|k| std::env::var(k).ok(), &CredentialOptions::default())
    }

    /// From any variable lookup (tests inject a map instead of mutating the process env).
    pub fn from_vars(
        lookup: impl Fn(&str) -> Option<String>,
        options: &CredentialOptions,
    ) -> Result<Self, Error> {
        let var = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let unavailable = |reason: &str| Error::CredentialUnavailable {
            credential: "environment credential".into(),
            reason: reason.into(),
            source: None,
        };
        let client_id =
            var("AZURE_CLIENT_ID").ok_or_else(|| unavailable("AZURE_CLIENT_ID is not set"))?;
        let tenant = var("AZURE_TENANT_ID").unwrap_or_default();
        let authority = match (var("AZURE_AUTHORITY_HOST"), &options.cloud) {
            (Some(a), _) => normalize_authority(&a),
            (None, Some(cloud)) => cloud.authority_host.clone(),
            (None, None) => normalize_authority(""),
        };
        let t = options.transport.clone();
        let inner: Arc<dyn TokenCredential> = if let Some(secret) =
            lookup("AZURE_CLIENT_SECRET").filter(|s| !s.is_empty())
        {
            Arc::new(
                ClientSecretCredential::new(&authority, &tenant, &client_id, secret)
                    .with_transport(t),
            )
        } else if let Some(path) = var("AZURE_CLIENT_CERTIFICATE_PATH") {
            let password = lookup("AZURE_CLIENT_CERTIFICATE_PASSWORD").map(Zeroizing::new);
            Arc::new(
                ClientCertificateCredential::from_file(
                    &authority,
                    &tenant,
                    &client_id,
                    Path::new(&path),
                    password.as_deref().map(String::as_str),
                )?
                .with_x5c(
                    var("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")
                        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true")),
                )
                .with_transport(t),
            )
        } else if let Some(path) = var("AZURE_FEDERATED_TOKEN_FILE") {
            Arc::new(
                WorkloadIdentityCredential::from_token_file(
                    &authority,
                    &tenant,
                    &client_id,
                    Path::new(&path),
                )
                .with_transport(t),
            )
        } else {
            return Err(unavailable(
                "AZURE_CLIENT_ID is set but none of AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, AZURE_FEDERATED_TOKEN_FILE",
            ));
        };
        Ok(Self { inner })
    }
}

impl TokenCredential for EnvironmentCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        self.inner.get_token(scope, tenant)
    }
    fn describe(&self) -> String {
        format!("environment: {}", self.inner.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::DefaultCredential;
    use crate::transport::Transport;

    #[test]
    fn environment_parser_modes() {
        let opts = CredentialOptions::new(
            Transport::new(&crate::ClientOptions {
                use_system_roots: false,
                ..Default::default()
            })
            .unwrap(),
        );
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let e = EnvironmentCredential::from_vars(env(&[]), &opts).unwrap_err();
        assert!(matches!(e, Error::CredentialUnavailable { .. }));
        let c = EnvironmentCredential::from_vars(
            env(&[
                ("AZURE_CLIENT_ID", "app"),
                ("AZURE_CLIENT_SECRET", "sek"),
                ("AZURE_TENANT_ID", "t"),
            ]),
            &opts,
        )
        .unwrap();
        assert!(c
            .describe()
            .contains("client secret credential for app app"));
        assert!(!format!("{c:?}").contains("sek"));
        let c = EnvironmentCredential::from_vars(
            env(&[
                ("AZURE_CLIENT_ID", "app"),
                (
                    "AZURE_FEDERATED_TOKEN_FILE",
                    "/var/run/secrets/azure/tokens/azure-identity-token",
                ),
            ]),
            &opts,
        )
        .unwrap();
        assert!(
            c.describe().contains("workload identity"),
            "{}",
            c.describe()
        );
        let e = EnvironmentCredential::from_vars(
            env(&[
                ("AZURE_CLIENT_ID", "app"),
                ("AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent.pem"),
            ]),
            &opts,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent.pem"), "{e}");
        let e = EnvironmentCredential::from_vars(env(&[("AZURE_CLIENT_ID", "app")]), &opts)
            .unwrap_err();
        assert!(e.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"));

        // Default chain: env skipped, no azure.json, MSI last.
        let d = DefaultCredential::from_sources(
            env(&[]),
            Some(Path::new("/nonexistent/azure.json")),
            &opts,
        );
        assert_eq!(
            d.links(),
            vec!["managed identity credential (system-assigned)".to_string()]
        );
        let d = DefaultCredential::from_sources(
            env(&[("AZURE_CLIENT_ID", "app"), ("AZURE_CLIENT_SECRET", "sek")]),
            None,
            &opts,
        );
        assert_eq!(d.links().len(), 2);
        assert!(d.links()[1].contains("client id app"));
    }
}
