//! Getting finished spans to the OTLP collector: a bounded batch queue of
//! already-encoded spans and one task that sends them over OTLP/gRPC (up
//! to four exports in flight).
//!
//! This replaces the SDK's batch processor and the OTLP exporter crate on
//! the hot path. Those move every `SpanData` (several hundred bytes) through
//! a channel, copy it again into a batch, convert it into the generated
//! message types (an allocation per id, name, key and value) and only then
//! encode it: at one or two spans per call that cost more than the call.
//! Here a span is encoded once, when it ends, into a small per-thread
//! buffer ([`super::otlp`]), then appended to the open batch under a short
//! lock.
//!
//! The behaviour operators configure stays the SDK's, read from the same
//! variables: `OTEL_BSP_MAX_QUEUE_SIZE` (2048 spans; past it new spans are
//! dropped), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512; a full batch is sent at
//! once), `OTEL_BSP_SCHEDULE_DELAY` (5000 ms; a partial batch is sent this
//! often), and `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` (10000 ms per export)
//! and `_HEADERS` (`key=value,...`, e.g. a collector's API key).
//!
//! The pipeline counts its way in and out, read at scrape time:
//! `ended - exported - failed` is what the queue dropped, give or take the
//! spans still queued (at most the queue size).

use std::{
    cell::RefCell,
    collections::VecDeque,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::uri::PathAndQuery;
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{Span, SpanData, SpanProcessor},
    Resource,
};
use tokio::sync::Notify;
use tonic::{
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, ClientTlsConfig, Endpoint},
};

use super::otlp;

/// At most one "cannot export spans" warning per this interval.
const EXPORT_WARNING_INTERVAL: Duration = Duration::from_secs(60);
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

static ENDED: AtomicU64 = AtomicU64::new(0);
static EXPORTED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// Spans through the pipeline since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanCounts {
    /// Ended and offered to the batch queue.
    pub ended: u64,
    /// In batches the collector accepted.
    pub exported: u64,
    /// In batches that failed (collector down, refused, timed out).
    pub failed: u64,
}

pub fn span_counts() -> SpanCounts {
    SpanCounts {
        ended: ENDED.load(Ordering::Relaxed),
        exported: EXPORTED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

/// The queue's and the exporter's settings, from the `OTEL_*` environment.
#[derive(Debug, Clone)]
struct ExportConfig {
    max_queue: usize,
    max_batch: usize,
    delay: Duration,
    timeout: Duration,
    headers: MetadataMap,
}

impl ExportConfig {
    fn from_env() -> Result<Self, String> {
        let max_queue = env_number("OTEL_BSP_MAX_QUEUE_SIZE", 2048).max(1);
        // The SDK's rule: a batch is never larger than the queue.
        let max_batch = env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512).clamp(1, max_queue);
        let delay =
            Duration::from_millis(env_number("OTEL_BSP_SCHEDULE_DELAY", 5000).max(1) as u64);
        let timeout = Duration::from_millis(
            env_first(&[
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
                "OTEL_EXPORTER_OTLP_TIMEOUT",
            ])
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000),
        );
        let headers = match env_first(&[
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ]) {
            Some(raw) => parse_headers(&raw)?,
            None => MetadataMap::new(),
        };
        Ok(Self {
            max_queue,
            max_batch,
            delay,
            timeout,
            headers,
        })
    }
}

/// The first of `names` set to something other than blanks, trimmed.
pub(super) fn env_first(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    })
}

fn env_number(name: &str, default: usize) -> usize {
    env_first(&[name])
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs, comma separated, values
/// percent-encoded (W3C baggage style). The error names the key only: a
/// value is usually a credential.
fn parse_headers(raw: &str) -> Result<MetadataMap, String> {
    let mut headers = MetadataMap::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(
                "OTEL_EXPORTER_OTLP_HEADERS: an entry without '=' (expected key=value,...)".into(),
            );
        };
        let key = key.trim().to_ascii_lowercase();
        let name = MetadataKey::from_str(&key)
            .map_err(|_| format!("OTEL_EXPORTER_OTLP_HEADERS: {key:?} is not a header name"))?;
        let value = percent_decode(value.trim())
            .and_then(|v| MetadataValue::try_from(v.as_str()).ok())
            .ok_or_else(|| {
                format!(
                    "OTEL_EXPORTER_OTLP_HEADERS: the value of {key:?} is not a valid header value"
                )
            })?;
        headers.insert(name, value);
    }
    Ok(headers)
}

fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The span pipeline to `endpoint`: the processor to give the tracer
/// provider, the sink the hot path's own spans go to (the same queue), and
/// the task that sends its batches (spawned on the current runtime; the
/// channel connects lazily, so an absent collector costs nothing here).
pub fn pipeline(endpoint: &str) -> Result<(QueueProcessor, SpanSink, ExportTask), String> {
    let config = ExportConfig::from_env()?;
    // The OTLP convention: an endpoint without a scheme is https.
    let endpoint = if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("https://{endpoint}")
    };
    let mut endpoint = Endpoint::from_shared(endpoint)
        // Not the endpoint itself: it may carry credentials.
        .map_err(|err| format!("the OTLP endpoint is not a valid URI: {err}"))?
        .connect_timeout(config.timeout);
    if endpoint.uri().scheme_str() == Some("https") {
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().with_webpki_roots())
            .map_err(|err| format!("OTLP endpoint TLS: {err}"))?;
    }
    let channel = endpoint.connect_lazy();
    let queue = Arc::new(Queue {
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        queued_hint: AtomicUsize::new(0),
        max_queue: config.max_queue,
        max_batch: config.max_batch,
    });
    let exporter = Exporter {
        queue: Arc::clone(&queue),
        grpc: tonic::client::Grpc::new(channel),
        config,
        last_warning: 0,
    };
    let task = ExportTask {
        queue: Arc::clone(&queue),
        handle: tokio::spawn(exporter.run()),
    };
    let sink = SpanSink { queue };
    Ok((QueueProcessor { sink: sink.clone() }, sink, task))
}

/// The spans waiting to be sent.
struct Queue {
    state: Mutex<State>,
    /// A batch is full, a flush was asked for, or the queue closed.
    wake: Notify,
    /// `State::queued` as last set under the lock, `usize::MAX` once
    /// closed: read without the lock, so a span the queue would refuse is
    /// not encoded first (under overload, when the core is scarcest).
    queued_hint: AtomicUsize,
    max_queue: usize,
    max_batch: usize,
}

#[derive(Default)]
struct State {
    /// The provider's resource, encoded (set once, at build).
    resource: Arc<Vec<u8>>,
    open: Batch,
    full: VecDeque<Batch>,
    /// Spans in `open` and `full`.
    queued: usize,
    flush: bool,
    closed: bool,
}

/// Encoded spans, grouped by instrumentation scope (one, in this crate).
#[derive(Default)]
struct Batch {
    scopes: Vec<ScopeBatch>,
    spans: usize,
}

