//! Persistence behind one trait, so the rest of the service does not care
//! whether users live in memory or in PostgreSQL.

mod instrumented;
mod memory;
mod postgres;
mod seed;

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::{
    config::{StoreSettings, StoreUrl},
    domain::{NewUser, User, UserEvent, UserId, UserPatch},
};

pub use instrumented::{record_pool_stats, InstrumentedStore};
pub use memory::MemoryStore;
pub use postgres::PostgresStore;

/// Why a store operation failed. Stores translate their own errors into
/// these, and `domain::DomainError` carries them to the edge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("user {0} not found")]
    NotFound(UserId),
    #[error("email already registered")]
    EmailTaken,
    /// The backend cannot be reached (connection refused, pool timeout).
    /// The text is for logs only and must not contain credentials.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store failure: {0}")]
    Internal(String),
}

/// The operations the service needs from storage.
///
/// Contract (checked against every implementation by `tests/it/store_contract.rs`):
/// - email uniqueness is case-insensitive and atomic: of concurrent creates
///   with the same email exactly one succeeds;
/// - `list_after` returns users ordered by id, strictly after `after`;
/// - every successful change is published to subscribers, in commit order
///   per user, to every subscriber that existed before the change (the
///   PostgreSQL store delivers through NOTIFY, so one subscribing just
///   after a commit may also see that change).
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    async fn create(&self, user: NewUser) -> Result<User, StoreError>;
    async fn get(&self, id: UserId) -> Result<User, StoreError>;
    /// Applies `patch` and sets `updated_at = at`.
    async fn update(
        &self,
        id: UserId,
        patch: UserPatch,
        at: OffsetDateTime,
    ) -> Result<User, StoreError>;
    /// Removes the user and returns it as it was.
    async fn delete(&self, id: UserId) -> Result<User, StoreError>;
    /// At most `limit` users with an id greater than `after`, ordered by id.
    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError>;
    /// A receiver of every change committed from now on.
    fn subscribe(&self) -> broadcast::Receiver<UserEvent>;
    /// Succeeds when the store can serve requests (readiness).
    async fn check(&self) -> Result<(), StoreError>;
    /// Connection pool occupancy, for stores that have a pool (metrics).
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }
}

/// A snapshot of a connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Open connections, idle or in use.
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// Opens the store named by `store.url`.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn UserStore>, StoreError> {
    match &settings.url {
        StoreUrl::Memory => {
            let store = MemoryStore::new(settings.watch_buffer);
            if let Some(path) = &settings.seed_file {
                let count = seed::load(&store, path)?;
                tracing::info!(count, path = %path.display(), "seeded the memory store");
            }
            Ok(Arc::new(store))
        }
        StoreUrl::Postgres(_) if settings.seed_file.is_some() => Err(StoreError::Internal(
            "store.seed_file is for the memory store; load PostgreSQL with its own tools".into(),
        )),
        // Lazy: does not connect, so startup never waits for the database.
        StoreUrl::Postgres(_) => Ok(Arc::new(PostgresStore::open(settings)?)),
    }
}

/// Applies the schema migrations of a PostgreSQL store.
pub async fn migrate(settings: &StoreSettings) -> Result<(), StoreError> {
    match &settings.url {
        StoreUrl::Memory => Err(StoreError::Internal(
            "store.url: migrate needs a postgres:// store; the memory store has no schema".into(),
        )),
        StoreUrl::Postgres(_) => postgres::migrate(settings).await,
    }
}
