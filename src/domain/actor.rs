//! Who is calling, and the per-user rules that depend on it.
//!
//! The transport edge authenticates the caller (`crate::auth`) and decides
//! which methods need a caller at all; the rules that depend on *which*
//! user is touched (your own record, status changes) live here, next to
//! the use cases they guard.

use std::sync::Arc;

use super::{DomainError, UserId};

/// The role that may read and change every user.
pub const ADMIN_ROLE: &str = "admin";

/// The caller of a use case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// Authentication is turned off: no per-user restriction applies.
    Unrestricted,
    /// An authenticated user: the token's subject and roles.
    User {
        /// The token's `sub`; it is a user's id for ordinary users, and may
        /// be anything (a service account, an operator's login) for admins.
        /// Shared, so handing a cached caller to a call copies no text.
        subject: Arc<str>,
        admin: bool,
    },
}

impl Actor {
    pub fn user(subject: impl Into<Arc<str>>, roles: &[String]) -> Self {
        Actor::User {
            subject: subject.into(),
            admin: roles.iter().any(|r| r == ADMIN_ROLE),
        }
    }

    /// Unrestricted, or holding the `admin` role.
    pub fn is_admin(&self) -> bool {
        match self {
            Actor::Unrestricted => true,
            Actor::User { admin, .. } => *admin,
        }
    }

    /// Whether the caller is this user. Ids are compared parsed, so case
    /// and hyphenation of the UUID do not matter.
    fn is(&self, id: UserId) -> bool {
        match self {
            Actor::Unrestricted => false,
            Actor::User { subject, .. } => UserId::parse("sub", subject).is_ok_and(|own| own == id),
        }
    }

    /// Reading or changing `id` needs to be that user or an admin.
    pub(super) fn check_access(&self, id: UserId) -> Result<(), DomainError> {
        if self.is_admin() || self.is(id) {
            Ok(())
        } else {
            Err(DomainError::PermissionDenied(
                "you may only read or change your own user".into(),
            ))
        }
    }

    /// Activating or deactivating a user is an admin's decision, also for
    /// one's own record.
    pub(super) fn check_status_change(&self) -> Result<(), DomainError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(DomainError::PermissionDenied(
                "only an admin may change a user's status".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_id_admin_and_unrestricted() {
        let id = UserId::generate();
        let other = UserId::generate();
        let me = Actor::user(id.to_string().to_uppercase(), &["user".into()]);
        assert!(me.check_access(id).is_ok());
        assert!(matches!(
            me.check_access(other),
            Err(DomainError::PermissionDenied(_))
        ));
        assert!(me.check_status_change().is_err());
        let admin = Actor::user("ops@example.com", &["user".into(), ADMIN_ROLE.into()]);
        assert!(admin.check_access(other).is_ok());
        assert!(admin.check_status_change().is_ok());
        assert!(Actor::Unrestricted.check_access(other).is_ok());
        assert!(Actor::Unrestricted.check_status_change().is_ok());
        // A subject that is not a user id owns nothing.
        assert!(Actor::user("not-a-uuid", &[]).check_access(id).is_err());
    }
}
