//! The change feed: the local broadcast channel (`Feed`), the outbox
//! writes to `user_changes` with their notification, pruning, reading
//! changes back, and the event's JSON codec.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::domain::{
    check_revision, Email, EventKind, StoreError, User, UserEvent, UserId, UserName, UserStatus,
};

use super::{errors::classify, PostgresStore, CHANNEL};

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

/// The local broadcast channel of changes, replaceable: replacing it ends
/// every receiver of the old one (`RecvError::Closed` once they have read
/// what was sent before), which is how the listener tells watchers that it
/// cannot give them a gap-free feed and they must resume by revision.
pub(super) struct Feed {
    sender: std::sync::RwLock<broadcast::Sender<UserEvent>>,
    capacity: usize,
    /// The last revision sent (`UserStore::published_revision`).
    pub(super) position: AtomicU64,
}

impl Feed {
    pub(super) fn new(capacity: usize) -> Self {
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

    pub(super) fn subscribe(&self) -> broadcast::Receiver<UserEvent> {
        self.sender().subscribe()
    }

    pub(super) fn send(&self, event: UserEvent) {
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
    pub(super) fn restart(&self, position: u64) {
        let fresh = broadcast::channel(self.capacity).0;
        *self.sender.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.position.store(position, Ordering::SeqCst);
    }
}

/// Prune every this many revisions: often enough that the table stays
/// within about twice the retention, rarely enough that each prune is one
/// cheap range delete.
pub(super) fn prune_interval(retention: i64) -> i64 {
    retention.clamp(1, 100)
}

impl PostgresStore {
    /// After the write of `revision` committed: on every
    /// [`prune_interval`]-th revision, deletes the changes older than the
    /// retention window. Exactly one writer draws each revision, so replicas
    /// share the work without coordinating; gaps only delay a prune to the
    /// next multiple. A failure is logged and does not fail the write, which
    /// has committed: the next prune deletes what this one left.
    pub(super) async fn prune(&self, conn: &mut PgConnection, revision: i64) {
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

pub(super) fn encode_event(
    kind: EventKind,
    user: &User,
    at: OffsetDateTime,
) -> Result<String, StoreError> {
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

pub(super) fn decode_event(json: &str) -> Result<UserEvent, String> {
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
pub(super) async fn record_change(
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
pub(super) async fn revision_bounds(conn: &mut PgConnection) -> Result<(u64, u64), StoreError> {
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
pub(super) async fn read_changes(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{now, DEFAULT_ROLE};

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
}
