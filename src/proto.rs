//! Generated code for the wire contract in proto/. Nothing else lives here: the rest
//! of the crate speaks domain types, and `api::convert` is the one place that knows
//! both.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v1 {
    tonic::include_proto!("obhost.v1");
    include!(concat!(env!("OUT_DIR"), "/obhost.v1.serde.rs"));
}

pub mod testing {
    pub mod v1 {
        tonic::include_proto!("obhost.testing.v1");
        include!(concat!(env!("OUT_DIR"), "/obhost.testing.v1.serde.rs"));
    }
}

/// Encoded descriptors for server reflection.
pub const V1_DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/obhost_v1_descriptor.bin"));
pub const ALL_DESCRIPTOR: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/obhost_all_descriptor.bin"));
