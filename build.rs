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
    // sqlx::migrate! embeds migrations/ at compile time.
    println!("cargo:rerun-if-changed=migrations");

    // user_service_build_info{git_sha}: from the environment (CI, image
    // builds) or the checkout; "unknown" outside one.
    println!("cargo:rerun-if-env-changed=USER_SERVICE_GIT_SHA");
    println!("cargo:rerun-if-changed=.git/HEAD");
    if env::var("USER_SERVICE_GIT_SHA").is_err() {
        let sha = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok());
        if let Some(sha) = sha {
            println!("cargo:rustc-env=USER_SERVICE_GIT_SHA={}", sha.trim());
        }
    }

    let fds = protox::compile([PROTO], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("user_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
