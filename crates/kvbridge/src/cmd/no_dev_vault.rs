//! Stand-in for `kvbridge dev-vault` in builds without the `dev-vault` feature (production
//! images): the command exists and says how to get it.

use std::path::{Path, PathBuf};

use keyvault::Cloud;

/// What to do instead.
const MISSING: &str = "this kvbridge was built without the dev vault (cargo feature `dev-vault`, on by default); build one with it: cargo build -p kvbridge (or cargo install --path crates/kvbridge)";

#[derive(clap::Args)]
pub struct Args {
    /// (not built in)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    _ignored: Vec<String>,
}

pub async fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("dev-vault: {MISSING}")
}

/// See the `dev-vault` build; never constructed here.
pub struct Embedded {
    pub cloud: Cloud,
    pub ca: PathBuf,
    pub url: String,
    pub client_id: &'static str,
    pub client_secret: &'static str,
}

impl Embedded {
    pub async fn start(_seed: &Path, _state: &Path) -> anyhow::Result<Embedded> {
        anyhow::bail!("--dev-vault: {MISSING}")
    }

    pub async fn stop(self) {}
}
