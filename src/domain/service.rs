//! The use cases: validate, hash, store, publish. Transport-neutral: the
//! gRPC edge hands in raw request fields and gets domain values back.

use std::{collections::HashSet, sync::Arc};

use futures_util::{stream, Stream, StreamExt};
use tokio::sync::broadcast::{self, error::RecvError};

use super::{
    now, Actor, DomainError, Email, NewUser, Password, PasswordHasher, User, UserEvent, UserId,
    UserName, UserPatch, UserStatus, UserStore, ValidationError, DEFAULT_ROLE,
};

/// Tunables of the use cases (from the `limits` config section).
#[derive(Debug, Clone)]
pub struct UserServiceLimits {
    /// Users fetched from the store per round trip while streaming `ListUsers`.
    pub list_batch: usize,
    /// Items accepted per `BulkCreateUsers` stream.
    pub bulk_max_items: usize,
}

/// The status an update asks for, as it came off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedStatus {
    /// Not set (the wire's UNSPECIFIED).
    Unset,
    Set(UserStatus),
    /// A value this version of the contract does not know.
    Unknown(i32),
}

/// One item of a `BulkCreateUsers` stream, as it came off the wire.
#[derive(Debug, Clone)]
pub struct CreateUser {
    pub email: String,
    pub name: String,
    pub password: String,
}

/// What a bulk create did.
#[derive(Debug, Default)]
pub struct BulkOutcome {
    /// The created users' ids, in the order their items arrived.
    pub created: Vec<UserId>,
    /// Each refused item's 0-based index and reason, in stream order. Past
    /// `bulk_max_items` the last entry is one `Overloaded` for the first
    /// item not processed.
    pub refused: Vec<(usize, DomainError)>,
}

/// Items validated and hashed ahead of the insert in a bulk create: enough
/// to keep the hashing threads busy, few enough that a client that stops
/// early wastes little work.
const BULK_LOOKAHEAD: usize = 4;

/// An update request, before validation.
#[derive(Debug, Clone)]
pub struct UpdateUser {
    pub user_id: String,
    pub name: String,
    pub status: RequestedStatus,
    /// `update_mask` paths; empty means "every field that is set".
    pub paths: Vec<String>,
}

impl UpdateUser {
    /// The id and the patch, or every violation at once: what `update`
    /// checks before it looks at the caller or the store.
    pub fn validate(&self) -> Result<(UserId, UserPatch), ValidationError> {
        let mut errors = ValidationError::default();
        let id = errors.check(UserId::parse("user_id", &self.user_id));
        let patch = errors.check(patch_from(self));
        match (id, patch) {
            (Some(id), Some(patch)) => Ok((id, patch)),
            _ => Err(errors),
        }
    }
}

/// `ListUsers`' request checked: the id to list after (the page token) and
/// how many users at most (`usize::MAX` for a page size of 0).
pub fn list_position(
    page_size: i32,
    page_token: &str,
) -> Result<(Option<UserId>, usize), ValidationError> {
    let mut errors = ValidationError::default();
    if page_size < 0 {
        errors.add("page_size", "must not be negative (0 means all users)");
    }
    let after = if page_token.is_empty() {
        None
    } else {
        errors.check(UserId::parse("page_token", page_token).map_err(|_| {
            ValidationError::single("page_token", "must be the id of the last user received")
        }))
    };
    errors.into_result()?;
    let remaining = match usize::try_from(page_size) {
        Ok(0) | Err(_) => usize::MAX,
        Ok(n) => n,
    };
    Ok((after, remaining))
}

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

/// What hashing does when its queue is full.
#[derive(Debug, Clone, Copy)]
enum Queue {
    Wait,
    FailFast,
}

#[derive(Clone)]
pub struct UserService {
    store: Arc<dyn UserStore>,
    hasher: PasswordHasher,
    limits: UserServiceLimits,
}

impl UserService {
    pub fn new(
        store: Arc<dyn UserStore>,
        hasher: PasswordHasher,
        limits: UserServiceLimits,
    ) -> Self {
        Self {
            store,
            hasher,
            limits,
        }
    }

    /// Validates every field (reporting all violations at once) and hashes
    /// the password: the slow, parallelisable half of creating a user.
    /// Waits for room in the hashing queue (BulkCreateUsers: each stream
    /// hashes only a few items ahead).
    pub async fn prepare(
        &self,
        email: &str,
        name: &str,
        password: String,
    ) -> Result<NewUser, DomainError> {
        self.prepare_with(email, name, password, Queue::Wait).await
    }

    async fn prepare_with(
        &self,
        email: &str,
        name: &str,
        password: String,
        queue: Queue,
    ) -> Result<NewUser, DomainError> {
        let mut errors = ValidationError::default();
        let email = errors.check(Email::parse(email));
        let name = errors.check(UserName::parse(name));
        let password = errors.check(Password::parse(password));
        let (Some(email), Some(name), Some(password)) = (email, name, password) else {
            return Err(errors.into());
        };
        let password_hash = match queue {
            Queue::Wait => self.hasher.hash(password).await?,
            Queue::FailFast => self.hasher.try_hash(password).await?,
        };
        Ok(NewUser {
            id: UserId::generate(),
            email,
            name,
            password_hash,
            status: UserStatus::Active,
            roles: vec![DEFAULT_ROLE.to_owned()],
            created_at: now(),
        })
    }

