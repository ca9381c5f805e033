//! hypercore@9 replication on one channel (`lib/replicate.js` `Peer`), without I/O.
//!
//! A [`Replicator`] drives one feed channel of a [`Session`]: it answers Want with Have,
//! Request with Data (proof + signature), requests the blocks the remote has and we lack,
//! verifies and stores Data, and announces local growth. It holds no feed and no session:
//! each call borrows them, so a driver can keep the feed behind a lock shared by many
//! connections.
//!
//! The driver, per channel:
//!
//! 1. `session.open_channel(&replicator.key())`;
//! 2. on [`Event::ChannelOpened`](super::Event::ChannelOpened) for
//!    [`Replicator::discovery_key`]: [`Replicator::on_open`];
//! 3. on [`Event::Message`](super::Event::Message) for it: [`Replicator::on_message`];
//! 4. after writing the outgoing bytes: [`Replicator::pump`] (answers queued requests and
//!    fills the request window as the outgoing buffer drains);
//! 5. when the local feed grew: [`Replicator::on_local_append`];
//! 6. at [`Replicator::next_deadline`]: [`Replicator::tick`];
//! 7. [`Replicator::poll_event`] for downloads, new lengths and sync.
//!
//! Any error returned is fatal for the whole stream (JS destroys it): the driver destroys
//! the session and closes the connection. Nothing that failed verification is stored.
//!
//! A channel may serve the feed under another key ([`ReplicatorConfig::signer`]): the
//! Dazaar seller's per-buyer rekeyed view. The tree and blocks are the feed's; the
//! signatures come from the signer and the channel key is `signer.public_key()`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use super::budget::SignatureBudget;
use super::meter::ByteMeter;
use super::{DiscoveryKey, Session, SessionError};
use crate::crypto;
use crate::storage::{merkle, Feed, FeedError, NodeSet, Signer, Store};
use crate::wire::{self, Data, DataRef, Have, Message, Request, Status, Unhave, Want};

/// Blocks per Want region (hypercore@9 asks in 1 Mi-block regions).
pub const WANT_REGION: u64 = 1024 * 1024;
/// JS `maxRequests`.
pub const JS_MAX_REQUESTS: usize = 16;
/// Our default request window: enough in flight to fill a fast link.
pub const DEFAULT_MAX_INFLIGHT: usize = 256;
/// Default bound on requests from the remote waiting for an answer.
pub const DEFAULT_MAX_REMOTE_REQUESTS: usize = 4096;
/// Default request timeout (JS: the stream timeout, 20 s).
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 20_000;
/// Default: answer requests only while the session holds less than this many bytes.
pub const DEFAULT_UPLOAD_HIGH_WATER: usize = 2 * 1024 * 1024;
/// Bound on queued replication events (oldest block events are dropped beyond it).
pub const MAX_EVENTS: usize = 8192;
/// Most download ranges a channel keeps.
pub const MAX_SELECTIONS: usize = 1024;
/// Largest decoded Have bitfield we accept (bytes): 2^24 blocks.
const MAX_HAVE_BITFIELD: usize = 1 << 21;
/// Highest block index a remote may announce (larger claims are clipped).
const MAX_REMOTE_BLOCK: u64 = crate::storage::feed::MAX_LENGTH;
/// Most bitmap pages (4096 blocks each) kept for the remote's blocks: 2^28 blocks. A page
/// the remote has completely costs a map entry only.
const MAX_REMOTE_PAGES: usize = 1 << 16;
/// Most pages with a partial bitmap (512 bytes each) kept per channel: 1 MiB.
const MAX_REMOTE_PARTIAL_PAGES: usize = 1 << 11;
/// Most blocks one Have without bitfield may mark.
const MAX_HAVE_RANGE: u64 = 1 << 24;
/// Most distinct Want ranges answered per feed length (hypercore@9 asks one per 1 Mi-block
/// region; further ones wait for the feed to grow).
const MAX_ANSWERED_WANTS: usize = 4096;
/// Most blocks examined per scheduling pass (keeps one call cheap on sparse remotes).
const MAX_SCAN: u64 = 1 << 16;

/// A replication failure. Every variant is fatal for the stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The session refused a send (destroyed, or full beyond recovery).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Reading or storing the feed failed, or the remote's Data did not verify
    /// ([`FeedError::Verify`]); nothing unverified was stored.
    #[error("block {index}: {source}")]
    Feed {
        /// The block concerned.
        index: u64,
        /// What failed.
        #[source]
        source: FeedError,
    },
    /// A message with a malformed field (a bad bitfield; hash and signature lengths are
    /// refused by the wire decoder).
    #[error("malformed {message} from remote: {reason}")]
    Malformed {
        /// The message type.
        message: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The oldest request went unanswered for the request timeout (JS "Request timeout").
    #[error("Request timeout: block {index} not received within {timeout_ms} ms")]
    RequestTimeout {
        /// The oldest outstanding block.
        index: u64,
        /// The timeout.
        timeout_ms: u64,
    },
    /// The remote has more requests outstanding than we accept.
    #[error("remote sent more than {max} requests without waiting for answers")]
    TooManyRequests {
        /// The limit.
        max: usize,
    },
}

impl ReplicationError {
    /// Whether the error is a verification failure of the remote's data.
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            ReplicationError::Feed {
                source: FeedError::Verify(_),
                ..
            }
        )
    }
}

/// The longest range of new length a sparse copy checks block by block to announce what
/// it holds of it ([`Replicator::on_local_append`]).
const MAX_SPARSE_ANNOUNCE: u64 = 4096;

/// How a channel replicates.
#[derive(Clone)]
pub struct ReplicatorConfig {
    /// Answer Wants and Requests (JS `uploading`, default true).
    pub uploading: bool,
    /// Ask for blocks (JS `downloading`; default true; a writer uses false).
    pub downloading: bool,
    /// Sparse: download only the ranges given to [`Replicator::download`]; otherwise
    /// everything the remote has (JS non-sparse selection `[0, ∞)`).
    pub sparse: bool,
    /// Requests kept in flight (JS keeps 16).
    pub max_inflight: usize,
    /// Requests from the remote we queue before refusing (the stream is destroyed).
    pub max_remote_requests: usize,
    /// Fail when the oldest request is unanswered this long (0 = never).
    pub request_timeout_ms: u64,
    /// Answer requests only while the session's outgoing buffer is below this.
    pub upload_high_water: usize,
    /// Serve the feed under `signer.public_key()` with signatures made by the signer
    /// (Dazaar's per-buyer rekeyed feeds). Such a channel never downloads.
    pub signer: Option<Arc<dyn Signer>>,
    /// Announce local growth at most this often (ms; 0 = at once). Blocks are then
    /// proven against the last announced length, so the Data messages of one
    /// announcement share one signature: a seller signs per buyer per announcement, not
    /// per append. The driver applies it ([`crate::net`]).
    pub announce_interval_ms: u64,
    /// Count the block bytes sent against this meter, and send none it has no credit for
    /// (a product priced by data; see [`super::meter`]).
    pub meter: Option<Arc<ByteMeter>>,
    /// Widen `announce_interval_ms` as more channels sharing this budget announce, so
    /// that their signatures stay within it (a seller's rekeyed channels; see
    /// [`super::budget`]).
    pub signature_budget: Option<Arc<SignatureBudget>>,
}

