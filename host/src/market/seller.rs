//! The seller: sells one feed (a product) to buyers who connect, each paying buyer
//! getting its own rekeyed view of the feed, payment checked continuously.
//!
//! Per connection (WIRE.md §7.4, as JS dazaar@1.6.1 does it): Noise XX as responder
//! with the product's seller key; before the handshake the extension names, the seller
//! id and the terms of use are queued; once the buyer's static key is known it is
//! validated through the payment gate, and then again every revalidation period (sooner
//! when a time grant runs out first). The first success derives the buyer's rekeyed key
//! pair (never stored), sends `dazaar/one-time-feed` and opens the rekeyed channel;
//! `dazaar/valid` carries the plugin's answer. A failure stops uploading at once
//! (Status uploading=false) and sends `dazaar/invalid` on the transition; paying again
//! resumes. One live connection per buyer key: a newer one replaces the older.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::ext;
use super::identity::Identity;
use super::lease::Leases;
use super::metering::{self, Meters, DATA_USED_UP, MAX_METERS, TOO_MANY_METERED};
use super::revocation::{RevocationList, Standing};
use super::seller_state::{Action, SellerState, StateSettings};
use crate::crypto::NoiseKeyPair;
use crate::monitor::{names, CountWrites};
use crate::net::{self, ChannelSpec, Command, ConnectionOptions, NetConfig, NetEvent, SharedFeed};
use crate::payments::{
    encode_user_message, parse_user_message, Admission, MessageBudget, Now, PaymentGate, Validation,
};
use crate::protocol::meter::ByteMeter;
use crate::protocol::replicate::ReplicatorConfig;
use crate::state::{LazyState, Sale, StatePlace, StateUrl};
use crate::storage::{FsStore, RekeyedSigner};
use dazaar_plugin_api::{Grant, GrantKind, Unit};

/// What a seller reports (for the CLI, logs and tests). All of them are state events:
/// none is dropped for a consumer that lags (see [`serve`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SellerEvent {
    /// A buyer finished the handshake.
    BuyerConnected {
        /// The buyer's key.
        buyer: [u8; 32],
    },
    /// A buyer was found valid (first time, or again after being invalid).
    BuyerValid {
        /// The buyer's key.
        buyer: [u8; 32],
        /// The rekeyed feed key it receives.
        feed_key: [u8; 32],
        /// The validation info sent as `dazaar/valid`.
        info: serde_json::Value,
    },
    /// A buyer became invalid (or was never valid).
    BuyerInvalid {
        /// The buyer's key.
        buyer: [u8; 32],
        /// The reason sent as `dazaar/invalid`.
        reason: String,
    },
    /// A buyer's connection ended.
    BuyerDisconnected {
        /// The buyer's key, if the handshake finished.
        buyer: Option<[u8; 32]>,
        /// Why, when it failed.
        error: Option<String>,
    },
}

/// How many of its events one connection queues while the consumer lags before it waits
/// for the consumer (a handful per buyer in practice: connected, valid or invalid on each
/// change, disconnected).
const OUTBOX_MAX: usize = 32;

/// One connection's state events on their way to the consumer. None is dropped: an event
/// the channel has no room for is queued here and handed over as the consumer makes room,
/// so that revalidating a buyer (and stopping the upload of one that lapsed) never waits
/// on a slow consumer; past [`OUTBOX_MAX`] queued events the connection waits for it
/// (back-pressure). Events are given up only when the consumer is gone.
struct Outbox {
    tx: Option<mpsc::Sender<SellerEvent>>,
    queue: VecDeque<SellerEvent>,
}

impl Outbox {
    fn new(tx: Option<mpsc::Sender<SellerEvent>>) -> Self {
        Outbox {
            tx,
            queue: VecDeque::new(),
        }
    }

    /// Sends `event` now if the channel has room and nothing is queued before it, else
    /// queues it (waiting for the consumer when the queue is full).
    async fn push(&mut self, event: SellerEvent) {
        let Some(tx) = &self.tx else { return };
        if self.queue.is_empty() {
            match tx.try_send(event) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(event)) => self.queue.push_back(event),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.tx = None;
                    return;
                }
            }
        } else {
            self.queue.push_back(event);
        }
        if self.queue.len() > OUTBOX_MAX {
            self.flush().await;
        }
    }

    /// Whether events wait for room.
    fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Room for one event (for a `select!` arm guarded by [`Outbox::pending`]); `None`
    /// when the consumer is gone. Borrows nothing, so the arm's body may push.
    fn room(
        &self,
    ) -> impl std::future::Future<Output = Option<mpsc::OwnedPermit<SellerEvent>>> + 'static {
        let tx = self.tx.clone();
        async move {
            match tx {
                Some(tx) => tx.reserve_owned().await.ok(),
                None => std::future::pending().await,
            }
        }
    }

    /// Hands the oldest queued event over with `permit` (from [`Outbox::room`]).
    fn deliver(&mut self, permit: Option<mpsc::OwnedPermit<SellerEvent>>) {
        match permit {
            Some(permit) => {
                if let Some(event) = self.queue.pop_front() {
                    permit.send(event);
                }
            }
            None => {
                self.tx = None;
                self.queue.clear();
            }
        }
    }

    /// Hands every queued event over, waiting for the consumer as long as it takes.
    async fn flush(&mut self) {
        while let Some(event) = self.queue.pop_front() {
            let Some(tx) = &self.tx else { break };
            if tx.send(event).await.is_err() {
                self.tx = None;
            }
        }
        self.queue.clear();
    }
}

