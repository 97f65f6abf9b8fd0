//! Compiles `proto/` (Envoy's ext_authz API, as shipped by envoy-types) into a
//! descriptor set for gRPC server reflection. Message code itself comes
//! pre-generated from the `envoy-types` crate, so no `protoc` is needed.
use prost::Message;

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["envoy/service/auth/v3/external_auth.proto"], ["proto"])
        .expect("proto/ compiles");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set"));
    std::fs::write(
        out.join("ext_authz_descriptor.bin"),
        descriptors.encode_to_vec(),
    )
    .expect("OUT_DIR is writable");
}
