//! Bodies of the coverage-guided fuzz targets (`fuzz/` at the repository root) and of the
//! corpus replay test (`tests/tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes, feeds them to one parser of untrusted input, and
//! panics only when an invariant breaks: decoding never panics, never allocates beyond its
//! bound, and what decodes re-encodes to something that decodes to the same value. The
//! harnesses in `fuzz/` are one line each, so the fuzzer and the test suite run the same
//! code. Not part of the stable API.

use std::path::Path;

use crate::crypto::NoiseKeyPair;
use crate::noise::{Handshake, HandshakeParams, Transport, MAX_HANDSHAKE_MESSAGE_LEN};
use crate::protocol::{Event, Session, SessionConfig};
use crate::wire::{self, rle, varint, Decoded, Extension, FrameDecoder, Message, NoisePayload};

/// The largest single chunk handed to a decoder, so that one input exercises the
/// incremental paths (a varint or a body split across chunks).
const MAX_CHUNK: usize = 64;

/// Splits `data` into a chunk-size schedule (first byte) and the rest.
fn chunk_sizes(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (usize::from(first) % MAX_CHUNK + 1, rest),
        None => (MAX_CHUNK, data),
    }
}

/// Re-encodes a decoded frame and checks that it decodes to the same frame.
fn assert_frame_round_trip(channel: u64, message: &Message) {
    let Ok(bytes) = wire::frame_to_vec(channel, message) else {
        // Only a channel id or body over the limits cannot be encoded; the decoder
        // enforced both.
        panic!("a decoded frame (channel {channel}) cannot be re-encoded");
    };
    let mut decoder = FrameDecoder::new();
    let mut out = Vec::new();
    decoder
        .decode_all(&bytes, &mut out)
        .unwrap_or_else(|e| panic!("re-encoded frame does not decode: {e}"));
    match out.as_slice() {
        [Decoded::Frame(f)] => {
            assert_eq!(f.channel, channel, "channel changed in the round trip");
            assert_eq!(&f.message, message, "message changed in the round trip");
        }
        other => panic!("re-encoded frame decoded to {} items", other.len()),
    }
}

