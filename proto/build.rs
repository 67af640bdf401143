//! Compiles the control protocol with protox (pure Rust, no `protoc` needed).

fn main() -> anyhow::Result<()> {
    let proto = "rtpmanager/v1/rtpmanager.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
