//! The use cases: validate, hash, store, publish. Transport-neutral: the
//! gRPC edge hands in raw request fields and gets domain values back.
//!
//! This file holds the service and its single-user and listing operations;
//! the streaming ones are beside it: `bulk.rs` (BulkCreateUsers),
//! `watch.rs` (the change feed), and `update.rs` checks update requests.

use std::sync::Arc;

use futures_util::{stream, Stream, StreamExt};

use super::{
    now, Actor, DomainError, Email, NewUser, Password, PasswordHasher, UpdateUser, User, UserId,
    UserName, UserStatus, UserStore, ValidationError, DEFAULT_ROLE,
};

/// Tunables of the use cases (from the `limits` config section).
#[derive(Debug, Clone)]
pub struct UserServiceLimits {
    /// Users fetched from the store per round trip while streaming `ListUsers`.
    pub list_batch: usize,
    /// Items accepted per `BulkCreateUsers` stream.
    pub bulk_max_items: usize,
}

/// `ListUsers`' request checked: the id to list after (the page token) and
/// how many users at most (`usize::MAX` for a page size of 0).
pub fn list_position(
    page_size: i32,
    page_token: &str,
) -> Result<(Option<UserId>, usize), ValidationError> {
    let mut errors = ValidationError::default();
    if page_size < 0 {
        errors.add("page_size", "must not be negative (0 means all users)");
    }
    let after = if page_token.is_empty() {
        None
    } else {
        errors.check(UserId::parse("page_token", page_token).map_err(|_| {
            ValidationError::single("page_token", "must be the id of the last user received")
        }))
    };
    errors.into_result()?;
    let remaining = match usize::try_from(page_size) {
        Ok(0) | Err(_) => usize::MAX,
        Ok(n) => n,
    };
    Ok((after, remaining))
}

/// What hashing does when its queue is full.
#[derive(Debug, Clone, Copy)]
enum Queue {
    Wait,
    FailFast,
}

#[derive(Clone)]
pub struct UserService {
    pub(super) store: Arc<dyn UserStore>,
    pub(super) hasher: PasswordHasher,
    pub(super) limits: UserServiceLimits,
}

impl UserService {
    pub fn new(
        store: Arc<dyn UserStore>,
        hasher: PasswordHasher,
        limits: UserServiceLimits,
    ) -> Self {
        Self {
            store,
            hasher,
            limits,
        }
    }

    /// Validates every field (reporting all violations at once) and hashes
    /// the password: the slow, parallelisable half of creating a user.
    /// Waits for room in the hashing queue (BulkCreateUsers: each stream
    /// hashes only a few items ahead).
    pub async fn prepare(
        &self,
        email: &str,
        name: &str,
        password: String,
    ) -> Result<NewUser, DomainError> {
        self.prepare_with(email, name, password, Queue::Wait).await
    }

    async fn prepare_with(
        &self,
        email: &str,
        name: &str,
        password: String,
        queue: Queue,
    ) -> Result<NewUser, DomainError> {
        let mut errors = ValidationError::default();
        let email = errors.check(Email::parse(email));
        let name = errors.check(UserName::parse(name));
        let password = errors.check(Password::parse(password));
        let (Some(email), Some(name), Some(password)) = (email, name, password) else {
            return Err(errors.into());
        };
        let password_hash = match queue {
            Queue::Wait => self.hasher.hash(password).await?,
            Queue::FailFast => self.hasher.try_hash(password).await?,
        };
        Ok(NewUser {
            id: UserId::generate(),
            email,
            name,
            password_hash,
            status: UserStatus::Active,
            roles: vec![DEFAULT_ROLE.to_owned()],
            created_at: now(),
        })
    }

    /// Stores a prepared user: the fast half, where uniqueness is decided.
    pub async fn insert(&self, user: NewUser) -> Result<User, DomainError> {
        Ok(self.store.create(user).await?)
    }

    pub async fn create(
        &self,
        email: &str,
        name: &str,
        password: String,
    ) -> Result<User, DomainError> {
        // One sign-up is one hash: with the queue full it is refused at once
        // (RESOURCE_EXHAUSTED) rather than left waiting with its request.
        let user = self
            .prepare_with(email, name, password, Queue::FailFast)
            .await?;
        self.insert(user).await
    }

    /// One user; `actor` must be that user or an admin. The permission is
    /// checked before the lookup, so a denied caller cannot learn whether
    /// an id exists.
    pub async fn get(&self, actor: &Actor, user_id: &str) -> Result<User, DomainError> {
        let id = UserId::parse("user_id", user_id)?;
        actor.check_access(id)?;
        Ok(self.store.get(id).await?)
    }

    /// Changes a user; `actor` must be that user or an admin, and only an
    /// admin may change the status.
    pub async fn update(&self, actor: &Actor, request: UpdateUser) -> Result<User, DomainError> {
        let (id, patch) = request.validate()?;
        actor.check_access(id)?;
        if patch.status.is_some() {
            actor.check_status_change()?;
        }
        Ok(self.store.update(id, patch, now()).await?)
    }

    pub async fn delete(&self, user_id: &str) -> Result<User, DomainError> {
        let id = UserId::parse("user_id", user_id)?;
        Ok(self.store.delete(id).await?)
    }

    /// Users ordered by id, strictly after `page_token`, at most `page_size`
    /// (0 = all). Validation happens now; the users are read lazily, one
    /// batch per round trip as the consumer asks for more, so memory stays
    /// bounded for any table size and a dropped stream stops the reads.
    pub fn list(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<impl Stream<Item = Result<User, DomainError>> + Send + 'static, DomainError> {
        let (after, remaining) = list_position(page_size, page_token)?;
        let store = Arc::clone(&self.store);
        let batch = self.limits.list_batch.max(1);
        struct Cursor {
            after: Option<UserId>,
            remaining: usize,
            done: bool,
        }
        let pages = stream::unfold(
            Cursor {
                after,
                remaining,
                done: false,
            },
            move |mut cursor| {
                let store = Arc::clone(&store);
                async move {
                    if cursor.done || cursor.remaining == 0 {
                        return None;
                    }
                    let want = batch.min(cursor.remaining);
                    match store.list_after(cursor.after, want).await {
                        Ok(users) => {
                            cursor.done = users.len() < want;
                            cursor.remaining -= users.len();
                            cursor.after = users.last().map(|u| u.id).or(cursor.after);
                            let items: Vec<Result<User, DomainError>> =
                                users.into_iter().map(Ok).collect();
                            Some((stream::iter(items), cursor))
                        }
                        Err(err) => {
                            cursor.done = true;
                            Some((stream::iter(vec![Err(err.into())]), cursor))
                        }
                    }
                }
            },
        );
        Ok(pages.flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::test_support::fields;

    #[test]
    fn a_page_token_is_an_id_and_a_page_size_of_zero_is_all() {
        let id = UserId::generate();
        assert_eq!(
            list_position(0, &id.to_string()).unwrap(),
            (Some(id), usize::MAX)
        );
        assert_eq!(list_position(3, "").unwrap(), (None, 3));
        let err = list_position(-1, "not-an-id").unwrap_err();
        assert_eq!(fields(err), ["page_size", "page_token"]);
    }
}
