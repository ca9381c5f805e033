//! The sans-IO protocol v8 session (`hypercore-protocol@8.0.7` over
//! `simple-hypercore-protocol@2.1.2`): Noise handshake, encrypted framing, the channel table
//! with capabilities, stream-level extensions, keep-alive and idle timeout.
//!
//! A [`Session`] takes bytes and time in and gives bytes and events out; it never reads a
//! clock or touches a socket. The driver (`net/`) loops:
//!
//! 1. [`Session::receive`] with bytes from the socket (it may consume fewer than given when
//!    its event queue or outgoing buffer is full: drain, then call again with the rest);
//! 2. [`Session::poll_event`] until `None`, reacting through the send APIs;
//! 3. [`Session::take_outgoing`] and write the bytes;
//! 4. [`Session::tick`] at [`Session::next_deadline`].
//!
//! Replication (Want/Have/Request/Data behaviour) lives above this layer: it sends and
//! receives typed messages per channel, addressed by discovery key. [`connection`] puts
//! the two together (a session, its channels' replicators, serving on request, announce
//! throttling); that is what `net/` drives, and what the tests drive in memory.

pub mod budget;
pub mod connection;
mod extensions;
pub mod meter;
pub mod replicate;

use std::collections::{HashMap, VecDeque};
use std::fmt;

use crate::crypto::{self, NoiseKeyPair};
use crate::noise::{Handshake, HandshakeParams, NoiseError, Split, TransportCipher};
use crate::wire::{
    encode_frame, Close, Decoded, EncodeError, Extension, FrameDecoder, FrameError, Message, Open,
    Options,
};

pub use extensions::{MAX_LOCAL_EXTENSIONS, MAX_REMOTE_EXTENSIONS};

/// JS default idle timeout (`handlers.timeout`), in milliseconds.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 20_000;
/// JS keep-alive interval (`ceil(timeout / 2)`), in milliseconds.
pub const DEFAULT_KEEP_ALIVE_MS: u64 = 10_000;
/// Default limit of the outgoing buffer (encrypted bytes not yet taken plus queued frames).
pub const DEFAULT_MAX_OUTGOING: usize = 16 * 1024 * 1024;
/// Default limit of the event queue.
pub const DEFAULT_MAX_EVENTS: usize = 1024;
/// Default limit of channels (local and remote) per session.
pub const DEFAULT_MAX_CHANNELS: usize = 256;
/// Default limit of a stream-level extension payload we accept (Dazaar's messages are a
/// few hundred bytes; terms of use are text).
pub const DEFAULT_MAX_EXTENSION_PAYLOAD: usize = 64 * 1024;
/// An inbound frame limit for a peer that only sends control messages (everything but
/// Data): the largest extension payload plus room for its header and an Options list.
pub const CONTROL_FRAME_LIMIT: usize = DEFAULT_MAX_EXTENSION_PAYLOAD + 4 * 1024;

/// A 32-byte discovery key (`discoveryKey(feedKey)`).
pub type DiscoveryKey = [u8; 32];

/// A check on the remote static key: true accepts it (see [`Session::set_authenticator`]).
pub type Authenticator = Box<dyn FnMut(&[u8; 32]) -> bool + Send>;

/// How to set up a [`Session`].
#[derive(Clone)]
pub struct SessionConfig {
    /// Noise initiator? (Dazaar: buyer = initiator, seller = responder.)
    pub initiator: bool,
    /// Our static Noise key pair.
    pub key_pair: NoiseKeyPair,
    /// If set, the handshake fails unless the remote static key equals it (a buyer sets
    /// the seller key here).
    pub expected_remote_key: Option<[u8; 32]>,
    /// Idle timeout: the session fails if nothing is received for this long (0 = never).
    pub idle_timeout_ms: u64,
    /// Keep-alive: after this long without sending, send an empty frame (0 = never).
    pub keep_alive_ms: u64,
    /// Limit of buffered outgoing bytes; sends beyond it fail with
    /// [`SessionError::OutgoingFull`] and `receive` stops consuming.
    pub max_outgoing_bytes: usize,
    /// Limit of queued events; `receive` stops consuming when it is reached.
    pub max_events: usize,
    /// Limit of channels in the table.
    pub max_channels: usize,
    /// Largest frame body accepted from the remote; a larger one is fatal
    /// ([`FrameError::TooLarge`]). Only a downloader needs the protocol's 8 MiB (Data
    /// blocks); a peer that only serves receives control messages and can set
    /// [`CONTROL_FRAME_LIMIT`]. See [`Session::set_max_inbound_frame`].
    pub max_inbound_frame: usize,
    /// Largest stream-level extension payload accepted; a larger one is fatal
    /// ([`SessionError::ExtensionTooLarge`]).
    pub max_extension_payload: usize,
    /// Fixed nonce and ephemeral key, for reproducing recorded sessions in tests.
    pub handshake_params: Option<HandshakeParams>,
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("initiator", &self.initiator)
            .field("key_pair", &self.key_pair)
            .field("idle_timeout_ms", &self.idle_timeout_ms)
            .field("keep_alive_ms", &self.keep_alive_ms)
            .finish_non_exhaustive()
    }
}

