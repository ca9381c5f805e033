//! The protobuf messages of protocol v8 (`simple-hypercore-protocol@2` schema.proto), with
//! proto2 presence: an optional field is `Option` so that a message re-encodes to exactly the
//! bytes JS writes (JS writes a field iff it is set, in field-number order), and required
//! fields are checked on decode because prost itself does not enforce them.

use super::varint;

/// The handshake payload (`NoisePayload`): the sender's 24-byte XSalsa20 nonce.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct NoisePayload {
    /// The sender's transport nonce (required; 24 bytes in practice).
    #[prost(bytes = "vec", required, tag = "1")]
    pub nonce: Vec<u8>,
}

/// Type 0: open a channel for a feed.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Open {
    /// `discoveryKey(feedKey)` (required).
    #[prost(bytes = "vec", required, tag = "1")]
    pub discovery_key: Vec<u8>,
    /// `capability(feedKey, split)`; absent only without Noise.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub capability: Option<Vec<u8>>,
}

/// Type 1: extension names (sorted) and the ack option. Decoding refuses more than
/// [`MAX_OPTIONS_NAMES`] names or a name longer than [`MAX_EXTENSION_NAME_LEN`] bytes, so
/// that a frame of empty names cannot make the receiver allocate a `String` per two bytes.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Options {
    /// Extension names, sorted by byte order.
    #[prost(string, repeated, tag = "1")]
    pub extensions: Vec<String>,
    /// Whether every block should be acknowledged (decodes as false when absent).
    #[prost(bool, optional, tag = "2")]
    pub ack: Option<bool>,
}

/// Type 2: the sender's uploading/downloading state. Absent fields decode as `false`, so
/// senders should always set both.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Status {
    /// Whether the sender serves requests.
    #[prost(bool, optional, tag = "1")]
    pub uploading: Option<bool>,
    /// Whether the sender wants data.
    #[prost(bool, optional, tag = "2")]
    pub downloading: Option<bool>,
}

/// Type 3: blocks the sender has.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Have {
    /// First block (required).
    #[prost(uint64, required, tag = "1")]
    pub start: u64,
    /// Number of blocks; [`Have::length()`] gives the default 1 when absent.
    #[prost(uint64, optional, tag = "2", default = "1")]
    pub length: Option<u64>,
    /// RLE-encoded bitfield (see [`crate::wire::rle`]); present-but-empty is meaningful.
    #[prost(bytes = "vec", optional, tag = "3")]
    pub bitfield: Option<Vec<u8>>,
    /// Whether this Have acknowledges a received block.
    #[prost(bool, optional, tag = "4")]
    pub ack: Option<bool>,
}

/// Type 4: blocks the sender no longer has.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Unhave {
    /// First block (required).
    #[prost(uint64, required, tag = "1")]
    pub start: u64,
    /// Number of blocks; [`Unhave::length()`] gives the default 1 when absent.
    #[prost(uint64, optional, tag = "2", default = "1")]
    pub length: Option<u64>,
}

/// Type 5: a range the sender wants Have messages for.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Want {
    /// First block (required).
    #[prost(uint64, required, tag = "1")]
    pub start: u64,
    /// Number of blocks (0 when absent).
    #[prost(uint64, optional, tag = "2")]
    pub length: Option<u64>,
}

/// Type 6: a range the sender no longer wants.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Unwant {
    /// First block (required).
    #[prost(uint64, required, tag = "1")]
    pub start: u64,
    /// Number of blocks (0 when absent).
    #[prost(uint64, optional, tag = "2")]
    pub length: Option<u64>,
}

/// Type 7: ask for a block and its proof.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Request {
    /// Block index (required).
    #[prost(uint64, required, tag = "1")]
    pub index: u64,
    /// Byte offset to seek to instead of `index` when > 0.
    #[prost(uint64, optional, tag = "2")]
    pub bytes: Option<u64>,
    /// Ask for the hash only.
    #[prost(bool, optional, tag = "3")]
    pub hash: Option<bool>,
    /// The requester's proof digest (WIRE §4.1).
    #[prost(uint64, optional, tag = "4")]
    pub nodes: Option<u64>,
}

/// Type 8: cancel a request (never sent by hypercore@9).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Cancel {
    /// Block index (required).
    #[prost(uint64, required, tag = "1")]
    pub index: u64,
    /// Byte offset of the request.
    #[prost(uint64, optional, tag = "2")]
    pub bytes: Option<u64>,
    /// Hash-only request.
    #[prost(bool, optional, tag = "3")]
    pub hash: Option<bool>,
}

/// One Merkle tree node of a proof (`Data.Node`: index, hash, size, all required): the
/// storage layer's [`crate::storage::Node`], so a decoded proof is already the type the
/// feed verifies, with a hash of exactly 32 bytes.
pub use crate::storage::Node;

/// Type 9: a block (or only its proof) with proof nodes and a signature.
///
/// Not a prost message: it is encoded by [`DataRef`] and decoded in one pass, which fills
/// the fixed-size hash and signature arrays and refuses other lengths
/// ([`DecodeError::WrongLength`]).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Data {
    /// Block index (required).
    pub index: u64,
    /// Block bytes; absent for hash-only answers.
    pub value: Option<Vec<u8>>,
    /// Proof nodes.
    pub nodes: Vec<Node>,
    /// Signature over the root hash (WIRE §1.3).
    pub signature: Option<[u8; 64]>,
}

impl Data {
    /// The borrowed view that encodes this message.
    pub fn as_data_ref(&self) -> DataRef<'_> {
        DataRef {
            index: self.index,
            value: self.value.as_deref(),
            nodes: &self.nodes,
            signature: self.signature.as_ref(),
        }
    }
}

/// Field 1 of `Data.Node` and of `Data` (varint).
const TAG_VARINT_1: u8 = 0x08;
/// Field 2 (length-delimited).
const TAG_BYTES_2: u8 = 0x12;
/// Field 3 (varint), `Data.Node.size`.
const TAG_VARINT_3: u8 = 0x18;
/// Field 3 (length-delimited), `Data.nodes`.
const TAG_BYTES_3: u8 = 0x1a;
/// Field 4 (length-delimited), `Data.signature`.
const TAG_BYTES_4: u8 = 0x22;

