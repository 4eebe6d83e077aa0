//! The `UserStore` contract, run against every implementation so they
//! cannot drift: each check below is one function over `Arc<dyn UserStore>`
//! and becomes one test per store (`store_contract::memory::*`,
//! `store_contract::postgres::*`).
//!
//! Every store here keeps [`RETENTION`] changes, so the retention window
//! is reachable in a test.

use std::{collections::HashSet, sync::Arc, time::Duration};

use futures_util::StreamExt;

use time::OffsetDateTime;
use tokio::sync::broadcast;
use user_service::{
    domain::{
        now, DomainError, Email, EventKind, NewUser, PasswordHasher, StoreError, User, UserEvent,
        UserId, UserName, UserPatch, UserService, UserServiceLimits, UserStatus, UserStore,
        DEFAULT_ROLE,
    },
    store::MemoryStore,
};

/// Declares each check as a test on the memory store and on PostgreSQL.
macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $check() {
                    let store: std::sync::Arc<dyn user_service::domain::UserStore> =
                        std::sync::Arc::new(super::MemoryStore::with_retention(
                            1024,
                            super::RETENTION,
                        ));
                    super::$check(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(db) = crate::pg::fresh_db().await else {
                        return;
                    };
                    let mut settings = db.settings();
                    settings.store.change_retention = super::RETENTION;
                    let store = crate::pg::store_with(&settings).await;
                    super::$check(store).await;
                }
            )*
        }
    };
}

contract!(
    created_users_read_back_identically,
    unknown_ids_are_not_found,
    updates_apply_the_patch_and_set_updated_at,
    deletes_return_the_user_and_free_the_email,
    emails_are_unique_case_insensitively,
    of_concurrent_duplicate_creates_exactly_one_wins,
    list_after_pages_in_id_order,
    subscribers_see_later_changes_in_order,
    changes_after_replays_in_revision_order,
    a_revision_past_retention_is_out_of_range,
    a_resumed_watch_sees_every_change_once_across_the_switch_over,
);

/// Changes each contract store keeps for `changes_after`.
const RETENTION: usize = 16;

/// A stand-in for an argon2id PHC string (the PostgreSQL schema checks the
/// prefix; hashing for real would only slow these tests down).
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

fn new_user(email: &str, name: &str) -> NewUser {
    NewUser {
        id: UserId::generate(),
        email: Email::parse(email).unwrap(),
        name: UserName::parse(name).unwrap(),
        password_hash: HASH.into(),
        status: UserStatus::Active,
        roles: vec![DEFAULT_ROLE.into(), "auditor".into()],
        created_at: now(),
    }
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::now_v7().simple())
}

async fn next_event(events: &mut broadcast::Receiver<UserEvent>) -> UserEvent {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("no event within 5s")
        .expect("event")
}

async fn created_users_read_back_identically(store: Arc<dyn UserStore>) {
    let new = new_user(&unique("Mixed.Case"), "Ada Lovelace 李");
    let created = store.create(new.clone()).await.unwrap();
    assert_eq!(created.id, new.id);
    assert_eq!(created.email, new.email, "the original spelling is kept");
    assert_eq!(created.name, new.name);
    assert_eq!(created.status, UserStatus::Active);
    assert_eq!(created.roles, new.roles);
    assert_eq!(created.created_at, new.created_at);
    assert_eq!(created.updated_at, new.created_at);
    // Timestamps round-trip exactly (microseconds, UTC instant).
    assert_eq!(store.get(new.id).await.unwrap(), created);
}

