//! Compiles `joinery/v1/*.proto` with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "joinery/v1/ingest.proto",
        "joinery/v1/query.proto",
        "joinery/v1/audit.proto",
        "joinery/v1/keyholder.proto",
        "joinery/v1/shard.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        // Sorted maps make the encoding of a batch deterministic, so its
        // content digest (the batch id) is reproducible on both sides.
        .btree_map(".")
        .compile_fds(descriptors)?;
    Ok(())
}