/// A borrowed [`Data`] for the upload path: encodes to the same bytes as prost would
/// (field order and presence as JS writes them) without copying the block or allocating
/// per proof node.
#[derive(Debug, Clone, Copy)]
pub struct DataRef<'a> {
    /// Block index.
    pub index: u64,
    /// Block bytes; `None` for hash-only answers.
    pub value: Option<&'a [u8]>,
    /// Proof nodes.
    pub nodes: &'a [Node],
    /// Signature over the roots.
    pub signature: Option<&'a [u8; 64]>,
}

impl DataRef<'_> {
    fn node_len(n: &Node) -> usize {
        1 + varint::encoded_len(n.index) + 2 + 32 + 1 + varint::encoded_len(n.size)
    }

    /// Length of the encoded body.
    pub fn encoded_len(&self) -> usize {
        let mut len = 1 + varint::encoded_len(self.index);
        if let Some(v) = self.value {
            len += 1 + varint::encoded_len(v.len() as u64) + v.len();
        }
        for n in self.nodes {
            let inner = Self::node_len(n);
            len += 1 + varint::encoded_len(inner as u64) + inner;
        }
        if self.signature.is_some() {
            len += 2 + 64;
        }
        len
    }

    /// Appends the body.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(TAG_VARINT_1);
        varint::encode(self.index, out);
        if let Some(v) = self.value {
            out.push(TAG_BYTES_2);
            varint::encode(v.len() as u64, out);
            out.extend_from_slice(v);
        }
        for n in self.nodes {
            out.push(TAG_BYTES_3);
            varint::encode(Self::node_len(n) as u64, out);
            out.push(TAG_VARINT_1);
            varint::encode(n.index, out);
            out.push(TAG_BYTES_2);
            out.push(32);
            out.extend_from_slice(&n.hash);
            out.push(TAG_VARINT_3);
            varint::encode(n.size, out);
        }
        if let Some(sig) = self.signature {
            out.push(TAG_BYTES_4);
            out.push(64);
            out.extend_from_slice(sig);
        }
    }

    /// The owned message.
    pub fn to_data(&self) -> Data {
        Data {
            index: self.index,
            value: self.value.map(<[u8]>::to_vec),
            nodes: self.nodes.to_vec(),
            signature: self.signature.copied(),
        }
    }
}

/// Type 10: close a channel; `discovery_key` only for a channel never opened by the sender.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Close {
    /// Discovery key of a channel the sender never opened.
    #[prost(bytes = "vec", optional, tag = "1")]
    pub discovery_key: Option<Vec<u8>>,
}

/// Type 15: an extension message, `varint(id) ‖ payload` (not protobuf).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Extension {
    /// Index of the extension name in the sender's sorted list.
    pub id: u64,
    /// Raw payload.
    pub payload: Vec<u8>,
}

impl Status {
    /// Status with both flags set, as JS always sends it (absent flags decode as false).
    pub fn new(uploading: bool, downloading: bool) -> Self {
        Self {
            uploading: Some(uploading),
            downloading: Some(downloading),
        }
    }
}

impl Have {
    /// `Have{start}`: one block (also the eager length announcement `start = length - 1`).
    pub fn block(start: u64) -> Self {
        Self {
            start,
            length: None,
            bitfield: None,
            ack: None,
        }
    }

    /// `Have{start, length}`: a contiguous range (live appends of several blocks).
    pub fn range(start: u64, length: u64) -> Self {
        Self {
            length: Some(length),
            ..Self::block(start)
        }
    }

    /// `Have{start, length, bitfield}`: the answer to a Want; `rle` may be empty.
    pub fn with_bitfield(start: u64, length: u64, rle: Vec<u8>) -> Self {
        Self {
            bitfield: Some(rle),
            ..Self::range(start, length)
        }
    }
}

impl Want {
    /// `Want{start, length}` (hypercore@9 asks for 1 MiB-block regions).
    pub fn range(start: u64, length: u64) -> Self {
        Self {
            start,
            length: Some(length),
        }
    }
}

impl Unhave {
    /// `Unhave{start}`: one block.
    pub fn block(start: u64) -> Self {
        Self {
            start,
            length: None,
        }
    }
}

impl Request {
    /// A block request as a hypercore@9 clone sends it: all four fields written.
    pub fn block(index: u64, nodes: u64) -> Self {
        Self {
            index,
            bytes: Some(0),
            hash: Some(false),
            nodes: Some(nodes),
        }
    }
}

/// Most extension names one Options message may carry (dazaar uses six; JS peers a
/// handful). A receiver could never map ids beyond its list anyway.
pub const MAX_OPTIONS_NAMES: usize = 1024;
/// Longest extension name accepted in Options, in bytes (dazaar's longest is 20).
pub const MAX_EXTENSION_NAME_LEN: usize = 256;
/// Most proof nodes one Data message may carry: a proof holds at most the roots and one
/// path of a tree of at most 2^48 blocks, far below this.
pub const MAX_DATA_NODES: usize = 512;

/// Frame type number of [`Extension`].
pub const EXTENSION_TYPE: u8 = 15;

/// One protocol v8 message of any type.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Message {
    /// Type 0.
    Open(Open),
    /// Type 1.
    Options(Options),
    /// Type 2.
    Status(Status),
    /// Type 3.
    Have(Have),
    /// Type 4.
    Unhave(Unhave),
    /// Type 5.
    Want(Want),
    /// Type 6.
    Unwant(Unwant),
    /// Type 7.
    Request(Request),
    /// Type 8.
    Cancel(Cancel),
    /// Type 9.
    Data(Data),
    /// Type 10.
    Close(Close),
    /// Type 15.
    Extension(Extension),
    /// Types 11–14: no schema; JS ignores them and so should the receiver.
    Unknown {
        /// The frame type (11..=14).
        type_id: u8,
        /// The raw body.
        body: Vec<u8>,
    },
}

