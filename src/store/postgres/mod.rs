//! The PostgreSQL store: every replica behind the load balancer shares the
//! same users, uniqueness is enforced by the database, and `WatchUsers`
//! sees changes made through any replica.
//!
//! This module holds `PostgresStore`, its state, `open`, and the `UserStore`
//! and `StoreHealth` impls (the users SQL); connecting and migrations,
//! the listener, the change feed, error classification and row mapping
//! live in the submodules below and do not belong here.
//!
//! How it fits together:
//! - **Lazy pool.** Nothing connects at startup, so a replica starts (not
//!   ready) while the database is down and becomes ready when it appears.
//!   Every connection carries a server-side `statement_timeout`; a call that
//!   cannot get a connection within `store.acquire_timeout` fails with
//!   [`StoreError::Unavailable`] (UNAVAILABLE), long before client deadlines.
//! - **Schema task.** With `store.migrate = true` a background task applies
//!   the embedded migrations (sqlx's migrator holds `pg_advisory_lock` while
//!   it does, so replicas starting together take turns), retrying with
//!   backoff until it succeeds; with `false` it only waits until someone
//!   else (`user-service migrate`) has applied them. Readiness stays
//!   NOT_SERVING until then; a call that reaches the replica anyway (a
//!   headless Service, a client that ignores health) finds no table and
//!   is answered UNAVAILABLE, not INTERNAL (see
//!   [`retryable_sqlstate`](errors::retryable_sqlstate)).
//! - **Change feed.** Each write inserts a row into `user_changes` (the
//!   outbox: a `revision` from an identity column plus the event as JSON)
//!   and queues `pg_notify('user_events', …)` carrying the same event and
//!   its revision, in the write's own transaction, so a change is recorded
//!   if and only if it happens. Writers take a transaction-level advisory
//!   lock ([`FEED_LOCK`](feed::FEED_LOCK)) just before drawing the
//!   revision, so revisions become visible in increasing order (see
//!   [`record_change`](feed::record_change)); readers can then trust
//!   "everything up to the highest revision I saw".
//! - **Listener.** One connection per replica LISTENs and forwards
//!   notifications, which PostgreSQL delivers in commit order, to the local
//!   broadcast channel; writes never publish locally, so a replica's own
//!   changes are not delivered twice. It remembers the last revision it
//!   forwarded; after (re)connecting and LISTENing again it first reads
//!   `user_changes` after that revision, so changes committed while it was
//!   away reach open watchers too, in order, then skips notifications it
//!   has already forwarded. Only if the gap is older than the retention
//!   window (or at the very first connection, when there is no "last") does
//!   it replace the broadcast channel, which ends the open watchers with
//!   UNAVAILABLE so they resume with `since_revision`. Readiness is
//!   NOT_SERVING while it is away. A heartbeat NOTIFY every few seconds to
//!   a channel of the replica's own detects connections that died silently.
//! - **Retention.** Writes whose revision is a multiple of
//!   [`prune_interval`](feed::prune_interval) delete the rows older than
//!   `store.change_retention` revisions, after their commit: a short index
//!   range delete, amortised over many writes, with no extra task and
//!   outside the serialised part.
//! - **Lifetime.** The background tasks stop when the store is dropped,
//!   i.e. when the server that owns it has shut down.

mod errors;
mod feed;
mod listener;
mod rows;
mod schema;

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use async_trait::async_trait;
use sqlx::{
    pool::PoolConnection,
    postgres::{PgPool, PgPoolOptions},
    Connection, Postgres,
};
use time::OffsetDateTime;
use tokio::{sync::broadcast, task::JoinHandle};

use crate::domain::{PoolStats, StoreError, StoreHealth, UserStore};
use crate::{
    config::StoreSettings,
    domain::{now, EventKind, NewUser, User, UserEvent, UserId, UserName, UserPatch, UserStatus},
};

use errors::classify;
use feed::{encode_event, prune_interval, read_changes, record_change, Feed};
use listener::{listen, Heartbeat};
use rows::user_from_row;
use schema::{connect_options, prepare_schema};

pub use schema::migrate;

