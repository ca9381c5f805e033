//! The buyer: dials a seller, checks it is the seller asked for, accepts its terms when
//! told to, receives its one-time feed key, and replicates that feed (full, or live) into
//! a directory, resuming the same feed after a reconnect (the key is derived, so it is
//! the same every time).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::ext;
use super::identity::Identity;
use crate::net::{
    self, ChannelSpec, Command, ConnectionOptions, NetConfig, NetError, NetEvent, SharedFeed,
};
use crate::payments::{encode_user_message, parse_user_message, UserMessage};
use crate::protocol::replicate::{ReplicationEvent, ReplicatorConfig};
use crate::storage::{Feed, FeedError, FsStore, Store, StoreError};

/// Why a purchase ended without the data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuyError {
    /// The connection failed (including a seller whose key is not the one asked for).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The seller said the buyer is not valid.
    #[error("rejected by the seller: {0}")]
    Rejected(String),
    /// Terms of use not accepted (or changed since).
    #[error("{0}")]
    Terms(&'static str),
    /// The output directory.
    #[error("{dir}: {source}")]
    Feed {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: FeedError,
    },
    /// The seller sent something a seller must not.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("the seller did not answer within {0:?}")]
    Timeout(Duration),
    /// Discovery did not find the seller.
    #[error("the seller was not found: {0}")]
    NotFound(String),
    /// Stored state (accepted terms) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What a buyer reports.
///
/// Every variant but [`BuyerEvent::Progress`] is a state event, delivered with
/// back-pressure: none is ever dropped for a consumer that lags (the purchase waits for
/// it). A consumer that stops reading must drop its receiver, or signal the purchase's
/// shutdown, so that the purchase does not wait for it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BuyerEvent {
    /// The handshake finished with the right seller.
    Connected,
    /// The seller's terms of use (already accepted).
    Terms(String),
    /// The seller gave us our feed.
    Feed {
        /// Its key.
        key: [u8; 32],
    },
    /// `dazaar/valid` from the seller.
    Valid(serde_json::Value),
    /// `dazaar/invalid` from the seller.
    Invalid(String),
    /// A user message from the seller (e.g. a payment request's answer).
    UserMessage {
        /// Its name.
        name: String,
        /// Its body (JSON).
        message: serde_json::Value,
    },
    /// The feed grew or a block arrived. Progress is a notification, not a state event:
    /// it is sent only while the event channel is at most half full (so it never takes
    /// the room of a state event) and a later one supersedes a dropped one. The latest
    /// value is always in the watch of [`buy_with_progress`].
    Progress {
        /// The feed's length.
        length: u64,
        /// Blocks held.
        downloaded: u64,
    },
    /// A block arrived (only with [`BuyOptions::report_blocks`]).
    Block {
        /// Its index.
        index: u64,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// The connection ended; a live purchase reconnects (see [`buy_reconnecting`]).
    Disconnected {
        /// Why it ended.
        error: String,
    },
    /// A live purchase is about to dial the seller again.
    Reconnecting {
        /// Reconnection attempts since the last good connection (1 = first).
        attempt: u32,
        /// How long it waited before this attempt.
        after: Duration,
    },
    /// We hold everything the seller has.
    Synced {
        /// The length.
        length: u64,
        /// The byte length.
        byte_length: u64,
    },
}

/// How far a purchase is: the latest value in the watch of [`buy_with_progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BuyProgress {
    /// The feed's length.
    pub length: u64,
    /// Blocks held.
    pub downloaded: u64,
}

/// Where a purchase reports: state events through a bounded channel with back-pressure,
/// progress through a watch (only the latest value matters).
struct Reporter {
    events: Option<mpsc::Sender<BuyerEvent>>,
    progress: Option<watch::Sender<BuyProgress>>,
    shutdown: watch::Receiver<bool>,
}