/// Why a message body could not be decoded. Every variant means the peer sent malformed
/// data; JS destroys the stream in all of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The protobuf structure is broken (bad key, wire type, truncated field, bad UTF-8).
    #[error("malformed {message} message: {reason}")]
    Malformed {
        /// Message name.
        message: &'static str,
        /// What is broken.
        reason: Malformed,
    },
    /// A proto2 `required` field is absent.
    #[error("{message} message lacks required field {field}")]
    MissingField {
        /// Message name.
        message: &'static str,
        /// Field name as in schema.proto.
        field: &'static str,
    },
    /// A field of fixed size (a proof node's hash, a signature) has another length.
    #[error("{message} message: {field} is {actual} bytes, not {expected}")]
    WrongLength {
        /// Message name.
        message: &'static str,
        /// Field name as in schema.proto.
        field: &'static str,
        /// The length the field must have.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// The extension id varint is broken.
    #[error("malformed extension id: {0}")]
    ExtensionId(varint::VarintError),
    /// A frame type outside 0..=15.
    #[error("frame type {0} does not exist")]
    UnknownType(u64),
    /// A repeated field has more entries, or a field more bytes, than we accept (refused
    /// before allocating for it).
    #[error("{message} message: {field} exceeds the limit of {max}")]
    TooLarge {
        /// Message name.
        message: &'static str,
        /// What exceeded the limit (e.g. "extension names").
        field: &'static str,
        /// The limit.
        max: usize,
    },
}

/// What is broken in the protobuf structure of a body ([`DecodeError::Malformed`]): the
/// cases prost's decoder refuses, in our own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// A field key is not a valid varint.
    #[error("bad field key ({0})")]
    Key(varint::VarintError),
    /// A field number is 0 or above 2^29 - 1.
    #[error("field number {0} is outside 1..=536870911")]
    FieldNumber(u64),
    /// A varint value is broken.
    #[error("field {field}: bad varint ({error})")]
    Varint {
        /// The field number.
        field: u32,
        /// What is wrong with it.
        error: varint::VarintError,
    },
    /// The length of a length-delimited field is broken.
    #[error("field {field}: bad length ({error})")]
    Length {
        /// The field number.
        field: u32,
        /// What is wrong with it.
        error: varint::VarintError,
    },
    /// A field runs past the end of the body.
    #[error("field {field} is truncated")]
    Truncated {
        /// The field number.
        field: u32,
    },
    /// A wire type protocol v8 never uses (groups, or 6 and 7, which do not exist).
    #[error("field {field} has unsupported wire type {wire_type}")]
    UnsupportedWireType {
        /// The field number.
        field: u32,
        /// The wire type (the key's low 3 bits).
        wire_type: u8,
    },
    /// A known field with another wire type than the schema's.
    #[error("field {field} has wire type {wire_type}, not the schema's")]
    WrongWireType {
        /// The field number.
        field: u32,
        /// The wire type received.
        wire_type: u8,
    },
    /// A string field is not UTF-8.
    #[error("field {field} is not UTF-8")]
    NotUtf8 {
        /// The field number.
        field: u32,
    },
}

impl Message {
    /// The frame type number (0–10, 15; 11–14 for [`Message::Unknown`]).
    pub fn type_id(&self) -> u8 {
        match self {
            Message::Open(_) => 0,
            Message::Options(_) => 1,
            Message::Status(_) => 2,
            Message::Have(_) => 3,
            Message::Unhave(_) => 4,
            Message::Want(_) => 5,
            Message::Unwant(_) => 6,
            Message::Request(_) => 7,
            Message::Cancel(_) => 8,
            Message::Data(_) => 9,
            Message::Close(_) => 10,
            Message::Extension(_) => EXTENSION_TYPE,
            Message::Unknown { type_id, .. } => *type_id,
        }
    }

    /// The type's name as in schema.proto (for logs and errors).
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_id())
    }

    /// Length of the encoded body.
    pub fn encoded_len(&self) -> usize {
        use prost::Message as _;
        match self {
            Message::Open(m) => m.encoded_len(),
            Message::Options(m) => m.encoded_len(),
            Message::Status(m) => m.encoded_len(),
            Message::Have(m) => m.encoded_len(),
            Message::Unhave(m) => m.encoded_len(),
            Message::Want(m) => m.encoded_len(),
            Message::Unwant(m) => m.encoded_len(),
            Message::Request(m) => m.encoded_len(),
            Message::Cancel(m) => m.encoded_len(),
            Message::Data(m) => m.as_data_ref().encoded_len(),
            Message::Close(m) => m.encoded_len(),
            Message::Extension(e) => varint::encoded_len(e.id) + e.payload.len(),
            Message::Unknown { body, .. } => body.len(),
        }
    }

    /// Appends the body (without frame header) to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        use prost::Message as _;
        // Encoding into a Vec cannot run out of space, so prost's only error cannot happen;
        // `encode_raw` has no error path at all.
        match self {
            Message::Open(m) => m.encode_raw(out),
            Message::Options(m) => m.encode_raw(out),
            Message::Status(m) => m.encode_raw(out),
            Message::Have(m) => m.encode_raw(out),
            Message::Unhave(m) => m.encode_raw(out),
            Message::Want(m) => m.encode_raw(out),
            Message::Unwant(m) => m.encode_raw(out),
            Message::Request(m) => m.encode_raw(out),
            Message::Cancel(m) => m.encode_raw(out),
            Message::Data(m) => m.as_data_ref().encode_body(out),
            Message::Close(m) => m.encode_raw(out),
            Message::Extension(e) => {
                varint::encode(e.id, out);
                out.extend_from_slice(&e.payload);
            }
            Message::Unknown { body, .. } => out.extend_from_slice(body),
        }
    }

    /// Decodes a body of frame type `type_id`.
    pub fn decode(type_id: u64, body: &[u8]) -> Result<Message, DecodeError> {
        Ok(match type_id {
            0 => Message::Open(decode_open(body)?),
            1 => Message::Options(decode_options(body)?),
            2 => Message::Status(decode_status(body)?),
            3 => Message::Have(decode_have(body)?),
            4 => {
                let (start, length) = decode_range(body, "Unhave")?;
                Message::Unhave(Unhave { start, length })
            }
            5 => {
                let (start, length) = decode_range(body, "Want")?;
                Message::Want(Want { start, length })
            }
            6 => {
                let (start, length) = decode_range(body, "Unwant")?;
                Message::Unwant(Unwant { start, length })
            }
            7 => Message::Request(decode_request(body)?),
            8 => Message::Cancel(decode_cancel(body)?),
            9 => Message::Data(decode_data(body)?),
            10 => Message::Close(decode_close(body)?),
            11..=14 => Message::Unknown {
                type_id: type_id as u8,
                body: body.to_vec(),
            },
            15 => {
                let (id, used) = varint::decode(body).map_err(DecodeError::ExtensionId)?;
                Message::Extension(Extension {
                    id,
                    payload: body.get(used..).unwrap_or_default().to_vec(),
                })
            }
            other => return Err(DecodeError::UnknownType(other)),
        })
    }
}

