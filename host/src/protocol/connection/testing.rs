//! Test support: an in-memory [`FeedShare`] and [`Connection`]s joined by hand, with
//! virtual time (the tests pick `now`; nothing sleeps).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::{
    ChannelSpec, Command, Connection, ConnectionConfig, ConnectionError, ConnectionEvent,
    DownloadLog, FeedShare,
};
use crate::crypto::{Ed25519KeyPair, NoiseKeyPair};
use crate::protocol::replicate::{ReplicationEvent, ReplicatorConfig};
use crate::protocol::{DiscoveryKey, SessionConfig};
use crate::storage::{Feed, MemStore};

/// A feed shared by connections in one test; a waker is a counter of wake-ups.
pub(crate) struct MemShare {
    feed: Mutex<Feed<MemStore>>,
    length: AtomicU64,
    log: Mutex<DownloadLog>,
    subscribers: Mutex<Vec<Weak<AtomicUsize>>>,
}

impl MemShare {
    pub(crate) fn new(feed: Feed<MemStore>) -> Arc<Self> {
        Arc::new(Self {
            length: AtomicU64::new(feed.length()),
            feed: Mutex::new(feed),
            log: Mutex::new(DownloadLog::default()),
            subscribers: Mutex::new(Vec::new()),
        })
    }

    /// Appends blocks as a writer would and wakes the connections.
    pub(crate) fn append(&self, blocks: &[Vec<u8>]) {
        let length = {
            let mut feed = self.lock();
            feed.append_batch(blocks).unwrap();
            feed.length()
        };
        self.grown(length);
    }
}

impl FeedShare for MemShare {
    type Store = MemStore;
    type Waker = AtomicUsize;

