//! The one layer stack around every gRPC call: go-grpc-prometheus metrics,
//! one OpenTelemetry SERVER span, and one `finished call` log line.
//!
//! It works at the HTTP level, below tonic's codecs, so it sees every
//! service (ours, health, reflection) the same way:
//! - the method comes from the path `/pkg.Service/Method`; its gRPC type
//!   from a static table ([`METHODS`], checked against our descriptors by a
//!   unit test);
//! - messages are counted by parsing the 5-byte length-prefixed gRPC frames
//!   of the request and response bodies as they stream through;
//! - the final status comes from the response headers (trailers-only
//!   responses) or the trailers; a call whose response is dropped before
//!   either (client went away, deadline) counts as `Canceled` or
//!   `DeadlineExceeded`.
//!
//! Metric handles are registered once per method and code when the layer is
//! built, so the hot path does no registry lookup.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use metrics::{Counter, Histogram};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::{body::Body, Code, Status};
use tower::{Layer, Service};
use tracing::{field, Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::streams::parse_grpc_timeout;
use crate::telemetry::metrics as names;

/// The four go-grpc-prometheus `grpc_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    pub fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ClientStream => "client_stream",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

/// Every method we serve, with its streaming type. Series are pre-created
/// for each, so `rate()` and error ratios work before the first call.
pub const METHODS: &[(&str, &str, GrpcType)] = &[
    ("user.v1.UserService", "CreateUser", GrpcType::Unary),
    ("user.v1.UserService", "GetUser", GrpcType::Unary),
    ("user.v1.UserService", "UpdateUser", GrpcType::Unary),
    ("user.v1.UserService", "DeleteUser", GrpcType::Unary),
    ("user.v1.UserService", "ListUsers", GrpcType::ServerStream),
    (
        "user.v1.UserService",
        "BulkCreateUsers",
        GrpcType::ClientStream,
    ),
    ("user.v1.UserService", "UserUpdates", GrpcType::BidiStream),
    ("user.v1.UserService", "WatchUsers", GrpcType::ServerStream),
    ("grpc.health.v1.Health", "Check", GrpcType::Unary),
    ("grpc.health.v1.Health", "Watch", GrpcType::ServerStream),
    (
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        GrpcType::BidiStream,
    ),
    (
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        GrpcType::BidiStream,
    ),
];

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Every gRPC code, indexed by its number.
const ALL_CODES: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

/// A code as grpc-go spells it (`codes.Code.String()`), which is what
/// go-grpc-prometheus puts in `grpc_code`. tonic's Debug output differs
/// (`Ok`, `Cancelled`).
pub fn go_code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// How loud the `finished call` line is, per go-grpc-middleware's default:
/// client mistakes are info, trouble worth a look is warn, bugs are error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

pub fn log_level(code: Code) -> LogLevel {
    match code {
        Code::Ok
        | Code::Cancelled
        | Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Unauthenticated => LogLevel::Info,
        Code::DeadlineExceeded
        | Code::PermissionDenied
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable => LogLevel::Warn,
        Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => LogLevel::Error,
    }
}

/// The codes the OpenTelemetry semantic conventions call server errors
/// (span status ERROR); the rest are the client's problem.
pub fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// What the layer needs from the settings.
#[derive(Debug, Clone, Copy)]
pub struct LayerOptions {
    /// Trace `grpc.health.v1.Health` calls (otherwise they are counted but
    /// get no span, and their log line is at debug).
    pub trace_health_checks: bool,
    /// The server's timeout for calls without `grpc-timeout`: a call dropped
    /// after it counts as DeadlineExceeded rather than Canceled.
    pub default_timeout: Duration,
}

/// The layer wrapping the whole tonic router. Build it once per server.
pub fn layer(options: LayerOptions) -> ObserveLayer {
    // Handles registered before the recorder exists would be no-ops.
    let _ = crate::telemetry::metrics::install();
    let methods = METHODS
        .iter()
        .map(|&(service, method, kind)| {
            let info = MethodInfo::register(service, method, kind, &options);
            (format!("/{service}/{method}"), Arc::new(info))
        })
        .collect();
    ObserveLayer {
        shared: Arc::new(Shared {
            methods,
            options,
            propagator: TraceContextPropagator::new(),
        }),
    }
}

struct Shared {
    /// By request path.
    methods: HashMap<String, Arc<MethodInfo>>,
    options: LayerOptions,
    propagator: TraceContextPropagator,
}

/// One method's names and cached metric handles.
struct MethodInfo {
    service: &'static str,
    method: &'static str,
    /// `user.v1.UserService/CreateUser`: the span name.
    full_name: String,
    traced: bool,
    started: Counter,
    msg_received: Counter,
    msg_sent: Counter,
    handling: Histogram,
    /// By code number.
    handled: Vec<Counter>,
}

impl MethodInfo {
    fn register(
        service: &'static str,
        method: &'static str,
        kind: GrpcType,
        options: &LayerOptions,
    ) -> Self {
        let labels = [
            ("grpc_type", kind.as_str()),
            ("grpc_service", service),
            ("grpc_method", method),
        ];
        let started = metrics::counter!(names::GRPC_STARTED, &labels);
        let msg_received = metrics::counter!(names::GRPC_MSG_RECEIVED, &labels);
        let msg_sent = metrics::counter!(names::GRPC_MSG_SENT, &labels);
        let handling = metrics::histogram!(names::GRPC_HANDLING_SECONDS, &labels);
        // `absolute(0)` would reset counters shared with another server in
        // this process; `increment(0)` creates the series and keeps counts.
        for counter in [&started, &msg_received, &msg_sent] {
            counter.increment(0);
        }
        let handled = ALL_CODES
            .iter()
            .map(|&code| {
                let counter = metrics::counter!(
                    names::GRPC_HANDLED,
                    "grpc_type" => kind.as_str(),
                    "grpc_service" => service,
                    "grpc_method" => method,
                    "grpc_code" => go_code_name(code),
                );
                counter.increment(0);
                counter
            })
            .collect();
        Self {
            service,
            method,
            full_name: format!("{service}/{method}"),
            traced: service != HEALTH_SERVICE || options.trace_health_checks,
            started,
            msg_received,
            msg_sent,
            handling,
            handled,
        }
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<ObservedBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let Some(info) = self.shared.methods.get(req.uri().path()).cloned() else {
            // Not a method we serve: tonic answers UNIMPLEMENTED. Like
            // grpc-go's interceptors, we do not record it, which also keeps
            // arbitrary paths from creating series.
            let fut = inner.call(req);
            return Box::pin(async move { Ok(fut.await?.map(ObservedBody::plain)) });
        };

        let mut call = Call::start(&self.shared, info, &req);
        let (parts, body) = req.into_parts();
        let body = Body::new(CountedRequest {
            inner: body,
            frames: FrameCounter::default(),
            counter: call.info.msg_received.clone(),
        });
        let fut = inner
            .call(Request::from_parts(parts, body))
            .instrument(call.span.clone());
        Box::pin(async move {
            match fut.await {
                Ok(response) => {
                    call.responded = true;
                    if let Some(code) = grpc_status(response.headers()) {
                        // Trailers-only response: the call is over.
                        call.finish(code);
                        Ok(response.map(ObservedBody::plain))
                    } else {
                        Ok(response.map(|body| ObservedBody::observed(body, call)))
                    }
                }
                Err(err) => {
                    call.finish(Code::Unknown);
                    Err(err)
                }
            }
        })
    }
}

/// One call in flight. Finishing records everything exactly once; dropping
/// an unfinished call finishes it as cancelled (or past its deadline).
struct Call {
    info: Arc<MethodInfo>,
    span: Span,
    start: Instant,
    /// The client's `grpc-timeout`, as an instant.
    client_deadline: Option<Instant>,
    /// tonic's server-side timeout, which covers the call until response
    /// headers are sent.
    server_deadline: Instant,
    responded: bool,
    peer: Option<SocketAddr>,
    finished: bool,
}

impl Call {
    fn start(shared: &Shared, info: Arc<MethodInfo>, req: &Request<Body>) -> Self {
        let start = Instant::now();
        info.started.increment(1);
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr());
        let span = if info.traced {
            let span = tracing::info_span!(
                "grpc",
                otel.name = %info.full_name,
                otel.kind = "server",
            );
            // The parent must be set before the span is first entered.
            let parent = shared.propagator.extract(&HeaderExtractor(req.headers()));
            let _ = span.set_parent(parent);
            // Attributes only the trace needs are set on the OpenTelemetry
            // span directly, which keeps them off every text log line.
            span.set_attribute("rpc.system", "grpc");
            span.set_attribute("rpc.service", info.service);
            span.set_attribute("rpc.method", info.method);
            // Newer semantic conventions, alongside the established names.
            span.set_attribute("rpc.system.name", "grpc");
            if let Some(peer) = peer {
                span.set_attribute("network.peer.address", peer.ip().to_string());
                span.set_attribute("network.peer.port", i64::from(peer.port()));
            }
            span
        } else {
            Span::none()
        };
        let client_deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|d| start + d);
        Self {
            info,
            span,
            start,
            client_deadline,
            server_deadline: start + shared.options.default_timeout,
            responded: false,
            peer,
            finished: false,
        }
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        let info = &self.info;
        if let Some(counter) = info.handled.get(code as usize) {
            counter.increment(1);
        }
        info.handling.record(elapsed.as_secs_f64());

        let span = &self.span;
        span.set_attribute("rpc.grpc.status_code", code as i64);
        span.set_attribute("rpc.response.status_code", code_name_upper(code));
        if is_server_error(code) {
            span.set_status(opentelemetry::trace::Status::error(go_code_name(code)));
        }

        let _entered = span.enter();
        let time_ms = elapsed.as_secs_f64() * 1000.0;
        let peer = self.peer.map(field::display);
        macro_rules! finished {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    grpc.service = info.service,
                    grpc.method = info.method,
                    grpc.code = go_code_name(code),
                    grpc.time_ms = time_ms,
                    peer.address = peer,
                    "finished call"
                )
            };
        }
        match (info.traced, log_level(code)) {
            // Probes every few seconds would drown the log.
            (false, LogLevel::Info) => finished!(tracing::Level::DEBUG),
            (_, LogLevel::Info) => finished!(tracing::Level::INFO),
            (_, LogLevel::Warn) => finished!(tracing::Level::WARN),
            (_, LogLevel::Error) => finished!(tracing::Level::ERROR),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let now = Instant::now();
        let past_deadline = self.client_deadline.is_some_and(|d| now >= d)
            || (!self.responded && now >= self.server_deadline);
        self.finish(if past_deadline {
            Code::DeadlineExceeded
        } else {
            Code::Cancelled
        });
    }
}

