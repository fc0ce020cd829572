//! `kvbridge trust`: the CA trust bundle of a pod, built by an init step running in the
//! application's image (so that the image's own system bundle is the base): the system bundle
//! plus the CA certificates of the Key Vault objects the spec names, written as
//! [`render::trust::PEM_FILE`] and [`render::trust::P12_FILE`] into a directory (the webhook's
//! memory volume, mounted over the distributions' trust-store paths).
//!
//! The spec is the one `kvbridge env` reads ([`EnvSpec`], from [`TRUST_SPEC_ENV`] or a file):
//! each `AzureKeyVaultSecret` resolved at admission with its vault, cloud and identity, fetched
//! through the shared identity/client layer (`mount`), concurrently. A `certificate` object
//! gives its certificate (`cer`); a `secret` object gives the CA certificates of its value
//! (PEM text, or a certificate-backed secret's chain). All or nothing: a missing object, an
//! object without a CA certificate or an unreadable system bundle writes nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use controller::crd::ObjectType;
use futures_util::stream::{self, StreamExt as _};
use keyvault::{ClientOptions, Cloud, Transport};
use model::ObjectKind;
use mount::clients::ClientPool;
use mount::identity::LocalEndpoints;
use mount::trust::{SystemBundle, SystemBundleError};
use mount::Source as _;
use render::render::{FetchKey, Fetched};
use render::trust::{CaSet, TrustBundle, TrustError};

use crate::env::{identity_of, VarFailure};
use crate::spec::{EnvSpec, Reference, SpecError};

/// The environment variable carrying the trust init step's [`EnvSpec`].
pub const TRUST_SPEC_ENV: &str = "KVBRIDGE_TRUST_SPEC";
/// Concurrent vault reads.
pub const CONCURRENCY: usize = 16;

/// Where the webhook mounts the bundle directory in every container.
pub const TRUST_DIR: &str = "/var/run/kvbridge/trust";

/// The Java options that make the JVM's default `SSLContext` use the PKCS#12 trust store in
/// `dir`.
pub fn java_trust_options(dir: &Path) -> String {
    format!(
        "-Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword={}",
        dir.join(render::trust::P12_FILE).display(),
        render::trust::TRUSTSTORE_PASSWORD
    )
}

/// The environment that points the usual TLS clients at the bundle in `dir`: OpenSSL (and
/// curl, Python's `ssl`, Ruby, Go's crypto/x509) `SSL_CERT_FILE`, Python `requests`
/// `REQUESTS_CA_BUNDLE`, Node.js `NODE_EXTRA_CA_CERTS`, Java `JAVA_TOOL_OPTIONS` (the trust store
/// options appended to `java_tool_options`, the container's own value, if any).
pub fn trust_env(dir: &Path, java_tool_options: Option<&str>) -> Vec<(String, String)> {
    let pem = dir.join(render::trust::PEM_FILE).display().to_string();
    let java = match java_tool_options.map(str::trim).filter(|v| !v.is_empty()) {
        Some(existing) => format!("{existing} {}", java_trust_options(dir)),
        None => java_trust_options(dir),
    };
    vec![
        ("SSL_CERT_FILE".into(), pem.clone()),
        ("REQUESTS_CA_BUNDLE".into(), pem.clone()),
        ("NODE_EXTRA_CA_CERTS".into(), pem),
        ("JAVA_TOOL_OPTIONS".into(), java),
    ]
}

/// How `kvbridge trust` reaches the vaults and which system bundle it starts from.
#[derive(Debug, Clone)]
pub struct TrustOptions {
    /// Extra PEM CA certificates for the vault and Entra ID.
    pub ca_file: Option<PathBuf>,
    /// Managed identity endpoint (default IMDS).
    pub imds_endpoint: Option<String>,
    /// Deadline of each read, retries included.
    pub deadline: Duration,
    pub system_bundle: SystemBundle,
}

impl Default for TrustOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            imds_endpoint: None,
            deadline: Duration::from_secs(60),
            system_bundle: SystemBundle::Auto,
        }
    }
}

