//! `kvbridge-provider`: a drop-in for the Azure provider of the Kubernetes Secrets Store CSI
//! Driver, and the legacy `azure/kv` FlexVolume driver.
//!
//! - [`proto`]: the driver's `v1alpha1.CSIDriverProvider` API (generated from
//!   `proto/service.proto`, same field numbers as the driver).
//! - [`service::ProviderService`]: `Version` and `Mount`. Mount parses the attributes with
//!   `render::params::Parameters` (the same code as `kvbridge mount`), picks the identity and
//!   cloud with the shared layer in `mount` (`mount::identity`, `mount::target`), fetches through the per-node [`cache`] in front of Key Vault with
//!   `mount::mount_files`, and returns the rendered files.
//! - [`cache::NodeCache`]: per node, keyed by (vault, identity, object type, name, version);
//!   concurrent identical fetches are coalesced; `latest` is reused only within a short TTL.
//! - [`gate`]: what a Mount's length prefix decides before its body is read (oversized:
//!   refused unread; large: one at a time, at a bounded byte rate).
//! - [`server`]: the unix-socket gRPC server (+ gRPC health), `/healthz` and `/metrics`.
//! - [`metrics`]: Prometheus text on `prometheus-client` (Key Vault latency by object type and
//!   outcome, gRPC latency by method and code, cache results); no object names or values in labels.
//! - [`flexvolume`]: `init` / `mount DIR JSON` / `unmount DIR`.

pub mod authority;
pub mod cache;
pub mod config;
pub mod error;
pub mod flexvolume;
pub mod gate;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod service;

/// The driver's provider API, `package v1alpha1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("v1alpha1");
}

pub use config::{CacheConfig, ProviderConfig};
pub use error::ProviderError;
pub use service::ProviderService;

/// Runtime name returned by `Version`.
pub const RUNTIME_NAME: &str = "kvbridge";
/// Runtime version returned by `Version` (semver).
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");
pub use mount::identity::WORKLOAD_IDENTITY_AUDIENCE;
