//! UpdateUser: the request as it came off the wire, and its check into an
//! id and a patch (which fields the mask selects, and their values).

use super::{UserId, UserName, UserPatch, UserStatus, ValidationError};

/// The status an update asks for, as it came off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedStatus {
    /// Not set (the wire's UNSPECIFIED).
    Unset,
    Set(UserStatus),
    /// A value this version of the contract does not know.
    Unknown(i32),
}

/// An update request, before validation.
#[derive(Debug, Clone)]
pub struct UpdateUser {
    pub user_id: String,
    pub name: String,
    pub status: RequestedStatus,
    /// `update_mask` paths; empty means "every field that is set".
    pub paths: Vec<String>,
}

impl UpdateUser {
    /// The id and the patch, or every violation at once: what `update`
    /// checks before it looks at the caller or the store.
    pub fn validate(&self) -> Result<(UserId, UserPatch), ValidationError> {
        let mut errors = ValidationError::default();
        let id = errors.check(UserId::parse("user_id", &self.user_id));
        let patch = errors.check(patch_from(self));
        match (id, patch) {
            (Some(id), Some(patch)) => Ok((id, patch)),
            _ => Err(errors),
        }
    }
}

const MASK_NAME: &str = "name";
const MASK_STATUS: &str = "status";

fn patch_from(request: &UpdateUser) -> Result<UserPatch, ValidationError> {
    let mut errors = ValidationError::default();
    let (set_name, set_status) = if request.paths.is_empty() {
        (
            !request.name.is_empty(),
            request.status != RequestedStatus::Unset,
        )
    } else {
        let mut name = false;
        let mut status = false;
        for path in &request.paths {
            match path.as_str() {
                MASK_NAME => name = true,
                MASK_STATUS => status = true,
                other => errors.add(
                    "update_mask",
                    format!("unknown path {other:?}; allowed: \"name\", \"status\""),
                ),
            }
        }
        (name, status)
    };
    if !set_name && !set_status && errors.is_empty() {
        errors.add("update_mask", "nothing to update: set name and/or status");
    }
    let name = if set_name {
        errors.check(UserName::parse(&request.name))
    } else {
        None
    };
    let status = if set_status {
        match request.status {
            RequestedStatus::Set(status) => Some(status),
            RequestedStatus::Unset => {
                errors.add(
                    "status",
                    "must be USER_STATUS_ACTIVE or USER_STATUS_INACTIVE",
                );
                None
            }
            RequestedStatus::Unknown(value) => {
                errors.add("status", format!("unknown status value {value}"));
                None
            }
        }
    } else {
        None
    };
    errors.into_result()?;
    Ok(UserPatch { name, status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_support::fields;

    fn update(name: &str, status: RequestedStatus, paths: &[&str]) -> UpdateUser {
        UpdateUser {
            user_id: UserId::generate().to_string(),
            name: name.into(),
            status,
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn update_validation_reports_the_id_and_the_patch_together() {
        let mut request = update("", RequestedStatus::Unset, &["name"]);
        request.user_id = "nope".into();
        assert_eq!(fields(request.validate().unwrap_err()), ["user_id", "name"]);
    }

    #[test]
    fn empty_mask_means_every_field_that_is_set() {
        let p = patch_from(&update("Ada", RequestedStatus::Unset, &[])).unwrap();
        assert_eq!(p.name.unwrap().as_str(), "Ada");
        assert_eq!(p.status, None);
        let p = patch_from(&update("", RequestedStatus::Set(UserStatus::Inactive), &[])).unwrap();
        assert_eq!(p.name, None);
        assert_eq!(p.status, Some(UserStatus::Inactive));
    }

    #[test]
    fn mask_selects_fields_even_if_others_are_set() {
        let p = patch_from(&update(
            "Ada",
            RequestedStatus::Set(UserStatus::Inactive),
            &["status"],
        ))
        .unwrap();
        assert_eq!(p.name, None);
        assert_eq!(p.status, Some(UserStatus::Inactive));
    }

    #[test]
    fn bad_masks_are_rejected_with_the_field_named() {
        assert_eq!(
            fields(patch_from(&update("Ada", RequestedStatus::Unset, &["email"])).unwrap_err()),
            ["update_mask"]
        );
        assert_eq!(
            fields(patch_from(&update("", RequestedStatus::Unset, &[])).unwrap_err()),
            ["update_mask"]
        );
        assert_eq!(
            fields(
                patch_from(&update("", RequestedStatus::Unset, &["name", "status"])).unwrap_err()
            ),
            ["name", "status"]
        );
        assert_eq!(
            fields(patch_from(&update("Ada", RequestedStatus::Unknown(9), &[])).unwrap_err()),
            ["status"]
        );
    }
}
