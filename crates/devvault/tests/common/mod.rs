//! Test harness: the workspace's in-process dev vault ([`testenv::vault::DevVault`]) on a free
//! loopback port, with an HTTPS client that trusts only its CA.
#![allow(dead_code)]

use std::path::Path;

#[allow(unused_imports)]
pub use testenv::vault::{https_client as client_for, DevVault as Dv};

pub async fn start(dir: &Path, seed: Option<&Path>) -> Dv {
    Dv::start(dir, seed).await
}

pub async fn start_with(
    dir: &Path,
    seed: Option<&Path>,
    f: impl FnOnce(&mut devvault::Options),
) -> Dv {
    Dv::start_with(dir, seed, f).await
}
