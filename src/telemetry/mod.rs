//! Logs, traces and metrics: set up once at startup, flushed once at
//! shutdown.
//!
//! - Logs: `tracing-subscriber`, text for terminals or JSON lines carrying
//!   the OpenTelemetry trace and span ids ([`json`]).
//! - Traces: the per-call SERVER span and the store spans are recorded by
//!   [`trace`] itself, with the SDK's sampler and ids; other `tracing` spans
//!   of this crate reach the SDK's tracer provider through
//!   `tracing-opentelemetry` (never h2, hyper, tower or tonic internals).
//!   Both end up in one bounded queue of OTLP-encoded spans ([`export`])
//!   that a task sends to the collector. With no OTLP endpoint configured
//!   nothing is recorded, but calls still get trace ids so logs correlate.
//! - Metrics: the process-wide Prometheus recorder ([`metrics`]) and the
//!   process metrics read at scrape time ([`process`]).

pub mod export;
pub mod json;
mod log_writer;
pub mod metrics;
mod otlp;
pub mod process;
pub mod trace;

use std::{sync::OnceLock, time::Duration};

use opentelemetry::{trace::TracerProvider as _, InstrumentationScope, KeyValue};
use opentelemetry_sdk::{
    resource::{EnvResourceDetector, ResourceDetector, TelemetryResourceDetector},
    trace::SdkTracerProvider,
    Resource,
};
use tracing::{level_filters::LevelFilter, subscriber::Interest, Level, Metadata};
use tracing_subscriber::{
    fmt,
    layer::{Context, Filter},
    prelude::*,
    EnvFilter,
};

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
    /// Sends the queued spans; `None` without an OTLP endpoint.
    export: Option<export::ExportTask>,
    /// Writes the log lines still waiting when dropped (last, after the
    /// spans).
    _log_writer: Option<log_writer::Flusher>,
}

