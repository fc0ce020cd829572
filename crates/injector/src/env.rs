//! `kvbridge env`: every placeholder in the environment resolved concurrently, then the command
//! `exec`ed with the values in its environment only.
//!
//! - The values are never set in this process's environment: they go into the environment
//!   array handed to `execve` (so `/proc/<pid>/environ` of `kvbridge env` holds the
//!   placeholders until the exec replaces the process image).
//! - All or nothing: any failure (placeholder, reference, identity, vault, query) fails the
//!   whole run, listing every variable that failed and why; the command is not started.
//! - Identical reads (two variables naming one object, `tls.crt` and `tls.key` of one
//!   certificate) are made once; distinct reads run concurrently.
//! - The spec ([`SPEC_ENV`]) and the variables carrying service-principal credentials are
//!   removed from the application's environment.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt as _};
use keyvault::{ClientOptions, Cloud, ManagedIdentityId, Transport};
use mount::clients::ClientPool;
use mount::identity::{Identity, LocalEndpoints};
use mount::Source as _;
use render::render::{FetchKey, Fetched};
use zeroize::Zeroizing;

use crate::placeholder::{self, Placeholder, PlaceholderError};
use crate::query::{self, QueryError, Selection};
use crate::spec::{EnvSpec, Reference, RuntimeIdentity, SpecError, SPEC_ENV};

/// Bound on placeholders in one environment.
pub const MAX_PLACEHOLDERS: usize = 1024;
/// Concurrent vault reads.
pub const CONCURRENCY: usize = 32;

/// How `kvbridge env` reaches the vaults.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Extra PEM CA certificates for the vault and Entra ID.
    pub ca_file: Option<PathBuf>,
    /// Trust the system CA bundle (default true).
    pub use_system_roots: bool,
    /// Managed identity endpoint (default IMDS).
    pub imds_endpoint: Option<String>,
    /// Deadline of each read, retries included.
    pub deadline: Duration,
    /// The spec when it does not come from [`SPEC_ENV`] (`kvbridge env --spec FILE`).
    pub spec: Option<EnvSpec>,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            use_system_roots: true,
            imds_endpoint: None,
            deadline: Duration::from_secs(60),
            spec: None,
        }
    }
}

/// Why one variable has no value.
#[derive(Debug, thiserror::Error)]
pub enum VarFailure {
    #[error(transparent)]
    Placeholder(#[from] PlaceholderError),
    #[error("no AzureKeyVaultSecret {akvs:?} was resolved for this container (it did not exist when the pod was admitted, or the pod was not mutated by the kvbridge webhook)")]
    UnknownReference { akvs: String },
    #[error("identity: {0}")]
    Identity(String),
    #[error("reading the vault")]
    Vault(#[source] keyvault::Error),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0} was interrupted")]
    Interrupted(&'static str),
}

/// One failed variable: its name, its placeholder and why.
#[derive(Debug)]
pub struct VarError {
    pub var: String,
    pub placeholder: Option<Placeholder>,
    pub failure: VarFailure,
}

impl fmt::Display for VarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.var)?;
        if let Some(p) = &self.placeholder {
            write!(f, " ({p})")?;
        }
        write!(f, ": {}", keyvault::ErrorChain(&self.failure))
    }
}

/// Why the command was not started.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{SPEC_ENV} is not set, but {vars} hold(s) @azurekeyvault placeholders: the container was not prepared by the kvbridge webhook (or pass --spec FILE)")]
    NoSpec { vars: String },
    #[error("{count} placeholders; at most {MAX_PLACEHOLDERS} are allowed")]
    TooMany { count: usize },
    #[error("cannot build the HTTPS client")]
    Transport(#[source] keyvault::Error),
    #[error("{} variable(s) could not be resolved, the command was not started:\n  {}", .0.len(), list(.0))]
    Variables(Vec<VarError>),
}