impl SessionConfig {
    /// The JS defaults: 20 s idle timeout, 10 s keep-alive.
    pub fn new(initiator: bool, key_pair: NoiseKeyPair) -> Self {
        Self {
            initiator,
            key_pair,
            expected_remote_key: None,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            keep_alive_ms: DEFAULT_KEEP_ALIVE_MS,
            max_outgoing_bytes: DEFAULT_MAX_OUTGOING,
            max_events: DEFAULT_MAX_EVENTS,
            max_channels: DEFAULT_MAX_CHANNELS,
            max_inbound_frame: crate::wire::MAX_BODY_LEN,
            max_extension_payload: DEFAULT_MAX_EXTENSION_PAYLOAD,
            handshake_params: None,
        }
    }
}

/// Something the layer above must know about.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The handshake finished; transport messages flow from now on.
    HandshakeComplete {
        /// The remote's static Noise public key.
        remote_public_key: [u8; 32],
    },
    /// The remote opened a channel for a discovery key we have not opened: call
    /// [`Session::open_channel`] with the feed key, or [`Session::close_discovery_key`].
    DiscoveryKey {
        /// The remote's discovery key.
        discovery_key: DiscoveryKey,
    },
    /// Both sides have opened the channel and the remote capability checked out:
    /// replication can start (hypercore `Peer.onopen`).
    ChannelOpened {
        /// The channel.
        discovery_key: DiscoveryKey,
    },
    /// The remote closed the channel (we answered with our own Close if we had opened it).
    ChannelClosed {
        /// The channel.
        discovery_key: DiscoveryKey,
    },
    /// A message on a channel we opened: Status, Have, Unhave, Want, Unwant, Request,
    /// Cancel, Data, or channel-level Options / Extension.
    Message {
        /// The channel.
        discovery_key: DiscoveryKey,
        /// The message.
        message: Message,
    },
    /// The remote announced its stream-level extension names.
    RemoteExtensions {
        /// The remote's sorted names.
        names: Vec<String>,
    },
    /// A stream-level extension message for a name we registered.
    Extension {
        /// The extension name.
        name: String,
        /// The raw payload (decode JSON/UTF-8 above; JS drops undecodable payloads).
        payload: Vec<u8>,
    },
}

