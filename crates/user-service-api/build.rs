//! Generates the wire types and stubs from the repository's `proto/`, and
//! the descriptor set the server's reflection serves.
//!
//! `protox` compiles the .proto files in pure Rust, so building needs no
//! system `protoc`. `compile_fds` does not write the descriptor set itself,
//! so we encode it here. Only the stub halves the enabled features ask for
//! are generated (`client`, `server`).

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTO_ROOT: &str = "../../proto";
const PROTO: &str = "../../proto/user/v1/user_service.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}/user");

    let fds = protox::compile([PROTO], [PROTO_ROOT])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("user_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(env::var_os("CARGO_FEATURE_SERVER").is_some())
        // Smaller per-call buffers than tonic's default (src/codec.rs).
        .codec_path("crate::codec::SmallBufferCodec")
        .compile_fds(fds)?;
    Ok(())
}
