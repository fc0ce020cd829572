//! One module per subcommand: flags, then a call into the library crate that does the work.

pub mod dev_vault;
