//! Every RPC of user.v1.UserService and its error paths, against the
//! in-memory store.

use std::time::Duration;

use futures_util::StreamExt;
use prost_types::FieldMask;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};
use user_service::pb::{
    self, BulkCreateUsersResponse, CreateUserRequest, DeleteUserRequest, GetUserRequest,
    ListUsersRequest, UpdateUserRequest, UserEventType, UserStatus, WatchUsersRequest,
};

use crate::helpers::{
    bad_fields, create_request, email, rename_request, spawn_app, spawn_app_with, test_settings,
};

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

async fn list_all(
    client: &mut pb::user_service_client::UserServiceClient<tonic::transport::Channel>,
    req: ListUsersRequest,
) -> Result<Vec<pb::User>, tonic::Status> {
    let mut stream = client.list_users(req).await?.into_inner();
    let mut users = Vec::new();
    while let Some(user) = stream.next().await {
        users.push(user?);
    }
    Ok(users)
}

#[tokio::test]
async fn create_user_assigns_id_status_roles_and_timestamps() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let email = email("Create");
    let user = client
        .create_user(CreateUserRequest {
            email: email.clone(),
            name: "  Ada Lovelace  ".into(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap()
        .into_inner();

    let id = uuid::Uuid::parse_str(&user.id).unwrap();
    assert_eq!(id.get_version_num(), 7, "ids are UUIDv7");
    assert_eq!(user.email, email);
    assert_eq!(user.name, "Ada Lovelace", "name is trimmed");
    assert_eq!(user.status, UserStatus::Active as i32);
    assert_eq!(user.roles, ["user"]);
    assert!(user.created_at.is_some());
    assert_eq!(user.created_at, user.updated_at);

    let fetched = app.get_user(&user.id).await.unwrap();
    assert_eq!(fetched, user);
}

#[tokio::test]
async fn create_user_reports_every_invalid_field() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let status = client
        .create_user(CreateUserRequest {
            email: "not-an-email".into(),
            name: "   ".into(),
            password: "short".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["email", "name", "password"]);
    assert!(
        !status.message().contains("short"),
        "the password is never echoed"
    );

    let long_name = "n".repeat(101);
    let status = client
        .create_user(CreateUserRequest {
            email: email("long"),
            name: long_name,
            password: "p".repeat(1025),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&status), ["name", "password"]);

    let users = list_all(&mut client, ListUsersRequest::default())
        .await
        .unwrap();
    assert!(users.is_empty(), "nothing was created");
}

#[tokio::test]
async fn duplicate_email_is_already_exists_case_insensitively() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let first = create_request("dup");
    client.create_user(first.clone()).await.unwrap();

    let mut again = create_request("other");
    again.email = first.email.to_uppercase();
    let status = client.create_user(again).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn concurrent_creates_with_one_email_exactly_one_wins() {
    let app = spawn_app().await;
    let email = email("race");
    let attempts = (0..8).map(|i| {
        let mut client = app.client.clone();
        let email = if i % 2 == 0 {
            email.clone()
        } else {
            email.to_uppercase()
        };
        tokio::spawn(async move {
            client
                .create_user(CreateUserRequest {
                    email,
                    name: format!("Racer {i}"),
                    password: "correct horse battery".into(),
                })
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        })
    });
    let results: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert!(results
        .iter()
        .filter_map(|r| r.err())
        .all(|code| code == Code::AlreadyExists));
}

#[tokio::test]
async fn get_user_distinguishes_malformed_and_unknown_ids() {
    let app = spawn_app().await;
    let mut client = app.client.clone();

    let status = client
        .get_user(GetUserRequest {
            user_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["user_id"]);

    let unknown = uuid::Uuid::now_v7().to_string();
    let status = client
        .get_user(GetUserRequest {
            user_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&unknown));
}

#[tokio::test]
async fn update_user_follows_the_mask_and_bumps_updated_at() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let user = app.create_user("upd").await;
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Only "status" is in the mask: the name in the request is ignored.
    let updated = client
        .update_user(UpdateUserRequest {
            user_id: user.id.clone(),
            name: "Ignored".into(),
            status: UserStatus::Inactive as i32,
            update_mask: mask(&["status"]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.status, UserStatus::Inactive as i32);
    assert_eq!(updated.name, user.name);
    assert_eq!(updated.created_at, user.created_at);
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos)).unwrap();
    assert!(
        ts(&updated.updated_at) > ts(&user.updated_at),
        "updated_at is bumped"
    );

    // Empty mask: every field that is set.
    let updated = client
        .update_user(UpdateUserRequest {
            user_id: user.id.clone(),
            name: "Grace".into(),
            status: UserStatus::Unspecified as i32,
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Grace");
    assert_eq!(
        updated.status,
        UserStatus::Inactive as i32,
        "unset status is left alone"
    );

    let fetched = app.get_user(&user.id).await.unwrap();
    assert_eq!(fetched, updated, "the update is stored");
}

#[tokio::test]
async fn update_user_rejects_bad_masks_and_values() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let user = app.create_user("updbad").await;

    let cases = [
        (
            UpdateUserRequest {
                user_id: user.id.clone(),
                name: "X".into(),
                status: 0,
                update_mask: mask(&["email"]),
            },
            vec!["update_mask"],
        ),
        (
            UpdateUserRequest {
                user_id: user.id.clone(),
                name: String::new(),
                status: 0,
                update_mask: None,
            },
            vec!["update_mask"],
        ),
        (
            UpdateUserRequest {
                user_id: user.id.clone(),
                name: String::new(),
                status: 0,
                update_mask: mask(&["name", "status"]),
            },
            vec!["name", "status"],
        ),
        (
            UpdateUserRequest {
                user_id: user.id.clone(),
                name: String::new(),
                status: 42,
                update_mask: None,
            },
            vec!["status"],
        ),
        (rename_request("bad", "X"), vec!["user_id"]),
    ];
    for (request, fields) in cases {
        let status = client.update_user(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert_eq!(bad_fields(&status), fields, "{request:?}");
    }

    let status = client
        .update_user(rename_request(uuid::Uuid::now_v7().to_string(), "X"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let fetched = app.get_user(&user.id).await.unwrap();
    assert_eq!(fetched, user, "failed updates change nothing");
}

#[tokio::test]
async fn delete_user_removes_it_once() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let user = app.create_user("del").await;

    client
        .delete_user(DeleteUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap();
    let status = client
        .get_user(GetUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .delete_user(DeleteUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .delete_user(DeleteUserRequest {
            user_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // The email is free again.
    let mut again = create_request("del2");
    again.email = user.email.clone();
    client.create_user(again).await.unwrap();
}

#[tokio::test]
async fn list_users_streams_in_id_order_with_size_and_resume_token() {
    let mut settings = test_settings();
    settings.limits.list_batch = 3; // force several store round trips
    let app = spawn_app_with(settings).await;
    let mut client = app.client.clone();

    let mut created = Vec::new();
    for i in 0..10 {
        created.push(
            client
                .create_user(create_request(&format!("list{i}")))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let ids: Vec<String> = created.iter().map(|u| u.id.clone()).collect();

    let all = list_all(
        &mut client,
        ListUsersRequest {
            page_size: 0,
            page_token: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(all.iter().map(|u| u.id.clone()).collect::<Vec<_>>(), ids);

    let first = list_all(
        &mut client,
        ListUsersRequest {
            page_size: 4,
            page_token: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(first.len(), 4);
    let rest = list_all(
        &mut client,
        ListUsersRequest {
            page_size: 0,
            page_token: first[3].id.clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        rest.iter().map(|u| u.id.clone()).collect::<Vec<_>>(),
        ids[4..]
    );

    let last = list_all(
        &mut client,
        ListUsersRequest {
            page_size: 5,
            page_token: ids[9].clone(),
        },
    )
    .await
    .unwrap();
    assert!(last.is_empty(), "nothing after the last id");

    // A token of a deleted user still resumes after it.
    client
        .delete_user(DeleteUserRequest {
            user_id: ids[5].clone(),
        })
        .await
        .unwrap();
    let after_deleted = list_all(
        &mut client,
        ListUsersRequest {
            page_size: 2,
            page_token: ids[5].clone(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        after_deleted
            .iter()
            .map(|u| u.id.clone())
            .collect::<Vec<_>>(),
        ids[6..8]
    );
}

#[tokio::test]
async fn list_users_rejects_bad_arguments() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let status = list_all(
        &mut client,
        ListUsersRequest {
            page_size: -1,
            page_token: String::new(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["page_size"]);
    let status = list_all(
        &mut client,
        ListUsersRequest {
            page_size: 0,
            page_token: "garbage".into(),
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["page_token"]);
}

#[tokio::test]
async fn list_users_survives_a_client_that_goes_away() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    for i in 0..5 {
        client
            .create_user(create_request(&format!("gone{i}")))
            .await
            .unwrap();
    }
    let mut stream = client
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(stream.next().await.unwrap().is_ok());
    drop(stream); // cancels the call (RST_STREAM)
    let all = list_all(&mut client, ListUsersRequest::default())
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        5,
        "the server keeps serving after a cancelled stream"
    );
}

#[tokio::test]
async fn bulk_create_reports_failures_by_index_and_creates_the_rest() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let existing = app.create_user("bulk-existing").await;

    let good_a = create_request("bulk-a");
    let good_b = create_request("bulk-b");
    let mut dup_of_existing = create_request("bulk-dup");
    dup_of_existing.email = existing.email.to_uppercase();
    let mut dup_in_stream = create_request("bulk-dup2");
    dup_in_stream.email = good_a.email.clone();
    let bad = CreateUserRequest {
        email: "bad".into(),
        name: "Bad".into(),
        password: "correct horse".into(),
    };
    let items = vec![good_a, bad, dup_of_existing, good_b, dup_in_stream];

    let response: BulkCreateUsersResponse = client
        .bulk_create_users(futures_util::stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.created_count, 2);
    assert_eq!(response.user_ids.len(), 2);
    let errors: Vec<(i32, &str)> = response
        .errors
        .iter()
        .map(|e| (e.index, e.code.as_str()))
        .collect();
    assert_eq!(
        errors,
        [
            (1, "INVALID_ARGUMENT"),
            (2, "ALREADY_EXISTS"),
            (4, "ALREADY_EXISTS")
        ]
    );
    assert!(
        response.errors[0].message.contains("email"),
        "{:?}",
        response.errors[0]
    );

    for id in &response.user_ids {
        client
            .get_user(GetUserRequest {
                user_id: id.clone(),
            })
            .await
            .unwrap();
    }
    let all = list_all(&mut client, ListUsersRequest::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn bulk_create_stops_at_the_item_cap_and_says_so() {
    let mut settings = test_settings();
    settings.limits.bulk_max_items = 3;
    let app = spawn_app_with(settings).await;
    let mut client = app.client.clone();

    let items: Vec<_> = (0..5).map(|i| create_request(&format!("cap{i}"))).collect();
    let response = client
        .bulk_create_users(futures_util::stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.created_count, 3);
    assert_eq!(response.errors.len(), 1);
    assert_eq!(response.errors[0].index, 3);
    assert_eq!(response.errors[0].code, "RESOURCE_EXHAUSTED");
    assert!(response.errors[0].message.contains("at most 3"));
}

#[tokio::test]
async fn user_updates_answers_each_request_as_it_arrives() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let a = app.create_user("bidi-a").await;
    let b = app.create_user("bidi-b").await;

    let (tx, rx) = mpsc::channel(1);
    let mut answers = client
        .user_updates(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    // Lock-step: each answer arrives while the request stream is still open.
    tx.send(rename_request(a.id.clone(), "Alpha"))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .expect("answered before half-close")
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.id.as_str(), first.name.as_str()),
        (a.id.as_str(), "Alpha")
    );

    tx.send(UpdateUserRequest {
        user_id: b.id.clone(),
        name: String::new(),
        status: UserStatus::Inactive as i32,
        update_mask: mask(&["status"]),
    })
    .await
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), answers.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.status, UserStatus::Inactive as i32);

    drop(tx);
    assert!(
        answers.next().await.is_none(),
        "ends cleanly after half-close"
    );
}

#[tokio::test]
async fn user_updates_ends_at_the_first_failure_keeping_earlier_updates() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let a = app.create_user("bidi-fail").await;

    let requests = vec![
        rename_request(a.id.clone(), "Applied"),
        UpdateUserRequest {
            user_id: a.id.clone(),
            name: String::new(),
            status: 0,
            update_mask: mask(&["bogus"]),
        },
        rename_request(a.id.clone(), "Never"),
    ];
    let mut answers = client
        .user_updates(futures_util::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.next().await.unwrap().unwrap().name, "Applied");
    let status = answers.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("item 1"), "{}", status.message());
    assert_eq!(bad_fields(&status), ["update_mask"]);
    assert!(answers.next().await.is_none());

    let fetched = app.get_user(&a.id).await.unwrap();
    assert_eq!(
        fetched.name, "Applied",
        "earlier updates stay, later ones never ran"
    );

    // NOT_FOUND also names the index.
    let requests = vec![rename_request(uuid::Uuid::now_v7().to_string(), "X")];
    let mut answers = client
        .user_updates(futures_util::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let status = answers.next().await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().starts_with("item 0"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn watch_users_sees_changes_after_it_is_live_in_order() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let before = app.create_user("before-watch").await;

    // The call returns when the response headers arrive: the subscription is live.
    let mut events = client
        .watch_users(WatchUsersRequest::default())
        .await
        .unwrap()
        .into_inner();

    let user = app.create_user("watched").await;
    client
        .update_user(rename_request(user.id.clone(), "Renamed"))
        .await
        .unwrap();
    client
        .delete_user(DeleteUserRequest {
            user_id: user.id.clone(),
        })
        .await
        .unwrap();

    let mut got = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("event")
            .unwrap()
            .unwrap();
        got.push(event);
    }
    let kinds: Vec<i32> = got.iter().map(|e| e.r#type).collect();
    assert_eq!(
        kinds,
        [
            UserEventType::Created as i32,
            UserEventType::Updated as i32,
            UserEventType::Deleted as i32
        ]
    );
    assert!(
        got.iter().all(|e| e.user.as_ref().unwrap().id == user.id),
        "nothing from before the subscription ({})",
        before.id
    );
    assert_eq!(got[1].user.as_ref().unwrap().name, "Renamed");
    assert!(got.iter().all(|e| e.occurred_at.is_some()));
}

#[tokio::test]
async fn watch_users_filters_by_id_and_validates_ids() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let watched = app.create_user("w1").await;
    let other = app.create_user("w2").await;

    let mut events = client
        .watch_users(WatchUsersRequest {
            user_ids: vec![watched.id.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    client
        .update_user(rename_request(other.id.clone(), "Other"))
        .await
        .unwrap();
    client
        .update_user(rename_request(watched.id.clone(), "Mine"))
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        event.user.unwrap().name,
        "Mine",
        "the other user's change was filtered out"
    );

    let status = client
        .watch_users(WatchUsersRequest {
            user_ids: vec![watched.id.clone(), "bad".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(bad_fields(&status), ["user_ids[1]"]);
}

#[tokio::test]
async fn streams_end_at_the_client_deadline() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let mut request = Request::new(WatchUsersRequest::default());
    request.set_timeout(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let mut events = client.watch_users(request).await.unwrap().into_inner();
    let status = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the server ends the stream")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn watch_users_resumes_after_a_revision_and_refuses_unknown_ones() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let mut live = client
        .watch_users(WatchUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            client
                .create_user(create_request(&format!("rev{i}")))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    let mut revisions = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(5), live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        revisions.push(event.revision);
    }
    assert!(revisions[0] > 0 && revisions.windows(2).all(|w| w[0] < w[1]));

    // A live-only watch says where it starts: after the latest change.
    let response = client
        .watch_users(WatchUsersRequest::default())
        .await
        .unwrap();
    assert_eq!(
        response
            .metadata()
            .get("watch-revision")
            .unwrap()
            .to_str()
            .unwrap(),
        revisions[2].to_string()
    );

    // Resuming after the first replays the other two, in order.
    let mut resumed = client
        .watch_users(WatchUsersRequest {
            since_revision: revisions[0],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (revision, id) in revisions[1..].iter().zip(&ids[1..]) {
        let event = tokio::time::timeout(Duration::from_secs(5), resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.revision, *revision);
        assert_eq!(&event.user.unwrap().id, id);
    }

    // A revision this store never issued (e.g. from before a restart).
    let status = client
        .watch_users(WatchUsersRequest {
            since_revision: revisions[2] + 100,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains("latest revision"),
        "{}",
        status.message()
    );
}