    fn lock(&self) -> MutexGuard<'_, Feed<MemStore>> {
        self.feed.lock().unwrap()
    }

    fn length(&self) -> u64 {
        self.length.load(Ordering::Relaxed)
    }

    fn grown(&self, length: u64) {
        self.length.fetch_max(length, Ordering::Relaxed);
        self.wake(None);
    }

    fn download_log(&self) -> MutexGuard<'_, DownloadLog> {
        self.log.lock().unwrap()
    }

    fn subscribe(&self, waker: &Arc<AtomicUsize>) {
        self.subscribers.lock().unwrap().push(Arc::downgrade(waker));
    }

    fn wake(&self, except: Option<&Arc<AtomicUsize>>) {
        for w in self.subscribers.lock().unwrap().iter() {
            if let Some(w) = w.upgrade() {
                if !except.is_some_and(|e| Arc::ptr_eq(e, &w)) {
                    w.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// One end: a [`Connection`] with what it reported.
pub(crate) struct Peer {
    pub(crate) conn: Connection<MemShare>,
    pub(crate) waker: Arc<AtomicUsize>,
    /// Wake-ups already handled.
    woken: usize,
    pub(crate) events: Vec<ConnectionEvent>,
    /// The error that ended the connection.
    pub(crate) error: Option<ConnectionError>,
    /// Bytes this end transmitted (all of them, for inspection).
    pub(crate) sent: usize,
}

impl Peer {
    /// A peer with Noise key seed `seed`, configured by `setup`.
    pub(crate) fn new(
        initiator: bool,
        seed: u8,
        setup: impl FnOnce(&mut ConnectionConfig<MemShare>),
    ) -> Self {
        Self::with_session(
            SessionConfig::new(initiator, NoiseKeyPair::from_seed(&[seed; 32])),
            setup,
        )
    }

    pub(crate) fn with_session(
        session: SessionConfig,
        setup: impl FnOnce(&mut ConnectionConfig<MemShare>),
    ) -> Self {
        let waker = Arc::new(AtomicUsize::new(0));
        let mut config = ConnectionConfig::new(waker.clone());
        setup(&mut config);
        let conn = Connection::new(session, config, 0).unwrap();
        Peer {
            conn,
            waker,
            woken: 0,
            events: Vec::new(),
            error: None,
            sent: 0,
        }
    }

    /// Whether the connection ended (an error, or a destroyed session).
    pub(crate) fn is_dead(&self) -> bool {
        self.error.is_some() || self.conn.is_destroyed()
    }

    fn record(&mut self, result: Result<(), ConnectionError>) {
        if let Err(e) = result {
            if self.error.is_none() {
                self.error = Some(e);
            }
        }
        while let Some(event) = self.conn.poll_event() {
            self.events.push(event);
        }
    }

    /// Bytes from the remote at `now`.
    pub(crate) fn deliver(&mut self, bytes: &[u8], now: u64) {
        if !self.is_dead() && !bytes.is_empty() {
            let result = self.conn.handle_input(bytes, now);
            self.record(result);
        }
    }

    /// A command at `now`.
    pub(crate) fn command(&mut self, command: Command<MemShare>, now: u64) {
        if !self.is_dead() {
            let result = self.conn.handle_command(command, now);
            self.record(result);
        }
    }

    /// Time `now` reached.
    pub(crate) fn timeout(&mut self, now: u64) {
        if !self.is_dead() {
            let result = self.conn.handle_timeout(now);
            self.record(result);
        }
    }

    /// Handles the wake-ups that arrived since the last call.
    pub(crate) fn wake_if_woken(&mut self, now: u64) {
        let woken = self.waker.load(Ordering::Relaxed);
        if woken != self.woken && !self.is_dead() {
            self.woken = woken;
            let result = self.conn.handle_wake(now);
            self.record(result);
        }
    }

    /// Everything the connection has to send, written at once at `now`.
    pub(crate) fn transmit(&mut self, now: u64) -> Vec<u8> {
        if self.is_dead() {
            return Vec::new();
        }
        let bytes = self.conn.poll_transmit().unwrap_or_default();
        if !bytes.is_empty() {
            self.sent += bytes.len();
            let result = self.conn.handle_sent(bytes.len(), now);
            self.record(result);
        }
        bytes
    }

    /// The replication events on any channel, in order.
    pub(crate) fn replication(&self) -> impl Iterator<Item = &ReplicationEvent> {
        self.events.iter().filter_map(|e| match e {
            ConnectionEvent::Replication { event, .. } => Some(event),
            _ => None,
        })
    }

    /// How many blocks were downloaded.
    pub(crate) fn downloaded(&self) -> usize {
        self.replication()
            .filter(|e| matches!(e, ReplicationEvent::Downloaded { .. }))
            .count()
    }
}

/// Moves bytes both ways at `now` until nothing moves (wake-ups included).
pub(crate) fn run(a: &mut Peer, b: &mut Peer, now: u64) {
    for _ in 0..100_000 {
        a.wake_if_woken(now);
        b.wake_if_woken(now);
        let ab = a.transmit(now);
        let ba = b.transmit(now);
        if ab.is_empty() && ba.is_empty() {
            return;
        }
        b.deliver(&ab, now);
        a.deliver(&ba, now);
    }
    panic!("the connections did not settle");
}

pub(crate) fn block(i: u64) -> Vec<u8> {
    format!("block number {i}").into_bytes()
}

/// A writable feed of `n` blocks (always the same key).
pub(crate) fn writer(n: u64) -> Feed<MemStore> {
    let mut feed = Feed::create(MemStore::new(), Ed25519KeyPair::from_seed(&[9; 32])).unwrap();
    let blocks: Vec<Vec<u8>> = (0..n).map(block).collect();
    if n > 0 {
        feed.append_batch(&blocks).unwrap();
    }
    feed
}

pub(crate) fn reader(key: [u8; 32]) -> Feed<MemStore> {
    Feed::create_reader(MemStore::new(), key).unwrap()
}

/// A serving peer (responder, serves `spec` on request) and a client (initiator, opens
/// a reader of the served key with `client_config`), before anything is exchanged.
pub(crate) fn serve_pair(
    spec: ChannelSpec<MemShare>,
    client_config: ReplicatorConfig,
) -> (Peer, Peer, Arc<MemShare>, DiscoveryKey) {
    let key = spec.key();
    let client_feed = MemShare::new(reader(key));
    let client_spec = ChannelSpec {
        feed: client_feed.clone(),
        config: client_config,
    };
    let server = Peer::new(false, 2, |c| c.serve.push(spec));
    let client = Peer::new(true, 1, |c| c.open.push(client_spec));
    (
        server,
        client,
        client_feed,
        crate::crypto::discovery_key(&key),
    )
}
