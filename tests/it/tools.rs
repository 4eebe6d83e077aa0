//! The ecosystem's own clients against the real server: grpcurl through
//! reflection, and grpc-health-probe as the kubelet's probes run it. The
//! test command installs both (scripts/install-test-deps.sh).

use std::process::Output;

use tokio::process::Command;

use crate::helpers::spawn_app;

async fn run(tool: &str, args: &[&str]) -> Output {
    match Command::new(tool).args(args).output().await {
        Ok(output) => output,
        Err(err) => {
            panic!("cannot run {tool} ({err}); run the suite with `make test`, which installs it")
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    let app = spawn_app().await;
    let addr = app.grpc_addr.to_string();

    let list = run("grpcurl", &["-plaintext", &addr, "list"]).await;
    assert!(list.status.success(), "{}", text(&list));
    for service in ["user.v1.UserService", "grpc.health.v1.Health"] {
        assert!(text(&list).contains(service), "{}", text(&list));
    }

    let describe = run(
        "grpcurl",
        &["-plaintext", &addr, "describe", "user.v1.UserService"],
    )
    .await;
    assert!(describe.status.success(), "{}", text(&describe));
    for rpc in [
        "CreateUser",
        "ListUsers",
        "BulkCreateUsers",
        "UserUpdates",
        "WatchUsers",
        "stream .user.v1.UserEvent",
    ] {
        assert!(text(&describe).contains(rpc), "{rpc}: {}", text(&describe));
    }

    let body =
        r#"{"email": "grpcurl@example.com", "name": "Curl", "password": "correct horse battery"}"#;
    let created = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            body,
            &addr,
            "user.v1.UserService/CreateUser",
        ],
    )
    .await;
    assert!(created.status.success(), "{}", text(&created));
    let user: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(user["status"], "USER_STATUS_ACTIVE");
    assert_eq!(user["roles"][0], "user");
    let id = user["id"].as_str().unwrap().to_owned();

    let listed = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            r#"{"page_size": 5}"#,
            &addr,
            "user.v1.UserService/ListUsers",
        ],
    )
    .await;
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains(&id));

    let bad = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            r#"{"user_id": "nope"}"#,
            &addr,
            "user.v1.UserService/GetUser",
        ],
    )
    .await;
    assert!(!bad.status.success());
    assert!(text(&bad).contains("InvalidArgument"), "{}", text(&bad));

    // The status detail arrives decoded: reflection serves google.rpc too.
    let invalid = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            r#"{"email": "not-an-email", "name": "", "password": "correct horse battery"}"#,
            &addr,
            "user.v1.UserService/CreateUser",
        ],
    )
    .await;
    assert!(!invalid.status.success());
    let shown = text(&invalid);
    assert!(!shown.contains("not recognized"), "{shown}");
    assert!(shown.contains("google.rpc.BadRequest"), "{shown}");
    assert!(shown.contains("fieldViolations"), "{shown}");
    assert!(shown.contains(r#""field": "email""#), "{shown}");
}

#[tokio::test]
async fn grpc_health_probe_sees_liveness_and_readiness() {
    let app = spawn_app().await;
    let addr = format!("-addr={}", app.grpc_addr);

    let live = run("grpc-health-probe", &[&addr]).await;
    assert!(live.status.success(), "{}", text(&live));
    let ready = run(
        "grpc-health-probe",
        &[&addr, "-service=user.v1.UserService"],
    )
    .await;
    assert!(ready.status.success(), "{}", text(&ready));
    let unknown = run("grpc-health-probe", &[&addr, "-service=no.such.Service"]).await;
    assert!(
        !unknown.status.success(),
        "unknown services are not healthy"
    );

    let mut app = app;
    let server = app.begin_shutdown();
    let draining = run(
        "grpc-health-probe",
        &[&addr, "-service=user.v1.UserService"],
    )
    .await;
    assert!(
        !draining.status.success(),
        "readiness fails during shutdown: {}",
        text(&draining)
    );
    let _ = server.await;
}
