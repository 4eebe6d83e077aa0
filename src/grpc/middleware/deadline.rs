//! The call's deadline, owned here: `grpc-timeout` is parsed once, capped
//! by `grpc.default_timeout`, enforced, and handed to the handlers in the
//! request extensions ([`CallDeadline`]) so streams end on time too.
//!
//! A call that runs out of time is answered DEADLINE_EXCEEDED by this
//! layer, whether the limit was the client's or the server's own. (tonic's
//! `Server::timeout` would answer CANCELLED "Timeout expired", and the
//! observing layer outside could only guess what happened.)
//!
//! tonic still parses `grpc-timeout` in its own outer layer and drops the
//! call at the client's deadline; it starts its clock after this layer's
//! and polls the call before its timer, so this layer's answer wins.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderName, Request, Response};
use tokio::time::{Instant, Sleep};
use tonic::{body::Body, Status};
use tower::{Layer, Service};

/// The deadlines of one call, in the request extensions.
#[derive(Debug, Clone, Copy)]
pub struct CallDeadline {
    /// What the client asked for (`grpc-timeout`), if anything: streams
    /// end here.
    pub client: Option<Instant>,
    /// When the handler must have answered: the client's deadline or the
    /// server's default, whichever is sooner.
    pub respond_by: Instant,
}

/// Prebuilt, so the lookup does not parse the name each call.
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

impl CallDeadline {
    fn of(headers: &HeaderMap, default_timeout: Duration) -> Self {
        let now = Instant::now();
        let client = headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .and_then(|d| now.checked_add(d));
        let default = now + default_timeout;
        Self {
            client,
            respond_by: client.map_or(default, |c| c.min(default)),
        }
    }
}

/// Parses the `grpc-timeout` header: up to 8 digits and a unit
/// (H, M, S, m, u, n), per the gRPC over HTTP/2 spec.
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    default_timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(default_timeout: Duration) -> Self {
        Self { default_timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            default_timeout: self.default_timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    default_timeout: Duration,
}

impl<S> Service<Request<Body>> for Deadline<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let deadline = CallDeadline::of(req.headers(), self.default_timeout);
        req.extensions_mut().insert(deadline);
        DeadlineFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep_until(deadline.respond_by),
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's future, or DEADLINE_EXCEEDED when time runs out first.
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
    }
}

impl<F, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The answer first: a handler that finished at the last moment wins.
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(
                Status::deadline_exceeded("deadline exceeded").into_http()
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "10", "10x", "123456789S", "-1S", "+1S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_sooner_of_client_and_default_wins() {
        let mut headers = HeaderMap::new();
        let d = CallDeadline::of(&headers, Duration::from_secs(30));
        assert!(d.client.is_none());
        assert_eq!(d.respond_by - Instant::now(), Duration::from_secs(30));

        headers.insert("grpc-timeout", "100m".parse().unwrap());
        let d = CallDeadline::of(&headers, Duration::from_secs(30));
        assert_eq!(d.respond_by - Instant::now(), Duration::from_millis(100));
        assert_eq!(d.client, Some(d.respond_by));

        headers.insert("grpc-timeout", "1H".parse().unwrap());
        let d = CallDeadline::of(&headers, Duration::from_secs(30));
        assert_eq!(d.respond_by - Instant::now(), Duration::from_secs(30));
        assert_eq!(
            d.client.unwrap() - Instant::now(),
            Duration::from_secs(3600)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_gets_deadline_exceeded() {
        let slow = tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
        });
        let mut svc = DeadlineLayer::new(Duration::from_secs(1)).layer(slow);
        let response = svc.call(Request::new(Body::empty())).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "4");
    }
}
