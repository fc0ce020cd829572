//! Service principal with a client certificate (PEM/PFX): signs a JWT client assertion.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::{
    normalize_authority, now_secs, pick_tenant, request_token_with_assertion, token_endpoint,
    AccessToken, BoxFuture, TokenCredential,
};
use crate::error::Error;
use crate::transport::{random_hex, Transport};

/// How client assertions are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAlgorithm {
    /// RS256 with `x5t` (SHA-1 thumbprint): accepted by Entra ID, ADFS and older stacks.
    #[default]
    Rs256,
    /// PS256 with `x5t#S256` (what current MSAL sends).
    Ps256,
}

/// Service principal with a certificate: signs a JWT client assertion.
pub struct ClientCertificateCredential {
    authority_host: String,
    tenant: String,
    client_id: String,
    key: pki::PrivateKey,
    leaf: Vec<u8>,
    chain: Vec<Vec<u8>>,
    algorithm: AssertionAlgorithm,
    send_x5c: bool,
    source: String,
    transport: Transport,
}

impl fmt::Debug for ClientCertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificateCredential")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field("source", &self.source)
            .field("algorithm", &self.algorithm)
            .field("key", &"<redacted>")
            .finish()
    }
}

fn pki_err(what: String, e: pki::PkiError) -> Error {
    Error::Pki {
        what,
        source: std::sync::Arc::new(e),
    }
}

impl ClientCertificateCredential {
    /// PEM file with the private key (PKCS#8/PKCS#1/SEC1) and the certificate (leaf first or any order).
    pub fn from_pem(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        path: &Path,
    ) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::read_file("client certificate", path, e))?;
        let text = Zeroizing::new(text);
        let bundle = pki::parse_pem_bundle(&text)
            .map_err(|e| pki_err(format!("client certificate {}", path.display()), e))?;
        Self::from_bundle(
            authority_host,
            tenant,
            client_id,
            bundle,
            &path.display().to_string(),
        )
    }

    /// PKCS#12 file (`password` may be empty).
    pub fn from_pfx(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        path: &Path,
        password: &str,
    ) -> Result<Self, Error> {
        let der = Zeroizing::new(
            std::fs::read(path).map_err(|e| Error::read_file("client certificate", path, e))?,
        );
        let bundle = pki::parse_pfx(&der, password)
            .map_err(|e| pki_err(format!("client certificate {}", path.display()), e))?;
        Self::from_bundle(
            authority_host,
            tenant,
            client_id,
            bundle,
            &path.display().to_string(),
        )
    }

    /// PEM or PFX, decided by content (PEM when it contains `-----BEGIN`).
    pub fn from_file(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        path: &Path,
        password: Option<&str>,
    ) -> Result<Self, Error> {
        let head =
            std::fs::read(path).map_err(|e| Error::read_file("client certificate", path, e))?;
        let head = Zeroizing::new(head);
        if head.windows(10).any(|w| w == b"-----BEGIN") {
            Self::from_pem(authority_host, tenant, client_id, path)
        } else {
            Self::from_pfx(
                authority_host,
                tenant,
                client_id,
                path,
                password.unwrap_or(""),
            )
        }
    }

    pub fn from_bundle(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        bundle: pki::CertBundle,
        source: &str,
    ) -> Result<Self, Error> {
        let key = bundle.key.ok_or_else(|| {
            Error::invalid_config("client certificate", format!("{source}: no private key"))
        })?;
        let spki =
            pki::spki_der(&key).map_err(|e| pki_err(format!("client certificate {source}"), e))?;
        let leaf_idx = bundle
            .certs
            .iter()
            .position(|c| {
                pki::cert_info(c)
                    .map(|i| i.spki_der == spki)
                    .unwrap_or(false)
            })
            .ok_or_else(|| {
                Error::invalid_config(
                    "client certificate",
                    format!("{source}: no certificate matches the private key"),
                )
            })?;
        let leaf = bundle.certs[leaf_idx].clone();
        let chain = bundle.certs;
        Ok(Self {
            authority_host: normalize_authority(authority_host),
            tenant: tenant.to_string(),
            client_id: client_id.to_string(),
            key,
            leaf,
            chain,
            algorithm: AssertionAlgorithm::default(),
            send_x5c: false,
            source: source.to_string(),
            transport: Transport::shared_default(),
        })
    }

    pub fn with_algorithm(mut self, algorithm: AssertionAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Send the certificate chain in `x5c` (subject name + issuer authentication).
    pub fn with_x5c(mut self, send: bool) -> Self {
        self.send_x5c = send;
        self
    }

    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The signed client assertion for `audience` (the token endpoint).
    pub fn assertion(&self, audience: &str) -> Result<Zeroizing<String>, Error> {
        let info = pki::cert_info(&self.leaf)
            .map_err(|e| pki_err(format!("client certificate {}", self.source), e))?;
        let (alg, mut header) = match (self.key.kind(), self.algorithm) {
            (pki::KeyKind::Rsa { .. }, AssertionAlgorithm::Rs256) => (
                "RS256",
                json!({"alg": "RS256", "typ": "JWT", "x5t": B64URL.encode(info.sha1_thumbprint)}),
            ),
            (pki::KeyKind::Rsa { .. }, AssertionAlgorithm::Ps256) => (
                "PS256",
                json!({"alg": "PS256", "typ": "JWT", "x5t#S256": B64URL.encode(info.sha256_thumbprint)}),
            ),
            (pki::KeyKind::Ec(pki::Curve::P256), _) => (
                "ES256",
                json!({"alg": "ES256", "typ": "JWT", "x5t#S256": B64URL.encode(info.sha256_thumbprint)}),
            ),
            (pki::KeyKind::Ec(pki::Curve::P384), _) => (
                "ES384",
                json!({"alg": "ES384", "typ": "JWT", "x5t#S256": B64URL.encode(info.sha256_thumbprint)}),
            ),
            (kind, _) => {
                return Err(Error::invalid_config(
                    "client certificate",
                    format!("{}: unsupported key type {kind:?}", self.source),
                ))
            }
        };
        if self.send_x5c {
            header["x5c"] = Value::Array(
                self.chain
                    .iter()
                    .map(|c| Value::String(B64.encode(c)))
                    .collect(),
            );
        }
        let now = now_secs();
        let claims = json!({
            "aud": audience,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": random_hex(16),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let sig = pki::jws_sign(alg, &self.key, input.as_bytes()).map_err(|e| {
            pki_err(
                format!(
                    "client certificate {}: cannot sign the assertion",
                    self.source
                ),
                e,
            )
        })?;
        Ok(Zeroizing::new(format!("{input}.{}", B64URL.encode(sig))))
    }
}

impl TokenCredential for ClientCertificateCredential {
    fn get_token<'a>(
        &'a self,
        scope: &'a str,
        tenant: Option<&'a str>,
    ) -> BoxFuture<'a, Result<AccessToken, Error>> {
        Box::pin(async move {
            let d = self.describe();
            let tenant = pick_tenant(&d, &self.tenant, tenant)?;
            let url = token_endpoint(&self.authority_host, &tenant)?;
            let assertion = self.assertion(url.as_str())?;
            request_token_with_assertion(
                &self.transport,
                &d,
                url,
                &self.client_id,
                &assertion,
                scope,
            )
            .await
        })
    }

    fn describe(&self) -> String {
        format!(
            "client certificate credential for app {} (certificate {})",
            self.client_id, self.source
        )
    }
}