/// A buyer's live connection: its id and how to tell it to stop.
type ActiveConnection = (u64, mpsc::Sender<Command<FsStore>>);

/// One feed for sale.
pub struct Product {
    /// The feed, shared by all connections.
    pub feed: Arc<SharedFeed<FsStore>>,
    /// The feed's public key.
    pub feed_key: [u8; 32],
    /// The seller's Noise key pair for this product (its public key is the seller key).
    pub seller_keys: NoiseKeyPair,
    /// What a reload of the configuration may change: the payment gate, the terms, the
    /// revalidation period (see [`Offer`]).
    offer: RwLock<Arc<Offer>>,
    /// Refuse every buyer.
    pub deny: bool,
    /// Revoked buyers.
    pub revoked: Arc<RevocationList>,
    /// The seller's state database (revocations, sales log).
    state: Arc<LazyState>,
    /// Handshake deadline.
    pub handshake_timeout: Duration,
    /// How long a buyer may stay connected while not valid.
    pub unpaid_grace: Duration,
    identity: Identity,
    active: Mutex<HashMap<[u8; 32], ActiveConnection>>,
    /// Buyers' connection leases, when the state is shared between nodes.
    leases: Option<Arc<Leases>>,
    /// Some payment entry is priced by data: uploads are metered.
    metered: bool,
    /// The buyers' byte meters (see [`super::metering`]).
    meters: Meters,
    /// The product's label in the metrics: its seller key, hex.
    metric_label: metrics::SharedString,
}

impl std::fmt::Debug for Product {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Product")
            .field("feed_key", &hex::encode(self.feed_key))
            .field("seller_key", &hex::encode(self.seller_key()))
            .finish_non_exhaustive()
    }
}

/// The part of a product a reload of the configuration replaces while buyers stay
/// connected ([`Product::set_offer`]): a connection reads it at each validation, so a new
/// price or plugin configuration applies at each buyer's next revalidation; the terms and
/// the revalidation period apply to the connections that start after.
#[derive(Debug)]
pub struct Offer {
    /// The payment gate (no entries: free).
    pub gate: Arc<PaymentGate>,
    /// Terms of use buyers must accept.
    pub terms: Option<String>,
    /// Revalidation period.
    pub revalidate: Duration,
}

/// Why a product's offer cannot be replaced in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    /// Metering is set up per connection when it starts: a product cannot switch between
    /// data pricing and other pricing while buyers are connected.
    #[error("whether the product is priced by data (bytes, kilobytes, ...) cannot change without a restart")]
    MeteringChanged,
    /// A free product's buyers get the feed itself, a paid product's a rekeyed one.
    #[error("a product cannot switch between free and paid without a restart")]
    FreeChanged,
}

/// Settings of a product.
#[derive(Debug, Clone)]
pub struct ProductOptions {
    /// Terms of use.
    pub terms: Option<String>,
    /// Revalidation period (JS default 1 s).
    pub revalidate: Duration,
    /// Refuse every buyer.
    pub deny: bool,
    /// Where the seller's state is (revocations, sales).
    pub state: StatePlace,
    /// A connection whose Noise handshake has not finished by then is dropped (a peer
    /// that opens connections and never finishes them holds no slot for long). It is
    /// the [`NetConfig::handshake_timeout`] of this product's connections.
    pub handshake_timeout: Duration,
    /// A buyer that is not valid for this long (from the handshake, or from when it
    /// stopped being valid) is disconnected: long enough to pay through a user-message
    /// flow, short enough that strangers hold no connection slot for good.
    pub unpaid_grace: Duration,
}

/// The default handshake deadline.
pub const HANDSHAKE_TIMEOUT: Duration = crate::net::DEFAULT_HANDSHAKE_TIMEOUT;

/// The default [`ProductOptions::unpaid_grace`].
pub const UNPAID_GRACE: Duration = Duration::from_secs(60);

impl Product {
    /// A product selling `feed` with the seller key derived from `identity`.
    pub fn new(
        identity: &Identity,
        feed: Arc<SharedFeed<FsStore>>,
        gate: Arc<PaymentGate>,
        options: ProductOptions,
    ) -> Arc<Self> {
        let feed_key = feed.lock().key();
        let seller_keys = identity.seller_key_pair(&feed_key);
        let state = Arc::new(LazyState::new(&options.state));
        let leases = matches!(options.state.url, StateUrl::Postgres(_)).then(|| {
            Arc::new(Leases::new(
                Arc::clone(&state),
                options.state.data_dir.clone(),
                seller_keys.public_key(),
            ))
        });
        let metered = is_metered(&gate);
        let metric_label: metrics::SharedString = hex::encode(seller_keys.public_key()).into();
        // The product's series exist from the start (at zero), not from its first buyer.
        let product = || [(names::PRODUCT, metric_label.clone())];
        metrics::gauge!(names::BUYERS_CONNECTED, &product()).increment(0.0);
        metrics::gauge!(names::BUYERS_VALID, &product()).increment(0.0);
        metrics::counter!(names::BYTES_UPLOADED, &product()).increment(0);
        metrics::counter!(names::HANDSHAKES_FAILED, &product()).increment(0);
        Arc::new(Product {
            metric_label,
            leases,
            metered,
            meters: Meters::new(MAX_METERS),
            revoked: Arc::new(RevocationList::with_state(
                Arc::clone(&state),
                &seller_keys.public_key(),
            )),
            state,
            feed,
            feed_key,
            seller_keys,
            offer: RwLock::new(Arc::new(Offer {
                gate,
                terms: options.terms,
                revalidate: options.revalidate.max(Duration::from_millis(10)),
            })),
            deny: options.deny,
            handshake_timeout: options.handshake_timeout,
            unpaid_grace: options.unpaid_grace,
            identity: identity.clone(),
            active: Mutex::new(HashMap::new()),
        })
    }

