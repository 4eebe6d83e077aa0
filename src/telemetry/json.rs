//! `log.format = json`: one JSON object per line, with the OpenTelemetry
//! `trace_id` and `span_id` of the current context at the top level so a
//! log line leads to its trace and back.
//!
//! tracing-subscriber's own JSON formatter cannot reach the OpenTelemetry
//! context, hence this small formatter. It writes straight into the
//! subscriber's per-thread line buffer (no intermediate map, no allocation
//! per field) and looks at nothing but the event: spans cost it nothing
//! unless an event is written inside them.

use std::{
    cell::RefCell,
    fmt::{self, Write as _},
    time::{SystemTime, UNIX_EPOCH},
};

use tracing::{
    field::{Field, Visit},
    Event, Subscriber,
};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
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
        thread_local! {
            static LINE: RefCell<String> = const { RefCell::new(String::new()) };
        }
        // The line is built in a buffer of our own and handed over in one
        // piece: `Writer` reaches its buffer through `dyn fmt::Write`, and
        // a line is some seventy small writes, each a virtual call there
        // but an inlined `push_str` here. A field whose `Debug` logs (so
        // re-enters this function) gets a fresh buffer.
        LINE.with(|cell| {
            let mut own = String::new();
            let mut shared = cell.try_borrow_mut();
            let line = match &mut shared {
                Ok(line) => {
                    line.clear();
                    &mut **line
                }
                Err(_) => &mut own,
            };
            format_line(line, ctx, event)?;
            writer.write_str(line)
        })
    }
}

fn format_line<S, N>(
    line: &mut String,
    ctx: &FmtContext<'_, S, N>,
    event: &Event<'_>,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    line.push_str("{\"timestamp\":\"");
    write_timestamp(line, SystemTime::now())?;
    let meta = event.metadata();
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push_str("\",\"target\":");
    write_str(line, meta.target());

    let span = ctx.lookup_current().map(|span| span.name());
    // One pass over the fields. `tracing`'s macros put `message` first,
    // and readers of raw lines want it first, so the span and trace ids
    // go right after it (or first, for an event without a message).
    let mut fields = Fields {
        out: line,
        context: Some((span, super::trace::current_ids())),
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.write_context();
    fields.result?;
    line.push_str("}\n");
    Ok(())
}

/// Writes every field as `,"key":value`, and the line's context (span
/// name, trace and span ids) once, after `message`.
struct Fields<'a> {
    out: &'a mut String,
    /// Not written yet.
    context: Option<LineContext>,
    /// The first error of a field's `Debug` or `Display`, which ends the
    /// line (as tracing-subscriber's own formatters do).
    result: fmt::Result,
}

type LineContext = (
    Option<&'static str>,
    Option<(opentelemetry::TraceId, opentelemetry::SpanId)>,
);

impl Fields<'_> {
    fn write_context(&mut self) {
        let Some((span, ids)) = self.context.take() else {
            return;
        };
        if let Some(span) = span {
            self.out.push_str(",\"span\":");
            write_str(self.out, span);
        }
        if let Some((trace_id, span_id)) = ids {
            let mut trace_hex = [0u8; 32];
            let mut span_hex = [0u8; 16];
            self.out.push_str(",\"trace_id\":\"");
            self.out.push_str(hex(&trace_id.to_bytes(), &mut trace_hex));
            self.out.push_str("\",\"span_id\":\"");
            self.out.push_str(hex(&span_id.to_bytes(), &mut span_hex));
            self.out.push('"');
        }
    }

    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        let is_message = name == "message";
        if !is_message {
            self.write_context();
        }
        // `log` crate records arrive with `log.*` metadata fields: noise.
        let wanted = is_message || (!FIXED_KEYS.contains(&name) && !name.starts_with("log."));
        if !wanted || self.result.is_err() {
            return false;
        }
        self.out.push(',');
        write_str(self.out, name);
        self.out.push(':');
        true
    }
}

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.result = write_escaped(self.out, format_args!("{value:?}"));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            write_str(self.out, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            if value < 0 {
                self.out.push('-');
            }
            write_u64(self.out, value.unsigned_abs());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            write_u64(self.out, value);
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                // The shortest text that reads back as `value`, with a
                // decimal point kept (`2.0`), so it stays a float for JSON
                // readers; as serde_json writes floats, and a fifth of the
                // cost of `Debug`, which took a sixth of the line's.
                self.out.push_str(zmij::Buffer::new().format_finite(value));
            } else {
                self.out.push_str("null");
            }
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.out.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            self.result = write_escaped(self.out, format_args!("{value}"));
        }
    }
}