/// Why no bundle was written.
#[derive(Debug, thiserror::Error)]
pub enum TrustRunError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{TRUST_SPEC_ENV} is not set (the pod was not prepared by the kvbridge webhook; or pass --spec FILE)")]
    NoSpec,
    #[error("the spec names no AzureKeyVaultSecret")]
    Empty,
    #[error(transparent)]
    System(#[from] SystemBundleError),
    #[error("cannot build the HTTPS client")]
    Transport(#[source] keyvault::Error),
    #[error("{akvs}: {failure}")]
    Object { akvs: String, failure: String },
    #[error(transparent)]
    Bundle(#[from] TrustError),
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the bundle was interrupted")]
    Interrupted,
}

/// What was built, for the log line.
#[derive(Debug)]
pub struct Built {
    pub bundle: TrustBundle,
    pub system_path: Option<PathBuf>,
    pub reads: usize,
}

/// The vault read an object needs, or why it holds no certificate.
fn fetch_key(r: &Reference) -> Result<FetchKey, String> {
    let object_type = match r.object.object_type {
        ObjectType::Certificate => ObjectKind::Certificate,
        ObjectType::Secret => ObjectKind::Secret,
        other => {
            return Err(format!(
            "a {} holds no CA certificate (use a certificate or a secret with PEM certificates)",
            other.as_str()
        ))
        }
    };
    Ok(FetchKey {
        object_type,
        name: r.object.name.clone(),
        version: r.object.version.clone(),
    })
}

/// The CA certificates of one fetched object.
fn ca_set(akvs: &str, fetched: &Fetched) -> Result<CaSet, TrustError> {
    match fetched {
        Fetched::Cert(c) => CaSet::from_der(akvs, std::slice::from_ref(&c.cer_der)),
        // Base64 of at most MAX_OBJECT_BYTES, checked before decoding.
        Fetched::Secret(s) if s.value.len() > render::trust::MAX_OBJECT_BYTES / 3 * 4 + 4 => {
            Err(TrustError::ObjectTooLarge {
                name: akvs.to_string(),
                bytes: s.value.len(),
            })
        }
        Fetched::Secret(s)
            if s.content_type.as_deref() == Some(render::render::CONTENT_TYPE_PFX) =>
        {
            let der = base64_decode(&s.value).ok_or_else(|| TrustError::NoCa {
                name: akvs.to_string(),
                subjects: "a PKCS#12 value that is not base64".into(),
            })?;
            let bundle = pki::parse_pfx(&der, "").map_err(|source| TrustError::Pem {
                name: akvs.to_string(),
                source,
            })?;
            CaSet::from_der(akvs, &bundle.certs)
        }
        Fetched::Secret(s) => CaSet::from_pem(akvs, &s.value),
        Fetched::Key(_) => CaSet::from_der(akvs, &[]),
    }
}

fn base64_decode(value: &str) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    use base64::Engine as _;
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .ok()
        .map(zeroize::Zeroizing::new)
}

/// Fetches every object of `spec` and builds the bundle (nothing is written).
pub async fn build(
    spec: &EnvSpec,
    env: &[(OsString, OsString)],
    options: &TrustOptions,
) -> Result<Built, TrustRunError> {
    if spec.refs.is_empty() {
        return Err(TrustRunError::Empty);
    }
    let lookup = |k: &str| {
        env.iter()
            .find(|(name, _)| name.as_os_str() == k)
            .map(|(_, v)| v.clone())
    };
    let mut reads = Vec::new();
    for (akvs, r) in &spec.refs {
        let object = |failure: String| TrustRunError::Object {
            akvs: akvs.clone(),
            failure,
        };
        let key = fetch_key(r).map_err(object)?;
        let identity = identity_of(r, &lookup).map_err(|e| object(e.to_string()))?;
        reads.push((akvs.clone(), r, Arc::new(identity), key));
    }
    let client_options = ClientOptions {
        ca_file: options.ca_file.clone(),
        deadline: options.deadline,
        ..ClientOptions::default()
    };
    let transport = Transport::new(&client_options).map_err(TrustRunError::Transport)?;
    let pool = ClientPool::new(
        transport,
        LocalEndpoints {
            imds: options.imds_endpoint.clone(),
            nmi: None,
        },
    );
    let pool = &pool;
    let results: Vec<(String, Result<Fetched, VarFailure>)> = stream::iter(reads.iter())
        .map(|(akvs, r, identity, key)| async move {
            let result = async {
                let cloud = Cloud::from(&r.cloud);
                let (client, _) = pool.client(identity, &cloud).map_err(VarFailure::Vault)?;
                mount::VaultSource::new(client, r.vault_url.clone())
                    .get(key)
                    .await
                    .map_err(|e| match e {
                        mount::MountError::Vault { source, .. } => VarFailure::Vault(source),
                        _ => VarFailure::Interrupted("reading the vault"),
                    })
            }
            .await;
            (akvs.clone(), result)
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut fetched = Vec::new();
    for (akvs, result) in results {
        match result {
            Ok(f) => fetched.push((akvs, f)),
            Err(e) => {
                return Err(TrustRunError::Object {
                    akvs,
                    failure: keyvault::ErrorChain(&e).to_string(),
                })
            }
        }
    }
    let system = options.system_bundle.clone();
    let read_count = reads.len();
    // File reads, PKCS#12 and X.509 work: off the async workers.
    tokio::task::spawn_blocking(move || {
        let loaded = system.load()?;
        let sets = fetched
            .iter()
            .map(|(akvs, f)| ca_set(akvs, f))
            .collect::<Result<Vec<_>, _>>()?;
        let bundle = render::trust::build(
            loaded.as_ref().map(|(_, b)| b.as_slice()),
            &sets,
            render::trust::Outputs::BOTH,
        )?;
        Ok(Built {
            bundle,
            system_path: loaded.map(|(p, _)| p),
            reads: read_count,
        })
    })
    .await
    .map_err(|_| TrustRunError::Interrupted)?
}

/// Writes the bundle's two files into `dir` (created if missing), each through a temporary
/// file, fsync and rename, mode 0644; returns their paths.
pub fn write(dir: &Path, bundle: &TrustBundle) -> Result<(PathBuf, PathBuf), TrustRunError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::create_dir_all(dir).map_err(|source| TrustRunError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let put = |name: &str, bytes: &[u8]| -> Result<PathBuf, TrustRunError> {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let fail = |source| TrustRunError::Write {
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(fail)?;
        f.write_all(bytes).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(path)
    };
    let pem = put(render::trust::PEM_FILE, &bundle.pem)?;
    let p12 = put(render::trust::P12_FILE, &bundle.p12)?;
    Ok((pem, p12))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{CloudSpec, RuntimeIdentity};
    use controller::crd::VaultObject;

    fn reference(object_type: ObjectType) -> Reference {
        Reference {
            vault_url: "https://kv.vault.azure.net".into(),
            cloud: CloudSpec::from(&Cloud::public()),
            object: VaultObject {
                name: "corp-ca".into(),
                object_type,
                version: Some("v1".into()),
                content_type: None,
            },
            transforms: vec![],
            chain_order: None,
            identity: RuntimeIdentity::Pod,
        }
    }

    #[test]
    fn environment_for_the_clients() {
        let env = trust_env(Path::new(TRUST_DIR), Some("-Xmx64m"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(
            get("SSL_CERT_FILE"),
            Some("/var/run/kvbridge/trust/ca-certificates.crt")
        );
        assert_eq!(get("REQUESTS_CA_BUNDLE"), get("SSL_CERT_FILE"));
        assert_eq!(get("NODE_EXTRA_CA_CERTS"), get("SSL_CERT_FILE"));
        assert_eq!(
            get("JAVA_TOOL_OPTIONS"),
            Some("-Xmx64m -Djavax.net.ssl.trustStore=/var/run/kvbridge/trust/truststore.p12 -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword=changeit")
        );
        let fresh = trust_env(Path::new(TRUST_DIR), Some("  "));
        assert!(fresh[3].1.starts_with("-Djavax.net.ssl.trustStore="));
    }

    #[test]
    fn object_types_map_to_reads() {
        let k = fetch_key(&reference(ObjectType::Certificate)).unwrap();
        assert_eq!(k.object_type, ObjectKind::Certificate);
        assert_eq!(k.version.as_deref(), Some("v1"));
        assert_eq!(
            fetch_key(&reference(ObjectType::Secret))
                .unwrap()
                .object_type,
            ObjectKind::Secret
        );
        let e = fetch_key(&reference(ObjectType::Key)).unwrap_err();
        assert!(e.contains("key holds no CA certificate"), "{e}");
        assert!(fetch_key(&reference(ObjectType::MultiKeyValueSecret)).is_err());
    }

    #[test]
    fn oversized_secret_is_refused_before_decoding() {
        let big = Fetched::Secret(render::render::FetchedSecret {
            version: "v".into(),
            value: zeroize::Zeroizing::new("A".repeat(render::trust::MAX_OBJECT_BYTES * 2)),
            content_type: Some(render::render::CONTENT_TYPE_PFX.into()),
            kid: Some("k".into()),
        });
        assert!(matches!(
            ca_set("big", &big),
            Err(TrustError::ObjectTooLarge { .. })
        ));
        let junk = Fetched::Secret(render::render::FetchedSecret {
            version: "v".into(),
            value: zeroize::Zeroizing::new("not base64 !!".into()),
            content_type: Some(render::render::CONTENT_TYPE_PFX.into()),
            kid: Some("k".into()),
        });
        assert!(ca_set("junk", &junk).is_err());
    }

    #[tokio::test]
    async fn empty_spec_is_an_error() {
        let e = build(&EnvSpec::new(), &[], &TrustOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, TrustRunError::Empty), "{e}");
    }

    #[test]
    fn write_replaces_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let bundle = TrustBundle {
            pem: b"pem".to_vec(),
            p12: b"p12".to_vec(),
            system_certs: 0,
            system_skipped: 0,
            vault_cas: 0,
        };
        let (pem, p12) = write(&out, &bundle).unwrap();
        assert_eq!(std::fs::read(&pem).unwrap(), b"pem");
        assert_eq!(std::fs::read(&p12).unwrap(), b"p12");
        let again = TrustBundle {
            pem: b"pem2".to_vec(),
            ..bundle
        };
        write(&out, &again).unwrap();
        assert_eq!(std::fs::read(&pem).unwrap(), b"pem2");
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    }
}