    /// Stores a prepared user: the fast half, where uniqueness is decided.
    pub async fn insert(&self, user: NewUser) -> Result<User, DomainError> {
        Ok(self.store.create(user).await?)
    }

    pub async fn create(
        &self,
        email: &str,
        name: &str,
        password: String,
    ) -> Result<User, DomainError> {
        // One sign-up is one hash: with the queue full it is refused at once
        // (RESOURCE_EXHAUSTED) rather than left waiting with its request.
        let user = self
            .prepare_with(email, name, password, Queue::FailFast)
            .await?;
        self.insert(user).await
    }

    /// Creates the users of a stream, each on its own: a refused item does
    /// not stop the others. Validation and hashing (the slow part) run a few
    /// items ahead in parallel; inserts happen one by one in stream order,
    /// so with a duplicate email inside one stream the earlier item wins.
    /// Past `bulk_max_items` processing stops and earlier items stay
    /// created. A broken input stream (`Err(E)`, e.g. the client's
    /// transport) ends the call with that error.
    pub async fn bulk_create<E>(
        &self,
        items: impl Stream<Item = Result<CreateUser, E>>,
    ) -> Result<BulkOutcome, E> {
        enum Item<E> {
            Prepared(usize, Result<NewUser, DomainError>),
            OverCap(usize),
            Broken(E),
        }

        let cap = self.limits.bulk_max_items;
        let items = items
            .enumerate()
            .map(|(index, item)| async move {
                match item {
                    Err(err) => Item::Broken(err),
                    Ok(_) if index >= cap => Item::OverCap(index),
                    Ok(req) => Item::Prepared(
                        index,
                        self.prepare(&req.email, &req.name, req.password).await,
                    ),
                }
            })
            .buffered(BULK_LOOKAHEAD);
        futures_util::pin_mut!(items);

        let mut outcome = BulkOutcome::default();
        while let Some(item) = items.next().await {
            match item {
                Item::Broken(err) => return Err(err),
                Item::OverCap(index) => {
                    outcome.refused.push((
                        index,
                        DomainError::Overloaded(format!(
                            "a stream may carry at most {cap} items; items from index {index} on were not processed"
                        )),
                    ));
                    break;
                }
                Item::Prepared(index, Err(err)) => outcome.refused.push((index, err)),
                Item::Prepared(index, Ok(new_user)) => match self.insert(new_user).await {
                    Ok(user) => outcome.created.push(user.id),
                    Err(err) => outcome.refused.push((index, err)),
                },
            }
        }
        Ok(outcome)
    }

    /// One user; `actor` must be that user or an admin. The permission is
    /// checked before the lookup, so a denied caller cannot learn whether
    /// an id exists.
    pub async fn get(&self, actor: &Actor, user_id: &str) -> Result<User, DomainError> {
        let id = UserId::parse("user_id", user_id)?;
        actor.check_access(id)?;
        Ok(self.store.get(id).await?)
    }

    /// Changes a user; `actor` must be that user or an admin, and only an
    /// admin may change the status.
    pub async fn update(&self, actor: &Actor, request: UpdateUser) -> Result<User, DomainError> {
        let (id, patch) = request.validate()?;
        actor.check_access(id)?;
        if patch.status.is_some() {
            actor.check_status_change()?;
        }
        Ok(self.store.update(id, patch, now()).await?)
    }

    pub async fn delete(&self, user_id: &str) -> Result<User, DomainError> {
        let id = UserId::parse("user_id", user_id)?;
        Ok(self.store.delete(id).await?)
    }

