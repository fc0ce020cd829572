//! `kvbridge flexvolume init|mount DIR JSON|unmount DIR`: the `azure/kv` FlexVolume driver.
//! kubelet reads the JSON status on stdout; node settings come from the environment
//! (KVBRIDGE_CLOUD_ENV_FILE, KVBRIDGE_CA_FILE, KVBRIDGE_IMDS_ENDPOINT, KVBRIDGE_FLEXVOLUME_TMPFS).

#[derive(clap::Args)]
pub struct Args {
    /// init | mount <mount dir> <json options> | unmount <mount dir>
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    call: Vec<String>,
}

/// Prints the status and returns an error (exit 1) unless it is Success.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let status =
        provider::flexvolume::run(&args.call, &provider::flexvolume::FlexEnv::from_env()).await;
    println!("{}", status.to_json());
    if status.exit_code() != 0 {
        anyhow::bail!("{}", status.message.as_deref().unwrap_or(status.status));
    }
    Ok(())
}
