//! Deadlines and message limits, as a client sees them: the server's own
//! deadline answers DEADLINE_EXCEEDED (not CANCELLED), oversized or broken
//! messages get an error status, and the server keeps serving.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use tonic::Code;
use user_service::pb::{CreateUserRequest, GetUserRequest};

use crate::helpers::*;

fn metric(body: &str, method: &str, code: &str) -> f64 {
    let needle = format!("grpc_method=\"{method}\"");
    let code = format!("grpc_code=\"{code}\"");
    body.lines()
        .filter(|l| l.starts_with("grpc_server_handled_total{"))
        .filter(|l| l.contains(&needle) && l.contains(&code))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_servers_own_deadline_is_deadline_exceeded() {
    let mut settings = test_settings();
    // Shorter than one argon2 hash: CreateUser cannot make it.
    settings.grpc.default_timeout = Duration::from_millis(1);
    let app = spawn_app_with(settings).await;
    let (_, before) = http_get(app.admin_addr, "/metrics").await;
    let status = app
        .client
        .clone()
        .create_user(create_request("late"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let (_, after) = http_get(app.admin_addr, "/metrics").await;
    assert_eq!(
        metric(&after, "CreateUser", "DeadlineExceeded")
            - metric(&before, "CreateUser", "DeadlineExceeded"),
        1.0
    );
    assert_eq!(metric(&after, "CreateUser", "Canceled"), 0.0);
}

#[tokio::test]
async fn an_oversized_message_is_resource_exhausted_and_nothing_else_breaks() {
    let mut settings = test_settings();
    settings.grpc.max_message_size = 512;
    let app = spawn_app_with(settings).await;
    let mut client = app.client.clone();
    let request = CreateUserRequest {
        password: "p".repeat(1000),
        ..create_request("big")
    };
    let status = client.create_user(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limit of 512 bytes"),
        "{status:?}"
    );
    // The same connection still serves.
    let user = client
        .create_user(create_request("small"))
        .await
        .unwrap()
        .into_inner();
    client
        .get_user(GetUserRequest { user_id: user.id })
        .await
        .unwrap();
}

/// Sends `body` as the request body of GetUser over raw HTTP/2 and returns
/// the grpc-status the server answered with.
async fn raw_call(addr: std::net::SocketAddr, body: Vec<u8>, end_stream: bool) -> Option<Code> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = Request::post(format!("http://{addr}/user.v1.UserService/GetUser"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = h2.send_request(request, false).unwrap();
    stream.send_data(Bytes::from(body), end_stream).unwrap();
    let call = async move {
        let response = response.await.ok()?;
        let code = |h: &http::HeaderMap| {
            h.get("grpc-status")
                .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                .map(Code::from_i32)
        };
        if let Some(c) = code(response.headers()) {
            return Some(c);
        }
        let mut body = response.into_body();
        while body.data().await.is_some() {}
        body.trailers().await.ok()?.as_ref().and_then(code)
    };
    tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .unwrap_or(None)
}

#[tokio::test]
async fn hostile_frames_get_an_error_status_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    // A length prefix claiming 4 GiB: refused from the prefix alone.
    let code = raw_call(app.grpc_addr, vec![0, 0xff, 0xff, 0xff, 0xff], false).await;
    assert_eq!(code, Some(Code::ResourceExhausted));
    // A message cut short by the end of the stream.
    let code = raw_call(app.grpc_addr, vec![0, 0, 0, 0, 10, 1, 2], true).await;
    assert!(matches!(code, Some(c) if c != Code::Ok), "{code:?}");
    // The compressed flag without a grpc-encoding.
    let code = raw_call(app.grpc_addr, vec![1, 0, 0, 0, 2, 0x0a, 0], true).await;
    assert!(matches!(code, Some(c) if c != Code::Ok), "{code:?}");
    // Garbage where a protobuf message should be.
    let code = raw_call(app.grpc_addr, vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff], true).await;
    assert!(matches!(code, Some(c) if c != Code::Ok), "{code:?}");
    // And well-formed calls still work.
    let user = app
        .client
        .clone()
        .create_user(create_request("after-garbage"))
        .await
        .unwrap()
        .into_inner();
    assert!(!user.id.is_empty());
}
