//! The OTLP/protobuf encoding of finished spans, written straight from the
//! SDK's [`SpanData`] into bytes.
//!
//! The OTLP exporter crate converts each span into its generated message
//! types first (a `String` or `Vec` for every id, name, key and value), then
//! measures and encodes those: at one span per call that was a large share
//! of a traced call's cost. Here a span is encoded once, when it ends, and a
//! batch is a byte buffer that [`export_request`] wraps into an
//! `ExportTraceServiceRequest`. The field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto` (and `common`, `resource`);
//! the tests decode the output with the generated types and compare it with
//! the exporter crate's own conversion.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::{
    trace::{SpanContext, SpanId, SpanKind, Status},
    Array, InstrumentationScope, KeyValue, Value,
};
use opentelemetry_sdk::{trace::SpanData, Resource};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};

/// `ScopeSpans.spans` (and the tag each encoded span starts with).
const SCOPE_SPANS_SPAN: u32 = 2;
/// `SpanFlags`: the flags say whether the parent was remote.
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// Appends `span` to `out` as one `ScopeSpans.spans` field (tag, length,
/// `Span` message), ready to be concatenated with the others of its scope.
/// Fields are written in tag order, as prost does, so the bytes are the
/// same as the exporter crate's.
pub fn append_span(span: &SpanData, out: &mut Vec<u8>) {
    message(out, SCOPE_SPANS_SPAN, |out| encode_span(span, out));
}

/// An `ExportTraceServiceRequest` of one resource: `resource` is
/// [`encode_resource`]'s output, `scopes` each scope's
/// [`encode_scope`] output with its spans' [`append_span`] output.
pub fn export_request<'a>(
    resource: &[u8],
    scopes: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Vec<u8> {
    let scope_spans_len = |scope: &[u8], spans: &[u8]| field_len(1, scope.len()) + spans.len();
    let resource_spans_len = field_len(1, resource.len())
        + scopes
            .clone()
            .map(|(scope, spans)| field_len(2, scope_spans_len(scope, spans)))
            .sum::<usize>();
    let mut out = Vec::with_capacity(field_len(1, resource_spans_len));
    // ExportTraceServiceRequest.resource_spans = 1
    header(&mut out, 1, resource_spans_len);
    // ResourceSpans.resource = 1
    header(&mut out, 1, resource.len());
    out.extend_from_slice(resource);
    for (scope, spans) in scopes {
        // ResourceSpans.scope_spans = 2 { scope = 1, spans = 2 ... }
        header(&mut out, 2, scope_spans_len(scope, spans));
        header(&mut out, 1, scope.len());
        out.extend_from_slice(scope);
        out.extend_from_slice(spans);
    }
    out
}

/// The `Resource` message (its body, without tag and length).
pub fn encode_resource(resource: &Resource) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in resource.iter() {
        message(&mut out, 1, |out| key_value(key.as_str(), value, out));
    }
    out
}

/// The `InstrumentationScope` message (its body).
pub fn encode_scope(scope: &InstrumentationScope) -> Vec<u8> {
    let mut out = Vec::new();
    string(&mut out, 1, scope.name());
    string(&mut out, 2, scope.version().unwrap_or_default());
    attributes(&mut out, 3, scope.attributes());
    out
}

/// A span the hot path recorded itself (`telemetry::trace`), without the
/// SDK's `SpanData`: its ids and flags are `context`'s.
pub struct Recorded<'a> {
    pub context: &'a SpanContext,
    pub parent: SpanId,
    pub parent_is_remote: bool,
    pub name: &'a str,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    /// Status ERROR with this description; `None` leaves it unset.
    pub error: Option<&'static str>,
}

/// Appends a [`Recorded`] span like [`append_span`]; `attributes` writes
/// its attributes straight into the message.
pub fn append_recorded(
    span: &Recorded<'_>,
    attributes: impl FnOnce(&mut Attributes<'_>),
    out: &mut Vec<u8>,
) {
    message(out, SCOPE_SPANS_SPAN, |out| {
        head(
            out,
            span.context,
            span.parent,
            span.name,
            &span.kind,
            (span.start, span.end),
        );
        attributes(&mut Attributes(out));
        let status = match span.error {
            Some(description) => Status::error(description),
            None => Status::Unset,
        };
        tail(out, &status, span.parent_is_remote, span.context);
    });
}

/// Writes a span's attributes (`Span.attributes`, field 9) in place.
pub struct Attributes<'a>(&'a mut Vec<u8>);

