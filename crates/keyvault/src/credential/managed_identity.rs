//! Managed identity through IMDS.

use std::fmt;

use url::Url;

use super::{parse_token_response, target_for, AccessToken, BoxFuture, TokenCredential};
use crate::error::Error;
use crate::transport::{Request, Transport, MAX_TOKEN_BODY};

/// Which managed identity IMDS should issue a token for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagedIdentityId {
    System,
    ClientId(String),
    ObjectId(String),
    ResourceId(String),
}

/// Managed identity through IMDS (`/metadata/identity/oauth2/token`, `Metadata: true`).
pub struct ManagedIdentityCredential {
    endpoint: Url,
    id: ManagedIdentityId,
    metadata_header: bool,
    transport: Transport,
}

impl fmt::Debug for ManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagedIdentityCredential")
            .field("endpoint", &self.endpoint.as_str())
            .field("id", &self.id)
            .finish()
    }
}

pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";
const IMDS_PATH: &str = "/metadata/identity/oauth2/token";

impl ManagedIdentityCredential {
    /// `endpoint`: IMDS origin (or full token URL); `None` = `http://169.254.169.254`.
    pub fn new(endpoint: Option<&str>, id: ManagedIdentityId) -> Result<Self, Error> {
        let raw = endpoint
            .filter(|e| !e.trim().is_empty())
            .unwrap_or(IMDS_ENDPOINT)
            .trim();
        let mut url = Url::parse(raw).map_err(|e| {
            Error::invalid_config("managed identity endpoint", format!("'{raw}': {e}"))
        })?;
        if url.path() == "/" || url.path().is_empty() {
            url.set_path(IMDS_PATH);
        }
        url.set_query(None);
        Ok(Self {
            endpoint: url,
            id,
            metadata_header: true,
            transport: Transport::shared_default(),
        })
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// For tests of the refused-request path only: omit the `Metadata: true` header.
    #[doc(hidden)]
    pub fn without_metadata_header_for_tests(mut self) -> Self {
        self.metadata_header = false;
        self
    }
}

impl TokenCredential for ManagedIdentityCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        _tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let d = self.describe();
            let resource = scope.strip_suffix("/.default").unwrap_or(scope);
            let mut url = self.endpoint.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("api-version", "2018-02-01");
                q.append_pair("resource", resource);
                match &self.id {
                    ManagedIdentityId::System => {}
                    ManagedIdentityId::ClientId(v) => {
                        q.append_pair("client_id", v);
                    }
                    ManagedIdentityId::ObjectId(v) => {
                        q.append_pair("object_id", v);
                    }
                    ManagedIdentityId::ResourceId(v) => {
                        q.append_pair("msi_res_id", v);
                    }
                }
            }
            let mut req = Request::get(url.clone());
            req.max_body = MAX_TOKEN_BODY;
            if self.metadata_header {
                req.headers.push(("metadata", "true".into()));
            }
            let target = target_for(&d, &url);
            tracing::debug!(credential = %d, "requesting managed identity token");
            let resp = self.transport.execute(&req, &target, None).await?;
            parse_token_response(&d, &target, &resp, &[])
        })
    }

    fn describe(&self) -> String {
        let who = match &self.id {
            ManagedIdentityId::System => "system-assigned".to_string(),
            ManagedIdentityId::ClientId(v) => format!("client id {v}"),
            ManagedIdentityId::ObjectId(v) => format!("object id {v}"),
            ManagedIdentityId::ResourceId(v) => format!("resource id {v}"),
        };
        format!("managed identity credential ({who})")
    }
}
