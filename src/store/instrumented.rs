//! A [`UserStore`] decorator adding a latency sample to every operation
//! and, inside a sampled call, a child span, whatever the backend, and a
//! bound on how long any operation may take. `Server` wraps every store in
//! it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use metrics::Histogram;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::domain::{PoolStats, StoreError, StoreHealth, UserStore};
use crate::{
    domain::{NewUser, User, UserEvent, UserId, UserPatch},
    telemetry::{metrics as names, trace::ChildSpan},
};

#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Get,
    Update,
    Delete,
    ListAfter,
    ChangesAfter,
    Check,
}

const OPS: [Op; 7] = [
    Op::Create,
    Op::Get,
    Op::Update,
    Op::Delete,
    Op::ListAfter,
    Op::ChangesAfter,
    Op::Check,
];

impl Op {
    fn span_name(self) -> &'static str {
        match self {
            Op::Create => "UserStore/create",
            Op::Get => "UserStore/get",
            Op::Update => "UserStore/update",
            Op::Delete => "UserStore/delete",
            Op::ListAfter => "UserStore/list_after",
            Op::ChangesAfter => "UserStore/changes_after",
            Op::Check => "UserStore/check",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Get => "get",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::ListAfter => "list_after",
            Op::ChangesAfter => "changes_after",
            Op::Check => "check",
        }
    }
}

const OUTCOMES: [&str; 5] = ["ok", "not_found", "conflict", "unavailable", "error"];

fn outcome<T>(result: &Result<T, StoreError>) -> usize {
    match result {
        Ok(_) => 0,
        Err(StoreError::NotFound(_)) => 1,
        Err(StoreError::EmailTaken) => 2,
        Err(StoreError::Unavailable(_)) => 3,
        // A client asking for too old a revision, like a missing id.
        Err(StoreError::RevisionOutOfRange { .. }) => 1,
        Err(StoreError::Internal(_)) => 4,
    }
}

/// Wraps `inner`; see the module docs.
pub struct InstrumentedStore {
    inner: Arc<dyn UserStore>,
    /// `[operation][outcome]`, registered up front.
    latency: Vec<Vec<Histogram>>,
    /// An operation not finished by then is abandoned as `Unavailable`;
    /// `None` for a store that cannot hang (`UserStore::can_hang`).
    bound: Option<Duration>,
}

impl InstrumentedStore {
    /// `bound`: the longest an operation may take. A database that hangs
    /// (host frozen, network black hole) answers nothing, and its own
    /// `statement_timeout` cannot fire, so without this a query in flight
    /// would hold its call, and its pooled connection, until the call's
    /// deadline. Dropping the future drops the connection with it.
    ///
    /// Registers its metric handles at once: call it after the recorder is
    /// installed (`Server::bind` does), or they are no-ops.
    pub fn wrap(inner: Arc<dyn UserStore>, bound: Duration) -> Arc<dyn UserStore> {
        let latency = OPS
            .iter()
            .map(|op| {
                OUTCOMES
                    .iter()
                    .map(|outcome| {
                        metrics::histogram!(
                            names::STORE_OPERATION_SECONDS,
                            "operation" => op.name(),
                            "outcome" => *outcome,
                        )
                    })
                    .collect()
            })
            .collect();
        let bound = inner.can_hang().then_some(bound);
        Arc::new(Self {
            inner,
            latency,
            bound,
        })
    }

    /// Times `fut` and, inside a sampled call, records it as a child span
    /// (readiness checks run outside any call, so they never get one).
    async fn observe<T>(
        &self,
        op: Op,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let mut span = ChildSpan::start(op.span_name(), [("store.operation", op.name())]);
        let result = match self.bound {
            None => fut.await,
            Some(bound) => match tokio::time::timeout(bound, fut).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Unavailable(format!(
                    "{} got no answer within {bound:?}",
                    op.name(),
                ))),
            },
        };
        let outcome = outcome(&result);
        if matches!(
            result,
            Err(StoreError::Unavailable(_) | StoreError::Internal(_))
        ) {
            span.set_error(OUTCOMES[outcome]);
        }
        drop(span);
        if let Some(h) = self
            .latency
            .get(op as usize)
            .and_then(|by_outcome| by_outcome.get(outcome))
        {
            h.record(start.elapsed().as_secs_f64());
        }
        result
    }
}