    /// The seller key buyers ask for (the card's `id`).
    pub fn seller_key(&self) -> [u8; 32] {
        self.seller_keys.public_key()
    }

    /// The product's offer now (see [`Offer`]).
    pub fn offer(&self) -> Arc<Offer> {
        Arc::clone(&self.offer.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The payment gate now (no entries: free).
    pub fn gate(&self) -> Arc<PaymentGate> {
        Arc::clone(&self.offer().gate)
    }

    /// Replaces the product's offer (a reload of the configuration): new validations use
    /// the new gate, connected buyers stay connected. Refused when the product would
    /// switch between free and paid, or between data pricing and other pricing.
    pub fn set_offer(&self, offer: Offer) -> Result<(), OfferError> {
        self.check_offer(&offer.gate)?;
        let offer = Offer {
            revalidate: offer.revalidate.max(Duration::from_millis(10)),
            ..offer
        };
        *self.offer.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(offer);
        Ok(())
    }

    /// Whether an offer with `gate` could replace this product's ([`Product::set_offer`]).
    pub fn check_offer(&self, gate: &PaymentGate) -> Result<(), OfferError> {
        if is_metered(gate) != self.metered {
            return Err(OfferError::MeteringChanged);
        }
        if gate.entries().is_empty() != self.is_free() {
            return Err(OfferError::FreeChanged);
        }
        Ok(())
    }

    /// Whether the product is free (no payment entries): buyers get the feed itself.
    pub fn is_free(&self) -> bool {
        self.gate().entries().is_empty()
    }

    /// The feed key `buyer` receives: its rekeyed key, or the feed's own when free.
    pub fn buyer_feed_key(&self, buyer: &[u8; 32]) -> [u8; 32] {
        if self.is_free() {
            self.feed_key
        } else {
            self.identity
                .rekeyed_key_pair(&self.feed_key, buyer)
                .public_key()
        }
    }

    /// Validates `buyer`, connected from `ip`; `fresh` marks a new connection (the buyer
    /// may have just paid: see [`PaymentGate::check`]). Waits on the plugin without
    /// holding a thread.
    ///
    /// When the state cannot be read, nothing new is granted (fail closed), but a buyer
    /// already valid keeps what is left of the time grant it `held` (see [`Held`]).
    /// `valid_now`: the buyer is valid on this connection (its revocation is then checked
    /// against a recent snapshot of the list, [`RevocationList::recheck`]).
    async fn validate(
        &self,
        buyer: [u8; 32],
        fresh: bool,
        ip: Option<IpAddr>,
        held: Option<&Held>,
        valid_now: bool,
    ) -> (Validation, bool) {
        if self.deny {
            let reason = "Access denied by the seller".into();
            return (Validation::Invalid { reason }, false);
        }
        // The gate first, without calling a plugin: a stranger's check not admitted, or
        // a refusal reused, ends here, so a crowd of buyers waiting for admission costs
        // no reads of the state (thousands of them a second in a reconnect storm).
        let gate = self.gate();
        let now = Now::system();
        let admission = gate.admit(buyer, self.seller_key(), ip, fresh, now.at);
        let admission = match admission {
            Admission::Answered(answer) if !answer.is_valid() => return (answer, false),
            other => other,
        };
        // A buyer valid now is rechecked against a recent snapshot of the list; a new
        // connection, or a buyer not valid now (nothing is granted on a snapshot), by
        // its own row. Before the plugin call: a revoked buyer never reaches the plugin.
        let standing = if !fresh && valid_now {
            self.revoked.recheck(buyer).await
        } else {
            self.revoked.check(buyer).await
        };
        match standing {
            Standing::Clear => {}
            Standing::Revoked => {
                let reason = "Access revoked by the seller".into();
                return (Validation::Invalid { reason }, false);
            }
            Standing::Unknown => {
                return match held.and_then(|h| h.left(Instant::now().into_std())) {
                    Some(answer) => {
                        tracing::warn!(
                            "the seller's state cannot be read: the buyer keeps what is left of its grant"
                        );
                        (answer, true)
                    }
                    None => {
                        let reason = STATE_UNAVAILABLE.into();
                        (Validation::Invalid { reason }, false)
                    }
                };
            }
        }
        (gate.ask(admission, now.unix_ms).await, false)
    }

    /// Takes `buyer`'s connection lease once the buyer is valid (see [`super::lease`]):
    /// a valid answer turns invalid when another node holds the buyer or the lease cannot
    /// be checked. `leased` tracks whether this connection holds the lease.
    async fn lease(&self, buyer: [u8; 32], answer: Validation, leased: &mut bool) -> Validation {
        let Some(leases) = &self.leases else {
            return answer;
        };
        if *leased || !answer.is_valid() || self.is_free() {
            return answer;
        }
        match leases.acquire(buyer).await {
            Ok(()) => {
                *leased = true;
                answer
            }
            Err(reason) => Validation::Invalid { reason },
        }
    }

    /// Applies the meter to a plugin's answer (products priced by data). A data grant is
    /// the allowance bought in all; the buyer is valid while some of it is left
    /// (unreserved, or reserved and unsent), with `remaining` the bytes left, and invalid
    /// with [`DATA_USED_UP`] after. Reserves the next chunk when the meter has no credit
    /// or waits for some, then resumes the connection. Another kind of grant lifts the
    /// meter's limit. A state that cannot be written grants nothing (fail closed).
    async fn meter(
        &self,
        buyer: [u8; 32],
        answer: Validation,
        meter: Option<&Arc<ByteMeter>>,
        allowance: &mut Option<u64>,
        commands: &mpsc::Sender<Command<FsStore>>,
    ) -> Validation {
        if !self.metered {
            return answer;
        }
        let Some(meter) = meter else {
            return match answer {
                Validation::Valid { .. } => Validation::Invalid {
                    reason: TOO_MANY_METERED.into(),
                },
                other => other,
            };
        };
        let Validation::Valid { grant, plugin } = answer else {
            *allowance = None;
            meter.set_unlimited(false);
            return answer;
        };
        if grant.kind != GrantKind::BYTES {
            *allowance = None;
            meter.set_unlimited(true);
            return Validation::Valid { grant, plugin };
        }
        meter.set_unlimited(false);
        *allowance = Some(grant.remaining);
        match self.reserve(buyer, grant.remaining, meter, commands).await {
            Ok(0) => Validation::Invalid {
                reason: DATA_USED_UP.into(),
            },
            Ok(remaining) => Validation::Valid {
                grant: Grant::bytes(remaining),
                plugin,
            },
            Err(reason) => Validation::Invalid { reason },
        }
    }

    /// Reserves more of `allowance` for `buyer` when its meter has no credit or waits
    /// for some, and resumes the connection when credit came; returns the bytes left.
    async fn reserve(
        &self,
        buyer: [u8; 32],
        allowance: u64,
        meter: &Arc<ByteMeter>,
        commands: &mpsc::Sender<Command<FsStore>>,
    ) -> Result<u64, String> {
        let state = Arc::clone(&self.state);
        let seller = self.seller_key();
        let m = Arc::clone(meter);
        let need = meter.credit() == 0 || meter.is_wanting();
        let reserved = tokio::task::spawn_blocking(move || {
            if need {
                metering::reserve(&state, &seller, &buyer, allowance, &m)
                    .map(|r| (r.added, r.remaining))
            } else {
                let used = state.get()?.bytes(&seller, &buyer)?;
                Ok((0, allowance.saturating_sub(used).saturating_add(m.credit())))
            }
        })
        .await;
        match reserved {
            Ok(Ok((added, remaining))) => {
                if added > 0 || meter.credit() > 0 {
                    let _ = commands.send(Command::Resume).await;
                }
                Ok(remaining)
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot reserve a buyer's paid data in the state");
                Err(STATE_UNAVAILABLE.into())
            }
            Err(e) => Err(format!("metering failed: {e}")),
        }
    }

    /// Adds `buyer`'s grant to the sales log, off the async threads (a commit waits for
    /// the disk). A failure is logged: the sale already happened.
    fn record_sale(self: &Arc<Self>, buyer: [u8; 32], answer: &Validation) {
        let Validation::Valid { grant, plugin } = answer else {
            return;
        };
        let sale = Sale {
            seller: self.seller_key(),
            buyer,
            method: plugin.clone().unwrap_or_else(|| "free".to_owned()),
            grant: grant_kind_name(grant.kind).to_owned(),
            remaining: grant.remaining,
            at_ms: crate::payments::now_ms(),
        };
        let product = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = product.state.get().and_then(|s| s.record_sale(&sale)) {
                tracing::warn!(error = %e, "cannot record a sale");
            }
        });
    }

