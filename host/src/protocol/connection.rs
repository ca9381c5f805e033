//! One connection as a sans-IO state machine: a [`Session`] with its channels' [`Replicator`]s,
//! serving on request, announce throttling and the shared download log.
//!
//! The shape is quinn-proto's `Connection`: bytes, commands and time go in through the
//! `handle_*` methods, bytes, events and the next deadline come out through
//! [`Connection::poll_transmit`], [`Connection::poll_event`] and
//! [`Connection::poll_timeout`]. Nothing here reads a clock or touches a socket: `now` is
//! milliseconds on the caller's clock (the one given to [`Session`]). `net/` drives a
//! `Connection` over TCP; the tests drive two of them in memory with virtual time.
//!
//! Feeds are shared between connections through [`FeedShare`] (the driver's
//! `net::SharedFeed`): the feed behind a mutex held for the length of one message's
//! handling, its [`DownloadLog`], and wake-ups for the other connections when it grows.
//!
//! Bounds: input is taken only while [`Connection::wants_input`] (nothing left
//! unconsumed, fewer than the write high-water mark of bytes unsent, no undelivered
//! events); the session's event queue, outgoing buffer and channel table and each
//! replicator's queues are bounded by their own configurations.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, MutexGuard};

use super::budget::{Announcing, SignatureBudget};
use super::replicate::{ReplicationError, ReplicationEvent, Replicator, ReplicatorConfig};
use super::{DiscoveryKey, Event as SessionEvent, Session, SessionConfig, SessionError};
use crate::storage::{Feed, Store};
use crate::wire::Message;

/// Recent downloads kept for announcing to the other peers (older ones are dropped:
/// a Have is advisory).
pub const DOWNLOAD_LOG: usize = 4096;
/// The default [`ConnectionConfig::write_high_water`].
pub const DEFAULT_WRITE_HIGH_WATER: usize = 4 * 1024 * 1024;
/// An event queue that grew larger than this is given back once drained (a burst of
/// events must not keep its memory on an idle connection).
const EVENTS_KEEP: usize = 64;

/// Channel ids, unique in the process (to not announce a download back to its source).
static NEXT_CHANNEL_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Blocks recently downloaded into a shared feed, for `Have{start: index}` to the other
/// peers (hypercore announces every verified block to every other peer that sent a Want).
/// Holds at most [`DOWNLOAD_LOG`] entries.
#[derive(Debug, Default)]
pub struct DownloadLog {
    /// Sequence number of the next entry.
    next: u64,
    /// `(sequence, block, channel id that downloaded it)`, oldest first.
    entries: VecDeque<(u64, u64, u64)>,
}

impl DownloadLog {
    /// The sequence number the next entry gets (a new channel announces from here).
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Records `blocks` downloaded by channel `origin`, dropping the oldest entries
    /// beyond [`DOWNLOAD_LOG`].
    pub fn record(&mut self, origin: u64, blocks: &[u64]) {
        for &block in blocks {
            let seq = self.next;
            self.next = self.next.saturating_add(1);
            if self.entries.len() >= DOWNLOAD_LOG {
                self.entries.pop_front();
            }
            self.entries.push_back((seq, block, origin));
        }
    }

    /// Appends to `out` the blocks downloaded by channels other than `me` since sequence
    /// `since` (those still in the log); returns the next sequence to ask from.
    pub fn since(&self, since: u64, me: u64, out: &mut Vec<u64>) -> u64 {
        let first = self.entries.front().map_or(self.next, |e| e.0);
        let skip = usize::try_from(since.saturating_sub(first)).unwrap_or(usize::MAX);
        if skip < self.entries.len() {
            for &(_, block, origin) in self.entries.range(skip..) {
                if origin != me {
                    out.push(block);
                }
            }
        }
        self.next
    }
}

/// A feed shared by the connections that replicate it (implemented by
/// `net::SharedFeed`; the tests have an in-memory one).
pub trait FeedShare: Send + Sync {
    /// The feed's store.
    type Store: Store;
    /// What wakes a connection when another one changed the feed.
    type Waker: ?Sized + Send + Sync;

