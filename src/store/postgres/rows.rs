//! Row mapping: a `users` row to the domain's `User`.

use sqlx::{postgres::PgRow, Row};

use crate::domain::{Email, StoreError, User, UserId, UserName, UserStatus};

use super::errors::classify;

pub(super) fn user_from_row(row: &PgRow) -> Result<User, StoreError> {
    let decode = |e| classify("decode users row", e);
    let status: String = row.try_get("status").map_err(decode)?;
    Ok(User {
        id: UserId::from_uuid(row.try_get("id").map_err(decode)?),
        email: Email::from_stored(row.try_get("email").map_err(decode)?),
        name: UserName::from_stored(row.try_get("name").map_err(decode)?),
        status: UserStatus::from_stored(&status)
            .ok_or_else(|| StoreError::Internal(format!("users row has status {status:?}")))?,
        roles: row.try_get("roles").map_err(decode)?,
        created_at: row.try_get("created_at").map_err(decode)?,
        updated_at: row.try_get("updated_at").map_err(decode)?,
    })
}