impl NoisePayload {
    /// Decodes a handshake payload, requiring the nonce field.
    pub fn decode_checked(body: &[u8]) -> Result<NoisePayload, DecodeError> {
        decode_noise_payload(body)
    }

    /// The protobuf encoding `0a 18 <nonce>`.
    pub fn to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

/// Name of frame type `type_id` as in schema.proto.
pub fn type_name(type_id: u8) -> &'static str {
    match type_id {
        0 => "Open",
        1 => "Options",
        2 => "Status",
        3 => "Have",
        4 => "Unhave",
        5 => "Want",
        6 => "Unwant",
        7 => "Request",
        8 => "Cancel",
        9 => "Data",
        10 => "Close",
        15 => "Extension",
        _ => "Unknown",
    }
}

/// One field of a protobuf body with its value: a varint, a length-delimited slice, or a
/// fixed-width value (skipped: no field of protocol v8 has one) with its wire type.
#[derive(Clone, Copy)]
enum FieldValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed(u8),
}

impl FieldValue<'_> {
    fn wire_type(&self) -> u8 {
        match self {
            FieldValue::Varint(_) => 0,
            FieldValue::Bytes(_) => 2,
            FieldValue::Fixed(w) => *w,
        }
    }
}

/// Reads one field (key and value) from the front of `rest` and advances past it, refusing
/// what prost refuses: a broken key, field number 0 or above 2^29 - 1, a broken or
/// truncated value, and the wire types no protocol v8 field uses (groups among them: the
/// checked prost decoding refused them too).
fn next_value<'a>(
    rest: &mut &'a [u8],
    message: &'static str,
) -> Result<(u32, FieldValue<'a>), DecodeError> {
    let bad = |reason| DecodeError::Malformed { message, reason };
    let input: &'a [u8] = rest;
    let (key, used) = varint::decode(input).map_err(|e| bad(Malformed::Key(e)))?;
    let number = key >> 3;
    let field = match u32::try_from(number) {
        Ok(f) if (1..=0x1fff_ffff).contains(&f) => f,
        _ => return Err(bad(Malformed::FieldNumber(number))),
    };
    let truncated = || bad(Malformed::Truncated { field });
    let wire_type = (key & 7) as u8;
    let after_key = input.get(used..).unwrap_or_default();
    let (value, skip) = match wire_type {
        0 => {
            let (v, n) = varint::decode(after_key)
                .map_err(|error| bad(Malformed::Varint { field, error }))?;
            (FieldValue::Varint(v), n)
        }
        1 => (FieldValue::Fixed(wire_type), 8),
        5 => (FieldValue::Fixed(wire_type), 4),
        2 => {
            let (len, n) = varint::decode(after_key)
                .map_err(|error| bad(Malformed::Length { field, error }))?;
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| n.checked_add(len))
                .ok_or_else(truncated)?;
            let value = after_key.get(n..end).ok_or_else(truncated)?;
            (FieldValue::Bytes(value), end)
        }
        _ => return Err(bad(Malformed::UnsupportedWireType { field, wire_type })),
    };
    *rest = after_key.get(skip..).ok_or_else(truncated)?;
    Ok((field, value))
}

fn wrong_wire_type(message: &'static str, field: u32, value: FieldValue<'_>) -> DecodeError {
    DecodeError::Malformed {
        message,
        reason: Malformed::WrongWireType {
            field,
            wire_type: value.wire_type(),
        },
    }
}

/// The wire type of a schema field.
#[derive(Clone, Copy)]
enum Kind {
    /// uint64 or bool.
    Varint,
    /// bytes.
    Bytes,
}

/// The fields 1..=4 of a message without repeated fields, read in one pass with prost's
/// outcome: the last occurrence of a field wins, unknown fields are skipped, a known
/// field with another wire type is refused.
struct Fields<'a> {
    message: &'static str,
    values: [Option<FieldValue<'a>>; 4],
}

impl<'a> Fields<'a> {
    /// Reads `body`; `schema[i]` is the kind of field `i + 1`.
    fn read(body: &'a [u8], message: &'static str, schema: &[Kind]) -> Result<Self, DecodeError> {
        let mut values = [None; 4];
        let mut rest = body;
        while !rest.is_empty() {
            let (field, value) = next_value(&mut rest, message)?;
            let slot = (field as usize)
                .checked_sub(1)
                .and_then(|i| Some((schema.get(i)?, values.get_mut(i)?)));
            let Some((kind, slot)) = slot else { continue };
            match (kind, value) {
                (Kind::Varint, FieldValue::Varint(_)) | (Kind::Bytes, FieldValue::Bytes(_)) => {
                    *slot = Some(value)
                }
                _ => return Err(wrong_wire_type(message, field, value)),
            }
        }
        Ok(Fields { message, values })
    }