#[async_trait]
impl UserStore for InstrumentedStore {
    async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        self.observe(Op::Create, self.inner.create(user)).await
    }

    async fn get(&self, id: UserId) -> Result<User, StoreError> {
        self.observe(Op::Get, self.inner.get(id)).await
    }

    async fn update(
        &self,
        id: UserId,
        patch: UserPatch,
        at: OffsetDateTime,
    ) -> Result<User, StoreError> {
        self.observe(Op::Update, self.inner.update(id, patch, at))
            .await
    }

    async fn delete(&self, id: UserId) -> Result<User, StoreError> {
        self.observe(Op::Delete, self.inner.delete(id)).await
    }

    async fn list_after(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<User>, StoreError> {
        self.observe(Op::ListAfter, self.inner.list_after(after, limit))
            .await
    }

    fn subscribe(&self) -> broadcast::Receiver<UserEvent> {
        self.inner.subscribe()
    }

    fn published_revision(&self) -> u64 {
        self.inner.published_revision()
    }

    async fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<UserEvent>, StoreError> {
        self.observe(Op::ChangesAfter, self.inner.changes_after(after, limit))
            .await
    }
}

#[async_trait]
impl StoreHealth for InstrumentedStore {
    async fn check(&self) -> Result<(), StoreError> {
        self.observe(Op::Check, self.inner.check()).await
    }
    fn pool_stats(&self) -> Option<PoolStats> {
        self.inner.pool_stats()
    }
}

/// Publishes the pool gauges of `store` (called at scrape time).
pub fn record_pool_stats(store: &dyn StoreHealth) {
    if let Some(stats) = store.pool_stats() {
        let used = stats.size.saturating_sub(stats.idle);
        metrics::gauge!(names::STORE_POOL_CONNECTIONS, "state" => "idle")
            .set(f64::from(stats.idle));
        metrics::gauge!(names::STORE_POOL_CONNECTIONS, "state" => "used").set(f64::from(used));
        metrics::gauge!(names::STORE_POOL_MAX_CONNECTIONS).set(f64::from(stats.max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// A memory store that reports a pool, as PostgreSQL does; with
    /// `hangs`, its `get` never answers, as a frozen database would not.
    struct Pooled {
        store: MemoryStore,
        hangs: bool,
    }

    impl Pooled {
        fn new(hangs: bool) -> Self {
            Self {
                store: MemoryStore::new(16),
                hangs,
            }
        }
    }

    #[async_trait]
    impl UserStore for Pooled {
        async fn create(&self, user: NewUser) -> Result<User, StoreError> {
            self.store.create(user).await
        }
        async fn get(&self, id: UserId) -> Result<User, StoreError> {
            if self.hangs {
                std::future::pending::<()>().await;
            }
            self.store.get(id).await
        }
        async fn update(
            &self,
            id: UserId,
            patch: UserPatch,
            at: OffsetDateTime,
        ) -> Result<User, StoreError> {
            self.store.update(id, patch, at).await
        }
        async fn delete(&self, id: UserId) -> Result<User, StoreError> {
            self.store.delete(id).await
        }
        async fn list_after(
            &self,
            after: Option<UserId>,
            limit: usize,
        ) -> Result<Vec<User>, StoreError> {
            self.store.list_after(after, limit).await
        }
        fn subscribe(&self) -> broadcast::Receiver<UserEvent> {
            self.store.subscribe()
        }
        fn published_revision(&self) -> u64 {
            self.store.published_revision()
        }
        async fn changes_after(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<UserEvent>, StoreError> {
            self.store.changes_after(after, limit).await
        }
    }

    #[async_trait]
    impl StoreHealth for Pooled {
        async fn check(&self) -> Result<(), StoreError> {
            self.store.check().await
        }
        fn pool_stats(&self) -> Option<PoolStats> {
            Some(PoolStats {
                size: 7,
                idle: 3,
                max: 10,
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_operation_of_a_store_that_can_hang_is_bounded() {
        let store = InstrumentedStore::wrap(Arc::new(Pooled::new(true)), Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let err = store.get(UserId::generate()).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // The memory store cannot hang: no timer is spent on it.
        assert!(!MemoryStore::new(16).can_hang());
    }

    #[tokio::test]
    async fn records_latency_by_outcome_and_pool_gauges() {
        let recorder = crate::telemetry::metrics::install().unwrap();
        let store = InstrumentedStore::wrap(Arc::new(Pooled::new(false)), Duration::from_secs(5));
        store.list_after(None, 10).await.unwrap();
        record_pool_stats(store.as_ref());
        let text = recorder.render();
        assert!(
            text.contains(
                "user_service_store_operation_duration_seconds_bucket{operation=\"list_after\",outcome=\"ok\",le=\"0.0005\"}"
            ),
            "{text}"
        );
        assert!(text.contains("user_service_store_pool_connections{state=\"idle\"} 3"));
        assert!(text.contains("user_service_store_pool_connections{state=\"used\"} 4"));
        assert!(text.contains("user_service_store_pool_max_connections 10"));
    }
}
