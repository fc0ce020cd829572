//! Generates the v1alpha1 provider API (messages, server and a client for tests) from
//! proto/service.proto. protox compiles the proto in-process, so no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/service.proto");
    let fds = protox::compile(["service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