    fn get(&self, field: usize) -> Option<FieldValue<'a>> {
        self.values.get(field.checked_sub(1)?).copied().flatten()
    }

    fn varint(&self, field: usize) -> Option<u64> {
        match self.get(field)? {
            FieldValue::Varint(v) => Some(v),
            _ => None,
        }
    }

    fn flag(&self, field: usize) -> Option<bool> {
        self.varint(field).map(|v| v != 0)
    }

    fn slice(&self, field: usize) -> Option<&'a [u8]> {
        match self.get(field)? {
            FieldValue::Bytes(b) => Some(b),
            _ => None,
        }
    }

    fn bytes(&self, field: usize) -> Option<Vec<u8>> {
        self.slice(field).map(<[u8]>::to_vec)
    }

    /// `value`, or [`DecodeError::MissingField`] for the required field `name`.
    fn required<T>(&self, value: Option<T>, name: &'static str) -> Result<T, DecodeError> {
        value.ok_or(DecodeError::MissingField {
            message: self.message,
            field: name,
        })
    }
}

fn decode_open(body: &[u8]) -> Result<Open, DecodeError> {
    let f = Fields::read(body, "Open", &[Kind::Bytes, Kind::Bytes])?;
    Ok(Open {
        discovery_key: f.required(f.bytes(1), "discoveryKey")?,
        capability: f.bytes(2),
    })
}

fn decode_status(body: &[u8]) -> Result<Status, DecodeError> {
    let f = Fields::read(body, "Status", &[Kind::Varint, Kind::Varint])?;
    Ok(Status {
        uploading: f.flag(1),
        downloading: f.flag(2),
    })
}

fn decode_have(body: &[u8]) -> Result<Have, DecodeError> {
    let schema = [Kind::Varint, Kind::Varint, Kind::Bytes, Kind::Varint];
    let f = Fields::read(body, "Have", &schema)?;
    Ok(Have {
        start: f.required(f.varint(1), "start")?,
        length: f.varint(2),
        bitfield: f.bytes(3),
        ack: f.flag(4),
    })
}

/// `(start, length)` of Unhave, Want and Unwant.
fn decode_range(body: &[u8], message: &'static str) -> Result<(u64, Option<u64>), DecodeError> {
    let f = Fields::read(body, message, &[Kind::Varint, Kind::Varint])?;
    Ok((f.required(f.varint(1), "start")?, f.varint(2)))
}

fn decode_request(body: &[u8]) -> Result<Request, DecodeError> {
    let schema = [Kind::Varint, Kind::Varint, Kind::Varint, Kind::Varint];
    let f = Fields::read(body, "Request", &schema)?;
    Ok(Request {
        index: f.required(f.varint(1), "index")?,
        bytes: f.varint(2),
        hash: f.flag(3),
        nodes: f.varint(4),
    })
}

fn decode_cancel(body: &[u8]) -> Result<Cancel, DecodeError> {
    let f = Fields::read(body, "Cancel", &[Kind::Varint, Kind::Varint, Kind::Varint])?;
    Ok(Cancel {
        index: f.required(f.varint(1), "index")?,
        bytes: f.varint(2),
        hash: f.flag(3),
    })
}

fn decode_close(body: &[u8]) -> Result<Close, DecodeError> {
    let f = Fields::read(body, "Close", &[Kind::Bytes])?;
    Ok(Close {
        discovery_key: f.bytes(1),
    })
}

fn decode_noise_payload(body: &[u8]) -> Result<NoisePayload, DecodeError> {
    let f = Fields::read(body, "NoisePayload", &[Kind::Bytes])?;
    Ok(NoisePayload {
        nonce: f.required(f.bytes(1), "nonce")?,
    })
}

/// `Data` in one pass (the hot message of replication), with the outcome of prost's
/// decoding followed by the checks prost does not make: required fields enforced (also
/// inside each `Node`), and the hashes and the signature of exactly 32 and 64 bytes. As
/// in prost, the last occurrence of a scalar wins (so only the last one's length counts),
/// unknown fields are skipped and a known field with the wrong wire type is refused.
fn decode_data(body: &[u8]) -> Result<Data, DecodeError> {
    let mut index = None;
    let mut signature: Option<&[u8]> = None;
    let mut data = Data::default();
    let mut rest = body;
    while !rest.is_empty() {
        match next_value(&mut rest, "Data")? {
            (1, FieldValue::Varint(v)) => index = Some(v),
            (2, FieldValue::Bytes(b)) => data.value = Some(b.to_vec()),
            (3, FieldValue::Bytes(b)) => {
                if data.nodes.len() >= MAX_DATA_NODES {
                    return Err(DecodeError::TooLarge {
                        message: "Data",
                        field: "proof nodes",
                        max: MAX_DATA_NODES,
                    });
                }
                data.nodes.push(decode_node(b)?)
            }
            (4, FieldValue::Bytes(b)) => signature = Some(b),
            (field @ 1..=4, value) => return Err(wrong_wire_type("Data", field, value)),
            _ => {}
        }
    }
    data.index = index.ok_or(DecodeError::MissingField {
        message: "Data",
        field: "index",
    })?;
    data.signature = signature
        .map(|s| fixed::<64>(s, "Data", "signature"))
        .transpose()?;
    Ok(data)
}

/// `bytes` as an array of exactly `N` bytes, or [`DecodeError::WrongLength`].
fn fixed<const N: usize>(
    bytes: &[u8],
    message: &'static str,
    field: &'static str,
) -> Result<[u8; N], DecodeError> {
    bytes.try_into().map_err(|_| DecodeError::WrongLength {
        message,
        field,
        expected: N,
        actual: bytes.len(),
    })
}

