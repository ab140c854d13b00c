//! Generated code of every contract under `proto/`, one module per package.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod registry {
    pub mod v1 {
        tonic::include_proto!("devcycle.registry.v1");
    }
}

pub mod scheduler {
    pub mod v1 {
        tonic::include_proto!("devcycle.scheduler.v1");
    }
}

pub mod executor {
    pub mod v1 {
        tonic::include_proto!("devcycle.executor.v1");
    }
}

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("devcycle.auth.v1");
    }
}

pub mod messages {
    pub mod v1 {
        tonic::include_proto!("devcycle.messages.v1");
    }
}

/// Encoded `FileDescriptorSet` of every contract and its imports, for
/// reflection and for tests that enumerate methods.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Every RPC in the contracts as its full path, `/package.Service/Method`.
pub fn all_methods() -> Vec<String> {
    use prost::Message;
    let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("the descriptor set is produced by build.rs and always decodes");
    let mut out = Vec::new();
    for file in fds.file {
        let package = file.package().to_owned();
        if !package.starts_with("devcycle.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                out.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    out
}
