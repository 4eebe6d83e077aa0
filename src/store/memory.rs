//! The default store: everything in one process, nothing to install.
//! Each replica has its own users, so use it for development and tests only.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use super::{StoreError, UserStore};
use crate::domain::{EventKind, NewUser, User, UserEvent, UserId, UserPatch};

pub struct MemoryStore {
    inner: RwLock<Inner>,
    events: broadcast::Sender<UserEvent>,
}

#[derive(Default)]
struct Inner {
    users: BTreeMap<UserId, Stored>,
    /// Lower-cased email -> id. Kept under the same lock as `users`, so the
    /// uniqueness check and the insert are one atomic step.
    emails: HashMap<String, UserId>,
}

impl Inner {
    /// Inserts `new` unless its email is taken (the check and the insert
    /// happen under one lock).
    fn insert(&mut self, new: NewUser) -> Result<User, StoreError> {
        let key = new.email.key();
        if self.emails.contains_key(&key) {
            return Err(StoreError::EmailTaken);
        }
        let user = new.to_user();
        self.emails.insert(key, user.id);
        self.users.insert(
            user.id,
            Stored {
                user: user.clone(),
                password_hash: new.password_hash,
            },
        );
        Ok(user)
    }
}

struct Stored {
    user: User,
    /// Kept as a real store would keep it, though nothing reads it back yet.
    #[allow(dead_code)]
    password_hash: String,
}

impl MemoryStore {
    /// `watch_buffer` is how many events a slow subscriber may fall behind
    /// before it is told it lagged.
    pub fn new(watch_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(watch_buffer.max(1));
        Self {
            inner: RwLock::new(Inner::default()),
            events,
        }
    }

    // A panic cannot happen while the lock is held (no user code runs under
    // it), but if one ever did, the maps are still consistent: every write
    // below completes before anything that could fail. So poisoning is
    // ignored instead of turning one bug into an outage.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts a user from `store.seed_file` (no event: nobody watches yet).
    pub(super) fn insert_seed(&self, new: NewUser) -> Result<(), StoreError> {
        let mut inner = self.write();
        if inner.users.contains_key(&new.id) {
            return Err(StoreError::Internal(format!("id {} appears twice", new.id)));
        }
        inner.insert(new).map(|_| ())
    }

    /// Publishes while the write lock is still held, so subscribers see
    /// changes in the order they were applied.
    fn publish(&self, kind: EventKind, user: &User, occurred_at: OffsetDateTime) {
        // No subscriber is not an error.
        let _ = self.events.send(UserEvent {
            kind,
            user: user.clone(),
            occurred_at,
        });
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create(&self, new: NewUser) -> Result<User, StoreError> {
        let mut inner = self.write();
        let user = inner.insert(new)?;
        self.publish(EventKind::Created, &user, user.created_at);
        Ok(user)
    }

    async fn get(&self, id: UserId) -> Result<User, StoreError> {
        self.read()
            .users
            .get(&id)
            .map(|s| s.user.clone())
            .ok_or(StoreError::NotFound(id))
    }

    async fn update(
        &self,
        id: UserId,
        patch: UserPatch,
        at: OffsetDateTime,
    ) -> Result<User, StoreError> {
        let mut inner = self.write();
        let stored = inner.users.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        if let Some(name) = patch.name {
            stored.user.name = name;
        }
        if let Some(status) = patch.status {
            stored.user.status = status;
        }
        stored.user.updated_at = at;
        let user = stored.user.clone();
        self.publish(EventKind::Updated, &user, at);
        Ok(user)
    }

    async fn delete(&self, id: UserId) -> Result<User, StoreError> {
        let mut inner = self.write();
        let stored = inner.users.remove(&id).ok_or(StoreError::NotFound(id))?;
        inner.emails.remove(&stored.user.email.key());
        self.publish(EventKind::Deleted, &stored.user, crate::domain::now());
        Ok(stored.user)
    }

    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .read()
            .users
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, s)| s.user.clone())
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<UserEvent> {
        self.events.subscribe()
    }

    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
