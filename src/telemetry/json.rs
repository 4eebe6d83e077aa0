//! `log.format = json`: one JSON object per line, with the OpenTelemetry
//! `trace_id` and `span_id` of the current context at the top level so a
//! log line leads to its trace and back.
//!
//! tracing-subscriber's own JSON formatter cannot reach the OpenTelemetry
//! context, hence this small formatter. It writes straight into the
//! subscriber's per-thread line buffer (no intermediate map, no allocation
//! per field) and looks at nothing but the event: spans cost it nothing
//! unless an event is written inside them.

use std::fmt::{self, Write as _};

use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_subscriber::{
    fmt::{format::Writer, time::FormatTime, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
};

/// Keys written by the formatter itself; an event field never shadows them.
const FIXED_KEYS: [&str; 7] = [
    "timestamp",
    "level",
    "target",
    "message",
    "span",
    "trace_id",
    "span_id",
];

/// Fields: `timestamp` (RFC 3339, UTC), `level`, `target`, `message`,
/// `span` (the innermost `tracing` span's name, if any), `trace_id` and
/// `span_id` (lower-case hex) when the current OpenTelemetry context has a
/// valid span, then the event's own fields (numbers and booleans keep
/// their JSON type).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFormat;

impl JsonFormat {
    pub fn new() -> Self {
        Self
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
        writer.write_str("{\"timestamp\":\"")?;
        tracing_subscriber::fmt::time::SystemTime.format_time(&mut writer)?;
        let meta = event.metadata();
        write!(writer, "\",\"level\":\"{}\",\"target\":", meta.level())?;
        write_str(&mut writer, meta.target())?;

        // The message first, for people reading raw lines.
        let mut message = Fields {
            out: &mut writer,
            message: true,
            result: Ok(()),
        };
        event.record(&mut message);
        message.result?;

        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":")?;
            write_str(&mut writer, span.name())?;
        }
        if let Some((trace_id, span_id)) = super::trace::current_ids() {
            write!(
                writer,
                ",\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\""
            )?;
        }

        let mut fields = Fields {
            out: &mut writer,
            message: false,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str("}\n")
    }
}

/// Writes either the `message` field or every other field, as
/// `,"key":value`.
struct Fields<'a, 'w> {
    out: &'a mut Writer<'w>,
    /// true: only `message`; false: everything but it.
    message: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        let wanted = if self.message {
            name == "message"
        } else {
            // `log` crate records arrive with `log.*` metadata fields: noise.
            !FIXED_KEYS.contains(&name) && !name.starts_with("log.")
        };
        if !wanted || self.result.is_err() {
            return false;
        }
        self.result = self
            .out
            .write_char(',')
            .and_then(|()| write_str(self.out, name))
            .and_then(|()| self.out.write_char(':'));
        self.result.is_ok()
    }

    fn raw(&mut self, value: fmt::Arguments<'_>) {
        self.result = self.out.write_fmt(value);
    }
}

impl Visit for Fields<'_, '_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.result = write_escaped(self.out, format_args!("{value:?}"));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            self.result = write_str(self.out, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            self.raw(format_args!("{value}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            self.raw(format_args!("{value}"));
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                // Debug keeps a decimal point (`2.0`), so the value stays
                // a float for JSON readers.
                self.raw(format_args!("{value:?}"));
            } else {
                self.raw(format_args!("null"));
            }
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.raw(format_args!("{value}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            self.result = write_escaped(self.out, format_args!("{value}"));
        }
    }
}

/// `s` as a JSON string.
fn write_str(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaper(out).write_str(s)?;
    out.write_char('"')
}

/// Formatted text as a JSON string, escaped on the fly.
fn write_escaped(out: &mut impl fmt::Write, args: fmt::Arguments<'_>) -> fmt::Result {
    out.write_char('"')?;
    Escaper(&mut *out).write_fmt(args)?;
    out.write_char('"')
}

/// Escapes what JSON strings may not contain raw.
struct Escaper<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaper<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let escape: Option<&str> = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                c if (c as u32) < 0x20 => None,
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            match escape {
                Some(e) => self.0.write_str(e)?,
                None => write!(self.0, "\\u{:04x}", c as u32)?,
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use opentelemetry::trace::TracerProvider as _;
    use serde_json::Value;
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

    fn lines(buffer: &Buffer) -> Vec<Value> {
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn lines_carry_the_trace_id_of_the_enclosing_span() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonFormat::new())
                    .with_writer(buffer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42, "outside");
            let span = tracing::info_span!("rpc");
            let _entered = span.enter();
            tracing::warn!(grpc.code = "OK", ok = true, ms = 2.0, "inside");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["message"], "outside");
        assert_eq!(lines[0]["answer"], 42);
        assert!(lines[0].get("trace_id").is_none());
        assert_eq!(lines[1]["level"], "WARN");
        assert_eq!(lines[1]["grpc.code"], "OK");
        assert_eq!(lines[1]["ok"], true);
        assert!(lines[1]["ms"].is_f64());
        assert_eq!(lines[1]["span"], "rpc");
        let trace_id = lines[1]["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32);
        assert_ne!(trace_id, "00000000000000000000000000000000");
        assert_eq!(lines[1]["span_id"].as_str().unwrap().len(), 16);
        assert!(lines[1]["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn an_attached_context_without_a_tracing_span_is_used_too() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonFormat::new())
                .with_writer(buffer.clone()),
        );
        let call = crate::telemetry::trace::CallSpan::start("x", &http::HeaderMap::new(), Vec::new);
        tracing::subscriber::with_default(subscriber, || {
            let _guard = call.context().clone().attach();
            tracing::info!("in a call");
        });
        let lines = lines(&buffer);
        assert_eq!(lines[0]["trace_id"].as_str().unwrap().len(), 32);
        assert!(lines[0].get("span").is_none());
    }

    #[test]
    fn strings_are_escaped_and_fixed_keys_are_not_shadowed() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonFormat::new())
                .with_writer(buffer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let weird = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
            tracing::info!(level = "fake", text = weird, debug = ?weird, "m\"sg");
        });
        let lines = lines(&buffer);
        let weird = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
        assert_eq!(lines[0]["message"], "m\"sg");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["text"], weird);
        assert_eq!(lines[0]["debug"], format!("{weird:?}"));
    }
}