impl Attributes<'_> {
    pub fn str(&mut self, key: &str, value: &str) {
        self.attribute(key, |out| bytes(out, 1, value.as_bytes()));
    }

    pub fn int(&mut self, key: &str, value: i64) {
        self.attribute(key, |out| scalar(out, 3, WireType::Varint, value as u64));
    }

    pub fn key_value(&mut self, kv: &KeyValue) {
        self.attribute(kv.key.as_str(), |out| any_value(&kv.value, out));
    }

    /// One `KeyValue` whose `AnyValue` body `value` writes.
    fn attribute(&mut self, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
        message(self.0, 9, |out| {
            string(out, 1, key);
            message(out, 2, value);
        });
    }
}

fn encode_span(span: &SpanData, out: &mut Vec<u8>) {
    let cx = &span.span_context;
    head(
        out,
        cx,
        span.parent_span_id,
        &span.name,
        &span.span_kind,
        (span.start_time, span.end_time),
    );
    attributes(out, 9, span.attributes.iter());
    varint(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        message(out, 11, |out| {
            fixed64(out, 1, nanos(event.timestamp));
            string(out, 2, &event.name);
            attributes(out, 3, event.attributes.iter());
            varint(out, 4, u64::from(event.dropped_attributes_count));
        });
    }
    varint(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        message(out, 13, |out| {
            let cx = &link.span_context;
            bytes(out, 1, &cx.trace_id().to_bytes());
            bytes(out, 2, &cx.span_id().to_bytes());
            string(out, 3, &cx.trace_state().header());
            attributes(out, 4, link.attributes.iter());
            varint(out, 5, u64::from(link.dropped_attributes_count));
            fixed32(out, 6, flags(cx.is_remote(), cx.trace_flags().to_u8()));
        });
    }
    varint(out, 14, u64::from(span.links.dropped_count));
    tail(out, &span.status, span.parent_span_is_remote, cx);
}

/// `Span` fields 1 to 8: ids, trace state, parent, name, kind, times.
fn head(
    out: &mut Vec<u8>,
    cx: &SpanContext,
    parent: SpanId,
    name: &str,
    kind: &SpanKind,
    (start, end): (SystemTime, SystemTime),
) {
    bytes(out, 1, &cx.trace_id().to_bytes());
    bytes(out, 2, &cx.span_id().to_bytes());
    string(out, 3, &cx.trace_state().header());
    if parent != SpanId::INVALID {
        bytes(out, 4, &parent.to_bytes());
    }
    string(out, 5, name);
    let kind = match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    varint(out, 6, kind);
    fixed64(out, 7, nanos(start));
    fixed64(out, 8, nanos(end));
}

/// `Span` fields 15 and 16: status (always present, as the exporter crate
/// writes it) and flags.
fn tail(out: &mut Vec<u8>, status: &Status, parent_is_remote: bool, cx: &SpanContext) {
    message(out, 15, |out| match status {
        Status::Unset => {}
        Status::Ok => varint(out, 3, 1),
        Status::Error { description } => {
            string(out, 2, description);
            varint(out, 3, 2);
        }
    });
    fixed32(out, 16, flags(parent_is_remote, cx.trace_flags().to_u8()));
}

fn flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    let remote = if parent_is_remote { FLAG_IS_REMOTE } else { 0 };
    u32::from(trace_flags) | FLAG_HAS_IS_REMOTE | remote
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn attributes<'a>(out: &mut Vec<u8>, tag: u32, kvs: impl Iterator<Item = &'a KeyValue>) {
    for kv in kvs {
        message(out, tag, |out| key_value(kv.key.as_str(), &kv.value, out));
    }
}