/// A Data message built under the feed lock ([`Replicator::prepare_answers`]), to be
/// signed and sent after it ([`Replicator::send_prepared`]).
#[derive(Debug)]
pub struct PreparedData {
    index: u64,
    value: Option<Vec<u8>>,
    nodes: Vec<merkle::Node>,
    signature: PreparedSignature,
}

impl PreparedData {
    /// About how many bytes the message takes in the outgoing buffer.
    fn estimated_len(&self) -> usize {
        let value = self.value.as_ref().map_or(0, Vec::len);
        value + self.nodes.len() * 48 + 100
    }
}

/// The signature a prepared Data message carries.
#[derive(Debug, Clone, Copy)]
enum PreparedSignature {
    None,
    Ready([u8; 64]),
    /// To be signed by the channel's signer.
    Sign {
        length: u64,
        tree_hash: [u8; 32],
    },
}

/// How often a rekeyed channel announces growth by default: appends within this window
/// share one per-buyer signature.
pub const REKEYED_ANNOUNCE_INTERVAL_MS: u64 = 40;

impl fmt::Debug for ReplicatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicatorConfig")
            .field("uploading", &self.uploading)
            .field("downloading", &self.downloading)
            .field("sparse", &self.sparse)
            .field("max_inflight", &self.max_inflight)
            .field(
                "signer",
                &self.signer.as_ref().map(|s| hex::encode(s.public_key())),
            )
            .field("metered", &self.meter.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ReplicatorConfig {
    fn default() -> Self {
        Self {
            uploading: true,
            downloading: true,
            sparse: false,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            max_remote_requests: DEFAULT_MAX_REMOTE_REQUESTS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            upload_high_water: DEFAULT_UPLOAD_HIGH_WATER,
            signer: None,
            announce_interval_ms: 0,
            meter: None,
            signature_budget: None,
        }
    }
}

impl ReplicatorConfig {
    /// A writer or seller: uploads, never downloads (JS sends `Status{true, false}`).
    pub fn uploader() -> Self {
        Self {
            downloading: false,
            ..Self::default()
        }
    }

    /// A seller's per-buyer view: uploads the feed under `signer.public_key()`.
    pub fn rekeyed(signer: Arc<dyn Signer>) -> Self {
        Self {
            downloading: false,
            signer: Some(signer),
            announce_interval_ms: REKEYED_ANNOUNCE_INTERVAL_MS,
            signature_budget: Some(SignatureBudget::global()),
            ..Self::default()
        }
    }

    /// A reader that downloads everything the remote has, and keeps following.
    pub fn downloader() -> Self {
        Self::default()
    }

    /// A sparse reader: downloads only ranges given to [`Replicator::download`].
    pub fn sparse() -> Self {
        Self {
            sparse: true,
            ..Self::default()
        }
    }
}

/// What happened on a channel, for the layer above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplicationEvent {
    /// A block was verified and stored.
    Downloaded {
        /// The block.
        index: u64,
        /// Its size in bytes.
        bytes: u64,
    },
    /// A verified signature raised the local feed's length.
    Length {
        /// The new length.
        length: u64,
        /// The new byte length.
        byte_length: u64,
    },
    /// The remote announced a longer feed.
    RemoteLength {
        /// The remote's length as far as we know.
        length: u64,
    },
    /// The remote changed its Status.
    RemoteStatus {
        /// Whether it serves requests.
        uploading: bool,
        /// Whether it wants data.
        downloading: bool,
    },
    /// We hold every block the remote announced (within our selection) and nothing is in
    /// flight. Emitted on each transition into this state.
    Synced {
        /// The local length.
        length: u64,
        /// The remote's length as far as we know.
        remote_length: u64,
    },
}

/// One 4096-block page of a remote's bitmap: a remote that has everything (the usual
/// seller) costs no bitmap at all.
#[derive(Debug)]
enum Page {
    /// Every block of the page.
    Full,
    /// Some blocks: bit `i % 64` of word `(i / 64) % 64` is block `i`.
    Bits(Box<[u64; 64]>),
}

/// The blocks a remote announced: a bitmap in 4096-block pages, bounded in pages and in
/// allocated (partial) pages. At a bound, new announcements are forgotten: a block we do
/// not know the remote has is just not requested from it.
#[derive(Debug, Default)]
struct RemoteBits {
    pages: BTreeMap<u64, Page>,
    /// How many entries of `pages` are [`Page::Bits`].
    partial: usize,
}

impl RemoteBits {
    fn get(&self, i: u64) -> bool {
        match self.pages.get(&(i >> 12)) {
            None => false,
            Some(Page::Full) => true,
            Some(Page::Bits(p)) => p
                .get(((i >> 6) & 63) as usize)
                .is_some_and(|w| w & (1 << (i & 63)) != 0),
        }
    }

    /// The first block in `[from, end)` the remote has, skipping pages it announced
    /// nothing in (a remote that announced one block per page must not make every
    /// scheduling pass look at each block in between).
    fn next_set(&self, from: u64, end: u64) -> Option<u64> {
        if from >= end {
            return None;
        }
        for (&key, page) in self.pages.range(from >> 12..) {
            let page_start = key << 12;
            if page_start >= end {
                return None;
            }
            let at = from.max(page_start);
            match page {
                Page::Full => return Some(at),
                Page::Bits(words) => {
                    let mut w = ((at >> 6) & 63) as usize;
                    let mut mask = u64::MAX << (at & 63);
                    while let Some(&word) = words.get(w) {
                        let hit = word & mask;
                        if hit != 0 {
                            let i = page_start + (w as u64) * 64 + u64::from(hit.trailing_zeros());
                            return (i < end).then_some(i);
                        }
                        w += 1;
                        mask = u64::MAX;
                    }
                }
            }
        }
        None
    }