    /// Locks the feed (held for the length of one message's handling).
    fn lock(&self) -> MutexGuard<'_, Feed<Self::Store>>;
    /// The feed's length as last announced through [`FeedShare::grown`] (no lock).
    fn length(&self) -> u64;
    /// Records that the feed now has `length` blocks and wakes the subscribed
    /// connections.
    fn grown(&self, length: u64);
    /// Locks the feed's download log.
    fn download_log(&self) -> MutexGuard<'_, DownloadLog>;
    /// The download log's next sequence number. A share that can tell it without the
    /// lock (an atomic kept beside the log) overrides this and
    /// [`FeedShare::record_downloads`]: every connection asks on every wake.
    fn download_seq(&self) -> u64 {
        self.download_log().next_seq()
    }
    /// Records `blocks` downloaded by channel `origin` in the download log.
    fn record_downloads(&self, origin: u64, blocks: &[u64]) {
        self.download_log().record(origin, blocks);
    }
    /// Wakes `waker` whenever the feed changes (bounded: a share may ignore
    /// subscriptions beyond its limit).
    fn subscribe(&self, waker: &Arc<Self::Waker>);
    /// Wakes the subscribed connections except `except` (the caller itself).
    fn wake(&self, except: Option<&Arc<Self::Waker>>);
    /// Asks that changes of the feed not wake `waker` for the next `for_ms` ms (0: wake
    /// it again): the connection's own timer wakes it then. A share may ignore this
    /// (waking more often is never wrong).
    fn quiet(&self, waker: &Arc<Self::Waker>, for_ms: u64) {
        let _ = (waker, for_ms);
    }
}

/// A feed and how to replicate it on a channel.
pub struct ChannelSpec<F> {
    /// The feed.
    pub feed: Arc<F>,
    /// Replication settings (a rekeyed signer makes the channel key the signer's).
    pub config: ReplicatorConfig,
}

impl<F> Clone for ChannelSpec<F> {
    fn clone(&self) -> Self {
        Self {
            feed: self.feed.clone(),
            config: self.config.clone(),
        }
    }
}

impl<F> std::fmt::Debug for ChannelSpec<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelSpec")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F: FeedShare> ChannelSpec<F> {
    /// The key the channel is opened with.
    pub fn key(&self) -> [u8; 32] {
        match &self.config.signer {
            Some(signer) => signer.public_key(),
            None => self.feed.lock().key(),
        }
    }
}

/// What a connection reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The handshake finished.
    Connected {
        /// The remote's static Noise key (a Dazaar buyer key, for a seller).
        remote_public_key: [u8; 32],
    },
    /// Replication progress on a channel.
    Replication {
        /// The channel.
        discovery_key: DiscoveryKey,
        /// What happened.
        event: ReplicationEvent,
    },
    /// A channel was opened on both sides.
    ChannelOpened {
        /// The channel.
        discovery_key: DiscoveryKey,
    },
    /// The remote closed a channel.
    ChannelClosed {
        /// The channel.
        discovery_key: DiscoveryKey,
    },
    /// A stream-level extension message for a registered name.
    Extension {
        /// The name.
        name: String,
        /// The payload.
        payload: Vec<u8>,
    },
}

/// Instructions to a connection.
#[non_exhaustive]
pub enum Command<F> {
    /// Open a channel (a seller opening a buyer's rekeyed view after validation).
    Open(ChannelSpec<F>),
    /// Close a channel (ours, or one the remote opened that is pending under
    /// [`ConnectionConfig::keep_unknown`]).
    Close(DiscoveryKey),
    /// Start or stop serving on a channel (sends Status).
    SetUploading(DiscoveryKey, bool),
    /// Register a stream-level extension name.
    RegisterExtension(String),
    /// Send a stream-level extension message.
    SendExtension(String, Vec<u8>),
    /// Download blocks `[start, end)` (`end` None: and everything after, live) on a sparse
    /// channel.
    Download(DiscoveryKey, u64, Option<u64>),
    /// Flush what is queued and end the connection ([`Connection::close`]).
    Shutdown,
    /// Try again to answer queued requests (a channel's [`ByteMeter`] got credit).
    ///
    /// [`ByteMeter`]: super::meter::ByteMeter
    Resume,
}

