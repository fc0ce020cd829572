//! Seed files: demo and test content (vaults, secrets, certificates, keys, identities, access
//! policies). Objects are created when missing; identities and policies are replaced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::Deserialize;

use crate::api::certificates::{
    add_version, decode_content, leaf_first, NewCertificate, PEM, PKCS12,
};
use crate::api::keys::key_version;
use crate::state::{
    AccessPolicy, Attributes, FederatedCredential, Identity, PodIdentity, SecretVersion, State,
    Tags,
};

pub const DEFAULT_TENANT: &str = "6d2b6f1e-0e4c-4a8e-9a57-6b7662726467";
pub const DEFAULT_CLIENT_ID: &str = "kvbridge-dev";
pub const DEFAULT_CLIENT_SECRET: &str = "kvbridge-dev-secret";
pub const DEFAULT_MSI: &str = "kvbridge-dev-msi";
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";

#[derive(Debug, thiserror::Error)]
#[error("seed file {file}: {what}: {detail}")]
pub struct SeedError {
    pub file: PathBuf,
    pub what: String,
    pub detail: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub vaults: Vec<SeedVault>,
    #[serde(default)]
    pub identities: Vec<SeedIdentity>,
    /// AAD Pod Identity bindings for the NMI stand-in: `{namespace, podName, clientId}`.
    #[serde(default)]
    pub pod_identities: Vec<PodIdentity>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedVault {
    pub name: String,
    #[serde(default)]
    pub secrets: Vec<SeedSecret>,
    #[serde(default)]
    pub certificates: Vec<SeedCertificate>,
    #[serde(default)]
    pub keys: Vec<SeedKey>,
    #[serde(default)]
    pub access_policies: Option<Vec<AccessPolicy>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedSecretVersion {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub tags: Option<Tags>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub exp: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedSecret {
    pub name: String,
    #[serde(flatten)]
    pub current: SeedSecretVersion,
    #[serde(default)]
    pub versions: Option<Vec<SeedSecretVersion>>,
    #[serde(default)]
    pub value_from_certificate: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Generate {
    pub subject: String,
    #[serde(default)]
    pub sans: Vec<String>,
    #[serde(default)]
    pub ca: bool,
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub key_type: Option<String>,
    #[serde(default)]
    pub key_size: Option<u64>,
    #[serde(default)]
    pub curve: Option<String>,
    #[serde(default)]
    pub validity_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedCertificate {
    pub name: String,
    #[serde(default)]
    pub generate: Option<Generate>,
    #[serde(default)]
    pub pfx: Option<PathBuf>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub pem: Option<PathBuf>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub tags: Option<Tags>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedKey {
    pub name: String,
    pub kty: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub crv: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub tags: Option<Tags>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedIdentity {
    pub client_id: String,
    #[serde(default)]
    pub object_id: Option<String>,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub certificates: Vec<PathBuf>,
    #[serde(default)]
    pub federated_credentials: Vec<SeedFederated>,
    #[serde(default)]
    pub managed_identity: bool,
    #[serde(default)]
    pub system_assigned: bool,
    #[serde(default)]
    pub resource_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SeedFederated {
    pub issuer: String,
    pub subject: String,
    #[serde(default)]
    pub audience: Option<String>,
    pub issuer_key: PathBuf,
}

/// Reads and parses a seed file.
pub fn load(path: &Path) -> Result<Seed, SeedError> {
    let text = std::fs::read_to_string(path).map_err(|e| SeedError {
        file: path.to_path_buf(),
        what: "read".into(),
        detail: e.to_string(),
    })?;
    serde_yaml_ng::from_str(&text).map_err(|e| SeedError {
        file: path.to_path_buf(),
        what: "YAML".into(),
        detail: e.to_string(),
    })
}

/// A stable GUID-shaped object id derived from a client id.
pub fn object_id_for(client_id: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, client_id.as_bytes());
    let h = hex::encode(&d.as_ref()[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The built-in identities used when a seed declares none.
pub fn default_identities() -> Vec<Identity> {
    vec![
        Identity {
            client_id: DEFAULT_CLIENT_ID.into(),
            object_id: object_id_for(DEFAULT_CLIENT_ID),
            secret: Some(DEFAULT_CLIENT_SECRET.into()),
            certificates: Vec::new(),
            federated: Vec::new(),
            managed_identity: false,
            system_assigned: false,
            resource_id: None,
        },
        Identity {
            client_id: DEFAULT_MSI.into(),
            object_id: object_id_for(DEFAULT_MSI),
            secret: None,
            certificates: Vec::new(),
            federated: Vec::new(),
            managed_identity: true,
            system_assigned: true,
            resource_id: None,
        },
    ]
}

struct Applier<'a> {
    file: &'a Path,
    dir: PathBuf,
}

impl Applier<'_> {
    fn err(&self, what: impl Into<String>, detail: impl std::fmt::Display) -> SeedError {
        SeedError {
            file: self.file.to_path_buf(),
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    fn read(&self, what: &str, p: &Path) -> Result<Vec<u8>, SeedError> {
        let full = self.dir.join(p);
        std::fs::read(&full)
            .map_err(|e| self.err(what, format!("cannot read {}: {e}", full.display())))
    }

    fn identity(&self, i: &SeedIdentity) -> Result<Identity, SeedError> {
        let what = format!("identities[{}]", i.client_id);
        let mut certificates = Vec::new();
        for p in &i.certificates {
            let text = String::from_utf8(self.read(&format!("{what}.certificates"), p)?).map_err(
                |_| {
                    self.err(
                        format!("{what}.certificates"),
                        format!("{} is not PEM text", p.display()),
                    )
                },
            )?;
            let bundle = pki::parse_pem_bundle(&text).map_err(|e| {
                self.err(
                    format!("{what}.certificates"),
                    format!("{}: {e}", p.display()),
                )
            })?;
            if bundle.certs.is_empty() {
                return Err(self.err(
                    format!("{what}.certificates"),
                    format!("{} holds no CERTIFICATE block", p.display()),
                ));
            }
            certificates.extend(bundle.certs.iter().map(|c| B64.encode(c)));
        }
        let mut federated = Vec::new();
        for f in &i.federated_credentials {
            let text = String::from_utf8(self.read(
                &format!("{what}.federatedCredentials.issuerKey"),
                &f.issuer_key,
            )?)
            .map_err(|_| {
                self.err(
                    format!("{what}.federatedCredentials.issuerKey"),
                    "not PEM text",
                )
            })?;
            let spki = pki::spki_from_pem(&text)
                .map_err(|e| self.err(format!("{what}.federatedCredentials.issuerKey"), e))?;
            federated.push(FederatedCredential {
                issuer: f.issuer.clone(),
                subject: f.subject.clone(),
                audience: f
                    .audience
                    .clone()
                    .unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
                issuer_spki: B64.encode(spki),
            });
        }
        Ok(Identity {
            client_id: i.client_id.clone(),
            object_id: i
                .object_id
                .clone()
                .unwrap_or_else(|| object_id_for(&i.client_id)),
            secret: i.secret.clone(),
            certificates,
            federated,
            managed_identity: i.managed_identity,
            system_assigned: i.system_assigned,
            resource_id: i.resource_id.clone(),
        })
    }

    /// The key and chain (leaf first) of a certificate already in the vault.
    fn existing_material(
        state: &State,
        vault: &str,
        name: &str,
    ) -> Option<(pki::PrivateKey, Vec<Vec<u8>>)> {
        let sv = state.vaults.get(vault)?.secrets.get(name)?.latest()?;
        let bundle = decode_content(&sv.value, "").ok()?;
        let key = bundle.key?;
        let certs = leaf_first(&key, bundle.certs).ok()?;
        Some((key, certs))
    }

    fn certificate(
        &self,
        state: &mut State,
        vault: &str,
        c: &SeedCertificate,
    ) -> Result<(), SeedError> {
        let what = format!("vaults[{vault}].certificates[{}]", c.name);
        let sources = [c.generate.is_some(), c.pfx.is_some(), c.pem.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if sources != 1 {
            return Err(self.err(&what, "give exactly one of generate, pfx, pem"));
        }
        let content_type = match c.content_type.as_deref() {
            None => PKCS12.to_string(),
            Some(ct) if ct == PKCS12 || ct == PEM => ct.to_string(),
            Some(other) => {
                return Err(self.err(
                    format!("{what}.contentType"),
                    format!("'{other}': use {PKCS12} or {PEM}"),
                ))
            }
        };
        let (key, certs, issuer) = if let Some(g) = &c.generate {
            let kty = g.key_type.as_deref().unwrap_or("RSA").to_ascii_uppercase();
            let (kind, _) = crate::api::keys::key_kind(&kty, g.key_size, g.curve.as_deref())
                .map_err(|e| self.err(format!("{what}.generate"), e.message))?;
            let key =
                pki::generate_key(kind).map_err(|e| self.err(format!("{what}.generate"), e))?;
            let req = pki::CertRequest {
                subject: g.subject.clone(),
                // An entry that parses as an IP address is an IP SAN (tests serve on 127.0.0.1).
                dns_names: g
                    .sans
                    .iter()
                    .filter(|s| s.parse::<std::net::IpAddr>().is_err())
                    .cloned()
                    .collect(),
                ip_addresses: g.sans.iter().filter_map(|s| s.parse().ok()).collect(),
                is_ca: g.ca,
                validity_days: match g.validity_days {
                    None => {
                        if g.ca {
                            3650
                        } else {
                            365
                        }
                    }
                    Some(d) if (1..=crate::api::certificates::MAX_VALIDITY_DAYS).contains(&d) => d,
                    Some(d) => {
                        return Err(self.err(
                            format!("{what}.generate.validityDays"),
                            format!(
                                "{d}: must be from 1 to {} days",
                                crate::api::certificates::MAX_VALIDITY_DAYS
                            ),
                        ))
                    }
                },
            };
            match &g.issuer {
                None => {
                    let der = pki::self_signed(&req, &key)
                        .map_err(|e| self.err(format!("{what}.generate"), e))?;
                    (key, vec![der], "Self")
                }
                Some(issuer) => {
                    let (ikey, ichain) = Self::existing_material(state, vault, issuer).ok_or_else(|| {
                        self.err(format!("{what}.generate.issuer"), format!("certificate '{issuer}' must be declared earlier in vault '{vault}'"))
                    })?;
                    let der = pki::issue(&req, &key, &ichain[0], &ikey)
                        .map_err(|e| self.err(format!("{what}.generate"), e))?;
                    let mut chain = vec![der];
                    chain.extend(ichain);
                    (key, chain, "Unknown")
                }
            }
        } else {
            let (bytes, password) = match (&c.pfx, &c.pem) {
                (Some(p), _) => (
                    self.read(&format!("{what}.pfx"), p)?,
                    c.password.clone().unwrap_or_default(),
                ),
                (_, Some(p)) => (self.read(&format!("{what}.pem"), p)?, String::new()),
                _ => return Err(self.err(&what, "no content")),
            };
            let bundle = match std::str::from_utf8(&bytes) {
                Ok(text) if text.contains("-----BEGIN") => {
                    pki::parse_pem_bundle(text).map_err(|e| self.err(&what, e))?
                }
                _ => pki::parse_pfx(&bytes, &password).map_err(|e| self.err(&what, e))?,
            };
            let key = bundle
                .key
                .ok_or_else(|| self.err(&what, "the file has no private key"))?;
            let certs = leaf_first(&key, bundle.certs).map_err(|e| self.err(&what, e.message))?;
            (key, certs, "Unknown")
        };
        add_version(
            state,
            vault,
            &c.name,
            NewCertificate {
                key,
                certs,
                content_type,
                enabled: c.enabled.unwrap_or(true),
                tags: c.tags.clone(),
                issuer: issuer.into(),
                policy_in: serde_json::Value::Null,
            },
        )
        .map_err(|e| self.err(&what, e.message))?;
        Ok(())
    }

    fn secret(&self, state: &mut State, vault: &str, s: &SeedSecret) -> Result<(), SeedError> {
        let what = format!("vaults[{vault}].secrets[{}]", s.name);
        let mut versions: Vec<&SeedSecretVersion> = match &s.versions {
            Some(v) => v.iter().collect(),
            None => Vec::new(),
        };
        let from_cert;
        if let Some(cert) = &s.value_from_certificate {
            let cv = state
                .vaults
                .get(vault)
                .and_then(|v| v.certificates.get(cert))
                .and_then(|c| c.latest())
                .ok_or_else(|| {
                    self.err(
                        format!("{what}.valueFromCertificate"),
                        format!("certificate '{cert}' must be declared in vault '{vault}'"),
                    )
                })?;
            let der = B64.decode(&cv.cer).map_err(|e| self.err(&what, e))?;
            from_cert = SeedSecretVersion {
                value: Some(pki::pem_encode("CERTIFICATE", &der)),
                content_type: s.current.content_type.clone().or_else(|| Some(PEM.into())),
                tags: s.current.tags.clone(),
                enabled: s.current.enabled,
                nbf: s.current.nbf,
                exp: s.current.exp,
            };
            versions.push(&from_cert);
        } else if s.current.value.is_some() {
            versions.push(&s.current);
        }
        if versions.is_empty() {
            return Err(self.err(&what, "give value, versions or valueFromCertificate"));
        }
        let now = crate::clock::now();
        let mut list = Vec::new();
        for (i, v) in versions.iter().enumerate() {
            let value = v
                .value
                .clone()
                .ok_or_else(|| self.err(format!("{what}.versions[{i}].value"), "missing"))?;
            list.push(SecretVersion {
                version: crate::ids::new_version(),
                value,
                content_type: v.content_type.clone(),
                tags: v.tags.clone(),
                attributes: Attributes {
                    enabled: v.enabled.unwrap_or(true),
                    nbf: v.nbf,
                    exp: v.exp,
                    // Older versions get older timestamps so "newest first" orders are stable.
                    created: now - (versions.len() - i) as i64,
                    updated: now - (versions.len() - i) as i64,
                },
                kid: None,
                managed: false,
            });
        }
        state
            .vault_mut(vault)
            .secrets
            .entry(s.name.clone())
            .or_default()
            .versions = list;
        Ok(())
    }

    fn key(&self, state: &mut State, vault: &str, k: &SeedKey) -> Result<(), SeedError> {
        let what = format!("vaults[{vault}].keys[{}]", k.name);
        let (kind, hsm) = crate::api::keys::key_kind(&k.kty, k.size, k.crv.as_deref())
            .map_err(|e| self.err(&what, e.message))?;
        let key = pki::generate_key(kind).map_err(|e| self.err(&what, e))?;
        let mut attributes = crate::api::secrets::new_attributes();
        attributes.enabled = k.enabled.unwrap_or(true);
        let kv = key_version(
            &key,
            hsm,
            crate::ids::new_version(),
            attributes,
            k.tags.clone(),
            None,
            false,
        )
        .map_err(|e| self.err(&what, e.message))?;
        state
            .vault_mut(vault)
            .keys
            .entry(k.name.clone())
            .or_default()
            .versions
            .push(kv);
        Ok(())
    }
}

/// Applies `seed` (read from `file`) to `state`.
pub fn apply(state: &mut State, seed: &Seed, file: &Path) -> Result<(), SeedError> {
    let a = Applier {
        file,
        dir: file.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    if let Some(t) = &seed.tenant {
        state.tenant = t.clone();
    }
    let mut seen = BTreeMap::new();
    for (i, v) in seed.vaults.iter().enumerate() {
        let name = v.name.to_ascii_lowercase();
        if !crate::api::valid_vault_name(&name) {
            return Err(a.err(
                format!("vaults[{i}].name"),
                format!(
                    "'{}' is not a Key Vault name (3-24 characters of letters, digits and '-', starting with a letter, ending with a letter or digit, no '--')",
                    v.name
                ),
            ));
        }
        if seen.insert(name.clone(), i).is_some() {
            return Err(a.err(
                format!("vaults[{i}].name"),
                format!("vault '{name}' is declared twice"),
            ));
        }
    }
    // Declared vaults come first, in seed order (the first is the default vault).
    let mut order: Vec<String> = seed
        .vaults
        .iter()
        .map(|v| v.name.to_ascii_lowercase())
        .collect();
    for existing in &state.vault_order {
        if !order.contains(existing) {
            order.push(existing.clone());
        }
    }
    state.vault_order = order;
    for v in &seed.vaults {
        let vault = v.name.to_ascii_lowercase();
        state.vault_mut(&vault).access_policies = v.access_policies.clone();
        for c in &v.certificates {
            let exists = state
                .vaults
                .get(&vault)
                .map(|x| {
                    x.certificates.contains_key(&c.name)
                        || x.deleted_certificates.contains_key(&c.name)
                })
                .unwrap_or(false);
            if !exists {
                a.certificate(state, &vault, c)?;
            }
        }
        for s in &v.secrets {
            let exists = state
                .vaults
                .get(&vault)
                .map(|x| x.secrets.contains_key(&s.name) || x.deleted_secrets.contains_key(&s.name))
                .unwrap_or(false);
            if !exists {
                a.secret(state, &vault, s)?;
            }
        }
        for k in &v.keys {
            let exists = state
                .vaults
                .get(&vault)
                .map(|x| x.keys.contains_key(&k.name))
                .unwrap_or(false);
            if !exists {
                a.key(state, &vault, k)?;
            }
        }
    }
    state.identities = if seed.identities.is_empty() {
        default_identities()
    } else {
        seed.identities
            .iter()
            .map(|i| a.identity(i))
            .collect::<Result<_, _>>()?
    };
    for (i, p) in seed.pod_identities.iter().enumerate() {
        if p.namespace.is_empty() || p.pod_name.is_empty() {
            return Err(a.err(
                format!("podIdentities[{i}]"),
                "namespace and podName are required",
            ));
        }
        if !state
            .identities
            .iter()
            .any(|id| id.client_id == p.client_id)
        {
            return Err(a.err(
                format!("podIdentities[{i}].clientId"),
                format!("'{}' is not declared in identities", p.client_id),
            ));
        }
    }
    state.pod_identities = seed.pod_identities.clone();
    Ok(())
}