/// `KeyValue { key = 1, value = 2 (AnyValue) }`.
fn key_value(key: &str, value: &Value, out: &mut Vec<u8>) {
    string(out, 1, key);
    message(out, 2, |out| any_value(value, out));
}

/// `AnyValue`: string = 1, bool = 2, int = 3, double = 4, array = 5. A
/// oneof member is written even when it holds the default (0, false, ""):
/// without it the value would decode as absent.
fn any_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Bool(v) => scalar(out, 2, WireType::Varint, u64::from(*v)),
        // int64 is the two's complement bit pattern as a varint.
        Value::I64(v) => scalar(out, 3, WireType::Varint, *v as u64),
        Value::F64(v) => scalar(out, 4, WireType::SixtyFourBit, v.to_bits()),
        Value::String(v) => bytes(out, 1, v.as_str().as_bytes()),
        Value::Array(array) => message(out, 5, |out| {
            // ArrayValue { values = 1 (AnyValue) }
            let mut each = |v: Value| message(out, 1, |out| any_value(&v, out));
            match array {
                Array::Bool(vs) => vs.iter().for_each(|v| each(Value::Bool(*v))),
                Array::I64(vs) => vs.iter().for_each(|v| each(Value::I64(*v))),
                Array::F64(vs) => vs.iter().for_each(|v| each(Value::F64(*v))),
                Array::String(vs) => vs.iter().for_each(|v| each(Value::String(v.clone()))),
                // A kind of array newer than this code: its text.
                other => each(Value::from(other.to_string())),
            }
        }),
        // A kind of value newer than this code: its text.
        other => bytes(out, 1, other.to_string().as_bytes()),
    }
}

/// A varint or fixed64 field, written whatever its value (oneof members).
fn scalar(out: &mut Vec<u8>, tag: u32, wire_type: WireType, value: u64) {
    encode_key(tag, wire_type, out);
    match wire_type {
        WireType::SixtyFourBit => out.extend_from_slice(&value.to_le_bytes()),
        _ => encode_varint(value, out),
    }
}

/// A length-delimited field whose body `body` writes. The body is written
/// in place after a one-byte length, which almost every body here fits
/// (under 128 bytes); a longer one is moved up to make room for its
/// length, which costs less than measuring every body before writing it.
fn message(out: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, out);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = len as u8;
        return;
    }
    let prefix = encoded_len_varint(len as u64);
    out.resize(out.len() + prefix - 1, 0);
    out.copy_within(at + 1..at + 1 + len, at + prefix);
    encode_varint(len as u64, &mut &mut out[at..at + prefix]);
}

fn header(out: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

/// Bytes of a length-delimited field with a body of `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

fn bytes(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    header(out, tag, value.len());
    out.extend_from_slice(value);
}

/// A string field; empty (the default) is left out, as proto3 does.
fn string(out: &mut Vec<u8>, tag: u32, value: &str) {
    if !value.is_empty() {
        bytes(out, tag, value.as_bytes());
    }
}

/// A varint field; zero (the default) is left out, as proto3 does.
fn varint(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(value, out);
    }
}