    /// Pages allocated for partial bitmaps (for tests and bounds).
    #[cfg(test)]
    fn partial_pages(&self) -> usize {
        self.partial
    }

    /// Applies `f` to word `word` of page `key`, allocating, compacting or freeing the
    /// page as needed.
    fn update_word(&mut self, key: u64, word: usize, f: impl FnOnce(u64) -> u64) {
        if key >= MAX_REMOTE_BLOCK >> 12 {
            return;
        }
        let can_alloc = self.partial < MAX_REMOTE_PARTIAL_PAGES;
        match self.pages.get_mut(&key) {
            None => {
                let new = f(0);
                if new == 0 || !can_alloc || self.pages.len() >= MAX_REMOTE_PAGES {
                    return;
                }
                let mut bits = Box::new([0u64; 64]);
                if let Some(w) = bits.get_mut(word) {
                    *w = new;
                }
                self.pages.insert(key, Page::Bits(bits));
                self.partial += 1;
            }
            Some(Page::Full) => {
                let new = f(u64::MAX);
                if new == u64::MAX {
                    return;
                }
                if !can_alloc {
                    // No room for the exception: forget the page rather than claim
                    // blocks the remote said it lacks.
                    self.pages.remove(&key);
                    return;
                }
                let mut bits = Box::new([u64::MAX; 64]);
                if let Some(w) = bits.get_mut(word) {
                    *w = new;
                }
                self.pages.insert(key, Page::Bits(bits));
                self.partial += 1;
            }
            Some(Page::Bits(bits)) => {
                let Some(w) = bits.get_mut(word) else {
                    return;
                };
                *w = f(*w);
                let new = *w;
                let replace = if new == u64::MAX && bits.iter().all(|&w| w == u64::MAX) {
                    Some(Some(Page::Full))
                } else if new == 0 && bits.iter().all(|&w| w == 0) {
                    Some(None)
                } else {
                    None
                };
                match replace {
                    Some(Some(full)) => {
                        self.pages.insert(key, full);
                        self.partial = self.partial.saturating_sub(1);
                    }
                    Some(None) => {
                        self.pages.remove(&key);
                        self.partial = self.partial.saturating_sub(1);
                    }
                    None => {}
                }
            }
        }
    }

    /// Marks or clears a whole page without allocating a bitmap.
    fn set_page(&mut self, key: u64, value: bool) {
        if key >= MAX_REMOTE_BLOCK >> 12 {
            return;
        }
        let old = if value {
            if !self.pages.contains_key(&key) && self.pages.len() >= MAX_REMOTE_PAGES {
                return;
            }
            self.pages.insert(key, Page::Full)
        } else {
            self.pages.remove(&key)
        };
        if matches!(old, Some(Page::Bits(_))) {
            self.partial = self.partial.saturating_sub(1);
        }
    }

    fn set(&mut self, i: u64, value: bool) {
        if i >= MAX_REMOTE_BLOCK {
            return;
        }
        let bit = 1u64 << (i & 63);
        self.update_word(i >> 12, ((i >> 6) & 63) as usize, |w| {
            if value {
                w | bit
            } else {
                w & !bit
            }
        });
    }

    /// Sets a whole byte's worth of bits (`byte` bit 7 = block `start`).
    fn set_byte(&mut self, start: u64, byte: u8) {
        if start & 7 != 0 || start >= MAX_REMOTE_BLOCK {
            for b in 0..8u64 {
                self.set(start.saturating_add(b), byte & (0x80 >> b) != 0);
            }
            return;
        }
        // Our bit for block i is `1 << (i % 64)`; the byte's bit 7 is block `start`.
        let shift = start & 63;
        self.update_word(start >> 12, ((start >> 6) & 63) as usize, |w| {
            (w & !(0xffu64 << shift)) | (u64::from(byte.reverse_bits()) << shift)
        });
    }

    /// Sets or clears blocks `[start, end)`, a page or a word at a time.
    fn set_range(&mut self, start: u64, end: u64, value: bool) {
        let end = end.min(MAX_REMOTE_BLOCK);
        let mut i = start;
        while i < end {
            if i & 4095 == 0 && end - i >= 4096 {
                self.set_page(i >> 12, value);
                i += 4096;
            } else if i & 63 == 0 && end - i >= 64 {
                let key = i >> 12;
                if !value && !self.pages.contains_key(&key) {
                    // Nothing to clear in this page.
                    i = ((key + 1) << 12).min(end);
                    continue;
                }
                self.update_word(key, ((i >> 6) & 63) as usize, |_| {
                    if value {
                        u64::MAX
                    } else {
                        0
                    }
                });
                i += 64;
            } else {
                self.set(i, value);
                i += 1;
            }
        }
    }

    fn clear(&mut self) {
        self.pages.clear();
        self.partial = 0;
    }
}

#[cfg(test)]
mod remote_bits_tests {
    use super::*;

    #[test]
    fn bytes_and_ranges_match_bit_by_bit() {
        let mut fast = RemoteBits::default();
        let mut slow = RemoteBits::default();
        for (at, byte) in [
            (0u64, 0xf8u8),
            (8, 0x01),
            (64, 0xff),
            (4096 + 8, 0x80),
            (13, 0xaa),
        ] {
            fast.set_byte(at, byte);
            for b in 0..8 {
                slow.set(at + b, byte & (0x80 >> b) != 0);
            }
        }
        assert_eq!(fast.next_set(0, 10_000), Some(0));
        // Set now: 0-4, 13, 15, 17, 19, 64-71, 4104.
        assert_eq!(fast.next_set(5, 10_000), Some(13));
        assert_eq!(fast.next_set(16, 10_000), Some(17));
        assert_eq!(fast.next_set(20, 10_000), Some(64));
        assert_eq!(fast.next_set(20, 64), None);
        assert_eq!(
            fast.next_set(72, 10_000),
            Some(4096 + 8),
            "skips the empty rest"
        );
        assert_eq!(fast.next_set(4096 + 9, 10_000), None);
        assert_eq!(fast.next_set(0, 0), None);
        fast.set_range(100, 9000, true);
        fast.set_range(200, 260, false);
        for i in 100..9000 {
            slow.set(i, true);
        }
        for i in 200..260 {
            slow.set(i, false);
        }
        for i in 0..10_000 {
            assert_eq!(fast.get(i), slow.get(i), "block {i}");
        }
    }
}