async fn unknown_ids_are_not_found(store: Arc<dyn UserStore>) {
    let id = UserId::generate();
    assert!(matches!(store.get(id).await, Err(StoreError::NotFound(x)) if x == id));
    let patch = UserPatch {
        name: Some(UserName::parse("X").unwrap()),
        status: None,
    };
    assert!(matches!(
        store.update(id, patch, now()).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete(id).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn updates_apply_the_patch_and_set_updated_at(store: Arc<dyn UserStore>) {
    let created = store
        .create(new_user(&unique("upd"), "Before"))
        .await
        .unwrap();
    let at = now() + time::Duration::seconds(1);
    let renamed = store
        .update(
            created.id,
            UserPatch {
                name: Some(UserName::parse("After").unwrap()),
                status: None,
            },
            at,
        )
        .await
        .unwrap();
    assert_eq!(renamed.name.as_str(), "After");
    assert_eq!(renamed.status, UserStatus::Active, "unpatched field kept");
    assert_eq!(renamed.created_at, created.created_at);
    assert_eq!(renamed.updated_at, at);

    let at2 = at + time::Duration::seconds(1);
    let deactivated = store
        .update(
            created.id,
            UserPatch {
                name: None,
                status: Some(UserStatus::Inactive),
            },
            at2,
        )
        .await
        .unwrap();
    assert_eq!(deactivated.name.as_str(), "After", "unpatched field kept");
    assert_eq!(deactivated.status, UserStatus::Inactive);
    assert_eq!(deactivated.updated_at, at2);
    assert_eq!(store.get(created.id).await.unwrap(), deactivated);
}

async fn deletes_return_the_user_and_free_the_email(store: Arc<dyn UserStore>) {
    let email = unique("del");
    let created = store.create(new_user(&email, "Gone")).await.unwrap();
    assert_eq!(store.delete(created.id).await.unwrap(), created);
    assert!(matches!(
        store.get(created.id).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.delete(created.id).await,
        Err(StoreError::NotFound(_))
    ));
    store
        .create(new_user(&email.to_uppercase(), "Again"))
        .await
        .expect("a deleted user's email can be registered again");
}

async fn emails_are_unique_case_insensitively(store: Arc<dyn UserStore>) {
    let email = unique("Alice");
    store.create(new_user(&email, "Alice")).await.unwrap();
    for variant in [email.clone(), email.to_lowercase(), email.to_uppercase()] {
        assert!(
            matches!(
                store.create(new_user(&variant, "Copy")).await,
                Err(StoreError::EmailTaken)
            ),
            "{variant}"
        );
    }
    // Beyond ASCII: both stores fold case the same way (Unicode), whatever
    // the database's collation.
    let tag = uuid::Uuid::now_v7().simple().to_string();
    store
        .create(new_user(&format!("ÉLODIE.{tag}@example.com"), "É"))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create(new_user(&format!("élodie.{tag}@example.com"), "é"))
            .await,
        Err(StoreError::EmailTaken)
    ));
}

async fn of_concurrent_duplicate_creates_exactly_one_wins(store: Arc<dyn UserStore>) {
    let email = unique("race");
    let attempts: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(&store);
            let spelled = if i % 2 == 0 {
                email.clone()
            } else {
                email.to_uppercase()
            };
            tokio::spawn(async move { store.create(new_user(&spelled, "Racer")).await })
        })
        .collect();
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::EmailTaken) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(won, 1);
}

async fn list_after_pages_in_id_order(store: Arc<dyn UserStore>) {
    // Each store in this suite starts empty.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            store
                .create(new_user(&unique(&format!("list{i}")), "Lister"))
                .await
                .unwrap()
                .id,
        );
    }
    ids.sort();
    let all: Vec<UserId> = store
        .list_after(None, 100)
        .await
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(all, ids);

    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_after(after, 2).await.unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        after = page.last().map(|u| u.id);
        paged.extend(page.into_iter().map(|u| u.id));
    }
    assert_eq!(paged, ids);

    assert!(store.list_after(None, 0).await.unwrap().is_empty());
    assert!(store
        .list_after(ids.last().copied(), 10)
        .await
        .unwrap()
        .is_empty());
    // `after` need not exist: paging continues past a deleted user.
    store.delete(ids[2]).await.unwrap();
    let rest: Vec<UserId> = store
        .list_after(Some(ids[2]), 10)
        .await
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(rest, ids[3..]);
}

async fn subscribers_see_later_changes_in_order(store: Arc<dyn UserStore>) {
    let mut events = store.subscribe();
    let created = store
        .create(new_user(&unique("watched"), "Watched"))
        .await
        .unwrap();
    let at = now();
    let updated = store
        .update(
            created.id,
            UserPatch {
                name: Some(UserName::parse("Renamed").unwrap()),
                status: None,
            },
            at,
        )
        .await
        .unwrap();
    let deleted = store.delete(created.id).await.unwrap();

    let expect = |event: UserEvent, kind: EventKind, user: &User, not_before: OffsetDateTime| {
        assert_eq!(event.kind, kind);
        assert_eq!(&event.user, user);
        assert!(event.occurred_at >= not_before, "{kind:?}");
    };
    expect(
        next_event(&mut events).await,
        EventKind::Created,
        &created,
        created.created_at,
    );
    let event = next_event(&mut events).await;
    assert_eq!(event.occurred_at, at);
    expect(event, EventKind::Updated, &updated, at);
    expect(
        next_event(&mut events).await,
        EventKind::Deleted,
        &deleted,
        at,
    );
    // Exactly once each: nothing else arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(matches!(
        events.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
}

fn rename(name: &str) -> UserPatch {
    UserPatch {
        name: Some(UserName::parse(name).unwrap()),
        status: None,
    }
}

/// Makes `count` changes (a create, then renames) and returns the
/// revisions they got, in order, as a subscriber saw them.
async fn make_changes(store: &Arc<dyn UserStore>, count: usize) -> Vec<u64> {
    let mut events = store.subscribe();
    let user = store
        .create(new_user(&unique("changes"), "Changes"))
        .await
        .unwrap();
    for i in 1..count {
        store
            .update(user.id, rename(&format!("Change {i}")), now())
            .await
            .unwrap();
    }
    let mut revisions = Vec::new();
    for _ in 0..count {
        revisions.push(next_event(&mut events).await.revision);
    }
    revisions
}

