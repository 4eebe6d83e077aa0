//! Spans on the hot path, recorded and encoded here, not by the SDK.
//!
//! Every gRPC call gets one SERVER span (by the call layer) and, inside a
//! sampled call, one INTERNAL span per store operation. Going through
//! `tracing` + `tracing-opentelemetry` for these cost more than the call
//! itself (a registry slot, per-poll enter/exit bookkeeping, extensions
//! locks, field formatting for every span even when nothing is logged), and
//! so did the SDK's own spans (a `SpanData` with a `Vec` of `KeyValue`s, a
//! `String` per address, moved to the exporter and converted there). So a
//! span here is a few fields on the stack: the SDK's sampler decides, its
//! id generator mints the ids, and at the end the span is written straight
//! into the export queue as OTLP protobuf ([`super::otlp`]), its attributes
//! with it. It is carried as an OpenTelemetry [`Context`], which the JSON
//! log formatter reads for `trace_id`/`span_id`.
//!
//! - With an exporter: the sampler (`OTEL_TRACES_SAMPLER`) decides;
//!   unsampled calls get ids only.
//! - Without one: nothing could ever be exported, so nothing is recorded;
//!   the call still gets a trace id (the caller's, or a new one) and a span
//!   id, so its log lines correlate with the caller's trace.
//!
//! Spans made with `tracing` elsewhere in the crate still become
//! OpenTelemetry spans through `tracing-opentelemetry`, as children of the
//! current call (that layer reads [`Context::current`] for a parent), and
//! reach the same queue through the SDK.

use std::{sync::OnceLock, time::SystemTime};

use http::{HeaderMap, HeaderName};
use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags},
    Context, InstrumentationScope, KeyValue,
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{Config, IdGenerator, RandomIdGenerator, SamplingDecision, ShouldSample},
};

use super::{
    export::SpanSink,
    otlp::{self, Attributes},
};

/// What recording needs, set once by [`super::init`] when an OTLP endpoint
/// is configured.
struct Exporting {
    sink: SpanSink,
    /// The SDK's, from the same `OTEL_TRACES_SAMPLER`/`_ARG` as its tracers.
    sampler: Box<dyn ShouldSample>,
    scope: InstrumentationScope,
}

static EXPORTING: OnceLock<Exporting> = OnceLock::new();

pub(super) fn set_exporting(sink: SpanSink, scope: InstrumentationScope) {
    let _ = EXPORTING.set(Exporting {
        sink,
        sampler: Config::default().sampler,
        scope,
    });
}

fn exporting() -> Option<&'static Exporting> {
    EXPORTING.get()
}

/// A sampled span being recorded: what its end needs besides the context.
struct Recording {
    name: &'static str,
    parent: SpanId,
    parent_is_remote: bool,
    start: SystemTime,
    /// The sampler's attributes (none from the SDK's own samplers).
    sampler_attributes: Vec<KeyValue>,
}

/// A span's context and, when it is sampled, its recording: the sampler's
/// decision, as the SDK's tracer makes it.
fn begin(parent: &Context, name: &'static str, kind: SpanKind) -> (SpanContext, Option<Recording>) {
    let ids = RandomIdGenerator::default();
    let span = parent.span();
    let remote = span.span_context();
    let trace_id = if remote.is_valid() {
        remote.trace_id()
    } else {
        ids.new_trace_id()
    };
    let Some(exporting) = exporting() else {
        let sc = SpanContext::new(
            trace_id,
            ids.new_span_id(),
            remote.trace_flags(),
            false,
            remote.trace_state().clone(),
        );
        return (sc, None);
    };
    let result = exporting
        .sampler
        .should_sample(Some(parent), trace_id, name, &kind, &[], &[]);
    let sampled = result.decision == SamplingDecision::RecordAndSample;
    let flags = if sampled {
        remote.trace_flags().with_sampled(true)
    } else {
        TraceFlags::default()
    };
    let sc = SpanContext::new(
        trace_id,
        ids.new_span_id(),
        flags,
        false,
        result.trace_state,
    );
    let recording = sampled.then(|| Recording {
        name,
        parent: if remote.is_valid() {
            remote.span_id()
        } else {
            SpanId::INVALID
        },
        parent_is_remote: remote.is_valid() && remote.is_remote(),
        start: SystemTime::now(),
        sampler_attributes: result.attributes,
    });
    (sc, recording)
}

