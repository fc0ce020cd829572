//! Which value a placeholder's query selects (akv2k8s's env-injector semantics, through the
//! controller's mapping so that an `AzureKeyVaultSecret` gives the same bytes as a synced
//! Secret):
//!
//! | object type | query | value |
//! |---|---|---|
//! | `secret` | none | the value, after `transform`s |
//! | `secret` | `username`, `password` | the parts of `username:password` (split at the first `:`) |
//! | `secret` | `tls.crt`, `tls.key`, `ca.crt` | *kvbridge*: from a PEM or base64 PKCS#12 value, as a `kubernetes.io/tls` Secret |
//! | `secret` | `raw` | *kvbridge*: the value as stored, without transforms |
//! | `certificate` | none, `tls.crt` | the certificate chain, PEM (`chainOrder: ensureserverfirst` honoured) |
//! | `certificate` | `tls.key` | the private key, PKCS#8 PEM (akv2k8s wrote PKCS#1 `RSA PRIVATE KEY`) |
//! | `certificate` | `ca.crt` | *kvbridge*: the issuers of the server certificate, PEM |
//! | `certificate` | `raw` | the certificate's secret as Key Vault stores it: base64 PKCS#12 or PEM text |
//! | `key` | none | the public key, PKIX `PUBLIC KEY` PEM |
//! | `multi-key-value-secret` | `<entry>` | that entry of the JSON/YAML map |
//!
//! Anything else is an error naming the valid queries. Environment values cannot hold NUL
//! bytes: a value with one is an error (use `transform: [base64encode]`).

use controller::crd::{
    AzureKeyVaultSecretSpec, ObjectType, Output, OutputSecret, Vault, VaultObject,
};
use controller::mapping::{self, MapOptions, TYPE_BASIC_AUTH, TYPE_OPAQUE, TYPE_TLS};
use model::ObjectKind;
use render::render::{FetchKey, Fetched};
use zeroize::Zeroizing;

use crate::spec::Reference;

/// How the value is taken from the fetched object.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// Through the controller's mapping of a synthetic Secret output: the data key `key`.
    Mapped {
        spec: Box<AzureKeyVaultSecretSpec>,
        key: String,
    },
    /// The fetched secret's value, verbatim.
    StoredValue,
}

/// Why a query gives no value. Never quotes the value.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("query {query:?} is not valid for a {object_type} (valid: {valid})")]
    Invalid {
        query: String,
        object_type: &'static str,
        valid: &'static str,
    },
    #[error(
        "a multi-key-value-secret needs a query naming the entry (<name>@azurekeyvault?<entry>)"
    )]
    NoEntry,
    #[error("multi-key-value-secret {object:?} has no entry {entry:?} (it has {count})")]
    MissingEntry {
        object: String,
        entry: String,
        count: usize,
    },
    #[error("the value of {object:?} holds a NUL byte, which an environment variable cannot (add transform base64encode)")]
    Nul { object: String },
    #[error("{object:?}: the fetched object is not the kind this query needs")]
    Mismatch { object: String },
    #[error(transparent)]
    Map(#[from] mapping::MapError),
}

const SECRET_QUERIES: &str = "none, raw, username, password, tls.crt, tls.key, ca.crt";
const CERT_QUERIES: &str = "none, tls.crt, tls.key, ca.crt, raw";
const KEY_QUERIES: &str = "none";

fn synthetic(
    r: &Reference,
    secret_type: &str,
    data_key: Option<&str>,
    transforms: bool,
) -> Box<AzureKeyVaultSecretSpec> {
    Box::new(AzureKeyVaultSecretSpec {
        vault: Vault {
            name: String::new(),
            object: r.object.clone(),
            azure_identity: None,
            identity: None,
        },
        output: Some(Output {
            secret: Some(OutputSecret {
                name: "env".into(),
                secret_type: Some(secret_type.into()),
                data_key: data_key.map(str::to_string),
                chain_order: r.chain_order,
                labels: None,
                annotations: None,
            }),
            config_map: None,
            transform: transforms.then(|| r.transforms.clone()),
            transforms: None,
        }),
        refresh_interval: None,
    })
}

