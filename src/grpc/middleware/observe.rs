//! The observation of one call: go-grpc-prometheus metrics, one SERVER
//! span and one `finished call` log line, recorded exactly once with the
//! code the client got.
//!
//! It sits outside every other per-call layer (deadline, auth), so it sees
//! their answers as it sees the handler's. The code comes from the
//! response headers (trailers-only answers) or the trailers; a call whose
//! response is dropped before either was abandoned by the client
//! (`Canceled`), since deadlines are answered by the deadline layer.

use std::{
    cell::OnceCell,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderMap, HeaderName, Request, Response};
use metrics::{Counter, Histogram};
use tonic::{body::Body, Code, Status};
use tower::{Layer, Service};
use tracing::Level;

use super::{
    body::{BodyObserver, End, Observed},
    methods::{Catalogue, Method, PathMap},
};
use crate::{
    grpc::codes::{self, LogLevel, CODES},
    telemetry::{json, metrics as names, trace::CallSpan},
};

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// What the observing layer needs from the settings.
#[derive(Debug, Clone, Copy)]
pub struct ObserveOptions {
    /// Trace `grpc.health.v1.Health` calls (otherwise they are counted but
    /// get no span, and their log line is at debug).
    pub trace_health_checks: bool,
    /// The largest request message accepted, in bytes: a larger one is
    /// refused with RESOURCE_EXHAUSTED from its length prefix alone.
    pub max_message_size: usize,
}

#[derive(Clone)]
pub struct ObserveLayer {
    shared: Arc<Shared>,
}

impl ObserveLayer {
    /// Resolves every method's metric handles once; the hot path then does
    /// no registry lookup. The recorder must be installed before this.
    pub fn new(options: ObserveOptions) -> Self {
        let methods = Catalogue::get()
            .iter()
            .map(|(path, method)| (path, Arc::new(MethodState::new(method, &options))))
            .collect();
        Self {
            shared: Arc::new(Shared { methods, options }),
        }
    }
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

struct Shared {
    /// By request path.
    methods: PathMap<Arc<MethodState>>,
    options: ObserveOptions,
}

/// One method's names and metric handles.
struct MethodState {
    method: &'static Method,
    traced: bool,
    /// The handler's work goes on while the response body is polled
    /// (server and bidi streams); a unary answer is a finished message.
    streams_responses: bool,
    started: Counter,
    msg_received: Counter,
    msg_sent: Counter,
    handling: Histogram,
    /// By code number.
    handled: Vec<Counter>,
}

impl MethodState {
    fn new(method: &'static Method, options: &ObserveOptions) -> Self {
        let kind = method.kind.as_str();
        let labels = [
            ("grpc_type", kind),
            ("grpc_service", method.service),
            ("grpc_method", method.method),
        ];
        let started = metrics::counter!(names::GRPC_STARTED, &labels);
        let msg_received = metrics::counter!(names::GRPC_MSG_RECEIVED, &labels);
        let msg_sent = metrics::counter!(names::GRPC_MSG_SENT, &labels);
        let handling = metrics::histogram!(names::GRPC_HANDLING_SECONDS, &labels);
        // Series exist from the start, so `rate()` and error ratios work
        // before the first call. `absolute(0)` would reset counters shared
        // with another server in this process; `increment(0)` keeps them.
        for counter in [&started, &msg_received, &msg_sent] {
            counter.increment(0);
        }
        let handled = CODES
            .iter()
            .map(|row| {
                let counter = metrics::counter!(
                    names::GRPC_HANDLED,
                    "grpc_type" => kind,
                    "grpc_service" => method.service,
                    "grpc_method" => method.method,
                    "grpc_code" => row.go_name,
                );
                counter.increment(0);
                counter
            })
            .collect();
        Self {
            method,
            traced: method.service != HEALTH_SERVICE || options.trace_health_checks,
            streams_responses: matches!(
                method.kind,
                super::GrpcType::ServerStream | super::GrpcType::BidiStream
            ),
            started,
            msg_received,
            msg_sent,
            handling,
            handled,
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
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(state) = self.shared.methods.get(req.uri().path()) else {
            // Not a method we serve: tonic answers UNIMPLEMENTED. Like
            // grpc-go's interceptors we do not record it, which also keeps
            // arbitrary paths from creating series.
            return ObserveFuture {
                inner: self.inner.call(req),
                call: None,
            };
        };
        let call = Call::start(Arc::clone(state), &req);
        let (parts, body) = req.into_parts();
        let body = Body::new(Observed::new(
            body,
            Received {
                counter: state.msg_received.clone(),
                max: self.shared.options.max_message_size,
            },
        ));
        ObserveFuture {
            inner: self.inner.call(Request::from_parts(parts, body)),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner future, polled inside the call's trace context.
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<ResponseBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let polled = match this.call {
            Some(call) => call.in_scope(|| this.inner.poll(cx)),
            None => this.inner.poll(cx),
        };
        let result = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        let mut call = this.call.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let (Some(code), Some(c)) = (grpc_status(response.headers()), call.as_mut()) {
                    // A trailers-only answer: the call is over.
                    c.finish(code);
                    call = None;
                }
                Ok(response.map(|body| Observed::new(body, Sent { call })))
            }
            Err(err) => {
                if let Some(c) = call.as_mut() {
                    c.finish(Code::Unknown);
                }
                Err(err)
            }
        })
    }
}