/// A range of blocks to download; `end == None` is open-ended (live).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Selection {
    start: u64,
    end: Option<u64>,
    /// Below this every block is held or in flight (a scan cursor).
    cursor: u64,
}

/// One channel's replication state (JS `Peer`).
pub struct Replicator {
    key: [u8; 32],
    discovery_key: DiscoveryKey,
    config: ReplicatorConfig,
    opened: bool,
    closed: bool,
    remote_uploading: bool,
    remote_downloading: bool,
    /// The remote sent a Want: it gets live Haves.
    remote_want: bool,
    remote_length: u64,
    remote_bits: RemoteBits,
    /// The uploader's `remoteTree`.
    remote_tree: NodeSet,
    /// Want regions already asked for (`None` = legacy mode, no more Wants).
    wants: Option<std::collections::BTreeSet<u64>>,
    inflight_wants: usize,
    /// Have answers to our Wants have all come in: the remote's blocks are known.
    remote_known: bool,
    selections: Vec<Selection>,
    /// Outstanding requests: block → time sent, plus their order.
    inflight: HashMap<u64, u64>,
    inflight_order: VecDeque<u64>,
    request_deadline: Option<u64>,
    remote_requests: VecDeque<Request>,
    /// Want ranges `(start, length)` answered at feed length `.0`.
    answered_wants: (u64, std::collections::BTreeSet<(u64, u64)>),
    signature_cache: Option<(u64, [u8; 64])>,
    /// The tree hash last prepared for signing, by length (the answers of one
    /// announcement are prepared before the first is signed).
    tree_hash_cache: Option<(u64, [u8; 32])>,
    /// Signatures the rekeyed signer made for this channel.
    signatures: u64,
    /// The longest length announced to the remote (Have); proofs on a signer channel
    /// are made against it so that they share a signature.
    announced_length: u64,
    events: VecDeque<ReplicationEvent>,
    synced: bool,
    now: u64,
}

impl fmt::Debug for Replicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicator")
            .field("key", &hex::encode(self.key))
            .field("opened", &self.opened)
            .field("remote_length", &self.remote_length)
            .field("inflight", &self.inflight.len())
            .field("remote_requests", &self.remote_requests.len())
            .finish_non_exhaustive()
    }
}

impl Replicator {
    /// A replicator for `feed` with `config`. The channel key is the feed's key, or the
    /// signer's public key for a rekeyed channel.
    pub fn new<S: Store>(feed: &Feed<S>, config: ReplicatorConfig) -> Self {
        let key = match &config.signer {
            Some(signer) => signer.public_key(),
            None => feed.key(),
        };
        let mut config = config;
        if config.signer.is_some() {
            // A rekeyed view cannot verify data signed under its key against the feed.
            config.downloading = false;
        }
        let selections = if config.sparse {
            Vec::new()
        } else {
            vec![Selection {
                start: 0,
                end: None,
                cursor: 0,
            }]
        };
        Self {
            key,
            discovery_key: crypto::discovery_key(&key),
            config,
            opened: false,
            closed: false,
            remote_uploading: true,
            remote_downloading: true,
            remote_want: false,
            remote_length: 0,
            remote_bits: RemoteBits::default(),
            remote_tree: NodeSet::new(),
            wants: Some(Default::default()),
            inflight_wants: 0,
            remote_known: false,
            selections,
            inflight: HashMap::new(),
            inflight_order: VecDeque::new(),
            request_deadline: None,
            remote_requests: VecDeque::new(),
            answered_wants: (0, Default::default()),
            signature_cache: None,
            tree_hash_cache: None,
            signatures: 0,
            announced_length: 0,
            events: VecDeque::new(),
            synced: false,
            now: 0,
        }
    }

    /// The channel key (what to pass to [`Session::open_channel`]).
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// The channel's discovery key.
    pub fn discovery_key(&self) -> DiscoveryKey {
        self.discovery_key
    }

    /// Whether both sides opened the channel.
    pub fn is_open(&self) -> bool {
        self.opened && !self.closed
    }

    /// Whether we serve requests.
    pub fn is_uploading(&self) -> bool {
        self.config.uploading
    }

    /// The remote's length as far as we know.
    pub fn remote_length(&self) -> u64 {
        self.remote_length
    }

    /// The remote's Status flags (uploading, downloading).
    pub fn remote_status(&self) -> (bool, bool) {
        (self.remote_uploading, self.remote_downloading)
    }

