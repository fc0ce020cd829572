//! The `v1alpha1.CSIDriverProvider` service: `Version` and `Mount`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use keyvault::{Cloud, KeyVaultClient, TokenCredential, Transport};
use mount::cloud_env::CloudEnvFiles;
use render::params::Parameters;
use render::render::RenderOptions;
use tonic::{Request, Response, Status};

use crate::cache::NodeCache;
use crate::identity::{HandedInToken, Identity, ATTR_POD_NAME, ATTR_POD_NAMESPACE};
use crate::listener::ConnInfo;
use crate::metrics::Metrics;
use crate::proto::csi_driver_provider_server::CsiDriverProvider;
use crate::proto::{self, MountRequest, MountResponse, VersionRequest, VersionResponse};
use crate::{ProviderConfig, ProviderError, RUNTIME_NAME, RUNTIME_VERSION};

/// Clients kept per identity (Entra token caches); beyond this the pool is cleared.
const MAX_CLIENTS: usize = 4096;

struct Pooled {
    client: KeyVaultClient,
    /// Set for workload identity: where to put the newest pod token.
    handed_in: Option<Arc<HandedInToken>>,
}

/// The provider. Cheap to share (`Arc`); one per node.
pub struct ProviderService {
    config: ProviderConfig,
    transport: Transport,
    cache: Arc<NodeCache>,
    metrics: Arc<Metrics>,
    clients: Mutex<HashMap<String, Pooled>>,
    mounts: tokio::sync::Semaphore,
    /// The node's default cloud environment file, read once at start.
    default_cloud: Option<Cloud>,
    /// Classes' `cloudEnvFileName`s, confined to `--cloud-env-dir`, cached by mtime.
    cloud_env: Arc<CloudEnvFiles>,
}

/// A mount's decoded request.
struct Decoded {
    attrs: BTreeMap<String, String>,
    secrets: BTreeMap<String, String>,
    mode: u32,
}