fn fixed64(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(out: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::Duration};

    use opentelemetry::{
        trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState},
        StringValue,
    };
    use opentelemetry_proto::{
        tonic::collector::trace::v1::ExportTraceServiceRequest,
        transform::trace::tonic::group_spans_by_resource_and_scope,
    };
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;

    fn span(name: &'static str, parent: SpanId, status: Status, kind: SpanKind) -> SpanData {
        let mut events = SpanEvents::default();
        events.events.push(opentelemetry::trace::Event::new(
            "exception",
            UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            vec![KeyValue::new("exception.message", "boom")],
            1,
        ));
        events.dropped_count = 2;
        let mut links = SpanLinks::default();
        links.links.push(opentelemetry::trace::Link::new(
            SpanContext::new(
                TraceId::from(7),
                SpanId::from(8),
                TraceFlags::SAMPLED,
                true,
                TraceState::from_key_value([("vendor", "x")]).unwrap(),
            ),
            vec![KeyValue::new("link.n", 1_i64)],
            0,
        ));
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
                SpanId::from(0x00f0_67aa_0ba9_02b7),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: parent,
            parent_span_is_remote: parent != SpanId::INVALID,
            span_kind: kind,
            name: Cow::Borrowed(name),
            start_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001),
            end_time: UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_090_001),
            attributes: vec![
                KeyValue::new("rpc.method", "GetUser"),
                KeyValue::new("rpc.grpc.status_code", -1_i64),
                KeyValue::new("ok", true),
                KeyValue::new("ratio", 0.25),
                // Defaults, which a oneof must still carry.
                KeyValue::new("zero", 0_i64),
                KeyValue::new("no", false),
                KeyValue::new("empty", ""),
                KeyValue::new("nought", 0.0),
                KeyValue::new(
                    "tags",
                    Value::Array(Array::String(vec![StringValue::from("a"), "b".into()])),
                ),
                KeyValue::new("ns", Value::Array(Array::I64(vec![1, 0, -2]))),
                KeyValue::new("bs", Value::Array(Array::Bool(vec![false, true]))),
            ],
            dropped_attributes_count: 3,
            events,
            links,
            status,
            instrumentation_scope: InstrumentationScope::builder("user-service")
                .with_version("1.2.3")
                .build(),
        }
    }

    #[test]
    fn spans_decode_to_what_the_otlp_exporter_would_have_sent() {
        let resource = Resource::builder_empty()
            .with_service_name("user-service")
            .with_attribute(KeyValue::new("service.instance.n", 3_i64))
            .build();
        let spans = vec![
            span("GetUser", SpanId::INVALID, Status::Unset, SpanKind::Server),
            span(
                "store.get",
                SpanId::from(5),
                Status::error("store unavailable"),
                SpanKind::Internal,
            ),
            span("x", SpanId::from(9), Status::Ok, SpanKind::Client),
        ];
        let scope = encode_scope(&spans[0].instrumentation_scope);
        let mut encoded = Vec::new();
        for span in &spans {
            append_span(span, &mut encoded);
        }
        let ours = export_request(
            &encode_resource(&resource),
            [(&scope[..], &encoded[..])].into_iter(),
        );
        let decoded = ExportTraceServiceRequest::decode(&ours[..]).unwrap();
        let expected = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &(&resource).into()),
        };
        assert_eq!(decoded, expected);
        assert_eq!(ours, expected.encode_to_vec(), "byte for byte, too");
    }

    #[test]
    fn a_recorded_span_encodes_like_the_same_span_from_the_sdk() {
        use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;

        let mut sdk = span(
            "GetUser",
            SpanId::from(5),
            Status::error("Unavailable"),
            SpanKind::Server,
        );
        sdk.span_context = SpanContext::new(
            sdk.span_context.trace_id(),
            sdk.span_context.span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        sdk.attributes = vec![
            KeyValue::new("rpc.method", "GetUser"),
            KeyValue::new("network.peer.address", "10.0.0.7"),
            KeyValue::new("rpc.grpc.status_code", 0_i64),
        ];
        sdk.dropped_attributes_count = 0;
        sdk.events = SpanEvents::default();
        sdk.links = SpanLinks::default();
        let recorded = Recorded {
            context: &sdk.span_context,
            parent: sdk.parent_span_id,
            parent_is_remote: sdk.parent_span_is_remote,
            name: "GetUser",
            kind: SpanKind::Server,
            start: sdk.start_time,
            end: sdk.end_time,
            error: Some("Unavailable"),
        };
        let mut ours = Vec::new();
        append_recorded(
            &recorded,
            |span| {
                span.str("rpc.method", "GetUser");
                span.str("network.peer.address", "10.0.0.7");
                span.int("rpc.grpc.status_code", 0);
            },
            &mut ours,
        );
        let mut theirs = Vec::new();
        append_span(&sdk, &mut theirs);
        assert_eq!(ours, theirs);
        // Past the field's one-byte tag, a length-delimited Span.
        assert_eq!(ours[0], 0x12, "ScopeSpans.spans, length-delimited");
        let decoded = ProtoSpan::decode_length_delimited(&ours[1..]).unwrap();
        assert_eq!(decoded, ProtoSpan::from(sdk));
    }
}