impl<F> std::fmt::Debug for Command<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Open(spec) => f.debug_tuple("Open").field(spec).finish(),
            Command::Close(dk) => f.debug_tuple("Close").field(&hex::encode(dk)).finish(),
            Command::SetUploading(dk, u) => f
                .debug_tuple("SetUploading")
                .field(&hex::encode(dk))
                .field(u)
                .finish(),
            Command::RegisterExtension(n) => f.debug_tuple("RegisterExtension").field(n).finish(),
            Command::SendExtension(n, p) => f
                .debug_tuple("SendExtension")
                .field(n)
                .field(&p.len())
                .finish(),
            Command::Download(dk, start, end) => f
                .debug_tuple("Download")
                .field(&hex::encode(dk))
                .field(start)
                .field(end)
                .finish(),
            Command::Shutdown => f.write_str("Shutdown"),
            Command::Resume => f.write_str("Resume"),
        }
    }
}

/// A failure of the connection. Every variant ends it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The protocol session failed (handshake, bad frames, capability, idle timeout).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Replication on a channel failed (bad data, request timeout, too many requests,
    /// a storage error).
    #[error(transparent)]
    Replication(#[from] ReplicationError),
}

/// How a [`Connection`] runs.
pub struct ConnectionConfig<F: FeedShare> {
    /// Channels we open at the start.
    pub open: Vec<ChannelSpec<F>>,
    /// Channels we open when the remote asks for their discovery key; other discovery
    /// keys get Close (unless `keep_unknown`).
    pub serve: Vec<ChannelSpec<F>>,
    /// Stream-level extension names registered before anything is received (so that no
    /// message of the remote can arrive before its name is known).
    pub extensions: Vec<String>,
    /// Leave a remote's Open for a discovery key we do not serve pending instead of
    /// closing it (a Dazaar buyer: the seller opens the one-time feed right after telling
    /// its key, and the buyer opens it when the key arrives). Bounded by the session's
    /// channel limit.
    pub keep_unknown: bool,
    /// While this many bytes given out by [`Connection::poll_transmit`] are not yet
    /// reported written ([`Connection::handle_sent`]), the connection neither takes
    /// input nor fills request windows.
    pub write_high_water: usize,
    /// Woken (through the feeds) when another connection changes a feed this one
    /// replicates; the owner then calls [`Connection::handle_wake`].
    pub waker: Arc<F::Waker>,
}

impl<F: FeedShare> ConnectionConfig<F> {
    /// A configuration with no channels, no extensions and the default high-water mark.
    pub fn new(waker: Arc<F::Waker>) -> Self {
        Self {
            open: Vec::new(),
            serve: Vec::new(),
            extensions: Vec::new(),
            keep_unknown: false,
            write_high_water: DEFAULT_WRITE_HIGH_WATER,
            waker,
        }
    }
}

/// One open channel with its replicator.
struct Channel<F> {
    feed: Arc<F>,
    rep: Replicator,
    announced_length: u64,
    /// Announce growth at most this often (ms; 0 = at once), or more rarely as the
    /// signature budget says.
    announce_interval_ms: u64,
    /// The signature budget this channel's announcements count against, and its place
    /// in it while it announces.
    budget: Option<(Arc<SignatureBudget>, Option<Announcing>)>,
    /// The replicator's signature count when last looked at, and when it last grew.
    signed: (u64, Option<u64>),
    /// When the remote last sent a Request (or the channel opened).
    last_request_ms: u64,
    /// When growth was last announced.
    last_announce_ms: u64,
    /// Downloads into the feed (its bitfield writes are deferred and flushed here).
    downloading: bool,
    /// This channel's process-wide id.
    id: u64,
    /// Next entry of the feed's download log to announce.
    download_seq: u64,
}