/// Target `wire_frames`: the frame decoder fed in chunks, then every message type's body
/// decoder on its own. Layout: `[chunk] [max_body] [type] rest`; `rest` is both the frame
/// stream and the body of a message of type `type % 16`.
pub fn wire_frames(data: &[u8]) {
    let (chunk, data) = chunk_sizes(data);
    let Some((&limit, data)) = data.split_first() else {
        return;
    };
    // Small body limits reach the TooLarge paths with short inputs.
    let max_body = match limit % 4 {
        0 => wire::MAX_BODY_LEN,
        1 => 16,
        2 => 1024,
        _ => usize::from(limit),
    };
    let Some((&type_id, body)) = data.split_first() else {
        return;
    };

    let mut decoder = FrameDecoder::with_max_body(max_body);
    let mut stream = Vec::new();
    let mut failed = false;
    for piece in body.chunks(chunk) {
        let mut input = piece;
        loop {
            match decoder.decode_next(&mut input) {
                Ok(Some(Decoded::KeepAlive)) => stream.push(Decoded::KeepAlive),
                Ok(Some(Decoded::Frame(frame))) => {
                    assert!(
                        frame.message.encoded_len() <= max_body,
                        "decoder returned a body over its limit"
                    );
                    assert_frame_round_trip(frame.channel, &frame.message);
                    stream.push(Decoded::Frame(frame));
                }
                Ok(None) => {
                    assert!(input.is_empty(), "decoder stopped before the chunk's end");
                    break;
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // A failed decoder must stay failed.
            let mut rest: &[u8] = &[0];
            assert!(decoder.decode_next(&mut rest).is_err());
            break;
        }
    }
    if !failed {
        // Decoding the same bytes in one piece gives the same items.
        let mut whole = Vec::new();
        let mut again = FrameDecoder::with_max_body(max_body);
        again
            .decode_all(body, &mut whole)
            .unwrap_or_else(|e| panic!("one-piece decode failed where chunked did not: {e}"));
        assert_eq!(whole, stream, "chunking changed the decoded items");
    }

    // Every message type's body decoder, and the handshake payload.
    let type_id = u64::from(type_id % 16);
    if let Ok(message) = Message::decode(type_id, body) {
        assert_eq!(
            u64::from(message.type_id()),
            type_id,
            "decoded type changed"
        );
        let mut encoded = Vec::new();
        message.encode_body(&mut encoded);
        assert_eq!(encoded.len(), message.encoded_len(), "encoded_len is wrong");
        let again = Message::decode(type_id, &encoded)
            .unwrap_or_else(|e| panic!("re-encoded body does not decode: {e}"));
        assert_eq!(again, message, "body changed in the round trip");
        if message.encoded_len() <= wire::MAX_BODY_LEN {
            assert_frame_round_trip(type_id, &message);
        }
    }
    if let Ok(payload) = NoisePayload::decode_checked(body) {
        let again = NoisePayload::decode_checked(&payload.to_bytes())
            .unwrap_or_else(|e| panic!("re-encoded NoisePayload does not decode: {e}"));
        assert_eq!(again, payload);
    }
    // The RLE bitfield carried in Have.
    if let Ok(Message::Have(have)) = Message::decode(3, body) {
        if let Some(bits) = have.bitfield.as_deref() {
            let _ = rle::decode(bits, 4, 1 << 20);
        }
    }
}

/// Target `bitfield_rle`: `rle::decode` under a bound, and `encode` → `decode` giving the
/// bitfield back. Layout: `[align] [max_len] rest`.
pub fn bitfield_rle(data: &[u8]) {
    let [align, max, rest @ ..] = data else {
        return;
    };
    let align = usize::from(*align % 8) + 1;
    let max_len = usize::from(*max) * 64;
    match rle::decode(rest, align, max_len) {
        Ok(bits) => {
            assert!(
                bits.len() <= max_len.max(align),
                "decode exceeded its bound"
            );
            assert_eq!(bits.len() % align, 0, "decode ignored the alignment");
            // Re-encoding what was decoded and decoding it again is stable.
            let encoded = rle::encode(&bits);
            let again = rle::decode(&encoded, align, usize::MAX)
                .unwrap_or_else(|e| panic!("encoder output does not decode: {e}"));
            assert_eq!(trim(&again), trim(&bits), "decode(encode(x)) != x");
        }
        Err(rle::RleError::TooLarge { max }) => assert_eq!(max, max_len),
        Err(_) => {}
    }
    // The encoder on the raw bytes as a bitfield.
    let encoded = rle::encode(rest);
    let decoded = rle::decode(&encoded, 1, rest.len())
        .unwrap_or_else(|e| panic!("encoder output does not decode within its length: {e}"));
    assert_eq!(trim(&decoded), trim(rest), "decode(encode(x)) != x");
}

fn trim(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    bytes.get(..end).unwrap_or_default()
}

fn test_noise_key(seed: u8) -> NoiseKeyPair {
    NoiseKeyPair::from_seed(&[seed; 32])
}

fn test_params(seed: u8) -> HandshakeParams {
    HandshakeParams {
        nonce: [seed; 24],
        ephemeral_secret: Some([seed.wrapping_add(1); 32]),
    }
}

/// Target `noise_handshake`. The first byte picks a mode:
/// - even: the rest is raw bytes from the network, fed in chunks to a responder and to an
///   initiator (after its first message);
/// - odd: a well-behaved peer (snow with fixed keys) writes one handshake message whose
///   Noise payload is the fuzz input, so the payload decoder behind the encryption is
///   reached; the framing of that message can be corrupted too.
pub fn noise_handshake(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let (chunk, rest) = chunk_sizes(rest);
        for initiator in [false, true] {
            let Ok(mut hs) = Handshake::with_params(initiator, &test_noise_key(1), test_params(3))
            else {
                panic!("handshake setup failed");
            };
            let _ = hs.take_outgoing();
            for piece in rest.chunks(chunk) {
                match hs.receive(piece, &mut |_| true) {
                    Ok(n) => assert!(n <= piece.len(), "consumed more than given"),
                    Err(_) => break,
                }
                if hs.is_finished() {
                    break;
                }
            }
            // A responder cannot finish from a stranger's bytes alone, nor an initiator
            // whose messages 2 would need the responder's keys.
            assert!(!hs.is_finished() || hs.finish().is_ok());
        }
        return;
    }
    let Some((&shape, payload)) = rest.split_first() else {
        return;
    };
    let Some(payload) = payload.get(..payload.len().min(MAX_HANDSHAKE_MESSAGE_LEN - 200)) else {
        return;
    };
    // We are the initiator and the peer answers message 2, or we are the responder and
    // the peer's message 3 carries the fuzz payload.
    let we_initiate = shape & 1 == 1;
    let Ok(mut ours) = Handshake::with_params(we_initiate, &test_noise_key(1), test_params(3))
    else {
        panic!("handshake setup failed");
    };
    let Ok(params) = crate::noise::NOISE_PARAMS.parse::<snow::params::NoiseParams>() else {
        panic!("Noise parameters do not parse");
    };
    let peer_key = test_noise_key(2).secret_key();
    let peer_ephemeral = [9u8; 32];
    let builder = snow::Builder::new(params)
        .local_private_key(&peer_key)
        .fixed_ephemeral_key_for_testing_only(&peer_ephemeral);
    let peer = if we_initiate {
        builder.build_responder()
    } else {
        builder.build_initiator()
    };
    let Ok(mut peer) = peer else {
        panic!("snow peer setup failed");
    };
    let good_payload = NoisePayload { nonce: vec![7; 24] }.to_bytes();
    let mut buf = vec![0u8; MAX_HANDSHAKE_MESSAGE_LEN];
    let mut pbuf = vec![0u8; MAX_HANDSHAKE_MESSAGE_LEN];
    let frame = |message: &[u8]| {
        let mut out = Vec::new();
        varint::encode(message.len() as u64, &mut out);
        out.extend_from_slice(message);
        out
    };
    let strip = |framed: &[u8]| -> Vec<u8> {
        varint::decode(framed)
            .ok()
            .and_then(|(_, used)| framed.get(used..))
            .unwrap_or_default()
            .to_vec()
    };
    let fuzz_message = if we_initiate {
        // Message 1 from us, message 2 (with the fuzz payload) from the peer.
        let m1 = strip(&ours.take_outgoing());
        if peer.read_message(&m1, &mut pbuf).is_err() {
            panic!("peer rejected our message 1");
        }
        let Ok(n) = peer.write_message(payload, &mut buf) else {
            return;
        };
        buf.get(..n).unwrap_or_default().to_vec()
    } else {
        let Ok(n) = peer.write_message(&good_payload, &mut buf) else {
            panic!("peer message 1 failed");
        };
        let m1 = frame(buf.get(..n).unwrap_or_default());
        if ours.receive(&m1, &mut |_| true).is_err() {
            panic!("our responder rejected a good message 1");
        }
        let m2 = strip(&ours.take_outgoing());
        if peer.read_message(&m2, &mut pbuf).is_err() {
            panic!("peer rejected our message 2");
        }
        let Ok(n) = peer.write_message(payload, &mut buf) else {
            return;
        };
        buf.get(..n).unwrap_or_default().to_vec()
    };
    let mut framed = frame(&fuzz_message);
    // Corrupt one byte of the frame when asked (bit 1), so the MAC and length paths run
    // with a real message around them.
    if shape & 2 == 2 && !framed.is_empty() {
        let at = usize::from(shape >> 2) % framed.len();
        if let Some(b) = framed.get_mut(at) {
            *b ^= 0x5a;
        }
    }
    let result = ours.receive(&framed, &mut |_| true);
    let payload_ok = NoisePayload::decode_checked(payload)
        .ok()
        .is_some_and(|p| p.nonce.len() == 24);
    if shape & 2 == 0 {
        assert_eq!(
            result.is_ok(),
            payload_ok,
            "an intact message was judged by something other than its payload"
        );
    }
    if result.is_ok() && ours.is_finished() {
        match ours.finish() {
            Ok(Transport { remote_nonce, .. }) => assert_eq!(remote_nonce.len(), 24),
            Err(e) => panic!("finished handshake did not finish: {e}"),
        }
    }
}

/// What the buyer makes of a seller's extension payload (see `market::buyer`), and what
/// the seller makes of a buyer's user message.
fn read_ext_payload(name: &str, payload: &[u8]) {
    use crate::market::ext;
    match name {
        ext::ONE_TIME_FEED => {
            if let Ok(key) = <[u8; 32]>::try_from(payload) {
                let _ = crate::crypto::discovery_key(&key);
            }
        }
        ext::VALID => {
            let info = serde_json::from_slice(payload).unwrap_or(serde_json::Value::Null);
            let _ = info.to_string();
        }
        ext::INVALID => {
            let _reason = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "invalid".into());
        }
        ext::USER_MESSAGE => user_message(payload),
        ext::TERMS_OF_USE | ext::SELLER_ID => {
            let _ = String::from_utf8_lossy(payload);
        }
        _ => {}
    }
}