    /// Users ordered by id, strictly after `page_token`, at most `page_size`
    /// (0 = all). Validation happens now; the users are read lazily, one
    /// batch per round trip as the consumer asks for more, so memory stays
    /// bounded for any table size and a dropped stream stops the reads.
    pub fn list(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<impl Stream<Item = Result<User, DomainError>> + Send + 'static, DomainError> {
        let (after, remaining) = list_position(page_size, page_token)?;
        let store = Arc::clone(&self.store);
        let batch = self.limits.list_batch.max(1);
        struct Cursor {
            after: Option<UserId>,
            remaining: usize,
            done: bool,
        }
        let pages = stream::unfold(
            Cursor {
                after,
                remaining,
                done: false,
            },
            move |mut cursor| {
                let store = Arc::clone(&store);
                async move {
                    if cursor.done || cursor.remaining == 0 {
                        return None;
                    }
                    let want = batch.min(cursor.remaining);
                    match store.list_after(cursor.after, want).await {
                        Ok(users) => {
                            cursor.done = users.len() < want;
                            cursor.remaining -= users.len();
                            cursor.after = users.last().map(|u| u.id).or(cursor.after);
                            let items: Vec<Result<User, DomainError>> =
                                users.into_iter().map(Ok).collect();
                            Some((stream::iter(items), cursor))
                        }
                        Err(err) => {
                            cursor.done = true;
                            Some((stream::iter(vec![Err(err.into())]), cursor))
                        }
                    }
                }
            },
        );
        Ok(pages.flatten())
    }

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

const MASK_NAME: &str = "name";
const MASK_STATUS: &str = "status";

fn patch_from(request: &UpdateUser) -> Result<UserPatch, ValidationError> {
    let mut errors = ValidationError::default();
    let (set_name, set_status) = if request.paths.is_empty() {
        (
            !request.name.is_empty(),
            request.status != RequestedStatus::Unset,
        )
    } else {
        let mut name = false;
        let mut status = false;
        for path in &request.paths {
            match path.as_str() {
                MASK_NAME => name = true,
                MASK_STATUS => status = true,
                other => errors.add(
                    "update_mask",
                    format!("unknown path {other:?}; allowed: \"name\", \"status\""),
                ),
            }
        }
        (name, status)
    };
    if !set_name && !set_status && errors.is_empty() {
        errors.add("update_mask", "nothing to update: set name and/or status");
    }
    let name = if set_name {
        errors.check(UserName::parse(&request.name))
    } else {
        None
    };
    let status = if set_status {
        match request.status {
            RequestedStatus::Set(status) => Some(status),
            RequestedStatus::Unset => {
                errors.add(
                    "status",
                    "must be USER_STATUS_ACTIVE or USER_STATUS_INACTIVE",
                );
                None
            }
            RequestedStatus::Unknown(value) => {
                errors.add("status", format!("unknown status value {value}"));
                None
            }
        }
    } else {
        None
    };
    errors.into_result()?;
    Ok(UserPatch { name, status })
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn update(name: &str, status: RequestedStatus, paths: &[&str]) -> UpdateUser {
        UpdateUser {
            user_id: UserId::generate().to_string(),
            name: name.into(),
            status,
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn fields(err: ValidationError) -> Vec<String> {
        err.violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_page_token_is_an_id_and_a_page_size_of_zero_is_all() {
        let id = UserId::generate();
        assert_eq!(
            list_position(0, &id.to_string()).unwrap(),
            (Some(id), usize::MAX)
        );
        assert_eq!(list_position(3, "").unwrap(), (None, 3));
        let err = list_position(-1, "not-an-id").unwrap_err();
        assert_eq!(fields(err), ["page_size", "page_token"]);
    }

    #[test]
    fn watch_ids_are_reported_by_index() {
        let id = UserId::generate().to_string();
        assert_eq!(watch_ids(&[id.clone(), id.clone()]).unwrap().len(), 1);
        let err = watch_ids(&[id, "x".into(), String::new()]).unwrap_err();
        assert_eq!(fields(err), ["user_ids[1]", "user_ids[2]"]);
    }

    #[test]
    fn update_validation_reports_the_id_and_the_patch_together() {
        let mut request = update("", RequestedStatus::Unset, &["name"]);
        request.user_id = "nope".into();
        assert_eq!(fields(request.validate().unwrap_err()), ["user_id", "name"]);
    }

    #[test]
    fn empty_mask_means_every_field_that_is_set() {
        let p = patch_from(&update("Ada", RequestedStatus::Unset, &[])).unwrap();
        assert_eq!(p.name.unwrap().as_str(), "Ada");
        assert_eq!(p.status, None);
        let p = patch_from(&update("", RequestedStatus::Set(UserStatus::Inactive), &[])).unwrap();
        assert_eq!(p.name, None);
        assert_eq!(p.status, Some(UserStatus::Inactive));
    }

    #[test]
    fn mask_selects_fields_even_if_others_are_set() {
        let p = patch_from(&update(
            "Ada",
            RequestedStatus::Set(UserStatus::Inactive),
            &["status"],
        ))
        .unwrap();
        assert_eq!(p.name, None);
        assert_eq!(p.status, Some(UserStatus::Inactive));
    }

    #[test]
    fn bad_masks_are_rejected_with_the_field_named() {
        assert_eq!(
            fields(patch_from(&update("Ada", RequestedStatus::Unset, &["email"])).unwrap_err()),
            ["update_mask"]
        );
        assert_eq!(
            fields(patch_from(&update("", RequestedStatus::Unset, &[])).unwrap_err()),
            ["update_mask"]
        );
        assert_eq!(
            fields(
                patch_from(&update("", RequestedStatus::Unset, &["name", "status"])).unwrap_err()
            ),
            ["name", "status"]
        );
        assert_eq!(
            fields(patch_from(&update("Ada", RequestedStatus::Unknown(9), &[])).unwrap_err()),
            ["status"]
        );
    }
}
