//! Compiles `protos/dispersy.proto` with protox (pure Rust): no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    let descriptors = protox::compile(["protos/dispersy.proto"], ["protos"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