/// The NOTIFY channel every replica listens on.
const CHANNEL: &str = "user_events";

const APPLICATION_NAME: &str = "user-service";
/// The listener's connection has a name of its own, so operators (and the
/// tests) can tell it from the request pool in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "user-service-listener";

pub struct PostgresStore {
    pool: PgPool,
    events: Arc<Feed>,
    state: Arc<State>,
    max_connections: u32,
    /// `store.change_retention`, and how often (in revisions) to prune.
    retention: i64,
    prune_every: i64,
    // Aborted on drop: the tasks own no store handle, so they cannot keep
    // the store alive, and they die with it.
    _schema_task: AbortOnDrop,
    _listener_task: AbortOnDrop,
    _heartbeat_task: AbortOnDrop,
}

/// What readiness needs besides a reachable database.
#[derive(Default)]
struct State {
    /// Every embedded migration is applied.
    schema_ready: AtomicBool,
    /// The listener is subscribed to [`CHANNEL`]: a change committed now
    /// will reach local watchers.
    listening: AtomicBool,
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl PostgresStore {
    /// Builds the pool and starts the schema and listener tasks. Does not
    /// connect, so it succeeds while the database is down. Must be called
    /// inside a Tokio runtime.
    pub fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        let session = connect_options(settings)?.options([(
            "statement_timeout",
            format!("{}ms", settings.statement_timeout.as_millis().max(1)),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            // Bounds waiting for a free connection *and* opening a new one,
            // so this is what makes an outage fail fast.
            .acquire_timeout(settings.acquire_timeout)
            // Pings an idle connection before handing it out: after the
            // database restarts or kills sessions, calls get a fresh
            // connection instead of failing on a dead one.
            .test_before_acquire(true)
            .connect_lazy_with(session.clone());
        let events = Arc::new(Feed::new(settings.watch_buffer.max(1)));
        let state = Arc::new(State::default());
        let heartbeat = Heartbeat::new();
        let schema_task = tokio::spawn(prepare_schema(
            settings.clone(),
            settings.migrate,
            Arc::clone(&state),
        ));
        let listener_task = tokio::spawn(listen(
            session.application_name(LISTENER_APPLICATION_NAME),
            settings.connect_timeout,
            heartbeat.channel.clone(),
            pool.clone(),
            Arc::clone(&events),
            Arc::clone(&state),
        ));
        let retention = i64::try_from(settings.change_retention.max(1)).unwrap_or(i64::MAX);
        let heartbeat_task = tokio::spawn(heartbeat.run(pool.clone()));
        Ok(Self {
            pool,
            events,
            state,
            max_connections: settings.max_connections,
            retention,
            prune_every: prune_interval(retention),
            _schema_task: AbortOnDrop(schema_task),
            _listener_task: AbortOnDrop(listener_task),
            _heartbeat_task: AbortOnDrop(heartbeat_task),
        })
    }

    /// A pooled connection. Any failure to get one means the database is
    /// unreachable or refusing us right now (down, not accepting
    /// connections, pool exhausted for `acquire_timeout`, credentials
    /// revoked): the caller may retry, so it is `Unavailable`.
    async fn conn(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        self.pool
            .acquire()
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot get a connection: {e}")))
    }
}

#[async_trait]
impl UserStore for PostgresStore {
    async fn create(&self, new: NewUser) -> Result<User, StoreError> {
        let user = new.to_user();
        let payload = encode_event(EventKind::Created, &user, user.created_at)?;
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await.map_err(|e| classify("begin", e))?;
        sqlx::query(
            "INSERT INTO users \
             (id, email, email_key, name, status, roles, password_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(user.id.as_uuid())
        .bind(user.email.as_str())
        .bind(user.email.key())
        .bind(user.name.as_str())
        .bind(user.status.as_str())
        .bind(user.roles.as_slice())
        .bind(&new.password_hash)
        .bind(user.created_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("insert user", e))?;
        let revision = record_change(&mut tx, user.id, &payload).await?;
        // Only a successful commit acknowledges the write. If the commit's
        // answer is lost the outcome is unknown and the client sees
        // UNAVAILABLE; a retry then reports ALREADY_EXISTS if it did land.
        tx.commit().await.map_err(|e| classify("commit", e))?;
        self.prune(&mut conn, revision).await;
        Ok(user)
    }

    async fn get(&self, id: UserId) -> Result<User, StoreError> {
        let mut conn = self.conn().await?;
        let row = sqlx::query(
            "SELECT id, email, name, status, roles, created_at, updated_at FROM users WHERE id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| classify("get user", e))?;
        match row {
            Some(row) => user_from_row(&row),
            None => Err(StoreError::NotFound(id)),
        }
    }

    async fn update(
        &self,
        id: UserId,
        patch: UserPatch,
        at: OffsetDateTime,
    ) -> Result<User, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await.map_err(|e| classify("begin", e))?;
        let row = sqlx::query(
            "UPDATE users SET name = COALESCE($2, name), status = COALESCE($3, status), \
             updated_at = $4 WHERE id = $1 \
             RETURNING id, email, name, status, roles, created_at, updated_at",
        )
        .bind(id.as_uuid())
        .bind(patch.name.as_ref().map(UserName::as_str))
        .bind(patch.status.map(UserStatus::as_str))
        .bind(at)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| classify("update user", e))?;
        // Dropping `tx` without commit rolls back (nothing was changed).
        let Some(row) = row else {
            return Err(StoreError::NotFound(id));
        };
        let user = user_from_row(&row)?;
        let payload = encode_event(EventKind::Updated, &user, at)?;
        let revision = record_change(&mut tx, user.id, &payload).await?;
        tx.commit().await.map_err(|e| classify("commit", e))?;
        self.prune(&mut conn, revision).await;
        Ok(user)
    }

    async fn delete(&self, id: UserId) -> Result<User, StoreError> {
        let mut conn = self.conn().await?;
        let mut tx = conn.begin().await.map_err(|e| classify("begin", e))?;
        let row = sqlx::query(
            "DELETE FROM users WHERE id = $1 \
             RETURNING id, email, name, status, roles, created_at, updated_at",
        )
        .bind(id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| classify("delete user", e))?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(id));
        };
        let user = user_from_row(&row)?;
        let payload = encode_event(EventKind::Deleted, &user, now())?;
        let revision = record_change(&mut tx, user.id, &payload).await?;
        tx.commit().await.map_err(|e| classify("commit", e))?;
        self.prune(&mut conn, revision).await;
        Ok(user)
    }

    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Keyset paging on the primary key: each page is an index range
        // scan of `limit` rows, whatever the table size or page number.
        let query = match after {
            Some(after) => sqlx::query(
                "SELECT id, email, name, status, roles, created_at, updated_at FROM users \
                 WHERE id > $1 ORDER BY id LIMIT $2",
            )
            .bind(after.as_uuid())
            .bind(limit),
            None => sqlx::query(
                "SELECT id, email, name, status, roles, created_at, updated_at FROM users \
                 ORDER BY id LIMIT $1",
            )
            .bind(limit),
        };
        let mut conn = self.conn().await?;
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| classify("list users", e))?;
        rows.iter().map(user_from_row).collect()
    }

    fn subscribe(&self) -> broadcast::Receiver<UserEvent> {
        self.events.subscribe()
    }

    fn published_revision(&self) -> u64 {
        self.events.position.load(Ordering::SeqCst)
    }

    async fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<UserEvent>, StoreError> {
        let mut conn = self.conn().await?;
        read_changes(&mut conn, after, limit).await
    }
}

#[async_trait]
impl StoreHealth for PostgresStore {
    async fn check(&self) -> Result<(), StoreError> {
        if !self.state.schema_ready.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "database schema not migrated yet".into(),
            ));
        }
        // Without the listener, watchers on this replica would silently
        // miss changes: not ready.
        if !self.state.listening.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "not listening for user events".into(),
            ));
        }
        let mut conn = self.conn().await?;
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map_err(|e| classify("check", e))?;
        Ok(())
    }
    fn pool_stats(&self) -> Option<PoolStats> {
        Some(PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.max_connections,
        })
    }
}
