//! The ports the domain needs from the outside, defined here so that the
//! adapters depend on the domain and never the other way round: storage
//! (`UserStore`, implemented in `crate::store`) and its operational face
//! (`StoreHealth`, all that readiness and metrics see of a store).

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use super::{NewUser, User, UserEvent, UserId, UserPatch};

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
    /// `changes_after` cannot serve changes after `requested`: some of them
    /// were pruned (it is older than the retention window), or it is newer
    /// than the latest revision (a client of another or a reset store).
    /// The text is meant for clients: it names what is available.
    #[error("{}", out_of_range_message(*requested, *oldest, *latest))]
    RevisionOutOfRange {
        requested: u64,
        /// The oldest revision still retained (`latest + 1` when none is).
        oldest: u64,
        latest: u64,
    },
    #[error("store failure: {0}")]
    Internal(String),
}

fn out_of_range_message(requested: u64, oldest: u64, latest: u64) -> String {
    if requested > latest {
        format!(
            "revision {requested} is newer than the latest revision {latest}; \
             re-read the users and watch again without a revision"
        )
    } else {
        format!(
            "changes after revision {requested} are no longer retained: the oldest available \
             revision is {oldest}; re-read the users and watch again without a revision"
        )
    }
}

/// Whether `changes_after(after)` can be answered completely by a store
/// that retains revisions `oldest..=latest` (`oldest = latest + 1` when it
/// retains none): every change after `after` must still be there.
pub fn check_revision(after: u64, oldest: u64, latest: u64) -> Result<(), StoreError> {
    if after > latest || after.saturating_add(1) < oldest {
        Err(StoreError::RevisionOutOfRange {
            requested: after,
            oldest,
            latest,
        })
    } else {
        Ok(())
    }
}

/// The operations the service needs from storage.
///
/// Contract (checked against every implementation by `tests/it/store_contract.rs`):
/// - email uniqueness is case-insensitive and atomic: of concurrent creates
///   with the same email exactly one succeeds;
/// - `list_after` returns users ordered by id, strictly after `after`;
/// - every successful change gets a revision, strictly increasing in
///   commit order (gaps allowed), and is published to subscribers in
///   revision order, to every subscriber that existed before the change
///   (the PostgreSQL store delivers through NOTIFY, so one subscribing just
///   after a commit may also see that change);
/// - the last `store.change_retention` revisions (at least) can be read
///   back with `changes_after`, so a subscriber can be resumed without a
///   gap: subscribe first, then read `changes_after(last_seen)` until it
///   is exhausted, then skip live events up to the last revision read
///   (`domain::UserService::watch` does exactly that).
#[async_trait]
pub trait UserStore: StoreHealth {
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
    /// A receiver of every change committed from now on, in revision order
    /// and without gaps for as long as it stays open. The store closes it
    /// (`RecvError::Closed`) if it ever cannot keep that promise (the
    /// PostgreSQL listener was away for longer than the retention window);
    /// the subscriber then resumes with `changes_after`.
    fn subscribe(&self) -> broadcast::Receiver<UserEvent>;
    /// The revision of the last change published to subscribers so far (0
    /// if none, or not known yet). Read *before* `subscribe`, it is a safe
    /// point to resume from: every change the new receiver is owed has a
    /// higher revision.
    fn published_revision(&self) -> u64;
    /// At most `limit` changes with a revision greater than `after`, in
    /// revision order. `RevisionOutOfRange` when any change after `after`
    /// is no longer retained, or `after` is beyond the latest revision.
    async fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<UserEvent>, StoreError>;
    /// Whether an operation may wait on something outside the process (a
    /// database across the network) and so needs a time bound. An
    /// in-process store answers or panics; bounding it would only cost a
    /// timer per operation.
    fn can_hang(&self) -> bool {
        true
    }
}

/// The operational face of a store: what readiness and the pool gauges
/// need, and all that `health` and `admin` get to see of it.
#[async_trait]
pub trait StoreHealth: Send + Sync + 'static {
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