async fn changes_after_replays_in_revision_order(store: Arc<dyn UserStore>) {
    let mut events = store.subscribe();
    let created = store
        .create(new_user(&unique("replayed"), "Replayed"))
        .await
        .unwrap();
    let updated = store
        .update(created.id, rename("Renamed"), now())
        .await
        .unwrap();
    let deleted = store.delete(created.id).await.unwrap();
    let live: Vec<UserEvent> = vec![
        next_event(&mut events).await,
        next_event(&mut events).await,
        next_event(&mut events).await,
    ];
    let revisions: Vec<u64> = live.iter().map(|e| e.revision).collect();
    assert!(revisions[0] > 0, "revisions start above 0: {revisions:?}");
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing: {revisions:?}"
    );

    // What a subscriber saw live is exactly what replay returns.
    let before_first = revisions[0] - 1;
    let replayed = store.changes_after(before_first, 100).await.unwrap();
    assert_eq!(replayed, live);
    assert_eq!(replayed[0].user, created);
    assert_eq!(replayed[1].user, updated);
    assert_eq!(replayed[2].user, deleted);
    assert_eq!(replayed[2].kind, EventKind::Deleted);

    // Paged, strictly after the given revision.
    let first_two = store.changes_after(before_first, 2).await.unwrap();
    assert_eq!(first_two, live[..2]);
    let rest = store.changes_after(revisions[1], 2).await.unwrap();
    assert_eq!(rest, live[2..]);
    assert!(store
        .changes_after(revisions[2], 10)
        .await
        .unwrap()
        .is_empty());
}

async fn a_revision_past_retention_is_out_of_range(store: Arc<dyn UserStore>) {
    let revisions = make_changes(&store, 3 * RETENTION).await;
    let latest = *revisions.last().unwrap();
    // The newest RETENTION changes are always there.
    let keep_from = revisions[revisions.len() - RETENTION];
    let kept = store.changes_after(keep_from - 1, 1000).await.unwrap();
    let kept: Vec<u64> = kept.iter().map(|e| e.revision).collect();
    assert_eq!(kept, revisions[revisions.len() - RETENTION..]);

    // The first ones are not: refused, naming what is available.
    match store.changes_after(revisions[0], 10).await {
        Err(err @ StoreError::RevisionOutOfRange { oldest, .. }) => {
            assert!(oldest > revisions[1], "{err}");
            assert!(oldest <= keep_from, "{err}");
            let message = err.to_string();
            assert!(
                message.contains(&format!("oldest available revision is {oldest}")),
                "{message}"
            );
        }
        other => panic!("expected RevisionOutOfRange, got {other:?}"),
    }
    // Nor is a revision from the future (another or a reset store).
    assert!(matches!(
        store.changes_after(latest + 1, 10).await,
        Err(StoreError::RevisionOutOfRange { .. })
    ));

    // Through the domain: the watch call itself fails, before any event.
    let service = service_on(&store, 4);
    match service.watch(&[], revisions[0]).await {
        Err(DomainError::OutOfRange(message)) => {
            assert!(message.contains("oldest available revision"), "{message}")
        }
        Err(other) => panic!("expected OutOfRange, got {other:?}"),
        Ok(_) => panic!("expected OutOfRange, got a stream"),
    }
}

fn service_on(store: &Arc<dyn UserStore>, batch: usize) -> UserService {
    UserService::new(
        Arc::clone(store),
        PasswordHasher::new(1, 16),
        UserServiceLimits {
            list_batch: batch,
            bulk_max_items: 10,
        },
    )
}

/// A watcher resumed from a revision while writes keep flowing sees every
/// later change exactly once and in order: the replay (paged, 3 a time)
/// hands over to the live feed with no gap and no duplicate.
async fn a_resumed_watch_sees_every_change_once_across_the_switch_over(store: Arc<dyn UserStore>) {
    // The reference: a subscriber from before the first change.
    let mut reference = store.subscribe();
    let user = store
        .create(new_user(&unique("switch"), "Switch"))
        .await
        .unwrap();
    let start = next_event(&mut reference).await.revision;
    let total = RETENTION / 2;
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 0..total {
                store
                    .update(user.id, rename(&format!("Flow {i}")), now())
                    .await
                    .unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    // Resume after the create while the writer is running, so some of the
    // changes are replayed and the rest arrive live.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let service = service_on(&store, 3);
    let (from, watched) = service.watch(&[], start).await.unwrap();
    assert_eq!(from, start);
    let mut watched = Box::pin(watched);
    writer.await.unwrap();

    let mut expected = Vec::new();
    for _ in 0..total {
        expected.push(next_event(&mut reference).await);
    }
    let mut got = Vec::new();
    for _ in 0..total {
        let event = tokio::time::timeout(Duration::from_secs(5), watched.next())
            .await
            .expect("no event within 5s")
            .expect("stream ended")
            .expect("stream failed");
        got.push(event);
    }
    assert_eq!(
        got.iter().map(|e| e.revision).collect::<Vec<_>>(),
        expected.iter().map(|e| e.revision).collect::<Vec<_>>()
    );
    assert_eq!(got, expected);
    let unique_revisions: HashSet<u64> = got.iter().map(|e| e.revision).collect();
    assert_eq!(unique_revisions.len(), total);
    // And nothing more: no duplicate after the switch-over.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), watched.next())
            .await
            .is_err(),
        "no duplicate events"
    );
}
