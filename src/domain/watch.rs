//! WatchUsers: the change feed of one watcher, replayed from the store by
//! revision and then followed live, each change exactly once.

use std::{collections::HashSet, sync::Arc};

use futures_util::{stream, Stream};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{DomainError, UserEvent, UserId, UserService, UserStore, ValidationError};

/// `WatchUsers`' `user_ids` checked, every bad one reported by index.
pub fn watch_ids(user_ids: &[String]) -> Result<HashSet<UserId>, ValidationError> {
    let mut errors = ValidationError::default();
    let ids: HashSet<UserId> = user_ids
        .iter()
        .enumerate()
        .filter_map(|(i, raw)| errors.check(UserId::parse(&format!("user_ids[{i}]"), raw)))
        .collect();
    errors.into_result()?;
    Ok(ids)
}

impl UserService {
    /// Changes for the given ids (empty = all): with `since_revision` 0,
    /// those committed from now on; otherwise every change after that
    /// revision (replayed from the store), then the live ones, each exactly
    /// once and in revision order. The subscription is live when this
    /// returns, and a revision the store no longer retains is refused here
    /// (`OutOfRange`), before any event.
    ///
    /// Also returns the revision the feed starts after (`since_revision`,
    /// or for a live-only watch the store's published revision, read
    /// before subscribing): resuming from it loses nothing even if the
    /// client goes away before its first event.
    pub async fn watch(
        &self,
        user_ids: &[String],
        since_revision: u64,
    ) -> Result<
        (
            u64,
            impl Stream<Item = Result<UserEvent, DomainError>> + Send + 'static,
        ),
        DomainError,
    > {
        let ids = watch_ids(user_ids)?;

        // Subscribe *before* reading the backlog: whatever commits after the
        // read is then in the receiver, whatever committed before it is in
        // the backlog, and the overlap is skipped by revision. (The other
        // order would leave a window in which a change is in neither.)
        let start = if since_revision == 0 {
            self.store.published_revision()
        } else {
            since_revision
        };
        let live = self.store.subscribe();
        let batch = self.limits.list_batch.max(1);
        let (backlog, replaying) = if since_revision == 0 {
            (Vec::new(), false)
        } else {
            let first = self.store.changes_after(since_revision, batch).await?;
            let more = first.len() >= batch;
            (first, more)
        };
        let feed = Feed {
            store: Arc::clone(&self.store),
            live,
            cursor: since_revision,
            backlog: backlog.into_iter(),
            replaying,
            batch,
            ids,
            done: false,
        };
        let events = stream::unfold(feed, |mut feed| async move {
            let item = feed.next().await?;
            Some((item, feed))
        });
        Ok((start, events))
    }
}

/// One watcher's position in the change feed: replaying the backlog from
/// the store page by page, then following the live receiver.
struct Feed {
    store: Arc<dyn UserStore>,
    live: broadcast::Receiver<UserEvent>,
    /// The last revision delivered or filtered out; live events at or below
    /// it were already replayed.
    cursor: u64,
    backlog: std::vec::IntoIter<UserEvent>,
    /// More backlog may be in the store than the page in hand.
    replaying: bool,
    batch: usize,
    ids: HashSet<UserId>,
    done: bool,
}

impl Feed {
    fn wanted(&self, event: &UserEvent) -> bool {
        self.ids.is_empty() || self.ids.contains(&event.user.id)
    }

    async fn next(&mut self) -> Option<Result<UserEvent, DomainError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(event) = self.backlog.next() {
                self.cursor = event.revision;
                if self.wanted(&event) {
                    return Some(Ok(event));
                }
                continue;
            }
            if self.replaying {
                // A page at a time, only when the client has taken the
                // previous one, so a long backlog costs bounded memory.
                match self.store.changes_after(self.cursor, self.batch).await {
                    Ok(page) => {
                        self.replaying = page.len() >= self.batch;
                        self.backlog = page.into_iter();
                    }
                    Err(err) => return self.fail(err.into()),
                }
                continue;
            }
            match self.live.recv().await {
                // No revision: a change made through an older server during
                // a rolling upgrade (see `store::postgres`). Delivered live,
                // outside the revision order.
                Ok(event) if event.revision == 0 => {
                    if self.wanted(&event) {
                        return Some(Ok(event));
                    }
                }
                Ok(event) if event.revision <= self.cursor => {}
                Ok(event) => {
                    self.cursor = event.revision;
                    if self.wanted(&event) {
                        return Some(Ok(event));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    return self.fail(DomainError::Overloaded(format!(
                        "watcher fell {missed} events behind and was dropped; watch again with since_revision = {}",
                        self.cursor
                    )))
                }
                // The store ended the feed: it could not keep it gap-free
                // (see `UserStore::subscribe`). Retryable, by revision.
                Err(RecvError::Closed) => {
                    return self.fail(DomainError::Unavailable(format!(
                        "the change feed was interrupted after revision {}",
                        self.cursor
                    )))
                }
            }
        }
    }

    fn fail(&mut self, err: DomainError) -> Option<Result<UserEvent, DomainError>> {
        self.done = true;
        Some(Err(err))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::domain::{test_support::fields, PasswordHasher, UserServiceLimits};
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_so() {
        let service = UserService::new(
            Arc::new(MemoryStore::new(2)),
            PasswordHasher::new(1, 8),
            UserServiceLimits {
                list_batch: 10,
                bulk_max_items: 10,
            },
        );
        let mut events = Box::pin(service.watch(&[], 0).await.unwrap().1);
        for i in 0..5 {
            service
                .create(
                    &format!("lag{i}@example.com"),
                    "Lag",
                    "correct horse".into(),
                )
                .await
                .unwrap();
        }
        match events.next().await {
            Some(Err(DomainError::Overloaded(message))) => {
                assert!(message.contains("behind"), "{message}")
            }
            other => panic!("expected a lag error, got {other:?}"),
        }
    }

    #[test]
    fn watch_ids_are_reported_by_index() {
        let id = UserId::generate().to_string();
        assert_eq!(watch_ids(&[id.clone(), id.clone()]).unwrap().len(), 1);
        let err = watch_ids(&[id, "x".into(), String::new()]).unwrap_err();
        assert_eq!(fields(err), ["user_ids[1]", "user_ids[2]"]);
    }
}