/// The response body of every call.
pub type ResponseBody = Observed<Sent>;

/// Request side: counts messages, refuses oversized ones.
struct Received {
    counter: Counter,
    max: usize,
}

impl BodyObserver for Received {
    fn message_started(&mut self, len: usize) -> Result<(), Status> {
        if len > self.max {
            // The gRPC spec's code for a message larger than the receiver
            // accepts; refused before a byte of it is buffered.
            return Err(Status::resource_exhausted(format!(
                "request message of {len} bytes is larger than the limit of {} bytes",
                self.max
            )));
        }
        Ok(())
    }

    fn messages_completed(&mut self, n: u64) {
        self.counter.increment(n);
    }
}

/// Response side: counts messages, finishes the call at the trailers.
pub struct Sent {
    call: Option<Call>,
}

impl BodyObserver for Sent {
    fn messages_completed(&mut self, n: u64) {
        if let Some(call) = &self.call {
            call.state.msg_sent.increment(n);
        }
    }

    fn ended(&mut self, end: End<'_>) {
        if let Some(mut call) = self.call.take() {
            call.finish(match end {
                End::Trailers(trailers) => grpc_status(trailers).unwrap_or(Code::Unknown),
                End::Error(status) => status.code(),
                End::Eos => Code::Unknown,
            });
        }
    }

    fn poll_in_scope<T>(&mut self, poll: impl FnOnce() -> T) -> T {
        // Streams do their work (store calls) while the body is polled, so
        // it runs in the call's context; encoding a unary answer needs none.
        match &self.call {
            Some(call) if call.state.streams_responses => call.in_scope(poll),
            _ => poll(),
        }
    }
}

/// One call in flight. Finishing records everything exactly once; a call
/// dropped unfinished was abandoned by its client.
struct Call {
    state: Arc<MethodState>,
    span: CallSpan,
    start: Instant,
    peer: Option<SocketAddr>,
    finished: bool,
}

/// Would a `finished call` line at this level be written? What
/// `tracing::enabled!` answers, minus its cost: that macro asks the
/// subscriber on every call even when its callsite's cached interest
/// already says `always`, and with per-layer filters the subscriber then
/// walks the log directives (~700 instructions per call). Here, as in
/// `tracing::event!`, a cached `always` or `never` is the answer; only
/// `sometimes` (span-based directives such as `[span]=debug`) asks.
macro_rules! line_wanted {
    ($level:expr) => {{
        use tracing::{
            callsite::{DefaultCallsite, Identifier},
            field::FieldSet,
            metadata::Kind,
            Metadata,
        };
        static CALLSITE: DefaultCallsite = DefaultCallsite::new(&META);
        static META: Metadata<'static> = Metadata::new(
            "finished call (is it wanted?)",
            module_path!(),
            $level,
            Some(file!()),
            Some(line!()),
            Some(module_path!()),
            FieldSet::new(&[], Identifier(&CALLSITE)),
            Kind::HINT,
        );
        tracing::level_enabled!($level) && {
            let interest = CALLSITE.interest();
            interest.is_always()
                || (!interest.is_never()
                    && tracing::dispatcher::get_default(|current| current.enabled(&META)))
        }
    }};
}

impl Call {
    fn start(state: Arc<MethodState>, req: &Request<Body>) -> Self {
        let start = Instant::now();
        state.started.increment(1);
        let peer = req
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(|i| i.remote_addr());
        let method = state.method;
        let span = if state.traced {
            CallSpan::start(method.full_name, req.headers())
        } else {
            CallSpan::none()
        };
        Self {
            state,
            span,
            start,
            peer,
            finished: false,
        }
    }

    /// Runs `f` with the call's trace context current, so log lines and
    /// child spans made inside belong to the call.
    fn in_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        if !self.state.traced {
            return f();
        }
        let _guard = self.span.context().clone().attach();
        f()
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        let state = &self.state;
        if let Some(counter) = state.handled.get(code as usize) {
            counter.increment(1);
        }
        state.handling.record(elapsed.as_secs_f64());

