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
use tracing::{
    level_filters::LevelFilter,
    span::{Attributes, Id, Record},
    subscriber::Interest,
    Level, Metadata,
};
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
    let directives = match log_filter(&log.level) {
        Ok(_) => log.level.as_str(),
        Err(err) => {
            eprintln!(
                "log.level {:?} is not a valid filter ({err}); logging at info",
                log.level
            );
            "info"
        }
    };
    // Two instances of one filter: per-layer filters keep state of their own.
    let log_filter = || log_filter(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    // Only our `tracing` spans become OpenTelemetry spans, whatever the
    // log level, and our log lines written inside them their span events
    // (see `Bridged`).
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Bridged { log: log_filter() });
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
                    .with_filter(log_filter()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .event_format(json::JsonFormat::new())
                    .with_writer(writer)
                    .with_filter(log_filter()),
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
/// `info` and above, whatever the log level, and this crate's events that
/// the log filter lets through (inside a `tracing` span they become span
/// events; outside one that layer ignores them).
///
/// Events follow the log filter exactly so that both layers always agree
/// on a callsite. Where per-layer filters disagree (one says never, the
/// other always), tracing-subscriber asks both again for every event: for
/// the `finished call` line each call writes, that was a walk through the
/// log directives twice per call (its `enabled!` check and the event), and
/// a bridge that took `info` events even made that line enabled at
/// `log.level=warn`, built and dispatched for nothing.
struct Bridged {
    /// The log filter (`log.level`), an instance of its own.
    log: EnvFilter,
}

impl Bridged {
    fn ours(meta: &Metadata<'_>) -> bool {
        let target = meta.target();
        target == "user_service" || target.starts_with("user_service::")
    }
}

impl<S> Filter<S> for Bridged {
    fn enabled(&self, meta: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        Self::ours(meta)
            && if meta.is_span() {
                *meta.level() <= Level::INFO
            } else {
                Filter::<S>::enabled(&self.log, meta, cx)
            }
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        // Registered with the log filter whatever the answer, so its
        // span-based directives (`[span]=debug`) see every span.
        let logged = Filter::<S>::callsite_enabled(&self.log, meta);
        match (Self::ours(meta), meta.is_span()) {
            (false, _) => Interest::never(),
            (true, true) if *meta.level() <= Level::INFO => Interest::always(),
            (true, true) => Interest::never(),
            (true, false) => logged,
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        let log = Filter::<S>::max_level_hint(&self.log).unwrap_or(LevelFilter::TRACE);
        Some(log.max(LevelFilter::INFO))
    }

    // The log filter follows spans for its span-based directives.
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, cx: Context<'_, S>) {
        Filter::<S>::on_new_span(&self.log, attrs, id, cx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, cx: Context<'_, S>) {
        Filter::<S>::on_record(&self.log, id, values, cx);
    }

    fn on_enter(&self, id: &Id, cx: Context<'_, S>) {
        Filter::<S>::on_enter(&self.log, id, cx);
    }

    fn on_exit(&self, id: &Id, cx: Context<'_, S>) {
        Filter::<S>::on_exit(&self.log, id, cx);
    }

    fn on_close(&self, id: Id, cx: Context<'_, S>) {
        Filter::<S>::on_close(&self.log, id, cx);
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
    use tracing_subscriber::{layer::Context, prelude::*, Layer};

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

    fn bridged(level: &str) -> Bridged {
        Bridged {
            log: log_filter(level).unwrap(),
        }
    }

    #[test]
    fn the_bridge_takes_our_spans_and_the_lines_the_log_level_writes() {
        for (level, info_on, expected) in [
            ("warn", false, &["span work", "event WARN"][..]),
            ("info", true, &["span work", "event INFO", "event WARN"][..]),
        ] {
            let seen = Seen::default();
            let subscriber = tracing_subscriber::registry()
                .with(seen.clone().with_filter(bridged(level)))
                .with(tracing_subscriber::fmt::layer().with_filter(log_filter(level).unwrap()));
            tracing::subscriber::with_default(subscriber, || {
                // At log.level=warn an info line is off for every layer, so
                // the call layer's `enabled!` check skips building it.
                assert_eq!(tracing::enabled!(Level::INFO), info_on, "{level}");
                // Our spans whatever the level; theirs and finer ones not.
                let span = tracing::info_span!("work");
                let _entered = span.enter();
                let _fine = tracing::debug_span!("too fine");
                tracing::info!("a line");
                tracing::warn!("a warning");
            });
            assert_eq!(*seen.0.lock().unwrap(), expected, "{level}");
        }
    }

    #[test]
    fn the_bridge_agrees_with_the_log_filter_on_every_event() {
        // Disagreeing per-layer filters make tracing-subscriber ask both
        // for every event; agreeing ones let the callsite's answer stand.
        struct Probe;
        impl tracing::Callsite for Probe {
            fn set_interest(&self, _: Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                &PROBE
            }
        }
        static PROBE: Metadata<'static> = tracing::metadata! {
            name: "finished call",
            target: "user_service::grpc::middleware::observe",
            level: Level::INFO,
            fields: &[],
            callsite: &Probe,
            kind: tracing::metadata::Kind::EVENT,
        };
        for level in ["warn", "info", "debug", "user_service=error"] {
            let log = log_filter(level).unwrap();
            let logged = Filter::<tracing_subscriber::Registry>::callsite_enabled(&log, &PROBE);
            let bridge =
                Filter::<tracing_subscriber::Registry>::callsite_enabled(&bridged(level), &PROBE);
            assert_eq!(
                (bridge.is_always(), bridge.is_never()),
                (logged.is_always(), logged.is_never()),
                "{level}"
            );
        }
    }

    #[test]
    fn the_bridge_ignores_other_crates() {
        let seen = Seen::default();
        let subscriber =
            tracing_subscriber::registry().with(seen.clone().with_filter(bridged("trace")));
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!(target: "h2", "poll");
            tracing::error!(target: "hyper", "other crate");
        });
        assert!(seen.0.lock().unwrap().is_empty());
    }
}