/// `bytes` as lower-case hex in `out` (twice its length), as the ids'
/// `Display` writes them, without formatting machinery per digit.
fn hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    // Only ASCII digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// `value` in decimal, without formatting machinery, written at the end
/// of `digits` (20 hold any `u64`).
pub fn decimal(value: u64, digits: &mut [u8; 20]) -> &str {
    // Only ASCII digits were written.
    std::str::from_utf8(decimal_digits(value, digits)).unwrap_or_default()
}

/// [`decimal`]'s digits as bytes, for a caller that writes bytes: the
/// UTF-8 check it skips is a branchy call per number, ~300 of the ~800
/// instructions that formatting a peer's IPv4 address and port took.
pub fn decimal_digits(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        // `value % 10` < 10, so it fits the digit.
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &digits[at..]
}

fn write_u64(out: &mut String, value: u64) {
    out.push_str(decimal(value, &mut [0; 20]));
}

/// `s` as a JSON string.
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

/// Formatted text as a JSON string, escaped on the fly.
fn write_escaped(out: &mut String, args: fmt::Arguments<'_>) -> fmt::Result {
    out.push('"');
    Escaper(&mut *out).write_fmt(args)?;
    out.push('"');
    Ok(())
}

/// Escapes what JSON strings may not contain raw.
struct Escaper<'a>(&'a mut String);

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

/// The bytes a JSON string may not hold raw: controls, `"` and `\\`.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Whether any byte of `s` is one JSON escapes (a control, `"` or `\`),
/// eight bytes at a time: nearly every string of a line (keys, names,
/// codes, addresses) needs no escape, and this check runs over all of them.
///
/// For a word `x`, `(x - 0x01…01 * n) & !x & 0x80…80` is non-zero exactly
/// when some byte of `x` is below `n` (for `n` ≤ 0x80; a borrow can only
/// mark bytes above the first such byte, never invent one). Bytes equal
/// to `"` or `\` are those below 1 after XOR with that byte.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    fn below(x: u64, n: u8) -> u64 {
        x.wrapping_sub(ONES * u64::from(n)) & !x
    }
    let mut words = s.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        let hits = below(x, 0x20)
            | below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1);
        if hits & HIGH != 0 {
            return true;
        }
    }
    words.remainder().iter().any(|&b| ESCAPED[usize::from(b)])
}

fn escape_into(out: &mut String, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
        return;
    }
    // Only ASCII bytes ever need escaping, and a byte below 0x80 is
    // always a character boundary, so scanning bytes is enough (and
    // much cheaper than decoding characters).
    let mut plain = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if !ESCAPED[usize::from(b)] {
            continue;
        }
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            // The other controls (the table holds nothing else).
            _ => "",
        };
        out.push_str(&s[plain..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push_str(hex(&[b], &mut [0; 2]));
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&s[plain..]);
}