/// Session errors. Those marked *fatal* destroy the session (the connection must be
/// closed); the others reject one API call and leave the session usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// Fatal: the Noise handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(NoiseError),
    /// Fatal: the remote static key is not the expected one.
    #[error("remote static key rejected")]
    RemoteKeyRejected,
    /// Fatal: the remote sent malformed frames.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// Fatal: the remote's Open carried a wrong (or no) capability for a feed we opened.
    #[error("Invalid remote channel capability")]
    InvalidCapability {
        /// The channel.
        discovery_key: DiscoveryKey,
    },
    /// Fatal: nothing received within the idle timeout (JS `ETIMEDOUT`).
    #[error("ETIMEDOUT: nothing received for {idle_ms} ms")]
    Timeout {
        /// How long the link was idle.
        idle_ms: u64,
    },
    /// Fatal when the remote opens too many channels; an API error for a local open.
    #[error("too many channels (limit {max})")]
    TooManyChannels {
        /// The limit.
        max: usize,
    },
    /// The session already failed or was destroyed.
    #[error("session is destroyed")]
    Destroyed,
    /// No locally opened channel has this discovery key.
    #[error("channel {} is not open", hex::encode(discovery_key))]
    ChannelNotOpen {
        /// The discovery key.
        discovery_key: DiscoveryKey,
    },
    /// The message type cannot be sent this way (Open/Close have their own calls).
    #[error("{0} messages cannot be sent with Session::send")]
    NotSendable(&'static str),
    /// The extension name is not registered (or registering it failed).
    #[error("extension {name:?}: {reason}")]
    Extension {
        /// The name.
        name: String,
        /// What went wrong.
        reason: &'static str,
    },
    /// The outgoing buffer is full: take the outgoing bytes first (back-pressure).
    #[error("outgoing buffer full ({len} of {max} bytes)")]
    OutgoingFull {
        /// Bytes buffered.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message could not be encoded (too large).
    #[error("cannot encode message: {0}")]
    Encode(#[from] EncodeError),
    /// Fatal: the remote sent a stream-level extension payload above the limit.
    #[error("extension {name:?} payload of {len} bytes exceeds the {max} byte limit")]
    ExtensionTooLarge {
        /// The extension name (empty if the id maps to none).
        name: String,
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

#[derive(Debug)]
struct Channel {
    /// The feed key, once we opened the channel locally.
    key: Option<[u8; 32]>,
    local_id: Option<u64>,
    remote_id: Option<u64>,
    /// The remote's capability; anything but 32 bytes can never be right and is not kept.
    remote_capability: Option<[u8; 32]>,
}

/// A frame waiting for the handshake; Open needs the split for its capability.
enum Pending {
    Message(u64, Message),
    Open { channel: u64, key: [u8; 32] },
}

struct Established {
    split: Split,
    cipher: TransportCipher,
    remote_public_key: [u8; 32],
    handshake_hash: Vec<u8>,
}

/// One protocol v8 connection, without I/O. See the module documentation for the loop.
pub struct Session {
    initiator: bool,
    handshake: Option<Handshake>,
    established: Option<Established>,
    expected_remote_key: Option<[u8; 32]>,
    authenticator: Option<Authenticator>,
    decoder: FrameDecoder,
    outgoing: Vec<u8>,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    events: VecDeque<Event>,
    channels: HashMap<DiscoveryKey, Channel>,
    local_ids: HashMap<u64, DiscoveryKey>,
    remote_ids: HashMap<u64, DiscoveryKey>,
    next_local_id: u64,
    extensions: extensions::Extensions,
    now: u64,
    last_recv: u64,
    last_send: u64,
    idle_timeout_ms: u64,
    keep_alive_ms: u64,
    max_outgoing: usize,
    max_events: usize,
    max_channels: usize,
    max_extension_payload: usize,
    destroyed: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("initiator", &self.initiator)
            .field("handshake_complete", &self.established.is_some())
            .field("channels", &self.channels.len())
            .field("outgoing", &self.outgoing.len())
            .field("events", &self.events.len())
            .field("destroyed", &self.destroyed)
            .finish_non_exhaustive()
    }
}

/// Bytes decrypted at a time in `receive`.
const RECEIVE_WINDOW: usize = 64 * 1024;

/// Rough upper bound of the frame overhead (length + header varints) for budget checks.
const FRAME_OVERHEAD: usize = 20;

impl Session {
    /// Creates a session at time `now_ms`. An initiator's first handshake message is
    /// immediately in the outgoing buffer.
    pub fn new(config: SessionConfig, now_ms: u64) -> Result<Self, SessionError> {
        let handshake = match config.handshake_params {
            Some(params) => Handshake::with_params(config.initiator, &config.key_pair, params),
            None => Handshake::new(config.initiator, &config.key_pair),
        }
        .map_err(SessionError::Handshake)?;
        let mut session = Self {
            initiator: config.initiator,
            handshake: Some(handshake),
            established: None,
            expected_remote_key: config.expected_remote_key,
            authenticator: None,
            decoder: FrameDecoder::with_max_body(config.max_inbound_frame),
            outgoing: Vec::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            events: VecDeque::new(),
            channels: HashMap::new(),
            local_ids: HashMap::new(),
            remote_ids: HashMap::new(),
            next_local_id: 1,
            extensions: extensions::Extensions::new(),
            now: now_ms,
            last_recv: now_ms,
            last_send: now_ms,
            idle_timeout_ms: config.idle_timeout_ms,
            keep_alive_ms: config.keep_alive_ms,
            max_outgoing: config.max_outgoing_bytes,
            max_events: config.max_events.max(1),
            max_channels: config.max_channels,
            max_extension_payload: config.max_extension_payload,
            destroyed: false,
        };
        session.drain_handshake_output();
        Ok(session)
    }

    /// Installs a check on the remote static key, run when it arrives (before the initiator
    /// sends its last message / before the responder accepts transport data). Returning
    /// false fails the handshake with [`SessionError::RemoteKeyRejected`].
    pub fn set_authenticator(&mut self, check: Authenticator) {
        self.authenticator = Some(check);
    }

    /// Whether we are the Noise initiator.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// Whether the handshake finished.
    pub fn is_handshake_complete(&self) -> bool {
        self.established.is_some()
    }

    /// Whether the session failed or was destroyed.
    pub fn is_destroyed(&self) -> bool {
        self.destroyed
    }

    /// Changes the largest frame body accepted from the remote (from the next frame on): a
    /// driver raises it to [`crate::wire::MAX_BODY_LEN`] when it starts downloading.
    pub fn set_max_inbound_frame(&mut self, max: usize) {
        self.decoder.set_max_body(max);
    }

    /// The largest frame body accepted from the remote.
    pub fn max_inbound_frame(&self) -> usize {
        self.decoder.max_body()
    }

    /// Received bytes held in the session: the partial frame in the decoder.
    pub fn inbound_buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// The remote static key, once known.
    pub fn remote_public_key(&self) -> Option<[u8; 32]> {
        match (&self.established, &self.handshake) {
            (Some(e), _) => Some(e.remote_public_key),
            (None, Some(h)) => h.remote_static_key(),
            (None, None) => None,
        }
    }

    /// The Noise handshake hash (64 bytes), once the handshake finished.
    pub fn handshake_hash(&self) -> Option<&[u8]> {
        self.established
            .as_ref()
            .map(|e| e.handshake_hash.as_slice())
    }

    /// Destroys the session (no further bytes are produced or accepted).
    pub fn destroy(&mut self) {
        self.destroyed = true;
        self.pending.clear();
        self.pending_bytes = 0;
    }

    // ----- bytes and time -------------------------------------------------------------

    /// Feeds bytes received at `now_ms`. Returns how many were consumed; fewer than given
    /// only when the event queue or outgoing buffer is full (drain them, then pass the rest
    /// again). A fatal error destroys the session.
    pub fn receive(&mut self, data: &[u8], now_ms: u64) -> Result<usize, SessionError> {
        self.alive()?;
        self.now = self.now.max(now_ms);
        if data.is_empty() {
            return Ok(0);
        }
        self.last_recv = self.now;
        let result = self.receive_inner(data);
        if let Err(error) = &result {
            tracing::debug!(%error, "protocol session destroyed");
            self.destroy();
        }
        result
    }

    fn receive_inner(&mut self, data: &[u8]) -> Result<usize, SessionError> {
        let mut consumed = 0;
        if let Some(handshake) = self.handshake.as_mut() {
            let expected = self.expected_remote_key;
            let authenticator = &mut self.authenticator;
            let mut rejected = false;
            let mut check = |key: &[u8; 32]| {
                // Written out rather than `is_none_or` (MSRV 1.80).
                let key_ok = match expected {
                    Some(e) => e == *key,
                    None => true,
                };
                let ok = key_ok
                    && match authenticator.as_mut() {
                        Some(f) => f(key),
                        None => true,
                    };
                rejected = !ok;
                ok
            };
            let result = handshake.receive(data, &mut check);
            self.drain_handshake_output();
            consumed = match result {
                Ok(n) => n,
                Err(NoiseError::Rejected) if rejected => {
                    return Err(SessionError::RemoteKeyRejected)
                }
                Err(e) => return Err(SessionError::Handshake(e)),
            };
            if self.handshake.as_ref().is_some_and(Handshake::is_finished) {
                self.complete_handshake()?;
            }
        }
        let rest = data.get(consumed..).unwrap_or_default();
        if rest.is_empty() || self.established.is_none() {
            return Ok(consumed);
        }
        Ok(consumed + self.receive_transport(rest)?)
    }

    fn receive_transport(&mut self, data: &[u8]) -> Result<usize, SessionError> {
        let mut consumed = 0;
        // Decrypt in bounded windows so that a caller handing over a large chunk while the
        // event queue is nearly full does not make us copy (and rewind) all of it each time.
        for window in data.chunks(RECEIVE_WINDOW) {
            let mut plain = window.to_vec();
            match self.established.as_mut() {
                Some(e) => e.cipher.decrypt(&mut plain),
                None => return Ok(consumed),
            }
            let mut input: &[u8] = &plain;
            let mut stopped = false;
            while !input.is_empty() {
                // Each frame yields at most one event and one small control reply.
                if self.events.len() >= self.max_events || self.outgoing.len() >= self.max_outgoing
                {
                    stopped = true;
                    break;
                }
                match self.decoder.decode_next(&mut input)? {
                    None => break,
                    Some(Decoded::KeepAlive) => {}
                    Some(Decoded::Frame(frame)) => self.on_frame(frame.channel, frame.message)?,
                }
            }
            let unconsumed = input.len();
            consumed += window.len() - unconsumed;
            if stopped {
                if let Some(e) = self.established.as_mut() {
                    e.cipher.unread(unconsumed);
                }
                break;
            }
        }
        Ok(consumed)
    }

    /// Advances time: sends a keep-alive when due, fails with [`SessionError::Timeout`] when
    /// nothing was received for the idle timeout.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), SessionError> {
        self.alive()?;
        self.now = self.now.max(now_ms);
        if self.idle_timeout_ms > 0
            && self.now >= self.last_recv.saturating_add(self.idle_timeout_ms)
        {
            self.destroy();
            return Err(SessionError::Timeout {
                idle_ms: self.now - self.last_recv,
            });
        }
        // JS skips the ping during the handshake and while messages are queued.
        if self.keep_alive_ms > 0
            && self.pending.is_empty()
            && self.now >= self.last_send.saturating_add(self.keep_alive_ms)
        {
            if let Some(e) = self.established.as_mut() {
                let mut ping = [0u8];
                e.cipher.encrypt(&mut ping);
                self.outgoing.extend_from_slice(&ping);
                self.last_send = self.now;
            }
        }
        Ok(())
    }

    /// When [`Session::tick`] should next be called (absolute milliseconds), if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.destroyed {
            return None;
        }
        let idle =
            (self.idle_timeout_ms > 0).then(|| self.last_recv.saturating_add(self.idle_timeout_ms));
        let keep_alive = (self.keep_alive_ms > 0 && self.established.is_some())
            .then(|| self.last_send.saturating_add(self.keep_alive_ms));
        match (idle, keep_alive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes all bytes ready to be written to the connection.
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// Appends the bytes ready to be written to `out` (reusing both buffers' capacity,
    /// which `take_outgoing` cannot).
    pub fn take_outgoing_into(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            std::mem::swap(out, &mut self.outgoing);
        } else {
            out.extend_from_slice(&self.outgoing);
            self.outgoing.clear();
        }
        // Do not keep a burst's capacity around on an idle session.
        if self.outgoing.capacity() > 256 * 1024 {
            self.outgoing.shrink_to(16 * 1024);
        }
    }

    /// Bytes waiting in the outgoing buffer (for back-pressure decisions).
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 64 {
            // A burst of frames must not keep the queue's memory on an idle session.
            self.events = VecDeque::new();
        }
        event
    }

    /// Events waiting in the queue.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    // ----- channels -------------------------------------------------------------------

    /// Opens (or re-uses) the channel for feed `key`: sends Open{discoveryKey, capability}
    /// (queued until the handshake is done). If the remote already opened it, its
    /// capability is checked now and [`Event::ChannelOpened`] follows. Returns the
    /// discovery key that addresses the channel.
    pub fn open_channel(&mut self, key: &[u8; 32]) -> Result<DiscoveryKey, SessionError> {
        self.alive()?;
        let dk = crypto::discovery_key(key);
        if self.channels.get(&dk).is_some_and(|c| c.key.is_some()) {
            return Ok(dk);
        }
        if !self.channels.contains_key(&dk) && self.channels.len() >= self.max_channels {
            return Err(SessionError::TooManyChannels {
                max: self.max_channels,
            });
        }
        self.check_budget(FRAME_OVERHEAD + 70)?;
        let id = self.alloc_local_id();
        let channel = self.channels.entry(dk).or_insert_with(|| Channel {
            key: None,
            local_id: None,
            remote_id: None,
            remote_capability: None,
        });
        channel.key = Some(*key);
        channel.local_id = Some(id);
        self.local_ids.insert(id, dk);
        if self.established.is_some() && self.pending.is_empty() {
            let capability = self.capability(key);
            let open = Message::Open(Open {
                discovery_key: dk.to_vec(),
                capability,
            });
            self.write_frame(id, &open)?;
        } else {
            self.pending_bytes = self.pending_bytes.saturating_add(FRAME_OVERHEAD + 70);
            self.pending.push_back(Pending::Open {
                channel: id,
                key: *key,
            });
        }
        if self
            .channels
            .get(&dk)
            .is_some_and(|c| c.remote_id.is_some())
        {
            self.verify_remote(&dk)?;
        }
        Ok(dk)
    }

    /// Closes a channel: Close{} if we opened it, else Close{discoveryKey} on a fresh id
    /// (how a seller refuses a feed it does not serve).
    pub fn close_channel(&mut self, discovery_key: &DiscoveryKey) -> Result<(), SessionError> {
        self.alive()?;
        self.check_budget(FRAME_OVERHEAD + 34)?;
        let local = self.channels.get(discovery_key).and_then(|c| c.local_id);
        match local {
            Some(id) => {
                self.remove_channel(discovery_key);
                self.send_frame(id, Message::Close(Close::default()))
            }
            None => {
                let id = self.alloc_local_id();
                self.send_frame(
                    id,
                    Message::Close(Close {
                        discovery_key: Some(discovery_key.to_vec()),
                    }),
                )
            }
        }
    }

    /// Same as [`Session::close_channel`], named for answering [`Event::DiscoveryKey`].
    pub fn close_discovery_key(
        &mut self,
        discovery_key: &DiscoveryKey,
    ) -> Result<(), SessionError> {
        self.close_channel(discovery_key)
    }

    /// Sends a message on a channel we opened. Open and Close have their own calls.
    pub fn send(
        &mut self,
        discovery_key: &DiscoveryKey,
        message: Message,
    ) -> Result<(), SessionError> {
        self.alive()?;
        match message {
            Message::Open(_) => return Err(SessionError::NotSendable("Open")),
            Message::Close(_) => return Err(SessionError::NotSendable("Close")),
            Message::Unknown { .. } => return Err(SessionError::NotSendable("Unknown")),
            _ => {}
        }
        let id = self
            .channels
            .get(discovery_key)
            .and_then(|c| c.local_id)
            .ok_or(SessionError::ChannelNotOpen {
                discovery_key: *discovery_key,
            })?;
        self.check_budget(message.encoded_len().saturating_add(FRAME_OVERHEAD))?;
        self.send_frame(id, message)
    }

    /// Sends a Data message from borrowed parts (the upload hot path: no copies of the
    /// block or the proof nodes). Same rules as [`Session::send`].
    pub fn send_data(
        &mut self,
        discovery_key: &DiscoveryKey,
        data: &crate::wire::DataRef<'_>,
    ) -> Result<(), SessionError> {
        self.alive()?;
        let id = self
            .channels
            .get(discovery_key)
            .and_then(|c| c.local_id)
            .ok_or(SessionError::ChannelNotOpen {
                discovery_key: *discovery_key,
            })?;
        self.check_budget(data.encoded_len().saturating_add(FRAME_OVERHEAD))?;
        if !(self.established.is_some() && self.pending.is_empty()) {
            return self.send_frame(id, Message::Data(data.to_data()));
        }
        let Some(e) = self.established.as_mut() else {
            return Ok(());
        };
        let start = self.outgoing.len();
        crate::wire::encode_data_frame(id, data, &mut self.outgoing)?;
        if let Some(new_bytes) = self.outgoing.get_mut(start..) {
            e.cipher.encrypt(new_bytes);
        }
        self.last_send = self.now;
        Ok(())
    }

    /// Whether we opened the channel.
    pub fn is_open(&self, discovery_key: &DiscoveryKey) -> bool {
        self.channels
            .get(discovery_key)
            .is_some_and(|c| c.local_id.is_some())
    }

    /// Whether the remote opened the channel.
    pub fn is_remote_open(&self, discovery_key: &DiscoveryKey) -> bool {
        self.channels
            .get(discovery_key)
            .is_some_and(|c| c.remote_id.is_some())
    }

    /// Channels in the table (opened by either side).
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// The feed key of a channel we opened.
    pub fn channel_key(&self, discovery_key: &DiscoveryKey) -> Option<[u8; 32]> {
        self.channels.get(discovery_key).and_then(|c| c.key)
    }

    // ----- stream-level extensions -------------------------------------------------------

    /// Registers a stream-level extension name; the list is re-announced before the next
    /// extension message.
    pub fn register_extension(&mut self, name: &str) -> Result<(), SessionError> {
        self.extensions
            .register(name)
            .map_err(|reason| SessionError::Extension {
                name: name.to_string(),
                reason,
            })
    }

    /// Unregisters a name; returns whether it was registered.
    pub fn unregister_extension(&mut self, name: &str) -> bool {
        self.extensions.unregister(name)
    }

    /// Our registered names, sorted (index = id we send).
    pub fn local_extensions(&self) -> &[String] {
        self.extensions.local()
    }

    /// The remote's latest announced names.
    pub fn remote_extensions(&self) -> Option<&[String]> {
        self.extensions.remote()
    }

    /// Sends a stream-level extension message (after Options on channel 0 if our list
    /// changed since last announced). Encode JSON / UTF-8 payloads before calling.
    pub fn send_extension(&mut self, name: &str, payload: &[u8]) -> Result<(), SessionError> {
        self.alive()?;
        let id = self
            .extensions
            .local_id(name)
            .ok_or_else(|| SessionError::Extension {
                name: name.to_string(),
                reason: "not registered",
            })?;
        let names_len: usize = self.extensions.local().iter().map(|n| n.len() + 3).sum();
        self.check_budget(
            payload
                .len()
                .saturating_add(names_len)
                .saturating_add(2 * FRAME_OVERHEAD),
        )?;
        if let Some(names) = self.extensions.take_announcement() {
            self.send_frame(
                0,
                Message::Options(Options {
                    extensions: names,
                    ack: None,
                }),
            )?;
        }
        self.send_frame(
            0,
            Message::Extension(Extension {
                id,
                payload: payload.to_vec(),
            }),
        )
    }

    // ----- internals ---------------------------------------------------------------------

    fn alive(&self) -> Result<(), SessionError> {
        if self.destroyed {
            Err(SessionError::Destroyed)
        } else {
            Ok(())
        }
    }

    fn fail(&mut self, error: SessionError) -> SessionError {
        self.destroy();
        error
    }

    fn check_budget(&self, extra: usize) -> Result<(), SessionError> {
        let len = self.outgoing.len().saturating_add(self.pending_bytes);
        if len.saturating_add(extra) > self.max_outgoing && len > 0 {
            return Err(SessionError::OutgoingFull {
                len,
                max: self.max_outgoing,
            });
        }
        Ok(())
    }

    fn alloc_local_id(&mut self) -> u64 {
        // Ids are never reused (JS allocLocal always appends).
        let id = self.next_local_id;
        self.next_local_id = self.next_local_id.saturating_add(1);
        id
    }

    fn capability(&self, key: &[u8; 32]) -> Option<Vec<u8>> {
        self.established
            .as_ref()
            .map(|e| crypto::capability(key, &e.split.rx, &e.split.tx).to_vec())
    }

    fn drain_handshake_output(&mut self) {
        if let Some(h) = self.handshake.as_mut() {
            let bytes = h.take_outgoing();
            if !bytes.is_empty() {
                self.outgoing.extend_from_slice(&bytes);
                self.last_send = self.now;
            }
        }
    }

    fn complete_handshake(&mut self) -> Result<(), SessionError> {
        let Some(handshake) = self.handshake.take() else {
            return Ok(());
        };
        let transport = handshake.finish().map_err(SessionError::Handshake)?;
        let remote_public_key = transport.remote_static_key;
        self.established = Some(Established {
            split: transport.split,
            cipher: transport.cipher,
            remote_public_key,
            handshake_hash: transport.handshake_hash,
        });
        tracing::debug!(
            remote = %hex::encode(remote_public_key),
            initiator = self.initiator,
            "noise handshake complete"
        );
        self.events
            .push_back(Event::HandshakeComplete { remote_public_key });
        // Flush what was queued during the handshake, in order.
        while let Some(item) = self.pending.pop_front() {
            let (channel, message) = match item {
                Pending::Message(channel, message) => (channel, message),
                Pending::Open { channel, key } => (
                    channel,
                    Message::Open(Open {
                        discovery_key: crypto::discovery_key(&key).to_vec(),
                        capability: self.capability(&key),
                    }),
                ),
            };
            self.write_frame(channel, &message)?;
        }
        self.pending_bytes = 0;
        Ok(())
    }

    /// Sends now if possible, else queues behind the handshake / earlier queued frames.
    fn send_frame(&mut self, channel: u64, message: Message) -> Result<(), SessionError> {
        if self.established.is_some() && self.pending.is_empty() {
            self.write_frame(channel, &message)
        } else {
            self.pending_bytes = self
                .pending_bytes
                .saturating_add(message.encoded_len().saturating_add(FRAME_OVERHEAD));
            self.pending.push_back(Pending::Message(channel, message));
            Ok(())
        }
    }

    fn write_frame(&mut self, channel: u64, message: &Message) -> Result<(), SessionError> {
        let Some(e) = self.established.as_mut() else {
            return Ok(());
        };
        let start = self.outgoing.len();
        encode_frame(channel, message, &mut self.outgoing)?;
        if let Some(new_bytes) = self.outgoing.get_mut(start..) {
            e.cipher.encrypt(new_bytes);
        }
        self.last_send = self.now;
        Ok(())
    }

    fn on_frame(&mut self, channel: u64, message: Message) -> Result<(), SessionError> {
        let remote_channel = self.remote_ids.get(&channel).copied();
        match message {
            Message::Open(open) => self.on_open(channel, open),
            Message::Close(close) => self.on_close(channel, close),
            Message::Options(options) if channel == 0 && remote_channel.is_none() => {
                // The decoder bounds the list (count and name length), so this copy for
                // the event is small.
                let names = options.extensions;
                self.events.push_back(Event::RemoteExtensions {
                    names: names.clone(),
                });
                self.extensions.set_remote(names);
                Ok(())
            }
            Message::Extension(ext) if channel == 0 && remote_channel.is_none() => {
                if ext.payload.len() > self.max_extension_payload {
                    let name = self
                        .extensions
                        .resolve_remote(ext.id)
                        .unwrap_or_default()
                        .to_string();
                    return Err(self.fail(SessionError::ExtensionTooLarge {
                        name,
                        len: ext.payload.len(),
                        max: self.max_extension_payload,
                    }));
                }
                if let Some(name) = self.extensions.resolve_remote(ext.id) {
                    self.events.push_back(Event::Extension {
                        name: name.to_string(),
                        payload: ext.payload,
                    });
                }
                Ok(())
            }
            Message::Unknown { .. } => Ok(()),
            message => {
                // Only channels we opened have handlers in JS; others drop messages.
                if let Some(dk) = remote_channel {
                    if self.channels.get(&dk).is_some_and(|c| c.local_id.is_some()) {
                        self.events.push_back(Event::Message {
                            discovery_key: dk,
                            message,
                        });
                    }
                }
                Ok(())
            }
        }
    }

    fn on_open(&mut self, remote_id: u64, open: Open) -> Result<(), SessionError> {
        let Ok(dk) = <DiscoveryKey>::try_from(open.discovery_key.as_slice()) else {
            // Cannot name any feed of ours; JS would only report it upwards.
            tracing::debug!(
                remote_id,
                "ignoring Open with a discovery key that is not 32 bytes"
            );
            return Ok(());
        };
        if !self.channels.contains_key(&dk) && self.channels.len() >= self.max_channels {
            return Err(self.fail(SessionError::TooManyChannels {
                max: self.max_channels,
            }));
        }
        // A remote id re-used for another channel detaches the old one (JS attachRemote).
        if let Some(old) = self.remote_ids.insert(remote_id, dk) {
            if old != dk {
                if let Some(c) = self.channels.get_mut(&old) {
                    c.remote_id = None;
                }
            }
        }
        let channel = self.channels.entry(dk).or_insert_with(|| Channel {
            key: None,
            local_id: None,
            remote_id: None,
            remote_capability: None,
        });
        if let Some(previous) = channel.remote_id.replace(remote_id) {
            if previous != remote_id {
                self.remote_ids.remove(&previous);
            }
        }
        channel.remote_capability = open
            .capability
            .and_then(|c| <[u8; 32]>::try_from(c.as_slice()).ok());
        tracing::debug!(remote_id, dk = %hex::encode(dk), "remote opened channel");
        if channel.local_id.is_none() {
            self.events
                .push_back(Event::DiscoveryKey { discovery_key: dk });
            return Ok(());
        }
        self.verify_remote(&dk)
    }

    /// Checks the remote capability of a channel both sides opened, then reports it open.
    fn verify_remote(&mut self, dk: &DiscoveryKey) -> Result<(), SessionError> {
        let Some(channel) = self.channels.get(dk) else {
            return Ok(());
        };
        let (Some(key), Some(e)) = (channel.key, self.established.as_ref()) else {
            return Ok(());
        };
        let expected = crypto::remote_capability(&key, &e.split.rx, &e.split.tx);
        let ok = channel
            .remote_capability
            .is_some_and(|c| constant_time_eq(&c, &expected));
        if !ok {
            return Err(self.fail(SessionError::InvalidCapability { discovery_key: *dk }));
        }
        self.events
            .push_back(Event::ChannelOpened { discovery_key: *dk });
        Ok(())
    }

    fn on_close(&mut self, remote_id: u64, close: Close) -> Result<(), SessionError> {
        let dk = match self.remote_ids.get(&remote_id) {
            Some(dk) => Some(*dk),
            None => close
                .discovery_key
                .as_deref()
                .and_then(|b| <DiscoveryKey>::try_from(b).ok())
                .filter(|dk| self.channels.contains_key(dk)),
        };
        let Some(dk) = dk else {
            return Ok(());
        };
        tracing::debug!(remote_id, dk = %hex::encode(dk), "remote closed channel");
        let local = self.channels.get(&dk).and_then(|c| c.local_id);
        self.remove_channel(&dk);
        if let Some(id) = local {
            // Answer with our own Close, as JS does; control replies ignore the budget.
            self.send_frame(id, Message::Close(Close::default()))?;
        }
        self.events
            .push_back(Event::ChannelClosed { discovery_key: dk });
        Ok(())
    }

    fn remove_channel(&mut self, dk: &DiscoveryKey) {
        if let Some(channel) = self.channels.remove(dk) {
            if let Some(id) = channel.local_id {
                self.local_ids.remove(&id);
            }
            if let Some(id) = channel.remote_id {
                if self.remote_ids.get(&id) == Some(dk) {
                    self.remote_ids.remove(&id);
                }
            }
        }
    }
}

/// Compares capabilities without an early exit (they are MACs of the feed key).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
