//! `kvbridge-render`: the sans-IO core shared by every delivery path.
//!
//! Flow for a caller (CLI `mount`, CSI provider, FlexVolume driver):
//!
//! 1. [`manifest::parse_class`] (a YAML file) or [`params::Parameters::parse`] (a parameters map,
//!    e.g. the CSI attributes) gives [`params::Parameters`] with the validated
//!    [`params::ObjectSpec`] list.
//! 2. [`render::plan`] says per object what to ask Key Vault: a single fetch, or (version
//!    history) a version listing followed by [`render::history_fetches`].
//! 3. The caller fetches (concurrently) into a [`render::VaultData`].
//! 4. [`render::render`] turns specs + vault data into [`output::OutFile`]s and
//!    [`render::ObjectVersion`]s, byte-compatible with the Azure provider.
//!
//! Publishing the files (the atomic writer) is I/O and lives in the `mount` crate.

pub mod limits;
pub mod manifest;
pub mod output;
pub mod params;
pub mod render;
pub mod trust;
