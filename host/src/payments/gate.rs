//! The gate that answers "is this buyer valid?" for one product, and routes buyers' user
//! messages to the product's plugins, without letting strangers starve the buyers who pay.
//!
//! # What strangers can make the gate do
//!
//! A *known* buyer is one that was valid within [`GateLimits::known_for`]; everyone else
//! is a stranger. For strangers, the seller-facing entry points ([`PaymentGate::check`],
//! [`PaymentGate::answer_message`]):
//!
//! - reuse a recent refusal ([`GateLimits::refused_for`]) when revalidating a
//!   connection, so a stranger sitting on a connection costs few plugin calls; a new
//!   connection is always checked afresh (the buyer may have just paid), within its IP's
//!   admission;
//! - admit a fresh plugin check only with a token from its IP's bucket and from the
//!   global bucket; without one the answer is [`PUBLIC_BUSY`] (fail closed, not cached),
//!   so a flood of random keys costs a bounded rate of plugin calls;
//! - limit user messages per connection, per IP and per plugin;
//! - run their plugin calls in the pool's stranger lane, which is shed when full and
//!   never delays the priority lane.
//!
//! Known buyers skip the admission buckets (not the per-connection message limit) and
//! use the priority lane. Every time-dependent decision takes `now` from the caller.
//!
//! # What peers are told
//!
//! A plugin's refusal reason reaches the buyer (bounded); a plugin or backend failure
//! (marked error, panic, timeout, lost call, unreadable answer) is logged with the buyer's
//! key prefix and the plugin's name, and the peer gets [`PUBLIC_UNAVAILABLE`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dazaar_plugin_api::{Grant, Key, PaymentTerms, UserMessage};

use super::admission::{ip_key, take_all, BucketMap, GateLimits, TokenBucket};
use super::pool::Lane;
use super::registry::{now_ms, OpenedVerifier, PaymentError, PUBLIC_BUSY, PUBLIC_UNAVAILABLE};
use crate::monitor::names;

/// The answer to "may this buyer have the data?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Validation {
    /// Yes: what the buyer gets, and the plugin that said so.
    Valid {
        /// Free, time or bytes left.
        grant: Grant,
        /// The plugin that granted it (`None` when the product is free: no entries).
        plugin: Option<String>,
    },
    /// No, with the reason sent to the buyer: a plugin's refusal, or a short public text
    /// when the check failed or was not made.
    Invalid {
        /// Why.
        reason: String,
    },
}

impl Validation {
    /// Whether access is granted.
    pub fn is_valid(&self) -> bool {
        matches!(self, Validation::Valid { .. })
    }

    /// The JSON the seller sends: the grant for `dazaar/valid`, or `{"error": reason}` for
    /// `dazaar/invalid`.
    pub fn to_wire_json(&self) -> serde_json::Value {
        match self {
            Validation::Valid { grant, .. } => grant
                .to_json()
                .unwrap_or_else(|| serde_json::json!({"error": "unknown access kind"})),
            Validation::Invalid { reason } => serde_json::json!({ "error": reason }),
        }
    }
}

/// The name of the `dazaar/user-message` a seller answers with when it refuses a user
/// message; its body is `{"error": text}`.
pub const REFUSED_MESSAGE: &str = "dazaar-refused";

/// Why a user message got no plugin's reply. Its text is what the buyer is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageRefusal {
    /// A rate limit (per connection, IP or plugin) was reached.
    #[error("too many requests, try later")]
    TooMany,
    /// The plugin's queue for strangers is full.
    #[error("{}", PUBLIC_BUSY)]
    Busy,
    /// The plugin or its backend failed (the detail is logged).
    #[error("{}", PUBLIC_UNAVAILABLE)]
    Unavailable,
    /// The plugin refused, with a reason meant for the buyer.
    #[error("{0}")]
    Refused(String),
}

impl MessageRefusal {
    /// The `dazaar/user-message` that tells the buyer: [`REFUSED_MESSAGE`] with
    /// `{"error": text}`.
    pub fn to_user_message(&self) -> UserMessage {
        UserMessage {
            name: REFUSED_MESSAGE.into(),
            message: serde_json::json!({ "error": self.to_string() })
                .to_string()
                .into(),
        }
    }
}

/// One connection's user-message allowance (see
/// [`GateLimits::messages_per_connection`]); made by [`PaymentGate::message_budget`].
#[derive(Debug, Clone, Default)]
pub struct MessageBudget {
    bucket: TokenBucket,
}