impl Reporter {
    /// Delivers a state event, waiting for room in the channel: a slow consumer slows the
    /// purchase down but loses nothing. Given up only when the consumer is gone or the
    /// purchase is told to shut down (a consumer that stopped reading to stop the purchase
    /// must not keep it waiting).
    async fn event(&mut self, event: BuyerEvent) {
        let Reporter {
            events, shutdown, ..
        } = self;
        let Some(tx) = events else { return };
        let shutting_down = async {
            if shutdown.wait_for(|stop| *stop).await.is_err() {
                // Nobody can ask for a shutdown any more: wait for room only.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            biased;
            _ = tx.send(event) => {}
            _ = shutting_down => {}
        }
    }

    /// Publishes progress: always to the watch; to the event channel only while it is at
    /// most half full (see [`BuyerEvent::Progress`]).
    fn progress(&self, progress: BuyProgress) {
        if let Some(watch) = &self.progress {
            watch.send_replace(progress);
        }
        if let Some(tx) = &self.events {
            if tx.capacity() > tx.max_capacity() / 2 {
                let _ = tx.try_send(BuyerEvent::Progress {
                    length: progress.length,
                    downloaded: progress.downloaded,
                });
            }
        }
    }
}

/// How to buy.
#[derive(Debug, Clone)]
pub struct BuyOptions {
    /// The seller key asked for (the card's `id`).
    pub seller_key: [u8; 32],
    /// Where the seller listens.
    pub addr: SocketAddr,
    /// Where the feed goes.
    pub out: PathBuf,
    /// Keep following after holding everything (and keep waiting when invalid).
    pub live: bool,
    /// Accept the seller's terms of use (they are recorded in the data dir).
    pub accept_terms: bool,
    /// The buyer's data dir (accepted terms).
    pub data_dir: PathBuf,
    /// Driver settings.
    pub net: NetConfig,
    /// How long to wait for the seller's first answer (feed or invalid).
    pub answer_timeout: Duration,
    /// User messages to send once connected (e.g. a payment request).
    pub send: Vec<UserMessage>,
    /// Report each block's bytes as it arrives ([`BuyerEvent::Block`]).
    pub report_blocks: bool,
    /// Download only these blocks (sparse): `[start, end)`, `end` None = to the end and,
    /// with `live`, on. `None`: everything.
    pub range: Option<(u64, Option<u64>)>,
    /// Download only blocks appended from now on (a live tail; implies `live`).
    pub tail: bool,
}

/// How a purchase ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuyOutcome {
    /// The feed key received.
    pub feed_key: [u8; 32],
    /// Its length.
    pub length: u64,
    /// Its byte length.
    pub byte_length: u64,
}

fn terms_file(data_dir: &Path, seller: &[u8; 32]) -> PathBuf {
    data_dir.join("accepted-terms").join(hex::encode(seller))
}

/// Checks the seller's terms against what this buyer accepted (JS semantics: compared
/// trimmed). With `accept`, records them.
fn check_terms(opts: &BuyOptions, terms: &str) -> Result<(), BuyError> {
    let path = terms_file(&opts.data_dir, &opts.seller_key);
    let accepted = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(BuyError::Io { path, source }),
    };
    if accepted.as_deref().map(str::trim) == Some(terms.trim()) {
        return Ok(());
    }
    if opts.accept_terms {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| BuyError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        crate::fs_atomic::write_file_atomic(&path, terms.as_bytes())
            .map_err(|source| BuyError::Io { path, source })?;
        return Ok(());
    }
    Err(BuyError::Terms(if accepted.is_some() {
        ext::TERMS_UPDATED
    } else {
        ext::TERMS_NOT_ACCEPTED
    }))
}

fn open_feed(out: &Path, key: [u8; 32]) -> Result<Feed<FsStore>, BuyError> {
    let wrap = |source: FeedError| BuyError::Feed {
        dir: out.to_path_buf(),
        source,
    };
    let store = FsStore::open(out, true).map_err(|e: StoreError| wrap(e.into()))?;
    Feed::create_reader(store, key).map_err(wrap)
}

/// Buys from the seller at `opts.addr`: returns when the feed is complete (or, with
/// `live`, when `shutdown` turns true or the seller goes away). State events go to
/// `events` with back-pressure (see [`BuyerEvent`]).
pub async fn buy(
    identity: &Identity,
    opts: BuyOptions,
    events: Option<mpsc::Sender<BuyerEvent>>,
    shutdown: watch::Receiver<bool>,
) -> Result<BuyOutcome, BuyError> {
    buy_with_progress(identity, opts, events, None, shutdown).await
}

