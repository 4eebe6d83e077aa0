//! The admin HTTP listener: probes and metrics for Kubernetes and
//! Prometheus, kept off the gRPC port so they work without a gRPC client.

use axum::{extract::State, http::StatusCode, routing::get, Router};

use crate::health::Health;

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn livez(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not live\n")
    }
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