    fn claim(&self, buyer: [u8; 32], conn: u64, commands: mpsc::Sender<Command<FsStore>>) {
        let mut active = match self.active.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        // Connections are numbered as they are accepted, so "newer" means accepted later,
        // not "finished its handshake later": a connection accepted first whose handshake
        // ends last (a closing discovery probe, a slow reconnect) must not push out the
        // one the buyer is using now.
        match active.get(&buyer) {
            Some((old, _)) if *old > conn => {
                tracing::info!(buyer = %hex::encode(buyer), "an older connection of this buyer is closed: a newer one is active");
                let _ = commands.try_send(Command::Shutdown);
            }
            _ => {
                if let Some((old, old_commands)) = active.insert(buyer, (conn, commands)) {
                    if old != conn {
                        tracing::info!(buyer = %hex::encode(buyer), "a newer connection replaces this buyer's older one");
                        let _ = old_commands.try_send(Command::Shutdown);
                    }
                }
            }
        }
    }

    /// Forgets connection `conn` of `buyer`; true when no other connection of that buyer
    /// is active in this process (then its lease may go).
    fn release(&self, buyer: [u8; 32], conn: u64) -> bool {
        let mut active = match self.active.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if active.get(&buyer).is_some_and(|(c, _)| *c == conn) {
            active.remove(&buyer);
        }
        !active.contains_key(&buyer)
    }