fn list(errors: &[VarError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

/// The environment to exec with.
pub struct Resolved {
    /// Every variable, in the original order, placeholders replaced, control variables removed.
    pub env: Vec<(OsString, Zeroizing<Vec<u8>>)>,
    /// Names of the variables that got a vault value.
    pub injected: Vec<String>,
    /// Vault reads made.
    pub reads: usize,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("variables", &self.env.len())
            .field("injected", &self.injected)
            .field("reads", &self.reads)
            .finish()
    }
}

impl Resolved {
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.env
            .iter()
            .find(|(k, _)| k.as_bytes() == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }
}

/// Identity of one read: the selection and a key for sharing clients and deduplicating reads.
pub(crate) fn identity_of(
    r: &Reference,
    lookup: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Identity, VarFailure> {
    let var = |name: &str| {
        lookup(name)
            .and_then(|v| v.into_string().ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    Ok(match &r.identity {
        RuntimeIdentity::Pod => Identity::Ambient {
            managed_identity: true,
        },
        RuntimeIdentity::Managed { client_id } => Identity::Managed {
            id: match client_id
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty())
            {
                Some(c) => ManagedIdentityId::ClientId(c.to_string()),
                None => ManagedIdentityId::System,
            },
        },
        RuntimeIdentity::ServicePrincipal {
            tenant_id,
            client_id_env,
            client_secret_env,
        } => {
            let missing = |name: &str| {
                VarFailure::Identity(format!(
                    "{name} is not set (the webhook fills it from the service principal's Secret; does the Secret have that key?)"
                ))
            };
            let client_id = var(client_id_env).ok_or_else(|| missing(client_id_env))?;
            let secret = var(client_secret_env).ok_or_else(|| missing(client_secret_env))?;
            Identity::ServicePrincipal {
                tenant: tenant_id.clone(),
                client_id,
                secret: Zeroizing::new(secret),
            }
        }
        RuntimeIdentity::Workload {
            tenant_id,
            client_id,
            token_file,
        } => Identity::WorkloadFile {
            tenant: tenant_id.clone(),
            client_id: client_id.clone(),
            path: PathBuf::from(token_file),
        },
    })
}

struct Wanted {
    var: String,
    placeholder: Placeholder,
    akvs: String,
    selection: Selection,
    read: usize,
}

struct Read {
    identity: Arc<Identity>,
    cloud: Cloud,
    vault_url: String,
    key: FetchKey,
}

/// Resolves every placeholder of `vars` (the process environment, in order).
pub async fn resolve(
    vars: Vec<(OsString, OsString)>,
    options: &EnvOptions,
) -> Result<Resolved, EnvError> {
    let lookup_map: HashMap<OsString, OsString> = vars.iter().cloned().collect();
    let lookup = |k: &str| lookup_map.get(OsStr::new(k)).cloned();

    // 1. Placeholders.
    let mut errors = Vec::new();
    let mut found: Vec<(usize, Placeholder)> = Vec::new();
    for (i, (name, value)) in vars.iter().enumerate() {
        let Some(value) = value.to_str() else {
            continue;
        };
        match placeholder::parse(value) {
            Ok(Some(p)) => found.push((i, p)),
            Ok(None) => {}
            Err(e) => errors.push(VarError {
                var: name.to_string_lossy().into_owned(),
                placeholder: None,
                failure: e.into(),
            }),
        }
    }
    if found.len() > MAX_PLACEHOLDERS {
        return Err(EnvError::TooMany { count: found.len() });
    }
    let spec = match (&options.spec, lookup(SPEC_ENV)) {
        (Some(spec), _) => spec.clone(),
        (None, Some(text)) => EnvSpec::parse(&text.to_string_lossy())?,
        (None, None) if found.is_empty() && errors.is_empty() => EnvSpec::new(),
        (None, None) => {
            let mut names: Vec<String> = found
                .iter()
                .map(|(i, _)| vars[*i].0.to_string_lossy().into_owned())
                .chain(errors.iter().map(|e| e.var.clone()))
                .collect();
            names.truncate(10);
            return Err(EnvError::NoSpec {
                vars: names.join(", "),
            });
        }
    };

    // 2. Plans: what each variable needs, reads deduplicated per identity, vault and object.
    let mut identities: BTreeMap<String, Arc<Identity>> = BTreeMap::new();
    let mut reads: Vec<Read> = Vec::new();
    let mut read_index: HashMap<(String, String, FetchKey), usize> = HashMap::new();
    let mut wanted: Vec<(usize, Wanted)> = Vec::new();
    for (i, p) in found {
        let var = vars[i].0.to_string_lossy().into_owned();
        let fail = |failure: VarFailure| VarError {
            var: var.clone(),
            placeholder: Some(p.clone()),
            failure,
        };
        let Some(r) = spec.refs.get(&p.akvs) else {
            errors.push(fail(VarFailure::UnknownReference {
                akvs: p.akvs.clone(),
            }));
            continue;
        };
        let (key, selection) = match query::plan(r, &p.query) {
            Ok(x) => x,
            Err(e) => {
                errors.push(fail(e.into()));
                continue;
            }
        };
        let cloud = Cloud::from(&r.cloud);
        let identity = match identity_of(r, &lookup) {
            Ok(id) => id,
            Err(e) => {
                errors.push(fail(e));
                continue;
            }
        };
        let id_key = identity.cache_key(&cloud.authority_host);
        let identity = identities
            .entry(id_key.clone())
            .or_insert_with(|| Arc::new(identity))
            .clone();
        let read = *read_index
            .entry((id_key, r.vault_url.clone(), key.clone()))
            .or_insert_with(|| {
                reads.push(Read {
                    identity,
                    cloud,
                    vault_url: r.vault_url.clone(),
                    key,
                });
                reads.len() - 1
            });
        wanted.push((
            i,
            Wanted {
                var,
                placeholder: p.clone(),
                akvs: p.akvs.clone(),
                selection,
                read,
            },
        ));
    }
    if !errors.is_empty() {
        return Err(EnvError::Variables(errors));
    }

    // 3. Reads, concurrently.
    let client_options = ClientOptions {
        ca_file: options.ca_file.clone(),
        use_system_roots: options.use_system_roots,
        deadline: options.deadline,
        ..ClientOptions::default()
    };
    let transport = Transport::new(&client_options).map_err(EnvError::Transport)?;
    let pool = ClientPool::new(
        transport,
        LocalEndpoints {
            imds: options.imds_endpoint.clone(),
            nmi: None,
        },
    );
    let pool = &pool;
    let results: Vec<(usize, Result<Fetched, VarFailure>)> = stream::iter(reads.iter().enumerate())
        .map(|(i, read)| async move {
            let result = async {
                let (client, _) = pool
                    .client(&read.identity, &read.cloud)
                    .map_err(VarFailure::Vault)?;
                let source = mount::VaultSource::new(client, read.vault_url.clone());
                source.get(&read.key).await.map_err(|e| match e {
                    mount::MountError::Vault { source, .. } => VarFailure::Vault(source),
                    _ => VarFailure::Interrupted("reading the vault"),
                })
            }
            .await;
            (i, result)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut fetched: Vec<Option<Result<Fetched, VarFailure>>> =
        (0..reads.len()).map(|_| None).collect();
    for (i, r) in results {
        fetched[i] = Some(r);
    }
    let reads_made = reads.len();

    // 4. Selection (PKCS#12 decoding, chain ordering): CPU work, off the async workers.
    let spec = Arc::new(spec);
    let fetched = Arc::new(fetched);
    let selected = {
        let spec = spec.clone();
        let fetched = fetched.clone();
        tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(|(i, w)| {
                    let result = match &fetched[w.read] {
                        Some(Ok(obj)) => spec
                            .refs
                            .get(&w.akvs)
                            .ok_or(VarFailure::UnknownReference {
                                akvs: w.akvs.clone(),
                            })
                            .and_then(|r| {
                                query::select(r, &w.selection, obj).map_err(VarFailure::from)
                            }),
                        Some(Err(VarFailure::Vault(e))) => Err(VarFailure::Vault(e.clone())),
                        Some(Err(VarFailure::Identity(e))) => Err(VarFailure::Identity(e.clone())),
                        _ => Err(VarFailure::Interrupted("reading the vault")),
                    };
                    (i, w, result)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|_| {
            EnvError::Variables(vec![VarError {
                var: "(all)".into(),
                placeholder: None,
                failure: VarFailure::Interrupted("selecting values"),
            }])
        })?
    };
    let mut values: HashMap<usize, Zeroizing<Vec<u8>>> = HashMap::new();
    let mut injected = Vec::new();
    for (i, w, result) in selected {
        match result {
            Ok(v) => {
                injected.push(w.var.clone());
                values.insert(i, v);
            }
            Err(failure) => errors.push(VarError {
                var: w.var,
                placeholder: Some(w.placeholder),
                failure,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(EnvError::Variables(errors));
    }

    // 5. The environment: original order, values in, control variables out.
    let control: Vec<&str> = spec.control_variables();
    let env = vars
        .into_iter()
        .enumerate()
        .filter(|(_, (k, _))| !control.iter().any(|c| k.as_bytes() == c.as_bytes()))
        .map(|(i, (k, v))| match values.remove(&i) {
            Some(value) => (k, value),
            None => (k, Zeroizing::new(v.into_vec())),
        })
        .collect();
    Ok(Resolved {
        env,
        injected,
        reads: reads_made,
    })
}

/// Replaces this process with `program` (looked up in the new environment's `PATH`) and
/// `args`, with exactly `env` as its environment. Returns only on failure.
pub fn exec(
    program: &OsStr,
    args: &[OsString],
    env: Vec<(OsString, Zeroizing<Vec<u8>>)>,
) -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env_clear();
    for (k, v) in &env {
        cmd.env(k, OsStr::from_bytes(v));
    }
    // `Command` copies the environment into its own buffers; ours are wiped on the way out.
    drop(env);
    cmd.exec()
}
