//! The `v1alpha1.CSIDriverProvider` service: `Version` and `Mount`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use keyvault::{Cloud, Transport};
use mount::clients::ClientPool;
use mount::cloud_env::CloudEnvFiles;
use mount::identity::{
    Fallback, Identity, LocalEndpoints, Sources, ATTR_POD_NAME, ATTR_POD_NAMESPACE,
};
use mount::target::CloudConfig;
use render::params::Parameters;
use render::render::RenderOptions;
use tonic::{Request, Response, Status};

use crate::cache::NodeCache;
use crate::gate::{refusal_pause, GateConfig, GateLane, Lane};
use crate::listener::ConnInfo;
use crate::metrics::{GrpcMethod, Metrics};
use crate::proto::csi_driver_provider_server::CsiDriverProvider;
use crate::proto::{self, MountRequest, MountResponse, VersionRequest, VersionResponse};
use crate::{ProviderConfig, ProviderError, RUNTIME_NAME, RUNTIME_VERSION};

/// Largest `attributes` JSON read: the class's parameters (at most
/// [`render::limits::MAX_CLASS_BYTES`] once decoded) plus the pod's attributes, with room for
/// JSON escapes. Checked before parsing, so an oversized class costs no JSON work.
pub const MAX_ATTRIBUTES_BYTES: usize = 2 * render::limits::MAX_CLASS_BYTES;

/// Largest `secrets` JSON read (the nodePublishSecretRef Secret: a client id and secret, or a
/// certificate).
pub const MAX_SECRETS_BYTES: usize = 1024 * 1024;

/// Requests larger than this are read and parsed one at a time (see [`crate::gate`]).
pub use crate::gate::LARGE_REQUEST_BYTES;

