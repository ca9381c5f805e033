//! The handshake and cipher against `session_transcripts` in `shared/spec/vectors.json`:
//! with the recorded ephemeral keys and nonces every handshake message, the split, the
//! handshake hash and the encrypted transport bytes are reproduced byte for byte.

use super::*;
use crate::wire::vector_tests::{group, hex_of, load_vectors};
use serde_json::Value;

fn arr32(v: &Value) -> [u8; 32] {
    hex_of(v).try_into().expect("32 bytes")
}

fn arr24(v: &Value) -> [u8; 24] {
    hex_of(v).try_into().expect("24 bytes")
}

struct Recorded {
    initiator: Handshake,
    responder: Handshake,
    initiator_key: [u8; 32],
    responder_key: [u8; 32],
}

fn recorded(inputs: &Value) -> Recorded {
    let i_static = NoiseKeyPair::from_secret(arr32(&inputs["initiatorStatic"]["secretKey"]));
    let r_static = NoiseKeyPair::from_secret(arr32(&inputs["responderStatic"]["secretKey"]));
    assert_eq!(
        i_static.public_key(),
        arr32(&inputs["initiatorStatic"]["publicKey"])
    );
    assert_eq!(
        r_static.public_key(),
        arr32(&inputs["responderStatic"]["publicKey"])
    );
    let initiator = Handshake::with_params(
        true,
        &i_static,
        HandshakeParams {
            nonce: arr24(&inputs["initiatorNonce"]),
            ephemeral_secret: Some(arr32(&inputs["initiatorEphemeral"]["secretKey"])),
        },
    )
    .unwrap();
    let responder = Handshake::with_params(
        false,
        &r_static,
        HandshakeParams {
            nonce: arr24(&inputs["responderNonce"]),
            ephemeral_secret: Some(arr32(&inputs["responderEphemeral"]["secretKey"])),
        },
    )
    .unwrap();
    Recorded {
        initiator,
        responder,
        initiator_key: i_static.public_key(),
        responder_key: r_static.public_key(),
    }
}