    /// Buyers connected now.
    pub fn connected_buyers(&self) -> usize {
        self.active.lock().map(|a| a.len()).unwrap_or(0)
    }
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// Accepts buyers on `listener` until `shutdown` turns true, with the limits of
/// [`net::accept_loop`] (at most `net.max_connections` at once, at most
/// `net.max_connections_per_ip` from one address).
///
/// Every [`SellerEvent`] reaches `events` (bounded): a connection queues a few while the
/// consumer lags and then waits for it, so a consumer must keep reading (or drop the
/// receiver) for connections to end.
pub async fn serve(
    listener: TcpListener,
    product: Arc<Product>,
    net: NetConfig,
    shutdown: watch::Receiver<bool>,
    events: Option<mpsc::Sender<SellerEvent>>,
) -> std::io::Result<()> {
    let seller = hex::encode(&product.seller_key()[..8]);
    if let Some(leases) = &product.leases {
        tokio::spawn(Arc::clone(leases).heartbeat(shutdown.clone()));
    }
    let conn_shutdown = shutdown.clone();
    let limits = net.clone();
    net::accept_loop(
        listener,
        &limits,
        shutdown,
        |peer| tracing::info_span!("buyer", %peer, seller = %seller),
        move |stream, _peer| {
            handle_connection(
                stream,
                product.clone(),
                net.clone(),
                conn_shutdown.clone(),
                events.clone(),
            )
        },
    )
    .await;
    Ok(())
}

/// Runs one buyer's connection to the end.
///
/// No channel is served to a buyer before it is found valid, free product or not: a free
/// product's feed key is public (it is the feed's own), so a peer can open it by that key
/// without any one-time-feed message, and serving it on that Open would bypass `--deny`
/// and revocation. The channel is opened here once the buyer is valid; an Open that came
/// earlier waits (`keep_unknown`) and is closed if the buyer is found invalid.
pub async fn handle_connection(
    stream: TcpStream,
    product: Arc<Product>,
    net: NetConfig,
    shutdown: watch::Receiver<bool>,
    events: Option<mpsc::Sender<SellerEvent>>,
) {
    let conn_id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
    // For the payment gate's per-IP limits on strangers.
    let peer_ip = stream.peer_addr().ok().map(|a| a.ip());
    let uploaded =
        metrics::counter!(names::BYTES_UPLOADED, names::PRODUCT => product.metric_label.clone());
    let stream = CountWrites::new(stream, uploaded);
    let mut gauges = BuyerGauges::new(product.metric_label.clone());
    let mut messages = product.gate().message_budget();
    let (ev_tx, mut ev_rx) = mpsc::channel::<NetEvent>(256);
    let (cmd_tx, cmd_rx) = mpsc::channel::<Command<FsStore>>(64);
    let net = NetConfig {
        handshake_timeout: product.handshake_timeout,
        ..net
    };
    let session = net.session_config(false, product.seller_keys.clone());
    let options = ConnectionOptions {
        open: Vec::new(),
        // Nothing is served on the buyer's Open: see above.
        serve: Vec::new(),
        events: Some(ev_tx),
        commands: Some(cmd_rx),
        shutdown: Some(shutdown),
        // JS registers these five, sends the seller id, then registers user-message.
        extensions: ext::SELLER_FIRST.iter().map(|n| (*n).to_owned()).collect(),
        // The buyer opens its one-time feed as soon as it learns the key, which may be
        // before this side has processed its own Open for it: keep such a channel pending
        // (it gets nothing until opened here; the session bounds how many) rather than
        // closing it, which would leave a paying buyer without its feed.
        keep_unknown: true,
    };
    let net_for_conn = net.clone();
    let mut conn =
        tokio::spawn(
            async move { net::run_connection(stream, session, &net_for_conn, options).await },
        );

    // Queued before the handshake, in JS's order.
    let mut queue: Vec<Command<FsStore>> = Vec::new();
    queue.push(Command::SendExtension(
        ext::SELLER_ID.into(),
        rand::random::<[u8; 32]>().to_vec(),
    ));
    // Read once: a reload's new terms and period apply to the connections that start
    // after it (and the old gate is not held here).
    let (terms, revalidate) = {
        let offer = product.offer();
        (offer.terms.clone(), offer.revalidate)
    };
    if let Some(terms) = &terms {
        queue.push(Command::SendExtension(
            ext::TERMS_OF_USE.into(),
            terms.as_bytes().to_vec(),
        ));
    }
    queue.push(Command::RegisterExtension(ext::USER_MESSAGE.into()));
    for c in queue {
        if cmd_tx.send(c).await.is_err() {
            break;
        }
    }

    let mut report = Outbox::new(events);
    // Whether the last answer was valid: a sale is recorded when a buyer becomes valid.
    let mut was_valid = false;
    // Whether this connection holds the buyer's lease (shared state only).
    let mut leased = false;
    // The buyer's last time grant (kept through a state outage).
    let mut held: Option<Held> = None;
    // A product priced by data: the buyer's meter, what wakes this task when it waits
    // for credit, and the allowance last granted.
    let mut meter: Option<Arc<ByteMeter>> = None;
    let meter_wake = Arc::new(tokio::sync::Notify::new());
    let mut allowance: Option<u64> = None;
    let mut state = SellerState::new(StateSettings {
        revalidate,
        unpaid_grace: product.unpaid_grace,
    });
    let result = 'conn: loop {
        while let Some(action) = state.poll_action() {
            match action {
                Action::Validate { buyer, fresh } => {
                    let (answer, kept) = product
                        .validate(buyer, fresh, peer_ip, held.as_ref(), was_valid)
                        .await;
                    let answer = product.lease(buyer, answer, &mut leased).await;
                    let answer = product
                        .meter(buyer, answer, meter.as_ref(), &mut allowance, &cmd_tx)
                        .await;
                    // A grant kept through an outage runs down from when it was given.
                    if !kept {
                        held = Held::from_answer(&answer, Instant::now().into_std());
                    }
                    if answer.is_valid() && !was_valid {
                        product.record_sale(buyer, &answer);
                    }
                    was_valid = answer.is_valid();
                    gauges.set_valid(was_valid);
                    let feed_key = product.buyer_feed_key(&buyer);
                    state.handle_validation(&answer, feed_key, Instant::now().into_std());
                }
                Action::OpenFeed { buyer, feed_key } => {
                    let config = if product.is_free() {
                        ReplicatorConfig::uploader()
                    } else {
                        ReplicatorConfig {
                            meter: meter.clone(),
                            ..ReplicatorConfig::rekeyed(Arc::new(RekeyedSigner::new(
                                product.identity.rekeyed_key_pair(&product.feed_key, &buyer),
                            )))
                        }
                    };
                    let _ = cmd_tx
                        .send(Command::SendExtension(
                            ext::ONE_TIME_FEED.into(),
                            feed_key.to_vec(),
                        ))
                        .await;
                    let _ = cmd_tx
                        .send(Command::Open(ChannelSpec {
                            feed: product.feed.clone(),
                            config,
                        }))
                        .await;
                }
                Action::SetUploading {
                    discovery_key,
                    uploading,
                } => {
                    let _ = cmd_tx
                        .send(Command::SetUploading(discovery_key, uploading))
                        .await;
                }
                Action::Close { discovery_key } => {
                    let _ = cmd_tx.send(Command::Close(discovery_key)).await;
                }
                Action::SendValid(info) => {
                    let _ = cmd_tx
                        .send(Command::SendExtension(
                            ext::VALID.into(),
                            info.to_string().into_bytes(),
                        ))
                        .await;
                }
                Action::SendInvalid(reason) => {
                    let body = serde_json::json!({ "error": reason })
                        .to_string()
                        .into_bytes();
                    let _ = cmd_tx
                        .send(Command::SendExtension(ext::INVALID.into(), body))
                        .await;
                }
                Action::Report(event) => report.push(event).await,
                Action::Shutdown => {
                    if let Some(reason) = state.dropped() {
                        tracing::info!("{reason}");
                    }
                    // Flushes what is queued (the last dazaar/invalid), then closes.
                    let _ = cmd_tx.try_send(Command::Shutdown);
                }
                Action::Abort => {
                    conn.abort();
                    break 'conn (&mut conn).await;
                }
            }
        }
        let wake = state.poll_timeout().map(Instant::from_std);
        tokio::select! {
            res = &mut conn => break res,
            permit = report.room(), if report.pending() => report.deliver(permit),
            _ = sleep_until_opt(wake) => state.handle_timeout(Instant::now().into_std()),
            _ = meter_wake.notified(), if meter.is_some() => {
                // A block waits for credit: reserve more, or end the upload.
                if let (Some(m), Some(a), Some(b)) = (&meter, allowance, state.buyer()) {
                    let answer = match product.reserve(b, a, m, &cmd_tx).await {
                        Ok(0) => Some(Validation::Invalid { reason: DATA_USED_UP.into() }),
                        Ok(_) => None,
                        Err(reason) => Some(Validation::Invalid { reason }),
                    };
                    if let Some(answer) = answer {
                        was_valid = false;
                        gauges.set_valid(false);
                        held = None;
                        let feed_key = product.buyer_feed_key(&b);
                        state.handle_validation(&answer, feed_key, Instant::now().into_std());
                    }
                }
            }
            ev = ev_rx.recv() => match ev {
                None => break (&mut conn).await,
                Some(NetEvent::Connected { remote_public_key }) => {
                    gauges.set_connected();
                    product.claim(remote_public_key, conn_id, cmd_tx.clone());
                    if product.metered {
                        meter = product.meters.get(remote_public_key);
                        if let Some(m) = &meter {
                            let wake = Arc::clone(&meter_wake);
                            m.set_waker(Some(Arc::new(move || wake.notify_one())));
                        }
                    }
                    state.handle_connected(remote_public_key, Instant::now().into_std());
                }
                Some(NetEvent::ChannelClosed { discovery_key }) => {
                    state.handle_channel_closed(discovery_key);
                }
                Some(NetEvent::Extension { name, payload }) if name == ext::USER_MESSAGE => {
                    if let Some(b) = state.buyer() {
                        handle_user_message(&product, b, peer_ip, &mut messages, &payload, &cmd_tx).await;
                    }
                }
                Some(_) => {}
            },
        }
    };
    let buyer = state.buyer();
    if let Some(b) = buyer {
        let gone = product.release(b, conn_id);
        // A newer connection of this buyer on this node keeps the lease.
        if leased && gone {
            if let Some(leases) = &product.leases {
                leases.release(b);
            }
        }
    }
    let error = match (state.dropped(), result) {
        (Some(reason), _) => Some(reason.to_owned()),
        (None, Ok(Ok(()))) => None,
        (None, Ok(Err(e))) => Some(e.to_string()),
        (None, Err(e)) => Some(format!("connection task failed: {e}")),
    };
    match &error {
        Some(e) => tracing::info!(error = %e, "buyer connection ended"),
        None => tracing::debug!("buyer connection closed"),
    }
    if buyer.is_none() && error.is_some() {
        metrics::counter!(names::HANDSHAKES_FAILED, names::PRODUCT => product.metric_label.clone())
            .increment(1);
    }
    drop(gauges);
    report
        .push(SellerEvent::BuyerDisconnected { buyer, error })
        .await;
    report.flush().await;
}