/// The provider. Cheap to share (`Arc`); one per node.
pub struct ProviderService {
    config: ProviderConfig,
    cache: Arc<NodeCache>,
    metrics: Arc<Metrics>,
    /// One Key Vault client per identity (Entra token and challenge caches).
    clients: ClientPool,
    mounts: tokio::sync::Semaphore,
    /// One lane for reading and parsing large requests, at a bounded byte rate: a flood of
    /// big (often hostile) classes takes at most one parser at a time, while ordinary classes
    /// never wait behind it (see [`crate::gate`]).
    large: Arc<tokio::sync::Semaphore>,
    /// Clouds: classes' `cloudEnvFileName`s confined to `--cloud-env-dir`, the node default.
    clouds: CloudConfig,
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
        let mut clouds = CloudConfig::new(match &config.cloud_env_dir {
            Some(dir) => CloudEnvFiles::within(dir),
            None => CloudEnvFiles::anywhere(),
        });
        if let Some(file) = &config.default_cloud_env_file {
            // The operator's own file, read once at start (fails fast when missing).
            clouds.default_cloud = Some(Cloud::from_env_file(file).map_err(ProviderError::config)?);
        }
        Ok(Self {
            mounts,
            large: Arc::new(tokio::sync::Semaphore::new(1)),
            clouds,
            clients: ClientPool::new(
                transport,
                LocalEndpoints {
                    imds: config.imds_endpoint.clone(),
                    nmi: config.nmi_endpoint.clone(),
                },
            ),
            config,
            cache,
            metrics,
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

    /// What the gRPC [`Gate`](crate::gate::Gate) in front of this service shares with it.
    pub fn gate_config(&self) -> GateConfig {
        GateConfig {
            lane: self.large.clone(),
            large_read_rate: self.config.large_read_rate,
            refusal_delay: self.config.refusal_delay,
            metrics: self.metrics.clone(),
        }
    }

    /// Refuses oversized fields before any parsing.
    fn check_sizes(req: &MountRequest) -> Result<(), ProviderError> {
        if req.attributes.len() > MAX_ATTRIBUTES_BYTES {
            return Err(ProviderError::Attributes(format!(
                "{} bytes, more than the limit of {MAX_ATTRIBUTES_BYTES} (the SecretProviderClass parameters are too large)",
                req.attributes.len()
            )));
        }
        if req.secrets.len() > MAX_SECRETS_BYTES {
            return Err(ProviderError::Secrets(format!(
                "{} bytes, more than the limit of {MAX_SECRETS_BYTES} (the nodePublishSecretRef Secret is too large)",
                req.secrets.len()
            )));
        }
        Ok(())
    }

    fn decode(req: &MountRequest) -> Result<Decoded, ProviderError> {
        Ok(Decoded {
            attrs: json_map(&req.attributes, ProviderError::Attributes)?,
            secrets: json_map(&req.secrets, ProviderError::Secrets)?,
            mode: parse_permission(&req.permission)?,
        })
    }

    /// A Mount, start to end; errors carry the context the driver will log.
    pub async fn mount(&self, req: MountRequest) -> Result<MountResponse, ProviderError> {
        self.mount_in(req, None).await
    }

    /// A Mount that may already hold the large-request lane (taken by the gate before its body
    /// was read); released once the request is parsed, or on error.
    pub async fn mount_in(
        &self,
        req: MountRequest,
        lane: Option<Lane>,
    ) -> Result<MountResponse, ProviderError> {
        Self::check_sizes(&req)?;
        // A large request holds the one large lane before it takes a mount slot, so a queue of
        // them never holds the slots ordinary mounts need. Without the gate (a direct call),
        // it is taken here.
        let size = req.attributes.len() + req.secrets.len() + req.target_path.len();
        let lane = match lane {
            Some(lane) => Some(lane),
            None if size > LARGE_REQUEST_BYTES => {
                Some(Lane::take(&self.large, size, self.config.large_read_rate).await)
            }
            None => None,
        };
        // Semaphores are never closed, so acquire only fails if one were; then run unbounded
        // rather than fail.
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
        drop(lane);
        // The pod's own identity only: never this node's environment.
        let identity = Identity::select(
            &params,
            &Sources {
                attributes: &d.attrs,
                secrets: &d.secrets,
                env: &|_| None,
                fallback: Fallback::Refuse {
                    source_name: "nodePublishSecretRef secret",
                },
            },
        )?;
        let target = self.clouds.resolve_async(&params).await?;
        let vault_url = target.vault_url;
        let (client, id_key) = self
            .clients
            .client(&identity, &target.cloud)
            .map_err(ProviderError::config)?;
        let scope = format!("{vault_url}|{id_key}");
        let source = self
            .cache
            .source(&scope, mount::VaultSource::new(client, vault_url.clone()));
        let options = RenderOptions {
            construct_pem_chain: self.config.construct_pem_chain,
            write_cert_and_key_in_separate_files: self.config.write_cert_and_key_in_separate_files,
            default_file_mode: d.mode,
            system_trust: self.config.system_trust.clone(),
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
            .observe_grpc(GrpcMethod::Version, tonic::Code::Ok, start.elapsed());
        Ok(Response::new(resp))
    }

    async fn mount(
        &self,
        request: Request<MountRequest>,
    ) -> Result<Response<MountResponse>, Status> {
        let start = Instant::now();
        let _call = request.extensions().get::<ConnInfo>().map(ConnInfo::call);
        let lane = request
            .extensions()
            .get::<GateLane>()
            .and_then(GateLane::take);
        let result = self.0.mount_in(request.into_inner(), lane).await;
        let elapsed = start.elapsed();
        match result {
            Ok(resp) => {
                self.0
                    .metrics
                    .observe_grpc(GrpcMethod::Mount, tonic::Code::Ok, elapsed);
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
                self.0
                    .metrics
                    .observe_grpc(GrpcMethod::Mount, status.code(), elapsed);
                tracing::error!(code = ?status.code(), error = %status.message(), "mount failed");
                if status.code() == tonic::Code::InvalidArgument {
                    refusal_pause(self.0.config.refusal_delay).await;
                }
                Err(status)
            }
        }
    }
}
