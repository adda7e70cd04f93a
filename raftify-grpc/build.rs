//! Compiles `proto/raftify.proto` with protox (a pure-Rust protobuf
//! compiler, no system `protoc`) and generates the tonic service and prost
//! messages from the resulting descriptor set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raftify.proto");
    let fds = protox::compile(["raftify.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".raftify.v1.SnapshotChunk.data")
        .bytes(".raftify.v1.SnapshotFileChunk.data")
        .compile_fds(fds)?;
    Ok(())
}
