//! The `azure/kv` FlexVolume driver as a standalone executable, to install as
//! `/usr/libexec/kubernetes/kubelet-plugins/volume/exec/azure~kv/kv` (kubelet runs the file
//! named after the driver). Same code as `kvbridge flexvolume`.

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let status = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(provider::flexvolume::run(
            &args,
            &provider::flexvolume::FlexEnv::from_env(),
        )),
        Err(e) => provider::flexvolume::Status::failure(format!("cannot start the runtime: {e}")),
    };
    println!("{}", status.to_json());
    if status.exit_code() == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
