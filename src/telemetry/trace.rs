//! Spans on the hot path, made with the OpenTelemetry SDK directly.
//!
//! Every gRPC call gets one SERVER span (by the call layer) and, inside a
//! sampled call, one INTERNAL span per store operation. Going through
//! `tracing` + `tracing-opentelemetry` for these cost more than the call
//! itself (a registry slot, per-poll enter/exit bookkeeping, extensions
//! locks, field formatting for every span even when nothing is logged), so
//! they are built here and carried as an OpenTelemetry [`Context`], which
//! the JSON log formatter reads for `trace_id`/`span_id`.
//!
//! - With an exporter: the SDK tracer decides sampling; unsampled calls get
//!   a non-recording span (ids only), sampled ones record attributes.
//! - Without one: nothing could ever be exported, so no SDK span is built
//!   at all; the call still gets a trace id (the caller's, or a new one)
//!   and a span id, so its log lines correlate with the caller's trace.
//!
//! Spans made with `tracing` elsewhere in the crate still become
//! OpenTelemetry spans through `tracing-opentelemetry`, as children of the
//! current call (that layer reads [`Context::current`] for a parent).

use std::{net::SocketAddr, sync::OnceLock};

use http::HeaderMap;
use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{
        Span as _, SpanBuilder, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags,
        Tracer as _,
    },
    Context, KeyValue,
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{IdGenerator, RandomIdGenerator, SdkTracer},
};

/// The exporting tracer, set once by [`super::init`] when an OTLP endpoint
/// is configured.
static EXPORTING: OnceLock<SdkTracer> = OnceLock::new();

pub(super) fn set_exporting_tracer(tracer: SdkTracer) {
    let _ = EXPORTING.set(tracer);
}

fn exporting() -> Option<&'static SdkTracer> {
    EXPORTING.get()
}

/// Whether spans are exported at all (so recording them is worth it).
pub fn is_exporting() -> bool {
    exporting().is_some()
}

/// The trace context of one call.
pub struct CallSpan {
    cx: Context,
    recording: bool,
}

impl CallSpan {
    /// No span: the call is not traced (health probes by default).
    pub fn none() -> Self {
        Self {
            cx: Context::new(),
            recording: false,
        }
    }

    /// Starts the SERVER span of a call named `name`, continuing the W3C
    /// `traceparent` in `headers` if there is one.
    pub fn start(
        name: &'static str,
        headers: &HeaderMap,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Self {
        // The base is an empty context, not the current one: a call never
        // inherits whatever context the polling thread happens to hold.
        let parent = TraceContextPropagator::new()
            .extract_with_context(&Context::new(), &HeaderExtractor(headers));
        match exporting() {
            Some(tracer) => {
                let builder = SpanBuilder::from_name(name).with_kind(SpanKind::Server);
                let mut span = tracer.build_with_context(builder, &parent);
                let recording = span.is_recording();
                if recording {
                    // Built only for spans that will be exported.
                    span.set_attributes(attributes());
                }
                Self {
                    cx: parent.with_span(span),
                    recording,
                }
            }
            None => {
                let ids = RandomIdGenerator::default();
                let remote = parent.span().span_context().clone();
                let (trace_id, flags, state) = if remote.is_valid() {
                    (
                        remote.trace_id(),
                        remote.trace_flags(),
                        remote.trace_state().clone(),
                    )
                } else {
                    (
                        ids.new_trace_id(),
                        TraceFlags::default(),
                        Default::default(),
                    )
                };
                let sc = SpanContext::new(trace_id, ids.new_span_id(), flags, false, state);
                Self {
                    cx: parent.with_remote_span_context(sc),
                    recording: false,
                }
            }
        }
    }

    /// The context to run the call's code in.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Ends the span with its final attributes; `error` sets status ERROR.
    pub fn end(&self, attributes: impl FnOnce() -> Vec<KeyValue>, error: Option<&'static str>) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        span.set_attributes(attributes());
        if let Some(description) = error {
            span.set_status(Status::error(description));
        }
        span.end();
    }
}

/// The peer attributes of the semantic conventions.
pub fn peer_attributes(peer: Option<SocketAddr>, out: &mut Vec<KeyValue>) {
    if let Some(peer) = peer {
        out.push(KeyValue::new("network.peer.address", peer.ip().to_string()));
        out.push(KeyValue::new("network.peer.port", i64::from(peer.port())));
    }
}

/// An INTERNAL span for work inside the current call (a store operation),
/// recorded only when the call is sampled and spans are exported. Ends
/// when dropped.
pub struct ChildSpan(Option<opentelemetry_sdk::trace::Span>);

impl ChildSpan {
    pub fn start(name: &'static str, attributes: impl FnOnce() -> Vec<KeyValue>) -> Self {
        let Some(tracer) = exporting() else {
            return Self(None);
        };
        Context::map_current(|cx| {
            if !cx.span().span_context().is_sampled() {
                return Self(None);
            }
            let builder = SpanBuilder::from_name(name)
                .with_kind(SpanKind::Internal)
                .with_attributes(attributes());
            Self(Some(tracer.build_with_context(builder, cx)))
        })
    }

    /// Marks the span as failed.
    pub fn set_error(&mut self, description: &'static str) {
        if let Some(span) = &mut self.0 {
            span.set_status(Status::error(description));
        }
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        if let Some(span) = &mut self.0 {
            span.end();
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
        let call = CallSpan::start("x", &headers, Vec::new);
        let span = call.context().span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(sc.span_id().to_string(), "00f067aa0ba902b7", "its own span");
        assert!(!sc.is_remote());

        let fresh = CallSpan::start("x", &HeaderMap::new(), Vec::new);
        assert!(fresh.context().span().span_context().is_valid());
        assert!(!fresh.is_recording());
        let _guard = fresh.context().clone().attach();
        assert!(current_ids().is_some());
    }
}