/// One connection's share of its product's buyer gauges ([`names::BUYERS_CONNECTED`],
/// [`names::BUYERS_VALID`]): each is raised once when it becomes true and lowered when it
/// turns false or the connection ends, so the gauges cannot drift.
struct BuyerGauges {
    product: metrics::SharedString,
    connected: Option<metrics::Gauge>,
    valid: Option<metrics::Gauge>,
}

impl BuyerGauges {
    fn new(product: metrics::SharedString) -> Self {
        BuyerGauges {
            product,
            connected: None,
            valid: None,
        }
    }

    /// The buyer finished the handshake.
    fn set_connected(&mut self) {
        if self.connected.is_none() {
            let g =
                metrics::gauge!(names::BUYERS_CONNECTED, names::PRODUCT => self.product.clone());
            g.increment(1.0);
            self.connected = Some(g);
        }
    }

    /// The buyer's latest answer.
    fn set_valid(&mut self, valid: bool) {
        match (valid, self.valid.take()) {
            (true, None) => {
                let g =
                    metrics::gauge!(names::BUYERS_VALID, names::PRODUCT => self.product.clone());
                g.increment(1.0);
                self.valid = Some(g);
            }
            (true, Some(g)) => self.valid = Some(g),
            (false, Some(g)) => g.decrement(1.0),
            (false, None) => {}
        }
    }
}

