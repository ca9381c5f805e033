//! Memory amplification by hostile peers (issue 12, item 2): strangers with random Noise
//! keys flood a running `dazaar sell` with what makes a naive peer allocate (a stream-level
//! Options frame of empty names, a Have per bitmap page, oversized extension payloads).
//! The seller's resident memory must stay nearly flat, and it must still serve a buyer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use dazaar::crypto::{self, NoiseKeyPair};
use dazaar::noise::{Handshake, Transport};
use dazaar::wire::{
    frame_to_vec, varint, Decoded, Extension, FrameDecoder, Have, Message, Open, Options, Want,
};
use dazaar_tests::*;

/// Hostile connections per attack kind.
const CONNECTIONS: usize = 8;
/// What all attacks together may add to the seller's resident memory.
const MAX_GROWTH_KIB: u64 = 24 * 1024;
/// Channel id the hostile peer opens the feed on.
const CHANNEL: u64 = 1;

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// One stream-level Options frame of 8 MiB of empty names.
    Options,
    /// 65,536 `Have{start: k * 4096}` frames on the feed's channel.
    Have,
    /// Extension messages of 8 MiB each.
    Extension,
}

/// A peer with a random key that speaks the protocol by hand.
struct Hostile {
    stream: TcpStream,
    transport: Transport,
    decoder: FrameDecoder,
    /// Decrypted bytes not yet decoded.
    pending: Vec<u8>,
}

impl Hostile {
    /// Connects and completes the Noise handshake as initiator.
    fn connect(addr: &str) -> Hostile {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut hs = Handshake::new(true, &NoiseKeyPair::generate()).expect("handshake");
        stream.write_all(&hs.take_outgoing()).expect("write");
        let mut buf = vec![0u8; 4096];
        let mut leftover = Vec::new();
        while !hs.is_finished() {
            let n = stream.read(&mut buf).expect("read");
            assert!(n > 0, "the seller closed during the handshake");
            let used = hs.receive(&buf[..n], &mut |_| true).expect("handshake");
            leftover.extend_from_slice(&buf[used..n]);
            let out = hs.take_outgoing();
            if !out.is_empty() {
                stream.write_all(&out).expect("write");
            }
        }
        let mut transport = hs.finish().expect("transport");
        transport.cipher.decrypt(&mut leftover);
        Hostile {
            stream,
            transport,
            decoder: FrameDecoder::new(),
            pending: leftover,
        }
    }

    /// The next frame from the seller, or `None` once it closed the connection.
    fn next_message(&mut self) -> Option<(u64, Message)> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut input: &[u8] = &self.pending;
            let item = self.decoder.decode_next(&mut input).expect("seller frame");
            let used = self.pending.len() - input.len();
            self.pending.drain(..used);
            match item {
                Some(Decoded::Frame(f)) => return Some((f.channel, f.message)),
                Some(Decoded::KeepAlive) => continue,
                None => {}
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            let mut chunk = buf[..n].to_vec();
            self.transport.cipher.decrypt(&mut chunk);
            self.pending.extend_from_slice(&chunk);
        }
    }

    /// Sends frames; false once the seller closed the connection (a piece at a time, so
    /// that a seller that hangs up early is not sent the rest).
    fn send(&mut self, plaintext: &[u8]) -> bool {
        for piece in plaintext.chunks(256 * 1024) {
            let mut bytes = piece.to_vec();
            self.transport.cipher.encrypt(&mut bytes);
            if self.stream.write_all(&bytes).is_err() {
                return false;
            }
        }
        true
    }

    /// Waits for the seller's Open of the feed (a free product opens it once the peer is
    /// valid), then opens it too. Returns the seller's channel id for it.
    fn open_feed(&mut self, feed_key: &[u8; 32]) -> u64 {
        let dk = crypto::discovery_key(feed_key);
        let seller_channel = loop {
            match self.next_message() {
                Some((channel, Message::Open(open))) if open.discovery_key == dk => break channel,
                Some(_) => {}
                None => panic!("the seller closed before opening the feed"),
            }
        };
        let open = Message::Open(Open {
            discovery_key: dk.to_vec(),
            capability: Some(
                crypto::capability(feed_key, &self.transport.split.rx, &self.transport.split.tx)
                    .to_vec(),
            ),
        });
        assert!(self.send(&frame_to_vec(CHANNEL, &open).expect("frame")));
        seller_channel
    }

    /// Runs `attack`, then waits until the seller has handled all of it: it answers a Want
    /// sent behind the attack, or closes the connection.
    fn attack(&mut self, attack: Attack, seller_channel: u64) {
        const EIGHT_MIB: usize = 8 * 1024 * 1024;
        let mut frames = Vec::new();
        match attack {
            Attack::Options => {
                // `0a 00` is one empty name; the body just fits the protocol's limit.
                let body = [0x0a, 0x00].repeat((EIGHT_MIB - 16) / 2);
                varint::encode(body.len() as u64 + 1, &mut frames);
                frames.push(0x01); // channel 0, type 1
                frames.extend_from_slice(&body);
            }
            Attack::Have => {
                for k in 0..(1u64 << 16) {
                    let have = Message::Have(Have::block(k * 4096));
                    frames.extend(frame_to_vec(CHANNEL, &have).expect("frame"));
                }
            }
            Attack::Extension => {
                let options = Message::Options(Options {
                    extensions: vec!["dazaar/user-message".into()],
                    ack: None,
                });
                frames.extend(frame_to_vec(0, &options).expect("frame"));
                for _ in 0..2 {
                    let ext = Message::Extension(Extension {
                        id: 0,
                        payload: vec![b'{'; EIGHT_MIB - 16],
                    });
                    frames.extend(frame_to_vec(0, &ext).expect("frame"));
                }
            }
        }
        let want = Message::Want(Want::range(0, 1024 * 1024));
        frames.extend(frame_to_vec(CHANNEL, &want).expect("frame"));
        if !self.send(&frames) {
            return;
        }
        loop {
            match self.next_message() {
                Some((channel, Message::Have(have)))
                    if channel == seller_channel && have.bitfield.is_some() =>
                {
                    return
                }
                Some(_) => {}
                None => return,
            }
        }
    }
}