/// Ends a recording: encodes the span into the export queue.
fn finish(
    recording: &Recording,
    context: &SpanContext,
    kind: SpanKind,
    attributes: impl FnOnce(&mut Attributes<'_>),
    error: Option<&'static str>,
) {
    let Some(exporting) = exporting() else {
        return;
    };
    let span = otlp::Recorded {
        context,
        parent: recording.parent,
        parent_is_remote: recording.parent_is_remote,
        name: recording.name,
        kind,
        start: recording.start,
        end: SystemTime::now(),
        error,
    };
    exporting.sink.send(&exporting.scope, |out| {
        otlp::append_recorded(
            &span,
            |out| {
                recording
                    .sampler_attributes
                    .iter()
                    .for_each(|kv| out.key_value(kv));
                attributes(out);
            },
            out,
        );
    });
}

/// The trace context of one call.
pub struct CallSpan {
    cx: Context,
    recording: Option<Recording>,
}

impl CallSpan {
    /// No span: the call is not traced (health probes by default).
    pub fn none() -> Self {
        Self {
            cx: Context::new(),
            recording: None,
        }
    }

    /// Starts the SERVER span of a call named `name`, continuing the W3C
    /// `traceparent` in `headers` if there is one.
    pub fn start(name: &'static str, headers: &HeaderMap) -> Self {
        // The base is an empty context, not the current one: a call never
        // inherits whatever context the polling thread happens to hold.
        // Without a `traceparent` there is nothing to continue (a
        // `tracestate` alone is ignored, as the propagator does), and most
        // calls arrive without one: skip the propagator's work.
        let parent = if headers.contains_key(TRACEPARENT) {
            TraceContextPropagator::new()
                .extract_with_context(&Context::new(), &HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let (sc, recording) = begin(&parent, name, SpanKind::Server);
        Self {
            cx: parent.with_remote_span_context(sc),
            recording,
        }
    }

    /// The context to run the call's code in.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Ends the span with the attributes `attributes` writes (called only
    /// when it is recorded); `error` sets status ERROR.
    pub fn end(&self, attributes: impl FnOnce(&mut Attributes<'_>), error: Option<&'static str>) {
        if let Some(recording) = &self.recording {
            let span = self.cx.span();
            finish(
                recording,
                span.span_context(),
                SpanKind::Server,
                attributes,
                error,
            );
        }
    }
}

/// An INTERNAL span for work inside the current call (a store operation),
/// recorded only when the call is sampled and spans are exported. Ends
/// when dropped. Its attributes are `N` static pairs, held inline.
pub struct ChildSpan<const N: usize> {
    recorded: Option<(SpanContext, Recording)>,
    attributes: [(&'static str, &'static str); N],
    error: Option<&'static str>,
}

impl<const N: usize> ChildSpan<N> {
    pub fn start(name: &'static str, attributes: [(&'static str, &'static str); N]) -> Self {
        let recorded = exporting().and_then(|_| {
            Context::map_current(|cx| {
                if !cx.span().span_context().is_sampled() {
                    return None;
                }
                let (sc, recording) = begin(cx, name, SpanKind::Internal);
                recording.map(|recording| (sc, recording))
            })
        });
        Self {
            recorded,
            attributes,
            error: None,
        }
    }

    /// Marks the span as failed.
    pub fn set_error(&mut self, description: &'static str) {
        self.error = Some(description);
    }
}

impl<const N: usize> Drop for ChildSpan<N> {
    fn drop(&mut self) {
        if let Some((sc, recording)) = &self.recorded {
            let attributes = &self.attributes;
            finish(
                recording,
                sc,
                SpanKind::Internal,
                |out| attributes.iter().for_each(|(k, v)| out.str(k, v)),
                self.error,
            );
        }
    }
}

/// The trace and span id of the current context, if it has a valid one
/// (for log lines).
pub fn current_ids() -> Option<(opentelemetry::TraceId, opentelemetry::SpanId)> {
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
    })
}

/// W3C trace context is read from HTTP/2 headers (gRPC metadata).
/// Prebuilt, so the per-call check does not parse the name.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_exporter_a_call_continues_the_callers_trace() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let call = CallSpan::start("x", &headers);
        let span = call.context().span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(sc.span_id().to_string(), "00f067aa0ba902b7", "its own span");
        assert!(!sc.is_remote());

        let fresh = CallSpan::start("x", &HeaderMap::new());
        assert!(fresh.context().span().span_context().is_valid());
        assert!(!fresh.is_recording());
        let _guard = fresh.context().clone().attach();
        assert!(current_ids().is_some());
    }
}