impl Drop for BuyerGauges {
    fn drop(&mut self) {
        for g in [self.connected.take(), self.valid.take()]
            .into_iter()
            .flatten()
        {
            g.decrement(1.0);
        }
    }
}

/// Whether some payment entry of `gate` is priced by data (uploads are then metered).
fn is_metered(gate: &PaymentGate) -> bool {
    gate.entries()
        .iter()
        .any(|e| matches!(e.terms.unit.parse::<Unit>(), Ok(Unit::Data(_))))
}

/// The reason sent when the seller's state cannot be read and the buyer holds no grant.
pub const STATE_UNAVAILABLE: &str = "The seller cannot check payments right now";

/// The last time grant a connection's buyer was given, and when: while the state cannot
/// be read, the buyer keeps what is left of it (the grant was paid for), then lapses.
#[derive(Debug, Clone)]
struct Held {
    grant: Grant,
    plugin: Option<String>,
    at: std::time::Instant,
}

impl Held {
    /// What `answer` lets the buyer keep through an outage: time grants only (a free,
    /// data or one-time grant is checked against the state it would need).
    fn from_answer(answer: &Validation, at: std::time::Instant) -> Option<Held> {
        match answer {
            Validation::Valid { grant, plugin } if grant.kind == GrantKind::TIME => Some(Held {
                grant: *grant,
                plugin: plugin.clone(),
                at,
            }),
            _ => None,
        }
    }

    /// The grant as of `now`, if any time is left.
    fn left(&self, now: std::time::Instant) -> Option<Validation> {
        let spent =
            u64::try_from(now.saturating_duration_since(self.at).as_millis()).unwrap_or(u64::MAX);
        let remaining = self.grant.remaining.checked_sub(spent).filter(|r| *r > 0)?;
        Some(Validation::Valid {
            grant: Grant {
                kind: GrantKind::TIME,
                remaining,
            },
            plugin: self.plugin.clone(),
        })
    }
}

/// The sales log's name of a grant kind.
fn grant_kind_name(kind: GrantKind) -> &'static str {
    match kind {
        GrantKind::FREE => "free",
        GrantKind::TIME => "time",
        GrantKind::BYTES => "bytes",
        GrantKind::ONCE => "once",
        _ => "other",
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Routes a buyer's user message to the payment plugins and sends the reply, if any, or
/// a short refusal when a limit was reached or the plugin failed.
async fn handle_user_message(
    product: &Arc<Product>,
    buyer: [u8; 32],
    ip: Option<IpAddr>,
    budget: &mut MessageBudget,
    payload: &[u8],
    commands: &mpsc::Sender<Command<FsStore>>,
) {
    let message = match parse_user_message(payload) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "ignoring a malformed user message");
            return;
        }
    };
    let now = Instant::now().into_std();
    let reply = product
        .gate()
        .answer_message(buyer, product.seller_key(), ip, budget, &message, now)
        .await;
    let reply = match reply {
        Ok(Some(reply)) => reply,
        Ok(None) => {
            tracing::debug!("no plugin handles this user message");
            return;
        }
        Err(refusal) => refusal.to_user_message(),
    };
    let _ = commands
        .send(Command::SendExtension(
            ext::USER_MESSAGE.into(),
            encode_user_message(&reply),
        ))
        .await;
}

