//! Generates the gRPC code and the reflection descriptor set from `proto/` with protox, so that
//! building pgway needs no system `protoc`.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["pgway/v1/pgway.proto"], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("pgway_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Requests that don't decode are INVALID_ARGUMENT, not INTERNAL (see src/codec.rs).
        .codec_path("crate::grpc::codec::PgwayCodec")
        .compile_fds(fds)?;
    Ok(())
}