fn json_map(
    text: &str,
    what: fn(String) -> ProviderError,
) -> Result<BTreeMap<String, String>, ProviderError> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    // Report position only: serde messages may quote a value.
    serde_json::from_str(text).map_err(|e| {
        what(format!(
            "not a JSON object of strings (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// The driver's `permission`: a decimal string ("420" = 0644), as Go's `json.Unmarshal` into
/// an `os.FileMode` reads it.
pub fn parse_permission(s: &str) -> Result<u32, ProviderError> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(render::params::DEFAULT_FILE_MODE);
    }
    match t.parse::<u32>() {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(ProviderError::Permission(s.to_string())),
    }
}

impl ProviderService {
    pub fn new(config: ProviderConfig, metrics: Arc<Metrics>) -> Result<Self, ProviderError> {
        let transport = Transport::new(&config.client).map_err(ProviderError::config)?;
        let cache = Arc::new(NodeCache::new(config.cache.clone(), metrics.clone()));
        let mounts = tokio::sync::Semaphore::new(config.max_concurrent_mounts.max(1));
        let default_cloud = match &config.default_cloud_env_file {
            Some(file) => Some(Cloud::from_env_file(file).map_err(ProviderError::config)?),
            None => None,
        };
        let cloud_env = Arc::new(match &config.cloud_env_dir {
            Some(dir) => CloudEnvFiles::within(dir),
            None => CloudEnvFiles::anywhere(),
        });
        Ok(Self {
            mounts,
            default_cloud,
            cloud_env,
            config,
            transport,
            cache,
            metrics,
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    pub fn cache(&self) -> &Arc<NodeCache> {
        &self.cache
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn decode(req: &MountRequest) -> Result<Decoded, ProviderError> {
        Ok(Decoded {
            attrs: json_map(&req.attributes, ProviderError::Attributes)?,
            secrets: json_map(&req.secrets, ProviderError::Secrets)?,
            mode: parse_permission(&req.permission)?,
        })
    }

    /// The cloud of a class: its `cloudEnvFileName`; else, when it names no cloud, the node's
    /// default environment file (if configured); else the named built-in cloud.
    async fn cloud(
        &self,
        params: &Parameters,
        attrs: &BTreeMap<String, String>,
    ) -> Result<Cloud, ProviderError> {
        if let Some(file) = &params.cloud_env_file_name {
            // Blocking file I/O (bounded, never on a FIFO) off the async workers.
            let files = self.cloud_env.clone();
            let name = file.clone();
            return tokio::task::spawn_blocking(move || files.read(&name, None))
                .await
                .map_err(|_| ProviderError::Internal("reading cloudEnvFileName"))?
                .map_err(ProviderError::from);
        }
        let named = attrs
            .get("cloudName")
            .map(|s| s.trim())
            .filter(|s| !s.is_empty());
        if let (None, Some(cloud)) = (named, &self.default_cloud) {
            return Ok(cloud.clone());
        }
        if params.cloud == render::params::Cloud::AzureStackCloud {
            return Err(ProviderError::config(keyvault::Error::invalid_config(
                "cloudName",
                "AzureStackCloud needs cloudEnvFileName (the Azure environment JSON file on the node)",
            )));
        }
        Cloud::by_name(params.cloud.name()).map_err(ProviderError::config)
    }

    fn client_for(
        &self,
        identity: &Identity,
        cloud: &Cloud,
        key: &str,
    ) -> Result<KeyVaultClient, ProviderError> {
        let mut pool = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pool.get(key) {
            if let (Some(h), Identity::Workload { token, .. }) = (&p.handed_in, identity) {
                h.set_token(token);
            }
            return Ok(p.client.clone());
        }
        let (credential, handed_in): (Arc<dyn TokenCredential>, Option<Arc<HandedInToken>>) =
            match identity {
                Identity::Workload {
                    tenant,
                    client_id,
                    token,
                    ..
                } => {
                    let h = Arc::new(HandedInToken::new(
                        &cloud.authority_host,
                        tenant,
                        client_id,
                        token,
                        self.transport.clone(),
                    ));
                    (h.clone(), Some(h))
                }
                _ => (
                    identity.credential(
                        &cloud.authority_host,
                        self.config.imds_endpoint.as_deref(),
                        &self.transport,
                    )?,
                    None,
                ),
            };
        let client = KeyVaultClient::with_transport(credential, self.transport.clone());
        if pool.len() >= MAX_CLIENTS {
            pool.clear();
        }
        pool.insert(
            key.to_string(),
            Pooled {
                client: client.clone(),
                handed_in,
            },
        );
        Ok(client)
    }

    /// A Mount, start to end; errors carry the context the driver will log.
    pub async fn mount(&self, req: MountRequest) -> Result<MountResponse, ProviderError> {
        // Never closed, so acquire only fails if it were; then run unbounded rather than fail.
        let _permit = self.mounts.acquire().await.ok();
        // Decoding and parsing are bounded (size, nesting, counts) but CPU work on input from
        // any namespace: done off the async workers that serve every other pod.
        let (d, params) = tokio::task::spawn_blocking(move || {
            let d = Self::decode(&req)?;
            let params = Parameters::parse(&d.attrs)?;
            Ok::<_, ProviderError>((d, params))
        })
        .await
        .map_err(|_| ProviderError::Internal("parsing the mount request"))??;
        let identity = Identity::select(&params, &d.attrs, &d.secrets)?;
        let cloud = self.cloud(&params, &d.attrs).await?;
        let vault_url = cloud.vault_url(&params.keyvault_name);
        let id_key = identity.cache_key(&cloud.authority_host);
        let client = self.client_for(&identity, &cloud, &id_key)?;
        let scope = format!("{vault_url}|{id_key}");
        let source = self
            .cache
            .source(&scope, mount::VaultSource::new(client, vault_url.clone()));
        let options = RenderOptions {
            construct_pem_chain: self.config.construct_pem_chain,
            write_cert_and_key_in_separate_files: self.config.write_cert_and_key_in_separate_files,
            default_file_mode: d.mode,
        };
        tracing::debug!(
            pod = %format!("{}/{}", d.attrs.get(ATTR_POD_NAMESPACE).map(String::as_str).unwrap_or(""), d.attrs.get(ATTR_POD_NAME).map(String::as_str).unwrap_or("")),
            vault = %vault_url,
            identity = %identity.describe(),
            objects = params.objects.len(),
            "mount"
        );
        let rendered =
            mount::mount_files(&source, &params.objects, &options, self.config.concurrency).await?;
        Ok(MountResponse {
            object_version: rendered
                .versions
                .into_iter()
                .map(|v| proto::ObjectVersion {
                    id: v.id,
                    version: v.version,
                })
                .collect(),
            error: None,
            files: rendered
                .files
                .into_iter()
                .map(|f| proto::File {
                    path: f.path.clone(),
                    mode: f.mode as i32,
                    contents: f.contents.to_vec(),
                })
                .collect(),
        })
    }
}

/// The gRPC face of a shared [`ProviderService`].
#[derive(Clone)]
pub struct Grpc(pub Arc<ProviderService>);

#[tonic::async_trait]
impl CsiDriverProvider for Grpc {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        let start = Instant::now();
        let _call = request.extensions().get::<ConnInfo>().map(ConnInfo::call);
        let resp = VersionResponse {
            version: if request.get_ref().version.is_empty() {
                "v1alpha1".into()
            } else {
                request.get_ref().version.clone()
            },
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: RUNTIME_VERSION.into(),
        };
        self.0
            .metrics
            .observe_grpc("Version", tonic::Code::Ok, start.elapsed());
        Ok(Response::new(resp))
    }

    async fn mount(
        &self,
        request: Request<MountRequest>,
    ) -> Result<Response<MountResponse>, Status> {
        let start = Instant::now();
        let _call = request.extensions().get::<ConnInfo>().map(ConnInfo::call);
        let result = self.0.mount(request.into_inner()).await;
        let elapsed = start.elapsed();
        match result {
            Ok(resp) => {
                self.0
                    .metrics
                    .observe_grpc("Mount", tonic::Code::Ok, elapsed);
                tracing::info!(
                    objects = resp.object_version.len(),
                    files = resp.files.len(),
                    ms = elapsed.as_millis() as u64,
                    "mount done"
                );
                Ok(Response::new(resp))
            }
            Err(e) => {
                let status = e.to_status();
                self.0.metrics.observe_grpc("Mount", status.code(), elapsed);
                tracing::error!(code = ?status.code(), error = %status.message(), "mount failed");
                Err(status)
            }
        }
    }
}