impl<F> Channel<F> {
    /// The announce interval now: the channel's own, widened by its signature budget,
    /// and at least [`IDLE_ANNOUNCE_MS`] for a remote that requested nothing for
    /// [`IDLE_AFTER_MS`] (a buyer holding what it wanted; its Haves are coalesced).
    fn interval_ms(&self, now: u64) -> u64 {
        let interval = match &self.budget {
            Some((b, _)) => b.interval_ms(self.announce_interval_ms),
            None => self.announce_interval_ms,
        };
        if interval > 0 && now.saturating_sub(self.last_request_ms) >= IDLE_AFTER_MS {
            interval.max(IDLE_ANNOUNCE_MS)
        } else {
            interval
        }
    }

    /// Counts the channel in its signature budget while it announces and signed within
    /// the last [`SIGNING_RECENTLY_MS`], and out of it otherwise (a buyer that follows
    /// nothing, found invalid, a channel closed): a thousand idle buyers must not slow
    /// the announcements of the few that read.
    fn count_in_budget(&mut self, now: u64) {
        let made = self.rep.signatures();
        if made != self.signed.0 {
            self.signed = (made, Some(now));
        }
        let recently = self
            .signed
            .1
            .is_some_and(|at| now.saturating_sub(at) < SIGNING_RECENTLY_MS);
        let announces = self.rep.announces() && recently;
        if let Some((budget, place)) = &mut self.budget {
            if announces && place.is_none() {
                *place = Some(budget.enter());
            } else if !announces {
                *place = None;
            }
        }
    }
}

/// A channel counts in its signature budget while it signed within this long.
const SIGNING_RECENTLY_MS: u64 = 1000;
/// A throttled channel whose remote requested nothing for this long is idle...
const IDLE_AFTER_MS: u64 = 2000;
/// ...and is told of growth at most this often.
const IDLE_ANNOUNCE_MS: u64 = 1000;

/// One connection's state: the session, its channels and their replicators.
pub struct Connection<F: FeedShare> {
    session: Session,
    channels: HashMap<DiscoveryKey, Channel<F>>,
    serve: HashMap<DiscoveryKey, ChannelSpec<F>>,
    waker: Arc<F::Waker>,
    keep_unknown: bool,
    write_high_water: usize,
    /// Received bytes the session has not consumed yet (it stops when its queues are
    /// full).
    unconsumed: Vec<u8>,
    /// The latest time given to the connection.
    now: u64,
    /// Until when feed changes do not wake this connection ([`FeedShare::quiet`]).
    quiet_until: Option<u64>,
    /// Bytes given out by `poll_transmit` and not yet reported written.
    unsent: usize,
    events: VecDeque<ConnectionEvent>,
    closing: bool,
}

impl<F: FeedShare> std::fmt::Debug for Connection<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("channels", &self.channels.len())
            .field("unconsumed", &self.unconsumed.len())
            .field("unsent", &self.unsent)
            .field("events", &self.events.len())
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

impl<F: FeedShare> Connection<F> {
    /// Starts a connection at `now`: registers the extensions, opens `config.open` and
    /// queues the first handshake message.
    pub fn new(
        session: SessionConfig,
        config: ConnectionConfig<F>,
        now: u64,
    ) -> Result<Self, ConnectionError> {
        let session = Session::new(session, now)?;
        let mut conn = Connection {
            session,
            channels: HashMap::new(),
            serve: HashMap::new(),
            waker: config.waker,
            keep_unknown: config.keep_unknown,
            write_high_water: config.write_high_water,
            unconsumed: Vec::new(),
            unsent: 0,
            events: VecDeque::new(),
            closing: false,
            now,
            quiet_until: None,
        };
        for name in &config.extensions {
            conn.session.register_extension(name)?;
        }
        for spec in config.serve {
            let key = spec.key();
            conn.serve.insert(crate::crypto::discovery_key(&key), spec);
        }
        for spec in config.open {
            conn.add_channel(spec, now)?;
        }
        conn.process(now)?;
        Ok(conn)
    }

