//! Connecting outside the request pool, and getting the schema in place:
//! the embedded migrations, applied (`store.migrate = true`, `user-service
//! migrate`) or only verified.

use std::{
    str::FromStr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use sqlx::{
    migrate::{MigrateError, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
    Connection, PgConnection,
};

use crate::{config::StoreSettings, domain::StoreError};

use super::{errors::classify, listener::backoff, State, APPLICATION_NAME};

/// The schema, embedded at build time from `migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// `store.url` parsed, plus what every connection of ours sets.
pub(super) fn connect_options(settings: &StoreSettings) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(settings.url.expose())
        .map(|o| o.application_name(APPLICATION_NAME))
        // The parser's messages name the faulty part, never echo the URL;
        // the redacted URL tells the operator which setting it was.
        .map_err(|e| StoreError::Internal(format!("store.url {}: {e}", settings.url.redacted())))
}

/// Applies the embedded migrations and returns; for `user-service migrate`.
/// Fails (instead of retrying) when the database cannot be reached within
/// `store.connect_timeout`.
pub async fn migrate(settings: &StoreSettings) -> Result<(), StoreError> {
    run_migrations(settings).await
}

async fn run_migrations(settings: &StoreSettings) -> Result<(), StoreError> {
    // A plain connection first, because its error says why the database is
    // unreachable (refused, unknown host, bad password) where the pool
    // below would only report a timeout.
    let _ = connect_once(settings).await?.close().await;
    // A one-connection pool rather than that bare connection: the
    // migrator's `run` needs an `Acquire` that works for any lifetime,
    // which `&mut PgConnection` is not inside a spawned task.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(settings.connect_timeout)
        .connect_with(connect_options(settings)?)
        .await
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                settings.url.redacted()
            ))
        })?;
    // Migrator::run takes `pg_advisory_lock` on its session first, so
    // concurrent migrators (replicas, the chart's hook job) serialise.
    // The migration connection has no statement_timeout: waiting for that
    // lock, or building an index on a large table, may legitimately take
    // longer than any request should.
    let result = MIGRATOR.run(&pool).await.map_err(migrate_error);
    // A failed run may leave the advisory lock held by the session;
    // closing the connection releases it.
    pool.close().await;
    result
}

/// Succeeds when every embedded migration has been applied by someone.
async fn verify_migrations(settings: &StoreSettings) -> Result<(), StoreError> {
    let mut conn = connect_once(settings).await?;
    let applied: Result<Vec<i64>, _> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut conn)
            .await;
    let _ = conn.close().await;
    let applied = applied.map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot read applied migrations (run `user-service migrate`): {e}"
        ))
    })?;
    match MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .find(|m| !applied.contains(&m.version))
    {
        Some(missing) => Err(StoreError::Unavailable(format!(
            "migration {} is not applied yet (run `user-service migrate`)",
            missing.version
        ))),
        None => Ok(()),
    }
}

/// One connection outside the pool, bounded by `store.connect_timeout`.
async fn connect_once(settings: &StoreSettings) -> Result<PgConnection, StoreError> {
    let options = connect_options(settings)?;
    let url = settings.url.redacted();
    match tokio::time::timeout(
        settings.connect_timeout,
        PgConnection::connect_with(&options),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(StoreError::Unavailable(format!(
            "cannot connect to PostgreSQL at {url}: {e}"
        ))),
        Err(_) => Err(StoreError::Unavailable(format!(
            "cannot connect to PostgreSQL at {url}: no answer within store.connect_timeout ({})",
            humantime::format_duration(settings.connect_timeout)
        ))),
    }
}

fn migrate_error(err: MigrateError) -> StoreError {
    match err {
        MigrateError::Execute(e) => classify("migrate", e),
        MigrateError::ExecuteMigration(e, version) => classify(&format!("migration {version}"), e),
        // Checksum mismatches, missing or dirty versions: someone changed
        // history; retrying will not help.
        other => StoreError::Internal(format!("migrations: {other}")),
    }
}

/// Background: gets the schema in place (or waits for it), then marks the
/// store ready for it.
pub(super) async fn prepare_schema(settings: StoreSettings, migrate: bool, state: Arc<State>) {
    let mut backoff = backoff(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let result = if migrate {
            run_migrations(&settings).await
        } else {
            verify_migrations(&settings).await
        };
        match result {
            Ok(()) => {
                state.schema_ready.store(true, Ordering::SeqCst);
                tracing::info!(migrate, "database schema is up to date");
                return;
            }
            Err(err) => {
                let retry_in = backoff.next_delay();
                tracing::warn!(error = %err, ?retry_in, migrate, "database schema not ready; retrying");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}
