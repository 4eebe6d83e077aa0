//! The default store: everything in one process, nothing to install.
//! Each replica has its own users, so use it for development and tests only.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    ops::Bound,
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::domain::{check_revision, StoreError, StoreHealth, UserStore};
use crate::domain::{EventKind, NewUser, User, UserEvent, UserId, UserPatch};

pub struct MemoryStore {
    inner: RwLock<Inner>,
    events: broadcast::Sender<UserEvent>,
    /// How many changes `changes` keeps (`store.change_retention`).
    retention: usize,
}

#[derive(Default)]
struct Inner {
    users: BTreeMap<UserId, Stored>,
    /// Lower-cased email -> id. Kept under the same lock as `users`, so the
    /// uniqueness check and the insert are one atomic step.
    emails: HashMap<String, UserId>,
    /// The newest changes, oldest first, with consecutive revisions (one
    /// lock orders every write, so there are no gaps): a ring bounded by
    /// `retention`, from which resuming watchers replay.
    changes: VecDeque<UserEvent>,
    /// The revision of the last change (0 before the first).
    revision: u64,
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

/// `store.change_retention`'s default, for stores built in code.
const DEFAULT_RETENTION: usize = 10_000;

impl MemoryStore {
    /// `watch_buffer` is how many events a slow subscriber may fall behind
    /// before it is told it lagged; the default number of changes is kept
    /// for resuming watchers.
    pub fn new(watch_buffer: usize) -> Self {
        Self::with_retention(watch_buffer, DEFAULT_RETENTION)
    }

    /// Like [`MemoryStore::new`], keeping the newest `retention` changes.
    pub fn with_retention(watch_buffer: usize, retention: usize) -> Self {
        let (events, _) = broadcast::channel(watch_buffer.max(1));
        Self {
            inner: RwLock::new(Inner::default()),
            events,
            retention: retention.max(1),
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

    /// Numbers the change, keeps it in the ring and publishes it, all under
    /// the write lock the caller holds: revisions follow the order in which
    /// changes were applied, and a change is in the ring before any
    /// subscriber can see it (what makes replay-then-live gap-free).
    fn publish(
        &self,
        inner: &mut Inner,
        kind: EventKind,
        user: &User,
        occurred_at: OffsetDateTime,
    ) {
        inner.revision += 1;
        let event = UserEvent {
            revision: inner.revision,
            kind,
            user: user.clone(),
            occurred_at,
        };
        if inner.changes.len() >= self.retention {
            inner.changes.pop_front();
        }
        inner.changes.push_back(event.clone());
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create(&self, new: NewUser) -> Result<User, StoreError> {
        let mut inner = self.write();
        let user = inner.insert(new)?;
        self.publish(&mut inner, EventKind::Created, &user, user.created_at);
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
        self.publish(&mut inner, EventKind::Updated, &user, at);
        Ok(user)
    }

    async fn delete(&self, id: UserId) -> Result<User, StoreError> {
        let mut inner = self.write();
        let stored = inner.users.remove(&id).ok_or(StoreError::NotFound(id))?;
        inner.emails.remove(&stored.user.email.key());
        self.publish(
            &mut inner,
            EventKind::Deleted,
            &stored.user,
            crate::domain::now(),
        );
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

    fn published_revision(&self) -> u64 {
        self.read().revision
    }

    async fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<UserEvent>, StoreError> {
        let inner = self.read();
        let oldest = inner
            .changes
            .front()
            .map_or(inner.revision + 1, |e| e.revision);
        check_revision(after, oldest, inner.revision)?;
        // Revisions in the ring are consecutive, so the position is arithmetic.
        let skip = usize::try_from(after + 1 - oldest).unwrap_or(usize::MAX);
        Ok(inner
            .changes
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect())
    }

    fn can_hang(&self) -> bool {
        false
    }
}

#[async_trait]
impl StoreHealth for MemoryStore {
    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