impl Telemetry {
    /// Sends the queued spans and stops the exporter, waiting at most
    /// `budget`.
    pub async fn shutdown(self, budget: Duration) {
        let Telemetry {
            provider,
            export,
            _log_writer,
        } = self;
        if let Some(export) = export {
            export.finish(budget).await;
        }
        // Nothing is left to flush: this only marks the provider shut down.
        if let Err(err) = provider.shutdown() {
            tracing::debug!(error = %err, "tracer provider shutdown");
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
/// Must run inside the Tokio runtime (the span export task and its OTLP
/// client's connection run there). Never blocks on, or fails because of, the collector.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings) -> Telemetry {
    let (provider, export, exporter_error) = tracer_provider(telemetry);

    // Settings::load validated log.level with this same function; a level
    // that still fails is said out loud, never silently replaced.
    let log_filter = log_filter(&log.level).unwrap_or_else(|err| {
        eprintln!(
            "log.level {:?} is not a valid filter ({err}); logging at info",
            log.level
        );
        EnvFilter::new(with_quiet_transport("info"))
    });
    // Only our `tracing` spans become OpenTelemetry spans, whatever the
    // log level, and only warnings and errors become their span events
    // (see `Bridged`).
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Bridged);
    let (writer, flusher) = log_writer::stdout();
    let writer_handle = writer.clone();
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
    let log_writer = result.is_ok().then(|| {
        let _ = LOG_WRITER.set(writer_handle);
        flusher
    });
    if let Some(err) = exporter_error {
        tracing::warn!(error = %err, "cannot build the OTLP trace exporter; traces are not exported");
    }
    Telemetry {
        provider,
        export,
        _log_writer: log_writer,
    }
}

static LOG_WRITER: OnceLock<log_writer::LogWriter> = OnceLock::new();

/// Log lines dropped because stdout could not keep up
/// (`user_service_log_lines_dropped_total`).
pub fn log_lines_dropped() -> u64 {
    LOG_WRITER.get().map_or(0, log_writer::LogWriter::dropped)
}

/// The tracer provider: exporting over OTLP/gRPC when an endpoint is
/// configured, otherwise only minting ids. The sampler comes from
/// `OTEL_TRACES_SAMPLER`/`_ARG` (default: parent-based always-on), read by
/// the SDK; the batch settings from `OTEL_BSP_*` ([`export`]).
fn tracer_provider(
    settings: &TelemetrySettings,
) -> (
    SdkTracerProvider,
    Option<export::ExportTask>,
    Option<String>,
) {
    let mut builder = SdkTracerProvider::builder().with_resource(resource());
    let configured = settings
        .otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    // The setting wins over the environment, the traces-only variable over
    // the general one.
    let endpoint = configured.map(str::to_owned).or_else(|| {
        export::env_first(&[
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ])
    });
    let mut error = None;
    let mut task = None;
    if let Some(endpoint) = endpoint {
        // The channel connects lazily: an absent collector costs nothing
        // here, only failed (and warned about) exports later.
        match export::pipeline(&endpoint) {
            Ok((processor, sink, export)) => {
                builder = builder.with_span_processor(processor);
                // The call layer and the store record their spans into the
                // same queue, under the tracers' scope.
                trace::set_exporting(sink, InstrumentationScope::builder(SERVICE_NAME).build());
                task = Some(export);
            }
            Err(err) => error = Some(err),
        }
    }
    (builder.build(), task, error)
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

/// What the `tracing-opentelemetry` layer may see: this crate's spans at
/// `info` and above, and its events at `warn` and above (inside a `tracing`
/// span they become span events; outside one that layer ignores them).
///
/// `info` events are kept from it because every call writes one, the
/// `finished call` line, outside any `tracing` span (the call's span is not
/// one, see `trace`). Letting them through made that line enabled at
/// `log.level=warn`, so every call paid for a context switch and a
/// dispatch that wrote nothing. The choice is static (per callsite): a
/// filter that decides per event, say "only inside a span", makes
/// tracing-subscriber treat the event as enabled for every layer, which is
/// the same cost again.
struct Bridged;

impl Bridged {
    fn wanted(meta: &Metadata<'_>) -> bool {
        let target = meta.target();
        let ours = target == "user_service" || target.starts_with("user_service::");
        let floor = if meta.is_span() {
            Level::INFO
        } else {
            Level::WARN
        };
        ours && *meta.level() <= floor
    }
}

impl<S> Filter<S> for Bridged {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        Self::wanted(meta)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::wanted(meta) {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::INFO)
    }
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
    ] {
        if !directives.contains(noisy) {
            out.push_str(&format!(",{noisy}=warn"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::Level;
    use tracing_subscriber::{layer::Context, prelude::*, EnvFilter, Layer};

    use super::*;

    /// Names what reached it: `span NAME` or `event LEVEL`.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: Context<'_, S>,
        ) {
            let name = format!("span {}", attrs.metadata().name());
            self.0.lock().unwrap().push(name);
        }

        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let name = format!("event {}", event.metadata().level());
            self.0.lock().unwrap().push(name);
        }
    }

    #[test]
    fn the_bridge_takes_our_spans_and_warnings_and_leaves_info_lines_disabled() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry()
            .with(seen.clone().with_filter(Bridged))
            .with(tracing_subscriber::fmt::layer().with_filter(EnvFilter::new("warn")));
        tracing::subscriber::with_default(subscriber, || {
            // At log.level=warn an info line is off for every layer, so the
            // call layer's `enabled!` check skips building it at all.
            assert!(!tracing::enabled!(Level::INFO));
            assert!(tracing::enabled!(Level::WARN));
            let span = tracing::info_span!("work");
            let _entered = span.enter();
            tracing::info!("not bridged");
            tracing::warn!("bridged");
            let _debug = tracing::debug_span!("too fine");
        });
        assert_eq!(*seen.0.lock().unwrap(), ["span work", "event WARN"]);
    }

    #[test]
    fn the_bridge_ignores_other_crates() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(seen.clone().with_filter(Bridged));
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!(target: "h2", "poll");
            tracing::error!(target: "hyper", "other crate");
        });
        assert!(seen.0.lock().unwrap().is_empty());
    }
}