/// [`buy`], also publishing the latest [`BuyProgress`] to `progress` (a watch: a consumer
/// that lags sees the newest value, and its lag never slows the purchase).
pub async fn buy_with_progress(
    identity: &Identity,
    opts: BuyOptions,
    events: Option<mpsc::Sender<BuyerEvent>>,
    progress: Option<watch::Sender<BuyProgress>>,
    shutdown: watch::Receiver<bool>,
) -> Result<BuyOutcome, BuyError> {
    let out = opts.out.clone();
    let open = move |key| open_feed(&out, key);
    buy_into(identity, opts, open, events, progress, shutdown).await
}

/// [`buy_with_progress`] into the feed that `open` makes for the key the seller gives
/// (instead of a directory at `opts.out`): the market bench's light buyers keep their feed
/// in memory. Not part of the stable API.
#[doc(hidden)]
pub async fn buy_into<S: Store>(
    identity: &Identity,
    opts: BuyOptions,
    mut open: impl FnMut([u8; 32]) -> Result<Feed<S>, BuyError> + Send,
    events: Option<mpsc::Sender<BuyerEvent>>,
    progress: Option<watch::Sender<BuyProgress>>,
    shutdown: watch::Receiver<bool>,
) -> Result<BuyOutcome, BuyError> {
    let mut report = Reporter {
        events,
        progress,
        shutdown: shutdown.clone(),
    };
    let stream = net::dial(opts.addr).await?;
    let mut session = opts.net.session_config(true, identity.buyer_key_pair());
    session.expected_remote_key = Some(opts.seller_key);
    let (ev_tx, mut ev_rx) = mpsc::channel::<NetEvent>(256);
    let (cmd_tx, cmd_rx) = mpsc::channel::<Command<S>>(64);
    let options = ConnectionOptions {
        open: Vec::new(),
        serve: Vec::new(),
        events: Some(ev_tx),
        commands: Some(cmd_rx),
        shutdown: Some(shutdown.clone()),
        extensions: ext::ALL.iter().map(|n| (*n).to_owned()).collect(),
        keep_unknown: true,
    };
    let net_cfg = opts.net.clone();
    let mut conn =
        tokio::spawn(async move { net::run_connection(stream, session, &net_cfg, options).await });
    for m in &opts.send {
        let _ = cmd_tx
            .send(Command::SendExtension(
                ext::USER_MESSAGE.into(),
                encode_user_message(m),
            ))
            .await;
    }

    let mut feed: Option<Arc<SharedFeed<S>>> = None;
    let mut feed_key: Option<[u8; 32]> = None;
    let mut tail_started = false;
    let answer_deadline = tokio::time::Instant::now() + opts.answer_timeout;
    let outcome =
        |feed: &Option<Arc<SharedFeed<S>>>, key: Option<[u8; 32]>| -> Option<BuyOutcome> {
            let (f, k) = (feed.as_ref()?, key?);
            let f = f.lock();
            Some(BuyOutcome {
                feed_key: k,
                length: f.length(),
                byte_length: f.byte_length(),
            })
        };
    let fail = |e: BuyError, cmd_tx: &mpsc::Sender<Command<S>>| {
        let _ = cmd_tx.try_send(Command::Shutdown);
        Err(e)
    };
    loop {
        let waiting_for_answer = feed.is_none();
        tokio::select! {
            res = &mut conn => {
                return match res {
                    Ok(Ok(())) => outcome(&feed, feed_key)
                        .ok_or_else(|| BuyError::Protocol("the seller closed the connection before giving a feed".into())),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(BuyError::Protocol(format!("connection task failed: {e}"))),
                };
            }
            _ = tokio::time::sleep_until(answer_deadline), if waiting_for_answer => {
                return fail(BuyError::Timeout(opts.answer_timeout), &cmd_tx);
            }
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { continue };
                match ev {
                    NetEvent::Connected { .. } => report.event(BuyerEvent::Connected).await,
                    NetEvent::Extension { name, payload } => match name.as_str() {
                        ext::TERMS_OF_USE => {
                            let terms = String::from_utf8_lossy(&payload).into_owned();
                            if let Err(e) = check_terms(&opts, &terms) {
                                return fail(e, &cmd_tx);
                            }
                            report.event(BuyerEvent::Terms(terms)).await;
                        }
                        ext::ONE_TIME_FEED => {
                            let Ok(key) = <[u8; 32]>::try_from(payload.as_slice()) else {
                                return fail(BuyError::Protocol("one-time-feed is not a 32-byte key".into()), &cmd_tx);
                            };
                            if feed_key.is_some_and(|k| k != key) {
                                return fail(BuyError::Protocol("the seller sent a second, different feed key".into()), &cmd_tx);
                            }
                            if feed.is_none() {
                                let f = match open(key) {
                                    Ok(f) => SharedFeed::new(f),
                                    Err(e) => return fail(e, &cmd_tx),
                                };
                                let sparse = opts.range.is_some() || opts.tail;
                                let config = if sparse { ReplicatorConfig::sparse() } else { ReplicatorConfig::downloader() };
                                let _ = cmd_tx.send(Command::Open(ChannelSpec { feed: f.clone(), config })).await;
                                if let Some((start, end)) = opts.range {
                                    let dk = crate::crypto::discovery_key(&key);
                                    let _ = cmd_tx.send(Command::Download(dk, start, end)).await;
                                }
                                feed = Some(f);
                                feed_key = Some(key);
                                report.event(BuyerEvent::Feed { key }).await;
                            }
                        }
                        ext::VALID => {
                            tracing::debug!(payload = %String::from_utf8_lossy(&payload), "valid");
                            let info = serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null);
                            report.event(BuyerEvent::Valid(info)).await;
                        }
                        ext::INVALID => {
                            let reason = serde_json::from_slice::<serde_json::Value>(&payload)
                                .ok()
                                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                                .unwrap_or_else(|| "invalid".into());
                            report.event(BuyerEvent::Invalid(reason.clone())).await;
                            if !opts.live {
                                return fail(BuyError::Rejected(reason), &cmd_tx);
                            }
                        }
                        ext::USER_MESSAGE => {
                            if let Ok(m) = parse_user_message(&payload) {
                                let message = serde_json::from_str(m.message.as_str()).unwrap_or(serde_json::Value::Null);
                                report.event(BuyerEvent::UserMessage { name: m.name.to_string(), message }).await;
                            }
                        }
                        _ => {}
                    },
                    NetEvent::Replication { event, discovery_key } => {
                        let Some(f) = &feed else { continue };
                        if opts.tail && !tail_started {
                            if let ReplicationEvent::RemoteLength { length } = event {
                                tail_started = true;
                                let _ = cmd_tx.send(Command::Download(discovery_key, length, None)).await;
                                report.progress(BuyProgress { length, downloaded: 0 });
                            }
                        }
                        match event {
                            ReplicationEvent::Synced { length, remote_length } if length >= remote_length => {
                                let (len, bytes, all) = {
                                    let f = f.lock();
                                    let all = match opts.range {
                                        // A sparse range: done when every block of it is held.
                                        Some((start, end)) => {
                                            let end = end.unwrap_or(f.length()).min(f.length());
                                            f.downloaded(start.min(end), end) == end - start.min(end)
                                        }
                                        None if opts.tail => tail_started,
                                        None => f.has_all(),
                                    };
                                    (f.length(), f.byte_length(), all)
                                };
                                if all {
                                    report.event(BuyerEvent::Synced { length: len, byte_length: bytes }).await;
                                    if !opts.live && !opts.tail {
                                        let _ = cmd_tx.send(Command::Shutdown).await;
                                        let _ = (&mut conn).await;
                                        return outcome(&feed, feed_key)
                                            .ok_or_else(|| BuyError::Protocol("no feed".into()));
                                    }
                                }
                            }
                            ReplicationEvent::Length { .. } | ReplicationEvent::Downloaded { .. } => {
                                let (progress, block) = {
                                    let f = f.lock();
                                    let block = match event {
                                        ReplicationEvent::Downloaded { index, .. } if opts.report_blocks => {
                                            f.get(index).ok().flatten().map(|data| (index, data))
                                        }
                                        _ => None,
                                    };
                                    (BuyProgress { length: f.length(), downloaded: f.held() }, block)
                                };
                                if let Some((index, data)) = block {
                                    report.event(BuyerEvent::Block { index, data }).await;
                                }
                                report.progress(progress);
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Sends one `dazaar/user-message` to the seller and waits for its answer (e.g. a
/// Lightning invoice for `lnd-pay-request`). Needs no valid payment: it is how a buyer
/// learns how to pay. `Ok(None)`: the seller answered nothing within `timeout`.
pub async fn exchange(
    identity: &Identity,
    seller_key: [u8; 32],
    addr: SocketAddr,
    message: &UserMessage,
    net_cfg: &NetConfig,
    timeout: Duration,
) -> Result<Option<UserMessage>, BuyError> {
    let stream = net::dial(addr).await?;
    let mut session = net_cfg.session_config(true, identity.buyer_key_pair());
    session.expected_remote_key = Some(seller_key);
    let (ev_tx, mut ev_rx) = mpsc::channel::<NetEvent>(64);
    let (cmd_tx, cmd_rx) = mpsc::channel::<Command<FsStore>>(16);
    let options = ConnectionOptions {
        events: Some(ev_tx),
        commands: Some(cmd_rx),
        extensions: ext::ALL.iter().map(|n| (*n).to_owned()).collect(),
        keep_unknown: true,
        ..ConnectionOptions::default()
    };
    let cfg = net_cfg.clone();
    let mut conn =
        tokio::spawn(async move { net::run_connection(stream, session, &cfg, options).await });
    let _ = cmd_tx
        .send(Command::SendExtension(
            ext::USER_MESSAGE.into(),
            encode_user_message(message),
        ))
        .await;
    let deadline = tokio::time::Instant::now() + timeout;
    let reply = loop {
        tokio::select! {
            res = &mut conn => {
                return match res {
                    Ok(Ok(())) => Ok(None),
                    Ok(Err(e)) => Err(e.into()),
                    Err(e) => Err(BuyError::Protocol(format!("connection task failed: {e}"))),
                };
            }
            _ = tokio::time::sleep_until(deadline) => break None,
            ev = ev_rx.recv() => match ev {
                Some(NetEvent::Extension { name, payload }) if name == ext::USER_MESSAGE => {
                    if let Ok(m) = parse_user_message(&payload) {
                        break Some(m);
                    }
                }
                Some(_) => {}
                None => break None,
            },
        }
    };
    let _ = cmd_tx.send(Command::Shutdown).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut conn).await;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::seller::test_sale;

    /// A consumer slower than the download, on a channel of one, receives every block
    /// and every state event (with events dropped when the channel is full, most blocks
    /// were lost); the progress watch ends at the whole feed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_consumer_receives_every_buyer_state_event() {
        const BLOCKS: u64 = 40;
        let sale = test_sale::start(BLOCKS as u32, None).await;
        let buyer = Identity::from_master_key([0x54; 32]);
        let (_never, shutdown) = watch::channel(false);
        let opts = BuyOptions {
            seller_key: sale.product.seller_key(),
            addr: sale.addr,
            out: sale.dir.join("buyer/feed"),
            live: false,
            accept_terms: false,
            data_dir: sale.dir.join("buyer"),
            net: test_sale::net(),
            answer_timeout: Duration::from_secs(5),
            send: Vec::new(),
            report_blocks: true,
            range: None,
            tail: false,
        };
        let (tx, mut rx) = mpsc::channel(1);
        let (progress_tx, progress) = watch::channel(BuyProgress::default());
        let purchase = tokio::spawn(async move {
            buy_with_progress(&buyer, opts, Some(tx), Some(progress_tx), shutdown).await
        });
        let mut events = Vec::new();
        while let Some(event) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the buyer went quiet")
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
            events.push(event);
        }
        let out = purchase.await.expect("task").expect("bought");
        assert_eq!(out.length, BLOCKS);
        let blocks: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                BuyerEvent::Block { index, data } => {
                    assert_eq!(data, format!("block {index}").as_bytes());
                    Some(*index)
                }
                _ => None,
            })
            .collect();
        let mut sorted = blocks.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, (0..BLOCKS).collect::<Vec<_>>(), "{events:?}");
        assert_eq!(blocks.len() as u64, BLOCKS, "each block once");
        for wanted in ["Connected", "Feed", "Valid", "Synced"] {
            assert!(
                events.iter().any(|e| format!("{e:?}").starts_with(wanted)),
                "no {wanted} in {events:?}"
            );
        }
        assert_eq!(
            *progress.borrow(),
            BuyProgress {
                length: BLOCKS,
                downloaded: BLOCKS
            }
        );
    }
}

/// How a live purchase reconnects: exponential backoff from `first` up to `max`, each
/// delay drawn at random from its upper half (jitter, so that the buyers of a restarted
/// seller do not all come back in the same instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// The first delay.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
    /// A connection that lasted this long resets the backoff.
    pub healthy: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            first: Duration::from_millis(500),
            max: Duration::from_secs(30),
            healthy: Duration::from_secs(30),
        }
    }
}