/// What the gate's admission control has refused so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GateStats {
    /// Checks of strangers that asked a plugin.
    pub checks_admitted: u64,
    /// Checks of strangers refused as busy by the admission buckets.
    pub checks_refused: u64,
    /// Checks of strangers answered from a recent refusal without asking a plugin.
    pub refusals_reused: u64,
    /// User messages refused by a rate limit.
    pub messages_refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    checks_admitted: AtomicU64,
    checks_refused: AtomicU64,
    refusals_reused: AtomicU64,
    messages_refused: AtomicU64,
}

/// A moment on both clocks the gate reads: the monotonic one for its caches and limits,
/// the Unix time in milliseconds for the plugins (payment times are wall-clock). Passed in
/// by the caller, so the gate reads no clock and tests run it on virtual time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// For cache ages, admission buckets and known buyers.
    pub at: Instant,
    /// Handed to the plugins' `validate`.
    pub unix_ms: u64,
}

impl Now {
    /// This moment, from the system clocks.
    pub fn system() -> Now {
        Now {
            at: Instant::now(),
            unix_ms: now_ms(),
        }
    }

    /// `d` later on both clocks.
    pub fn after(self, d: Duration) -> Now {
        Now {
            at: self.at + d,
            unix_ms: self
                .unix_ms
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// An instant on the monotonic clock, with the wall-clock time read now and moved by the
/// same distance (for callers that only track an `Instant`).
impl From<Instant> for Now {
    fn from(at: Instant) -> Now {
        let now = Instant::now();
        let wall = now_ms();
        let unix_ms = if at >= now {
            wall.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
        } else {
            wall.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
        };
        Now { at, unix_ms }
    }
}

/// The most buyers whose answers (and, separately, whose past validity) one gate
/// remembers.
const CACHE_LIMIT: usize = 100_000;

/// One configured payment entry: the card terms and the verifier that checks them.
#[derive(Debug, Clone)]
pub struct PaymentEntry {
    /// The card payment entry.
    pub terms: Arc<PaymentTerms>,
    /// The opened verifier.
    pub verifier: Arc<OpenedVerifier>,
}

type BuyerKey = (Key, Key);

#[derive(Debug)]
struct GateState {
    /// The last answer per buyer, and when it was asked for.
    answers: HashMap<BuyerKey, (Instant, Validation)>,
    /// When each known buyer was last valid.
    known: HashMap<BuyerKey, Instant>,
    check_ips: BucketMap<Option<IpAddr>>,
    check_all: TokenBucket,
    message_ips: BucketMap<Option<IpAddr>>,
    /// One per entry.
    message_plugins: Vec<TokenBucket>,
}

/// What [`PaymentGate::admit`] decided.
#[derive(Debug, Clone)]
#[must_use]
pub enum Admission {
    /// Answered without a call.
    Answered(Validation),
    /// A plugin call, admitted: make it with [`PaymentGate::ask`].
    Call(AdmittedCall),
}

/// A plugin call [`PaymentGate::admit`] let through.
#[derive(Debug, Clone)]
pub struct AdmittedCall {
    /// Buyer and seller.
    key: BuyerKey,
    /// The pool lane it takes.
    lane: Lane,
    /// When it was admitted (its answer is cached from then).
    at: Instant,
}

/// Answers "is this buyer valid?" for one product: tries each payment entry (the first
/// success wins), caches the answer for the revalidation period, fails closed, and keeps
/// strangers from starving the buyers who pay (see the module documentation).
#[derive(Debug)]
pub struct PaymentGate {
    entries: Vec<PaymentEntry>,
    revalidate: Duration,
    limits: GateLimits,
    state: Mutex<GateState>,
    counters: Counters,
}

/// What asking the plugins gave.
struct Asked {
    answer: Validation,
    /// False when the check was not made (shed as busy): not worth remembering.
    remember: bool,
}

impl PaymentGate {
    /// A gate over `entries` with the default [`GateLimits`]; answers are reused for
    /// `revalidate`. No entries: free.
    pub fn new(entries: Vec<PaymentEntry>, revalidate: Duration) -> PaymentGate {
        PaymentGate::with_limits(entries, revalidate, GateLimits::default())
    }

    /// A gate over `entries` with `limits` on what strangers may cause.
    pub fn with_limits(
        entries: Vec<PaymentEntry>,
        revalidate: Duration,
        limits: GateLimits,
    ) -> PaymentGate {
        let message_plugins = vec![TokenBucket::new(); entries.len()];
        PaymentGate {
            entries,
            revalidate,
            limits,
            state: Mutex::new(GateState {
                answers: HashMap::new(),
                known: HashMap::new(),
                check_ips: BucketMap::new(limits.max_tracked_ips),
                check_all: TokenBucket::new(),
                message_ips: BucketMap::new(limits.max_tracked_ips),
                message_plugins,
            }),
            counters: Counters::default(),
        }
    }

    /// The configured entries.
    pub fn entries(&self) -> &[PaymentEntry] {
        &self.entries
    }

    /// How often buyers are revalidated (and how long answers are cached).
    pub fn revalidate(&self) -> Duration {
        self.revalidate
    }

    /// The limits on strangers.
    pub fn limits(&self) -> &GateLimits {
        &self.limits
    }

    /// What admission control has done so far.
    pub fn stats(&self) -> GateStats {
        let c = &self.counters;
        GateStats {
            checks_admitted: c.checks_admitted.load(Ordering::Relaxed),
            checks_refused: c.checks_refused.load(Ordering::Relaxed),
            refusals_reused: c.refusals_reused.load(Ordering::Relaxed),
            messages_refused: c.messages_refused.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // Nothing panics while holding it; the maps stay sound if something did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn free() -> Validation {
        Validation::Valid {
            grant: Grant::free(),
            plugin: None,
        }
    }

    /// Seller side, for a peer: whether `buyer` may have the product sold under
    /// `seller` at `now`. `ip` is the peer's address (for the per-IP limits); `fresh`
    /// marks a new connection (the buyer may have just paid: no cached answer is reused;
    /// a stranger's fresh check needs admission). Revalidations of a connection reuse a
    /// stranger's refusal for [`GateLimits::refused_for`].
    ///
    /// Waits on the plugin without holding a thread (needs a tokio runtime with timers).
    /// The same as [`admit`](Self::admit) then [`ask`](Self::ask).
    pub async fn check(
        &self,
        buyer: Key,
        seller: Key,
        ip: Option<IpAddr>,
        fresh: bool,
        now: impl Into<Now>,
    ) -> Validation {
        let now: Now = now.into();
        self.ask(self.admit(buyer, seller, ip, fresh, now.at), now.unix_ms)
            .await
    }

    /// The first half of [`check`](Self::check), without calling a plugin: the answer
    /// when there is one already (free, a cached answer, a reused refusal, or the busy
    /// refusal of a stranger's check not admitted), else the admitted call to make with
    /// [`ask`](Self::ask). A seller reads what else it needs (the revocation list) only
    /// for a call or a valid answer: a stranger refused here costs it nothing more.
    pub fn admit(
        &self,
        buyer: Key,
        seller: Key,
        ip: Option<IpAddr>,
        fresh: bool,
        now: Instant,
    ) -> Admission {
        if self.entries.is_empty() {
            return Admission::Answered(Self::free());
        }
        let key = (buyer, seller);
        let mut st = self.lock();
        let known = self.is_known(&st, &key, now);
        if let Some((at, answer)) = st.answers.get(&key) {
            let age = now.saturating_duration_since(*at);
            // A new connection is never answered from a refusal: the buyer may have
            // paid since (pay, then connect). The admission buckets below bound how
            // often one IP can make a stranger's key be checked afresh.
            let recent_refusal =
                !fresh && !known && !answer.is_valid() && age < self.limits.refused_for;
            if (!fresh && age < self.revalidate) || recent_refusal {
                if let Some(answer) = age_answer(answer, age) {
                    if recent_refusal {
                        self.counters
                            .refusals_reused
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Admission::Answered(answer);
                }
            }
        }
        let lane = if known {
            Lane::Priority
        } else {
            let st = &mut *st;
            let ip_rate = self.limits.checks_per_ip;
            let all_rate = self.limits.checks_global;
            let admitted = match st.check_ips.bucket(&ip_key(ip), ip_rate, now) {
                Some(per_ip) => {
                    take_all(&mut [(per_ip, ip_rate), (&mut st.check_all, all_rate)], now)
                }
                None => false,
            };
            if !admitted {
                self.counters.checks_refused.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::PAYMENT_CHECKS_REFUSED).increment(1);
                tracing::debug!(buyer = %key_prefix(&buyer), "payment check not admitted: busy");
                return Admission::Answered(Validation::Invalid {
                    reason: PUBLIC_BUSY.to_owned(),
                });
            }
            self.counters
                .checks_admitted
                .fetch_add(1, Ordering::Relaxed);
            Lane::Stranger
        };
        Admission::Call(AdmittedCall { key, lane, at: now })
    }

    /// The second half of [`check`](Self::check): makes an admitted call (an
    /// [`Admission::Answered`] is returned as it is) and remembers its answer. `unix_ms`
    /// is the time the plugins are asked about.
    pub async fn ask(&self, admission: Admission, unix_ms: u64) -> Validation {
        match admission {
            Admission::Answered(answer) => answer,
            Admission::Call(AdmittedCall { key, lane, at }) => {
                let asked = self.ask_async(lane, key.0, key.1, unix_ms).await;
                self.remember(key, at, &asked);
                asked.answer
            }
        }
    }

    fn is_known(&self, st: &GateState, key: &BuyerKey, now: Instant) -> bool {
        st.known
            .get(key)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.limits.known_for)
    }

    fn remember(&self, key: BuyerKey, now: Instant, asked: &Asked) {
        if !asked.remember {
            return;
        }
        let mut st = self.lock();
        if st.answers.len() >= CACHE_LIMIT && !st.answers.contains_key(&key) {
            let keep = self.revalidate.max(self.limits.refused_for);
            st.answers
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < keep);
            if st.answers.len() >= CACHE_LIMIT {
                st.answers.clear();
            }
        }
        st.answers.insert(key, (now, asked.answer.clone()));
        if asked.answer.is_valid() {
            if st.known.len() >= CACHE_LIMIT && !st.known.contains_key(&key) {
                let known_for = self.limits.known_for;
                st.known
                    .retain(|_, at| now.saturating_duration_since(*at) < known_for);
                if st.known.len() >= CACHE_LIMIT {
                    // Only buyers that paid get here; drop the one valid longest ago.
                    let oldest = st.known.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k);
                    if let Some(oldest) = oldest {
                        st.known.remove(&oldest);
                    }
                }
            }
            st.known.insert(key, now);
        }
    }

    /// Trusted callers (tests, tools): whether `buyer` may have the product, now. Uses
    /// the cached answer if it is younger than the revalidation period (time left is
    /// aged); no admission limits, priority lane, waits on this thread. A seller facing
    /// peers uses [`check`](Self::check).
    pub fn validate(&self, buyer: Key, seller: Key) -> Validation {
        self.validate_at(buyer, seller, Now::system())
    }

    /// [`validate`](Self::validate) at `now`.
    pub fn validate_at(&self, buyer: Key, seller: Key, now: Now) -> Validation {
        if let Some(answer) = self.cached_at(buyer, seller, now.at) {
            return answer;
        }
        let asked = self.ask_blocking(buyer, seller, now.unix_ms);
        self.remember((buyer, seller), now.at, &asked);
        asked.answer
    }

    /// The cached answer for `buyer`, if still fresh, without calling any plugin.
    pub fn cached(&self, buyer: Key, seller: Key) -> Option<Validation> {
        self.cached_at(buyer, seller, Instant::now())
    }

    /// [`cached`](Self::cached) at `now`.
    pub fn cached_at(&self, buyer: Key, seller: Key, now: Instant) -> Option<Validation> {
        let st = self.lock();
        let (at, answer) = st.answers.get(&(buyer, seller))?;
        let age = now.saturating_duration_since(*at);
        if age < self.revalidate {
            age_answer(answer, age)
        } else {
            None
        }
    }

    /// Forgets the cached answer for `buyer` (e.g. after it reports a payment).
    pub fn forget(&self, buyer: Key, seller: Key) {
        self.lock().answers.remove(&(buyer, seller));
    }

    /// Asks the plugins on this thread, without the cache and without admission limits
    /// (priority lane): each entry in order, first success wins; if none succeeds, the
    /// last entry's refusal or public failure text; no entries means free.
    pub fn validate_uncached(&self, buyer: Key, seller: Key, now_ms: u64) -> Validation {
        self.ask_blocking(buyer, seller, now_ms).answer
    }

    fn ask_blocking(&self, buyer: Key, seller: Key, now_ms: u64) -> Asked {
        let mut last = None;
        for entry in &self.entries {
            let result = entry.verifier.validate(buyer, seller, &entry.terms, now_ms);
            if let Some(valid) = fold_answer(entry, &buyer, Lane::Priority, result, &mut last) {
                return valid;
            }
        }
        last.unwrap_or_else(|| Asked {
            answer: Self::free(),
            remember: true,
        })
    }

    async fn ask_async(&self, lane: Lane, buyer: Key, seller: Key, now_ms: u64) -> Asked {
        let mut last = None;
        for entry in &self.entries {
            let result = entry
                .verifier
                .validate_async(lane, buyer, seller, &entry.terms, now_ms)
                .await;
            if let Some(valid) = fold_answer(entry, &buyer, lane, result, &mut last) {
                return valid;
            }
        }
        last.unwrap_or_else(|| Asked {
            answer: Self::free(),
            remember: true,
        })
    }

    /// A new connection's user-message allowance.
    pub fn message_budget(&self) -> MessageBudget {
        MessageBudget::default()
    }

    /// Seller side, for a peer: routes `buyer`'s `dazaar/user-message` to the entries'
    /// plugins; the first reply wins, `Ok(None)` when no plugin handles it. Strangers'
    /// messages are limited per connection (`budget`), per IP and per plugin and use the
    /// stranger lane; known buyers' only per connection. Waits without holding a thread.
    pub async fn answer_message(
        &self,
        buyer: Key,
        seller: Key,
        ip: Option<IpAddr>,
        budget: &mut MessageBudget,
        message: &UserMessage,
        now: Instant,
    ) -> Result<Option<UserMessage>, MessageRefusal> {
        let lane = self.admit_message(buyer, seller, ip, budget, now)?;
        if message
            .name
            .starts_with(dazaar_plugin_api::HOST_MESSAGE_PREFIX)
        {
            // The host's own calls to plugins: never a peer's to make.
            return Ok(None);
        }
        let mut last_err = None;
        for entry in &self.entries {
            let result = entry
                .verifier
                .user_message_async(lane, buyer, seller, &entry.terms, message.clone())
                .await;
            match result {
                Ok(Some(reply)) => return Ok(Some(reply)),
                Ok(None) => {}
                Err(e) => {
                    log_failure(
                        &e,
                        &buyer,
                        lane,
                        "a payment plugin failed on a user message",
                    );
                    last_err = Some(e);
                }
            }
        }
        match last_err {
            None => Ok(None),
            Some(e @ PaymentError::Plugin { .. }) => Err(MessageRefusal::Refused(e.to_string())),
            Some(PaymentError::Busy { .. }) => Err(MessageRefusal::Busy),
            Some(_) => Err(MessageRefusal::Unavailable),
        }
    }

    /// Takes the tokens a user message needs, and picks its lane.
    fn admit_message(
        &self,
        buyer: Key,
        seller: Key,
        ip: Option<IpAddr>,
        budget: &mut MessageBudget,
        now: Instant,
    ) -> Result<Lane, MessageRefusal> {
        let refuse = |why: &str| {
            self.counters
                .messages_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(buyer = %key_prefix(&buyer), limit = why, "user message refused");
            Err(MessageRefusal::TooMany)
        };
        let mut st = self.lock();
        let known = self.is_known(&st, &(buyer, seller), now);
        if !known {
            // Peek first: a message refused by its IP or a plugin does not spend the
            // connection's allowance.
            if !budget
                .bucket
                .ready(self.limits.messages_per_connection, now)
            {
                return refuse("connection");
            }
            let st = &mut *st;
            let ip_rate = self.limits.messages_per_ip;
            let plugin_rate = self.limits.messages_per_plugin;
            let Some(per_ip) = st.message_ips.bucket(&ip_key(ip), ip_rate, now) else {
                return refuse("ip");
            };
            let mut buckets = vec![(per_ip, ip_rate)];
            buckets.extend(st.message_plugins.iter_mut().map(|b| (b, plugin_rate)));
            if !take_all(&mut buckets, now) {
                return refuse("ip or plugin");
            }
        }
        if !budget.bucket.take(self.limits.messages_per_connection, now) {
            return refuse("connection");
        }
        Ok(if known {
            Lane::Priority
        } else {
            Lane::Stranger
        })
    }

    /// Trusted callers (tests, tools): routes a user message to the entries' plugins on
    /// this thread, without limits (priority lane); the first reply wins. `Ok(None)`: no
    /// plugin handles it. A seller facing peers uses
    /// [`answer_message`](Self::answer_message).
    pub fn user_message(
        &self,
        buyer: Key,
        seller: Key,
        message: &UserMessage,
    ) -> Result<Option<UserMessage>, PaymentError> {
        let mut last_err = None;
        for entry in &self.entries {
            match entry
                .verifier
                .user_message(buyer, seller, &entry.terms, message.clone())
            {
                Ok(Some(reply)) => return Ok(Some(reply)),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
}

/// The first 8 bytes of a key in hex: enough to follow a buyer through the log.
fn key_prefix(key: &Key) -> String {
    hex::encode(key.get(..8).unwrap_or(key))
}

/// Logs a failed plugin call with the detail a peer never sees. Refusals are not
/// failures; strangers' calls shed as busy are expected under load (debug).
fn log_failure(e: &PaymentError, buyer: &Key, lane: Lane, what: &str) {
    let plugin = e.plugin().unwrap_or("-");
    match e {
        PaymentError::Plugin { .. } => {}
        PaymentError::Busy { .. } if lane == Lane::Stranger => {
            tracing::debug!(buyer = %key_prefix(buyer), plugin, error = %e, "{what}");
        }
        _ => tracing::warn!(buyer = %key_prefix(buyer), plugin, error = %e, "{what}"),
    }
}

/// One entry's answer: `Some` when it grants access (the search stops); otherwise `last`
/// becomes what the peer will be told.
fn fold_answer(
    entry: &PaymentEntry,
    buyer: &Key,
    lane: Lane,
    result: Result<Grant, PaymentError>,
    last: &mut Option<Asked>,
) -> Option<Asked> {
    let plugin = entry.verifier.plugin().name();
    let outcome = match &result {
        Ok(grant) if grant.to_json().is_some() => "valid",
        Ok(_) => "error",
        Err(e) if e.is_refusal() => "invalid",
        Err(_) => "error",
    };
    metrics::counter!(
        names::VALIDATIONS,
        names::PLUGIN => plugin.to_owned(),
        names::RESULT => outcome,
    )
    .increment(1);
    entry
        .verifier
        .note_outcome(result.as_ref().map(|_| ()), lane == Lane::Stranger);
    match result {
        Ok(grant) if grant.to_json().is_some() => Some(Asked {
            answer: Validation::Valid {
                grant,
                plugin: Some(plugin.to_owned()),
            },
            remember: true,
        }),
        Ok(grant) => {
            tracing::warn!(buyer = %key_prefix(buyer), plugin, kind = grant.kind.0, "payment plugin granted an unknown access kind");
            *last = Some(Asked {
                answer: Validation::Invalid {
                    reason: format!("{plugin}: unknown access kind"),
                },
                remember: true,
            });
            None
        }
        Err(e) => {
            log_failure(&e, buyer, lane, "payment check failed");
            *last = Some(Asked {
                answer: Validation::Invalid {
                    reason: e.public_reason(),
                },
                remember: !matches!(e, PaymentError::Busy { .. }),
            });
            None
        }
    }
}

/// A cached answer, `age` later: time left shrinks; a time grant that ran out is not
/// served from the cache.
fn age_answer(answer: &Validation, age: Duration) -> Option<Validation> {
    match answer {
        Validation::Valid { grant, plugin } if grant.kind == dazaar_plugin_api::GrantKind::TIME => {
            let spent = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            let left = grant.remaining.checked_sub(spent).filter(|l| *l > 0)?;
            Some(Validation::Valid {
                grant: Grant::time_ms(left),
                plugin: plugin.clone(),
            })
        }
        other => Some(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_time_grants_age() {
        let v = Validation::Valid {
            grant: Grant::time_ms(1000),
            plugin: None,
        };
        assert_eq!(
            age_answer(&v, Duration::from_millis(400)),
            Some(Validation::Valid {
                grant: Grant::time_ms(600),
                plugin: None
            })
        );
        assert_eq!(age_answer(&v, Duration::from_millis(1000)), None);
        let free = Validation::Valid {
            grant: Grant::free(),
            plugin: None,
        };
        assert_eq!(
            age_answer(&free, Duration::from_secs(9)),
            Some(free.clone())
        );
    }

    #[test]
    fn refusals_tell_the_buyer_in_one_message() {
        let m = MessageRefusal::TooMany.to_user_message();
        assert_eq!(m.name.as_str(), REFUSED_MESSAGE);
        assert_eq!(
            m.message.as_str(),
            r#"{"error":"too many requests, try later"}"#
        );
        assert_eq!(MessageRefusal::Unavailable.to_string(), PUBLIC_UNAVAILABLE);
    }
}
