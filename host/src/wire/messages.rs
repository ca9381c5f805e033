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

/// One Merkle tree node of a proof (`Data.Node`); all fields required.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Node {
    /// Flat-tree index.
    #[prost(uint64, required, tag = "1")]
    pub index: u64,
    /// BLAKE2b-256 hash.
    #[prost(bytes = "vec", required, tag = "2")]
    pub hash: Vec<u8>,
    /// Byte size of the data under the node.
    #[prost(uint64, required, tag = "3")]
    pub size: u64,
}

/// Type 9: a block (or only its proof) with proof nodes and a signature.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Data {
    /// Block index (required).
    #[prost(uint64, required, tag = "1")]
    pub index: u64,
    /// Block bytes; absent for hash-only answers.
    #[prost(bytes = "vec", optional, tag = "2")]
    pub value: Option<Vec<u8>>,
    /// Proof nodes.
    #[prost(message, repeated, tag = "3")]
    pub nodes: Vec<Node>,
    /// Signature over the root hash (WIRE §1.3).
    #[prost(bytes = "vec", optional, tag = "4")]
    pub signature: Option<Vec<u8>>,
}

/// A borrowed [`Data`] for the upload path: encodes to the same bytes without copying the
/// block or allocating per proof node.
#[derive(Debug, Clone, Copy)]
pub struct DataRef<'a> {
    /// Block index.
    pub index: u64,
    /// Block bytes; `None` for hash-only answers.
    pub value: Option<&'a [u8]>,
    /// Proof nodes.
    pub nodes: &'a [crate::storage::Node],
    /// Signature over the roots.
    pub signature: Option<&'a [u8; 64]>,
}