/// `dazaar/user-message`: parse, re-encode, parse again to the same message.
fn user_message(payload: &[u8]) {
    use crate::payments::{encode_user_message, parse_user_message, MAX_USER_MESSAGE};
    if let Ok(m) = parse_user_message(payload) {
        assert!(payload.len() <= MAX_USER_MESSAGE);
        let encoded = encode_user_message(&m);
        let again = parse_user_message(&encoded)
            .unwrap_or_else(|e| panic!("re-encoded user message does not parse: {e}"));
        assert_eq!(again.name.as_str(), m.name.as_str());
        assert_eq!(again.message.as_str(), m.message.as_str());
    }
}

/// Target `ext_payloads`: the first byte picks one of the six Dazaar extensions, the rest
/// is its payload, read as the receiving side reads it.
pub fn ext_payloads(data: &[u8]) {
    let Some((&which, payload)) = data.split_first() else {
        return;
    };
    let names = crate::market::ext::ALL;
    let name = names[usize::from(which) % names.len()];
    read_ext_payload(name, payload);
    // And through the wire: an Extension frame carrying it decodes to the same payload.
    let message = Message::Extension(Extension {
        id: u64::from(which),
        payload: payload.to_vec(),
    });
    if message.encoded_len() <= wire::MAX_BODY_LEN {
        assert_frame_round_trip(0, &message);
    }
}