impl Reconnect {
    /// The delay before reconnection attempt `attempt` (1 = first): in
    /// `[d/2, d]` with `d = min(first * 2^(attempt-1), max)`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let doubled = self
            .first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let d = doubled.min(self.max);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// Whether a purchase that ended with `e` may be tried again: yes for the network, a
/// silent or misbehaving connection (a seller restarting mid-handshake looks like that);
/// no for what reconnecting cannot fix (terms, the output directory, stored state).
fn worth_retrying(e: &BuyError) -> bool {
    matches!(
        e,
        BuyError::Net(_) | BuyError::Protocol(_) | BuyError::Timeout(_) | BuyError::NotFound(_)
    )
}

/// A live purchase that survives its connection: when the connection drops or the seller
/// restarts, it waits ([`Reconnect`]), asks `redial` for the seller's address (the same
/// address, or discovery again) and buys on, resuming from the blocks already held in
/// `opts.out`. Reports [`BuyerEvent::Disconnected`] and [`BuyerEvent::Reconnecting`]
/// between connections. Ends when `shutdown` turns true (with the last outcome), or with
/// an error reconnecting cannot fix. Without `opts.live` it is [`buy`].
pub async fn buy_reconnecting<F, Fut>(
    identity: &Identity,
    mut opts: BuyOptions,
    events: Option<mpsc::Sender<BuyerEvent>>,
    shutdown: watch::Receiver<bool>,
    reconnect: Reconnect,
    mut redial: F,
) -> Result<BuyOutcome, BuyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<SocketAddr, BuyError>>,
{
    if !opts.live {
        return buy(identity, opts, events, shutdown).await;
    }
    let mut attempt = 0u32;
    let mut last: Option<BuyOutcome> = None;
    let mut shutdown_rx = shutdown.clone();
    loop {
        let started = tokio::time::Instant::now();
        let result = buy(identity, opts.clone(), events.clone(), shutdown.clone()).await;
        if *shutdown.borrow() {
            return result.or_else(|e| last.clone().ok_or(e));
        }
        let error = match result {
            Ok(out) => {
                last = Some(out);
                "the seller closed the connection".to_owned()
            }
            Err(e) if worth_retrying(&e) => e.to_string(),
            Err(e) => return Err(e),
        };
        if let Some(tx) = &events {
            let _ = tx.send(BuyerEvent::Disconnected { error }).await;
        }
        if started.elapsed() >= reconnect.healthy {
            attempt = 0;
        }
        loop {
            attempt = attempt.saturating_add(1);
            let after = reconnect.delay(attempt);
            tokio::select! {
                _ = tokio::time::sleep(after) => {}
                _ = shutdown_rx.wait_for(|s| *s) => {
                    return last.ok_or(BuyError::Protocol("stopped before the seller gave a feed".into()));
                }
            }
            if let Some(tx) = &events {
                let _ = tx.send(BuyerEvent::Reconnecting { attempt, after }).await;
            }
            match redial().await {
                Ok(addr) => {
                    opts.addr = addr;
                    break;
                }
                Err(e) if worth_retrying(&e) => {
                    if let Some(tx) = &events {
                        let error = e.to_string();
                        let _ = tx.send(BuyerEvent::Disconnected { error }).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}