/// `Options` in one pass, with the same outcome as prost's decoding for bodies within the
/// limits: names are counted and measured before a `String` is made for them, so the
/// decoded list holds at most [`MAX_OPTIONS_NAMES`] names of at most
/// [`MAX_EXTENSION_NAME_LEN`] bytes whatever the frame size.
fn decode_options(body: &[u8]) -> Result<Options, DecodeError> {
    let mut options = Options::default();
    let mut rest = body;
    while !rest.is_empty() {
        match next_value(&mut rest, "Options")? {
            (1, FieldValue::Bytes(b)) => {
                if options.extensions.len() >= MAX_OPTIONS_NAMES {
                    return Err(DecodeError::TooLarge {
                        message: "Options",
                        field: "extension names",
                        max: MAX_OPTIONS_NAMES,
                    });
                }
                if b.len() > MAX_EXTENSION_NAME_LEN {
                    return Err(DecodeError::TooLarge {
                        message: "Options",
                        field: "an extension name",
                        max: MAX_EXTENSION_NAME_LEN,
                    });
                }
                let name = std::str::from_utf8(b).map_err(|_| DecodeError::Malformed {
                    message: "Options",
                    reason: Malformed::NotUtf8 { field: 1 },
                })?;
                options.extensions.push(name.to_owned());
            }
            (2, FieldValue::Varint(v)) => options.ack = Some(v != 0),
            (field @ 1..=2, value) => return Err(wrong_wire_type("Options", field, value)),
            _ => {}
        }
    }
    Ok(options)
}

fn decode_node(body: &[u8]) -> Result<Node, DecodeError> {
    const M: &str = "Data.Node";
    let f = Fields::read(body, M, &[Kind::Varint, Kind::Bytes, Kind::Varint])?;
    Ok(Node {
        index: f.required(f.varint(1), "index")?,
        hash: fixed::<32>(f.required(f.slice(2), "hash")?, M, "hash")?,
        size: f.required(f.varint(3), "size")?,
    })
}

/// prost's decoding, plus the checks the schema asks for and prost does not make: what
/// the one-pass decoders are tested against.
#[cfg(test)]
mod reference {
    use super::*;

    /// `Data` as prost sees it (the schema's types, hash and signature of any length).
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct ProstData {
        #[prost(uint64, required, tag = "1")]
        pub index: u64,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub value: Option<Vec<u8>>,
        #[prost(message, repeated, tag = "3")]
        pub nodes: Vec<ProstNode>,
        #[prost(bytes = "vec", optional, tag = "4")]
        pub signature: Option<Vec<u8>>,
    }

    /// `Data.Node` as prost sees it.
    #[derive(Clone, PartialEq, Eq, prost::Message)]
    pub(super) struct ProstNode {
        #[prost(uint64, required, tag = "1")]
        pub index: u64,
        #[prost(bytes = "vec", required, tag = "2")]
        pub hash: Vec<u8>,
        #[prost(uint64, required, tag = "3")]
        pub size: u64,
    }

    /// The field numbers in 1..=4 that occur in `body`; `None` when its structure is
    /// broken.
    fn present_fields(body: &[u8]) -> Option<Vec<u32>> {
        let mut present = Vec::with_capacity(4);
        let mut rest = body;
        while !rest.is_empty() {
            let (field, _) = next_value(&mut rest, "reference").ok()?;
            if (1..=4).contains(&field) && !present.contains(&field) {
                present.push(field);
            }
        }
        Some(present)
    }

    /// prost's decoding of `body` when the `required` fields are present.
    pub(super) fn checked<M: prost::Message + Default>(body: &[u8], required: &[u32]) -> Option<M> {
        let present = present_fields(body)?;
        if !required.iter().all(|f| present.contains(f)) {
            return None;
        }
        M::decode(body).ok()
    }

    /// `Data`: every node has its three fields, hashes are 32 bytes, the signature 64.
    pub(super) fn data(body: &[u8]) -> Option<Data> {
        let mut rest = body;
        while !rest.is_empty() {
            if let (3, FieldValue::Bytes(inner)) = next_value(&mut rest, "Data").ok()? {
                let present = present_fields(inner)?;
                if ![1, 2, 3].iter().all(|f| present.contains(f)) {
                    return None;
                }
            }
        }
        let d: ProstData = checked(body, &[1])?;
        if d.nodes.len() > MAX_DATA_NODES {
            return None;
        }
        Some(Data {
            index: d.index,
            value: d.value,
            nodes: d
                .nodes
                .into_iter()
                .map(|n| {
                    Some(Node {
                        index: n.index,
                        hash: n.hash.try_into().ok()?,
                        size: n.size,
                    })
                })
                .collect::<Option<_>>()?,
            signature: match d.signature {
                Some(s) => Some(s.try_into().ok()?),
                None => None,
            },
        })
    }