    /// Bytes received from the remote at `now`. Those the session cannot take yet are
    /// kept and taken as its queues drain; call only while [`Connection::wants_input`].
    pub fn handle_input(&mut self, bytes: &[u8], now: u64) -> Result<(), ConnectionError> {
        let used = if self.unconsumed.is_empty() {
            self.session.receive(bytes, now)?
        } else {
            0
        };
        if let Some(rest) = bytes.get(used..) {
            self.unconsumed.extend_from_slice(rest);
        }
        self.process(now)
    }

    /// An instruction from the owner at `now`.
    pub fn handle_command(&mut self, command: Command<F>, now: u64) -> Result<(), ConnectionError> {
        match command {
            Command::Open(spec) => {
                self.add_channel(spec, now)?;
            }
            Command::Close(dk) => {
                // Also refuses a remote's Open left pending by `keep_unknown`.
                let ours = self.channels.remove(&dk).is_some();
                if ours || self.session.is_remote_open(&dk) {
                    self.session.close_channel(&dk)?;
                }
            }
            Command::SetUploading(dk, uploading) => {
                if let Some(ch) = self.channels.get_mut(&dk) {
                    ch.rep.set_uploading(&mut self.session, uploading)?;
                }
            }
            Command::RegisterExtension(name) => self.session.register_extension(&name)?,
            Command::SendExtension(name, payload) => {
                self.session.send_extension(&name, &payload)?
            }
            Command::Download(dk, start, end) => {
                if let Some(ch) = self.channels.get_mut(&dk) {
                    let mut feed = ch.feed.lock();
                    ch.rep.download(&mut self.session, &mut feed, start, end)?;
                }
            }
            Command::Shutdown => self.close(),
            // `process` below pumps every channel.
            Command::Resume => {}
        }
        self.process(now)
    }

    /// Time passed: fires the session's keep-alive and idle timeout and the replicators'
    /// request timeouts due at `now`, and announces growth held back by the announce
    /// interval.
    pub fn handle_timeout(&mut self, now: u64) -> Result<(), ConnectionError> {
        self.session.tick(now)?;
        for ch in self.channels.values_mut() {
            ch.rep.tick(now)?;
        }
        self.process(now)
    }

    /// The waker given in [`ConnectionConfig::waker`] fired: a feed changed (grew, or
    /// another connection downloaded blocks to announce).
    pub fn handle_wake(&mut self, now: u64) -> Result<(), ConnectionError> {
        self.process(now)
    }

    /// The transport wrote `n` of the bytes given out by [`Connection::poll_transmit`].
    pub fn handle_sent(&mut self, n: usize, now: u64) -> Result<(), ConnectionError> {
        self.unsent = self.unsent.saturating_sub(n);
        self.process(now)
    }

