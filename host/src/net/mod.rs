//! The tokio driver: TCP listen and dial, one task per connection driving a sans-IO
//! [`Connection`] (the session, its channels and their replicators) with the socket, a
//! clock, the owner's commands and events. The only module with sockets.
//!
//! Feeds are shared between connections as [`SharedFeed`] (the [`FeedShare`] of a
//! [`Connection`]): the feed behind a `std::sync::Mutex` (held only for the length of one
//! message's handling), its download log, and a wake-up for connections when it grows. [`spawn_refresh`] polls [`Feed::refresh`] so blocks
//! appended by another process reach remote readers live.
//!
//! A seller serving one buyer a per-buyer (rekeyed) view of its feed, then pausing it:
//!
//! ```no_run
//! # async fn seller(stream: tokio::net::TcpStream, feed: std::sync::Arc<dazaar::net::SharedFeed<dazaar::storage::FsStore>>,
//! #                 noise: dazaar::crypto::NoiseKeyPair, rekeyed: dazaar::crypto::Ed25519KeyPair) -> Result<(), dazaar::net::NetError> {
//! use std::sync::Arc;
//! use dazaar::net::{self, ChannelSpec, Command, ConnectionOptions, NetConfig, NetEvent};
//! use dazaar::protocol::replicate::ReplicatorConfig;
//! use dazaar::storage::RekeyedSigner;
//!
//! let signer = Arc::new(RekeyedSigner::new(rekeyed));
//! let spec = ChannelSpec { feed, config: ReplicatorConfig::rekeyed(signer.clone()) };
//! let dk = dazaar::crypto::discovery_key(&dazaar::storage::Signer::public_key(&*signer));
//! let (events_tx, mut events) = tokio::sync::mpsc::channel(256);
//! let (commands, commands_rx) = tokio::sync::mpsc::channel(16);
//! let config = NetConfig::default();
//! let session = config.session_config(false, noise); // the seller is the responder
//! let options = ConnectionOptions {
//!     serve: vec![spec], // opened when the buyer asks for its discovery key
//!     events: Some(events_tx),
//!     commands: Some(commands_rx),
//!     ..ConnectionOptions::default()
//! };
//! let task = tokio::spawn(async move { net::run_connection(stream, session, &config, options).await });
//! while let Some(event) = events.recv().await {
//!     if let NetEvent::Connected { remote_public_key: _buyer } = event {
//!         // validate the buyer; on lapse: stop serving (sends Status{uploading: false})
//!         let _ = commands.send(Command::SetUploading(dk, false)).await;
//!     }
//! }
//! # let _ = task.await; Ok(()) }
//! ```
//!
//! A buyer opens the channel itself (`ConnectionOptions::open`, initiator, with
//! `SessionConfig::expected_remote_key` = the seller key) and watches
//! [`NetEvent::Replication`] for [`ReplicationEvent::Synced`] (holds everything the seller
//! has), [`ReplicationEvent::Length`] and [`ReplicationEvent::Downloaded`].
//!
//! [`ReplicationEvent::Synced`]: crate::protocol::replicate::ReplicationEvent::Synced
//! [`ReplicationEvent::Length`]: crate::protocol::replicate::ReplicationEvent::Length
//! [`ReplicationEvent::Downloaded`]: crate::protocol::replicate::ReplicationEvent::Downloaded
//!
//! Bounds: the outgoing buffer (no read while it is above [`NetConfig::write_high_water`]),
//! the session's event queue and outgoing limit, the replicator's queues, the command and
//! event channels (bounded `mpsc`; a slow event consumer slows the connection down), the
//! number of connections a server accepts at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tracing::Instrument;

use crate::protocol::connection::{
    self, Connection, ConnectionConfig, ConnectionError, DownloadLog, FeedShare,
};
use crate::protocol::replicate::ReplicationError;
use crate::protocol::{SessionConfig, SessionError};
use crate::storage::{Feed, FeedError, Store};

/// Bytes read from the socket at a time while data keeps coming.
const READ_CHUNK: usize = 32 * 1024;
/// The read buffer of a connection whose last read was small (most of them, idle): a
/// seller holds thousands of connections.
const IDLE_READ: usize = 2 * 1024;
/// Received bytes a connection may hold (read buffer, unconsumed bytes, a partial frame)
/// without drawing on the process-wide [`InboundBudget`]: enough for every control message.
const FREE_INBOUND: usize = 16 * 1024;
/// A connection that holds inbound budget this long while other connections wait for it
/// is dropped (a peer dripping a large frame to pin the budget).
const BUDGET_HOG_MS: u64 = 5_000;
/// Stream-level extension messages that may wait in the owner's event channel: the
/// payloads can be 64 KiB each, and an owner busy with a payment check does not read.
const MAX_QUEUED_EXTENSIONS: usize = 4;
/// Default process-wide budget for inbound buffers beyond `FREE_INBOUND` (16 KiB) per
/// connection.
pub const DEFAULT_INBOUND_BUDGET: usize = 64 * 1024 * 1024;
/// A write buffer larger than this is shrunk once it has been written out.
const IDLE_BUFFER_MAX: usize = 256 * 1024;
/// What it is shrunk to.
const IDLE_BUFFER_KEEP: usize = 16 * 1024;
/// Most connections registered for growth wake-ups on one feed.
const MAX_SUBSCRIBERS: usize = 4096;