struct ScopeBatch {
    scope: InstrumentationScope,
    encoded_scope: Vec<u8>,
    spans: Vec<u8>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole spans behind (each is
        // appended in one call), so the data is still good.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a span pushed now would probably be kept (exactly, unless
    /// another thread pushes or takes meanwhile).
    fn has_room(&self) -> bool {
        self.queued_hint.load(Ordering::Relaxed) < self.max_queue
    }

    /// Adds one encoded span, unless the queue is full or closed.
    fn push(&self, scope: &InstrumentationScope, span: &[u8]) {
        let mut state = self.lock();
        if state.closed || state.queued >= self.max_queue {
            return;
        }
        let open = &mut state.open;
        let group = match open.scopes.iter().position(|g| g.scope == *scope) {
            Some(i) => &mut open.scopes[i],
            None => {
                open.scopes.push(ScopeBatch {
                    scope: scope.clone(),
                    encoded_scope: otlp::encode_scope(scope),
                    spans: Vec::with_capacity(span.len() * self.max_batch.min(512)),
                });
                let last = open.scopes.len() - 1;
                &mut open.scopes[last]
            }
        };
        group.spans.extend_from_slice(span);
        open.spans += 1;
        state.queued += 1;
        self.queued_hint.store(state.queued, Ordering::Relaxed);
        if state.open.spans >= self.max_batch {
            let full = std::mem::take(&mut state.open);
            state.full.push_back(full);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// The next batch to send, with the resource it is sent under: a full
    /// one, else (on the timer, a flush or at close) the open one if it has
    /// spans. The request is built by the caller, outside the lock.
    fn take(&self, timer: bool) -> Option<(Arc<Vec<u8>>, Batch)> {
        let mut state = self.lock();
        let batch = match state.full.pop_front() {
            Some(batch) => batch,
            None if (timer || state.flush || state.closed) && state.open.spans > 0 => {
                std::mem::take(&mut state.open)
            }
            None => {
                state.flush = false;
                return None;
            }
        };
        state.queued -= batch.spans;
        if !state.closed {
            self.queued_hint.store(state.queued, Ordering::Relaxed);
        }
        Some((Arc::clone(&state.resource), batch))
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Refuses new spans from now on and wakes the export task to send the
    /// rest.
    fn close(&self) {
        self.lock().closed = true;
        self.queued_hint.store(usize::MAX, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// Where finished, sampled spans are queued for export: the SDK's (through
/// [`QueueProcessor`]) and the hot path's own ([`super::trace`]).
#[derive(Clone)]
pub struct SpanSink {
    queue: Arc<Queue>,
}

impl SpanSink {
    /// Queues one span of `scope` that `encode` writes with
    /// [`otlp::append_span`] or [`otlp::append_recorded`]; a full queue
    /// drops it (the counters show it: ended, never exported).
    pub fn send(&self, scope: &InstrumentationScope, encode: impl FnOnce(&mut Vec<u8>)) {
        ENDED.fetch_add(1, Ordering::Relaxed);
        if !self.queue.has_room() {
            return;
        }
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            encode(scratch);
            self.queue.push(scope, scratch);
        });
    }
}

/// The [`SpanProcessor`] the tracer provider hands finished spans to.
pub struct QueueProcessor {
    sink: SpanSink,
}

impl std::fmt::Debug for QueueProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueProcessor").finish_non_exhaustive()
    }
}

thread_local! {
    /// Where a span is encoded before it is appended under the lock.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        // Recorded but not sampled (a custom sampler's RECORD_ONLY): not
        // for export.
        if !span.span_context.is_sampled() {
            return;
        }
        self.sink.send(&span.instrumentation_scope, |out| {
            otlp::append_span(&span, out)
        });
    }

    /// Asks the export task to send what is queued, without waiting (it
    /// runs on the runtime this may be called from).
    fn force_flush(&self) -> OTelSdkResult {
        let queue = &self.sink.queue;
        queue.lock().flush = true;
        queue.wake.notify_one();
        Ok(())
    }

    /// Stops accepting spans; [`ExportTask::finish`] sends the rest.
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.sink.queue.close();
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.sink.queue.lock().resource = Arc::new(otlp::encode_resource(resource));
    }
}

/// The running export task.
pub struct ExportTask {
    queue: Arc<Queue>,
    handle: tokio::task::JoinHandle<()>,
}

impl ExportTask {
    /// Closes the queue, sends what is in it and stops, within `budget`
    /// (what is left after it is dropped, and the warning says so).
    pub async fn finish(self, budget: Duration) {
        self.queue.close();
        let abort = self.handle.abort_handle();
        match tokio::time::timeout(budget, self.handle).await {
            Ok(Ok(())) => {}
            Ok(Err(join)) => tracing::warn!(error = %join, "trace export task"),
            Err(_) => {
                abort.abort();
                tracing::warn!(?budget, "trace exporter did not flush in time");
            }
        }
    }
}

/// Exports in flight at once. One at a time, the round trip bounds the
/// throughput: a collector that takes 20 ms to answer (or a busy core that
/// takes that long to get to its answer) would cap export at 512 spans per
/// 20 ms while the queue overflowed. Four keep up with several times that,
/// for at most four batches' memory.
const MAX_IN_FLIGHT: usize = 4;

struct Exporter {
    queue: Arc<Queue>,
    grpc: tonic::client::Grpc<Channel>,
    config: ExportConfig,
    /// Unix seconds of the last warning.
    last_warning: u64,
}

impl Exporter {
    async fn run(mut self) {
        let mut timer = tokio::time::interval(self.config.delay);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await;
        let mut in_flight = tokio::task::JoinSet::new();
        // The open (partial) batch is due: the timer fired since it was
        // last sent.
        let mut due = false;
        loop {
            while in_flight.len() < MAX_IN_FLIGHT {
                let Some((resource, batch)) = self.queue.take(due) else {
                    due = false;
                    break;
                };
                let request = otlp::export_request(
                    &resource,
                    batch
                        .scopes
                        .iter()
                        .map(|g| (&g.encoded_scope[..], &g.spans[..])),
                );
                in_flight.spawn(send(
                    self.grpc.clone(),
                    request,
                    self.config.headers.clone(),
                    self.config.timeout,
                    batch.spans,
                ));
            }
            if in_flight.is_empty() && self.queue.is_closed() {
                // Everything taken was sent; anything pushed after the
                // last take was refused (closed).
                return;
            }
            tokio::select! {
                _ = timer.tick() => due = true,
                () = self.queue.wake.notified() => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    // A send task cannot panic; if one did, its spans count
                    // as neither exported nor failed (lost).
                    if let Ok((spans, result)) = done {
                        self.record(spans, result);
                    }
                }
            }
        }
    }

