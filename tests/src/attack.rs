//! Hostile strangers for soak benches and hostile-peer tests: cheap attack clients that
//! connect to a seller on loopback and misbehave in one of the ways of issue 12 (idle and
//! dripping sockets, held handshakes with random keys, garbage, Options / Have floods,
//! oversized extension payloads, user-message spam).
//!
//! Every client is a tokio task on raw sockets, bounded in count (the caller says how
//! many), in time (each stops when its `stop` watch turns true, and every connect, read
//! and write has a timeout) and in what it sends (a fixed number of frames per
//! connection, a fixed message rate). Destinations are whatever the caller gives, which
//! must be loopback; the source address can be any other loopback address (`127.0.1.x`)
//! so that strangers do not share the paying buyers' IP.
//!
//! Frames are made with the library's own Noise handshake (`dazaar::noise`, as the
//! initiator, a fresh random key per connection) and wire encoder (`dazaar::wire`); the
//! one frame too large to build as messages cheaply (8 MiB of empty extension names) is
//! written byte for byte, and a unit test checks it against the encoder.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dazaar::crypto::NoiseKeyPair;
use dazaar::noise::{Handshake, TransportCipher};
use dazaar::wire::{
    encode_frame, varint, Decoded, Extension, FrameDecoder, Have, Message, Open, Options,
    MAX_BODY_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a connect may take (a listener that stopped accepting leaves SYNs unanswered
/// once its backlog is full).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the Noise handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write may block.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before a dropped client reconnects (keeps the churn, and port use, bounded).
pub const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause: a client dropped within a second of connecting (refused by a
/// connection cap, say) doubles its pause up to this, so that a thousand refused
/// strangers make a few hundred connects per second, not thousands.
pub const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);
/// Keep-alive period of held connections (the seller's idle timeout is 20 s).
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Drip period: one byte this often.
pub const DRIP_PERIOD: Duration = Duration::from_millis(1000);
/// Random bytes per garbage connection.
pub const GARBAGE_BYTES: usize = 4096;
/// Have frames per Have-flood connection (issue 12: 65,536 `Have{start: k*4096}`).
pub const HAVE_FLOOD_FRAMES: u64 = 65_536;
/// 8 MiB extension frames per oversized-extension connection.
pub const OVERSIZED_FRAMES: usize = 4;
/// User messages per second per spamming connection.
pub const SPAM_RATE: u32 = 50;
/// The extension a buyer sends user messages with.
pub const USER_MESSAGE: &str = "dazaar/user-message";

/// One kind of stranger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Connects and sends nothing.
    Idle,
    /// Sends a handshake length prefix, then one random byte per second.
    Drip,
    /// Finishes the Noise handshake with a random key, then only keeps the link alive.
    Handshake,
    /// Sends 4 KiB of random bytes, reads until the seller hangs up, again.
    Garbage,
    /// After the handshake, one stream-level Options frame of 8 MiB of empty names.
    OptionsFlood,
    /// After the handshake, opens the channel of [`Target::feed_key`] (possible on a free
    /// product) and sends 65,536 `Have{start: k*4096}`.
    HaveFlood,
    /// After the handshake, four 8 MiB `dazaar/user-message` extension frames.
    OversizedExtension,
    /// After the handshake, `lnd-pay-request` user messages at 50/s.
    UserMessageSpam,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 8] = [
        Kind::Idle,
        Kind::Drip,
        Kind::Handshake,
        Kind::Garbage,
        Kind::OptionsFlood,
        Kind::HaveFlood,
        Kind::OversizedExtension,
        Kind::UserMessageSpam,
    ];

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Idle => "idle",
            Kind::Drip => "drip",
            Kind::Handshake => "handshake",
            Kind::Garbage => "garbage",
            Kind::OptionsFlood => "options-flood",
            Kind::HaveFlood => "have-flood",
            Kind::OversizedExtension => "oversized-ext",
            Kind::UserMessageSpam => "user-msg-spam",
        }
    }
}

