//! The LISTEN/NOTIFY listener: one connection per replica, kept alive by
//! a heartbeat, reconnecting with backoff, and catching up from
//! `user_changes` on what it missed while it was away.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use user_service_api::backoff::Backoff;
use uuid::Uuid;

use crate::domain::StoreError;

use super::{
    feed::{decode_event, read_changes, revision_bounds, Feed},
    State, CHANNEL,
};

/// Changes read per round trip while the listener catches up.
const CATCH_UP_BATCH: usize = 256;

/// How often a replica notifies its own listener, and how long that
/// listener may hear nothing before its connection is presumed dead.
///
/// A connection whose peer vanished without a FIN or RST (a network
/// partition, a failed-over database host) looks idle forever: without
/// traffic the listener would wait on it indefinitely while every change
/// is lost. The heartbeat guarantees traffic on a healthy connection.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const LISTENER_SILENCE_LIMIT: Duration = Duration::from_secs(15);

pub(super) struct Heartbeat {
    /// A channel of this replica's own, so replicas do not hear each
    /// other's heartbeats.
    pub(super) channel: String,
}

impl Heartbeat {
    pub(super) fn new() -> Self {
        Self {
            channel: format!("user_events_hb_{}", Uuid::now_v7().simple()),
        }
    }

    /// Background: notifies the heartbeat channel through the request pool.
    pub(super) async fn run(self, pool: PgPool) {
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
pub(super) async fn listen(
    session: PgConnectOptions,
    connect_timeout: Duration,
    heartbeat_channel: String,
    // The request pool: the catch-up reads the table through it, as the
    // listener's own pool has its one connection taken by the listener.
    requests: PgPool,
    events: Arc<Feed>,
    state: Arc<State>,
) {
    let mut backoff = backoff(Duration::from_millis(100), Duration::from_secs(2));
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

/// The store's retry delays (the shared policy, `user_service_api::backoff`)
/// with ±50% jitter, so replicas that lost the database together do not
/// reconnect in lockstep.
pub(super) fn backoff(first: Duration, max: Duration) -> Backoff {
    Backoff::new(first, max).with_jitter(0.5)
}
