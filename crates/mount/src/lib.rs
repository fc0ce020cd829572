//! Mounting: the Key Vault objects a SecretProviderClass names, fetched concurrently and rendered
//! to files byte-compatibly with the Azure provider. One implementation for `kvbridge mount`, the
//! CSI provider and the FlexVolume driver.
//!
//! `Parameters` (render) → [`fetch_all`] through a [`Source`] (Key Vault, or a cache in front of
//! it) → `render::render::render` → [`writer::AtomicWriter`].

pub mod cloud_env;
mod error;
mod fetch;
mod source;
pub mod writer;

pub use error::MountError;
pub use fetch::{fetch_all, mount_files, DEFAULT_CONCURRENCY};
pub use source::{Source, VaultSource};