#[test]
fn transcripts_reproduced_byte_for_byte() {
    let vectors = load_vectors();
    let transcripts = group(&vectors, "session_transcripts");
    assert_eq!(transcripts.len(), 2);
    for t in transcripts {
        let name = t["name"].as_str().unwrap();
        let out = &t["outputs"];
        let hs = &out["handshake"];
        let i2r = hex_of(&out["initiatorToResponder"]["bytes"]);
        let r2i = hex_of(&out["responderToInitiator"]["bytes"]);
        let i2r_off = out["initiatorToResponder"]["transportOffset"]
            .as_u64()
            .unwrap() as usize;
        let r2i_off = out["responderToInitiator"]["transportOffset"]
            .as_u64()
            .unwrap() as usize;
        let Recorded {
            mut initiator,
            mut responder,
            initiator_key,
            responder_key,
        } = recorded(&t["inputs"]);

        // msg1
        let msg1 = initiator.take_outgoing();
        assert_eq!(msg1.len(), 59);
        assert_eq!(
            hex::encode(&msg1[1..]),
            hs["msg1"].as_str().unwrap(),
            "{name}: msg1"
        );
        assert_eq!(&i2r[..59], &msg1[..]);

        // msg2: the responder consumes msg1 in two pieces.
        let mut accept_all = |_: &[u8; 32]| true;
        assert_eq!(responder.receive(&msg1[..10], &mut accept_all).unwrap(), 10);
        assert_eq!(responder.receive(&msg1[10..], &mut accept_all).unwrap(), 49);
        let msg2 = responder.take_outgoing();
        assert_eq!(
            hex::encode(&msg2[1..]),
            hs["msg2"].as_str().unwrap(),
            "{name}: msg2"
        );
        assert_eq!(&r2i[..r2i_off], &msg2[..]);

        // msg3, after the initiator authenticated the responder's static key.
        let mut seen = None;
        let consumed = initiator
            .receive(&r2i[..r2i_off], &mut |key: &[u8; 32]| {
                seen = Some(*key);
                true
            })
            .unwrap();
        assert_eq!(consumed, r2i_off);
        assert_eq!(seen, Some(responder_key));
        assert!(initiator.is_finished());
        let msg3 = initiator.take_outgoing();
        assert_eq!(
            hex::encode(&msg3[1..]),
            hs["msg3"].as_str().unwrap(),
            "{name}: msg3"
        );
        assert_eq!(&i2r[59..i2r_off], &msg3[..]);

        // The responder stops exactly at the end of msg3 even if transport bytes follow.
        let consumed = responder.receive(&i2r[59..], &mut accept_all).unwrap();
        assert_eq!(consumed, i2r_off - 59);
        assert!(responder.is_finished());
        assert_eq!(responder.remote_static_key(), Some(initiator_key));

        let mut i_transport = initiator.finish().unwrap();
        let mut r_transport = responder.finish().unwrap();
        let isplit = &hs["initiatorSplit"];
        assert_eq!(
            hex::encode(i_transport.split.tx),
            &isplit["tx"].as_str().unwrap()[..64]
        );
        assert_eq!(
            hex::encode(i_transport.split.rx),
            &isplit["rx"].as_str().unwrap()[..64]
        );
        assert_eq!(r_transport.split.tx, i_transport.split.rx);
        assert_eq!(r_transport.split.rx, i_transport.split.tx);
        assert_eq!(
            hex::encode(&i_transport.handshake_hash),
            hs["handshakeHash"].as_str().unwrap()
        );
        assert_eq!(r_transport.handshake_hash, i_transport.handshake_hash);

        // Transport: decrypt both directions (in uneven pieces) and re-encrypt exactly.
        for dir in ["initiatorToResponder", "responderToInitiator"] {
            let (bytes, off, sender, receiver) = if dir == "initiatorToResponder" {
                (&i2r, i2r_off, &mut i_transport, &mut r_transport)
            } else {
                (&r2i, r2i_off, &mut r_transport, &mut i_transport)
            };
            let plaintext = hex_of(&out[dir]["plaintext"]);
            let mut data = bytes[off..].to_vec();
            let third = data.len() / 3;
            let (a, b) = data.split_at_mut(third);
            receiver.cipher.decrypt(a);
            receiver.cipher.decrypt(b);
            assert_eq!(data, plaintext, "{name}: {dir} plaintext");
            let frames: Vec<u8> = out[dir]["frames"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|f| hex_of(&f["bytes"]))
                .collect();
            assert_eq!(
                frames, plaintext,
                "{name}: {dir} frames concatenate to the plaintext"
            );
            let mut again = plaintext.clone();
            sender.cipher.encrypt(&mut again);
            assert_eq!(&again[..], &bytes[off..], "{name}: {dir} ciphertext");
        }
    }
}

fn pair() -> (Handshake, Handshake, NoiseKeyPair, NoiseKeyPair) {
    let a = NoiseKeyPair::from_seed(&[1; 32]);
    let b = NoiseKeyPair::from_seed(&[2; 32]);
    (
        Handshake::new(true, &a).unwrap(),
        Handshake::new(false, &b).unwrap(),
        a,
        b,
    )
}

#[test]
fn initiator_rejects_wrong_responder_key() {
    let (mut i, mut r, _, _) = pair();
    let msg1 = i.take_outgoing();
    r.receive(&msg1, &mut |_| true).unwrap();
    let msg2 = r.take_outgoing();
    let wanted = NoiseKeyPair::from_seed(&[9; 32]).public_key();
    let err = i.receive(&msg2, &mut |key| *key == wanted).unwrap_err();
    assert!(matches!(err, NoiseError::Rejected));
    assert!(i.take_outgoing().is_empty(), "no msg3 after rejection");
    assert!(matches!(
        i.receive(&[0], &mut |_| true),
        Err(NoiseError::Finished)
    ));
    assert!(matches!(i.finish(), Err(NoiseError::Incomplete)));
}

#[test]
fn responder_rejects_initiator_key() {
    let (mut i, mut r, _, _) = pair();
    r.receive(&i.take_outgoing(), &mut |_| true).unwrap();
    i.receive(&r.take_outgoing(), &mut |_| true).unwrap();
    let err = r.receive(&i.take_outgoing(), &mut |_| false).unwrap_err();
    assert!(matches!(err, NoiseError::Rejected));
}