impl DataRef<'_> {
    fn node_len(n: &crate::storage::Node) -> usize {
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

    /// Appends the body (field order and presence as prost writes [`Data`]).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(0x08);
        varint::encode(self.index, out);
        if let Some(v) = self.value {
            out.push(0x12);
            varint::encode(v.len() as u64, out);
            out.extend_from_slice(v);
        }
        for n in self.nodes {
            out.push(0x1a);
            varint::encode(Self::node_len(n) as u64, out);
            out.push(0x08);
            varint::encode(n.index, out);
            out.push(0x12);
            out.push(32);
            out.extend_from_slice(&n.hash);
            out.push(0x18);
            varint::encode(n.size, out);
        }
        if let Some(sig) = self.signature {
            out.push(0x22);
            out.push(64);
            out.extend_from_slice(sig);
        }
    }

    /// The owned message.
    pub fn to_data(&self) -> Data {
        Data {
            index: self.index,
            value: self.value.map(<[u8]>::to_vec),
            nodes: self
                .nodes
                .iter()
                .map(|n| Node {
                    index: n.index,
                    hash: n.hash.to_vec(),
                    size: n.size,
                })
                .collect(),
            signature: self.signature.map(|s| s.to_vec()),
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
    /// The protobuf structure is broken (bad tag, wire type, truncated field, bad UTF-8).
    #[error("malformed {message} message: {source}")]
    Protobuf {
        /// Message name.
        message: &'static str,
        /// What prost reported.
        source: prost::DecodeError,
    },
    /// A proto2 `required` field is absent.
    #[error("{message} message lacks required field {field}")]
    MissingField {
        /// Message name.
        message: &'static str,
        /// Field name as in schema.proto.
        field: &'static str,
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
            Message::Data(m) => m.encoded_len(),
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
            Message::Data(m) => m.encode_raw(out),
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
            0 => Message::Open(decode_checked(body, "Open", &[(1, "discoveryKey")])?),
            1 => Message::Options(decode_options(body)?),
            2 => Message::Status(decode_checked(body, "Status", &[])?),
            3 => Message::Have(decode_checked(body, "Have", &[(1, "start")])?),
            4 => Message::Unhave(decode_checked(body, "Unhave", &[(1, "start")])?),
            5 => Message::Want(decode_checked(body, "Want", &[(1, "start")])?),
            6 => Message::Unwant(decode_checked(body, "Unwant", &[(1, "start")])?),
            7 => Message::Request(decode_checked(body, "Request", &[(1, "index")])?),
            8 => Message::Cancel(decode_checked(body, "Cancel", &[(1, "index")])?),
            9 => Message::Data(decode_data(body)?),
            10 => Message::Close(decode_checked(body, "Close", &[])?),
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
        decode_checked(body, "NoisePayload", &[(1, "nonce")])
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

fn decode_checked<M: prost::Message + Default>(
    body: &[u8],
    message: &'static str,
    required: &[(u32, &'static str)],
) -> Result<M, DecodeError> {
    let present = present_fields(body, message)?;
    for &(tag, field) in required {
        if !present.contains(&tag) {
            return Err(DecodeError::MissingField { message, field });
        }
    }
    M::decode(body).map_err(|source| DecodeError::Protobuf { message, source })
}

/// `Data.nodes` entries are messages with three required fields; prost would fill them with
/// zeros, so check each entry's field numbers first. (The reference path that
/// [`decode_data`] is tested against.)
#[cfg(test)]
fn check_node_fields(body: &[u8]) -> Result<(), DecodeError> {
    let mut rest = body;
    while !rest.is_empty() {
        let field = next_field(&mut rest, "Data")?;
        if field.tag == 3 {
            if let Some(inner) = field.delimited {
                let present = present_fields(inner, "Data.Node")?;
                for (tag, name) in [(1, "index"), (2, "hash"), (3, "size")] {
                    if !present.contains(&tag) {
                        return Err(DecodeError::MissingField {
                            message: "Data.Node",
                            field: name,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// One field of a protobuf body with its value: a varint, or a length-delimited slice
/// (fixed-width values are skipped, as no known field uses them).
enum FieldValue<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn next_value<'a>(
    rest: &mut &'a [u8],
    message: &'static str,
) -> Result<(u32, FieldValue<'a>), DecodeError> {
    let input: &'a [u8] = rest;
    let (key, used) = varint::decode(input).map_err(|_| malformed(message, "bad field key"))?;
    let tag = u32::try_from(key >> 3).map_err(|_| malformed(message, "field number too large"))?;
    // As prost: field numbers are 1 ..= 2^29 - 1.
    if tag == 0 || tag > 0x1fff_ffff {
        return Err(malformed(message, "invalid field number"));
    }
    let after_key = input.get(used..).unwrap_or_default();
    let (value, skip) = match key & 7 {
        0 => {
            let (v, n) =
                varint::decode(after_key).map_err(|_| malformed(message, "bad varint field"))?;
            (FieldValue::Varint(v), n)
        }
        1 => (FieldValue::Other, 8),
        5 => (FieldValue::Other, 4),
        2 => {
            let (len, n) = varint::decode(after_key)
                .map_err(|_| malformed(message, "bad length-delimited field"))?;
            let len = usize::try_from(len).map_err(|_| malformed(message, "field too long"))?;
            let end = n
                .checked_add(len)
                .ok_or_else(|| malformed(message, "field too long"))?;
            let value = after_key
                .get(n..end)
                .ok_or_else(|| malformed(message, "truncated field"))?;
            (FieldValue::Bytes(value), end)
        }
        _ => return Err(malformed(message, "unsupported wire type")),
    };
    *rest = after_key
        .get(skip..)
        .ok_or_else(|| malformed(message, "truncated field"))?;
    Ok((tag, value))
}

/// `Data` in one pass (the hot message of replication), with the same outcome as the
/// checked prost decoding: required fields enforced (also inside each `Node`), the last
/// occurrence of a scalar wins, unknown fields skipped, a known field with the wrong wire
/// type refused.
fn decode_data(body: &[u8]) -> Result<Data, DecodeError> {
    const WRONG: &str = "invalid wire type";
    let mut index = None;
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
            (4, FieldValue::Bytes(b)) => data.signature = Some(b.to_vec()),
            (1..=4, _) => return Err(malformed("Data", WRONG)),
            _ => {}
        }
    }
    data.index = index.ok_or(DecodeError::MissingField {
        message: "Data",
        field: "index",
    })?;
    Ok(data)
}

/// `Options` in one pass, with the same outcome as prost's decoding for bodies within the
/// limits: names are counted and measured before a `String` is made for them, so the
/// decoded list holds at most [`MAX_OPTIONS_NAMES`] names of at most
/// [`MAX_EXTENSION_NAME_LEN`] bytes whatever the frame size.
fn decode_options(body: &[u8]) -> Result<Options, DecodeError> {
    const WRONG: &str = "invalid wire type";
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
                let name = std::str::from_utf8(b).map_err(|_| {
                    malformed("Options", "invalid string value: data is not UTF-8 encoded")
                })?;
                options.extensions.push(name.to_owned());
            }
            (2, FieldValue::Varint(v)) => options.ack = Some(v != 0),
            (1..=2, _) => return Err(malformed("Options", WRONG)),
            _ => {}
        }
    }
    Ok(options)
}

fn decode_node(body: &[u8]) -> Result<Node, DecodeError> {
    const WRONG: &str = "invalid wire type";
    let (mut index, mut hash, mut size) = (None, None, None);
    let mut rest = body;
    while !rest.is_empty() {
        match next_value(&mut rest, "Data.Node")? {
            (1, FieldValue::Varint(v)) => index = Some(v),
            (2, FieldValue::Bytes(b)) => hash = Some(b),
            (3, FieldValue::Varint(v)) => size = Some(v),
            (1..=3, _) => return Err(malformed("Data.Node", WRONG)),
            _ => {}
        }
    }
    let missing = |field| DecodeError::MissingField {
        message: "Data.Node",
        field,
    };
    Ok(Node {
        index: index.ok_or_else(|| missing("index"))?,
        hash: hash.ok_or_else(|| missing("hash"))?.to_vec(),
        size: size.ok_or_else(|| missing("size"))?,
    })
}

struct RawField<'a> {
    tag: u32,
    #[cfg_attr(not(test), allow(dead_code))]
    delimited: Option<&'a [u8]>,
}

/// Field numbers that occur in `body` (deduplicated, small: messages have ≤ 4 fields, but
/// a peer may repeat or add unknown ones, so only the known range 1..=4 is recorded).
fn present_fields(body: &[u8], message: &'static str) -> Result<Vec<u32>, DecodeError> {
    let mut present = Vec::with_capacity(4);
    let mut rest = body;
    while !rest.is_empty() {
        let field = next_field(&mut rest, message)?;
        if (1..=4).contains(&field.tag) && !present.contains(&field.tag) {
            present.push(field.tag);
        }
    }
    Ok(present)
}

fn malformed(message: &'static str, what: &'static str) -> DecodeError {
    DecodeError::Protobuf {
        message,
        source: prost::DecodeError::new(what),
    }
}

/// Reads one protobuf field header and skips its value.
fn next_field<'a>(rest: &mut &'a [u8], message: &'static str) -> Result<RawField<'a>, DecodeError> {
    let input: &'a [u8] = rest;
    let (key, used) = varint::decode(input).map_err(|_| malformed(message, "bad field key"))?;
    let tag = u32::try_from(key >> 3).map_err(|_| malformed(message, "field number too large"))?;
    // As prost: field numbers are 1 ..= 2^29 - 1.
    if tag == 0 || tag > 0x1fff_ffff {
        return Err(malformed(message, "invalid field number"));
    }
    let after_key = input.get(used..).unwrap_or_default();
    let (skip, delimited) = match key & 7 {
        0 => {
            let (_, n) =
                varint::decode(after_key).map_err(|_| malformed(message, "bad varint field"))?;
            (n, None)
        }
        1 => (8, None),
        5 => (4, None),
        2 => {
            let (len, n) = varint::decode(after_key)
                .map_err(|_| malformed(message, "bad length-delimited field"))?;
            let len = usize::try_from(len).map_err(|_| malformed(message, "field too long"))?;
            let end = n
                .checked_add(len)
                .ok_or_else(|| malformed(message, "field too long"))?;
            let value = after_key
                .get(n..end)
                .ok_or_else(|| malformed(message, "truncated field"))?;
            (end, Some(value))
        }
        _ => return Err(malformed(message, "unsupported wire type")),
    };
    *rest = after_key
        .get(skip..)
        .ok_or_else(|| malformed(message, "truncated field"))?;
    Ok(RawField { tag, delimited })
}

#[cfg(test)]
mod data_decode_tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(body: &[u8]) -> Result<Data, DecodeError> {
        check_node_fields(body)?;
        decode_checked(body, "Data", &[(1, "index")])
    }

    fn sample() -> Vec<u8> {
        let data = Data {
            index: 300,
            value: Some(b"hello".to_vec()),
            nodes: vec![
                Node {
                    index: 1,
                    hash: vec![7; 32],
                    size: 10,
                },
                Node {
                    index: 5,
                    hash: vec![8; 32],
                    size: 20,
                },
            ],
            signature: Some(vec![9; 64]),
        };
        prost::Message::encode_to_vec(&data)
    }

    #[test]
    fn one_pass_data_decoding_matches_the_checked_prost_path() {
        let body = sample();
        assert_eq!(decode_data(&body).unwrap(), reference(&body).unwrap());
        let empty = prost::Message::encode_to_vec(&Data {
            index: 0,
            ..Data::default()
        });
        assert_eq!(decode_data(&empty).unwrap(), reference(&empty).unwrap());
        assert!(decode_data(&[]).is_err() && reference(&[]).is_err());
    }

    #[test]
    fn borrowed_data_encodes_like_prost() {
        let nodes = [
            crate::storage::Node {
                index: 0,
                hash: [1; 32],
                size: 0,
            },
            crate::storage::Node {
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
                let theirs = prost::Message::encode_to_vec(&r.to_data());
                assert_eq!(ours, theirs);
                assert_eq!(r.encoded_len(), theirs.len());
            }
        }
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
            let theirs = reference(&body);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?} vs {:?}", ours, theirs);
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                prop_assert_eq!(a, b);
            }
        }
    }
}

#[cfg(test)]
mod options_decode_tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(body: &[u8]) -> Result<Options, DecodeError> {
        decode_checked(body, "Options", &[])
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
            hash: Vec::new(),
            size: 0,
        };
        let data = |n: usize| {
            prost::Message::encode_to_vec(&Data {
                index: 1,
                value: None,
                nodes: vec![node.clone(); n],
                signature: None,
            })
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
            let theirs = reference(&body);
            prop_assert_eq!(ours.is_ok(), theirs.is_ok(), "{:?} vs {:?}", ours, theirs);
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                prop_assert_eq!(a, b);
            }
        }
    }
}
