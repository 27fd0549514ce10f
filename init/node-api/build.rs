//! Generates the node API's messages, client and server from proto/node.proto (with Debian's
//! protoc, which scripts/setup installs).

fn main() {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .compile_protos(&["proto/node.proto"], &["proto"])
        .expect("compiling proto/node.proto");
}