/// The default handshake deadline ([`NetConfig::handshake_timeout`]).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default per-IP connection cap ([`NetConfig::max_connections_per_ip`]).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 32;
/// File descriptors kept for everything but connections (feed files, plugins, DNS,
/// discovery sockets) when the connection limit is derived from RLIMIT_NOFILE.
const NOFILE_RESERVE: u64 = 64;
/// First wait after an accept failure; doubled on every further failure.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest wait after accept failures.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this period for a repeated accept-loop condition.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// A network failure. Every variant ends the connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The Noise handshake did not finish in time.
    #[error("the handshake did not finish in time")]
    HandshakeTimeout,
    /// The socket failed.
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The protocol session failed (handshake, bad frames, capability, idle timeout).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Replication on a channel failed (bad data, request timeout, too many requests).
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The remote closed the connection before the handshake finished.
    #[error("connection closed by the remote during the handshake")]
    ClosedDuringHandshake,
    /// The connection held inbound buffer budget (a large partial frame) for too long
    /// while other connections waited for it.
    #[error("dropped: held {held} bytes of the inbound buffer budget for over {ms} ms while others waited")]
    InboundBudget {
        /// Bytes of budget held.
        held: usize,
        /// How long.
        ms: u64,
    },
}

/// A byte budget for received data held in memory, shared by connections (typically all
/// of a process's): a connection that needs more than its free allowance takes from it,
/// and stops reading while it cannot (back-pressure).
#[derive(Debug)]
pub struct InboundBudget {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
    /// Connections waiting for budget.
    waiting: std::sync::atomic::AtomicUsize,
    freed: Notify,
}

