//! Logs, traces and metrics: set up once at startup, flushed once at
//! shutdown.
//!
//! - Logs: `tracing-subscriber`, text for terminals or JSON lines carrying
//!   the OpenTelemetry trace and span ids ([`json`]).
//! - Traces: an OpenTelemetry tracer provider. The per-call SERVER span and
//!   the store spans are made with it directly ([`trace`]); other `tracing`
//!   spans of this crate reach it through `tracing-opentelemetry` (never
//!   h2, hyper, tower or tonic internals). With no OTLP endpoint configured
//!   nothing is recorded, but calls still get trace ids so logs correlate.
//! - Metrics: the process-wide Prometheus recorder ([`metrics`]) and the
//!   process metrics read at scrape time ([`process`]).

pub mod export;
pub mod json;
pub mod metrics;
pub mod process;
pub mod trace;

use std::{sync::OnceLock, time::Duration};

use opentelemetry::{trace::TracerProvider as _, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector},
    trace::SdkTracerProvider,
    Resource,
};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{filter::Targets, fmt, prelude::*, EnvFilter};

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

/// The default `service.name` (`OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES` win).
pub const SERVICE_NAME: &str = "user-service";

/// How long shutdown waits for buffered spans to reach the collector.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// What must be flushed at exit. Dropping it without [`Telemetry::shutdown`]
/// loses the spans still buffered.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// Flushes the log writer's queue when dropped (last, after the spans).
    _log_writer: Option<WorkerGuard>,
}

impl Telemetry {
    /// Flushes buffered spans and stops the exporter, waiting at most
    /// `budget`. The SDK's shutdown blocks its caller until the batch thread
    /// is done, which can deadlock a small runtime if done in place: it
    /// runs on the blocking pool instead.
    pub async fn shutdown(self, budget: Duration) {
        let Telemetry {
            provider,
            _log_writer,
        } = self;
        let flush = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(budget));
        // A little extra so the SDK's own timeout fires first.
        match tokio::time::timeout(budget + Duration::from_millis(250), flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(error = %err, "trace exporter shutdown"),
            Ok(Err(join)) => tracing::warn!(error = %join, "trace exporter shutdown task"),
            Err(_) => tracing::warn!(?budget, "trace exporter did not flush in time"),
        }
    }
}

/// The log filter for `log.level` (RUST_LOG is folded into it by the
/// config loader). Transport crates are capped at `warn` unless a directive
/// names them, so `debug` stays readable.
pub fn log_filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    EnvFilter::try_new(with_quiet_transport(level))
}

/// Installs the global subscriber and the tracer provider.
///
/// Must run inside the Tokio runtime (the OTLP client spawns its connection
/// task there). Never blocks on, or fails because of, the collector.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> Telemetry {
    let (provider, exporting, exporter_error) = tracer_provider(telemetry);
    if exporting {
        // The call layer and the store make their spans with it directly.
        trace::set_exporting_tracer(provider.tracer(SERVICE_NAME));
    }

    // Settings::load validated log.level with this same function; a level
    // that still fails is said out loud, never silently replaced.
    let log_filter = log_filter(&log.level).unwrap_or_else(|err| {
        eprintln!(
            "log.level {:?} is not a valid filter ({err}); logging at info",
            log.level
        );
        EnvFilter::new(with_quiet_transport("info"))
    });
    // Only our spans become OpenTelemetry spans, whatever the log level.
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target("user_service", tracing::Level::INFO));
    let (writer, guard) = log_writer();
    let registry = tracing_subscriber::registry().with(otel_layer);
    let result = match log.format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(true)
                    // Colours for a terminal only, not for a file or a pipe.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                    .with_writer(writer)
                    .with_filter(log_filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .event_format(json::JsonFormat::new())
                    .with_writer(writer)
                    .with_filter(log_filter),
            )
            .try_init(),
    };
    // Already installed: tests may call this more than once per process;
    // the first subscriber and its writer stay.
    let log_writer = result.is_ok().then_some(guard);
    if let Some(err) = exporter_error {
        tracing::warn!(error = %err, "cannot build the OTLP trace exporter; traces are not exported");
    }
    Telemetry {
        provider,
        _log_writer: log_writer,
    }
}

/// Lines waiting for the writer thread at most; past it new lines are
/// dropped (and counted) rather than making calls wait for stdout. The
/// queue's slots are allocated and touched up front (32 bytes a line), so
/// this is idle memory too: 8192 lines cost 256 KiB (64k cost 2 MiB, a
/// seventh of the idle RSS) and hold ~2 MB of JSON lines, about 130 ms of
/// a stalled log pipe at 60k calls/s.
const LOG_QUEUE_LINES: usize = 8 * 1024;

static LOG_LINES_DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because stdout could not keep up
/// (`user_service_log_lines_dropped_total`).
pub fn log_lines_dropped() -> u64 {
    LOG_LINES_DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Stdout, written by a thread of its own: a call formats its line into a
/// queue and moves on; the thread writes whatever has queued up in one
/// `write` (a buffered writer flushed when the queue is empty), so a burst
/// of lines costs one syscall, not one each, and a slow log pipe never
/// stalls a call.
fn log_writer() -> (NonBlocking, WorkerGuard) {
    let stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(true)
        .thread_name("log-writer")
        .finish(stdout);
    let _ = LOG_LINES_DROPPED.set(writer.error_counter());
    (writer, guard)
}

/// The tracer provider: exporting over OTLP/gRPC when an endpoint is
/// configured, otherwise only minting ids. The sampler comes from
/// `OTEL_TRACES_SAMPLER`/`_ARG` (default: parent-based always-on) and the
/// batch settings from `OTEL_BSP_*`, both read by the SDK.
fn tracer_provider(settings: &TelemetrySettings) -> (SdkTracerProvider, bool, Option<String>) {
    let mut builder = SdkTracerProvider::builder().with_resource(resource());
    let configured = settings
        .otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()));
    let mut error = None;
    let mut exporting = false;
    if configured.is_some() || from_env {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(endpoint) = configured {
            // Set in code it would override the environment, so only when
            // the setting is present.
            exporter = exporter.with_endpoint(endpoint);
        }
        // The channel connects lazily: an absent collector costs nothing
        // here, only failed (and warned about) exports later.
        match exporter.build() {
            Ok(exporter) => {
                builder = builder.with_span_processor(export::counted_batch(exporter));
                exporting = true;
            }
            Err(err) => error = Some(err.to_string()),
        }
    }
    (builder.build(), exporting, error)
}

/// `service.name` = `OTEL_SERVICE_NAME`, else `service.name` from
/// `OTEL_RESOURCE_ATTRIBUTES`, else `user-service`; plus `service.version`
/// and the SDK's own attributes.
fn resource() -> Resource {
    let mut builder = Resource::builder_empty()
        .with_service_name(SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let detectors: [Box<dyn ResourceDetector>; 2] = [
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    builder = builder.with_detectors(&detectors);
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

fn with_quiet_transport(directives: &str) -> String {
    let mut out = directives.to_owned();
    for noisy in [
        "h2",
        "hyper",
        "hyper_util",
        "tower",
        "tonic",
        "axum",
        "opentelemetry",
        "opentelemetry_sdk",
        "opentelemetry_otlp",
    ] {
        if !directives.contains(noisy) {
            out.push_str(&format!(",{noisy}=warn"));
        }
    }
    out
}
