//! The protobuf codec of pgway's service: prost's, except that a request that doesn't decode
//! (invalid UTF-8 in a string, nesting past protobuf's limit, a truncated message) is the
//! caller's mistake, answered with INVALID_ARGUMENT instead of tonic's INTERNAL.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// See the module docs.
#[derive(Debug, Clone, Default)]
pub struct PgwayCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Codec for PgwayCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CallerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CallerDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// prost's decoder with decode failures answered as INVALID_ARGUMENT.
#[derive(Debug)]
pub struct CallerDecoder<U>(ProstDecoder<U>);

/// The decode error's text names the fields it went through: enough to find the mistake, cut
/// short so a deeply nested message doesn't make a huge status.
const MAX_MESSAGE: usize = 300;

impl<U: prost::Message + Default> Decoder for CallerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            if status.code() != tonic::Code::Internal {
                return status;
            }
            let mut message = status.message().to_owned();
            if message.len() > MAX_MESSAGE {
                let mut end = MAX_MESSAGE;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                message.push('…');
            }
            Status::invalid_argument(format!("the request is not a valid message: {message}"))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
