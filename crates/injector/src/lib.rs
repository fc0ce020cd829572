//! `kvbridge-injector`: Key Vault values injected at container start, nothing stored in
//! Kubernetes.
//!
//! - [`placeholder`]: `<akvs-name>@azurekeyvault[?<query>]` (akv2k8s's syntax);
//! - [`spec`]: what the webhook hands a container ([`spec::SPEC_ENV`]), so that the container
//!   needs no Kubernetes API access;
//! - [`query`]: which value a query selects (through the controller's mapping);
//! - [`env`]: `kvbridge env`, resolving every placeholder concurrently and `exec`ing the command
//!   with the values in its environment only;
//! - [`registry`]: image entrypoints from OCI registries, for containers without `command`;
//! - [`lookup`]: what the webhook reads from the cluster for a pod (pull secrets, ServiceAccount)
//!   and fills in before mutating it.

pub mod admission;
pub mod env;
pub mod lookup;
pub mod mutate;
pub mod placeholder;
pub mod query;
pub mod registry;
pub mod spec;
pub mod tls;
pub mod trust;
pub mod trust_mutate;
pub mod webhook;
