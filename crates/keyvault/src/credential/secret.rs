//! Service principal with a client secret.

use std::fmt;

use zeroize::Zeroizing;

use super::{
    normalize_authority, pick_tenant, request_token, token_endpoint, AccessToken, BoxFuture,
    TokenCredential,
};
use crate::error::Error;
use crate::transport::Transport;

/// Service principal with a client secret.
pub struct ClientSecretCredential {
    authority_host: String,
    tenant: String,
    client_id: String,
    secret: Zeroizing<String>,
    transport: Transport,
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("authority_host", &self.authority_host)
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl ClientSecretCredential {
    pub fn new(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        secret: impl Into<String>,
    ) -> Self {
        Self {
            authority_host: normalize_authority(authority_host),
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            secret: Zeroizing::new(secret.into()),
            transport: Transport::shared_default(),
        }
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }
}

impl TokenCredential for ClientSecretCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let d = self.describe();
            let tenant = pick_tenant(&d, &self.tenant, tenant)?;
            let url = token_endpoint(&self.authority_host, &tenant)?;
            request_token(
                &self.transport,
                &d,
                url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", &self.client_id),
                    ("client_secret", &self.secret),
                    ("scope", scope),
                ],
                &[&self.secret],
            )
            .await
        })
    }

    fn describe(&self) -> String {
        format!("client secret credential for app {}", self.client_id)
    }
}