/// The `rpc.response.status_code` spelling (`INVALID_ARGUMENT`).
fn code_name_upper(code: Code) -> &'static str {
    super::status::code_name(code)
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let raw = headers.get("grpc-status")?.to_str().ok()?;
    raw.trim().parse::<i32>().ok().map(Code::from_i32)
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

/// Counts complete gRPC messages in a byte stream: each is a 1-byte flag, a
/// 4-byte big-endian length and that many bytes, split across data chunks
/// any which way.
#[derive(Debug, Default)]
struct FrameCounter {
    header: [u8; 5],
    header_len: usize,
    remaining: usize,
}

impl FrameCounter {
    /// Consumes `data` and returns how many messages it completed.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut completed = 0;
        while !data.is_empty() {
            if self.header_len < self.header.len() {
                let take = (self.header.len() - self.header_len).min(data.len());
                self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
                self.header_len += take;
                data = &data[take..];
                if self.header_len == self.header.len() {
                    let [_, a, b, c, d] = self.header;
                    self.remaining = u32::from_be_bytes([a, b, c, d]) as usize;
                    if self.remaining == 0 {
                        completed += 1;
                        self.header_len = 0;
                    }
                }
            } else {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                data = &data[take..];
                if self.remaining == 0 {
                    completed += 1;
                    self.header_len = 0;
                }
            }
        }
        completed
    }
}

