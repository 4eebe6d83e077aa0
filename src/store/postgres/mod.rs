//! The PostgreSQL store: every replica behind the load balancer shares the
//! same users, uniqueness is enforced by the database, and `WatchUsers`
//! sees changes made through any replica.
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
//!   is answered UNAVAILABLE, not INTERNAL (see [`retryable_sqlstate`]).
//! - **Change feed.** Each write inserts a row into `user_changes` (the
//!   outbox: a `revision` from an identity column plus the event as JSON)
//!   and queues `pg_notify('user_events', …)` carrying the same event and
//!   its revision, in the write's own transaction, so a change is recorded
//!   if and only if it happens. Writers take a transaction-level advisory
//!   lock ([`FEED_LOCK`]) just before drawing the revision, so revisions
//!   become visible in increasing order (see [`record_change`]); readers
//!   can then trust "everything up to the highest revision I saw".
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
//!   [`prune_interval`] delete the rows older than `store.change_retention`
//!   revisions, after their commit: a short index range delete, amortised
//!   over many writes, with no extra task and outside the serialised part.
//! - **Lifetime.** The background tasks stop when the store is dropped,
//!   i.e. when the server that owns it has shut down.

use std::{
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sqlx::{
    migrate::{MigrateError, Migrator},
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow},
    Connection, PgConnection, Postgres, Row,
};
use time::OffsetDateTime;
use tokio::{sync::broadcast, task::JoinHandle};
use uuid::Uuid;

use crate::domain::{check_revision, PoolStats, StoreError, StoreHealth, UserStore};
use crate::{
    config::StoreSettings,
    domain::{
        now, Email, EventKind, NewUser, User, UserEvent, UserId, UserName, UserPatch, UserStatus,
    },
};

/// The schema, embedded at build time from `migrations/`.
static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The NOTIFY channel every replica listens on.
const CHANNEL: &str = "user_events";
/// The unique index behind case-insensitive email uniqueness (see the
/// migration); its violation is [`StoreError::EmailTaken`].
const EMAIL_UNIQUE_INDEX: &str = "users_email_key_unique";
/// PostgreSQL rejects NOTIFY payloads of 8000 bytes or more. Events are
/// checked against a lower bound before they are written, because the
/// notification is the stored JSON as `jsonb` prints it (a space after
/// every `:` and `,`) plus the revision.
const NOTIFY_PAYLOAD_MAX: usize = 7999;
const EVENT_JSON_MAX: usize = NOTIFY_PAYLOAD_MAX / 2;

/// The key of the transaction-level advisory lock that serialises the
/// drawing and committing of revisions (see [`record_change`]). Any fixed
/// number works; this one spells "userfeed" in ASCII, far from the keys
/// sqlx's migrator derives from the database name.
const FEED_LOCK: i64 = 0x7573_6572_6665_6564;

/// Changes read per round trip while the listener catches up.
const CATCH_UP_BATCH: usize = 256;

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

/// The local broadcast channel of changes, replaceable: replacing it ends
/// every receiver of the old one (`RecvError::Closed` once they have read
/// what was sent before), which is how the listener tells watchers that it
/// cannot give them a gap-free feed and they must resume by revision.
struct Feed {
    sender: std::sync::RwLock<broadcast::Sender<UserEvent>>,
    capacity: usize,
    /// The last revision sent (`UserStore::published_revision`).
    position: AtomicU64,
}

impl Feed {
    fn new(capacity: usize) -> Self {
        Self {
            sender: std::sync::RwLock::new(broadcast::channel(capacity).0),
            capacity,
            position: AtomicU64::new(0),
        }
    }

