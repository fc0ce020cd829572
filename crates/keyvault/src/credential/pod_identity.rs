//! AAD Pod Identity (retired): tokens from NMI's host token endpoint, as the Azure provider and
//! the Key Vault FlexVolume driver obtained them for `usePodIdentity` / `usepodidentity`.
//!
//! Wire contract (aad-pod-identity `pkg/nmi/server`, provider `pkg/auth`, flexvol `oauth.go`):
//! `GET {endpoint}?resource=<resource>[&client_id=<id>]` (default endpoint
//! `http://127.0.0.1:2579/host/token/`), headers `podns: <namespace>` and `podname: <pod>`, no
//! body and no `Metadata` header. NMI answers 200 with
//! `{"token": {"access_token", "refresh_token", "expires_in", "expires_on", "not_before",
//! "resource", "token_type"}, "clientid": "<client id of the identity used>"}` (numbers as
//! strings in current NMI, as JSON numbers in older ones), and errors as plain text: 400 (missing
//! headers or resource), 404 (no identity bound to the pod), 403 (token request failed),
//! 503 (IMDS health check failed), 500 (not called from the host).

use std::fmt;
use std::sync::Once;

use serde_json::Value;
use url::Url;

use super::response::token_from_json;
use super::{target_for, AccessToken, BoxFuture, TokenCredential};
use crate::error::{sanitize, Error, Target};
use crate::transport::{Request, Response, Transport, MAX_TOKEN_BODY};

/// NMI's host token endpoint on every node running AAD Pod Identity.
pub const NMI_ENDPOINT: &str = "http://127.0.0.1:2579/host/token/";

/// The one-line warning logged when this credential is first used in a process.
pub const POD_IDENTITY_RETIRED: &str = "AAD Pod Identity is retired and no longer maintained; \
move to Microsoft Entra Workload ID: federate the identity with the cluster's OIDC issuer \
(az identity federated-credential create --issuer <oidc issuer> --subject \
system:serviceaccount:<namespace>:<service account>), set clientID to its client id in the \
SecretProviderClass instead of usePodIdentity, and let the driver pass service account tokens \
(tokenRequests audience api://AzureADTokenExchange)";

/// A token for the pod `namespace/pod_name`, issued by AAD Pod Identity's NMI on its behalf.
pub struct PodIdentityCredential {
    endpoint: Url,
    namespace: String,
    pod_name: String,
    client_id: Option<String>,
    transport: Transport,
}

impl fmt::Debug for PodIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodIdentityCredential")
            .field("endpoint", &self.endpoint.as_str())
            .field("namespace", &self.namespace)
            .field("pod_name", &self.pod_name)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// Kubernetes object names: at most 253 characters of `a-z 0-9 - .` (no control characters or
/// anything else that could not be sent as a header value).
fn valid_k8s_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

impl PodIdentityCredential {
    /// `endpoint`: NMI's host token URL (`None` = [`NMI_ENDPOINT`]); `namespace` and `pod_name`
    /// name the pod whose identity binding NMI looks up (the driver's
    /// `csi.storage.k8s.io/pod.namespace` and `pod.name`).
    pub fn new(endpoint: Option<&str>, namespace: &str, pod_name: &str) -> Result<Self, Error> {
        let raw = endpoint
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .unwrap_or(NMI_ENDPOINT);
        let mut url = Url::parse(raw).map_err(|e| {
            Error::invalid_config("NMI endpoint", format!("'{}': {e}", sanitize(raw, &[])))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::invalid_config(
                "NMI endpoint",
                format!("'{}' is not an http(s) URL", sanitize(raw, &[])),
            ));
        }
        if url.path() == "/" || url.path().is_empty() {
            url.set_path("/host/token/");
        }
        url.set_query(None);
        url.set_fragment(None);
        for (what, v) in [("pod namespace", namespace), ("pod name", pod_name)] {
            if !valid_k8s_name(v) {
                return Err(Error::invalid_config(
                    what,
                    format!(
                        "'{}' is not a Kubernetes object name (AAD Pod Identity needs the pod's namespace and name: deploy the CSIDriver with podInfoOnMount: true)",
                        sanitize(v, &[])
                    ),
                ));
            }
        }
        Ok(Self {
            endpoint: url,
            namespace: namespace.to_string(),
            pod_name: pod_name.to_string(),
            client_id: None,
            transport: Transport::shared_default(),
        })
    }

    /// Asks NMI for the identity with this client id among those bound to the pod (NMI's
    /// `client_id` query parameter); `None` or "" = the first identity bound.
    pub fn with_client_id(mut self, client_id: Option<&str>) -> Self {
        self.client_id = client_id
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string);
        self
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    fn warn_retired() {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| tracing::warn!("{POD_IDENTITY_RETIRED}"));
    }
}

