//! The codec of the generated stubs: prost's, with smaller first buffers.
//!
//! tonic's default gives every call an 8 KiB encode buffer and an 8 KiB
//! decode buffer before a byte is read. This contract's messages are a few
//! hundred bytes, so with many calls in flight those buffers are most of a
//! server's memory. The buffers still grow to fit a larger message, and a
//! stream still hands its output to the transport every 32 KiB (tonic's
//! default yield threshold).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Bytes each call's encoder and decoder start with: a `User` fits.
pub const BUFFER_SIZE: usize = 1024;
/// tonic's default: a stream's encoded messages are handed to the
/// transport once this many bytes have accumulated.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// `application/grpc+proto` through prost, with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
