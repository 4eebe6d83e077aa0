//! Storage adapters: implementations of the domain's storage port
//! (`domain::UserStore`): in memory (the default) and PostgreSQL, plus a
//! decorator that observes any of them. No business rule lives here, and
//! nothing here is called by the domain except through the port.

mod instrumented;
mod memory;
mod postgres;
mod seed;

use std::sync::Arc;

use crate::{
    config::{StoreSettings, StoreUrl},
    domain::{StoreError, UserStore},
};

pub use instrumented::{record_pool_stats, InstrumentedStore};
pub use memory::MemoryStore;
pub use postgres::{PostgresStore, LISTENER_APPLICATION_NAME};

/// Opens the store named by `store.url`.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn UserStore>, StoreError> {
    match &settings.url {
        StoreUrl::Memory => {
            let store =
                MemoryStore::with_retention(settings.watch_buffer, settings.change_retention);
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