    /// Requests we have in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Whether we hold everything the remote announced within our selection, with the
    /// remote's answer to our Wants in and nothing in flight.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The next replication event.
    pub fn poll_event(&mut self) -> Option<ReplicationEvent> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > 64 {
            // A burst (a Have flood) must not keep its queue's memory on an idle channel.
            self.events = VecDeque::new();
        }
        event
    }

    /// Channel open on both sides (JS `Peer.onopen`): Status if either flag is false,
    /// then the Wants.
    pub fn on_open<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
        now_ms: u64,
    ) -> Result<(), ReplicationError> {
        self.now = self.now.max(now_ms);
        self.opened = true;
        tracing::trace!(key = %hex::encode(self.key), "channel open: replication starts");
        if !self.config.uploading || !self.config.downloading {
            self.send(
                session,
                Message::Status(Status::new(self.config.uploading, self.config.downloading)),
            )?;
        }
        self.send_wants(session)?;
        self.update(session, feed)
    }

    /// The remote closed the channel: forget in-flight state.
    pub fn on_close(&mut self) {
        self.closed = true;
        self.inflight.clear();
        self.inflight_order.clear();
        self.remote_requests.clear();
        self.request_deadline = None;
    }

    /// Starts or stops serving (JS `setUploading`): sends Status with both flags.
    pub fn set_uploading(
        &mut self,
        session: &mut Session,
        uploading: bool,
    ) -> Result<(), ReplicationError> {
        if self.config.uploading == uploading {
            return Ok(());
        }
        self.config.uploading = uploading;
        if !uploading {
            self.remote_requests.clear();
        }
        // The remote asks for our bitfield again after a pause (its Wants were reset).
        self.answered_wants.1.clear();
        if self.opened && !self.closed {
            self.send(
                session,
                Message::Status(Status::new(uploading, self.config.downloading)),
            )?;
        }
        Ok(())
    }

    /// Starts or stops downloading (JS `setDownloading`): sends Status with both flags.
    pub fn set_downloading<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
        downloading: bool,
    ) -> Result<(), ReplicationError> {
        let downloading = downloading && self.config.signer.is_none();
        if self.config.downloading == downloading {
            return Ok(());
        }
        self.config.downloading = downloading;
        // A non-downloader keeps no map of the remote's blocks: drop it, or ask for it
        // again (every Want region anew) when downloading starts.
        self.remote_bits.clear();
        if downloading {
            self.wants = Some(Default::default());
            self.inflight_wants = 0;
        }
        if self.opened && !self.closed {
            self.send(
                session,
                Message::Status(Status::new(self.config.uploading, downloading)),
            )?;
            self.send_wants(session)?;
            self.update(session, feed)?;
        }
        Ok(())
    }

    /// Adds a range to download (`end = None`: open-ended). In a non-sparse channel the
    /// whole feed is selected already.
    pub fn download<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
        start: u64,
        end: Option<u64>,
    ) -> Result<(), ReplicationError> {
        if self.selections.len() >= MAX_SELECTIONS {
            return Ok(());
        }
        self.selections.push(Selection {
            start,
            end,
            cursor: start,
        });
        self.synced = false;
        if self.opened && !self.closed {
            // JS also sends a Want for the region of the range's first block.
            self.send_want_region(session, start / WANT_REGION)?;
            self.send_wants(session)?;
            self.update(session, feed)?;
        }
        Ok(())
    }

    /// Whether every selected block below the remote's length is held locally.
    pub fn has_selection<S: Store>(&self, feed: &Feed<S>) -> bool {
        self.selections.iter().all(|s| {
            let end = s.end.unwrap_or(self.remote_length.max(feed.length()));
            end <= s.start || feed.downloaded(s.start, end) == end - s.start
        })
    }

    /// The local feed grew from `old_length` (an append, or [`Feed::refresh`] found
    /// blocks another process wrote): announce it to a remote that sent a Want.
    pub fn on_local_append<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &Feed<S>,
        old_length: u64,
    ) -> Result<(), ReplicationError> {
        let length = feed.length();
        if !self.opened || self.closed || !self.remote_want || length <= old_length {
            return Ok(());
        }
        if !self.config.uploading {
            return Ok(());
        }
        let n = length - old_length;
        self.announced_length = self.announced_length.max(length);
        let held = feed.downloaded(old_length, length);
        if held < n {
            // A sparse copy that learned a longer length from a signature without the
            // blocks: announce only what it holds (blocks it downloads later are
            // announced as they come, through the download log). Past a bound, nothing:
            // each held block there came in as a download and was announced then.
            if n > MAX_SPARSE_ANNOUNCE {
                return Ok(());
            }
            for index in old_length..length {
                if feed.has(index) {
                    self.send(session, Message::Have(Have::block(index)))?;
                }
            }
            return Ok(());
        }
        let have = if n == 1 {
            Have::block(old_length)
        } else {
            Have::range(old_length, n)
        };
        self.send(session, Message::Have(have))
    }

    /// Another channel of the same feed downloaded block `index`: tell this remote
    /// (`Have{start: index}`) if it sent a Want (JS announces to every other peer).
    pub fn on_local_download(
        &mut self,
        session: &mut Session,
        index: u64,
    ) -> Result<(), ReplicationError> {
        if self.opened && !self.closed && self.remote_want && self.config.uploading {
            self.send(session, Message::Have(Have::block(index)))?;
        }
        Ok(())
    }

    /// Handles a message the session delivered for this channel.
    pub fn on_message<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
        message: Message,
        now_ms: u64,
    ) -> Result<(), ReplicationError> {
        self.now = self.now.max(now_ms);
        if self.closed {
            return Ok(());
        }
        tracing::trace!(message = message.type_name(), "replication message");
        match message {
            Message::Status(status) => self.on_status(session, feed, status),
            Message::Want(want) => self.on_want(session, feed, want),
            Message::Have(have) => self.on_have(session, feed, have),
            Message::Unhave(unhave) => {
                let start = unhave.start;
                let len = unhave.length.unwrap_or(1);
                if start == 0 && len >= self.remote_length {
                    self.remote_bits.clear();
                } else {
                    let end = start.saturating_add(len.min(MAX_HAVE_RANGE));
                    self.remote_bits.set_range(start, end, false);
                }
                self.update(session, feed)
            }
            Message::Request(request) => {
                if !self.config.uploading {
                    return Ok(());
                }
                self.queue_request(request)?;
                self.answer_requests(session, feed)
            }
            Message::Data(data) => self.on_data(session, feed, data),
            // Unwant, Cancel, Options and feed-level extensions: hypercore@9 ignores them
            // for dazaar (it uses no feed extensions and never sends Unwant/Cancel).
            _ => Ok(()),
        }
    }

    /// Answers queued requests while the outgoing buffer allows, and fills the request
    /// window. Call after writing the session's outgoing bytes.
    pub fn pump<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
        now_ms: u64,
    ) -> Result<(), ReplicationError> {
        self.now = self.now.max(now_ms);
        if !self.opened || self.closed {
            return Ok(());
        }
        self.answer_requests(session, feed)?;
        self.update(session, feed)
    }

    /// Whether growth of the local feed is announced to the remote now (it is open, sent
    /// a Want, and we upload).
    pub fn announces(&self) -> bool {
        self.opened && !self.closed && self.remote_want && self.config.uploading
    }

    /// How many signatures the channel's rekeyed signer made.
    pub fn signatures(&self) -> u64 {
        self.signatures
    }

    /// Whether [`Replicator::pump`] may have anything to do: requests to answer, or
    /// blocks to ask for. A pure uploader with no queued request has nothing.
    pub fn needs_pump(&self) -> bool {
        self.opened && !self.closed && (!self.remote_requests.is_empty() || self.config.downloading)
    }

    /// Whether requests from the remote are queued waiting for outgoing room.
    pub fn has_queued_requests(&self) -> bool {
        !self.remote_requests.is_empty()
    }

    /// Checks the request timeout.
    pub fn tick(&mut self, now_ms: u64) -> Result<(), ReplicationError> {
        self.now = self.now.max(now_ms);
        if let (Some(deadline), Some(&index)) = (self.request_deadline, self.inflight_order.front())
        {
            if self.now >= deadline {
                return Err(ReplicationError::RequestTimeout {
                    index,
                    timeout_ms: self.config.request_timeout_ms,
                });
            }
        }
        Ok(())
    }

    /// When [`Replicator::tick`] should next run.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.inflight_order.is_empty() {
            None
        } else {
            self.request_deadline
        }
    }

    // ----- internals ------------------------------------------------------------------

    fn send(&mut self, session: &mut Session, message: Message) -> Result<(), ReplicationError> {
        session.send(&self.discovery_key, message)?;
        Ok(())
    }

    fn push_event(&mut self, event: ReplicationEvent) {
        if self.events.len() >= MAX_EVENTS {
            // Drop the oldest per-block event; length and sync events carry the state.
            if let Some(pos) = self
                .events
                .iter()
                .position(|e| matches!(e, ReplicationEvent::Downloaded { .. }))
            {
                self.events.remove(pos);
            } else {
                self.events.pop_front();
            }
        }
        self.events.push_back(event);
    }

    fn on_status<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
        status: Status,
    ) -> Result<(), ReplicationError> {
        let uploading = status.uploading.unwrap_or(false);
        let downloading = status.downloading.unwrap_or(false);
        let was_uploading = self.remote_uploading;
        self.remote_uploading = uploading;
        self.remote_downloading = downloading;
        self.push_event(ReplicationEvent::RemoteStatus {
            uploading,
            downloading,
        });
        if !uploading {
            self.inflight.clear();
            self.inflight_order.clear();
            self.request_deadline = None;
            self.inflight_wants = 0;
            self.wants = Some(Default::default());
            self.remote_known = false;
            for s in &mut self.selections {
                s.cursor = s.start;
            }
        } else if !was_uploading {
            self.send_wants(session)?;
        }
        self.update(session, feed)
    }

    fn on_want<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
        want: Want,
    ) -> Result<(), ReplicationError> {
        if !self.config.uploading {
            return Ok(());
        }
        let start = want.start;
        let length = want.length.unwrap_or(0);
        if start & 8191 != 0 || length & 8191 != 0 {
            return Ok(());
        }
        let feed_length = feed.length();
        // The answer to a Want depends only on our bitfield, which changes when the feed
        // grows (blocks arriving otherwise are announced one by one): answer each range
        // once per length, so that a 4-byte Want cannot make us copy and encode the whole
        // bitfield (under the feed's lock) again and again.
        if self.answered_wants.0 != feed_length {
            self.answered_wants = (feed_length, Default::default());
        }
        if self.answered_wants.1.len() >= MAX_ANSWERED_WANTS
            || !self.answered_wants.1.insert((start, length))
        {
            tracing::trace!(start, length, "Want already answered at this length");
            return Ok(());
        }
        if !self.remote_want && feed_length > 0 && feed.has(feed_length - 1) {
            self.send(session, Message::Have(Have::block(feed_length - 1)))?;
        }
        self.announced_length = self.announced_length.max(feed_length);
        self.remote_want = true;
        let bitfield = feed.bitfield();
        let bits = if start == 0 && length == 0 {
            bitfield.data_bytes(0, bitfield.data_byte_len())
        } else {
            // JS Bitfield.compress: clip to the bitfield's bits, at least one bit.
            let bit_len = bitfield.data_byte_len().saturating_mul(8);
            let len = if start.saturating_add(length) > bit_len {
                bit_len.saturating_sub(start).max(1)
            } else {
                length
            };
            bitfield.data_bytes(start, len.div_ceil(8))
        };
        let rle = wire::rle::encode(&bits);
        self.send(
            session,
            Message::Have(Have::with_bitfield(start, length, rle)),
        )
    }

    fn on_have<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
        have: Have,
    ) -> Result<(), ReplicationError> {
        if have.ack == Some(true) && have.bitfield.is_none() {
            return Ok(());
        }
        let length = have.length.unwrap_or(1);
        if length == WANT_REGION && self.inflight_wants > 0 {
            self.inflight_wants -= 1;
            if self.inflight_wants == 0 {
                self.remote_known = true;
            }
        }
        let old_remote_length = self.remote_length;
        match &have.bitfield {
            // A peer that does not download never asks for blocks, so it keeps no map of
            // the remote's (a seller would otherwise hold one per stranger).
            Some(_) if !self.config.downloading => {}
            None if !self.config.downloading => {
                let start = have.start.min(MAX_REMOTE_BLOCK);
                let len = length.clamp(1, MAX_HAVE_RANGE);
                self.remote_length = self
                    .remote_length
                    .max(start.saturating_add(len).min(MAX_REMOTE_BLOCK));
            }
            Some(rle) => {
                if length == 0 || length == 1 {
                    // Legacy mode: the remote announces everything; no more Wants.
                    self.wants = None;
                    self.inflight_wants = 0;
                    self.remote_known = true;
                }
                let bits = wire::rle::decode(rle, 4, MAX_HAVE_BITFIELD).map_err(|e| {
                    ReplicationError::Malformed {
                        message: "Have",
                        reason: e.to_string(),
                    }
                })?;
                let start = have.start.min(MAX_REMOTE_BLOCK);
                let mut last_set = None;
                for (j, &byte) in bits.iter().enumerate() {
                    let at = start.saturating_add(8 * j as u64);
                    self.remote_bits.set_byte(at, byte);
                    if byte != 0 {
                        last_set = Some(at + 7 - u64::from(byte.trailing_zeros()));
                    }
                }
                if let Some(last) = last_set {
                    self.remote_length = self.remote_length.max(last.saturating_add(1));
                }
            }
            None => {
                let start = have.start.min(MAX_REMOTE_BLOCK);
                let len = length.clamp(1, MAX_HAVE_RANGE);
                let end = start.saturating_add(len).min(MAX_REMOTE_BLOCK);
                self.remote_bits.set_range(start, end, true);
                self.remote_length = self.remote_length.max(end);
            }
        }
        if self.remote_length > old_remote_length {
            self.synced = false;
            self.push_event(ReplicationEvent::RemoteLength {
                length: self.remote_length,
            });
            self.send_wants(session)?;
        }
        self.update(session, feed)
    }

    fn on_data<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
        data: Data,
    ) -> Result<(), ReplicationError> {
        let index = data.index;
        if self.inflight.remove(&index).is_none() {
            // Unrequested: reject it, as JS does without allowPush.
            if index < MAX_REMOTE_BLOCK && !feed.has(index) {
                self.send(session, Message::Unhave(Unhave::block(index)))?;
            }
            return Ok(());
        }
        if let Some(pos) = self.inflight_order.iter().position(|&i| i == index) {
            self.inflight_order.remove(pos);
        }
        self.request_deadline =
            if self.inflight_order.is_empty() || self.config.request_timeout_ms == 0 {
                None
            } else {
                Some(self.now.saturating_add(self.config.request_timeout_ms))
            };
        let outcome = feed
            .put(
                index,
                data.value.as_deref(),
                &data.nodes,
                data.signature.as_ref(),
            )
            .map_err(|source| ReplicationError::Feed { index, source })?;
        if let Some(value) = &data.value {
            if outcome.new_block {
                self.push_event(ReplicationEvent::Downloaded {
                    index,
                    bytes: value.len() as u64,
                });
            }
        }
        if let Some(length) = outcome.new_length {
            self.push_event(ReplicationEvent::Length {
                length,
                byte_length: feed.byte_length(),
            });
        }
        self.update(session, feed)
    }

    /// Sends Wants: the regions of our selections below the remote's length, then
    /// always region 0 (JS `_sendWants`), each region once, at most 16 in flight.
    fn send_wants(&mut self, session: &mut Session) -> Result<(), ReplicationError> {
        if !self.config.downloading || !self.opened || self.closed || !self.remote_uploading {
            return Ok(());
        }
        if self.wants.is_none() {
            return Ok(());
        }
        let mut regions = Vec::new();
        for s in &self.selections {
            let mut region = s.start / WANT_REGION;
            loop {
                let at = region.saturating_mul(WANT_REGION);
                if at >= self.remote_length || s.end.is_some_and(|e| at >= e) {
                    break;
                }
                regions.push(region);
                if regions.len() >= 64 {
                    break;
                }
                region += 1;
            }
        }
        regions.push(0);
        for region in regions {
            if self.inflight_wants >= 16 {
                break;
            }
            self.send_want_region(session, region)?;
        }
        Ok(())
    }

    fn send_want_region(
        &mut self,
        session: &mut Session,
        region: u64,
    ) -> Result<(), ReplicationError> {
        if !self.config.downloading || !self.remote_uploading {
            return Ok(());
        }
        let Some(wants) = self.wants.as_mut() else {
            return Ok(());
        };
        if wants.len() >= 4096 || !wants.insert(region) {
            return Ok(());
        }
        self.inflight_wants += 1;
        self.remote_known = false;
        self.send(
            session,
            Message::Want(Want::range(region.saturating_mul(WANT_REGION), WANT_REGION)),
        )
    }

    /// Fills the request window with blocks the remote has and we lack (linear order
    /// within each selection), then checks for sync.
    fn update<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &mut Feed<S>,
    ) -> Result<(), ReplicationError> {
        if !self.opened || self.closed {
            return Ok(());
        }
        if self.config.downloading && self.remote_uploading {
            let window = self.config.max_inflight.max(1);
            let mut budget = MAX_SCAN;
            let mut si = 0;
            while si < self.selections.len() && self.inflight.len() < window && budget > 0 {
                let Some(sel) = self.selections.get(si).copied() else {
                    break;
                };
                let end = sel.end.unwrap_or(u64::MAX).min(self.remote_length);
                let mut i = sel.cursor;
                // Advance the cursor over blocks held or in flight.
                while i < end && budget > 0 && (feed.has(i) || self.inflight.contains_key(&i)) {
                    i += 1;
                    budget -= 1;
                }
                if let Some(s) = self.selections.get_mut(si) {
                    s.cursor = i;
                }
                let mut j = i;
                while j < end && self.inflight.len() < window && budget > 0 {
                    budget -= 1;
                    let Some(next) = self.remote_bits.next_set(j, end) else {
                        break;
                    };
                    j = next;
                    if !feed.has(j) && !self.inflight.contains_key(&j) {
                        self.request(session, feed, j)?;
                    }
                    j += 1;
                }
                si += 1;
            }
            // A sparse selection that is complete is dropped (JS calls back and removes it).
            if self.config.sparse {
                let remote_length = self.remote_length;
                self.selections.retain(|s| match s.end {
                    Some(e) => !(s.cursor >= e && feed.downloaded(s.start, e) == e - s.start),
                    None => true,
                } || remote_length == 0);
            }
        }
        self.check_synced(feed);
        Ok(())
    }

    fn request<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &Feed<S>,
        index: u64,
    ) -> Result<(), ReplicationError> {
        let nodes = feed.digest(index);
        self.send(session, Message::Request(Request::block(index, nodes)))?;
        if self.inflight_order.is_empty() && self.config.request_timeout_ms > 0 {
            self.request_deadline = Some(self.now.saturating_add(self.config.request_timeout_ms));
        }
        self.inflight.insert(index, self.now);
        self.inflight_order.push_back(index);
        Ok(())
    }

    fn check_synced<S: Store>(&mut self, feed: &Feed<S>) {
        let synced = self.config.downloading
            && self.remote_known
            && self.inflight.is_empty()
            && feed.length() >= self.remote_length
            && self.selections.iter().all(|s| {
                let end = s.end.unwrap_or(u64::MAX).min(self.remote_length);
                s.cursor >= end
                    || (end - s.cursor <= MAX_SCAN
                        // Blocks the remote lacks do not count; check what is left.
                        && (s.cursor..end).all(|i| feed.has(i) || !self.remote_bits.get(i)))
            });
        if synced && !self.synced {
            self.push_event(ReplicationEvent::Synced {
                length: feed.length(),
                remote_length: self.remote_length,
            });
        }
        self.synced = synced;
    }

    /// Answers queued requests while the session's outgoing buffer is below the high
    /// water mark.
    fn answer_requests<S: Store>(
        &mut self,
        session: &mut Session,
        feed: &Feed<S>,
    ) -> Result<(), ReplicationError> {
        let mut prepared = Vec::new();
        self.prepare_answers(feed, session.outgoing_len(), &mut prepared)?;
        self.send_prepared(session, prepared)
    }

    /// Queues a Request from the remote, to be answered by [`Replicator::prepare_answers`]
    /// and [`Replicator::send_prepared`] (a connection takes the feed lock for the first
    /// only). Ignored while we do not upload; an error when the remote queued too many.
    pub fn queue_request(&mut self, request: Request) -> Result<(), ReplicationError> {
        if self.closed || !self.config.uploading {
            return Ok(());
        }
        if self.remote_requests.len() >= self.config.max_remote_requests {
            return Err(ReplicationError::TooManyRequests {
                max: self.config.max_remote_requests,
            });
        }
        self.remote_requests.push_back(request);
        Ok(())
    }

    /// Whether Requests may be queued with [`Replicator::queue_request`] and answered
    /// outside the feed lock: the channel uploads only (its answers cannot interleave
    /// with requests of its own).
    pub fn answers_outside_lock(&self) -> bool {
        !self.config.downloading
    }

    /// Builds answers to queued requests from `feed` (proofs, blocks, what to sign)
    /// while the outgoing buffer, now `outgoing` bytes, has room; the caller holds the
    /// feed only for this and sends them with [`Replicator::send_prepared`].
    pub fn prepare_answers<S: Store>(
        &mut self,
        feed: &Feed<S>,
        outgoing: usize,
        out: &mut Vec<PreparedData>,
    ) -> Result<(), ReplicationError> {
        if !self.opened || self.closed {
            return Ok(());
        }
        let mut outgoing = outgoing;
        while outgoing < self.config.upload_high_water {
            let Some(request) = self.remote_requests.pop_front() else {
                break;
            };
            if !self.config.uploading {
                self.remote_requests.clear();
                break;
            }
            if !self.metered(feed, &request) {
                // No credit for this block yet: it waits, first in line, until the owner
                // reserves more and resumes the connection.
                self.remote_requests.push_front(request);
                break;
            }
            if let Some(p) = self.prepare(feed, &request)? {
                outgoing = outgoing.saturating_add(p.estimated_len());
                out.push(p);
            }
        }
        Ok(())
    }

    /// Signs (a rekeyed channel, once per length) and sends answers built by
    /// [`Replicator::prepare_answers`].
    pub fn send_prepared(
        &mut self,
        session: &mut Session,
        prepared: Vec<PreparedData>,
    ) -> Result<(), ReplicationError> {
        for p in prepared {
            let signature = match p.signature {
                PreparedSignature::None => None,
                PreparedSignature::Ready(sig) => Some(sig),
                PreparedSignature::Sign { length, tree_hash } => {
                    Some(self.sign_length(length, &tree_hash))
                }
            };
            let data = DataRef {
                index: p.index,
                value: p.value.as_deref(),
                nodes: &p.nodes,
                signature: signature.as_ref(),
            };
            session.send_data(&self.discovery_key, &data)?;
        }
        Ok(())
    }

    /// Whether `request` may be answered under the channel's meter (counting its bytes
    /// when so), checked before the Data message is built. A request that sends no block
    /// bytes (hash only, or a block we do not have) costs nothing.
    fn metered<S: Store>(&self, feed: &Feed<S>, request: &Request) -> bool {
        let Some(meter) = &self.config.meter else {
            return true;
        };
        let index = request.index;
        if request.hash.unwrap_or(false)
            || request.bytes.unwrap_or(0) > 0
            || index >= feed.length()
            || !feed.has(index)
        {
            return true;
        }
        let size = match index.checked_mul(2).map(|n| feed.node(n)) {
            Some(Ok(Some(node))) => node.size,
            // Size unknown: `answer` finds the block missing or fails on the store.
            _ => return true,
        };
        meter.try_spend(size)
    }

    /// The answer to `request`, or `None` when none is sent.
    fn prepare<S: Store>(
        &mut self,
        feed: &Feed<S>,
        request: &Request,
    ) -> Result<Option<PreparedData>, ReplicationError> {
        let index = request.index;
        // Byte-offset requests (JS `seek`) are not served: the requester times out.
        if request.bytes.unwrap_or(0) > 0 {
            tracing::debug!(bytes = request.bytes, "byte-offset request ignored");
            return Ok(None);
        }
        let hash_only = request.hash.unwrap_or(false);
        if index >= feed.length() || !feed.bitfield().has_node(2 * index) {
            // JS would destroy the stream here; a block we never had is the remote's
            // mistake, so it is ignored and the remote's request times out.
            tracing::debug!(index, "request for a block we do not have");
            return Ok(None);
        }
        let digest = request.nodes.unwrap_or(0);
        // A signer channel proves against the announced length (one signature per
        // announcement); a block beyond it (the remote learned of it elsewhere) is proven
        // against the current length, which then counts as announced.
        let proof = if self.config.signer.is_some() && index < self.announced_length {
            feed.proof_at(
                index,
                digest,
                &mut self.remote_tree,
                hash_only,
                self.announced_length,
            )
        } else {
            if self.config.signer.is_some() {
                self.announced_length = feed.length();
            }
            feed.proof(index, digest, &mut self.remote_tree, hash_only)
        }
        .map_err(|source| ReplicationError::Feed { index, source })?;
        let value = if hash_only {
            None
        } else if feed.has(index) {
            feed.get_for_upload(index)
                .map_err(|source| ReplicationError::Feed { index, source })?
        } else {
            // Tree node but no block: JS sends nothing.
            return Ok(None);
        };
        let signature = if proof.verified_by > 0 {
            self.signature_for(feed, proof.verified_by / 2, index)?
        } else {
            PreparedSignature::None
        };
        Ok(Some(PreparedData {
            index,
            value,
            nodes: proof.nodes,
            signature,
        }))
    }

    /// The signature for `length`: the stored one, the one signed last, or what the
    /// rekeyed signer is to sign (signed after the feed lock is let go).
    fn signature_for<S: Store>(
        &mut self,
        feed: &Feed<S>,
        length: u64,
        index: u64,
    ) -> Result<PreparedSignature, ReplicationError> {
        if let Some((l, sig)) = self.signature_cache {
            if l == length {
                return Ok(PreparedSignature::Ready(sig));
            }
        }
        Ok(match &self.config.signer {
            Some(_) => {
                let tree_hash = match self.tree_hash_cache {
                    Some((l, hash)) if l == length => hash,
                    _ => {
                        let roots = feed
                            .roots_at(length)
                            .map_err(|source| ReplicationError::Feed { index, source })?;
                        let hash = merkle::tree_hash(&roots);
                        self.tree_hash_cache = Some((length, hash));
                        hash
                    }
                };
                PreparedSignature::Sign { length, tree_hash }
            }
            None => match feed
                .signature_at(length)
                .map_err(|source| ReplicationError::Feed { index, source })?
            {
                Some(sig) => {
                    self.signature_cache = Some((length, sig));
                    PreparedSignature::Ready(sig)
                }
                None => PreparedSignature::None,
            },
        })
    }

    /// The rekeyed signer's signature over `tree_hash` at `length` (remembered: the
    /// answers of one announcement share it).
    fn sign_length(&mut self, length: u64, tree_hash: &[u8; 32]) -> [u8; 64] {
        if let Some((l, sig)) = self.signature_cache {
            if l == length {
                return sig;
            }
        }
        let sig = match &self.config.signer {
            Some(signer) => {
                self.signatures = self.signatures.saturating_add(1);
                signer.sign(tree_hash, length)
            }
            // Only a signer channel prepares a signature to make.
            None => [0; 64],
        };
        self.signature_cache = Some((length, sig));
        sig
    }
}

#[cfg(test)]
mod tests;