impl InboundBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: std::sync::atomic::AtomicUsize::new(0),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// The process-wide budget ([`DEFAULT_INBOUND_BUDGET`]) that [`NetConfig::default`]
    /// uses.
    pub fn global() -> Arc<Self> {
        static GLOBAL: std::sync::OnceLock<Arc<InboundBudget>> = std::sync::OnceLock::new();
        GLOBAL
            .get_or_init(|| InboundBudget::new(DEFAULT_INBOUND_BUDGET))
            .clone()
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes `n` bytes if they are available.
    fn try_take(&self, n: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes.
    fn release(&self, n: usize) {
        use std::sync::atomic::Ordering;
        if n == 0 {
            return;
        }
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
        self.freed.notify_waiters();
    }

    fn contended(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

/// One connection's share of an [`InboundBudget`], given back when dropped.
#[derive(Debug)]
struct BudgetShare {
    budget: Arc<InboundBudget>,
    held: usize,
    /// Since when budget is held (for [`BUDGET_HOG_MS`]).
    since: Option<Instant>,
    /// Whether this connection counts as waiting.
    waiting: bool,
}

impl BudgetShare {
    fn new(budget: Arc<InboundBudget>) -> Self {
        Self {
            budget,
            held: 0,
            since: None,
            waiting: false,
        }
    }

    /// Adjusts the share to cover `inbound` bytes held plus `headroom` for the next read
    /// (beyond the free allowance). Returns false when the budget cannot cover it: the
    /// connection must not read until it can.
    fn cover(&mut self, inbound: usize, headroom: usize) -> bool {
        let need = inbound
            .saturating_add(headroom)
            .saturating_sub(FREE_INBOUND);
        let ok = if need <= self.held {
            // Keep what covers the bytes held; give back the rest.
            self.budget.release(self.held - need);
            self.held = need;
            true
        } else if self.budget.try_take(need - self.held) {
            self.held = need;
            true
        } else {
            false
        };
        self.set_waiting(!ok);
        ok
    }

    /// Records how many received bytes are pinned (a partial frame, bytes the session
    /// has not taken): the hog clock runs while they exceed the free allowance.
    fn pinned(&mut self, bytes: usize) {
        if bytes <= FREE_INBOUND {
            self.since = None;
        } else if self.since.is_none() {
            self.since = Some(Instant::now());
        }
    }

    fn set_waiting(&mut self, waiting: bool) {
        use std::sync::atomic::Ordering;
        if waiting != self.waiting {
            self.waiting = waiting;
            if waiting {
                self.budget.waiting.fetch_add(1, Ordering::Relaxed);
            } else {
                self.budget.waiting.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The connection completed a frame: restart the hog clock.
    fn progressed(&mut self) {
        if self.since.is_some() {
            self.since = Some(Instant::now());
        }
    }

    /// Whether this connection has held budget for pinned bytes too long while others
    /// wait for it.
    fn hogging(&self) -> bool {
        self.held > 0
            && self.budget.contended()
            && self
                .since
                .is_some_and(|t| t.elapsed() >= Duration::from_millis(BUDGET_HOG_MS))
    }
}

impl Drop for BudgetShare {
    fn drop(&mut self) {
        self.set_waiting(false);
        self.budget.release(self.held);
    }
}

impl From<ConnectionError> for NetError {
    fn from(e: ConnectionError) -> Self {
        match e {
            ConnectionError::Session(e) => NetError::Session(e),
            ConnectionError::Replication(e) => NetError::Replication(e),
        }
    }
}

impl NetError {
    fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> NetError {
        move |source| NetError::Io { context, source }
    }
}

/// A feed shared by the connections that replicate it.
pub struct SharedFeed<S: Store> {
    feed: Mutex<Feed<S>>,
    length: watch::Sender<u64>,
    subscribers: Mutex<Vec<Weak<ConnWaker>>>,
    downloads: Mutex<DownloadLog>,
    /// The download log's next sequence number, readable without its lock.
    download_seq: std::sync::atomic::AtomicU64,
}

impl<S: Store> std::fmt::Debug for SharedFeed<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFeed")
            .field("length", &*self.length.borrow())
            .finish_non_exhaustive()
    }
}

impl<S: Store> SharedFeed<S> {
    /// Shares `feed`.
    pub fn new(feed: Feed<S>) -> Arc<Self> {
        let (length, _) = watch::channel(feed.length());
        Arc::new(Self {
            feed: Mutex::new(feed),
            length,
            subscribers: Mutex::new(Vec::new()),
            downloads: Mutex::new(DownloadLog::default()),
            download_seq: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Locks the feed (a poisoned lock is recovered: the feed's own writes are ordered so
    /// that a panic mid-write leaves a state `open` repairs).
    pub fn lock(&self) -> MutexGuard<'_, Feed<S>> {
        match self.feed.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The feed's length, updated on every growth this handle was told of.
    pub fn length(&self) -> u64 {
        *self.length.borrow()
    }

    /// A receiver of the length (for buyers following a feed).
    pub fn watch_length(&self) -> watch::Receiver<u64> {
        self.length.subscribe()
    }

    /// Appends blocks and tells the connections.
    pub fn append_batch<B: AsRef<[u8]>>(&self, blocks: &[B]) -> Result<u64, FeedError> {
        let length = {
            let mut feed = self.lock();
            feed.append_batch(blocks)?;
            feed.length()
        };
        self.grown(length);
        Ok(length)
    }

    /// Re-reads the store for appends by another process ([`Feed::refresh`], at wall-clock
    /// time `now`); tells the connections when the feed grew. Returns whether it grew.
    pub fn refresh(&self, now: std::time::SystemTime) -> Result<bool, FeedError> {
        let (grew, length) = {
            let mut feed = self.lock();
            let grew = feed.refresh(now)?;
            (grew, feed.length())
        };
        if grew {
            self.grown(length);
        }
        Ok(grew)
    }

    /// Records that the feed now has `length` blocks (after a change made through
    /// [`SharedFeed::lock`]) and wakes the connections.
    pub fn grown(&self, length: u64) {
        self.length.send_if_modified(|l| {
            if length > *l {
                *l = length;
                true
            } else {
                false
            }
        });
        self.wake(None);
    }

    /// Wakes the subscribed connections, except `except` (the caller itself) and those
    /// quiet now ([`ConnWaker`]).
    fn wake(&self, except: Option<&Arc<ConnWaker>>) {
        let now = process_ms();
        let mut subs = match self.subscribers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        subs.retain(|w| match w.upgrade() {
            Some(n) => {
                if !except.is_some_and(|e| Arc::ptr_eq(e, &n))
                    && n.quiet_until.load(Ordering::Relaxed) <= now
                {
                    n.wake();
                }
                true
            }
            None => false,
        });
    }
}

/// What wakes a connection when a feed it serves changes: a [`Notify`], and the time
/// until which the connection asked not to be woken (all its channels hold growth back
/// for an announce interval and their timer wakes them at its end: a seller's thousand
/// connections are then not all woken by each append).
#[derive(Debug, Default)]
pub struct ConnWaker {
    notify: Notify,
    /// [`process_ms`] until which feed changes do not wake the connection.
    quiet_until: AtomicU64,
    /// How many times feed changes woke it.
    notifications: AtomicU64,
}

impl ConnWaker {
    /// Wakes the connection (whatever its quiet time).
    pub fn wake(&self) {
        self.notifications.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// How many times it was woken.
    pub fn notifications(&self) -> u64 {
        self.notifications.load(Ordering::Relaxed)
    }

    /// Resolves when woken.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// Milliseconds since the first call in this process (a clock shared by the feeds and
/// the connections' wakers).
fn process_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl<S: Store> FeedShare for SharedFeed<S> {
    type Store = S;
    type Waker = ConnWaker;

    fn lock(&self) -> MutexGuard<'_, Feed<S>> {
        SharedFeed::lock(self)
    }

    fn length(&self) -> u64 {
        SharedFeed::length(self)
    }

    fn grown(&self, length: u64) {
        SharedFeed::grown(self, length)
    }

    fn download_log(&self) -> MutexGuard<'_, DownloadLog> {
        match self.downloads.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn download_seq(&self) -> u64 {
        self.download_seq.load(std::sync::atomic::Ordering::Acquire)
    }

    fn record_downloads(&self, origin: u64, blocks: &[u64]) {
        let mut log = self.download_log();
        log.record(origin, blocks);
        self.download_seq
            .store(log.next_seq(), std::sync::atomic::Ordering::Release);
    }

    fn subscribe(&self, notify: &Arc<ConnWaker>) {
        let mut subs = match self.subscribers.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        subs.retain(|w| w.strong_count() > 0);
        if subs.len() < MAX_SUBSCRIBERS {
            subs.push(Arc::downgrade(notify));
        }
    }

    fn wake(&self, except: Option<&Arc<ConnWaker>>) {
        SharedFeed::wake(self, except)
    }

    fn quiet(&self, waker: &Arc<ConnWaker>, for_ms: u64) {
        let until = if for_ms == 0 {
            0
        } else {
            process_ms().saturating_add(for_ms)
        };
        waker.quiet_until.store(until, Ordering::Relaxed);
    }
}

/// Polls [`SharedFeed::refresh`] every `interval` until `shutdown` turns true, so that
/// blocks appended by another process are announced live.
pub fn spawn_refresh<S: Store>(
    feed: Arc<SharedFeed<S>>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let feed = feed.clone();
                    // Disk reads: keep them off the async workers.
                    let result = tokio::task::spawn_blocking(move || feed.refresh(std::time::SystemTime::now())).await;
                    match result {
                        Ok(Ok(true)) => tracing::debug!("feed grew on disk"),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "refreshing the feed failed"),
                        Err(e) => tracing::warn!(error = %e, "refresh task failed"),
                    }
                }
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    })
}

/// Settings of the driver.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Session idle timeout (JS 20 s; tests make it short).
    pub idle_timeout_ms: u64,
    /// Session keep-alive interval.
    pub keep_alive_ms: u64,
    /// Stop reading while this many bytes wait to be written.
    pub write_high_water: usize,
    /// Most connections a server handles at once (more wait in the accept queue).
    pub max_connections: usize,
    /// Most connections a server handles at once from one IP address; more are closed
    /// as soon as they are accepted (0: no limit).
    pub max_connections_per_ip: usize,
    /// A connection whose Noise handshake has not finished by then fails with
    /// [`NetError::HandshakeTimeout`] (zero: no deadline), so that a peer dripping bytes
    /// holds no slot for long.
    pub handshake_timeout: Duration,
    /// Largest frame body a session accepts from the remote until it opens a channel
    /// that downloads (then the protocol's 8 MiB, for Data blocks). A peer that only
    /// serves (a seller) receives nothing larger than control messages.
    pub max_inbound_frame: usize,
    /// The budget for received bytes held in memory, shared by the connections that use
    /// this configuration (by default process-wide, [`InboundBudget::global`]).
    pub inbound_budget: Arc<InboundBudget>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            idle_timeout_ms: crate::protocol::DEFAULT_IDLE_TIMEOUT_MS,
            keep_alive_ms: crate::protocol::DEFAULT_KEEP_ALIVE_MS,
            write_high_water: 4 * 1024 * 1024,
            max_connections: 256,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_inbound_frame: crate::protocol::CONTROL_FRAME_LIMIT,
            inbound_budget: InboundBudget::global(),
        }
    }
}

impl NetConfig {
    /// A session configuration with these timeouts.
    pub fn session_config(
        &self,
        initiator: bool,
        key_pair: crate::crypto::NoiseKeyPair,
    ) -> SessionConfig {
        let mut config = SessionConfig::new(initiator, key_pair);
        config.idle_timeout_ms = self.idle_timeout_ms;
        config.keep_alive_ms = self.keep_alive_ms;
        config.max_inbound_frame = self.max_inbound_frame;
        config
    }
}

/// A feed and how to replicate it on a channel (see [`connection::ChannelSpec`]).
pub type ChannelSpec<S> = connection::ChannelSpec<SharedFeed<S>>;

/// What a connection reports to its owner.
pub use crate::protocol::connection::ConnectionEvent as NetEvent;

/// Instructions to a running connection (see [`connection::Command`]).
pub type Command<S> = connection::Command<SharedFeed<S>>;
/// How one connection runs.
pub struct ConnectionOptions<S: Store> {
    /// Channels we open at the start.
    pub open: Vec<ChannelSpec<S>>,
    /// Channels we open when the remote asks for their discovery key; other discovery
    /// keys get Close.
    pub serve: Vec<ChannelSpec<S>>,
    /// Where to report events (bounded; `None` drops them).
    pub events: Option<mpsc::Sender<NetEvent>>,
    /// Instructions from the owner (bounded).
    pub commands: Option<mpsc::Receiver<Command<S>>>,
    /// Ends the connection when it turns true.
    pub shutdown: Option<watch::Receiver<bool>>,
    /// Stream-level extension names registered before anything is received (so that no
    /// message of the remote can arrive before its name is known).
    pub extensions: Vec<String>,
    /// Leave a remote's Open for a discovery key we do not serve pending instead of
    /// closing it (a Dazaar buyer: the seller opens the one-time feed right after telling
    /// its key, and the buyer opens it when the key arrives). Bounded by the session's
    /// channel limit.
    pub keep_unknown: bool,
}

impl<S: Store> Default for ConnectionOptions<S> {
    fn default() -> Self {
        Self {
            open: Vec::new(),
            serve: Vec::new(),
            events: None,
            commands: None,
            shutdown: None,
            extensions: Vec::new(),
            keep_unknown: false,
        }
    }
}

/// Runs one connection until the remote closes it, it fails, or it is told to stop.
/// `config.initiator` decides the Noise role (the dialer is usually the initiator, but
/// roles are by configuration, not by who dialled).
///
/// The protocol lives in a [`Connection`]; this loop moves bytes between it and the
/// socket, feeds it commands, wake-ups and time, and forwards its events.
pub async fn run_connection<S, T>(
    stream: T,
    session_config: SessionConfig,
    net: &NetConfig,
    options: ConnectionOptions<S>,
) -> Result<(), NetError>
where
    S: Store,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let ConnectionOptions {
        open,
        serve,
        events,
        commands,
        shutdown,
        extensions,
        keep_unknown,
    } = options;
    let notify = Arc::new(ConnWaker::default());
    let config = ConnectionConfig {
        open: Vec::new(),
        serve,
        extensions,
        keep_unknown,
        write_high_water: net.write_high_water,
        waker: notify.clone(),
    };
    let clock = Clock(Instant::now());
    let mut conn = Connection::new(session_config, config, clock.now())?;
    let io = Io {
        events,
        commands,
        shutdown,
        notify,
        clock,
    };
    let result = drive(&mut conn, open, stream, net, io).await;
    // Downloads defer their bitfield writes; make them count before leaving.
    if let Err(e) = conn.flush() {
        tracing::warn!(error = %e, "writing the bitfield failed");
    }
    result
}

/// Milliseconds since the connection started: the [`Connection`]'s clock.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What the driver loop talks to besides the socket.
struct Io<S: Store> {
    events: Option<mpsc::Sender<NetEvent>>,
    commands: Option<mpsc::Receiver<Command<S>>>,
    shutdown: Option<watch::Receiver<bool>>,
    notify: Arc<ConnWaker>,
    clock: Clock,
}

async fn drive<S, T>(
    conn: &mut Connection<SharedFeed<S>>,
    open: Vec<ChannelSpec<S>>,
    stream: T,
    net: &NetConfig,
    io: Io<S>,
) -> Result<(), NetError>
where
    S: Store,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let Io {
        events,
        mut commands,
        mut shutdown,
        notify,
        clock,
    } = io;
    for spec in open {
        conn.handle_command(Command::Open(spec), clock.now())?;
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Grown to READ_CHUNK while reads fill it, back to IDLE_READ when they do not.
    let mut read_buf = vec![0u8; IDLE_READ];
    let mut budget = BudgetShare::new(net.inbound_budget.clone());
    let mut out: Vec<u8> = Vec::new();
    let mut written = 0usize;
    let mut eof = false;
    // Every listener's peers get the same deadline (a dripped handshake holds no slot).
    let handshake_deadline = (!net.handshake_timeout.is_zero())
        .then(|| tokio::time::Instant::now() + net.handshake_timeout);

    loop {
        if written == out.len() {
            out.clear();
            written = 0;
        }
        conn.poll_transmit_into(&mut out);
        forward_events(conn, events.as_ref()).await;
        if conn.is_destroyed() {
            return Err(NetError::Session(SessionError::Destroyed));
        }
        let pending_out = out.len() - written;
        if conn.is_closing() && pending_out == 0 {
            let _ = writer.shutdown().await;
            return Ok(());
        }
        if eof && pending_out == 0 {
            if !conn.is_handshake_complete() {
                return Err(NetError::ClosedDuringHandshake);
            }
            return Ok(());
        }
        let mut can_read = !eof && conn.wants_input();
        // Received bytes held here count against the shared budget; without budget for
        // the next read, wait for some (the session's idle timeout still applies).
        let inbound = conn.inbound_allocated().saturating_add(read_buf.len());
        let starved = can_read && !budget.cover(inbound, read_buf.len());
        if !can_read {
            budget.cover(inbound, 0);
            budget.set_waiting(false);
        }
        can_read &= !starved;
        budget.pinned(conn.inbound_held());
        if budget.hogging() {
            return Err(NetError::InboundBudget {
                held: budget.held,
                ms: BUDGET_HOG_MS,
            });
        }
        let mut hog_check = budget.since.filter(|_| budget.held > 0).map(|t| {
            (t + Duration::from_millis(BUDGET_HOG_MS)).saturating_duration_since(Instant::now())
        });
        if starved {
            // Budget freed between the check and the wait is not announced again: look
            // now and then as well.
            let retry = Duration::from_millis(50);
            hog_check = Some(hog_check.map_or(retry, |d| d.min(retry)));
        }
        let sleep_for = conn
            .poll_timeout()
            .map(|d| Duration::from_millis(d.saturating_sub(clock.now())));
        tokio::select! {
            result = writer.write(out.get(written..).unwrap_or_default()), if pending_out > 0 => {
                let n = result.map_err(NetError::io("writing"))?;
                if n == 0 {
                    return Err(NetError::Io { context: "writing", source: std::io::ErrorKind::WriteZero.into() });
                }
                written += n;
                if written >= out.len() {
                    out.clear();
                    written = 0;
                    // An idle connection keeps a small buffer, not the largest burst it
                    // ever wrote (a seller holds a thousand of them).
                    if out.capacity() > IDLE_BUFFER_MAX {
                        out.shrink_to(IDLE_BUFFER_KEEP);
                    }
                }
                conn.handle_sent(n, clock.now())?;
            }
            result = reader.read(&mut read_buf), if can_read => {
                let n = result.map_err(NetError::io("reading"))?;
                if n == 0 {
                    eof = true;
                } else {
                    let chunk = read_buf.get(..n).unwrap_or_default();
                    let before = conn.partial_frame();
                    conn.handle_input(chunk, clock.now())?;
                    let after = conn.partial_frame();
                    if after == 0 || after < before {
                        // A frame completed: whatever budget is held is in use, not pinned.
                        budget.progressed();
                    }
                    if n == read_buf.len() && n < READ_CHUNK {
                        // More is coming: read in larger pieces.
                        read_buf.resize(READ_CHUNK, 0);
                    } else if n <= IDLE_READ && read_buf.len() > IDLE_READ {
                        read_buf.truncate(IDLE_READ);
                        read_buf.shrink_to_fit();
                    }
                }
            }
            _ = budget.budget.freed.notified(), if starved => {
                // Budget was given back: try again.
            }
            _ = tokio::time::sleep(hog_check.unwrap_or_default()), if hog_check.is_some() => {
                // hogging() is checked at the top of the loop.
            }
            _ = tokio::time::sleep(sleep_for.unwrap_or(Duration::from_secs(3600))), if sleep_for.is_some() => {
                conn.handle_timeout(clock.now())?;
            }
            _ = sleep_until_opt(handshake_deadline), if !conn.is_handshake_complete() => {
                return Err(NetError::HandshakeTimeout);
            }
            _ = notify.notified() => {
                // A feed grew, or another connection downloaded blocks to announce.
                conn.handle_wake(clock.now())?;
            }
            command = recv_command(&mut commands) => {
                match command {
                    Some(command) => conn.handle_command(command, clock.now())?,
                    None => commands = None,
                }
            }
            _ = wait_shutdown(&mut shutdown) => {
                conn.close();
            }
        }
    }
}

/// Hands the connection's events to the owner. Bounded: a slow consumer slows this
/// connection down (it takes no input while events wait). Without a consumer, or once
/// it is gone, they are dropped.
async fn forward_events<S: Store>(
    conn: &mut Connection<SharedFeed<S>>,
    events: Option<&mpsc::Sender<NetEvent>>,
) {
    while let Some(event) = conn.poll_event() {
        let Some(tx) = events else { continue };
        let sent = if matches!(event, NetEvent::Extension { .. }) {
            send_extension_event(tx, event).await
        } else {
            tx.send(event).await.is_ok()
        };
        if !sent {
            while conn.poll_event().is_some() {}
            return;
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends an extension event once few others wait in the channel: an owner that is busy
/// (a payment check) then holds at most [`MAX_QUEUED_EXTENSIONS`] payloads of this
/// connection, and the connection stops reading until it catches up.
async fn send_extension_event(tx: &mpsc::Sender<NetEvent>, event: NetEvent) -> bool {
    let max = tx.max_capacity();
    if max <= MAX_QUEUED_EXTENSIONS {
        return tx.send(event).await.is_ok();
    }
    // Reserving all but MAX_QUEUED_EXTENSIONS - 1 slots waits until fewer than
    // MAX_QUEUED_EXTENSIONS events are queued; one permit carries the event, the others
    // go back at once.
    match tx.reserve_many(max - MAX_QUEUED_EXTENSIONS + 1).await {
        Ok(mut permits) => match permits.next() {
            Some(permit) => {
                permit.send(event);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

async fn recv_command<S: Store>(
    commands: &mut Option<mpsc::Receiver<Command<S>>>,
) -> Option<Command<S>> {
    match commands {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn wait_shutdown(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        Some(rx) => {
            if *rx.borrow() {
                return;
            }
            if rx.changed().await.is_err() {
                // The sender is gone: never shut down through this.
                *shutdown = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Dials `addr` (TCP, no delay).
pub async fn dial(addr: SocketAddr) -> Result<TcpStream, NetError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(NetError::io("TCP connect"))?;
    stream
        .set_nodelay(true)
        .map_err(NetError::io("TCP connect"))?;
    Ok(stream)
}

/// A server's settings.
pub struct ServeOptions<S: Store> {
    /// Our Noise static key pair.
    pub key_pair: crate::crypto::NoiseKeyPair,
    /// Our Noise role on accepted connections (JS: the seller is the responder).
    pub initiator: bool,
    /// The channels offered to every connection.
    pub serve: Vec<ChannelSpec<S>>,
    /// Driver settings.
    pub net: NetConfig,
}

/// Accepts connections on `listener` and serves `options.serve` to each, one task per
/// connection, until `shutdown` turns true. Connection errors are logged; the server
/// keeps serving the others. The limits of [`accept_loop`] and the handshake deadline of
/// `options.net` apply.
pub async fn serve<S: Store>(
    listener: TcpListener,
    options: ServeOptions<S>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), NetError> {
    let options = Arc::new(options);
    let net = options.net.clone();
    let conn_shutdown = shutdown.clone();
    accept_loop(
        listener,
        &net,
        shutdown,
        |peer| tracing::info_span!("connection", %peer),
        move |stream, _peer| {
            let options = options.clone();
            let conn_shutdown = conn_shutdown.clone();
            async move {
                let session = options
                    .net
                    .session_config(options.initiator, options.key_pair.clone());
                let conn = ConnectionOptions {
                    serve: options.serve.clone(),
                    shutdown: Some(conn_shutdown),
                    ..ConnectionOptions::default()
                };
                match run_connection(stream, session, &options.net, conn).await {
                    Ok(()) => tracing::debug!("connection closed"),
                    Err(e) => tracing::info!(error = %e, "connection failed"),
                }
            }
        },
    )
    .await;
    Ok(())
}

/// Accepts connections on `listener` until `shutdown` turns true, each run by
/// `handle(stream, peer)` in its own task inside `span(peer)`. On shutdown the running
/// tasks are cancelled and awaited.
///
/// Limits (from `net`): at most [`NetConfig::max_connections`] at once (a further peer
/// waits in the kernel's backlog until one ends); at most
/// [`NetConfig::max_connections_per_ip`] from one address (more are closed at once).
/// A failing `accept` (EMFILE, ENFILE: out of file descriptors) is retried after a wait
/// that doubles from 10 ms to 1 s and resets on success, so that a full descriptor table
/// costs no CPU; repeated conditions are logged at most once per 5 s with a count.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    net: &NetConfig,
    mut shutdown: watch::Receiver<bool>,
    span: impl Fn(SocketAddr) -> tracing::Span,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(net.max_connections.max(1)));
    let per_ip = Arc::new(PerIpLimit::new(net.max_connections_per_ip));
    let mut tasks = tokio::task::JoinSet::new();
    let mut backoff = AcceptBackoff::default();
    let mut refused_log = RateLimitedLog::default();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        // Reap finished tasks so the set stays bounded by the permits.
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff.on_success();
                a
            }
            Err(e) => {
                let now = Instant::now();
                let (wait, log) = backoff.on_error(&e, now);
                if let Some(suppressed) = log {
                    tracing::warn!(error = %e, suppressed, retry_in_ms = wait.as_millis() as u64, "accept failed");
                }
                drop(permit);
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => break,
                    }
                }
                continue;
            }
        };
        let Some(ip_slot) = per_ip.try_take(peer.ip()) else {
            metrics::counter!(
                crate::monitor::names::CONNECTIONS_REFUSED,
                crate::monitor::names::LIMIT => "max_connections_per_ip",
            )
            .increment(1);
            if let Some(suppressed) = refused_log.hit(Instant::now()) {
                tracing::warn!(ip = %peer.ip(), max = net.max_connections_per_ip, suppressed, "too many connections from one address: closed");
            }
            // Dropping the stream closes it; the permit goes back at once.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = handle(stream, peer);
        tasks.spawn(
            async move {
                let _permit = permit;
                let _ip_slot = ip_slot;
                task.await;
            }
            .instrument(span(peer)),
        );
    }
    tasks.shutdown().await;
}

/// A log line for a condition that may repeat very often: at most one per [`LOG_EVERY`],
/// with the number of occurrences left out since the last one.
#[derive(Debug, Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    /// Another occurrence at `now`: `Some(suppressed)` when a line is due now.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < LOG_EVERY => {
                self.suppressed = self.suppressed.saturating_add(1);
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The accept loop's reaction to failing accepts: how long to wait and when to log.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// The next wait (zero after a success).
    delay: Duration,
    log: RateLimitedLog,
}

impl AcceptBackoff {
    /// An accept failed with `error` at `now`: the wait before the next accept, and
    /// `Some(suppressed)` when the failure is to be logged. A failure of one connection
    /// (reset or aborted before it was accepted) is no reason to wait; anything else
    /// (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...) persists until something is freed, and
    /// retrying at once would spin.
    fn on_error(&mut self, error: &std::io::Error, now: Instant) -> (Duration, Option<u64>) {
        use std::io::ErrorKind;
        let transient = matches!(
            error.kind(),
            ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
        );
        let wait = if transient {
            Duration::ZERO
        } else {
            self.delay = if self.delay.is_zero() {
                ACCEPT_BACKOFF_MIN
            } else {
                self.delay.saturating_mul(2).min(ACCEPT_BACKOFF_MAX)
            };
            self.delay
        };
        (wait, self.log.hit(now))
    }

    /// An accept succeeded: the next failure waits the shortest time again.
    fn on_success(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// Connections per IP address, for [`NetConfig::max_connections_per_ip`]. Only
/// addresses with a live connection have an entry, so the map is bounded by the
/// connection limit.
#[derive(Debug)]
struct PerIpLimit {
    max: usize,
    counts: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in [`PerIpLimit`], given back when dropped.
#[derive(Debug)]
struct IpSlot {
    limit: Arc<PerIpLimit>,
    ip: std::net::IpAddr,
}

impl PerIpLimit {
    fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<std::net::IpAddr, usize>> {
        match self.counts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it has `max` already.
    fn try_take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d: one address.
        let ip = ip.to_canonical();
        if self.max > 0 {
            let mut counts = self.counts();
            let n = counts.entry(ip).or_insert(0);
            if *n >= self.max {
                return None;
            }
            *n += 1;
        }
        Some(IpSlot {
            limit: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if self.limit.max == 0 {
            return;
        }
        let mut counts = self.limit.counts();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The file descriptor limit of this process after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit (the most the soft limit can be raised to).
    pub hard: u64,
}

/// Raises this process's RLIMIT_NOFILE soft limit to its hard limit (a server holds one
/// descriptor per connection, and the usual soft default of 1,024 is far below what the
/// kernel allows), and returns the limits now in force.
pub fn raise_nofile_limit() -> std::io::Result<NofileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            // An infinite hard limit cannot be the soft one (the kernel caps it at
            // fs.nr_open): keep the soft limit and say so.
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not raise the soft RLIMIT_NOFILE");
        }
    }
    Ok(NofileLimit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

/// What a server of this process may accept: raises RLIMIT_NOFILE
/// ([`raise_nofile_limit`]) and returns `configured` capped by [`connection_limit`]
/// (logged; a warning when the descriptors allow fewer than configured).
pub fn process_connection_limit(configured: usize) -> usize {
    match raise_nofile_limit() {
        Ok(limit) => {
            let max = connection_limit(configured, limit.soft);
            if max < configured {
                tracing::warn!(
                    configured,
                    max,
                    nofile = limit.soft,
                    "the file descriptor limit allows fewer connections than configured"
                );
            } else {
                tracing::info!(max, nofile = limit.soft, "connection limit");
            }
            max
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE; keeping the configured connection limit");
            configured
        }
    }
}

/// The number of connections to allow with `nofile` file descriptors: `configured`,
/// but never more than the descriptors left after a reserve for files, plugins and
/// discovery (64, or half of a smaller limit), and at least 1.
pub fn connection_limit(configured: usize, nofile: u64) -> usize {
    let reserve = NOFILE_RESERVE.min(nofile / 2);
    let usable = usize::try_from(nofile.saturating_sub(reserve)).unwrap_or(usize::MAX);
    configured.min(usable).max(1)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets_on_success() {
        let mut b = AcceptBackoff::default();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let t0 = Instant::now();
        let waits: Vec<u64> = (0..10)
            .map(|_| b.on_error(&emfile, t0).0.as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.on_success();
        assert_eq!(b.on_error(&emfile, t0).0, ACCEPT_BACKOFF_MIN);
        // A connection aborted before accept is no reason to wait.
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(b.on_error(&aborted, t0).0, Duration::ZERO);
    }

    #[test]
    fn repeated_conditions_log_once_per_period_with_a_count() {
        let mut log = RateLimitedLog::default();
        let t0 = Instant::now();
        assert_eq!(log.hit(t0), Some(0));
        for i in 1..=99u64 {
            assert_eq!(log.hit(t0 + Duration::from_millis(i * 10)), None);
        }
        assert_eq!(log.hit(t0 + LOG_EVERY), Some(99));
        assert_eq!(log.hit(t0 + LOG_EVERY), None);
    }

    #[test]
    fn per_ip_limit_counts_live_connections() {
        let limit = Arc::new(PerIpLimit::new(2));
        let a: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        let b: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
        let first = limit.try_take(a).expect("first");
        let second = limit.try_take(mapped).expect("second: the same address");
        assert!(limit.try_take(a).is_none(), "third from one address");
        assert!(limit.try_take(b).is_some(), "another address");
        drop(first);
        let third = limit.try_take(a).expect("a place came free");
        drop((second, third));
        assert!(limit.counts().is_empty(), "no entry without a connection");
        let unlimited = Arc::new(PerIpLimit::new(0));
        let many: Vec<_> = (0..100).filter_map(|_| unlimited.try_take(a)).collect();
        assert_eq!(many.len(), 100);
    }

    #[test]
    fn connection_limit_leaves_descriptors_for_files() {
        assert_eq!(connection_limit(4096, 1024), 960);
        assert_eq!(connection_limit(4096, 1_048_576), 4096);
        assert_eq!(connection_limit(4096, 100), 50);
        assert_eq!(connection_limit(4096, 0), 1);
    }
}
