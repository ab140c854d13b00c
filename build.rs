//! Compiles `proto/` with protox (no system `protoc`) into Rust modules and an
//! encoded descriptor set for gRPC reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "devcycle/registry/v1/registry.proto",
    "devcycle/scheduler/v1/scheduler.proto",
    "devcycle/executor/v1/executor.proto",
    "devcycle/auth/v1/auth.proto",
    "devcycle/messages/v1/messages.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // Embedded by `sqlx::migrate!`, which cannot tell cargo on stable Rust.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_files(PROTOS)?
        .file_descriptor_set();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(fds)?;
    Ok(())
}
