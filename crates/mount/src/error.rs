use render::render::FetchKey;

/// Why a mount failed. Display names the object (type/name/version) and never carries values;
/// the Key Vault error is the `source()` (print the chain, e.g. anyhow's `{:#}`, to see it).
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{}", describe(.key))]
    Vault {
        key: FetchKey,
        #[source]
        source: keyvault::Error,
    },
    #[error("listing versions of {kind}/{name}")]
    Versions {
        kind: &'static str,
        name: String,
        #[source]
        source: keyvault::Error,
    },
    #[error(transparent)]
    Render(#[from] render::render::RenderError),
    /// A worker task ended abnormally (a bug, or the runtime shutting down).
    #[error("{0} was interrupted")]
    Interrupted(&'static str),
}

impl MountError {
    /// The Key Vault error behind this failure, if any.
    pub fn vault_error(&self) -> Option<&keyvault::Error> {
        match self {
            MountError::Vault { source, .. } | MountError::Versions { source, .. } => Some(source),
            MountError::Render(_) | MountError::Interrupted(_) => None,
        }
    }
}

fn describe(key: &FetchKey) -> String {
    format!(
        "{}/{} (version {})",
        key.object_type.object_type(),
        key.name,
        key.version.as_deref().unwrap_or("latest")
    )
}