#[test]
fn malformed_handshake_input() {
    let (_, mut r, _, _) = pair();
    assert!(matches!(
        r.receive(&[0xff, 0xff, 0x7f], &mut |_| true),
        Err(NoiseError::MessageSize(_))
    ));
    let (_, mut r, _, _) = pair();
    assert!(matches!(
        r.receive(&[0x00], &mut |_| true),
        Err(NoiseError::MessageSize(0))
    ));
    let (_, mut r, _, _) = pair();
    assert!(matches!(
        r.receive(&[0x80, 0x80, 0x80, 0x01], &mut |_| true),
        Err(NoiseError::Length(_))
    ));
    // A msg1 whose payload is not a NoisePayload.
    let (_, mut r, _, _) = pair();
    let mut msg = vec![34u8];
    msg.extend([7u8; 32]);
    msg.extend([0x0a, 0x00]);
    assert!(matches!(
        r.receive(&msg, &mut |_| true),
        Err(NoiseError::BadPayload)
    ));
    // Too short for an ephemeral key.
    let (_, mut r, _, _) = pair();
    assert!(matches!(
        r.receive(&[3, 1, 2, 3], &mut |_| true),
        Err(NoiseError::Snow(_))
    ));
}

#[test]
fn unread_rewinds_the_receive_stream() {
    let split = Split {
        tx: [1; 32],
        rx: [2; 32],
    };
    let mut a = TransportCipher::new(&split, &[3; 24], &[4; 24]);
    let mut b = TransportCipher::new(&split, &[3; 24], &[4; 24]);
    let mut x = vec![0u8; 100];
    a.decrypt(&mut x);
    let mut y = vec![0u8; 70];
    b.decrypt(&mut y);
    b.unread(30);
    let mut z = vec![0u8; 60];
    b.decrypt(&mut z);
    assert_eq!(&x[..40], &y[..40]);
    assert_eq!(&x[40..], &z[..]);
    assert_eq!(format!("{split:?}"), "Split { .. }");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// `body` behind a valid varint length prefix: past the framing, into the Noise
    /// message and payload handling.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        crate::wire::varint::encode(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    proptest! {
        // Cheap (no I/O): many cases.
        #![proptest_config(ProptestConfig::with_cases(1024))]
        #[test]
        fn garbage_never_panics(initiator: bool, bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let key = NoiseKeyPair::from_seed(&[5; 32]);
            let mut hs = Handshake::new(initiator, &key).unwrap();
            let _ = hs.receive(&bytes, &mut |_| true);
        }

        /// Well-framed random messages reach the Noise layer and the payload decoder: they
        /// never panic, never finish a handshake and never yield a remote key that was
        /// not authenticated.
        #[test]
        fn framed_garbage_never_finishes(
            initiator: bool,
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 1..4),
        ) {
            let key = NoiseKeyPair::from_seed(&[5; 32]);
            let mut hs = Handshake::new(initiator, &key).unwrap();
            let mut seen = None;
            for body in &bodies {
                if hs.receive(&framed(body), &mut |k| { seen = Some(*k); true }).is_err() {
                    break;
                }
            }
            prop_assert!(!hs.is_finished());
            prop_assert_eq!(hs.remote_static_key(), seen);
        }

        /// A real handshake with one byte of the responder's message changed: the
        /// initiator refuses it (or still waits, when the length prefix grew); it never
        /// finishes and never sends its last message.
        #[test]
        fn a_tampered_handshake_message_is_refused(at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let a_key = NoiseKeyPair::from_seed(&[6; 32]);
            let b_key = NoiseKeyPair::from_seed(&[7; 32]);
            let mut a = Handshake::new(true, &a_key).unwrap();
            let mut b = Handshake::new(false, &b_key).unwrap();
            let first = a.take_outgoing();
            b.receive(&first, &mut |_| true).unwrap();
            let mut second = b.take_outgoing();
            let i = at.index(second.len());
            second[i] ^= flip;
            let result = a.receive(&second, &mut |_| true);
            prop_assert!(!a.is_finished(), "finished after byte {} was changed", i);
            prop_assert!(result.is_err() || i == 0, "byte {} changed and accepted: {:?}", i, result);
            prop_assert!(a.take_outgoing().is_empty());
        }
    }
}