/// A free product served on loopback, for the tests of both sides' events.
#[cfg(test)]
pub(crate) mod test_sale {
    use super::*;
    use crate::crypto::Ed25519KeyPair;
    use crate::storage::Feed;

    /// A product of `blocks` blocks served until the sale is dropped.
    pub(crate) struct Sale {
        pub(crate) _dir: tempfile::TempDir,
        pub(crate) dir: std::path::PathBuf,
        pub(crate) product: Arc<Product>,
        pub(crate) addr: std::net::SocketAddr,
        pub(crate) _stop: watch::Sender<bool>,
    }

    pub(crate) fn net() -> NetConfig {
        NetConfig {
            idle_timeout_ms: 5_000,
            keep_alive_ms: 1_000,
            ..NetConfig::default()
        }
    }

    /// Starts the sale; its events go to `events`.
    pub(crate) async fn start(blocks: u32, events: Option<mpsc::Sender<SellerEvent>>) -> Sale {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let mut feed = Feed::create(
            FsStore::open(root.join("feed"), true).expect("store"),
            Ed25519KeyPair::from_seed(&[0x51; 32]),
        )
        .expect("feed");
        let data: Vec<Vec<u8>> = (0..blocks)
            .map(|i| format!("block {i}").into_bytes())
            .collect();
        feed.append_batch(&data).expect("append");
        let product = Product::new(
            &Identity::from_master_key([0x52; 32]),
            SharedFeed::new(feed),
            Arc::new(PaymentGate::new(Vec::new(), Duration::from_millis(100))),
            ProductOptions {
                terms: None,
                revalidate: Duration::from_millis(100),
                deny: false,
                state: StatePlace::default_in(&root.join("seller")),
                handshake_timeout: HANDSHAKE_TIMEOUT,
                unpaid_grace: UNPAID_GRACE,
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(serve(listener, product.clone(), net(), stop_rx, events));
        Sale {
            _dir: dir,
            dir: root,
            product,
            addr,
            _stop: stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::market::buyer::{buy, BuyOptions};

    /// A consumer that reads nothing until the purchase is over still gets, in order,
    /// every state event of the connection (a channel of one: with events dropped when
    /// the channel is full, only the first would arrive).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_reading_late_receives_every_seller_event() {
        let (tx, mut rx) = mpsc::channel(1);
        let sale = test_sale::start(3, Some(tx)).await;
        let buyer = Identity::from_master_key([0x53; 32]);
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
            report_blocks: false,
            range: None,
            tail: false,
        };
        let out = tokio::time::timeout(Duration::from_secs(20), buy(&buyer, opts, None, shutdown))
            .await
            .expect("in time")
            .expect("bought");
        assert_eq!(out.length, 3, "the purchase did not wait for the consumer");
        let key = buyer.buyer_key_pair().public_key();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let event = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {seen:?} arrived"))
                .expect("the sale is still running");
            seen.push(event);
        }
        assert!(
            matches!(&seen[0], SellerEvent::BuyerConnected { buyer } if *buyer == key),
            "{seen:?}"
        );
        assert!(
            matches!(&seen[1], SellerEvent::BuyerValid { buyer, .. } if *buyer == key),
            "{seen:?}"
        );
        assert!(
            matches!(&seen[2], SellerEvent::BuyerDisconnected { buyer: Some(b), .. } if *b == key),
            "{seen:?}"
        );
    }

    /// Of two connections of one buyer, the one accepted later stays, whatever order
    /// their handshakes finish in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_connection_accepted_later_stays_whichever_handshake_ends_first() {
        let sale = test_sale::start(1, None).await;
        let buyer = [7u8; 32];
        let (tx5, mut rx5) = mpsc::channel(4);
        let (tx3, mut rx3) = mpsc::channel(4);
        let (tx9, mut rx9) = mpsc::channel(4);
        sale.product.claim(buyer, 5, tx5);
        // Accepted before 5, handshake done after it: 3 is the one closed.
        sale.product.claim(buyer, 3, tx3);
        assert!(
            matches!(rx3.try_recv(), Ok(Command::Shutdown)),
            "the older one is closed"
        );
        assert!(rx5.try_recv().is_err(), "the newer one is kept");
        assert!(!sale.product.release(buyer, 3), "5 is still active");
        // Accepted after 5: 9 replaces it.
        sale.product.claim(buyer, 9, tx9);
        assert!(
            matches!(rx5.try_recv(), Ok(Command::Shutdown)),
            "replaced by a newer one"
        );
        assert!(rx9.try_recv().is_err());
        assert!(!sale.product.release(buyer, 5));
        assert!(sale.product.release(buyer, 9), "no connection left");
    }
}
