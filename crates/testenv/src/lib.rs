//! A real Kubernetes control plane for kvbridge's tests.
//!
//! `tests/k8s/build.sh` builds `etcd`, `kube-apiserver` and `secrets-store-csi-driver` from their
//! published Go modules into a cache directory ([`Layout`]). This crate starts etcd and
//! kube-apiserver once per test binary ([`control_plane`]), hands each test a [`kube::Client`] and
//! a kubeconfig file, installs CRDs, creates a namespace per test, and starts the real Secrets
//! Store CSI Driver ([`CsiDriver`]) with a CSI client to drive it as kubelet does.
//!
//! Every child process runs in its own process group with `PR_SET_PDEATHSIG` (SIGKILL), set from
//! a thread that lives as long as the test binary: when the binary exits (or is killed), its
//! children die with it. Per-test processes ([`ChildGuard`]) are killed when dropped, also while a
//! panicking test unwinds; the shared control plane and its scratch directory are removed when the
//! test binary exits, and scratch directories of test binaries that died are removed on the next
//! start.
//!
//! It also starts the dev vault for tests ([`vault::DevVault`] in-process,
//! [`vault::DevVaultProcess`] as `kvbridge dev-vault`) and signs the JWTs tests need ([`jwt`]) makes certificate chains ([`chain`])
//! runs a private image registry ([`registry`]) and registers admission webhooks ([`webhook`]):
//! the one test-support crate of the workspace.
//!
//! Tests are skipped (with a message on the terminal) only when the binaries are absent **and**
//! `KVBRIDGE_TESTENV=off`; otherwise a missing binary fails the test with the command to run.

pub mod certs;
pub mod chain;
mod controlplane;
pub mod csi;
mod error;
pub mod jwt;
mod layout;
pub mod process;
pub mod rbac;
pub mod registry;
pub mod vault;
pub mod webhook;

pub use controlplane::{control_plane, shared, ControlPlane};
pub use csi::{CsiDriver, CsiDriverOptions, PodRef};
pub use error::Error;
pub use layout::{version, Layout};
pub use process::ChildGuard;
