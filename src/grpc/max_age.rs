//! The hard end of an aged connection: `grpc.max_connection_age_grace`
//! after `grpc.max_connection_age`, the connection is closed whatever is
//! still running on it.
//!
//! Why not tonic's own `max_connection_age_grace`: in tonic 0.14 setting it
//! replaces the graceful phase instead of following it. The connection
//! gets no GOAWAY at `max_connection_age` and is dropped at age + grace
//! with calls in flight, which is the opposite of what the setting is for
//! (the connection test in `tests/it/connections.rs` saw clients fail with
//! "broken pipe" and never reconnect early). So tonic is given only the
//! age (GOAWAY, then in-flight calls finish) and this wrapper enforces the
//! grace, as gRPC's A9 describes: after it, reads and writes fail, hyper
//! ends the connection and the socket is closed. Streams that ignore the
//! GOAWAY (a `WatchUsers` open for hours) are cut there, and the client
//! reconnects like after any other lost connection.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tonic::transport::server::Connected;

/// A connection that stops working at a fixed time.
pub struct Aged<T> {
    inner: T,
    /// Boxed so the wrapper stays `Unpin`, as tonic wants its IO.
    hard_stop: Pin<Box<Sleep>>,
    expired: bool,
}

impl<T> Aged<T> {
    /// `inner`, usable for `lifetime` from now.
    pub fn new(inner: T, lifetime: Duration) -> Self {
        Self {
            inner,
            hard_stop: Box::pin(tokio::time::sleep(lifetime)),
            expired: false,
        }
    }

    /// Whether the connection is past its time. Polling the timer (which
    /// registers the task's waker with it) costs an atomic exchange or
    /// two, once per read and write of a busy connection, so it is polled
    /// only when the socket has nothing to offer (`idle`): an idle
    /// connection still wakes at its hard stop, and a busy one sees the
    /// fired timer in its state without polling it.
    fn expired(&mut self, cx: &mut Context<'_>, idle: bool) -> bool {
        if !self.expired
            && (self.hard_stop.is_elapsed()
                || (idle && self.hard_stop.as_mut().poll(cx).is_ready()))
        {
            self.expired = true;
            tracing::debug!("connection closed: grpc.max_connection_age_grace passed");
        }
        self.expired
    }

    /// `op` on the inner stream unless the connection is past its time.
    fn guard<R>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(&mut T, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if self.expired(cx, false) {
            return Poll::Ready(Err(expired()));
        }
        let polled = op(&mut self.inner, cx);
        if polled.is_pending() && self.expired(cx, true) {
            return Poll::Ready(Err(expired()));
        }
        polled
    }
}

fn expired() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection past grpc.max_connection_age + grpc.max_connection_age_grace",
    )
}

impl<T: Connected> Connected for Aged<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Aged<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // hyper always has a read pending on a live connection, so this is
        // where an idle connection notices its end.
        self.guard(cx, |inner, cx| Pin::new(inner).poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Aged<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |inner, cx| Pin::new(inner).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.guard(cx, |inner, cx| {
            Pin::new(inner).poll_write_vectored(cx, bufs)
        })
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn works_until_its_time_then_fails() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut aged = Aged::new(a, Duration::from_secs(10));
        b.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        aged.read_exact(&mut buf).await.unwrap();
        // An idle read is woken by the timer and fails.
        let err = aged.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(aged.write_all(b"x").await.is_err());
    }
}
