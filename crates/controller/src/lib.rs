//! `kvbridge-controller`: the akv2k8s-compatible `AzureKeyVaultSecret` resource and the
//! controller that syncs Key Vault objects into Kubernetes Secrets and ConfigMaps.

pub mod crd;
pub mod eventgrid;
pub mod events;
pub mod http;
pub mod identity;
pub mod lease;
pub mod mapping;
pub mod metrics;
pub mod objects;
pub mod reconcile;
pub mod restart;
pub mod run;
pub mod spc;
pub mod write;