    // Poisoning is ignored: the guarded value is a channel handle that no
    // panic can leave half-updated.
    fn sender(&self) -> broadcast::Sender<UserEvent> {
        self.sender
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn subscribe(&self) -> broadcast::Receiver<UserEvent> {
        self.sender().subscribe()
    }

    fn send(&self, event: UserEvent) {
        // Before sending: a reader of the position who subscribes next has
        // not missed this one.
        if event.revision > 0 {
            self.position.store(event.revision, Ordering::SeqCst);
        }
        // No subscriber is not an error.
        let _ = self.sender().send(event);
    }

    /// Ends every current receiver; later subscribers get a fresh channel,
    /// fed from after `position`.
    fn restart(&self, position: u64) {
        let fresh = broadcast::channel(self.capacity).0;
        *self.sender.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.position.store(position, Ordering::SeqCst);
    }
}

/// Prune every this many revisions: often enough that the table stays
/// within about twice the retention, rarely enough that each prune is one
/// cheap range delete.
fn prune_interval(retention: i64) -> i64 {
    retention.clamp(1, 100)
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

    /// After the write of `revision` committed: on every
    /// [`prune_interval`]-th revision, deletes the changes older than the
    /// retention window. Exactly one writer draws each revision, so replicas
    /// share the work without coordinating; gaps only delay a prune to the
    /// next multiple. A failure is logged and does not fail the write, which
    /// has committed: the next prune deletes what this one left.
    async fn prune(&self, conn: &mut PgConnection, revision: i64) {
        if revision % self.prune_every != 0 || revision <= self.retention {
            return;
        }
        if let Err(err) = sqlx::query("DELETE FROM user_changes WHERE revision <= $1")
            .bind(revision - self.retention)
            .execute(&mut *conn)
            .await
        {
            tracing::warn!(error = %err, revision, "pruning old changes failed; the next prune retries");
        }
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

/// `store.url` parsed, plus what every connection of ours sets.
fn connect_options(settings: &StoreSettings) -> Result<PgConnectOptions, StoreError> {
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
async fn prepare_schema(settings: StoreSettings, migrate: bool, state: Arc<State>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
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

/// How often a replica notifies its own listener, and how long that
/// listener may hear nothing before its connection is presumed dead.
///
/// A connection whose peer vanished without a FIN or RST (a network
/// partition, a failed-over database host) looks idle forever: without
/// traffic the listener would wait on it indefinitely while every change
/// is lost. The heartbeat guarantees traffic on a healthy connection.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const LISTENER_SILENCE_LIMIT: Duration = Duration::from_secs(15);

struct Heartbeat {
    /// A channel of this replica's own, so replicas do not hear each
    /// other's heartbeats.
    channel: String,
}

impl Heartbeat {
    fn new() -> Self {
        Self {
            channel: format!("user_events_hb_{}", Uuid::now_v7().simple()),
        }
    }

    /// Background: notifies the heartbeat channel through the request pool.
    async fn run(self, pool: PgPool) {
        loop {
            tokio::time::sleep(HEARTBEAT_EVERY).await;
            // Failing is expected during an outage; the listener's silence
            // limit takes care of the consequences.
            if let Err(err) = sqlx::query("SELECT pg_notify($1, '')")
                .bind(&self.channel)
                .execute(&pool)
                .await
            {
                tracing::debug!(error = %err, "heartbeat not sent");
            }
        }
    }
}

/// Background: forwards NOTIFY payloads to local subscribers, reconnecting
/// for as long as the store lives, and filling from `user_changes` what it
/// missed while it was away.
async fn listen(
    session: PgConnectOptions,
    connect_timeout: Duration,
    heartbeat_channel: String,
    // The request pool: the catch-up reads the table through it, as the
    // listener's own pool has its one connection taken by the listener.
    requests: PgPool,
    events: Arc<Feed>,
    state: Arc<State>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    // The last revision forwarded; None until the first connection.
    let mut last: Option<u64> = None;
    loop {
        // A fresh one-connection pool per attempt (PgListener needs a
        // pool): it keeps the listener off the request pool, and a dead
        // connection still being torn down in the background (sqlx sends
        // UNLISTEN on drop, which may hang on a vanished peer) cannot hold
        // the only slot of the next attempt.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(connect_timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(session.clone());
        let subscribed = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen_all([CHANNEL, heartbeat_channel.as_str()])
                .await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        let from = last;
        match subscribed {
            // LISTEN is in place before the catch-up reads the table, so a
            // change commits either before that read (and is read) or after
            // LISTEN (and is notified): none falls between.
            Ok(mut listener) => match catch_up(&requests, &mut last, &events).await {
                Ok(caught_up) => {
                    backoff.reset();
                    state.listening.store(true, Ordering::SeqCst);
                    match from {
                        Some(before) => tracing::info!(
                            from = before,
                            to = caught_up,
                            "event listener reconnected and caught up"
                        ),
                        None => tracing::info!(
                            channel = CHANNEL,
                            revision = caught_up,
                            "listening for user events"
                        ),
                    }
                    let mut position = caught_up;
                    let why = forward(&mut listener, &events, &mut position).await;
                    last = Some(position);
                    state.listening.store(false, Ordering::SeqCst);
                    tracing::warn!(error = %why, revision = position, "event listener lost its connection; reconnecting");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "event listener cannot catch up; reconnecting");
                }
            },
            Err(err) => {
                tracing::debug!(error = %err, "event listener cannot connect");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Brings the local feed up to date after LISTEN: forwards the changes
/// committed after `last`, advancing it as it goes (so a catch-up that
/// fails half-way is resumed, not repeated), and returns the revision it
/// reached. The first time (no `last`) there is nothing to fill: the feed
/// starts at the latest revision.
async fn catch_up(pool: &PgPool, last: &mut Option<u64>, events: &Feed) -> Result<u64, StoreError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| StoreError::Unavailable(format!("cannot get a connection: {e}")))?;
    let Some(position) = last else {
        let (_, latest) = revision_bounds(&mut conn).await?;
        // Receivers subscribed before the first connection (the replica was
        // not ready) have no defined starting point: end them.
        events.restart(latest);
        *last = Some(latest);
        return Ok(latest);
    };
    loop {
        match read_changes(&mut conn, *position, CATCH_UP_BATCH).await {
            Ok(batch) => {
                let complete = batch.len() < CATCH_UP_BATCH;
                for event in batch {
                    *position = event.revision;
                    events.send(event);
                }
                if complete {
                    return Ok(*position);
                }
            }
            Err(StoreError::RevisionOutOfRange { oldest, latest, .. }) => {
                tracing::error!(
                    last = *position,
                    oldest,
                    latest,
                    "event listener was away longer than store.change_retention; ending open watchers so they resume by revision"
                );
                events.restart(latest);
                *position = latest;
                return Ok(latest);
            }
            Err(err) => return Err(err),
        }
    }
}

/// Forwards notifications until the listener fails; returns why.
/// `last` is the last revision forwarded: notifications at or below it were
/// already read from the table while catching up and are skipped.
async fn forward(listener: &mut PgListener, events: &Feed, last: &mut u64) -> String {
    loop {
        // On timeout the receive is abandoned mid-way; that is fine because
        // the listener is then discarded, never read from again.
        let received = match tokio::time::timeout(LISTENER_SILENCE_LIMIT, listener.try_recv()).await
        {
            Ok(received) => received,
            Err(_) => {
                return format!(
                    "nothing received for {}s, not even the heartbeat",
                    LISTENER_SILENCE_LIMIT.as_secs()
                )
            }
        };
        match received {
            Ok(Some(notification)) if notification.channel() == CHANNEL => {
                match decode_event(notification.payload()) {
                    // From a replica of a version before the change feed
                    // (a rolling upgrade): no row, no revision. Live
                    // watchers still get it; nobody can resume from it.
                    Ok(event) if event.revision == 0 => events.send(event),
                    Ok(event) if event.revision <= *last => {}
                    Ok(event) => {
                        *last = event.revision;
                        events.send(event);
                    }
                    Err(err) => tracing::error!(error = %err, "undecodable user event skipped"),
                }
            }
            // The heartbeat: proof of life, nothing to forward.
            Ok(Some(_)) => {}
            // The connection dropped. sqlx would re-subscribe by itself on
            // the next call, but without catching up: start over instead.
            Ok(None) => return "the connection was closed".to_owned(),
            Err(err) => return err.to_string(),
        }
    }
}

/// Exponential backoff with ±50% jitter, so replicas that lost the
/// database together do not reconnect in lockstep.
struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            current: first,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let unit = f64::from(OsRng.next_u32()) / f64::from(u32::MAX);
        base.mul_f64(0.5 + unit)
    }

    fn reset(&mut self) {
        self.current = self.first;
    }
}

/// Maps a driver error to the store's vocabulary. `op` names what we were
/// doing, for the logs; nothing here reaches clients (see `grpc::status`).
/// sqlx errors carry no connection URL or password.
fn classify(op: &str, err: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match err {
        E::Database(db) => {
            if db.is_unique_violation() && db.constraint() == Some(EMAIL_UNIQUE_INDEX) {
                return StoreError::EmailTaken;
            }
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let detail = format!("{op}: {} (SQLSTATE {code})", db.message());
            if retryable_sqlstate(&code) {
                StoreError::Unavailable(detail)
            } else {
                StoreError::Internal(detail)
            }
        }
        E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => {
            StoreError::Unavailable(format!("{op}: {err}"))
        }
        other => StoreError::Internal(format!("{op}: {other}")),
    }
}

/// SQLSTATEs after which the same call may succeed later, without anyone
/// changing the code: the database is not ready yet, or gone for now. They
/// become UNAVAILABLE, which clients retry with backoff (and which readiness
/// and the error-budget alerts already account for); everything else is a
/// bug or corrupted data and becomes INTERNAL.
fn retryable_sqlstate(code: &str) -> bool {
    matches!(
        code,
        // query_canceled: our statement_timeout fired.
        "57014"
            // admin_shutdown, crash_shutdown, cannot_connect_now: the
            // server is going away or coming back.
            | "57P01" | "57P02" | "57P03"
            // serialization_failure, deadlock_detected.
            | "40001" | "40P01"
            // undefined_table, undefined_column: the schema is older than
            // this binary, i.e. a call reached a replica (not ready yet)
            // before its migrations were applied by the hook Job or
            // another replica. Our statements are fixed and tested against
            // the embedded migrations, so outside that window these do not
            // happen; the SQLSTATE stays in the log line either way.
            | "42P01" | "42703"
    ) || code.starts_with("08") // connection_exception class
        || code.starts_with("53") // insufficient_resources (too many connections, disk full)
}

fn user_from_row(row: &PgRow) -> Result<User, StoreError> {
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

/// The event as `user_changes.payload` stores it and NOTIFY carries it:
/// the user as the API shows it (never the password hash). Timestamps are
/// integer microseconds since the epoch, the precision both stores keep, so
/// they round-trip exactly. The stored JSON has no `revision` (the row's
/// column is the truth); the notification adds it.
#[derive(Debug, Serialize, Deserialize)]
struct EventPayload {
    #[serde(default, skip_serializing)]
    revision: u64,
    kind: String,
    occurred_at_us: i64,
    id: String,
    email: String,
    name: String,
    status: String,
    roles: Vec<String>,
    created_at_us: i64,
    updated_at_us: i64,
}

fn encode_event(kind: EventKind, user: &User, at: OffsetDateTime) -> Result<String, StoreError> {
    let payload = EventPayload {
        revision: 0,
        kind: kind.as_str().to_owned(),
        occurred_at_us: to_micros(at)?,
        id: user.id.to_string(),
        email: user.email.as_str().to_owned(),
        name: user.name.as_str().to_owned(),
        status: user.status.as_str().to_owned(),
        roles: user.roles.clone(),
        created_at_us: to_micros(user.created_at)?,
        updated_at_us: to_micros(user.updated_at)?,
    };
    let json = serde_json::to_string(&payload)
        .map_err(|e| StoreError::Internal(format!("encode user event: {e}")))?;
    // Refused here rather than by pg_notify, with a clearer message; a
    // validated user is far below it (see the unit test).
    if json.len() > EVENT_JSON_MAX {
        return Err(StoreError::Internal(format!(
            "user event of {} bytes exceeds the NOTIFY limit",
            json.len()
        )));
    }
    Ok(json)
}

fn decode_event(json: &str) -> Result<UserEvent, String> {
    let p: EventPayload = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let kind = EventKind::from_stored(&p.kind).ok_or_else(|| format!("kind {:?}", p.kind))?;
    let status =
        UserStatus::from_stored(&p.status).ok_or_else(|| format!("status {:?}", p.status))?;
    let id = Uuid::try_parse(&p.id).map_err(|e| format!("id: {e}"))?;
    Ok(UserEvent {
        revision: p.revision,
        kind,
        occurred_at: from_micros(p.occurred_at_us)?,
        user: User {
            id: UserId::from_uuid(id),
            email: Email::from_stored(p.email),
            name: UserName::from_stored(p.name),
            status,
            roles: p.roles,
            created_at: from_micros(p.created_at_us)?,
            updated_at: from_micros(p.updated_at_us)?,
        },
    })
}

fn to_micros(t: OffsetDateTime) -> Result<i64, StoreError> {
    i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map_err(|_| StoreError::Internal(format!("timestamp {t} out of range")))
}

fn from_micros(us: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).map_err(|e| e.to_string())
}

/// Records the change in `user_changes` and queues its notification, inside
/// the caller's transaction, as its last statements before the commit;
/// returns the revision. PostgreSQL sends the notification when (and only
/// if) the transaction commits.
///
/// Why the advisory lock: identity values are drawn when the row is
/// inserted, not when the transaction commits, so without it two writers
/// could draw 7 and 8 and commit 8 first. A reader that saw 8 and then
/// asked for "after 8" would miss 7 for ever, and the listener, which
/// skips notifications at or below its last revision, would drop it.
/// `pg_advisory_xact_lock` is taken *before* the revision is drawn and
/// held until the commit has become visible (PostgreSQL releases
/// transaction locks after that), so the next writer draws a higher
/// revision only after this one is visible: revisions become visible in
/// increasing order and notifications (sent in commit order) arrive in
/// revision order. Gaps remain possible (a transaction that fails after
/// drawing), never reordering. The price is that writers serialise on
/// this short tail — lock, one insert, commit — not on their row changes,
/// which happen before it; a writer holding the lock waits for nothing but
/// its commit, so there is no deadlock. The lock wait counts against
/// `statement_timeout` like any other.
async fn record_change(
    conn: &mut PgConnection,
    user_id: UserId,
    payload: &str,
) -> Result<i64, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(FEED_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(|e| classify("lock the change feed", e))?;
    sqlx::query_scalar(
        "WITH change AS ( \
             INSERT INTO user_changes (user_id, payload) VALUES ($1, $2::jsonb) \
             RETURNING revision, payload) \
         SELECT revision, \
                pg_notify($3, (payload || jsonb_build_object('revision', revision))::text)::text \
         FROM change",
    )
    .bind(user_id.as_uuid())
    .bind(payload)
    .bind(CHANNEL)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| classify("record change", e))
}

/// The revisions `user_changes` holds: (oldest, latest), with
/// `oldest = latest + 1` when it holds none (latest 0 if nothing was ever
/// written).
async fn revision_bounds(conn: &mut PgConnection) -> Result<(u64, u64), StoreError> {
    let (oldest, latest): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT min(revision), max(revision) FROM user_changes")
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| classify("read revision bounds", e))?;
    let latest = latest.map_or(0, revision_u64);
    Ok((oldest.map_or(latest + 1, revision_u64), latest))
}

/// Identity values start at 1, so a negative one is impossible.
fn revision_u64(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// One row of [`read_changes`]: the table's (oldest, latest) revisions,
/// then one change (NULL when there is none after the position).
type ChangeRow = (Option<i64>, Option<i64>, Option<i64>, Option<String>);

/// `UserStore::changes_after` on one connection. One statement, so the
/// bounds and the rows come from the same snapshot: if nothing after
/// `after` had been pruned in it, every row after `after` is in the answer.
async fn read_changes(
    conn: &mut PgConnection,
    after: u64,
    limit: usize,
) -> Result<Vec<UserEvent>, StoreError> {
    let after_i64 = i64::try_from(after).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<ChangeRow> = sqlx::query_as(
        "SELECT b.oldest, b.latest, c.revision, c.payload::text \
         FROM (SELECT min(revision) AS oldest, max(revision) AS latest FROM user_changes) b \
         LEFT JOIN LATERAL ( \
             SELECT revision, payload FROM user_changes \
             WHERE revision > $1 ORDER BY revision LIMIT $2) c ON true \
         ORDER BY c.revision",
    )
    .bind(after_i64)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify("read changes", e))?;
    let Some((oldest, latest, _, _)) = rows.first() else {
        return Err(StoreError::Internal("read changes: no bounds row".into()));
    };
    let latest = latest.map_or(0, revision_u64);
    let oldest = oldest.map_or(latest + 1, revision_u64);
    check_revision(after, oldest, latest)?;
    rows.into_iter()
        .filter_map(|(_, _, revision, payload)| Some((revision?, payload?)))
        .map(|(revision, payload)| {
            let mut event = decode_event(&payload)
                .map_err(|e| StoreError::Internal(format!("user_changes row {revision}: {e}")))?;
            event.revision = revision_u64(revision);
            Ok(event)
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DEFAULT_ROLE;

    fn user(email: &str, name: &str) -> User {
        let at = now();
        User {
            id: UserId::generate(),
            email: Email::parse(email).unwrap(),
            name: UserName::parse(name).unwrap(),
            status: UserStatus::Inactive,
            roles: vec![DEFAULT_ROLE.to_owned(), "admin".to_owned()],
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn events_round_trip_through_the_payload() {
        let user = user("Ünïcode.o'brien+x@example.com", "Ada \\ \"Lovelace\"");
        let at = now();
        let json = encode_event(EventKind::Updated, &user, at).unwrap();
        let event = decode_event(&json).unwrap();
        assert_eq!(event.kind, EventKind::Updated);
        assert_eq!(event.user, user);
        assert_eq!(event.occurred_at, at);
        assert!(!json.contains("argon2"), "no password hash in events");
    }

    #[test]
    fn notifications_carry_the_revision_and_old_ones_decode_without() {
        let user = user("rev@example.com", "Rev");
        let json = encode_event(EventKind::Created, &user, now()).unwrap();
        assert!(!json.contains("revision"), "the stored JSON has none");
        assert_eq!(decode_event(&json).unwrap().revision, 0);
        // What the database sends: the stored JSON with the revision added.
        let notified = format!("{{\"revision\": 42, {}", &json[1..]);
        assert_eq!(decode_event(&notified).unwrap().revision, 42);
    }

    #[test]
    fn the_largest_valid_user_fits_in_a_notify_payload() {
        // A 254-character email of 2-byte characters and a 100-character
        // name half of which JSON escapes are far below PostgreSQL's
        // 8000-byte limit.
        let domain = format!(
            "{}.{}.{}.com",
            "é".repeat(63),
            "é".repeat(63),
            "é".repeat(57)
        );
        let email = format!("{}@{domain}", "é".repeat(64));
        assert_eq!(email.chars().count(), 254);
        let name = "\"".repeat(50) + &"ü".repeat(50);
        let user = user(&email, &name);
        let json = encode_event(EventKind::Created, &user, now()).unwrap();
        assert!(json.len() < 2000, "{} bytes", json.len());
    }

    /// A database error as the driver reports it, with only a SQLSTATE
    /// (PgDatabaseError cannot be built outside sqlx).
    #[derive(Debug)]
    struct FakeDbError {
        code: &'static str,
        constraint: Option<&'static str>,
    }

    impl std::fmt::Display for FakeDbError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "fake error {}", self.code)
        }
    }

    impl std::error::Error for FakeDbError {}

    impl sqlx::error::DatabaseError for FakeDbError {
        fn message(&self) -> &str {
            "relation \"users\" does not exist"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.code.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn constraint(&self) -> Option<&str> {
            self.constraint
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            match self.code {
                "23505" => sqlx::error::ErrorKind::UniqueViolation,
                _ => sqlx::error::ErrorKind::Other,
            }
        }
    }

    fn db_error(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(FakeDbError {
            code,
            constraint: None,
        }))
    }

    #[test]
    fn not_ready_yet_and_gone_for_now_sqlstates_are_unavailable() {
        for code in [
            "42P01", // undefined_table: migrations not applied yet
            "42703", // undefined_column: a pending migration adds it
            "57P01", // admin_shutdown
            "57P02", // crash_shutdown
            "57P03", // cannot_connect_now (starting up, recovering)
            "08000", // connection_exception
            "08003", // connection_does_not_exist
            "08006", // connection_failure
            "57014", // query_canceled by statement_timeout
            "53300", // too_many_connections
            "40001", // serialization_failure
            "40P01", // deadlock_detected
        ] {
            assert!(retryable_sqlstate(code), "{code}");
            match classify("get user", db_error(code)) {
                StoreError::Unavailable(detail) => {
                    assert!(detail.contains(code), "{detail}");
                    assert!(detail.starts_with("get user: "), "{detail}");
                }
                other => panic!("{code} classified as {other:?}"),
            }
        }
    }

    #[test]
    fn bugs_and_bad_data_sqlstates_are_internal() {
        for code in [
            "42601", // syntax_error
            "42883", // undefined_function
            "42501", // insufficient_privilege: needs an operator, not a retry
            "22001", // string_data_right_truncation
            "23502", // not_null_violation
            "23505", // a unique violation of some other index
            "XX000", // internal_error
            "",
        ] {
            assert!(!retryable_sqlstate(code), "{code}");
            assert!(
                matches!(classify("x", db_error(code)), StoreError::Internal(_)),
                "{code}"
            );
        }
    }

    #[test]
    fn the_email_index_violation_is_email_taken() {
        let err = sqlx::Error::Database(Box::new(FakeDbError {
            code: "23505",
            constraint: Some(EMAIL_UNIQUE_INDEX),
        }));
        assert!(matches!(classify("x", err), StoreError::EmailTaken));
    }

    #[test]
    fn pool_and_io_failures_are_unavailable() {
        for err in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::WorkerCrashed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            assert!(
                matches!(classify("x", err), StoreError::Unavailable(_)),
                "Unavailable expected"
            );
        }
        assert!(matches!(
            classify("x", sqlx::Error::RowNotFound),
            StoreError::Internal(_)
        ));
        assert!(matches!(
            classify("x", sqlx::Error::Protocol("garbled".into())),
            StoreError::Internal(_)
        ));
    }
}
