//! The `wire_messages` and `dazaar_extension_frames` groups of `shared/spec/vectors.json`:
//! every message built from the vector's input fields must encode to the JS bytes, and every
//! JS frame must decode to the JS decoder's view (defaults filled in) and re-encode exactly.

use serde_json::{json, Value};

use super::*;

/// The spec's vectors (the copy in `testdata/`, which a test keeps equal to
/// `shared/spec/vectors.json`).
pub(crate) fn load_vectors() -> Value {
    crate::test_vectors::vectors()
}

/// The vectors of one group.
pub(crate) fn group(vectors: &Value, name: &str) -> Vec<Value> {
    vectors["groups"][name]["vectors"]
        .as_array()
        .unwrap_or_else(|| panic!("group {name} missing"))
        .clone()
}

/// Hex string field → bytes.
pub(crate) use crate::test_vectors::hex_field as hex_of;

fn opt_hex(value: &Value) -> Option<Vec<u8>> {
    value.as_str().map(|s| hex::decode(s).expect("valid hex"))
}

fn opt_u64(value: &Value) -> Option<u64> {
    value.as_u64()
}

fn opt_bool(value: &Value) -> Option<bool> {
    value.as_bool()
}

/// Builds the message JS would encode from the vector's `fields` (absent = not set).
pub(crate) fn message_from_fields(type_name: &str, f: &Value) -> Message {
    match type_name {
        "Open" => Message::Open(Open {
            discovery_key: hex_of(&f["discoveryKey"]),
            capability: opt_hex(&f["capability"]),
        }),
        "Options" => Message::Options(Options {
            extensions: f["extensions"]
                .as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
                .unwrap_or_default(),
            ack: opt_bool(&f["ack"]),
        }),
        "Status" => Message::Status(Status {
            uploading: opt_bool(&f["uploading"]),
            downloading: opt_bool(&f["downloading"]),
        }),
        "Have" => Message::Have(Have {
            start: f["start"].as_u64().unwrap(),
            length: opt_u64(&f["length"]),
            bitfield: opt_hex(&f["bitfield"]),
            ack: opt_bool(&f["ack"]),
        }),
        "Unhave" => Message::Unhave(Unhave {
            start: f["start"].as_u64().unwrap(),
            length: opt_u64(&f["length"]),
        }),
        "Want" => Message::Want(Want {
            start: f["start"].as_u64().unwrap(),
            length: opt_u64(&f["length"]),
        }),
        "Unwant" => Message::Unwant(Unwant {
            start: f["start"].as_u64().unwrap(),
            length: opt_u64(&f["length"]),
        }),
        "Request" => Message::Request(Request {
            index: f["index"].as_u64().unwrap(),
            bytes: opt_u64(&f["bytes"]),
            hash: opt_bool(&f["hash"]),
            nodes: opt_u64(&f["nodes"]),
        }),
        "Cancel" => Message::Cancel(Cancel {
            index: f["index"].as_u64().unwrap(),
            bytes: opt_u64(&f["bytes"]),
            hash: opt_bool(&f["hash"]),
        }),
        "Data" => Message::Data(Data {
            index: f["index"].as_u64().unwrap(),
            value: opt_hex(&f["value"]),
            nodes: f["nodes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|n| Node {
                            index: n["index"].as_u64().unwrap(),
                            hash: hex_of(&n["hash"]).try_into().expect("a 32-byte hash"),
                            size: n["size"].as_u64().unwrap(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            signature: opt_hex(&f["signature"]).map(|s| s.try_into().expect("a 64-byte signature")),
        }),
        "Close" => Message::Close(Close {
            discovery_key: opt_hex(&f["discoveryKey"]),
        }),
        "Extension" => Message::Extension(Extension {
            id: f["id"].as_u64().unwrap(),
            payload: hex_of(&f["message"]),
        }),
        other => panic!("unknown type {other}"),
    }
}

/// What the JS decoder yields for a message: absent optionals replaced by their defaults.
pub(crate) fn decoded_view(message: &Message) -> Value {
    let hex_or_null =
        |v: &Option<Vec<u8>>| v.as_ref().map_or(Value::Null, |b| json!(hex::encode(b)));
    match message {
        Message::Open(m) => json!({
            "discoveryKey": hex::encode(&m.discovery_key),
            "capability": hex_or_null(&m.capability),
        }),
        Message::Options(m) => json!({"extensions": m.extensions, "ack": m.ack()}),
        Message::Status(m) => json!({"uploading": m.uploading(), "downloading": m.downloading()}),
        Message::Have(m) => json!({
            "start": m.start, "length": m.length(), "bitfield": hex_or_null(&m.bitfield), "ack": m.ack(),
        }),
        Message::Unhave(m) => json!({"start": m.start, "length": m.length()}),
        Message::Want(m) => json!({"start": m.start, "length": m.length()}),
        Message::Unwant(m) => json!({"start": m.start, "length": m.length()}),
        Message::Request(m) => json!({
            "index": m.index, "bytes": m.bytes(), "hash": m.hash(), "nodes": m.nodes(),
        }),
        Message::Cancel(m) => json!({"index": m.index, "bytes": m.bytes(), "hash": m.hash()}),
        Message::Data(m) => json!({
            "index": m.index,
            "value": hex_or_null(&m.value),
            "nodes": m.nodes.iter().map(|n| json!({
                "index": n.index, "hash": hex::encode(n.hash), "size": n.size,
            })).collect::<Vec<_>>(),
            "signature": m.signature.map_or(Value::Null, |s| json!(hex::encode(s))),
        }),
        Message::Close(m) => json!({"discoveryKey": hex_or_null(&m.discovery_key)}),
        Message::Extension(e) => json!({"id": e.id, "payload": hex::encode(&e.payload)}),
        Message::Unknown { type_id, body } => json!({"type": type_id, "body": hex::encode(body)}),
    }
}

fn decode_one(bytes: &[u8]) -> Decoded {
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    decoder.decode_all(bytes, &mut out).expect("frame decodes");
    assert_eq!(out.len(), 1, "exactly one item in {}", hex::encode(bytes));
    assert!(decoder.is_idle());
    out.remove(0)
}

#[test]
fn wire_message_vectors() {
    let vectors = load_vectors();
    let mut checked = 0;
    for v in group(&vectors, "wire_messages") {
        let name = v["name"].as_str().unwrap();
        let type_name = v["inputs"]["type"].as_str().unwrap();
        if type_name == "Ping" {
            let bytes = hex_of(&v["outputs"]["frames"]["any"]);
            assert_eq!(decode_one(&bytes), Decoded::KeepAlive, "{name}");
            checked += 1;
            continue;
        }
        let built = message_from_fields(type_name, &v["inputs"]["fields"]);
        assert_eq!(
            u64::from(built.type_id()),
            v["inputs"]["typeId"].as_u64().unwrap()
        );
        let mut body = Vec::new();
        built.encode_body(&mut body);
        assert_eq!(
            hex::encode(&body),
            v["outputs"]["body"].as_str().unwrap(),
            "{name}: body"
        );
        assert_eq!(built.encoded_len(), body.len());
        for (key, channel) in [("channel0", 0u64), ("channel1", 1u64)] {
            let frame = hex_of(&v["outputs"]["frames"][key]);
            assert_eq!(
                frame_to_vec(channel, &built).unwrap(),
                frame,
                "{name}: {key}"
            );
            let Decoded::Frame(decoded) = decode_one(&frame) else {
                panic!("{name}: not a frame")
            };
            assert_eq!(decoded.channel, channel);
            assert_eq!(decoded.message, built, "{name}: decode round trip");
            if !v["outputs"]["decoded"].is_null() {
                assert_eq!(
                    decoded_view(&decoded.message),
                    v["outputs"]["decoded"],
                    "{name}: view"
                );
            }
            // Byte-at-a-time feeding gives the same result.
            let mut decoder = FrameDecoder::new();
            let mut items = Vec::new();
            for byte in &frame {
                decoder
                    .decode_all(std::slice::from_ref(byte), &mut items)
                    .unwrap();
            }
            assert_eq!(items, vec![Decoded::Frame(decoded)]);
        }
        checked += 1;
    }
    assert_eq!(checked, 26);
}

#[test]
fn dazaar_extension_frame_vectors() {
    let vectors = load_vectors();
    let v = &group(&vectors, "dazaar_extension_frames")[0];
    let mut all = Vec::new();
    for step in v["outputs"]["sequence"].as_array().unwrap() {
        for frame in step["frames"].as_array().unwrap() {
            let bytes = hex_of(frame);
            let Decoded::Frame(decoded) = decode_one(&bytes) else {
                panic!("not a frame")
            };
            assert_eq!(decoded.channel, 0);
            assert_eq!(frame_to_vec(0, &decoded.message).unwrap(), bytes);
            all.extend_from_slice(&bytes);
        }
    }
    // The whole sequence as one chunk.
    let mut out = Vec::new();
    FrameDecoder::new().decode_all(&all, &mut out).unwrap();
    assert_eq!(out.len(), 6);
    let Decoded::Frame(Frame {
        message: Message::Extension(ext),
        ..
    }) = &out[1]
    else {
        panic!("second frame is the seller-id extension")
    };
    assert_eq!(ext.id, 2);
    assert_eq!(ext.payload, vec![7u8; 32]);
}

#[test]
fn constructors_match_js_encodings() {
    let body = |m: Message| {
        let mut out = Vec::new();
        m.encode_body(&mut out);
        hex::encode(out)
    };
    assert_eq!(body(Message::Status(Status::new(true, false))), "08011000");
    assert_eq!(body(Message::Want(Want::range(0, 1 << 20))), "080010808040");
    assert_eq!(body(Message::Have(Have::block(4))), "0804");
    assert_eq!(
        body(Message::Have(Have::with_bitfield(
            0,
            1 << 20,
            vec![2, 0xf8]
        ))),
        "0800108080401a0202f8"
    );
    assert_eq!(
        body(Message::Have(Have::with_bitfield(0, 1 << 20, vec![]))),
        "0800108080401a00"
    );
    assert_eq!(
        body(Message::Request(Request::block(5, 10))),
        "08051000180020".to_string() + "0a"
    );
    assert_eq!(body(Message::Unhave(Unhave::block(7))), "0807");
}

#[test]
fn malformed_frames_are_typed_errors() {
    let decode = |bytes: &[u8]| {
        let mut out = Vec::new();
        FrameDecoder::new().decode_all(bytes, &mut out).map(|_| out)
    };
    // Length varint of 9 bytes.
    assert!(matches!(decode(&[0x80; 9]), Err(FrameError::Length(_))));
    // Announced body larger than 8 MiB.
    let mut big = Vec::new();
    varint::encode(MAX_BODY_LEN as u64 + 2, &mut big);
    big.push(0x10);
    assert!(matches!(decode(&big), Err(FrameError::TooLarge { .. })));
    // Header longer than the frame: L = 1, header = 2-byte varint.
    assert!(matches!(
        decode(&[0x01, 0x80, 0x01]),
        Err(FrameError::HeaderOverrun)
    ));
    // Have without the required start.
    assert!(matches!(
        decode(&[0x03, 0x13, 0x10, 0x01]),
        Err(FrameError::Message {
            source: DecodeError::MissingField { field: "start", .. },
            ..
        })
    ));
    // Open without discovery key.
    assert!(matches!(
        decode(&[0x01, 0x10]),
        Err(FrameError::Message {
            source: DecodeError::MissingField { .. },
            ..
        })
    ));
    // Data node without hash.
    assert!(matches!(
        decode(&hex::decode("0b19080a1a06080018012000").unwrap()),
        Err(FrameError::Message { .. })
    ));
    // Truncated length-delimited field.
    assert!(matches!(
        decode(&[0x03, 0x10, 0x0a, 0x05]),
        Err(FrameError::Message { .. })
    ));
    // Extension with a broken id varint.
    assert!(matches!(
        decode(&[0x02, 0x0f, 0x80]),
        Err(FrameError::Message { .. })
    ));
    // Types 11..14 are passed through as Unknown.
    let out = decode(&[0x02, 0x1b, 0x55]).unwrap();
    assert_eq!(
        out,
        vec![Decoded::Frame(Frame {
            channel: 1,
            message: Message::Unknown {
                type_id: 11,
                body: vec![0x55]
            }
        })]
    );
    // A small limit is honoured.
    let mut d = FrameDecoder::with_max_body(4);
    let mut out = Vec::new();
    assert!(d
        .decode_all(&hex::decode("0715080010808040").unwrap(), &mut out)
        .is_err());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn random_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let mut decoder = FrameDecoder::with_max_body(1024);
            let mut out = Vec::new();
            for chunk in &chunks {
                if decoder.decode_all(chunk, &mut out).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn extension_round_trip(channel in 0u64..1_000_000, id: u64, payload in proptest::collection::vec(any::<u8>(), 0..100), split in 0usize..120) {
            let message = Message::Extension(Extension { id, payload });
            let bytes = frame_to_vec(channel, &message).unwrap();
            let split = split.min(bytes.len());
            let mut decoder = FrameDecoder::new();
            let mut out = Vec::new();
            decoder.decode_all(&bytes[..split], &mut out).unwrap();
            decoder.decode_all(&bytes[split..], &mut out).unwrap();
            prop_assert_eq!(out, vec![Decoded::Frame(Frame { channel, message })]);
        }
    }
}

#[test]
fn noise_payload_vectors() {
    let vectors = load_vectors();
    for v in group(&vectors, "noise_payload") {
        let nonce = hex_of(&v["inputs"]["nonce"]);
        let body = NoisePayload {
            nonce: nonce.clone(),
        }
        .to_bytes();
        assert_eq!(hex::encode(&body), v["outputs"]["body"].as_str().unwrap());
        assert_eq!(NoisePayload::decode_checked(&body).unwrap().nonce, nonce);
    }
    assert!(matches!(
        NoisePayload::decode_checked(&[]),
        Err(DecodeError::MissingField { field: "nonce", .. })
    ));
}
