//! prost <-> domain conversions. The only place that knows both.

use prost_types::Timestamp;
use time::OffsetDateTime;

use crate::{
    domain::{self, EventKind, RequestedStatus, UpdateUser, UserStatus},
    pb,
};

pub fn timestamp(at: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: at.unix_timestamp(),
        // Always in 0..1e9, so the cast cannot truncate.
        nanos: at.nanosecond() as i32,
    }
}

pub fn user(user: domain::User) -> pb::User {
    pb::User {
        id: user.id.to_string(),
        email: user.email.as_str().to_owned(),
        name: user.name.as_str().to_owned(),
        status: status(user.status) as i32,
        created_at: Some(timestamp(user.created_at)),
        updated_at: Some(timestamp(user.updated_at)),
        roles: user.roles,
    }
}

pub fn status(status: UserStatus) -> pb::UserStatus {
    match status {
        UserStatus::Active => pb::UserStatus::Active,
        UserStatus::Inactive => pb::UserStatus::Inactive,
    }
}

pub fn requested_status(raw: i32) -> RequestedStatus {
    match pb::UserStatus::try_from(raw) {
        Ok(pb::UserStatus::Unspecified) => RequestedStatus::Unset,
        Ok(pb::UserStatus::Active) => RequestedStatus::Set(UserStatus::Active),
        Ok(pb::UserStatus::Inactive) => RequestedStatus::Set(UserStatus::Inactive),
        Err(_) => RequestedStatus::Unknown(raw),
    }
}

pub fn update_request(request: pb::UpdateUserRequest) -> UpdateUser {
    UpdateUser {
        status: requested_status(request.status),
        user_id: request.user_id,
        name: request.name,
        paths: request.update_mask.map(|m| m.paths).unwrap_or_default(),
    }
}

pub fn event(event: domain::UserEvent) -> pb::UserEvent {
    let kind = match event.kind {
        EventKind::Created => pb::UserEventType::Created,
        EventKind::Updated => pb::UserEventType::Updated,
        EventKind::Deleted => pb::UserEventType::Deleted,
    };
    pb::UserEvent {
        r#type: kind as i32,
        user: Some(user(event.user)),
        occurred_at: Some(timestamp(event.occurred_at)),
        revision: event.revision,
    }
}
