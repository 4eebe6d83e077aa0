//! Generates the gRPC code and the descriptor set served by reflection.
//!
//! `protox` compiles the .proto files in pure Rust, so building needs no
//! system `protoc`. `compile_fds` does not write the descriptor set itself,
//! so we encode it here for `tonic-reflection`.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTO: &str = "proto/user/v1/user_service.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile([PROTO], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("user_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
