//! gRPC health, admin probes and reflection, as probes and tools use them.

use futures_util::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::{http_get, spawn_app};

async fn check(
    app: &crate::helpers::TestApp,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(app.channel.clone());
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(response.status).unwrap())
}

#[tokio::test]
async fn health_reports_liveness_readiness_and_unknown_services() {
    let app = spawn_app().await;
    assert_eq!(check(&app, "").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        check(&app, "user.v1.UserService").await.unwrap(),
        ServingStatus::Serving
    );
    assert_eq!(
        check(&app, "no.such.Service").await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn admin_probes_mirror_health() {
    let app = spawn_app().await;
    assert_eq!(http_get(app.admin_addr, "/livez").await.0, 200);
    assert_eq!(http_get(app.admin_addr, "/readyz").await.0, 200);
    assert_eq!(http_get(app.admin_addr, "/nope").await.0, 404);
}

#[tokio::test]
async fn reflection_v1_lists_services_and_serves_descriptors() {
    use v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "user.v1.UserService".into(),
            )),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "grpc.health.v1.Health".into(),
            )),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileByFilename(
                "google/protobuf/field_mask.proto".into(),
            )),
        },
    ];
    let mut answers = client
        .server_reflection_info(futures_util::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "user.v1.UserService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} missing from {names:?}"
        );
    }
    for _ in 0..3 {
        let answer = answers.next().await.unwrap().unwrap().message_response;
        assert!(
            matches!(answer, Some(MessageResponse::FileDescriptorResponse(ref fd)) if !fd.file_descriptor_proto.is_empty()),
            "{answer:?}"
        );
    }
}

#[tokio::test]
async fn reflection_v1alpha_is_served_too() {
    use v1alpha::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(app.channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(futures_util::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    assert!(list.service.iter().any(|s| s.name == "user.v1.UserService"));
}