    /// Any message type of protocol v8 except Options, Data and Extension.
    pub(super) fn message(type_id: u64, body: &[u8]) -> Option<Message> {
        Some(match type_id {
            0 => Message::Open(checked(body, &[1])?),
            2 => Message::Status(checked(body, &[])?),
            3 => Message::Have(checked(body, &[1])?),
            4 => Message::Unhave(checked(body, &[1])?),
            5 => Message::Want(checked(body, &[1])?),
            6 => Message::Unwant(checked(body, &[1])?),
            7 => Message::Request(checked(body, &[1])?),
            8 => Message::Cancel(checked(body, &[1])?),
            10 => Message::Close(checked(body, &[])?),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod data_decode_tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_data() -> Data {
        Data {
            index: 300,
            value: Some(b"hello".to_vec()),
            nodes: vec![
                Node {
                    index: 1,
                    hash: [7; 32],
                    size: 10,
                },
                Node {
                    index: 5,
                    hash: [8; 32],
                    size: 20,
                },
            ],
            signature: Some([9; 64]),
        }
    }

    fn encode(data: &Data) -> Vec<u8> {
        let mut out = Vec::new();
        data.as_data_ref().encode_body(&mut out);
        out
    }

    fn sample() -> Vec<u8> {
        encode(&sample_data())
    }

    #[test]
    fn one_pass_data_decoding_matches_the_checked_prost_path() {
        let body = sample();
        assert_eq!(decode_data(&body).unwrap(), sample_data());
        assert_eq!(decode_data(&body).ok(), reference::data(&body));
        let empty = encode(&Data {
            index: 0,
            ..Data::default()
        });
        assert_eq!(decode_data(&empty).ok(), reference::data(&empty));
        assert!(decode_data(&[]).is_err() && reference::data(&[]).is_none());
    }

    #[test]
    fn borrowed_data_encodes_like_prost() {
        let nodes = [
            Node {
                index: 0,
                hash: [1; 32],
                size: 0,
            },
            Node {
                index: 300,
                hash: [2; 32],
                size: 1 << 40,
            },
        ];
        let sig = [3u8; 64];
        let value = vec![4u8; 200];
        for (value, nodes, signature) in [
            (Some(value.as_slice()), &nodes[..], Some(&sig)),
            (None, &nodes[..1], None),
            (Some(&[][..]), &[][..], Some(&sig)),
            (None, &[][..], None),
        ] {
            for index in [0u64, 1, 1 << 33] {
                let r = DataRef {
                    index,
                    value,
                    nodes,
                    signature,
                };
                let mut ours = Vec::new();
                r.encode_body(&mut ours);
                let prost_data = reference::ProstData {
                    index,
                    value: value.map(<[u8]>::to_vec),
                    nodes: nodes
                        .iter()
                        .map(|n| reference::ProstNode {
                            index: n.index,
                            hash: n.hash.to_vec(),
                            size: n.size,
                        })
                        .collect(),
                    signature: signature.map(|s| s.to_vec()),
                };
                let theirs = prost::Message::encode_to_vec(&prost_data);
                assert_eq!(ours, theirs);
                assert_eq!(r.encoded_len(), theirs.len());
                let message = Message::Data(r.to_data());
                assert_eq!(message.encoded_len(), theirs.len());
                let mut body = Vec::new();
                message.encode_body(&mut body);
                assert_eq!(body, theirs);
                assert_eq!(decode_data(&body).unwrap(), r.to_data());
            }
        }
    }

    /// A sample body with the hash of node 0 and the signature replaced by these bytes.
    fn with_lengths(hash: &[u8], signature: &[u8]) -> Vec<u8> {
        let prost_data = reference::ProstData {
            index: 3,
            value: Some(b"v".to_vec()),
            nodes: vec![reference::ProstNode {
                index: 6,
                hash: hash.to_vec(),
                size: 1,
            }],
            signature: Some(signature.to_vec()),
        };
        prost::Message::encode_to_vec(&prost_data)
    }

    #[test]
    fn hashes_and_signatures_of_other_lengths_are_refused_with_their_length() {
        assert!(decode_data(&with_lengths(&[1; 32], &[2; 64])).is_ok());
        for (hash, sig, field, expected, actual) in [
            (&[1u8; 31][..], &[2u8; 64][..], "hash", 32, 31),
            (&[1; 33], &[2; 64], "hash", 32, 33),
            (&[], &[2; 64], "hash", 32, 0),
            (&[1; 32], &[2; 63], "signature", 64, 63),
            (&[1; 32], &[], "signature", 64, 0),
        ] {
            let err = Message::decode(9, &with_lengths(hash, sig)).unwrap_err();
            assert!(
                matches!(err, DecodeError::WrongLength { field: f, expected: e, actual: a, .. }
                    if f == field && e == expected && a == actual),
                "{err:?}"
            );
        }
    }

    #[test]
    fn only_the_last_signature_counts_as_in_prost() {
        // A short signature overridden by a full one (prost keeps the last occurrence).
        let mut body = with_lengths(&[1; 32], &[2; 5]);
        body.push(0x22);
        body.push(64);
        body.extend_from_slice(&[6; 64]);
        let data = decode_data(&body).unwrap();
        assert_eq!(data.signature, Some([6; 64]));
        assert_eq!(Some(data), reference::data(&body));
    }

    #[test]
    fn a_known_field_with_another_wire_type_is_refused_with_it() {
        // Field 1 (index) as length-delimited.
        let err = Message::decode(9, &[0x0a, 0x00]).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Malformed {
                message: "Data",
                reason: Malformed::WrongWireType {
                    field: 1,
                    wire_type: 2
                }
            }
        );
        // Field number 0.
        assert!(matches!(
            Message::decode(9, &[0x00, 0x00]),
            Err(DecodeError::Malformed {
                reason: Malformed::FieldNumber(0),
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn mutated_data_bodies_decode_the_same(flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..4), cut in 0usize..200) {
            let mut body = sample();
            for (at, byte) in flips {
                if let Some(b) = body.get_mut(at % 200) {
                    *b = byte;
                }
            }
            body.truncate(cut.max(1) * body.len() / 200 + 1);
            let ours = decode_data(&body);
            let theirs = reference::data(&body);
            prop_assert_eq!(ours.clone().ok(), theirs, "{:?}", ours);
        }
    }
}

#[cfg(test)]
mod message_decode_tests {
    use super::*;
    use proptest::prelude::*;

    /// One sample of every type decoded field by field, every field set (and an unknown
    /// field 5 after them, which both sides skip).
    fn samples() -> Vec<(u64, Vec<u8>)> {
        let messages = [
            Message::Open(Open {
                discovery_key: vec![1; 32],
                capability: Some(vec![2; 32]),
            }),
            Message::Status(Status::new(true, false)),
            Message::Have(Have {
                start: 5,
                length: Some(300),
                bitfield: Some(vec![2, 0xf8]),
                ack: Some(true),
            }),
            Message::Unhave(Unhave {
                start: 1 << 40,
                length: Some(2),
            }),
            Message::Want(Want::range(0, 1 << 20)),
            Message::Unwant(Unwant {
                start: 7,
                length: None,
            }),
            Message::Request(Request::block(5, 10)),
            Message::Cancel(Cancel {
                index: 9,
                bytes: Some(4),
                hash: Some(true),
            }),
            Message::Close(Close {
                discovery_key: Some(vec![3; 32]),
            }),
        ];
        messages
            .iter()
            .map(|m| {
                let mut body = Vec::new();
                m.encode_body(&mut body);
                body.extend_from_slice(&[0x28, 0x01]);
                (u64::from(m.type_id()), body)
            })
            .collect()
    }

    #[test]
    fn every_sample_decodes_as_prost_decodes_it() {
        for (type_id, body) in samples() {
            let ours = Message::decode(type_id, &body).unwrap();
            assert_eq!(Some(ours), reference::message(type_id, &body), "{type_id}");
        }
        let payload = NoisePayload { nonce: vec![4; 24] }.to_bytes();
        assert_eq!(
            NoisePayload::decode_checked(&payload).ok(),
            reference::checked(&payload, &[1])
        );
    }

    #[test]
    fn bools_are_any_nonzero_varint_and_the_last_occurrence_wins() {
        // Status{uploading: 2 (true), downloading: 1 then 0}.
        let body = [0x08, 0x02, 0x10, 0x01, 0x10, 0x00];
        let Ok(Message::Status(s)) = Message::decode(2, &body) else {
            panic!("not Status")
        };
        assert_eq!((s.uploading, s.downloading), (Some(true), Some(false)));
        assert_eq!(Some(Message::Status(s)), reference::message(2, &body));
    }

    proptest! {
        #[test]
        fn mutated_bodies_of_every_type_decode_the_same(
            which in 0usize..9,
            flips in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            cut in 0usize..81,
        ) {
            let (type_id, mut body) = samples().swap_remove(which);
            let len = body.len();
            for (at, byte) in flips {
                if let Some(b) = body.get_mut(at % len) {
                    *b = byte;
                }
            }
            body.truncate(cut % (len + 1));
            let ours = Message::decode(type_id, &body);
            let theirs = reference::message(type_id, &body);
            prop_assert_eq!(ours.clone().ok(), theirs, "{:?}", ours);
        }

        #[test]
        fn any_bytes_decode_as_prost_decodes_them(type_id in prop::sample::select(vec![0u64, 2, 3, 4, 5, 6, 7, 8, 10]), body in proptest::collection::vec(any::<u8>(), 0..24)) {
            prop_assert_eq!(Message::decode(type_id, &body).ok(), reference::message(type_id, &body));
        }
    }
}

#[cfg(test)]
mod options_decode_tests {
    use super::*;
    use proptest::prelude::*;

    fn prost_options(body: &[u8]) -> Option<Options> {
        reference::checked(body, &[])
    }

    #[test]
    fn a_frame_of_a_million_empty_names_is_refused_before_allocating_them() {
        // `0a 00` is one empty name: 1M of them fit in a 2 MiB body.
        let body: Vec<u8> = [0x0a, 0x00].repeat(1 << 20);
        let err = Message::decode(1, &body).unwrap_err();
        assert!(
            matches!(err, DecodeError::TooLarge { field: "extension names", max, .. } if max == MAX_OPTIONS_NAMES),
            "{err:?}"
        );
        // Exactly the limit still decodes, and the list holds no more than that.
        let body: Vec<u8> = [0x0a, 0x00].repeat(MAX_OPTIONS_NAMES);
        let Message::Options(o) = Message::decode(1, &body).unwrap() else {
            panic!("not Options")
        };
        assert_eq!(o.extensions.len(), MAX_OPTIONS_NAMES);
        assert!(o.extensions.capacity() <= 2 * MAX_OPTIONS_NAMES);
    }

    #[test]
    fn a_data_message_with_too_many_proof_nodes_is_refused() {
        let node = Node {
            index: 0,
            hash: [0; 32],
            size: 0,
        };
        let data = |n: usize| {
            let mut body = Vec::new();
            Data {
                index: 1,
                value: None,
                nodes: vec![node; n],
                signature: None,
            }
            .as_data_ref()
            .encode_body(&mut body);
            body
        };
        assert!(Message::decode(9, &data(MAX_DATA_NODES)).is_ok());
        assert!(matches!(
            Message::decode(9, &data(MAX_DATA_NODES + 1)),
            Err(DecodeError::TooLarge {
                field: "proof nodes",
                ..
            })
        ));
    }

    #[test]
    fn an_overlong_name_is_refused() {
        let name = vec![b'a'; MAX_EXTENSION_NAME_LEN + 1];
        let body = prost::Message::encode_to_vec(&Options {
            extensions: vec![String::from_utf8(name).unwrap()],
            ack: None,
        });
        assert!(matches!(
            Message::decode(1, &body),
            Err(DecodeError::TooLarge {
                field: "an extension name",
                ..
            })
        ));
    }

    #[test]
    fn a_name_that_is_not_utf8_is_refused() {
        assert_eq!(
            Message::decode(1, &[0x0a, 0x01, 0xff]),
            Err(DecodeError::Malformed {
                message: "Options",
                reason: Malformed::NotUtf8 { field: 1 }
            })
        );
        assert!(prost_options(&[0x0a, 0x01, 0xff]).is_none());
    }

    #[test]
    fn options_decode_like_prost_within_the_limits() {
        for o in [
            Options::default(),
            Options {
                extensions: vec!["dazaar/invalid".into(), "dazaar/valid".into()],
                ack: Some(true),
            },
            Options {
                extensions: vec![String::new()],
                ack: Some(false),
            },
        ] {
            let body = prost::Message::encode_to_vec(&o);
            assert_eq!(decode_options(&body).unwrap(), o);
        }
    }

    proptest! {
        #[test]
        fn mutated_options_bodies_decode_the_same(flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..4), cut in 0usize..64) {
            let mut body = prost::Message::encode_to_vec(&Options {
                extensions: vec!["dazaar/one-time-feed".into(), "dazaar/valid".into(), "x".into()],
                ack: Some(true),
            });
            let len = body.len();
            for (at, byte) in flips {
                if let Some(b) = body.get_mut(at % len) {
                    *b = byte;
                }
            }
            body.truncate(cut % (len + 1));
            let ours = decode_options(&body);
            let theirs = prost_options(&body);
            prop_assert_eq!(ours.clone().ok(), theirs, "{:?}", ours);
        }
    }
}
