//! Frame codec of `simple-message-channels@1.2.1`:
//! `varint(L) ‖ varint(channel << 4 | type) ‖ body`, `L = len(header varint) + len(body)`,
//! `L = 0` is a keep-alive.

use super::messages::{DecodeError, Message};
use super::varint::{self, VarintError};

/// Largest body JS accepts (`maxSize`, 8 MiB); larger frames destroy the stream.
pub const MAX_BODY_LEN: usize = 8 * 1024 * 1024;
/// JS rejects a length varint that is not finished after 8 bytes.
pub const MAX_LENGTH_VARINT_LEN: usize = 8;
/// Channel numbers must leave room for the 4 type bits in a u64 header.
pub const MAX_CHANNEL: u64 = u64::MAX >> 4;

/// A decoded frame: the sender's channel id and the message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Frame {
    /// The sender's local channel id (0 = stream level).
    pub channel: u64,
    /// The message.
    pub message: Message,
}

/// One item read from the byte stream.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Decoded {
    /// An empty frame (`00`), sent to keep the connection alive.
    KeepAlive,
    /// A message frame.
    Frame(Frame),
}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The channel id does not fit in the header.
    #[error("channel id {0} is too large")]
    ChannelTooLarge(u64),
    /// The body exceeds [`MAX_BODY_LEN`]; the peer would destroy the stream.
    #[error("message body of {len} bytes exceeds the {max} byte limit")]
    BodyTooLarge {
        /// Body length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why the incoming byte stream is invalid. The stream cannot be resynchronised after any
/// of these, so the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix is not a valid varint of at most 8 bytes.
    #[error("invalid frame length: {0}")]
    Length(VarintError),
    /// The header varint is invalid.
    #[error("invalid frame header: {0}")]
    Header(VarintError),
    /// The header varint runs past the frame length.
    #[error("frame header is longer than the frame")]
    HeaderOverrun,
    /// The body exceeds the limit.
    #[error("incoming frame body of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Announced body length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The decoder already reported an error; the stream cannot be resynchronised.
    #[error("frame decoder already failed")]
    Failed,
    /// The body is not a valid message of its type.
    #[error("invalid {type_name} message on channel {channel}: {source}")]
    Message {
        /// Channel of the frame.
        channel: u64,
        /// Message type name.
        type_name: &'static str,
        /// The decoding error.
        source: DecodeError,
    },
}

/// Appends the frame for `message` on `channel` to `out`.
pub fn encode_frame(channel: u64, message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    if channel > MAX_CHANNEL {
        return Err(EncodeError::ChannelTooLarge(channel));
    }
    let body_len = message.encoded_len();
    if body_len > MAX_BODY_LEN {
        return Err(EncodeError::BodyTooLarge {
            len: body_len,
            max: MAX_BODY_LEN,
        });
    }
    let header = channel << 4 | u64::from(message.type_id());
    // Bounded above by 8 MiB + 10, so the addition cannot overflow.
    let length = varint::encoded_len(header) + body_len;
    out.reserve(varint::encoded_len(length as u64) + length);
    varint::encode(length as u64, out);
    varint::encode(header, out);
    message.encode_body(out);
    Ok(())
}

/// Appends the frame for a borrowed Data message on `channel` to `out`.
pub fn encode_data_frame(
    channel: u64,
    data: &super::messages::DataRef<'_>,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    if channel > MAX_CHANNEL {
        return Err(EncodeError::ChannelTooLarge(channel));
    }
    let body_len = data.encoded_len();
    if body_len > MAX_BODY_LEN {
        return Err(EncodeError::BodyTooLarge {
            len: body_len,
            max: MAX_BODY_LEN,
        });
    }
    let header = channel << 4 | 9;
    let length = varint::encoded_len(header) + body_len;
    out.reserve(varint::encoded_len(length as u64) + length);
    varint::encode(length as u64, out);
    varint::encode(header, out);
    data.encode_body(out);
    Ok(())
}

/// Convenience: the frame for `message` on `channel` as a new vector.
pub fn frame_to_vec(channel: u64, message: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_frame(channel, message, &mut out)?;
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the length varint.
    Length,
    /// Reading the header varint; `remaining` = L minus header bytes read so far.
    Header { length: u64 },
    /// Reading `len` body bytes.
    Body { header: u64, len: usize },
}

/// Incremental frame decoder: feed it arbitrary chunks, get frames out. It never buffers
/// more than one frame body (≤ `max_body`) plus a partial varint, and it grows the body
/// buffer only as bytes arrive, so a forged length costs nothing until it is sent.
#[derive(Debug)]
pub struct FrameDecoder {
    state: State,
    varint_buf: Vec<u8>,
    body: Vec<u8>,
    max_body: usize,
    last_varint_len: usize,
    failed: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the JS body limit of 8 MiB.
    pub fn new() -> Self {
        Self::with_max_body(MAX_BODY_LEN)
    }

