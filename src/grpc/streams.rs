//! Bounds on response streams.
//!
//! The deadline layer bounds a call only until response headers are sent,
//! so a server stream would otherwise outlive its deadline. Every stream we
//! return goes through [`bounded`], which ends it with DEADLINE_EXCEEDED at
//! the client's deadline, with UNAVAILABLE when the server tells it to stop,
//! and after the first error.

use std::pin::Pin;

use futures_util::{stream, Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// A boxed response stream, as the generated server traits want.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The client's deadline for a stream, as the deadline layer found it.
/// (The server's `grpc.default_timeout` bounds only the time to answer,
/// not a stream's life.)
pub fn deadline(extensions: &http::Extensions) -> Option<Instant> {
    extensions
        .get::<crate::grpc::middleware::CallDeadline>()
        .and_then(|d| d.client)
}

/// Ends `inner` at `deadline` (DEADLINE_EXCEEDED), when `stop` is cancelled
/// (UNAVAILABLE: the client should reconnect, to another replica), or after
/// the first error it yields.
pub fn bounded<T, S>(
    inner: S,
    deadline: Option<Instant>,
    stop: CancellationToken,
) -> ResponseStream<T>
where
    T: Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    struct State<S> {
        inner: Pin<Box<S>>,
        deadline: Option<Instant>,
        stop: CancellationToken,
        done: bool,
    }

    let state = State {
        inner: Box::pin(inner),
        deadline,
        stop,
        done: false,
    };
    Box::pin(stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let deadline = st.deadline;
        let expired = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let item = tokio::select! {
            biased;
            () = expired => Err(Status::deadline_exceeded("deadline exceeded while streaming")),
            () = st.stop.cancelled() => Err(Status::unavailable("server is shutting down; reconnect")),
            next = st.inner.next() => next?,
        };
        st.done = item.is_err();
        Some((item, st))
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ends_with_deadline_exceeded() {
        let forever = stream::pending::<Result<u8, Status>>();
        let deadline = Some(Instant::now() + Duration::from_secs(1));
        let mut s = bounded(forever, deadline, CancellationToken::new());
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn ends_with_unavailable_on_stop_and_after_errors() {
        let stop = CancellationToken::new();
        let mut s = bounded(stream::pending::<Result<u8, Status>>(), None, stop.clone());
        stop.cancel();
        assert_eq!(
            s.next().await.unwrap().unwrap_err().code(),
            tonic::Code::Unavailable
        );
        assert!(s.next().await.is_none());

        let items = stream::iter(vec![Ok(1u8), Err(Status::internal("x")), Ok(2)]);
        let got: Vec<_> = bounded(items, None, CancellationToken::new())
            .collect()
            .await;
        assert_eq!(got.len(), 2, "nothing after the first error");
    }
}
