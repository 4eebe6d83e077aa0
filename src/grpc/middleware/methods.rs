//! The methods this server serves, read from the protobuf descriptors that
//! are compiled into the binary (ours, health, reflection), never from a
//! hand-kept list: a new RPC is observed with the right `grpc_type` the
//! moment it is in the proto.

use std::{collections::HashMap, hash::BuildHasherDefault, sync::OnceLock};

use prost::Message as _;

use crate::hash::Fnv1a;

/// The four go-grpc-prometheus `grpc_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ClientStream => "client_stream",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }

    fn of(client_streaming: bool, server_streaming: bool) -> Self {
        match (client_streaming, server_streaming) {
            (false, false) => GrpcType::Unary,
            (true, false) => GrpcType::ClientStream,
            (false, true) => GrpcType::ServerStream,
            (true, true) => GrpcType::BidiStream,
        }
    }
}

/// One RPC, named as the metrics, spans and logs name it.
#[derive(Debug)]
pub struct Method {
    /// `user.v1.UserService`
    pub service: &'static str,
    /// `CreateUser`
    pub method: &'static str,
    /// `user.v1.UserService/CreateUser`: the span name.
    pub full_name: &'static str,
    pub kind: GrpcType,
}

/// A map keyed by request path, as the per-call layers keep theirs.
///
/// Hashed with FNV-1a ([`crate::hash`]): each call looks its path up in
/// two of these. Clients choose only the path looked up, never what goes
/// in: the keys are the catalogue's, fixed at startup.
pub type PathMap<V> = HashMap<&'static str, V, BuildHasherDefault<Fnv1a>>;

/// Every method, by request path (`/user.v1.UserService/CreateUser`).
pub struct Catalogue {
    by_path: PathMap<Method>,
}

impl Catalogue {
    /// The process-wide catalogue. The descriptor sets are constants of the
    /// binary, so this is computed once; the few strings it owns live as
    /// long as the process.
    pub fn get() -> &'static Catalogue {
        static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
        CATALOGUE.get_or_init(|| {
            Catalogue::from_descriptor_sets(&[
                crate::pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ])
        })
    }

    fn from_descriptor_sets(sets: &[&[u8]]) -> Self {
        let mut by_path = PathMap::default();
        for encoded in sets {
            let set = match prost_types::FileDescriptorSet::decode(*encoded) {
                Ok(set) => set,
                Err(err) => {
                    // Embedded at build time, so this means a broken build;
                    // serve on, without metrics for those methods.
                    tracing::error!(error = %err, "undecodable descriptor set");
                    continue;
                }
            };
            for file in &set.file {
                for service in &file.service {
                    let service_name: &'static str =
                        leak(format!("{}.{}", file.package(), service.name()));
                    for m in &service.method {
                        let method: &'static str = leak(m.name().to_owned());
                        let full_name = leak(format!("{service_name}/{method}"));
                        let path = leak(format!("/{full_name}"));
                        by_path.insert(
                            path,
                            Method {
                                service: service_name,
                                method,
                                full_name,
                                kind: GrpcType::of(m.client_streaming(), m.server_streaming()),
                            },
                        );
                    }
                }
            }
        }
        Self { by_path }
    }

    /// The method a request path names, if we serve it.
    pub fn lookup(&self, path: &str) -> Option<&Method> {
        self.by_path.get(path)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Method)> {
        self.by_path.iter().map(|(path, m)| (*path, m))
    }
}

/// Names live for the whole process (metric labels and span names borrow
/// them on every call); leaked once, from the one-time catalogue.
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_every_method_we_serve_with_its_type() {
        let c = Catalogue::get();
        let kind = |path: &str| c.lookup(path).map(|m| m.kind);
        assert_eq!(kind("/user.v1.UserService/GetUser"), Some(GrpcType::Unary));
        assert_eq!(
            kind("/user.v1.UserService/ListUsers"),
            Some(GrpcType::ServerStream)
        );
        assert_eq!(
            kind("/user.v1.UserService/BulkCreateUsers"),
            Some(GrpcType::ClientStream)
        );
        assert_eq!(
            kind("/user.v1.UserService/UserUpdates"),
            Some(GrpcType::BidiStream)
        );
        assert_eq!(kind("/grpc.health.v1.Health/Check"), Some(GrpcType::Unary));
        assert_eq!(
            kind("/grpc.health.v1.Health/Watch"),
            Some(GrpcType::ServerStream)
        );
        assert_eq!(
            kind("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Some(GrpcType::BidiStream)
        );
        assert_eq!(
            kind("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Some(GrpcType::BidiStream)
        );
        assert_eq!(kind("/user.v1.UserService/Nope"), None);
        let m = c.lookup("/user.v1.UserService/CreateUser").unwrap();
        assert_eq!(m.service, "user.v1.UserService");
        assert_eq!(m.method, "CreateUser");
        assert_eq!(m.full_name, "user.v1.UserService/CreateUser");
        let ours = c
            .iter()
            .filter(|(_, m)| m.service == crate::pb::SERVICE_NAME)
            .count();
        assert_eq!(ours, 8, "every UserService RPC");
    }
}