/// NMI errors are plain text (Go's `http.Error`): keep the first line, bounded.
fn nmi_error(credential: &str, status: u16, body: &[u8]) -> Error {
    let text = String::from_utf8_lossy(body);
    let mut message = sanitize(&text, &[]);
    if message.is_empty() {
        message = "empty body".into();
    }
    let code = match status {
        400 => "bad_request",
        403 => "token_request_failed",
        404 => "no_identity_bound",
        503 => "identity_endpoint_unavailable",
        _ => "nmi_error",
    };
    Error::Auth {
        credential: credential.to_string(),
        status,
        code: code.into(),
        message,
    }
}

/// Parses NMI's answer: 200 with `{"token": {...}, "clientid"}`, or a plain-text error.
/// `wanted`: the client id that was asked for, if any (NMI must have honoured it).
pub(crate) fn parse_nmi_response(
    credential: &str,
    target: &Target,
    resp: &Response,
    wanted: Option<&str>,
) -> Result<AccessToken, Error> {
    if resp.status != 200 {
        return Err(nmi_error(credential, resp.status, &resp.body));
    }
    let bad = |detail: &str| Error::BadResponse {
        target: Box::new(target.clone()),
        detail: detail.to_string(),
    };
    let v: Value = serde_json::from_slice(&resp.body)
        .map_err(|_| bad("NMI answered 200 with a body that is not JSON"))?;
    let token = v
        .get("token")
        .filter(|t| t.is_object())
        .ok_or_else(|| bad("NMI response without a 'token' object"))?;
    let access = token
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("NMI response without token.access_token"))?;
    let client_id = v
        .get("clientid")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("NMI response without clientid"))?;
    if let Some(wanted) = wanted {
        if !wanted.eq_ignore_ascii_case(client_id) {
            return Err(bad(&format!(
                "NMI issued a token for client id {} instead of the requested {}",
                sanitize(client_id, &[]),
                sanitize(wanted, &[])
            )));
        }
    }
    token_from_json(credential, token, access)
}

impl TokenCredential for PodIdentityCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        _tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            Self::warn_retired();
            let d = self.describe();
            let resource = scope.strip_suffix("/.default").unwrap_or(scope);
            let mut url = self.endpoint.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("resource", resource);
                if let Some(id) = &self.client_id {
                    q.append_pair("client_id", id);
                }
            }
            let mut req = Request::get(url.clone());
            req.max_body = MAX_TOKEN_BODY;
            req.headers.push(("podns", self.namespace.clone()));
            req.headers.push(("podname", self.pod_name.clone()));
            let target = target_for(&d, &url);
            tracing::debug!(credential = %d, "requesting an AAD Pod Identity token from NMI");
            let resp = self.transport.execute(&req, &target, None).await?;
            let token = parse_nmi_response(&d, &target, &resp, self.client_id.as_deref())?;
            tracing::debug!(credential = %d, "got an AAD Pod Identity token");
            Ok(token)
        })
    }

    fn describe(&self) -> String {
        let who = match &self.client_id {
            Some(c) => format!(", client id {c}"),
            None => String::new(),
        };
        format!(
            "AAD Pod Identity credential (pod {}/{}{who})",
            self.namespace, self.pod_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn construction_checks_inputs() {
        let c = PodIdentityCredential::new(None, "default", "app-0").unwrap();
        assert_eq!(c.endpoint.as_str(), NMI_ENDPOINT);
        let c = PodIdentityCredential::new(Some("http://127.0.0.1:9999"), "ns", "p").unwrap();
        assert_eq!(c.endpoint.as_str(), "http://127.0.0.1:9999/host/token/");
        assert!(PodIdentityCredential::new(Some("ftp://x/"), "ns", "p").is_err());
        assert!(PodIdentityCredential::new(None, "", "p").is_err());
        assert!(PodIdentityCredential::new(None, "ns", "p\r\nx: y").is_err());
        assert!(PodIdentityCredential::new(None, "NS", "p").is_err());
        let c = c.with_client_id(Some(" "));
        assert!(c.client_id.is_none());
        assert!(c.describe().contains("ns/p"));
    }

    #[test]
    fn nmi_errors_are_bounded_first_lines() {
        let e = nmi_error(
            "c",
            404,
            b"no AzureAssignedIdentity found for pod:ns/p\nmore",
        );
        assert_eq!(e.code(), Some("no_identity_bound"));
        assert!(e
            .to_string()
            .ends_with("no AzureAssignedIdentity found for pod:ns/p"));
        let e = nmi_error("c", 500, &vec![b'x'; 100_000]);
        assert!(e.to_string().len() < 600);
        assert_eq!(e.kind(), crate::ErrorKind::Unavailable);
    }
}
