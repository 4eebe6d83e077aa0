//! Compiles the service's own proto (the one contract every benchmarked
//! server speaks) with protox, so no system protoc is needed.

const PROTO: &str = "../../proto/user/v1/user_service.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto");
    let fds = protox::compile([PROTO], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