/// The feed key the session target's victim has opened.
const SESSION_FEED_KEY: [u8; 32] = [0x42; 32];

/// A responder session after a completed handshake with an attacker that holds the
/// transport keys, so that the fuzz input reaches the frame handling.
fn established_session() -> (Session, Transport) {
    let mut config = SessionConfig::new(false, test_noise_key(1));
    config.handshake_params = Some(test_params(3));
    let Ok(mut victim) = Session::new(config, 0) else {
        panic!("session setup failed");
    };
    for name in crate::market::ext::ALL {
        if victim.register_extension(name).is_err() {
            panic!("registering {name} failed");
        }
    }
    if victim.open_channel(&SESSION_FEED_KEY).is_err() {
        panic!("opening the victim's channel failed");
    }
    let Ok(mut attacker) = Handshake::with_params(true, &test_noise_key(2), test_params(5)) else {
        panic!("attacker setup failed");
    };
    for _ in 0..4 {
        let out = attacker.take_outgoing();
        if !out.is_empty() && victim.receive(&out, 0).is_err() {
            panic!("victim rejected the attacker's handshake");
        }
        if attacker.is_finished() {
            break;
        }
        let back = victim.take_outgoing();
        if !back.is_empty() && attacker.receive(&back, &mut |_| true).is_err() {
            panic!("attacker rejected the victim's handshake");
        }
    }
    let _ = victim.take_outgoing();
    while victim.poll_event().is_some() {}
    match attacker.finish() {
        Ok(t) => (victim, t),
        Err(e) => panic!("attacker handshake incomplete: {e}"),
    }
}

/// Target `wire_session`: a responder [`Session`] after a real handshake, fed what a
/// hostile peer sends. The input is a list of operations `op len arg[len]`: raw frame
/// bytes (op 0), a well-formed Open, with the right capability, which the fuzzer could not
/// compute (1), an Options naming the Dazaar extensions (2), an extension message (3), a
/// tick (4), any message re-encoded from a body (5). Every event is drained and extension
/// payloads are read as the market layer reads them.
pub fn wire_session(data: &[u8]) {
    let (mut victim, mut attacker) = established_session();
    let mut now = 0u64;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let len = rest.first().map_or(0, |&b| usize::from(b));
        let arg = rest.get(1..).unwrap_or_default();
        let arg = arg.get(..len.min(arg.len())).unwrap_or_default();
        rest = rest.get(1 + arg.len()..).unwrap_or_default();
        // The argument's first byte parametrises the operation.
        let param = arg.first().copied().unwrap_or(0);
        let tail = arg.get(1..).unwrap_or_default();
        let mut plain = Vec::new();
        let ok = match op % 6 {
            0 => {
                plain.extend_from_slice(arg);
                true
            }
            1 => {
                let channel = u64::from(param % 8);
                let key = if param & 8 == 0 {
                    SESSION_FEED_KEY
                } else {
                    [param; 32]
                };
                let capability = (param & 16 == 0).then(|| {
                    crate::crypto::capability(&key, &attacker.split.rx, &attacker.split.tx).to_vec()
                });
                let open = wire::Open {
                    discovery_key: crate::crypto::discovery_key(&key).to_vec(),
                    capability,
                };
                wire::encode_frame(channel, &Message::Open(open), &mut plain).is_ok()
            }
            2 => {
                let mut names: Vec<String> = crate::market::ext::ALL
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect();
                names.sort();
                let options = wire::Options {
                    extensions: names,
                    ack: None,
                };
                let channel = u64::from(param % 2);
                wire::encode_frame(channel, &Message::Options(options), &mut plain).is_ok()
            }
            3 => {
                // Extension ids index the sorted names of op 2.
                let ext = Extension {
                    id: u64::from(param % 8),
                    payload: tail.to_vec(),
                };
                wire::encode_frame(0, &Message::Extension(ext), &mut plain).is_ok()
            }
            4 => {
                now = now.saturating_add(u64::from(param) * 1000);
                let _ = victim.tick(now);
                false
            }
            _ => {
                // A well-formed message of any type on channel `param >> 4`.
                let type_id = u64::from(param % 16);
                match Message::decode(type_id, tail) {
                    Ok(m) => wire::encode_frame(u64::from(param >> 4), &m, &mut plain).is_ok(),
                    Err(_) => false,
                }
            }
        };
        if ok && !plain.is_empty() {
            attacker.cipher.encrypt(&mut plain);
            let mut input: &[u8] = &plain;
            // Back-pressure: the driver drains and passes the rest again.
            for _ in 0..64 {
                match victim.receive(input, now) {
                    Ok(n) => {
                        assert!(n <= input.len(), "consumed more than given");
                        input = input.get(n..).unwrap_or_default();
                    }
                    Err(_) => break,
                }
                drain(&mut victim);
                if input.is_empty() {
                    break;
                }
            }
        }
        drain(&mut victim);
        if victim.is_destroyed() {
            break;
        }
    }
    assert!(victim.channel_count() <= crate::protocol::DEFAULT_MAX_CHANNELS);
}