    /// A decoder with a smaller (or larger) body limit.
    pub fn with_max_body(max_body: usize) -> Self {
        Self {
            state: State::Length,
            varint_buf: Vec::with_capacity(varint::MAX_VARINT_LEN),
            body: Vec::new(),
            max_body,
            last_varint_len: 0,
            failed: false,
        }
    }

    /// The body limit in force.
    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Changes the body limit for frames whose length has not been read yet (a frame in
    /// progress keeps the limit it was checked against).
    pub fn set_max_body(&mut self, max_body: usize) {
        self.max_body = max_body;
    }

    /// Bytes of a partial frame held in the decoder.
    pub fn buffered(&self) -> usize {
        self.body.len() + self.varint_buf.len()
    }

    /// Whether the decoder is between frames (no partial frame buffered).
    pub fn is_idle(&self) -> bool {
        self.state == State::Length && self.varint_buf.is_empty()
    }

    /// Consumes bytes from the front of `input` until one item is complete (returned) or
    /// `input` is exhausted (`Ok(None)`). After an error the decoder stays failed.
    pub fn decode_next(&mut self, input: &mut &[u8]) -> Result<Option<Decoded>, FrameError> {
        if self.failed {
            // The stream position is unknown after an error; refuse to go on.
            return Err(FrameError::Failed);
        }
        let result = self.step(input);
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Decodes every complete item in `input` into `out` (for tests and simple callers).
    pub fn decode_all(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<Decoded>,
    ) -> Result<(), FrameError> {
        while let Some(item) = self.decode_next(&mut input)? {
            out.push(item);
        }
        Ok(())
    }

    /// Reads one varint byte by byte across chunk boundaries.
    fn read_varint(
        &mut self,
        input: &mut &[u8],
        max_len: usize,
    ) -> Result<Option<u64>, VarintError> {
        while let Some((&byte, rest)) = input.split_first() {
            *input = rest;
            self.varint_buf.push(byte);
            if byte & 0x80 == 0 {
                let (value, used) = varint::decode_with_max(&self.varint_buf, max_len)?;
                self.last_varint_len = used;
                self.varint_buf.clear();
                return Ok(Some(value));
            }
            if self.varint_buf.len() >= max_len {
                return Err(VarintError::TooLong { max: max_len });
            }
        }
        Ok(None)
    }

    fn step(&mut self, input: &mut &[u8]) -> Result<Option<Decoded>, FrameError> {
        loop {
            match self.state {
                State::Length => {
                    let Some(value) = self
                        .read_varint(input, MAX_LENGTH_VARINT_LEN)
                        .map_err(FrameError::Length)?
                    else {
                        return Ok(None);
                    };
                    if value == 0 {
                        return Ok(Some(Decoded::KeepAlive));
                    }
                    // The header takes at least one byte, so a body limit check on L - 1 can
                    // be done before waiting for the header.
                    let max_len =
                        (self.max_body as u64).saturating_add(varint::MAX_VARINT_LEN as u64);
                    if value > max_len {
                        return Err(FrameError::TooLarge {
                            len: value.saturating_sub(1),
                            max: self.max_body,
                        });
                    }
                    self.state = State::Header { length: value };
                }
                State::Header { length } => {
                    let Some(header) = self
                        .read_varint(input, varint::MAX_VARINT_LEN)
                        .map_err(FrameError::Header)?
                    else {
                        return Ok(None);
                    };
                    // Count the bytes actually read: non-minimal varints are legal LEB128.
                    let header_len = self.last_varint_len as u64;
                    let body_len = length
                        .checked_sub(header_len)
                        .ok_or(FrameError::HeaderOverrun)?;
                    if body_len > self.max_body as u64 {
                        return Err(FrameError::TooLarge {
                            len: body_len,
                            max: self.max_body,
                        });
                    }
                    self.body.clear();
                    self.state = State::Body {
                        header,
                        len: body_len as usize,
                    };
                }
                State::Body { header, len } => {
                    let missing = len.saturating_sub(self.body.len());
                    let take = missing.min(input.len());
                    let (now, later) = input.split_at(take);
                    self.body.extend_from_slice(now);
                    *input = later;
                    if self.body.len() < len {
                        return Ok(None);
                    }
                    self.state = State::Length;
                    let body = std::mem::take(&mut self.body);
                    let channel = header >> 4;
                    let type_id = header & 0xf;
                    let message =
                        Message::decode(type_id, &body).map_err(|source| FrameError::Message {
                            channel,
                            type_name: super::messages::type_name(type_id as u8),
                            source,
                        })?;
                    return Ok(Some(Decoded::Frame(Frame { channel, message })));
                }
            }
        }
    }
}