/// RFC 3339 in UTC with microseconds (`2026-01-02T03:04:05.123456Z`), as
/// tracing-subscriber's `SystemTime` writes it. Everything up to the
/// seconds changes once a second, so each thread keeps that part
/// formatted and writes only the microseconds per line.
fn write_timestamp(out: &mut String, now: SystemTime) -> fmt::Result {
    thread_local! {
        /// (the second it is for, "YYYY-MM-DDTHH:MM:SS")
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let text = &mut cached.1;
            text.clear();
            write!(
                text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )?;
            cached.0 = secs;
        }
        out.write_str(&cached.1)
    })?;
    let mut micros = since_epoch.subsec_micros();
    let mut tail = *b".000000Z";
    for digit in tail[1..7].iter_mut().rev() {
        // `micros` < 1_000_000, so six digits hold it.
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.write_str(std::str::from_utf8(&tail).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
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

    /// What `f` logs through this formatter alone, as text.
    fn written(f: impl FnOnce()) -> String {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonFormat::new())
                .with_writer(buffer.clone()),
        );
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        parse(&String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap())
    }

    fn parse(text: &str) -> Vec<Value> {
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
        let call = crate::telemetry::trace::CallSpan::start("x", &http::HeaderMap::new());
        let lines = parse(&written(|| {
            let _guard = call.context().clone().attach();
            tracing::info!("in a call");
        }));
        let sc = call.context().span().span_context().clone();
        assert_eq!(lines[0]["trace_id"], sc.trace_id().to_string());
        assert_eq!(lines[0]["span_id"], sc.span_id().to_string());
        assert!(lines[0].get("span").is_none());
    }

    #[test]
    fn decimals_are_written_as_display_writes_them() {
        for value in [0, 7, 10, 65_535, u64::MAX] {
            assert_eq!(decimal(value, &mut [0; 20]), value.to_string());
        }
    }

    #[test]
    fn ids_are_written_as_their_display_writes_them() {
        let id = opentelemetry::TraceId::from(0x0102_0304_0506_0708_090a_0b0c_0d0e_0fa0_u128);
        let mut out = [0u8; 32];
        assert_eq!(hex(&id.to_bytes(), &mut out), id.to_string());
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut out = String::new();
            let t = UNIX_EPOCH + std::time::Duration::from_micros(secs * 1_000_000 + micros);
            write_timestamp(&mut out, t).unwrap();
            out
        };
        assert_eq!(at(1_767_322_245, 123_456), "2026-01-02T02:50:45.123456Z");
        // The cached second is replaced when the second changes.
        assert_eq!(at(1_767_322_246, 7), "2026-01-02T02:50:46.000007Z");
        assert_eq!(at(0, 999_999), "1970-01-01T00:00:00.999999Z");
    }

    #[test]
    fn the_message_comes_first_then_the_trace_then_the_fields() {
        let call = crate::telemetry::trace::CallSpan::start("x", &http::HeaderMap::new());
        let text = written(|| {
            let _guard = call.context().clone().attach();
            tracing::info!(a = 1, b = "two", "hello");
            tracing::info!(a = 1);
        });
        let mut lines = text.lines();
        let first = lines.next().unwrap();
        let order: Vec<usize> = [
            "\"timestamp\"",
            "\"level\"",
            "\"target\"",
            "\"message\"",
            "\"trace_id\"",
            "\"span_id\"",
            "\"a\"",
            "\"b\"",
        ]
        .iter()
        .map(|key| {
            first
                .find(key)
                .unwrap_or_else(|| panic!("{key} missing: {first}"))
        })
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{first}");
        // Without a message the ids still come, once.
        let second = lines.next().unwrap();
        assert_eq!(second.matches("\"trace_id\"").count(), 1, "{second}");
        let value: Value = serde_json::from_str(second).unwrap();
        assert_eq!(value["a"], 1);
    }

    #[test]
    fn the_word_check_finds_every_byte_that_needs_escaping_and_no_other() {
        // Every byte value at every position of words and remainders, in
        // a string of plain bytes (including ones just above the range and
        // multi-byte UTF-8, which must not count).
        for len in 1..=19 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[(at + 1) % len] = 0xC3; // UTF-8 lead and high bytes
                    s[at] = b;
                    let expected = ESCAPED[usize::from(b)];
                    assert_eq!(needs_escape(&s), expected, "byte {b:#04x} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape(b"user_service::grpc::middleware::observe"));
        assert!(!needs_escape(
            " #!$%&'()*+,-./09:;<=>?@AZ[]^_`az{|}~\x7f".as_bytes()
        ));
    }

    #[test]
    fn strings_are_escaped_and_fixed_keys_are_not_shadowed() {
        let lines = parse(&written(|| {
            let weird = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
            tracing::info!(level = "fake", text = weird, debug = ?weird, "m\"sg");
        }));
        let weird = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
        assert_eq!(lines[0]["message"], "m\"sg");
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["text"], weird);
        assert_eq!(lines[0]["debug"], format!("{weird:?}"));
    }
}