fn drain(victim: &mut Session) {
    let _ = victim.take_outgoing();
    while let Some(event) = victim.poll_event() {
        match event {
            Event::Extension { name, payload } => read_ext_payload(&name, &payload),
            Event::DiscoveryKey { discovery_key } => {
                let _ = victim.close_discovery_key(&discovery_key);
            }
            _ => {}
        }
    }
}

/// Target `card`: a Dazaar card's JSON text. A card that validates serialises to JSON that
/// validates to the same card.
pub fn card(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(card) = crate::card::parse(text) else {
        return;
    };
    let again = crate::card::parse(&card.json.to_string())
        .unwrap_or_else(|e| panic!("a valid card's JSON does not validate: {e}"));
    assert_eq!(again.seller_key, card.seller_key);
    assert_eq!(again.payment.len(), card.payment.len());
    assert_eq!(again.name, card.name);
}

/// Target `config_toml`: `dazaar.toml` text. Errors point at a line of the text.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/fuzz/dazaar.toml");
    match crate::config::parse(text, file) {
        Ok(settings) => {
            let _ = format!("{settings:?}");
        }
        Err(e) => {
            let lines = text.matches('\n').count() + 1;
            assert!(
                e.line() <= lines,
                "error at line {} of a {lines}-line text: {e}",
                e.line()
            );
            let _ = e.to_string();
        }
    }
}

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target, by the name its harness and corpus directory have.
pub const TARGETS: [(&str, Target); 7] = [
    ("wire_frames", wire_frames),
    ("wire_session", wire_session),
    ("noise_handshake", noise_handshake),
    ("ext_payloads", ext_payloads),
    ("bitfield_rle", bitfield_rle),
    ("card", card),
    ("config_toml", config_toml),
];

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn fuzz_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// Runs every file of `fuzz/corpus/<target>` through `target`.
    pub(crate) fn replay(name: &str, target: fn(&[u8])) -> usize {
        let dir = fuzz_dir().join("corpus").join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            target(&data);
            count += 1;
        }
        assert!(count > 0, "corpus {} is empty", dir.display());
        count
    }

    #[test]
    fn every_host_corpus_replays() {
        for (name, target) in super::TARGETS {
            replay(name, target);
        }
    }

    /// Every harness in fuzz/fuzz_targets has a corpus, and every host target a harness.
    #[test]
    fn every_fuzz_target_has_a_corpus() {
        let targets = std::fs::read_dir(fuzz_dir().join("fuzz_targets")).expect("fuzz_targets");
        let mut names = Vec::new();
        for entry in targets {
            let path = entry.expect("entry").path();
            let name = path
                .file_stem()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            let corpus = fuzz_dir().join("corpus").join(&name);
            let files = std::fs::read_dir(&corpus)
                .unwrap_or_else(|e| panic!("no corpus for {name}: {e}"))
                .count();
            assert!(files > 0, "corpus of {name} is empty");
            names.push(name);
        }
        for (name, _) in super::TARGETS {
            assert!(names.iter().any(|n| n == name), "no harness for {name}");
        }
    }
}
