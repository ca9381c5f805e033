//! Varint, protobuf messages and the frame codec of protocol v8
//! (`simple-message-channels@1.2.1`, `simple-hypercore-protocol@2.1.2`), and the bitfield
//! RLE of `bitfield-rle@2.2.1`. Pure byte transformations: no I/O, no state beyond the
//! incremental decoder.

pub mod frame;
pub mod messages;
pub mod rle;
pub mod varint;

pub use frame::{
    encode_data_frame, encode_frame, frame_to_vec, Decoded, EncodeError, Frame, FrameDecoder,
    FrameError, MAX_BODY_LEN,
};
pub use messages::{
    Cancel, Close, Data, DataRef, DecodeError, Extension, Have, Malformed, Message, Node,
    NoisePayload, Open, Options, Request, Status, Unhave, Unwant, Want,
};

#[cfg(test)]
pub(crate) mod vector_tests;