fn mapped(spec: Box<AzureKeyVaultSecretSpec>, key: &str) -> (FetchKey, Selection) {
    (
        mapping::fetch_key(&spec),
        Selection::Mapped {
            spec,
            key: key.to_string(),
        },
    )
}

fn invalid(query: &str, object_type: ObjectType, valid: &'static str) -> QueryError {
    QueryError::Invalid {
        query: query.to_string(),
        object_type: object_type.as_str(),
        valid,
    }
}

/// What to fetch for `query` on `r`, and how to select the value from it.
pub fn plan(r: &Reference, query: &str) -> Result<(FetchKey, Selection), QueryError> {
    const VALUE: &str = "value";
    let o: &VaultObject = &r.object;
    let t = o.object_type;
    Ok(match (t, query) {
        (ObjectType::Secret, "") => mapped(synthetic(r, TYPE_OPAQUE, Some(VALUE), true), VALUE),
        (ObjectType::Secret, "raw") => mapped(synthetic(r, TYPE_OPAQUE, Some(VALUE), false), VALUE),
        (ObjectType::Secret, "username" | "password") => {
            mapped(synthetic(r, TYPE_BASIC_AUTH, None, true), query)
        }
        (ObjectType::Secret | ObjectType::Certificate, "tls.crt" | "tls.key" | "ca.crt") => {
            mapped(synthetic(r, TYPE_TLS, None, true), query)
        }
        (ObjectType::Secret, _) => return Err(invalid(query, t, SECRET_QUERIES)),
        (ObjectType::Certificate, "") => mapped(synthetic(r, TYPE_TLS, None, false), "tls.crt"),
        (ObjectType::Certificate, "raw") => (
            FetchKey {
                object_type: ObjectKind::Secret,
                name: o.name.clone(),
                version: o.version.clone().filter(|v| !v.is_empty() && v != "latest"),
            },
            Selection::StoredValue,
        ),
        (ObjectType::Certificate, _) => return Err(invalid(query, t, CERT_QUERIES)),
        (ObjectType::Key, "") => mapped(synthetic(r, TYPE_OPAQUE, Some(VALUE), false), VALUE),
        (ObjectType::Key, _) => return Err(invalid(query, t, KEY_QUERIES)),
        (ObjectType::MultiKeyValueSecret, "") => return Err(QueryError::NoEntry),
        (ObjectType::MultiKeyValueSecret, entry) => {
            mapped(synthetic(r, TYPE_OPAQUE, None, false), entry)
        }
    })
}

/// The value `selection` picks from `fetched`. Pure (PKCS#12 decoding included: call it off
/// the async workers).
pub fn select(
    r: &Reference,
    selection: &Selection,
    fetched: &Fetched,
) -> Result<Zeroizing<Vec<u8>>, QueryError> {
    let object = &r.object.name;
    let value = match selection {
        Selection::StoredValue => match fetched {
            Fetched::Secret(s) => Zeroizing::new(s.value.as_bytes().to_vec()),
            _ => {
                return Err(QueryError::Mismatch {
                    object: object.clone(),
                })
            }
        },
        Selection::Mapped { spec, key } => {
            let mut desired = mapping::desired(spec, fetched, &MapOptions::default())?;
            let mut data = desired.secret.take().map(|s| s.data).unwrap_or_default();
            match data.remove(key.as_str()) {
                Some(v) => v,
                None if r.object.object_type == ObjectType::MultiKeyValueSecret => {
                    return Err(QueryError::MissingEntry {
                        object: object.clone(),
                        entry: key.clone(),
                        count: data.len(),
                    })
                }
                // `ca.crt` of a certificate that is neither self-signed nor issued by one in
                // its chain: nothing to give.
                None => {
                    return Err(QueryError::Invalid {
                        query: key.clone(),
                        object_type: r.object.object_type.as_str(),
                        valid: "a value the object has (this one has no issuer certificates)",
                    })
                }
            }
        }
    };
    if value.contains(&0) {
        return Err(QueryError::Nul {
            object: object.clone(),
        });
    }
    Ok(value)
}
