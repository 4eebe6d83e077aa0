//! The span pipeline's own health: how many spans were handed to the batch
//! queue, how many the collector accepted, how many it refused or never
//! answered for. Read at scrape time, like the log writer's drops.
//!
//! The SDK's batch queue is bounded (`OTEL_BSP_MAX_QUEUE_SIZE`) and drops
//! spans when full (a core too busy to export, a slow collector), but it
//! only logs that once and keeps the count to itself. So the span counts
//! its way in and out: `ended - exported - failed` is what the queue
//! dropped, give or take the spans still queued (at most the queue size).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor},
    Resource,
};

/// At most one "cannot export spans" warning per this interval.
const EXPORT_WARNING_INTERVAL: Duration = Duration::from_secs(60);

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

/// The batch processor (configured from `OTEL_BSP_*` by the SDK) around
/// `exporter`, both counted.
pub fn counted_batch(exporter: impl SpanExporter + 'static) -> impl SpanProcessor + 'static {
    CountEnded(BatchSpanProcessor::builder(Watched::new(exporter)).build())
}

/// Counts every span offered to the processor it wraps (one atomic add).
#[derive(Debug)]
struct CountEnded<P>(P);

impl<P: SpanProcessor> SpanProcessor for CountEnded<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        ENDED.fetch_add(1, Ordering::Relaxed);
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.0.set_resource(resource);
    }
}

/// Counts each batch's spans as exported or failed, and says, at most once
/// a minute, that spans are being lost: an unreachable collector costs the
/// bounded queue's memory and this one warning.
#[derive(Debug)]
struct Watched<E> {
    inner: E,
    /// Unix seconds of the last warning.
    last_warning: AtomicU64,
}

impl<E> Watched<E> {
    fn new(inner: E) -> Self {
        Self {
            inner,
            last_warning: AtomicU64::new(0),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        let counter = if result.is_ok() { &EXPORTED } else { &FAILED };
        counter.fetch_add(spans as u64, Ordering::Relaxed);
        if let Err(err) = &result {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = self.last_warning.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= EXPORT_WARNING_INTERVAL.as_secs()
                && self
                    .last_warning
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(error = %err, spans, "cannot export spans to the OTLP collector; dropping them (next warning in a minute at the earliest)");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
