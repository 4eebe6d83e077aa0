//! `log.format = json`: one JSON object per line, with the OpenTelemetry
//! `trace_id` and `span_id` of the enclosing span at the top level so a log
//! line leads to its trace and back.
//!
//! tracing-subscriber's own JSON formatter cannot reach the OpenTelemetry
//! context, hence this small formatter.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::{
    dispatcher::WeakDispatch,
    field::{Field, Visit},
    Dispatch, Event, Subscriber,
};
use tracing_subscriber::{
    fmt::{format::Writer, time::FormatTime, FmtContext, FormatEvent, FormatFields},
    layer::Layer,
    registry::LookupSpan,
};

/// Fields: `timestamp` (RFC 3339, UTC), `level`, `target`, `message`, the
/// event's own fields, `span` (the innermost span's name) and, inside a
/// traced span, `trace_id` and `span_id` (lower-case hex).
///
/// Reading the OpenTelemetry context needs the subscriber itself, which is
/// not reachable from inside an event callback (`tracing` hides the current
/// dispatcher there to prevent recursion): [`JsonFormat::dispatch_layer`]
/// must be added to the same subscriber to hand it over.
#[derive(Debug, Default, Clone)]
pub struct JsonFormat {
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonFormat {
    pub fn new() -> Self {
        Self::default()
    }

    /// A layer that only remembers the subscriber it is registered in.
    pub fn dispatch_layer(&self) -> DispatchLayer {
        DispatchLayer(Arc::clone(&self.dispatch))
    }
}

/// See [`JsonFormat::dispatch_layer`].
pub struct DispatchLayer(Arc<OnceLock<WeakDispatch>>);

impl<S: Subscriber> Layer<S> for DispatchLayer {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        // Weak: the subscriber owns this layer.
        let _ = self.0.set(subscriber.downgrade());
    }
}

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Fixed keys first, in this order, for people reading raw lines.
        let mut head: Vec<(&str, Value)> = Vec::with_capacity(7);
        let mut timestamp = String::new();
        if tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut Writer::new(&mut timestamp))
            .is_ok()
        {
            head.push(("timestamp", Value::String(timestamp)));
        }
        let meta = event.metadata();
        head.push(("level", Value::String(meta.level().to_string())));
        head.push(("target", Value::String(meta.target().to_owned())));

        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        if let Some(message) = fields.remove("message") {
            head.push(("message", message));
        }

        let dispatch = self.dispatch.get().and_then(WeakDispatch::upgrade);
        if let (Some(scope), Some(dispatch)) = (ctx.event_scope(), dispatch) {
            let mut innermost = true;
            // The OpenTelemetry layer only tracks our own spans: walk out
            // from the innermost span to the first one it knows.
            for span in scope {
                if innermost {
                    head.push(("span", Value::String(span.name().to_owned())));
                    innermost = false;
                }
                // Must not hold the span's extensions here: the lookup
                // locks them itself.
                let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)
                else {
                    continue;
                };
                let otel_span = cx.span();
                let sc = otel_span.span_context();
                if sc.is_valid() {
                    head.push(("trace_id", Value::String(sc.trace_id().to_string())));
                    head.push(("span_id", Value::String(sc.span_id().to_string())));
                    break;
                }
            }
        }

        let mut line = String::with_capacity(256);
        line.push('{');
        let fields = fields
            .iter()
            // An event field never shadows a fixed key.
            .filter(|(k, _)| !head.iter().any(|(h, _)| h == k))
            .map(|(k, v)| (k.as_str(), v));
        for (i, (key, value)) in head.iter().map(|(k, v)| (*k, v)).chain(fields).enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&serde_json::to_string(key).map_err(|_| fmt::Error)?);
            line.push(':');
            line.push_str(&serde_json::to_string(value).map_err(|_| fmt::Error)?);
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// Event fields as JSON values; numbers and booleans keep their type.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        // `log` crate records arrive with `log.*` metadata fields: noise.
        if !field.name().starts_with("log.") {
            self.0.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::{fmt::MakeWriter, prelude::*};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn lines_carry_the_trace_id_of_the_enclosing_span() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let format = JsonFormat::new();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(format.dispatch_layer())
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(format)
                    .with_writer(buffer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, "outside");
            let span = tracing::info_span!("rpc");
            let _entered = span.enter();
            tracing::warn!(grpc.code = "OK", ok = true, "inside");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["answer"], 42);
        assert!(lines[0].get("trace_id").is_none());
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["grpc.code"], "OK");
        assert_eq!(lines[1]["ok"], true);
        assert_eq!(lines[1]["span"], "rpc");
        let trace_id = lines[1]["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, "00000000000000000000000000000000");
        assert_eq!(lines[1]["span_id"].as_str().unwrap().len(), 16);
        assert!(lines[1]["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
