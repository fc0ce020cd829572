//! Mounting: the Key Vault objects a SecretProviderClass names, fetched concurrently and rendered
//! to files byte-compatibly with the Azure provider. One implementation for `kvbridge mount`, the
//! CSI provider and the FlexVolume driver, and the one place that turns what a user configured
//! into a vault and a credential:
//!
//! - [`target`]: the cloud and vault URL of a class (`cloudName`, `cloudEnvFileName` read
//!   through [`cloud_env`], a component default, command-line overrides);
//! - [`identity`]: which identity reads the vault (class parameters, handed-in tokens and
//!   secrets, the environment);
//! - [`clients`]: one Key Vault client per identity, shared.
//!
//! `Parameters` (render) → [`fetch_all`] through a [`Source`] (Key Vault, or a cache in front of
//! it) → `render::render::render` → [`writer::AtomicWriter`].

pub mod clients;
pub mod cloud_env;
mod error;
mod fetch;
pub mod identity;
mod source;
pub mod target;
pub mod trust;
pub mod writer;

pub use error::MountError;
pub use fetch::{fetch_all, mount_files, DEFAULT_CONCURRENCY};
pub use source::{Source, VaultSource};
