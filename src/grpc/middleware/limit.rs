//! Load shedding: at most `grpc.max_concurrent_requests` calls of
//! `user.v1.UserService` are being handled at once; one more is answered
//! RESOURCE_EXHAUSTED at once (trailers only), before the deadline and
//! auth layers or any handler spend a cycle on it.
//!
//! Why shed instead of queueing (tower's `ConcurrencyLimit` waits for a
//! permit): a queue in front of a saturated server only adds latency until
//! clients time out, and every queued request holds its headers and
//! buffers in memory. An immediate, retryable refusal lets the client back
//! off or try another replica while the calls already admitted finish on
//! time. (tower's `LoadShed` would answer with an error that tonic turns
//! into a bare `UNKNOWN`, not a status of ours, hence this small layer.)
//!
//! What holds a permit, and for how long:
//! - only our own service: `grpc.health.v1` and reflection are never shed
//!   (a probe that fails under load would restart a busy pod, making the
//!   overload worse) and never counted;
//! - from the start of the call until its response headers, i.e. while
//!   the handler works on its answer. For unary and client-streaming calls
//!   (`BulkCreateUsers`) that is the whole call. For server and bidi
//!   streams it is their setup: long-lived streams (`WatchUsers` can stay
//!   open for hours) would otherwise occupy the permits unary calls need.
//!   Their streaming phase is bounded instead by HTTP/2 flow control,
//!   `grpc.max_concurrent_streams` per connection and their deadline.
//!
//! The in-flight count is exported as a gauge even when there is no limit
//! (0), so the chart's limit can be chosen from what production shows.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use http::{Request, Response};
use metrics::{Counter, Gauge};
use tonic::{body::Body, Status};
use tower::{Layer, Service};

use super::methods::{Catalogue, PathMap};
use crate::telemetry::metrics as names;

#[derive(Clone)]
pub struct LimitLayer {
    shared: Arc<Shared>,
}

impl LimitLayer {
    /// `max` calls at once; 0 means no limit (calls are still counted).
    /// Metric handles are taken here, so the recorder must be installed.
    pub fn new(max: usize) -> Self {
        let limited = Catalogue::get()
            .iter()
            .filter(|(_, m)| m.service == crate::pb::SERVICE_NAME)
            .map(|(path, m)| {
                let shed = metrics::counter!(
                    names::GRPC_SHED,
                    "grpc_service" => m.service,
                    "grpc_method" => m.method,
                );
                // Exists from the start, so `rate()` works before the first shed.
                shed.increment(0);
                (path, shed)
            })
            .collect();
        let in_flight = metrics::gauge!(names::GRPC_IN_FLIGHT);
        in_flight.set(0.0);
        // f64 is exact for any limit anyone would configure.
        metrics::gauge!(names::GRPC_MAX_CONCURRENT).set(max as f64);
        Self {
            shared: Arc::new(Shared {
                max,
                count: AtomicUsize::new(0),
                in_flight,
                limited,
            }),
        }
    }
}

impl<S> Layer<S> for LimitLayer {
    type Service = Limit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Limit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared {
    /// 0: no limit.
    max: usize,
    /// Calls holding a permit now.
    count: AtomicUsize,
    in_flight: Gauge,
    /// The methods subject to the limit (by request path), with their
    /// shed counters.
    limited: PathMap<Counter>,
}

impl Shared {
    /// A permit, or `None` when `max` calls already hold one. A
    /// compare-and-swap loop rather than a semaphore: nothing ever waits
    /// for a permit, so all that is needed is an exact count.
    fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let admitted = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (self.max == 0 || n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            return None;
        }
        self.in_flight.increment(1.0);
        Some(Permit {
            shared: Arc::clone(self),
        })
    }
}

/// Released when the call's answer is ready or the call is dropped
/// (client gone, deadline), whichever comes first.
struct Permit {
    shared: Arc<Shared>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.count.fetch_sub(1, Ordering::AcqRel);
        self.shared.in_flight.decrement(1.0);
    }
}

#[derive(Clone)]
pub struct Limit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Body>> for Limit<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let Some(shed) = self.shared.limited.get(req.uri().path()) else {
            // Health, reflection, unknown paths: never limited.
            return LimitFuture::Admitted {
                inner: self.inner.call(req),
                permit: None,
            };
        };
        match self.shared.try_acquire() {
            Some(permit) => LimitFuture::Admitted {
                inner: self.inner.call(req),
                permit: Some(permit),
            },
            None => {
                shed.increment(1);
                // The request is dropped here, body unread: a refusal costs
                // no decoding and keeps nothing in memory.
                LimitFuture::Shed {
                    max: self.shared.max,
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's answer (the permit is released with it), or the
    /// refusal.
    #[project = LimitProj]
    pub enum LimitFuture<F> {
        Admitted {
            #[pin]
            inner: F,
            permit: Option<Permit>,
        },
        Shed { max: usize },
    }
}

impl<F, E> Future for LimitFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitProj::Admitted { inner, permit } => {
                let out = std::task::ready!(inner.poll(cx));
                // The answer (or the stream's headers) exists: the handler's
                // work is done, see the module docs.
                permit.take();
                Poll::Ready(out)
            }
            LimitProj::Shed { max } => Poll::Ready(Ok(Status::resource_exhausted(format!(
                "server overloaded: {max} calls already in progress (grpc.max_concurrent_requests); retry with backoff"
            ))
            .into_http())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn call(path: &str) -> Request<Body> {
        Request::post(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn sheds_over_the_limit_and_never_health() {
        let (release, gate) = tokio::sync::watch::channel(false);
        let slow = tower::service_fn(move |_req: Request<Body>| {
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
            }
        });
        let mut svc = LimitLayer::new(1).layer(slow);
        let get = "/user.v1.UserService/GetUser";
        let first = tokio::spawn(svc.call(call(get)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let shed = svc.call(call(get)).await.unwrap();
        assert_eq!(shed.headers()["grpc-status"], "8");
        // Health passes even at the limit (and waits for the gate like any call).
        let health = tokio::spawn(svc.call(call("/grpc.health.v1.Health/Check")));
        release.send_replace(true);
        assert!(health
            .await
            .unwrap()
            .unwrap()
            .headers()
            .get("grpc-status")
            .is_none());
        first.await.unwrap().unwrap();
        // The permit came back.
        let again = svc.call(call(get)).await.unwrap();
        assert!(again.headers().get("grpc-status").is_none());
    }

    #[tokio::test]
    async fn zero_means_no_limit() {
        let ok = tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        });
        let svc = LimitLayer::new(0).layer(ok);
        let calls: Vec<_> = (0..100)
            .map(|_| svc.clone().call(call("/user.v1.UserService/GetUser")))
            .collect();
        for c in calls {
            assert!(c.await.unwrap().headers().get("grpc-status").is_none());
        }
    }
}