    fn record(&mut self, spans: usize, result: Result<(), tonic::Status>) {
        let counter = if result.is_ok() { &EXPORTED } else { &FAILED };
        counter.fetch_add(spans as u64, Ordering::Relaxed);
        if let Err(status) = result {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if now.saturating_sub(self.last_warning) >= EXPORT_WARNING_INTERVAL.as_secs() {
                self.last_warning = now;
                // The status only: its message never carries our headers.
                tracing::warn!(code = ?status.code(), error = status.message(), spans, "cannot export spans to the OTLP collector; dropping them (next warning in a minute at the earliest)");
            }
        }
    }
}

/// One `Export` call of `spans` spans, bounded by `timeout` (connecting
/// included).
async fn send(
    mut grpc: tonic::client::Grpc<Channel>,
    request: Vec<u8>,
    headers: MetadataMap,
    timeout: Duration,
    spans: usize,
) -> (usize, Result<(), tonic::Status>) {
    let mut call = tonic::Request::new(Encoded(request));
    *call.metadata_mut() = headers;
    call.set_timeout(timeout);
    let result = tokio::time::timeout(timeout, async {
        grpc.ready()
            .await
            .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
        grpc.unary(
            call,
            PathAndQuery::from_static(EXPORT_PATH),
            tonic_prost::ProstCodec::<Encoded, ()>::default(),
        )
        .await
    })
    .await
    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("export timed out")));
    (spans, result.map(|_| ()))
}

/// An already-encoded request, handed to tonic as a message.
#[derive(Debug, Default, Clone)]
struct Encoded(Vec<u8>);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_or_closed_queue_refuses_spans_before_they_are_encoded() {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            queued_hint: AtomicUsize::new(0),
            max_queue: 2,
            max_batch: 2,
        });
        let sink = SpanSink {
            queue: Arc::clone(&queue),
        };
        let scope = InstrumentationScope::builder("test").build();
        let encoded = std::cell::Cell::new(0);
        let send = || {
            sink.send(&scope, |out| {
                encoded.set(encoded.get() + 1);
                out.push(0);
            })
        };
        send();
        send();
        send();
        assert_eq!(
            (encoded.get(), queue.lock().queued),
            (2, 2),
            "the third: full"
        );
        // A batch taken makes room again.
        assert!(queue.take(false).is_some());
        send();
        assert_eq!((encoded.get(), queue.lock().queued), (3, 1));
        queue.close();
        send();
        assert_eq!(encoded.get(), 3, "closed");
    }

    #[test]
    fn headers_are_parsed_and_percent_decoded_and_errors_name_no_value() {
        let headers = parse_headers("api-key=s%3Dcret, X-Tenant = blue ").unwrap();
        assert_eq!(headers.get("api-key").unwrap(), "s=cret");
        assert_eq!(headers.get("x-tenant").unwrap(), "blue");
        let err = parse_headers("api-key").unwrap_err();
        assert!(err.contains("without '='"), "{err}");
        let err = parse_headers("api-key=s%ZZcret").unwrap_err();
        assert!(err.contains("api-key") && !err.contains("cret"), "{err}");
    }
}