/// The request body, counting messages as the service reads them.
struct CountedRequest {
    inner: Body,
    frames: FrameCounter,
    counter: Counter,
}

impl HttpBody for CountedRequest {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = this.frames.feed(data);
                if n > 0 {
                    this.counter.increment(n);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body: counts messages sent, polls the handler's stream
/// inside the call's span (so store calls made while streaming are its
/// children) and finishes the call at the trailers.
pub struct ObservedBody {
    inner: Body,
    call: Option<Call>,
    frames: FrameCounter,
}

impl ObservedBody {
    fn plain(inner: Body) -> Self {
        Self {
            inner,
            call: None,
            frames: FrameCounter::default(),
        }
    }

    fn observed(inner: Body, call: Call) -> Self {
        Self {
            inner,
            call: Some(call),
            frames: FrameCounter::default(),
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = match &this.call {
            Some(call) => call
                .span
                .in_scope(|| Pin::new(&mut this.inner).poll_frame(cx)),
            None => Pin::new(&mut this.inner).poll_frame(cx),
        };
        let Some(call) = this.call.as_mut() else {
            return polled;
        };
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = this.frames.feed(data);
                    if n > 0 {
                        call.info.msg_sent.increment(n);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    call.finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                    this.call = None;
                }
            }
            Poll::Ready(Some(Err(status))) => {
                call.finish(status.code());
                this.call = None;
            }
            Poll::Ready(None) => {
                // gRPC always ends with trailers; a body without them did
                // not complete normally.
                call.finish(Code::Unknown);
                this.call = None;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, len as usize));
        out
    }

    #[test]
    fn counts_messages_across_chunk_boundaries() {
        let mut stream = Vec::new();
        for len in [3, 0, 10, 1] {
            stream.extend(frame(len));
        }
        // Whole, byte by byte, and in awkward pieces: always 4 messages.
        assert_eq!(FrameCounter::default().feed(&stream), 4);
        let mut counter = FrameCounter::default();
        let total: u64 = stream.iter().map(|b| counter.feed(&[*b])).sum();
        assert_eq!(total, 4);
        for split in 1..stream.len() {
            let mut counter = FrameCounter::default();
            let (a, b) = stream.split_at(split);
            assert_eq!(counter.feed(a) + counter.feed(b), 4, "split at {split}");
        }
        // A message is counted when it is complete, not when it starts.
        let mut counter = FrameCounter::default();
        assert_eq!(counter.feed(&frame(10)[..8]), 0);
        assert_eq!(counter.feed(&frame(10)[8..]), 1);
    }

    #[test]
    fn codes_are_spelled_like_grpc_go() {
        assert_eq!(go_code_name(Code::Ok), "OK");
        assert_eq!(go_code_name(Code::Cancelled), "Canceled");
        assert_eq!(go_code_name(Code::InvalidArgument), "InvalidArgument");
        assert_eq!(go_code_name(Code::DeadlineExceeded), "DeadlineExceeded");
        for (i, code) in ALL_CODES.iter().enumerate() {
            assert_eq!(*code as usize, i, "ALL_CODES is indexed by number");
        }
    }

    #[test]
    fn log_levels_follow_the_code() {
        assert_eq!(log_level(Code::Ok), LogLevel::Info);
        assert_eq!(log_level(Code::NotFound), LogLevel::Info);
        assert_eq!(log_level(Code::InvalidArgument), LogLevel::Info);
        assert_eq!(log_level(Code::AlreadyExists), LogLevel::Info);
        assert_eq!(log_level(Code::DeadlineExceeded), LogLevel::Warn);
        assert_eq!(log_level(Code::Unavailable), LogLevel::Warn);
        assert_eq!(log_level(Code::ResourceExhausted), LogLevel::Warn);
        assert_eq!(log_level(Code::Internal), LogLevel::Error);
        assert_eq!(log_level(Code::Unknown), LogLevel::Error);
        assert_eq!(log_level(Code::DataLoss), LogLevel::Error);
        assert!(is_server_error(Code::Internal));
        assert!(!is_server_error(Code::NotFound));
    }

    #[test]
    fn reads_status_and_timeout_headers() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some(Code::NotFound));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1.5S"), None);
    }

    #[test]
    fn extracts_the_w3c_parent() {
        use opentelemetry::trace::TraceContextExt;
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        headers.insert("tracestate", "vendor=value".parse().unwrap());
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        let span = cx.span();
        let sc = span.span_context();
        assert!(sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().get("vendor"), Some("value"));
    }

    /// The static table matches the streaming flags in our descriptors, so
    /// a new or changed RPC cannot be mislabelled silently.
    #[test]
    fn method_table_matches_the_descriptors() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = 0;
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                if full != crate::pb::SERVICE_NAME {
                    continue;
                }
                for m in &service.method {
                    let expected = match (m.client_streaming(), m.server_streaming()) {
                        (false, false) => GrpcType::Unary,
                        (true, false) => GrpcType::ClientStream,
                        (false, true) => GrpcType::ServerStream,
                        (true, true) => GrpcType::BidiStream,
                    };
                    let row = METHODS
                        .iter()
                        .find(|(s, name, _)| *s == full && *name == m.name())
                        .unwrap_or_else(|| panic!("{full}/{} missing from METHODS", m.name()));
                    assert_eq!(row.2, expected, "{}", m.name());
                    seen += 1;
                }
            }
        }
        let ours = METHODS
            .iter()
            .filter(|(s, _, _)| *s == crate::pb::SERVICE_NAME)
            .count();
        assert_eq!(seen, ours, "METHODS lists an RPC the proto does not have");
    }
}
