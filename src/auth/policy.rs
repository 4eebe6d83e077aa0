//! Which methods need which caller, decided from the request path alone
//! (before any message is decoded). Per-user rules (your own record,
//! status changes) are business rules and live in `crate::domain::Actor`.

/// What a method requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token needed: sign-up, health probes, reflection.
    Public,
    /// A valid token; the domain then checks which user it may touch.
    Authenticated,
    /// A valid token with the `admin` role.
    Admin,
}

const USER_SERVICE: &str = "/user.v1.UserService/";

/// The access rule for a gRPC path `/package.Service/Method`. Anything not
/// listed (including paths we do not serve) needs a token, so a new method
/// is closed until someone decides otherwise.
pub fn access(path: &str) -> Access {
    if path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
    {
        return Access::Public;
    }
    match path.strip_prefix(USER_SERVICE) {
        Some("CreateUser") => Access::Public,
        Some("GetUser" | "UpdateUser" | "UserUpdates") => Access::Authenticated,
        Some("DeleteUser" | "ListUsers" | "BulkCreateUsers" | "WatchUsers") => Access::Admin,
        _ => Access::Authenticated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_rule() {
        let cases = [
            ("/user.v1.UserService/CreateUser", Access::Public),
            ("/user.v1.UserService/GetUser", Access::Authenticated),
            ("/user.v1.UserService/UpdateUser", Access::Authenticated),
            ("/user.v1.UserService/UserUpdates", Access::Authenticated),
            ("/user.v1.UserService/DeleteUser", Access::Admin),
            ("/user.v1.UserService/ListUsers", Access::Admin),
            ("/user.v1.UserService/BulkCreateUsers", Access::Admin),
            ("/user.v1.UserService/WatchUsers", Access::Admin),
            ("/grpc.health.v1.Health/Check", Access::Public),
            ("/grpc.health.v1.Health/Watch", Access::Public),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                Access::Public,
            ),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                Access::Public,
            ),
            ("/user.v1.UserService/NewMethod", Access::Authenticated),
            ("/grpc.health.v1.HealthX/Check", Access::Authenticated),
            ("/", Access::Authenticated),
        ];
        for (path, want) in cases {
            assert_eq!(access(path), want, "{path}");
        }
    }

    #[test]
    fn every_served_method_is_classified_on_purpose() {
        // A method added to the proto must be added to `access` too.
        for (path, _) in crate::grpc::middleware::methods::Catalogue::get().iter() {
            let listed = matches!(
                path.strip_prefix(USER_SERVICE),
                Some(
                    "CreateUser"
                        | "GetUser"
                        | "UpdateUser"
                        | "UserUpdates"
                        | "DeleteUser"
                        | "ListUsers"
                        | "BulkCreateUsers"
                        | "WatchUsers"
                )
            ) || access(path) == Access::Public;
            assert!(listed, "{path} has no explicit rule");
        }
    }
}
