//! One body wrapper for both directions of a call: it splits the byte
//! stream into gRPC messages (1-byte flag, 4-byte big-endian length, that
//! many bytes, cut across data chunks any which way) and tells a
//! [`BodyObserver`] about each message, the trailers and the end.
//!
//! The observer can refuse a message from its header alone (too large),
//! before any of its bytes are buffered.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{body::Body, Status};

/// What a call wants to know about a body as it streams through.
pub trait BodyObserver: Unpin {
    /// A message of `len` bytes begins. An error ends the body with it.
    fn message_started(&mut self, _len: usize) -> Result<(), Status> {
        Ok(())
    }
    /// `n` messages were completed by the last chunk.
    fn messages_completed(&mut self, _n: u64) {}
    /// The body ended: with trailers, with an error, or without either.
    fn ended(&mut self, _end: End<'_>) {}
    /// Runs each poll of the inner body, e.g. inside a trace context.
    fn poll_in_scope<T>(&mut self, poll: impl FnOnce() -> T) -> T {
        poll()
    }
}

/// How a body ended.
pub enum End<'a> {
    Trailers(&'a HeaderMap),
    Error(&'a Status),
    /// Data ended without trailers (a gRPC response always has them, so
    /// this one did not complete normally).
    Eos,
}

/// A body observed by `O`.
pub struct Observed<O> {
    inner: Body,
    frames: FrameCounter,
    observer: O,
    done: bool,
}

impl<O: BodyObserver> Observed<O> {
    pub fn new(inner: Body, observer: O) -> Self {
        Self {
            inner,
            frames: FrameCounter::default(),
            observer,
            done: false,
        }
    }
}

impl<O: BodyObserver> HttpBody for Observed<O> {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let inner = &mut this.inner;
        let polled = this
            .observer
            .poll_in_scope(|| Pin::new(inner).poll_frame(cx));
        match &polled {
            Poll::Pending => {}
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    match this.frames.feed(data, &mut this.observer) {
                        Ok(0) => {}
                        Ok(n) => this.observer.messages_completed(n),
                        Err(status) => {
                            this.done = true;
                            this.observer.ended(End::Error(&status));
                            return Poll::Ready(Some(Err(status)));
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.done = true;
                    this.observer.ended(End::Trailers(trailers));
                }
            }
            Poll::Ready(Some(Err(status))) => {
                this.done = true;
                this.observer.ended(End::Error(status));
            }
            Poll::Ready(None) => {
                this.done = true;
                this.observer.ended(End::Eos);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Splits a byte stream into gRPC messages.
#[derive(Debug, Default)]
struct FrameCounter {
    header: [u8; 5],
    header_len: usize,
    remaining: usize,
}

impl FrameCounter {
    /// Consumes `data` and returns how many messages it completed, or the
    /// observer's refusal of a message header.
    fn feed<O: BodyObserver>(&mut self, mut data: &[u8], observer: &mut O) -> Result<u64, Status> {
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
                    observer.message_started(self.remaining)?;
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
        Ok(completed)
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

    #[derive(Default)]
    struct Limit(Option<usize>);
    impl BodyObserver for Limit {
        fn message_started(&mut self, len: usize) -> Result<(), Status> {
            match self.0 {
                Some(max) if len > max => Err(Status::resource_exhausted("too large")),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn counts_messages_across_chunk_boundaries() {
        let mut stream = Vec::new();
        for len in [3, 0, 10, 1] {
            stream.extend(frame(len));
        }
        let mut o = Limit::default();
        // Whole, byte by byte, and in awkward pieces: always 4 messages.
        assert_eq!(FrameCounter::default().feed(&stream, &mut o).unwrap(), 4);
        let mut counter = FrameCounter::default();
        let total: u64 = stream
            .iter()
            .map(|b| counter.feed(&[*b], &mut o).unwrap())
            .sum();
        assert_eq!(total, 4);
        for split in 1..stream.len() {
            let mut counter = FrameCounter::default();
            let (a, b) = stream.split_at(split);
            let n = counter.feed(a, &mut o).unwrap() + counter.feed(b, &mut o).unwrap();
            assert_eq!(n, 4, "split at {split}");
        }
        // A message is counted when it is complete, not when it starts.
        let mut counter = FrameCounter::default();
        assert_eq!(counter.feed(&frame(10)[..8], &mut o).unwrap(), 0);
        assert_eq!(counter.feed(&frame(10)[8..], &mut o).unwrap(), 1);
    }

    #[test]
    fn refuses_a_message_from_its_header() {
        let mut o = Limit(Some(16));
        let mut counter = FrameCounter::default();
        assert_eq!(counter.feed(&frame(16), &mut o).unwrap(), 1);
        // A prefix claiming 4 GiB is refused before any payload arrives.
        let huge = [0u8, 0xff, 0xff, 0xff, 0xff];
        let err = counter.feed(&huge, &mut o).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }
}