    /// Bytes to write to the transport, if any. They count as unsent until reported
    /// through [`Connection::handle_sent`].
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.session.outgoing_len() == 0 {
            return None;
        }
        let bytes = self.session.take_outgoing();
        self.unsent = self.unsent.saturating_add(bytes.len());
        Some(bytes)
    }

    /// Appends the bytes to write to `out` (as [`Connection::poll_transmit`], without
    /// an allocation when `out` is empty); returns how many.
    pub fn poll_transmit_into(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.session.outgoing_len();
        if n > 0 {
            self.session.take_outgoing_into(out);
            self.unsent = self.unsent.saturating_add(n);
        }
        n
    }

    /// The next event for the owner.
    pub fn poll_event(&mut self) -> Option<ConnectionEvent> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > EVENTS_KEEP {
            self.events = VecDeque::new();
        }
        event
    }

    /// When [`Connection::handle_timeout`] should next run (on the clock of `now`).
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut deadline = self.session.next_deadline();
        for ch in self.channels.values() {
            if let Some(d) = ch.rep.next_deadline() {
                deadline = Some(deadline.map_or(d, |x| x.min(d)));
            }
            // Growth held back by the announce interval is announced when it ends.
            let interval = ch.interval_ms(self.now);
            if interval > 0 && ch.rep.is_open() && ch.feed.length() > ch.announced_length {
                let d = ch.last_announce_ms.saturating_add(interval);
                deadline = Some(deadline.map_or(d, |x| x.min(d)));
            }
        }
        // While quiet, growth does not wake the connection: look at its end.
        if let Some(q) = self.quiet_until {
            deadline = Some(deadline.map_or(q, |x| x.min(q)));
        }
        deadline
    }

    /// Whether the connection takes more input now: nothing received is left
    /// unconsumed, fewer than the write high-water mark of bytes are unsent, every event
    /// was taken, and it is not closing.
    pub fn wants_input(&self) -> bool {
        !self.closing
            && self.unconsumed.is_empty()
            && self.events.is_empty()
            && self.backlog() < self.write_high_water
    }

    /// Ends the connection once what is queued is written: no more input is taken.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Whether [`Connection::close`] (or [`Command::Shutdown`]) was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether the session was destroyed (a fatal error; the connection must end).
    pub fn is_destroyed(&self) -> bool {
        self.session.is_destroyed()
    }

    /// Whether the Noise handshake finished.
    pub fn is_handshake_complete(&self) -> bool {
        self.session.is_handshake_complete()
    }

    /// Received bytes held: a partial frame in the session plus bytes not consumed yet.
    pub fn inbound_held(&self) -> usize {
        self.session
            .inbound_buffered()
            .saturating_add(self.unconsumed.len())
    }

    /// Memory held for received bytes (as [`Connection::inbound_held`], counting the
    /// capacity of the unconsumed buffer).
    pub fn inbound_allocated(&self) -> usize {
        self.session
            .inbound_buffered()
            .saturating_add(self.unconsumed.capacity())
    }

    /// The bytes of a partial frame the session holds.
    pub fn partial_frame(&self) -> usize {
        self.session.inbound_buffered()
    }

    /// Whether a channel for `discovery_key` is open on our side.
    pub fn has_channel(&self, discovery_key: &DiscoveryKey) -> bool {
        self.channels.contains_key(discovery_key)
    }

    /// Writes the bitfield pages of downloads made since the last call (downloads defer
    /// them; the owner calls this once more when the connection ends).
    pub fn flush(&mut self) -> Result<(), ConnectionError> {
        for ch in self.channels.values() {
            if ch.downloading {
                ch.feed.lock().flush().map_err(|source| {
                    ConnectionError::Replication(ReplicationError::Feed { index: 0, source })
                })?;
            }
        }
        Ok(())
    }

    /// Runs `f` on a channel's replicator with the session and the locked feed (tests
    /// that poke at one replicator inside a running connection).
    #[cfg(test)]
    pub(crate) fn with_channel<R>(
        &mut self,
        discovery_key: &DiscoveryKey,
        f: impl FnOnce(&mut Replicator, &mut Session, &mut Feed<F::Store>) -> R,
    ) -> Option<R> {
        let ch = self.channels.get_mut(discovery_key)?;
        let mut feed = ch.feed.lock();
        Some(f(&mut ch.rep, &mut self.session, &mut feed))
    }

    /// Bytes waiting to be written: given out and unsent, plus queued in the session.
    fn backlog(&self) -> usize {
        self.unsent.saturating_add(self.session.outgoing_len())
    }

    /// Feeds pending input, handles events, answers, until nothing moves.
    fn process(&mut self, now: u64) -> Result<(), ConnectionError> {
        self.now = self.now.max(now);
        loop {
            let mut progressed = false;
            if !self.unconsumed.is_empty() {
                let n = self.session.receive(&self.unconsumed, now)?;
                self.unconsumed.drain(..n.min(self.unconsumed.len()));
                if self.unconsumed.is_empty() {
                    // Needed only under back-pressure: hold no memory idle.
                    self.unconsumed = Vec::new();
                }
                progressed = n > 0;
            }
            progressed |= self.session.pending_events() > 0;
            self.handle_events(now)?;
            self.flush()?;
            if self.backlog() < self.write_high_water {
                self.pump(now)?;
            }
            progressed |= self.session.outgoing_len() > 0;
            if self.unconsumed.is_empty() || !progressed || self.backlog() >= self.write_high_water
            {
                return Ok(());
            }
        }
    }

    fn add_channel(
        &mut self,
        spec: ChannelSpec<F>,
        now: u64,
    ) -> Result<DiscoveryKey, ConnectionError> {
        let dk = crate::crypto::discovery_key(&spec.key());
        if self.channels.contains_key(&dk) {
            // Already open (e.g. served on the remote's Open before the owner asked).
            return Ok(dk);
        }
        let downloading = spec.config.downloading && spec.config.signer.is_none();
        let announce_interval_ms = spec.config.announce_interval_ms;
        let budget = spec.config.signature_budget.clone().map(|b| (b, None));
        let (rep, announced_length) = {
            let mut feed = spec.feed.lock();
            if downloading {
                feed.set_deferred_commit(true);
            }
            let length = feed.length();
            (Replicator::new(&feed, spec.config), length)
        };
        let dk = rep.discovery_key();
        let key = rep.key();
        if downloading && self.session.max_inbound_frame() < crate::wire::MAX_BODY_LEN {
            // Data blocks may be as large as the protocol allows.
            self.session
                .set_max_inbound_frame(crate::wire::MAX_BODY_LEN);
        }
        spec.feed.subscribe(&self.waker);
        let download_seq = spec.feed.download_log().next_seq();
        self.channels.insert(
            dk,
            Channel {
                feed: spec.feed,
                rep,
                announced_length,
                announce_interval_ms,
                budget,
                signed: (0, None),
                last_request_ms: now,
                last_announce_ms: 0,
                downloading,
                id: NEXT_CHANNEL_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                download_seq,
            },
        );
        self.session.open_channel(&key)?;
        Ok(dk)
    }

    /// Handles every queued session event.
    fn handle_events(&mut self, now: u64) -> Result<(), ConnectionError> {
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::HandshakeComplete { remote_public_key } => {
                    tracing::debug!(remote = %hex::encode(remote_public_key), "connected");
                    self.events
                        .push_back(ConnectionEvent::Connected { remote_public_key });
                }
                SessionEvent::DiscoveryKey { discovery_key } => {
                    match self.serve.get(&discovery_key) {
                        Some(spec) => {
                            let spec = spec.clone();
                            self.add_channel(spec, now)?;
                        }
                        None if self.keep_unknown => {
                            tracing::debug!(dk = %hex::encode(discovery_key), "not served yet: pending");
                        }
                        None => {
                            tracing::debug!(dk = %hex::encode(discovery_key), "not served: closing");
                            self.session.close_discovery_key(&discovery_key)?;
                        }
                    }
                }
                SessionEvent::ChannelOpened { discovery_key } => {
                    if let Some(ch) = self.channels.get_mut(&discovery_key) {
                        let mut feed = ch.feed.lock();
                        ch.announced_length = ch.announced_length.max(feed.length());
                        ch.rep.on_open(&mut self.session, &mut feed, now)?;
                    }
                    self.events
                        .push_back(ConnectionEvent::ChannelOpened { discovery_key });
                }
                SessionEvent::ChannelClosed { discovery_key } => {
                    if let Some(mut ch) = self.channels.remove(&discovery_key) {
                        ch.rep.on_close();
                    }
                    self.events
                        .push_back(ConnectionEvent::ChannelClosed { discovery_key });
                }
                SessionEvent::Message {
                    discovery_key,
                    message,
                } => {
                    if let Some(ch) = self.channels.get_mut(&discovery_key) {
                        if matches!(message, Message::Request(_)) {
                            ch.last_request_ms = now;
                        }
                        match message {
                            // An uploader's requests are answered in `pump`, which holds
                            // the shared feed's lock only to build the answers.
                            Message::Request(request) if ch.rep.answers_outside_lock() => {
                                ch.rep.queue_request(request)?;
                            }
                            message => {
                                let mut feed = ch.feed.lock();
                                ch.rep
                                    .on_message(&mut self.session, &mut feed, message, now)?;
                            }
                        }
                    }
                }
                SessionEvent::Extension { name, payload } => {
                    self.events
                        .push_back(ConnectionEvent::Extension { name, payload });
                }
                _ => {}
            }
        }
        self.collect_replication();
        Ok(())
    }

    /// Moves the replicators' events to the owner's queue, recording downloads and
    /// growth in the shared feeds.
    fn collect_replication(&mut self) {
        let mut grown = Vec::new();
        let mut downloaded = Vec::new();
        for (dk, ch) in self.channels.iter_mut() {
            downloaded.clear();
            while let Some(event) = ch.rep.poll_event() {
                match event {
                    ReplicationEvent::Length { length, .. } => {
                        grown.push((ch.feed.clone(), length));
                    }
                    ReplicationEvent::Downloaded { index, .. } => downloaded.push(index),
                    _ => {}
                }
                self.events.push_back(ConnectionEvent::Replication {
                    discovery_key: *dk,
                    event,
                });
            }
            if !downloaded.is_empty() {
                ch.feed.record_downloads(ch.id, &downloaded);
                ch.feed.wake(Some(&self.waker));
            }
        }
        for (feed, length) in grown {
            feed.grown(length);
        }
    }

    /// Answers queued requests, fills request windows, announces growth (at most once
    /// per announce interval) and blocks other connections downloaded.
    fn pump(&mut self, now: u64) -> Result<(), ConnectionError> {
        for ch in self.channels.values_mut() {
            // The feed lock is shared by every connection of the feed (a seller's
            // thousand buyers are all woken by each append): take it only for work.
            ch.count_in_budget(now);
            let interval = ch.interval_ms(now);
            let due = interval == 0 || now >= ch.last_announce_ms.saturating_add(interval);
            let announce = due && ch.rep.is_open() && ch.feed.length() > ch.announced_length;
            if !announce && !ch.rep.needs_pump() && ch.feed.download_seq() == ch.download_seq {
                continue;
            }
            let mut feed = ch.feed.lock();
            let length = feed.length();
            if length > ch.announced_length && ch.rep.is_open() && due {
                ch.rep
                    .on_local_append(&mut self.session, &feed, ch.announced_length)?;
                ch.announced_length = length;
                ch.last_announce_ms = now;
            }
            // Blocks other peers brought in: Have{start: index} to this remote.
            let mut blocks = Vec::new();
            ch.download_seq = ch
                .feed
                .download_log()
                .since(ch.download_seq, ch.id, &mut blocks);
            for index in blocks {
                ch.rep.on_local_download(&mut self.session, index)?;
            }
            if ch.rep.answers_outside_lock() {
                // Proofs and blocks under the lock; signing, encoding and encryption
                // after it (the other connections of the feed wait for the lock).
                let mut prepared = Vec::new();
                ch.rep
                    .prepare_answers(&feed, self.session.outgoing_len(), &mut prepared)?;
                drop(feed);
                ch.rep.send_prepared(&mut self.session, prepared)?;
            } else {
                ch.rep.pump(&mut self.session, &mut feed, now)?;
            }
        }
        self.update_quiet(now);
        self.collect_replication();
        Ok(())
    }

    /// While every channel holds growth back for its announce interval (it announced
    /// less than an interval ago), feed changes need not wake the connection: it asks
    /// its feeds not to until the earliest interval ends, and its timer
    /// ([`Connection::poll_timeout`]) looks then. A channel without an interval, not
    /// open yet, or with requests queued keeps the connection wakeable.
    fn update_quiet(&mut self, now: u64) {
        let mut until: Option<u64> = None;
        let mut quiet = !self.channels.is_empty();
        for ch in self.channels.values() {
            let end = ch.last_announce_ms.saturating_add(ch.interval_ms(now));
            if ch.announce_interval_ms == 0
                || !ch.rep.is_open()
                || ch.rep.needs_pump()
                || end <= now
            {
                quiet = false;
                break;
            }
            until = Some(until.map_or(end, |u| u.min(end)));
        }
        let until = until.filter(|_| quiet);
        if until == self.quiet_until {
            return;
        }
        let for_ms = until.map_or(0, |u| u - now);
        for ch in self.channels.values() {
            ch.feed.quiet(&self.waker, for_ms);
        }
        self.quiet_until = until;
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