/// Where the strangers go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The seller's address (loopback).
    pub addr: SocketAddr,
    /// A feed key to open a channel for ([`Kind::HaveFlood`]): the feed's own key, which
    /// a free product serves to anyone.
    pub feed_key: Option<[u8; 32]>,
    /// Source addresses to spread connections over (round robin); empty: the OS picks.
    pub sources: Vec<Ipv4Addr>,
}

/// Counters of one group of strangers (all relaxed: figures for a report).
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections made.
    pub connects: AtomicU64,
    /// Connects that failed or timed out.
    pub connect_failures: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections the seller closed (EOF or reset) while we held them.
    pub dropped: AtomicU64,
    /// Noise handshakes finished.
    pub handshakes: AtomicU64,
    /// Handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
    /// Connections that sent their whole attack payload.
    pub delivered: AtomicU64,
    /// Bytes written.
    pub bytes_sent: AtomicU64,
    /// Frames (or messages) written.
    pub frames_sent: AtomicU64,
    /// Extension messages the seller sent back after the handshake (e.g. invoices).
    pub extensions_received: AtomicU64,
    /// Garbage rounds (connect, send, hang-up).
    pub rounds: AtomicU64,
    /// Strangers whose first attempt is over: connected (idle, drip) or not, sent their
    /// garbage, finished the handshake and sent their payload, or failed on the way. When
    /// it equals the number of strangers, the attack is fully launched.
    pub ready: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts this stranger's first attempt as over (once per stranger).
    fn settle(&self, ready: &mut bool) {
        if !*ready {
            *ready = true;
            Self::add(&self.ready, 1);
        }
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// One line: the counters that are not zero.
    pub fn summary(&self) -> String {
        let fields = [
            ("connects", &self.connects),
            ("connect-failures", &self.connect_failures),
            ("open", &self.open),
            ("dropped", &self.dropped),
            ("handshakes", &self.handshakes),
            ("handshake-failures", &self.handshake_failures),
            ("delivered", &self.delivered),
            ("frames", &self.frames_sent),
            ("bytes", &self.bytes_sent),
            ("replies", &self.extensions_received),
            ("rounds", &self.rounds),
        ];
        // `ready` is for callers that wait for the launch, not for reports.
        fields
            .iter()
            .filter_map(|(name, c)| {
                let v = Self::get(c);
                (v > 0).then(|| format!("{name} {v}"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Decrements [`Stats::open`] when a held connection ends, however it ends.
struct OpenGuard(Arc<Stats>);

impl OpenGuard {
    fn new(stats: &Arc<Stats>) -> Self {
        Stats::add(&stats.open, 1);
        OpenGuard(stats.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Frames shared by every connection of a kind (built once: the floods are megabytes).
#[derive(Debug, Clone, Default)]
pub struct Payloads {
    options_flood: Arc<Vec<u8>>,
    have_flood: Arc<Vec<u8>>,
    oversized: Arc<Vec<u8>>,
}

impl Payloads {
    /// The plaintext frames of the kinds in `kinds` (others stay empty).
    pub fn for_kinds(kinds: &[Kind]) -> Payloads {
        let mut p = Payloads::default();
        if kinds.contains(&Kind::OptionsFlood) {
            p.options_flood = Arc::new(options_flood_frame(MAX_BODY_LEN / 2));
        }
        if kinds.contains(&Kind::HaveFlood) {
            p.have_flood = Arc::new(have_flood_frames(1, HAVE_FLOOD_FRAMES));
        }
        if kinds.contains(&Kind::OversizedExtension) {
            let mut out = user_message_options_frame();
            let frame = extension_frame(0, &vec![b' '; MAX_BODY_LEN - 1]);
            for _ in 0..OVERSIZED_FRAMES {
                out.extend_from_slice(&frame);
            }
            p.oversized = Arc::new(out);
        }
        p
    }
}

/// A stream-level (channel 0) Options frame of `names` empty extension names, written
/// byte for byte (`0a 00` per name): equal to the encoder's frame, without building
/// millions of `String`s. `names` ≤ 4 MiB keeps the body within the 8 MiB frame limit.
pub fn options_flood_frame(names: usize) -> Vec<u8> {
    let body_len = names * 2;
    let header = 1u64; // channel 0, type 1 (Options)
    let mut out = Vec::with_capacity(body_len + 8);
    varint::encode((varint::encoded_len(header) + body_len) as u64, &mut out);
    varint::encode(header, &mut out);
    for _ in 0..names {
        out.extend_from_slice(&[0x0a, 0x00]);
    }
    out
}

/// `count` `Have{start: k*4096}` frames on local channel `channel`, k = 0..count.
pub fn have_flood_frames(channel: u64, count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for k in 0..count {
        let have = Message::Have(Have::block(k.saturating_mul(4096)));
        // Small messages on a small channel id: encoding cannot fail.
        let _ = encode_frame(channel, &have, &mut out);
    }
    out
}

/// The Options frame announcing our one extension name, `dazaar/user-message` (id 0).
pub fn user_message_options_frame() -> Vec<u8> {
    let options = Message::Options(Options {
        extensions: vec![USER_MESSAGE.to_owned()],
        ack: None,
    });
    let mut out = Vec::new();
    let _ = encode_frame(0, &options, &mut out);
    out
}

/// A stream-level extension frame (extension `id` of our announced names).
pub fn extension_frame(id: u64, payload: &[u8]) -> Vec<u8> {
    let ext = Message::Extension(Extension {
        id,
        payload: payload.to_vec(),
    });
    let mut out = Vec::new();
    let _ = encode_frame(0, &ext, &mut out);
    out
}

/// A `dazaar/user-message` asking the seller's LND plugin for an invoice.
pub fn pay_request_frame(sats: u64) -> Vec<u8> {
    let body = serde_json::json!({"name": "lnd-pay-request", "message": {"amount": sats}});
    extension_frame(0, body.to_string().as_bytes())
}

/// Connects to `target.addr` from source `index` (round robin over `target.sources`).
pub async fn connect(target: &Target, index: usize) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = target
        .sources
        .get(index % target.sources.len().max(1))
        .copied()
    {
        socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target.addr)).await {
        Ok(r) => {
            let stream = r?;
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// A stranger after the Noise handshake: the socket halves and a sending cipher. The
/// reading half is handed to [`drain`].
pub struct Stranger {
    /// Our random static key.
    pub key: [u8; 32],
    /// The reading half.
    pub reader: OwnedReadHalf,
    /// The writing half.
    pub writer: OwnedWriteHalf,
    /// Encrypts what we send.
    pub tx: TransportCipher,
    /// Decrypts what the seller sends.
    pub rx: TransportCipher,
    /// Transport bytes the seller sent in the same read as its last handshake message.
    pub leftover: Vec<u8>,
    /// The split's transport keys (for channel capabilities).
    pub split: dazaar::noise::Split,
}

/// Runs the Noise XX handshake as the initiator with a fresh random key.
pub async fn handshake(stream: TcpStream) -> std::io::Result<Stranger> {
    let key_pair = NoiseKeyPair::generate();
    let mut hs = Handshake::new(true, &key_pair).map_err(std::io::Error::other)?;
    let (mut reader, mut writer) = stream.into_split();
    let first = hs.take_outgoing();
    writer.write_all(&first).await?;
    let mut buf = vec![0u8; 4096];
    let mut leftover = Vec::new();
    while !hs.is_finished() {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let chunk = buf.get(..n).unwrap_or_default();
        let used = hs
            .receive(chunk, &mut |_| true)
            .map_err(std::io::Error::other)?;
        let out = hs.take_outgoing();
        if !out.is_empty() {
            writer.write_all(&out).await?;
        }
        if hs.is_finished() {
            leftover = chunk.get(used..).unwrap_or_default().to_vec();
        }
    }
    let t = hs.finish().map_err(std::io::Error::other)?;
    Ok(Stranger {
        key: key_pair.public_key(),
        reader,
        writer,
        tx: TransportCipher::new(&t.split, &t.local_nonce, &t.remote_nonce),
        rx: TransportCipher::new(&t.split, &t.local_nonce, &t.remote_nonce),
        leftover,
        split: t.split,
    })
}

/// Reads, decrypts and decodes what the seller sends until it hangs up (or the stream
/// is no longer parseable), counting extension messages; `opened` turns true when the
/// seller sends an Open for `dk`.
async fn drain(
    mut reader: OwnedReadHalf,
    mut rx: TransportCipher,
    leftover: Vec<u8>,
    dk: Option<[u8; 32]>,
    opened: watch::Sender<bool>,
    stats: Arc<Stats>,
) {
    let mut decoder = FrameDecoder::new();
    let mut parse = true;
    let mut handle = |data: &mut [u8], decoder: &mut FrameDecoder| -> bool {
        rx.decrypt(data);
        let mut input: &[u8] = data;
        loop {
            match decoder.decode_next(&mut input) {
                Ok(Some(Decoded::Frame(frame))) => match frame.message {
                    Message::Extension(_) => Stats::add(&stats.extensions_received, 1),
                    Message::Open(Open { discovery_key, .. })
                        if dk.is_some_and(|d| d.as_slice() == discovery_key.as_slice()) =>
                    {
                        let _ = opened.send(true);
                    }
                    _ => {}
                },
                Ok(Some(Decoded::KeepAlive)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    let mut first = leftover;
    if !first.is_empty() {
        parse = handle(&mut first, &mut decoder);
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if parse {
                    if let Some(chunk) = buf.get_mut(..n) {
                        parse = handle(chunk, &mut decoder);
                    }
                }
            }
        }
    }
}

/// Writes `plain` encrypted, in 64 KiB pieces; false when the seller hung up or a write
/// took longer than [`WRITE_TIMEOUT`].
async fn send(
    writer: &mut OwnedWriteHalf,
    tx: &mut TransportCipher,
    plain: &[u8],
    stats: &Stats,
) -> bool {
    let mut piece = Vec::with_capacity(plain.len().min(64 * 1024));
    for chunk in plain.chunks(64 * 1024) {
        piece.clear();
        piece.extend_from_slice(chunk);
        tx.encrypt(&mut piece);
        match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&piece)).await {
            Ok(Ok(())) => Stats::add(&stats.bytes_sent, piece.len() as u64),
            _ => return false,
        }
        if plain.len() > 64 * 1024 {
            // Encrypting megabytes is the one CPU-heavy thing a stranger does: let the
            // runtime's other (cheap) strangers run in between.
            tokio::task::yield_now().await;
        }
    }
    true
}

/// Sleeps `d`, or less if `stop` turns true; true when stopped.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Waits for `task` to end (the seller hung up: true) or `stop` (false).
async fn hold(task: &mut JoinHandle<()>, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = task => true,
        _ = stop.changed() => false,
    }
}

/// Starts `count` strangers of `kind` against `target` on the current runtime; they run
/// until `stop` turns true (reconnecting when the seller drops them, after a pause).
/// `first` numbers them for the round robin over source addresses.
pub fn spawn(
    kind: Kind,
    count: usize,
    first: usize,
    target: &Target,
    payloads: &Payloads,
    stats: &Arc<Stats>,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    (0..count)
        .map(|i| {
            let target = target.clone();
            let payloads = payloads.clone();
            let stats = stats.clone();
            let mut stop = stop.clone();
            let index = first + i;
            tokio::spawn(async move {
                // Spread the first connects over a second, as real clients would arrive.
                let jitter = Duration::from_millis((index as u64 * 7919) % 1000);
                if sleep_or_stop(jitter, &mut stop).await {
                    return;
                }
                let mut ready = false;
                let mut pause = RECONNECT_PAUSE;
                loop {
                    let began = tokio::time::Instant::now();
                    let delivered_once = run_once(
                        kind, index, &target, &payloads, &stats, &mut stop, &mut ready,
                    )
                    .await;
                    stats.settle(&mut ready);
                    if *stop.borrow() {
                        return;
                    }
                    // A flood is sent once per stranger; a dropped flooder does not retry.
                    if delivered_once && is_flood(kind) {
                        let _ = stop.changed().await;
                        return;
                    }
                    pause = if began.elapsed() < Duration::from_secs(1) {
                        (pause * 2).min(MAX_RECONNECT_PAUSE)
                    } else {
                        RECONNECT_PAUSE
                    };
                    if sleep_or_stop(pause, &mut stop).await {
                        return;
                    }
                }
            })
        })
        .collect()
}

fn is_flood(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::OptionsFlood | Kind::HaveFlood | Kind::OversizedExtension
    )
}

/// One connection of `kind`, to the end; true if its payload was delivered.
async fn run_once(
    kind: Kind,
    index: usize,
    target: &Target,
    payloads: &Payloads,
    stats: &Arc<Stats>,
    stop: &mut watch::Receiver<bool>,
    ready: &mut bool,
) -> bool {
    let mut stream = match connect(target, index).await {
        Ok(s) => s,
        Err(_) => {
            Stats::add(&stats.connect_failures, 1);
            return false;
        }
    };
    Stats::add(&stats.connects, 1);
    if matches!(kind, Kind::Idle | Kind::Drip) {
        stats.settle(ready);
    }
    match kind {
        Kind::Idle => {
            let _open = OpenGuard::new(stats);
            let mut buf = [0u8; 256];
            loop {
                tokio::select! {
                    r = stream.read(&mut buf) => match r {
                        Ok(0) | Err(_) => { Stats::add(&stats.dropped, 1); return false; }
                        Ok(_) => {}
                    },
                    _ = stop.changed() => return false,
                }
            }
        }
        Kind::Drip => {
            let _open = OpenGuard::new(stats);
            // The length prefix of a 58-byte first handshake message, then its bytes,
            // one per period: never complete before the seller's deadline.
            if stream.write_all(&[58]).await.is_err() {
                Stats::add(&stats.dropped, 1);
                return false;
            }
            let (mut reader, mut writer) = stream.into_split();
            let mut buf = [0u8; 256];
            for _ in 0..57 {
                tokio::select! {
                    r = reader.read(&mut buf) => match r {
                        Ok(0) | Err(_) => { Stats::add(&stats.dropped, 1); return false; }
                        Ok(_) => {}
                    },
                    _ = tokio::time::sleep(DRIP_PERIOD) => {
                        if writer.write_all(&[rand::random::<u8>()]).await.is_err() {
                            Stats::add(&stats.dropped, 1);
                            return false;
                        }
                        Stats::add(&stats.bytes_sent, 1);
                    }
                    _ = stop.changed() => return false,
                }
            }
            false
        }
        Kind::Garbage => {
            let mut bytes = vec![0u8; GARBAGE_BYTES];
            for b in bytes.iter_mut() {
                *b = rand::random();
            }
            if let Ok(Ok(())) = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&bytes)).await
            {
                Stats::add(&stats.bytes_sent, bytes.len() as u64);
                Stats::add(&stats.delivered, 1);
            }
            stats.settle(ready);
            // Until the seller hangs up, at most 2 s.
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            Stats::add(&stats.rounds, 1);
            false
        }
        _ => stranger(kind, stream, target, payloads, stats, stop, ready).await,
    }
}

/// The kinds that finish the handshake first.
async fn stranger(
    kind: Kind,
    stream: TcpStream,
    target: &Target,
    payloads: &Payloads,
    stats: &Arc<Stats>,
    stop: &mut watch::Receiver<bool>,
    ready: &mut bool,
) -> bool {
    let _open = OpenGuard::new(stats);
    let s = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream)).await {
        Ok(Ok(s)) => s,
        _ => {
            Stats::add(&stats.handshake_failures, 1);
            return false;
        }
    };
    Stats::add(&stats.handshakes, 1);
    let Stranger {
        reader,
        mut writer,
        mut tx,
        rx,
        leftover,
        split,
        ..
    } = s;
    let dk = target.feed_key.map(|k| dazaar::crypto::discovery_key(&k));
    let (opened_tx, mut opened) = watch::channel(false);
    let mut reading = tokio::spawn(drain(reader, rx, leftover, dk, opened_tx, stats.clone()));
    let mut delivered = false;
    match kind {
        Kind::OptionsFlood | Kind::OversizedExtension => {
            let plain = if kind == Kind::OptionsFlood {
                &payloads.options_flood
            } else {
                &payloads.oversized
            };
            if send(&mut writer, &mut tx, plain, stats).await {
                Stats::add(&stats.frames_sent, 1);
                Stats::add(&stats.delivered, 1);
                delivered = true;
            }
        }
        Kind::HaveFlood => {
            if let Some(key) = target.feed_key {
                let open = Message::Open(Open {
                    discovery_key: dazaar::crypto::discovery_key(&key).to_vec(),
                    capability: Some(
                        dazaar::crypto::capability(&key, &split.rx, &split.tx).to_vec(),
                    ),
                });
                let mut frame = Vec::new();
                let _ = encode_frame(1, &open, &mut frame);
                if send(&mut writer, &mut tx, &frame, stats).await {
                    // Haves before the seller opened its side are dropped: wait for it
                    // (a paid product never opens it to a stranger: then flood anyway).
                    let _ =
                        tokio::time::timeout(Duration::from_secs(3), opened.wait_for(|o| *o)).await;
                    if send(&mut writer, &mut tx, &payloads.have_flood, stats).await {
                        Stats::add(&stats.frames_sent, HAVE_FLOOD_FRAMES);
                        Stats::add(&stats.delivered, 1);
                        delivered = true;
                    }
                }
            }
        }
        Kind::UserMessageSpam => {
            let mut ok = send(&mut writer, &mut tx, &user_message_options_frame(), stats).await;
            stats.settle(ready);
            let frame = pay_request_frame(1000);
            let mut tick = tokio::time::interval(Duration::from_secs(1) / SPAM_RATE);
            while ok && !*stop.borrow() {
                tokio::select! {
                    _ = tick.tick() => {
                        ok = send(&mut writer, &mut tx, &frame, stats).await;
                        if ok { Stats::add(&stats.frames_sent, 1); }
                    }
                    _ = &mut reading => { Stats::add(&stats.dropped, 1); return delivered; }
                    _ = stop.changed() => {}
                }
            }
            reading.abort();
            return delivered;
        }
        _ => {}
    }
    stats.settle(ready);
    // Hold the connection with keep-alives until the seller drops it or we stop.
    loop {
        tokio::select! {
            _ = tokio::time::sleep(KEEP_ALIVE) => {
                if !send(&mut writer, &mut tx, &[0], stats).await {
                    Stats::add(&stats.dropped, 1);
                    break;
                }
            }
            gone = hold(&mut reading, stop) => {
                if gone { Stats::add(&stats.dropped, 1); }
                break;
            }
        }
    }
    reading.abort();
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_flood_frame_is_what_the_encoder_writes() {
        let names = 1000;
        let options = Message::Options(Options {
            extensions: vec![String::new(); names],
            ack: None,
        });
        let mut encoded = Vec::new();
        encode_frame(0, &options, &mut encoded).expect("encode");
        assert_eq!(options_flood_frame(names), encoded);
    }

    #[test]
    fn flood_frames_decode_as_what_they_claim() {
        // The Options flood is a well-formed frame that the decoder refuses for its
        // number of names (before allocating them), not for its framing.
        let mut decoder = FrameDecoder::new();
        let mut out = Vec::new();
        let big = options_flood_frame(MAX_BODY_LEN / 2);
        let err = decoder
            .decode_all(&big, &mut out)
            .expect_err("a million names are refused");
        assert!(
            format!("{err:?}").contains("extension names"),
            "refused for its names: {err:?}"
        );
        let mut decoder = FrameDecoder::new();
        out.clear();
        decoder
            .decode_all(&have_flood_frames(1, 3), &mut out)
            .expect("haves");
        assert_eq!(out.len(), 3);
        let spam = pay_request_frame(5);
        out.clear();
        decoder.decode_all(&spam, &mut out).expect("extension");
        assert!(matches!(
            out.first(),
            Some(Decoded::Frame(f)) if matches!(&f.message, Message::Extension(e) if e.id == 0)
        ));
    }
}