        let row = codes::info(code);
        let method = state.method;
        // Written once, for the span and the log line, and only if one of
        // them is: at `log.level=warn`, an unsampled call needs neither.
        let peer = OnceCell::new();
        let peer = || peer.get_or_init(|| self.peer.map(PeerText::new)).as_ref();
        self.span.end(
            |span| {
                span.str("rpc.system", "grpc");
                span.str("rpc.service", method.service);
                span.str("rpc.method", method.method);
                // Newer semantic conventions, beside the established names.
                span.str("rpc.system.name", "grpc");
                if let Some(peer) = peer() {
                    span.str("network.peer.address", peer.ip());
                    span.int("network.peer.port", i64::from(peer.port));
                }
                span.int("rpc.grpc.status_code", code as i64);
                span.str("rpc.response.status_code", row.name);
            },
            row.server_error.then_some(row.go_name),
        );
        self.log(
            row.go_name,
            row.log_level,
            elapsed.as_secs_f64() * 1000.0,
            || peer().map(PeerText::as_str),
        );
    }

    fn log<'p>(
        &self,
        code: &'static str,
        level: LogLevel,
        time_ms: f64,
        peer: impl Fn() -> Option<&'p str>,
    ) {
        let method = self.state.method;
        // The level must be a constant per callsite; asked first, so a
        // line nobody wants costs no context switch.
        macro_rules! finished {
            ($level:expr) => {
                if line_wanted!($level) {
                    self.in_scope(|| {
                        // `message` as a field of its own, a `&str`: as
                        // the macro's trailing format string it would be
                        // `fmt::Arguments`, formatted afresh every line.
                        tracing::event!(
                            $level,
                            message = "finished call",
                            grpc.service = method.service,
                            grpc.method = method.method,
                            grpc.code = code,
                            grpc.time_ms = time_ms,
                            peer.address = peer(),
                        )
                    })
                }
            };
        }
        match (self.state.traced, level) {
            // Probes every few seconds would drown the log.
            (false, LogLevel::Info) => finished!(Level::DEBUG),
            (_, LogLevel::Info) => finished!(Level::INFO),
            (_, LogLevel::Warn) => finished!(Level::WARN),
            (_, LogLevel::Error) => finished!(Level::ERROR),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Code::Cancelled);
        }
    }
}

/// The client's address as `SocketAddr`'s `Display` writes it, formatted
/// by hand on the stack: through the formatting machinery, an IPv4
/// address and port were a tenth of the `finished call` line's cost.
struct PeerText {
    text: [u8; 64],
    len: usize,
    /// The IP in `text` (an IPv6 address is in brackets, its scope after it).
    ip: std::ops::Range<usize>,
    port: u16,
}

impl PeerText {
    fn new(addr: SocketAddr) -> Self {
        let mut out = Self {
            text: [0; 64],
            len: 0,
            ip: 0..0,
            port: addr.port(),
        };
        match addr {
            SocketAddr::V4(v4) => {
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b".");
                    }
                    out.decimal(u16::from(octet));
                }
                out.ip = 0..out.len;
            }
            SocketAddr::V6(v6) => {
                // Rare enough for the formatting machinery: "[ip%scope]".
                use std::fmt::Write as _;
                let _ = write!(out, "[{}", v6.ip());
                out.ip = 1..out.len;
                if v6.scope_id() != 0 {
                    let _ = write!(out, "%{}", v6.scope_id());
                }
                out.push(b"]");
            }
        }
        out.push(b":");
        out.decimal(addr.port());
        out
    }

    fn push(&mut self, bytes: &[u8]) {
        // 64 bytes hold the longest address ("[" + 45 + "%" + 10 + "]:" +
        // 5 is 64); anything longer would be cut, never overflow.
        let end = (self.len + bytes.len()).min(self.text.len());
        self.text[self.len..end].copy_from_slice(&bytes[..end - self.len]);
        self.len = end;
    }

    fn decimal(&mut self, value: u16) {
        self.push(json::decimal_digits(value.into(), &mut [0; 20]));
    }

    fn as_str(&self) -> &str {
        // Only `Display` output and ASCII digits were written, cut at a
        // byte limit no address reaches.
        std::str::from_utf8(&self.text[..self.len]).unwrap_or_default()
    }

    fn ip(&self) -> &str {
        self.as_str().get(self.ip.clone()).unwrap_or_default()
    }
}

impl std::fmt::Write for PeerText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Looked up by a prebuilt name: a `&str` key is parsed and validated as a
/// header name on every lookup (a few hundred instructions each).
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let raw = headers.get(GRPC_STATUS)?.to_str().ok()?;
    raw.trim().parse::<i32>().ok().map(Code::from_i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_read_as_their_display_writes_them() {
        for addr in [
            "10.0.0.7:51234",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::1]:8080",
            "[2001:db8::1%7]:443",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
        ] {
            let parsed: SocketAddr = addr.parse().unwrap();
            let text = PeerText::new(parsed);
            assert_eq!(text.as_str(), parsed.to_string());
            assert_eq!(text.as_str(), addr);
            // The span's `network.peer.address`, as `IpAddr` writes it.
            assert_eq!(text.ip(), parsed.ip().to_string());
            assert_eq!(text.port, parsed.port());
        }
    }

    #[test]
    fn reads_the_status_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", "5".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some(Code::NotFound));
    }
}