/// Starts `dazaar sell` on a free product in `dir`; returns it, its seller key, address and
/// feed key.
fn start_seller(dir: &std::path::Path) -> (Proc, String, String, [u8; 32]) {
    let feed = dir.join("feed");
    if !feed.exists() {
        make_text_feed(&feed, 200);
    }
    let (seller, info) = sell(&[
        "--data-dir",
        s(&dir.join("seller")),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
    ]);
    let key = info["sellerKey"].as_str().expect("key").to_owned();
    let addr = info["addr"].as_str().expect("addr").to_owned();
    let feed_key: [u8; 32] = hex::decode(info["feedKey"].as_str().expect("feed key"))
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    (seller, key, addr, feed_key)
}

#[test]
fn hostile_floods_do_not_grow_the_sellers_memory_and_a_buyer_is_still_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let buy = |key: &str, addr: &str, name: &str| {
        let out = dir.path().join(name);
        let o = buy_once(&dir.path().join("buyer"), key, addr, &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(feed_lines(&out).len(), 200);
    };
    let mut total = 0u64;
    // A fresh seller per attack kind, so that each kind's growth is its own.
    for attack in [Attack::Options, Attack::Have, Attack::Extension] {
        let (seller, key, addr, feed_key) = start_seller(dir.path());
        // One sale first, so the baseline includes what serving a buyer allocates.
        buy(&key, &addr, &format!("{attack:?}-before"));
        let before = procfs::rss_kib(seller.id()).expect("VmRSS");
        let started = Instant::now();
        // All connections are held open until the measurement.
        let peers: Vec<Hostile> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..CONNECTIONS)
                .map(|_| {
                    let addr = addr.clone();
                    scope.spawn(move || {
                        let mut peer = Hostile::connect(&addr);
                        let seller_channel = peer.open_feed(&feed_key);
                        peer.attack(attack, seller_channel);
                        peer
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("hostile peer"))
                .collect()
        });
        let after = procfs::rss_kib(seller.id()).expect("VmRSS");
        let growth = after.saturating_sub(before);
        total += growth;
        eprintln!(
            "{attack:?} x{CONNECTIONS}: seller RSS {before} -> {after} KiB (+{growth} KiB) in {:?}",
            started.elapsed()
        );
        // Still serving.
        buy(&key, &addr, &format!("{attack:?}-after"));
        drop(peers);
    }
    eprintln!("seller RSS growth over all attack kinds: {total} KiB");
    assert!(
        total <= MAX_GROWTH_KIB,
        "the seller grew by {total} KiB under the floods (limit {MAX_GROWTH_KIB} KiB)"
    );
}
