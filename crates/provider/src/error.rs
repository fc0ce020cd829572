//! Why a Mount failed, mapped once to a gRPC status at the edge.

use tonic::Code;

/// A failed Mount. `Display` names the parameter, object and field involved and never carries
/// a secret value or a token.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("failed to unmarshal attributes: {0}")]
    Attributes(String),
    #[error("failed to unmarshal secrets: {0}")]
    Secrets(String),
    #[error(
        "failed to unmarshal file permission {0:?}: expected a decimal mode such as \"420\" (0644)"
    )]
    Permission(String),
    #[error(transparent)]
    Params(Box<render::params::ParamError>),
    /// The identity cannot be used as configured (missing secret, missing token, pod identity).
    #[error(transparent)]
    Identity(#[from] mount::identity::IdentityError),
    /// The cloud (cloudName / cloudEnvFileName) or client configuration is unusable.
    #[error(transparent)]
    Config(Box<keyvault::Error>),
    /// The class's cloud (`cloudName`, `cloudEnvFileName`) cannot be used.
    #[error(transparent)]
    Target(Box<mount::target::TargetError>),
    #[error(transparent)]
    Mount(Box<mount::MountError>),
    /// A worker task ended abnormally (a bug: it is logged with this text).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl From<mount::target::TargetError> for ProviderError {
    fn from(e: mount::target::TargetError) -> Self {
        ProviderError::Target(Box::new(e))
    }
}

impl From<render::params::ParamError> for ProviderError {
    fn from(e: render::params::ParamError) -> Self {
        ProviderError::Params(Box::new(e))
    }
}

impl From<mount::MountError> for ProviderError {
    fn from(e: mount::MountError) -> Self {
        ProviderError::Mount(Box::new(e))
    }
}

impl ProviderError {
    /// A configuration error (cloud, CA file, identity endpoint).
    pub fn config(e: keyvault::Error) -> Self {
        ProviderError::Config(Box::new(e))
    }
}

impl ProviderError {
    /// The gRPC status code for this failure.
    pub fn code(&self) -> Code {
        match self {
            ProviderError::Attributes(_)
            | ProviderError::Secrets(_)
            | ProviderError::Permission(_)
            | ProviderError::Params(_)
            | ProviderError::Identity(_)
            | ProviderError::Config(_)
            | ProviderError::Target(_) => Code::InvalidArgument,
            ProviderError::Internal(_) => Code::Internal,
            ProviderError::Mount(m) => match m.vault_error() {
                Some(e) => vault_code(e),
                None => Code::FailedPrecondition,
            },
        }
    }

    /// The status the driver receives (and logs): the Azure provider's wording,
    /// "failed to mount objects, error: ...".
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(
            self.code(),
            format!(
                "failed to mount objects, error: {}",
                keyvault::ErrorChain(self)
            ),
        )
    }
}

/// gRPC code for a Key Vault / Entra error (decided by [`keyvault::Error::kind`]).
pub fn vault_code(e: &keyvault::Error) -> Code {
    use keyvault::ErrorKind as K;
    match e.kind() {
        K::NotFound => Code::NotFound,
        K::Forbidden => Code::PermissionDenied,
        K::Unauthenticated => Code::Unauthenticated,
        K::Throttled => Code::ResourceExhausted,
        K::DeadlineExceeded => Code::DeadlineExceeded,
        K::Unavailable => Code::Unavailable,
        K::InvalidRequest | K::InvalidConfig => Code::InvalidArgument,
        K::BadResponse => Code::Internal,
    }
}
