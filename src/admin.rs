//! The admin HTTP listener: probes and metrics for Kubernetes and
//! Prometheus, kept off the gRPC port so they work without a gRPC client.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::{domain::StoreHealth, health::Health, store::record_pool_stats, telemetry};

/// The Prometheus text exposition format version we render.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone)]
struct AdminState {
    health: Health,
    /// Only the store's operational face: the pool gauges, sampled at scrape.
    store: Arc<dyn StoreHealth>,
    /// The process's recorder (`None` if it could not be installed: then
    /// /metrics carries the process metrics only).
    metrics: Option<&'static PrometheusHandle>,
}

pub fn router(
    health: Health,
    store: Arc<dyn StoreHealth>,
    metrics: Option<&'static PrometheusHandle>,
) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState {
            health,
            store,
            metrics,
        })
}

/// Liveness is the process answering at all: a wedged runtime or a dead
/// admin task fails the probe by not responding. Nothing the service can
/// observe about itself (store, shutdown) is a reason to be restarted.
async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Everything the recorder holds plus the process metrics, sampled now.
async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    record_pool_stats(state.store.as_ref());
    let mut body = state
        .metrics
        .map(|handle| handle.render())
        .unwrap_or_default();
    body.push_str(&telemetry::process::render());
    body.push_str(&telemetry::metrics::render_log_drops(
        telemetry::log_lines_dropped(),
    ));
    body.push_str(&telemetry::metrics::render_span_counts(
        telemetry::export::span_counts(),
    ));
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body)
}
