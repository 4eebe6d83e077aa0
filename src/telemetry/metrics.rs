//! The Prometheus recorder: installed once per process, rendered by the
//! admin listener at `GET /metrics`.
//!
//! Metric names follow go-grpc-prometheus for the gRPC families (so
//! existing dashboards and alerts work unchanged) and the Prometheus
//! conventions for process metrics. Counters carry their `_total` suffix in
//! their names; the exporter's "recommended naming" is off so nothing is
//! renamed behind our back.

use std::{sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

pub const GRPC_STARTED: &str = "grpc_server_started_total";
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
pub const GRPC_MSG_RECEIVED: &str = "grpc_server_msg_received_total";
pub const GRPC_MSG_SENT: &str = "grpc_server_msg_sent_total";
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
/// Load shedding (`grpc/middleware/limit.rs`).
pub const GRPC_IN_FLIGHT: &str = "user_service_grpc_requests_in_flight";
pub const GRPC_MAX_CONCURRENT: &str = "user_service_grpc_max_concurrent_requests";
pub const GRPC_SHED: &str = "user_service_grpc_requests_shed_total";
pub const GRPC_CONNECTIONS_ACCEPTED: &str = "user_service_grpc_connections_accepted_total";
pub const STORE_OPERATION_SECONDS: &str = "user_service_store_operation_duration_seconds";
pub const STORE_POOL_CONNECTIONS: &str = "user_service_store_pool_connections";
pub const STORE_POOL_MAX_CONNECTIONS: &str = "user_service_store_pool_max_connections";
pub const BUILD_INFO: &str = "user_service_build_info";
pub const LOG_LINES_DROPPED: &str = "user_service_log_lines_dropped_total";
/// The span pipeline (`telemetry/export.rs`).
pub const SPANS_ENDED: &str = "user_service_spans_ended_total";
pub const SPANS_EXPORTED: &str = "user_service_spans_exported_total";

/// go-grpc-prometheus (client_golang `prometheus.DefBuckets`).
pub const GRPC_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Store calls are usually sub-millisecond in memory and a few ms against
/// PostgreSQL; the low buckets keep that visible.
pub const STORE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// How often histogram data is drained into the exporter's buckets.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder on first use and returns its handle;
/// later calls return the same handle. `None` when the recorder cannot be
/// built or another recorder was installed first (metrics are then not
/// exported, which is logged once; serving goes on).
///
/// Must run before any metric handle is registered: handles taken before a
/// recorder exists are no-ops forever.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(build_and_install).as_ref()
}

fn build_and_install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        // Buckets make these render as real histograms, not summaries.
        .set_buckets_for_metric(Matcher::Full(GRPC_HANDLING_SECONDS.into()), GRPC_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(STORE_OPERATION_SECONDS.into()), STORE_BUCKETS)
        });
    let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
        Ok(handle) => handle,
        Err(err) => {
            tracing::warn!(error = %err, "cannot install the Prometheus recorder; /metrics will be empty");
            return None;
        }
    };
    describe();
    let git_sha = option_env!("USER_SERVICE_GIT_SHA").unwrap_or("unknown");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "git_sha" => git_sha)
        .set(1.0);
    Some(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(GRPC_STARTED, "Total number of RPCs started on the server.");
    describe_counter!(
        GRPC_HANDLED,
        "Total number of RPCs completed on the server, regardless of success or failure."
    );
    describe_counter!(
        GRPC_MSG_RECEIVED,
        "Total number of RPC stream messages received on the server."
    );
    describe_counter!(
        GRPC_MSG_SENT,
        "Total number of gRPC stream messages sent by the server."
    );
    describe_histogram!(
        GRPC_HANDLING_SECONDS,
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server."
    );
    describe_gauge!(
        GRPC_IN_FLIGHT,
        "user.v1.UserService calls being handled now (until their response headers; streams count during their setup only)."
    );
    describe_gauge!(
        GRPC_MAX_CONCURRENT,
        "grpc.max_concurrent_requests: calls handled at once before new ones are shed (0 = no limit)."
    );
    describe_counter!(
        GRPC_SHED,
        "Calls answered RESOURCE_EXHAUSTED at once because grpc.max_concurrent_requests were in progress."
    );
    describe_counter!(
        GRPC_CONNECTIONS_ACCEPTED,
        "Connections accepted on the gRPC port (after the TLS handshake when TLS is on)."
    );
    describe_histogram!(
        STORE_OPERATION_SECONDS,
        "Latency of user store operations by operation and outcome."
    );
    describe_gauge!(
        STORE_POOL_CONNECTIONS,
        "Store connection pool connections by state (idle, used)."
    );
    describe_gauge!(
        STORE_POOL_MAX_CONNECTIONS,
        "Store connection pool size limit."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels carry the version and git commit of the running build."
    );
}

/// Drains histogram samples into buckets every few seconds until `stop`
/// is cancelled. Rendering also does this, but without scrapes the samples
/// would pile up in memory.
pub async fn upkeep(handle: &'static PrometheusHandle, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

/// `user_service_log_lines_dropped_total`, read at scrape time from the log
/// writer (which counts in its own type, outside the recorder).
pub fn render_log_drops(dropped: u64) -> String {
    format!(
        "# HELP {LOG_LINES_DROPPED} Log lines dropped because the log output could not keep up.\n\
         # TYPE {LOG_LINES_DROPPED} counter\n\
         {LOG_LINES_DROPPED} {dropped}\n"
    )
}

/// The span pipeline's counters, read at scrape time: spans offered to the
/// batch queue, and spans in batches the collector took or that failed.
/// `ended - exported` (all outcomes) is what the bounded queue dropped,
/// give or take what is still queued.
pub fn render_span_counts(counts: super::export::SpanCounts) -> String {
    let super::export::SpanCounts {
        ended,
        exported,
        failed,
    } = counts;
    format!(
        "# HELP {SPANS_ENDED} Sampled spans ended and offered to the export queue.\n\
         # TYPE {SPANS_ENDED} counter\n\
         {SPANS_ENDED} {ended}\n\
         # HELP {SPANS_EXPORTED} Spans in export batches, by whether the collector accepted them.\n\
         # TYPE {SPANS_EXPORTED} counter\n\
         {SPANS_EXPORTED}{{outcome=\"ok\"}} {exported}\n\
         {SPANS_EXPORTED}{{outcome=\"error\"}} {failed}\n"
    )
}
