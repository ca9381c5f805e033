//! `dazaar_lnd`: Lightning payments through an LND node (gRPC over TLS, macaroon auth).
//!
//! Talks to LND with tonic and prost; the few `lnrpc.Lightning` and `routerrpc.Router`
//! messages used are declared by hand in [`proto`] with LND's field numbers (no `protoc`,
//! no generated crate; the `lnd_grpc_rust` crate was not used because it needs OpenSSL).
//! The tests check these declarations against LND's own `lightning.proto` and
//! `routerrpc/router.proto` (v0.21.2-beta, `tests/proto/lnd/`).
//!
//! - **Seller**: at open, a background task lists the node's invoices (`ListInvoices`,
//!   paged by add index) and then follows `SubscribeInvoices` from the last add/settle
//!   index; when LND goes away it reconnects with exponential backoff (200 ms doubling
//!   up to `max_backoff_ms`, back to 200 ms after a subscription that stayed live 10 s),
//!   listing again. Under a host with a state store (API 1.3) it saves the settled
//!   invoices it counted and the invoice indexes ([`checkpoint`]): a restart or reconnect
//!   then resumes `SubscribeInvoices` from the saved indexes (LND replays what settled
//!   since; until an invoice has settled there is no settle index to replay from, and it
//!   lists the node) instead of listing the node, and buyers made valid by saved invoices stay
//!   valid while the node is being reached. `validate` answers from what it learned: an invoice
//!   counts when settled and its memo is exactly `dazaar: <seller> <buyer>`; it adds its
//!   `value` in satoshis at its `settle_date`, priced by the card entry (`SATS`, `BTC`,
//!   legacy `LightningSats` / `LightningBTC`). While the subscription is down, every
//!   validation that saved invoices do not answer fails closed with the reason.
//! - **Seller**, `user_message`: `lnd-pay-request {"amount": sats}` → `AddInvoice(memo =
//!   the binding memo, value, private = true)` → `lnd-invoice {"request", "amount"}`.
//! - **Buyer**: `payment_request` returns the `lnd-pay-request` message to send. On the
//!   seller's `lnd-invoice`, `user_message` decodes the BOLT 11 itself ([`bolt11`]:
//!   checksum, signature, payee key) and refuses it unless its description is the memo (or
//!   its description hash the memo's SHA-256), its amount is exactly the satoshis asked for
//!   (no "any amount" invoices), within `max_invoice_sats`, for the configured `network`
//!   (mainnet `lnbc`, testnet `lntb`, regtest `lnbcrt`, signet `lntbs`, simnet `lnsb`) and
//!   not expired. Once `payment_request` asked a seller for an amount for a buyer, the
//!   seller's reply must be for that amount (remembered in this process); before that, the
//!   reply's own amount is checked against the invoice.
//!   - **Wallet-less** (no `address`): `open` connects to nothing; `validate` always fails
//!     closed ("no LND configured: this plugin is set up for buying only"), and so does
//!     answering an `lnd-pay-request`. A checked invoice gives no follow-up: the host shows
//!     it for an external wallet (`dazaar pay` prints the seller's reply; a QR code is the
//!     host's business). `pay = true` without an `address` is a configuration error.
//!   - **With LND**: the invoice is also decoded by the node (`DecodePayReq`), and both
//!     readings must agree (payee, payment hash, amount, description or its hash, expiry);
//!     either one disagreeing refuses it. With `pay = false` the checked invoice is left to
//!     an external wallet as above. With `pay = true` it is paid through the Router
//!     service's `SendPaymentV2` (`fee_limit_sat = max_fee_sats`, `timeout_seconds` = the
//!     payment timeout, `no_inflight_updates`), waiting at most `pay_timeout_ms` for the final
//!     `lnrpc.Payment` update: SUCCEEDED → the follow-up `lnd-paid {"payment_hash",
//!     "amount", "fee_sat"}` for the host (no preimage; `dazaar pay` shows it as paid, and
//!     it is never sent to the seller); FAILED → an error with LND's `failure_reason`; no
//!     final status in time → the follow-up `lnd-in-flight {"payment_hash", "amount",
//!     "status": "IN_FLIGHT", "note"}`: neither paid nor failed, to check on the node
//!     before paying again. (`Lightning.SendPaymentSync`, which LND removed in v0.21, is
//!     not used.) Keep `pay_timeout_ms` below the host's limit for the call (`dazaar pay
//!     --timeout`, 120 s by default) so the answer reaches the host.
//!
//! Configuration:
//! ```toml
//! address = "127.0.0.1:10009"            # LND gRPC host:port; leave out (with tls_cert
//!                                        # and the macaroon) for a wallet-less buyer
//! tls_cert = "~/.lnd/tls.cert"           # the node's certificate (PEM); with address
//! tls_domain = "localhost"               # optional: name to check in the certificate
//! macaroon = "~/.lnd/data/chain/bitcoin/mainnet/invoice.macaroon"  # or:
//! macaroon_hex_env = "LND_MACAROON_HEX"  # an env var holding the macaroon as hex
//! network = "mainnet"                    # mainnet | testnet | regtest | signet | simnet:
//!                                        # the invoices a buyer accepts
//! timeout_ms = 5000                      # each LND call (1..=600000)
//! pay_timeout_ms = 60000                 # buyer: the wait for a payment's final
//!                                        # status (1..=600000)
//! max_backoff_ms = 30000
//! max_invoice_sats = 10000000            # largest invoice a buyer may ask for or accept
//! pay = false                            # buyer: pay checked invoices from this node
//!                                        # (SendPaymentV2; the macaroon must allow sending)
//! max_fee_sats = 100                     # buyer: most routing fees per payment (LND's
//!                                        # fee_limit_sat; 0 = fee-free routes only)
//! log_file = "..."; log_level = "info"
//! ```
//! The macaroon is a secret: it is read from its file or variable, sent only as gRPC
//! metadata, and never logged or put in an error. Paths may start with `~/` (the home
//! directory).
//!
//! Card methods: `lnd` (the name the seed's own card example uses; first, so it is what
//! the host puts on a sell entry that names no method), `lightning`, `ln`. Currencies:
//! `SATS`, `BTC`, `LightningSats`, `LightningBTC`.

pub mod bolt11;
mod checkpoint;
pub mod client;
#[doc(hidden)]
pub mod fuzzing;
pub use dazaar_plugin_api::logging;
pub mod proto;
/// The test-only BOLT #11 encoder, shared with the integration tests.
#[cfg(test)]
#[path = "../../../tests/src/bolt11.rs"]
mod test_encoder;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkpoint::{Checkpoint, Indexes, SettledEntry};
use dazaar_plugin_api::logging::LogSettings;
use dazaar_plugin_api::{
    expand_home, export_payment_plugin, parse_payment_memo, payment_memo, unavailable, Backoff,
    Description, Grant, Key, OutgoingMessage, Payment, PaymentInstructions, PaymentPlugin,
    PluginStore, Request,
};
use serde::Deserialize;
use serde_json::{json, Value};

use bolt11::Network;
use client::{describe, Lnd, PayOutcome};

/// Buyer → seller: ask for an invoice.
pub const MSG_PAY_REQUEST: &str = "lnd-pay-request";
/// Seller → buyer: the invoice.
pub const MSG_INVOICE: &str = "lnd-invoice";
/// Buyer plugin → host, after paying: `{"payment_hash", "amount", "fee_sat"}`. The host's
/// `dazaar pay` shows a follow-up whose name ends in `-paid` as paid; it is not sent to the
/// seller (who would answer nothing: unknown names are ignored).
pub const MSG_PAID: &str = "lnd-paid";
/// Buyer plugin → host: the payment was sent but had no final status within the timeout
/// (`{"payment_hash", "amount", "status": "IN_FLIGHT", "note"}`): neither paid nor failed.
pub const MSG_IN_FLIGHT: &str = "lnd-in-flight";
/// Settled invoices remembered (all buyers).
const MAX_SETTLED: usize = 200_000;
/// Amounts asked for remembered (buyer side).
const MAX_ASKED: usize = 10_000;
/// The longest `timeout_ms` and `pay_timeout_ms` (10 minutes).
const MAX_TIMEOUT_MS: u64 = 600_000;
/// Invoices per ListInvoices page.
const PAGE: u64 = 1000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    address: Option<String>,
    tls_cert: Option<String>,
    tls_domain: Option<String>,
    macaroon: Option<String>,
    macaroon_hex_env: Option<String>,
    #[serde(default = "default_network")]
    network: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_pay_timeout_ms")]
    pay_timeout_ms: u64,
    #[serde(default = "default_max_backoff_ms")]
    max_backoff_ms: u64,
    #[serde(default = "default_max_invoice")]
    max_invoice_sats: u64,
    #[serde(default = "default_max_fee")]
    max_fee_sats: u64,
    #[serde(default)]
    pay: bool,
    log_file: Option<String>,
    log_level: Option<String>,
}

fn default_network() -> String {
    "mainnet".into()
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_pay_timeout_ms() -> u64 {
    60_000
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_max_invoice() -> u64 {
    10_000_000
}
fn default_max_fee() -> u64 {
    100
}

/// How to reach LND: the address, the certificate and the macaroon (hex) read.
struct Connection {
    address: String,
    cert: Vec<u8>,
    macaroon_hex: String,
}

/// Checked settings; `connection` is `None` for a wallet-less buyer.
struct Checked {
    config: Config,
    connection: Option<Connection>,
    network: Network,
    log: LogSettings,
}

/// Why a wallet-less plugin cannot verify payments.
const NO_LND: &str = "no LND configured: this plugin is set up for buying only";

fn check(text: &str) -> Result<Checked, String> {
    let config: Config =
        toml::from_str(text).map_err(|e| format!("lnd config: {}", e.message()))?;
    let network = Network::from_name(&config.network)
        .ok_or_else(|| format!("lnd config: unknown network {:?}", config.network))?;
    if config.timeout_ms == 0 || config.timeout_ms > MAX_TIMEOUT_MS {
        return Err(format!(
            "lnd config: timeout_ms must be 1..={MAX_TIMEOUT_MS}"
        ));
    }
    if config.pay_timeout_ms == 0 || config.pay_timeout_ms > MAX_TIMEOUT_MS {
        return Err(format!(
            "lnd config: pay_timeout_ms must be 1..={MAX_TIMEOUT_MS}"
        ));
    }
    if i64::try_from(config.max_fee_sats).is_err() {
        return Err("lnd config: max_fee_sats is too large".into());
    }
    let log = LogSettings::parse(config.log_file.as_deref(), config.log_level.as_deref())
        .map_err(|e| format!("lnd config: {e}"))?;
    let Some(address) = config.address.clone() else {
        if config.pay {
            return Err(
                "lnd config: pay = true needs an LND address to pay from; without one, \
                 invoices are shown for an external wallet"
                    .into(),
            );
        }
        if config.tls_cert.is_some()
            || config.macaroon.is_some()
            || config.macaroon_hex_env.is_some()
        {
            return Err(
                "lnd config: tls_cert / macaroon are set but address is not; set the address \
                 of LND, or remove them for a wallet-less buyer"
                    .into(),
            );
        }
        return Ok(Checked {
            config,
            connection: None,
            network,
            log,
        });
    };
    let tls_cert = config
        .tls_cert
        .as_deref()
        .ok_or("lnd config: address is set, so tls_cert must be too")?;
    let cert_path = expand_home(tls_cert).map_err(|e| format!("lnd config: tls_cert {e}"))?;
    let cert = std::fs::read(&cert_path).map_err(|e| {
        format!(
            "lnd config: cannot read tls_cert {}: {}",
            cert_path.display(),
            e.kind()
        )
    })?;
    if !String::from_utf8_lossy(&cert).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "lnd config: {} is not a PEM certificate",
            cert_path.display()
        ));
    }
    let macaroon_hex = match (&config.macaroon, &config.macaroon_hex_env) {
        (Some(_), Some(_)) => {
            return Err("lnd config: set macaroon or macaroon_hex_env, not both".into())
        }
        (Some(path), None) => {
            let p = expand_home(path).map_err(|e| format!("lnd config: macaroon {e}"))?;
            let bytes = std::fs::read(&p).map_err(|e| {
                format!(
                    "lnd config: cannot read macaroon {}: {}",
                    p.display(),
                    e.kind()
                )
            })?;
            if bytes.is_empty() {
                return Err("lnd config: the macaroon file is empty".into());
            }
            hex::encode(bytes)
        }
        (None, Some(var)) => {
            let v = std::env::var(var)
                .map_err(|_| format!("lnd config: environment variable {var} is not set"))?;
            let v = v.trim().to_ascii_lowercase();
            if v.is_empty() || v.len() % 2 != 0 || !v.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("lnd config: {var} does not hold a hex macaroon"));
            }
            v
        }
        (None, None) => return Err("lnd config: set macaroon (a file) or macaroon_hex_env".into()),
    };
    Ok(Checked {
        config,
        connection: Some(Connection {
            address,
            cert,
            macaroon_hex,
        }),
        network,
        log,
    })
}

/// Settled invoices by (seller, buyer): (payment hash, satoshis, settled at ms).
type Settled = HashMap<(Key, Key), Vec<(Vec<u8>, i64, u64)>>;

/// What the subscription learned.
#[derive(Debug, Default)]
struct State {
    /// Settled invoices with a binding memo: (seller, buyer) → (r_hash, sats, settle ms).
    settled: Settled,
    count: usize,
    /// Since when the list is complete and the subscription live (`None`: not live).
    live_since: Option<tokio::time::Instant>,
    last_error: Option<String>,
    /// The host's store for what must survive a restart (API 1.3 hosts).
    checkpoint: Option<Checkpoint>,
    /// The indexes seen, and whether they are saved: resume from them instead of listing.
    indexes: Indexes,
    resume: bool,
    /// Settled invoices were restored from the checkpoint: while LND is being reached,
    /// buyers they make valid stay valid (a settled invoice never unsettles).
    restored: bool,
}

impl State {
    /// Restores what `store` kept (the settled invoices and the indexes to resume from).
    fn restore(&mut self, store: PluginStore) {
        match Checkpoint::load(store, MAX_SETTLED) {
            Ok((checkpoint, entries, indexes)) => {
                let n = entries.len();
                for e in entries {
                    let list = self.settled.entry((e.seller, e.buyer)).or_default();
                    if !list.iter().any(|(h, _, _)| h[..] == e.r_hash[..]) {
                        list.push((e.r_hash.to_vec(), e.sats, e.at_ms));
                        self.count += 1;
                    }
                }
                self.restored = n > 0;
                if let Some(ix) = indexes {
                    self.indexes = ix;
                    self.resume = true;
                }
                self.checkpoint = Some(checkpoint);
                tracing::info!(settled = n, resume = ?indexes, "LND checkpoint restored");
            }
            Err(e) => {
                // Without it the plugin lists the node as before.
                tracing::warn!(error = %e, "cannot read the LND checkpoint; listing the node");
            }
        }
    }

    /// Notes the indexes of `inv`; saves them when the settle index moved (or when none
    /// were saved yet), so a restart resumes from here.
    fn note_indexes(&mut self, add: u64, settle: u64, force: bool) {
        let moved = settle > self.indexes.settle;
        self.indexes.add = self.indexes.add.max(add);
        self.indexes.settle = self.indexes.settle.max(settle);
        if !(moved || force) {
            return;
        }
        if let Some(cp) = &self.checkpoint {
            match cp.save_indexes(self.indexes) {
                Ok(()) => self.resume = true,
                Err(e) => tracing::warn!(error = %e, "cannot save the LND invoice indexes"),
            }
        }
    }

    fn record(&mut self, inv: &proto::Invoice) {
        let settled = inv.state == proto::INVOICE_SETTLED || inv.settled;
        if !settled || inv.value <= 0 || inv.settle_date <= 0 {
            return;
        }
        let Some((seller, buyer)) = parse_payment_memo(&inv.memo) else {
            return;
        };
        if inv.memo != payment_memo(&seller, &buyer) {
            return;
        }
        let list = self.settled.entry((seller, buyer)).or_default();
        if list.iter().any(|(h, _, _)| *h == inv.r_hash) {
            return;
        }
        if self.count >= MAX_SETTLED {
            tracing::warn!("too many settled invoices remembered; one was not recorded");
            return;
        }
        self.count += 1;
        let at = u64::try_from(inv.settle_date)
            .unwrap_or(0)
            .saturating_mul(1000);
        tracing::debug!(buyer = %hex::encode(buyer), sats = inv.value, "settled invoice");
        list.push((inv.r_hash.clone(), inv.value, at));
        if let (Some(cp), Ok(r_hash)) = (
            &mut self.checkpoint,
            <[u8; 32]>::try_from(inv.r_hash.as_slice()),
        ) {
            let entry = SettledEntry {
                seller,
                buyer,
                r_hash,
                sats: inv.value,
                at_ms: at,
            };
            if let Err(e) = cp.append(&entry) {
                tracing::warn!(error = %e, "cannot save a settled invoice");
            }
        }
    }
}

/// The LND verifier.
pub struct LndPlugin {
    config: Config,
    network: Network,
    /// `None`: a wallet-less buyer (no LND configured).
    lnd: Option<Lnd>,
    runtime: tokio::runtime::Runtime,
    state: Arc<Mutex<State>>,
    /// Buyer: the satoshis last asked of each seller for each buyer (`payment_request`),
    /// which the seller's invoice must be for.
    asked: Mutex<HashMap<(Key, Key), u64>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl std::fmt::Debug for LndPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LndPlugin")
            .field("address", &self.config.address)
            .field("network", &self.network)
            .finish()
    }
}

impl Drop for LndPlugin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The first wait after a failure.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// A subscription that stayed live this long was a recovery: the next wait after it
/// ends starts from [`BACKOFF_BASE`] again. Shorter (an LND that accepts and drops at
/// once) and the waits keep growing, so a flapping node is not hammered.
const BACKOFF_STABLE: Duration = Duration::from_secs(10);

/// Reconnection waits: [`Backoff`] from [`BACKOFF_BASE`] per failure, with the failures
/// counted again from zero after a session that stayed live for [`BACKOFF_STABLE`].
#[derive(Debug, Clone)]
struct Reconnect {
    failures: u32,
    backoff: Backoff,
}

impl Reconnect {
    fn new(max: Duration) -> Reconnect {
        Reconnect {
            failures: 0,
            backoff: Backoff::new(BACKOFF_BASE, max),
        }
    }

    /// A session ended after being live for `live_for` (`None`: it never got live);
    /// returns how long to wait before the next.
    fn next(&mut self, live_for: Option<Duration>) -> Duration {
        if live_for.is_some_and(|d| d >= BACKOFF_STABLE) {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.backoff.wait(self.failures)
    }
}

/// Lists every invoice once, then follows the subscription; on any failure, marks the
/// state not live, waits (backoff) and starts over.
async fn follow(lnd: Lnd, state: Arc<Mutex<State>>, max_backoff: Duration) {
    follow_with(state, max_backoff, move |state| {
        let lnd = lnd.clone();
        async move { sync_once(&lnd, &state).await }
    })
    .await
}

/// [`follow`] with the session as a parameter, so the backoff can be tested with a
/// scripted LND in virtual time.
async fn follow_with<F, Fut>(state: Arc<Mutex<State>>, max_backoff: Duration, mut session: F)
where
    F: FnMut(Arc<Mutex<State>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut backoff = Reconnect::new(max_backoff);
    loop {
        let error = match session(Arc::clone(&state)).await {
            Ok(()) => "the invoice subscription ended".to_owned(),
            Err(e) => e,
        };
        // How long the session was live, read before the state is marked down.
        let live_for = match state.lock() {
            Ok(mut st) => {
                let live_for = st.live_since.take().map(|t| t.elapsed());
                st.last_error = Some(error.clone());
                live_for
            }
            Err(_) => None,
        };
        let wait = backoff.next(live_for);
        tracing::warn!(error = %error, failures = backoff.failures, wait_ms = wait.as_millis() as u64, "LND subscription down");
        tokio::time::sleep(wait).await;
    }
}

async fn sync_once(lnd: &Lnd, state: &Arc<Mutex<State>>) -> Result<(), String> {
    let mut offset = 0u64;
    let mut add_index = 0u64;
    let mut settle_index = 0u64;
    // Only from a non-zero settle index: LND replays nothing for settle index 0 (nor
    // for add index 0), so an invoice that settled while no settlement had been seen
    // yet would never come back; the node is listed instead.
    let resume = match state.lock() {
        Ok(st) => st.resume.then_some(st.indexes).filter(|ix| ix.settle > 0),
        Err(_) => None,
    };
    if let Some(ix) = resume {
        // Saved indexes: LND replays what was added and settled since them.
        add_index = ix.add;
        settle_index = ix.settle;
    }
    while resume.is_none() {
        let page = lnd
            .list_invoices(proto::ListInvoiceRequest {
                pending_only: false,
                index_offset: offset,
                num_max_invoices: PAGE,
                reversed: false,
            })
            .await
            .map_err(|s| format!("ListInvoices failed: {}", describe(&s)))?;
        if let Ok(mut st) = state.lock() {
            for inv in &page.invoices {
                st.record(inv);
            }
        }
        for inv in &page.invoices {
            add_index = add_index.max(inv.add_index);
            settle_index = settle_index.max(inv.settle_index);
        }
        if page.invoices.is_empty() || page.last_index_offset <= offset {
            break;
        }
        offset = page.last_index_offset;
    }
    if resume.is_none() {
        if let Ok(mut st) = state.lock() {
            st.note_indexes(add_index, settle_index, true);
        }
    }
    let mut stream = lnd
        .subscribe_invoices(proto::InvoiceSubscription {
            add_index,
            settle_index,
        })
        .await
        .map_err(|s| format!("SubscribeInvoices failed: {}", describe(&s)))?;
    if let Ok(mut st) = state.lock() {
        st.live_since = Some(tokio::time::Instant::now());
        st.last_error = None;
    }
    tracing::info!(
        add_index,
        settle_index,
        resumed = resume.is_some(),
        "following LND invoices"
    );
    loop {
        match stream.message().await {
            Ok(Some(inv)) => {
                if let Ok(mut st) = state.lock() {
                    st.record(&inv);
                    st.note_indexes(inv.add_index, inv.settle_index, false);
                }
            }
            Ok(None) => return Ok(()),
            Err(s) => return Err(format!("the invoice subscription failed: {}", describe(&s))),
        }
    }
}

/// A buyer's failed DecodePayReq or SendPaymentV2, described; when LND's macaroon
/// check refused it ("permission denied"), also which macaroon paying needs.
fn describe_paying(status: &tonic::Status) -> String {
    let d = describe(status);
    if status.message().contains("permission denied") {
        format!(
            "{d} (the macaroon does not allow paying: a buyer with pay = true needs \
             offchain:read and offchain:write, as LND's admin.macaroon has; \
             invoice.macaroon is for selling)"
        )
    } else {
        d
    }
}

/// Satoshis to the card's currency.
fn card_amount(currency: &str, sats: i64) -> Result<f64, String> {
    match currency.to_ascii_uppercase().as_str() {
        "SATS" | "SAT" | "LIGHTNINGSATS" => Ok(sats as f64),
        "BTC" | "LIGHTNINGBTC" => Ok(sats as f64 / 1e8),
        other => Err(format!("currency {other:?} is not SATS or BTC")),
    }
}

/// The card's amount text in satoshis, exactly (`"0.00001"` BTC is 1000 sats).
fn to_sats(currency: &str, amount: &str) -> Result<i64, String> {
    let bad = || format!("amount {amount:?} is not a whole number of satoshis");
    let decimals = match currency.to_ascii_uppercase().as_str() {
        "BTC" | "LIGHTNINGBTC" => 8,
        _ => 0,
    };
    let t = amount.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let frac = frac.trim_end_matches('0');
    if int.is_empty()
        || !int.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > decimals
        || int.len() > 15
    {
        return Err(bad());
    }
    let digits = format!("{int}{frac:0<decimals$}");
    let sats: i64 = digits.parse().map_err(|_| bad())?;
    if sats < 1 {
        return Err(bad());
    }
    Ok(sats)
}

/// Seconds since 1970.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks a seller's invoice locally (wallet-less buyer): a valid BOLT #11 signed by
/// someone, for the configured network, described by this purchase's memo (or its
/// SHA-256), for exactly the `asked` satoshis (within `max_sats`), and not expired at
/// `now` (seconds). The reason for a refusal is one sentence.
fn check_invoice(
    request: &str,
    memo: &str,
    asked: Option<i64>,
    network: Network,
    max_sats: u64,
    now: u64,
) -> Result<bolt11::Invoice, String> {
    let invoice = bolt11::decode(request)
        .map_err(|e| format!("the seller's invoice is not a valid BOLT 11 invoice: {e}"))?;
    if invoice.network != network {
        return Err(format!(
            "the invoice is for ln{}, not this plugin's network ln{}; not paying",
            invoice.network.prefix(),
            network.prefix()
        ));
    }
    let described = match (&invoice.description, &invoice.description_hash) {
        (Some(d), _) => d == memo,
        (None, Some(h)) => {
            use sha2::Digest;
            *h == <[u8; 32]>::from(sha2::Sha256::digest(memo.as_bytes()))
        }
        (None, None) => false,
    };
    if !described {
        return Err("the invoice's description is not this purchase's memo; not paying".into());
    }
    let asked = asked
        .and_then(|a| u64::try_from(a).ok())
        .filter(|a| *a > 0)
        .ok_or("the seller's reply does not say a positive amount; not paying")?;
    if asked > max_sats {
        return Err(format!(
            "the invoice is for {asked} sats, more than max_invoice_sats ({max_sats}); not paying"
        ));
    }
    match invoice.amount_msat {
        None => {
            return Err("the invoice has no amount (any amount); not paying".into());
        }
        Some(msat) if Some(msat) != asked.checked_mul(1000) => {
            return Err(format!(
                "the invoice is for {msat} msat, not the {asked} sats asked for; not paying"
            ));
        }
        Some(_) => {}
    }
    if invoice.is_expired(now) {
        return Err(format!(
            "the invoice expired at {} (unix seconds); not paying",
            invoice.expires_at()
        ));
    }
    Ok(invoice)
}

/// Checks LND's reading of an invoice (`DecodePayReq`) against the local one, already
/// checked by [`check_invoice`]: the same payee, payment hash, amount and description
/// (or description hash), and not expired by LND's numbers either.
fn check_decoded(
    decoded: &proto::PayReq,
    local: &bolt11::Invoice,
    memo: &str,
    now: u64,
) -> Result<(), String> {
    let disagree = |what: &str| {
        Err(format!(
            "LND's DecodePayReq disagrees with the invoice's {what}; not paying"
        ))
    };
    if !decoded
        .destination
        .eq_ignore_ascii_case(&hex::encode(local.payee))
    {
        return disagree("payee");
    }
    if !decoded
        .payment_hash
        .eq_ignore_ascii_case(&hex::encode(local.payment_hash))
    {
        return disagree("payment hash");
    }
    let msat = local.amount_msat.and_then(|m| i64::try_from(m).ok());
    let sats = msat.map(|m| m / 1000);
    if Some(decoded.num_satoshis) != sats
        || (decoded.num_msat != 0 && Some(decoded.num_msat) != msat)
    {
        return disagree("amount");
    }
    let described = if decoded.description.is_empty() {
        use sha2::Digest;
        decoded
            .description_hash
            .eq_ignore_ascii_case(&hex::encode(sha2::Sha256::digest(memo.as_bytes())))
    } else {
        decoded.description == memo
    };
    if !described {
        return Err("the invoice's description is not this purchase's memo; not paying".into());
    }
    let expires = decoded.timestamp.saturating_add(decoded.expiry);
    if i64::try_from(now).map_or(true, |n| n >= expires) {
        return Err(format!(
            "the invoice expired at {expires} (unix seconds) by LND's decoding; not paying"
        ));
    }
    Ok(())
}

impl LndPlugin {
    fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// Pays a checked invoice with the Router's SendPaymentV2, waiting at most
    /// `pay_timeout_ms` for the final status: `lnd-paid` on success, an error on failure,
    /// `lnd-in-flight` when LND has not finished within the wait.
    fn pay(
        &self,
        lnd: &Lnd,
        request: &str,
        invoice: &bolt11::Invoice,
    ) -> Result<Option<(String, String)>, String> {
        let hash = hex::encode(invoice.payment_hash);
        let sats = invoice.amount_msat.unwrap_or(0) / 1000;
        let wait = Duration::from_millis(self.config.pay_timeout_ms);
        let outcome = self
            .block_on(
                lnd.send_payment_v2(
                    proto::SendPaymentRequest {
                        payment_request: request.to_owned(),
                        timeout_seconds: i32::try_from(self.config.pay_timeout_ms.div_ceil(1000))
                            .unwrap_or(i32::MAX)
                            .max(1),
                        fee_limit_sat: i64::try_from(self.config.max_fee_sats).unwrap_or(i64::MAX),
                        no_inflight_updates: true,
                    },
                    wait,
                ),
            )
            .map_err(|s| format!("SendPaymentV2 failed: {}; not paid", describe_paying(&s)))?;
        match outcome {
            PayOutcome::Final(p) if p.status == proto::PAYMENT_SUCCEEDED => {
                let amount = u64::try_from(p.value_sat)
                    .ok()
                    .filter(|v| *v > 0)
                    .unwrap_or(sats);
                tracing::info!(payment_hash = %hash, sats = amount, fee_sat = p.fee_sat, "invoice paid");
                let paid = json!({"payment_hash": hash, "amount": amount, "fee_sat": p.fee_sat});
                Ok(Some((MSG_PAID.to_owned(), paid.to_string())))
            }
            PayOutcome::Final(p) => {
                let reason = proto::failure_reason(p.failure_reason);
                tracing::warn!(payment_hash = %hash, reason, "payment failed");
                Err(format!("payment failed: {reason}; not paid"))
            }
            PayOutcome::Pending { why, .. } => {
                let why = why.unwrap_or_else(|| {
                    format!("no final status within {} ms", self.config.pay_timeout_ms)
                });
                tracing::warn!(payment_hash = %hash, why = %why, "payment still in flight");
                let note = format!(
                    "{why}: the payment is in flight and may still succeed or fail; check \
                     the node (lncli trackpayment {hash}) before paying again"
                );
                let pending = json!({"payment_hash": hash, "amount": sats, "status": "IN_FLIGHT", "note": note});
                Ok(Some((MSG_IN_FLIGHT.to_owned(), pending.to_string())))
            }
        }
    }

    fn open_inner(config: &str, store: Option<PluginStore>) -> Result<Self, String> {
        let Checked {
            config,
            connection,
            network,
            log,
        } = check(config)?;
        log.apply()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dazaar-lnd")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the LND runtime: {e}"))?;
        let Some(connection) = connection else {
            tracing::info!(
                network = %config.network,
                "LND plugin opened without LND (no address): buying only; checked invoices \
                 are handed to the host to show for an external wallet, and no payment can \
                 be verified"
            );
            return Ok(LndPlugin {
                config,
                network,
                lnd: None,
                runtime,
                state: Arc::new(Mutex::new(State {
                    last_error: Some(NO_LND.into()),
                    ..State::default()
                })),
                asked: Mutex::default(),
                stop: None,
            });
        };
        let timeout = Duration::from_millis(config.timeout_ms);
        // The channel's background tasks need the runtime.
        let lnd = {
            let _guard = runtime.enter();
            Lnd::new(
                &connection.address,
                &connection.cert,
                config.tls_domain.as_deref(),
                &connection.macaroon_hex,
                timeout,
            )?
        };
        let mut restored = State {
            last_error: Some("connecting to LND".into()),
            ..State::default()
        };
        if let Some(store) = store {
            restored.restore(store);
        }
        let state = Arc::new(Mutex::new(restored));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        {
            let lnd = lnd.clone();
            let state = Arc::clone(&state);
            let max_backoff = Duration::from_millis(config.max_backoff_ms.max(100));
            runtime.spawn(async move {
                tokio::select! {
                    _ = follow(lnd, state, max_backoff) => {}
                    _ = stopped => {}
                }
            });
        }
        tracing::info!(address = %connection.address, network = %config.network, "LND plugin opened");
        Ok(LndPlugin {
            config,
            network,
            lnd: Some(lnd),
            runtime,
            state,
            asked: Mutex::default(),
            stop: Some(stop),
        })
    }

    fn validate_inner(&self, req: &Request<'_>, now_ms: u64) -> Result<Grant, String> {
        let price = req
            .terms
            .price()
            .map_err(|e| format!("bad price on the card: {e}"))?;
        let currency = req.terms.currency.as_str();
        // Failures to check (no node, node unreachable) are marked `unavailable`: the host
        // logs them and tells the peer only that the check is unavailable.
        if self.lnd.is_none() {
            return Err(unavailable(NO_LND));
        }
        let st = self
            .state
            .lock()
            .map_err(|_| unavailable("the LND plugin's state is poisoned"))?;
        let live = st.live_since.is_some();
        if !live && !st.restored {
            return Err(unavailable(format!(
                "LND is not reachable: {}",
                st.last_error.as_deref().unwrap_or("connecting")
            )));
        }
        let down = (!live).then(|| {
            format!(
                "LND is not reachable: {}",
                st.last_error.as_deref().unwrap_or("connecting")
            )
        });
        let mut payments = Vec::new();
        for (_, sats, at) in st
            .settled
            .get(&(req.seller, req.buyer))
            .into_iter()
            .flatten()
        {
            payments.push(Payment {
                amount: card_amount(currency, *sats)?,
                time_ms: *at,
            });
        }
        drop(st);
        let grant = price.grant(&payments, now_ms);
        match (grant, down) {
            // Restored invoices keep a buyer valid while LND is being reached; anything
            // else waits for the node (it may hold a newer payment): fail closed.
            (Ok(g), _) => Ok(g),
            (Err(_), Some(down)) => Err(unavailable(down)),
            (Err(r), None) => {
                Err(r.reason(|| "no settled invoice with this buyer's memo".to_owned()))
            }
        }
    }
}

impl PaymentPlugin for LndPlugin {
    fn describe() -> Description {
        Description {
            name: "lnd",
            version: env!("CARGO_PKG_VERSION"),
            // "lnd" first: the seed's card example uses it, and the host defaults a sell
            // entry without a method to the first one.
            methods: &["lnd", "lightning", "ln"],
            currencies: &["SATS", "BTC", "LightningSats", "LightningBTC"],
        }
    }

    fn check_config(config: &str) -> Result<(), String> {
        check(config).map(|_| ())
    }

    fn open(config: &str) -> Result<Self, String> {
        LndPlugin::open_inner(config, None)
    }

    fn open_with_state(config: &str, store: PluginStore) -> Result<Self, String> {
        LndPlugin::open_inner(config, Some(store))
    }

    fn validate(&self, req: &Request<'_>, now_ms: u64) -> Result<Grant, String> {
        self.validate_inner(req, now_ms)
    }
    fn user_message(
        &self,
        req: &Request<'_>,
        name: &str,
        message: &str,
    ) -> Result<Option<(String, String)>, String> {
        let body: Value = match name {
            MSG_PAY_REQUEST | MSG_INVOICE => serde_json::from_str(message)
                .map_err(|_| format!("{name}: the message is not JSON"))?,
            _ => return Ok(None),
        };
        if name == MSG_PAY_REQUEST {
            // Seller: make an invoice bound to this buyer.
            let lnd = self.lnd.as_ref().ok_or_else(|| NO_LND.to_owned())?;
            let amount = body
                .get("amount")
                .and_then(|a| a.as_u64().or_else(|| a.as_str()?.parse().ok()))
                .filter(|a| *a > 0 && *a <= self.config.max_invoice_sats)
                .ok_or_else(|| {
                    format!(
                        "{MSG_PAY_REQUEST}: amount must be 1..{} satoshis",
                        self.config.max_invoice_sats
                    )
                })?;
            let value = i64::try_from(amount).map_err(|_| "amount too large".to_owned())?;
            let added = self
                .block_on(lnd.add_invoice(proto::Invoice {
                    memo: req.memo(),
                    value,
                    private: true,
                    ..proto::Invoice::default()
                }))
                .map_err(|s| format!("AddInvoice failed: {}", describe(&s)))?;
            tracing::info!(buyer = %hex::encode(req.buyer), sats = amount, "invoice created");
            let reply = json!({"request": added.payment_request, "amount": amount});
            return Ok(Some((MSG_INVOICE.to_owned(), reply.to_string())));
        }
        // Buyer: the seller's invoice. Check before paying.
        let request = body
            .get("request")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{MSG_INVOICE}: no request"))?;
        let mut asked = body.get("amount").and_then(Value::as_i64);
        // What this plugin asked for, when it did (in this process): the reply must match.
        let remembered = self
            .asked
            .lock()
            .ok()
            .and_then(|m| m.get(&(req.seller, req.buyer)).copied());
        if let Some(want) = remembered.and_then(|w| i64::try_from(w).ok()) {
            if asked != Some(want) {
                return Err(format!(
                    "the seller's invoice reply is for {} sats, not the {want} asked for; not paying",
                    asked.map_or("?".to_owned(), |a| a.to_string())
                ));
            }
            asked = Some(want);
        }
        // Checked here first, with or without LND: a valid BOLT 11 for this network, this
        // purchase's memo, exactly the amount asked for, within max_invoice_sats, not expired.
        let invoice = check_invoice(
            request,
            &req.memo(),
            asked,
            self.network,
            self.config.max_invoice_sats,
            unix_now(),
        )?;
        let sats = invoice.amount_msat.unwrap_or(0) / 1000;
        let Some(lnd) = &self.lnd else {
            // Wallet-less: the host shows the checked invoice for a wallet.
            tracing::info!(
                invoice = request,
                sats,
                "invoice checked; pay it with your wallet"
            );
            return Ok(None);
        };
        // And by the node that would pay it: both must agree (defence in depth).
        let decoded = self
            .block_on(lnd.decode_pay_req(request))
            .map_err(|s| format!("DecodePayReq failed: {}", describe_paying(&s)))?;
        check_decoded(&decoded, &invoice, &req.memo(), unix_now())?;
        if !self.config.pay {
            tracing::info!(
                invoice = request,
                sats,
                "invoice checked; pay it with your wallet"
            );
            return Ok(None);
        }
        self.pay(lnd, request, &invoice)
    }

    fn payment_request(
        &self,
        req: &Request<'_>,
        amount: &str,
    ) -> Result<PaymentInstructions, String> {
        let sats = to_sats(&req.terms.currency, amount)?;
        if let (Ok(mut asked), Ok(n)) = (self.asked.lock(), u64::try_from(sats)) {
            if asked.len() >= MAX_ASKED && !asked.contains_key(&(req.seller, req.buyer)) {
                asked.clear();
            }
            asked.insert((req.seller, req.buyer), n);
        }
        Ok(PaymentInstructions {
            memo: Some(req.memo()),
            amount: Some(sats.to_string()),
            currency: Some("SATS".into()),
            send: Some(OutgoingMessage {
                name: MSG_PAY_REQUEST.to_owned(),
                message: json!({ "amount": sats }),
            }),
            note: Some("the seller answers with an lnd-invoice to pay".into()),
            ..PaymentInstructions::default()
        })
    }
}

export_payment_plugin!(LndPlugin);

#[cfg(test)]
mod tests {
    use super::*;
    use dazaar_plugin_api::PaymentTerms;

    /// Runs `follow_with` against a scripted LND in virtual time: session `n` (from 0)
    /// stays live for `live[n]` (`None`: fails before getting live) and then fails.
    /// Returns the virtual time between the end of each session and the start of the
    /// next: the waits the backoff chose.
    async fn waits(live: Vec<Option<Duration>>, max_backoff: Duration) -> Vec<Duration> {
        use tokio::time::Instant;
        let sessions = live.len();
        let log: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
        let (done, all_done) = tokio::sync::oneshot::channel::<()>();
        let mut done = Some(done);
        let script = Arc::new(live);
        let mut n = 0usize;
        let state = Arc::new(Mutex::new(State::default()));
        let record = Arc::clone(&log);
        let follower = tokio::spawn(follow_with(state, max_backoff, move |state| {
            let i = n;
            n += 1;
            let script = Arc::clone(&script);
            let record = Arc::clone(&record);
            let finished = if i == sessions { done.take() } else { None };
            async move {
                if let Some(f) = finished {
                    let _ = f.send(());
                    std::future::pending::<()>().await;
                }
                let start = Instant::now();
                if let Some(up) = script[i] {
                    state.lock().unwrap().live_since = Some(Instant::now());
                    tokio::time::sleep(up).await;
                }
                record.lock().unwrap().push((start, Instant::now()));
                Err("scripted failure".to_owned())
            }
        }));
        // The session after the last one signals; then the follower is stopped.
        all_done.await.unwrap();
        let ended = Instant::now();
        follower.abort();
        let log = log.lock().unwrap();
        let mut starts: Vec<Instant> = log.iter().skip(1).map(|(s, _)| *s).collect();
        starts.push(ended);
        log.iter()
            .zip(starts)
            .map(|((_, end), next)| next - *end)
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_grows_and_resets_after_a_stable_session() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        // Five failed connects, a session live for a minute, one more failed connect.
        let got = waits(vec![None, None, None, None, None, Some(s(60)), None], s(30)).await;
        assert_eq!(
            got,
            vec![
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(200),
                ms(400)
            ]
        );
        // Capped by max_backoff.
        let got = waits(vec![None; 6], ms(1000)).await;
        assert_eq!(
            got,
            vec![ms(200), ms(400), ms(800), ms(1000), ms(1000), ms(1000)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_keeps_growing_for_a_flapping_node() {
        let ms = Duration::from_millis;
        // Live for a moment each time: not a recovery.
        let got = waits(
            vec![None, Some(ms(500)), Some(ms(500)), None],
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(got, vec![ms(200), ms(400), ms(800), ms(1600)]);
    }

    #[test]
    fn amounts() {
        assert_eq!(to_sats("SATS", "100"), Ok(100));
        assert_eq!(to_sats("BTC", "0.00001"), Ok(1000));
        assert!(to_sats("SATS", "1.5").is_err());
        assert!(to_sats("SATS", "0").is_err());
        assert_eq!(card_amount("LightningSats", 5), Ok(5.0));
        assert!(card_amount("USD", 5).is_err());
    }

    /// A seller's plugin with `state` as if its subscription were running, and a lazy
    /// channel to nothing (no call is made).
    fn seller_with(state: State) -> LndPlugin {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let lnd = {
            let _guard = runtime.enter();
            Lnd::new("127.0.0.1:9", b"", None, "00", Duration::from_secs(1)).unwrap()
        };
        LndPlugin {
            config: check("").unwrap().config,
            network: Network::Bitcoin,
            lnd: Some(lnd),
            runtime,
            state: Arc::new(Mutex::new(state)),
            asked: Mutex::default(),
            stop: None,
        }
    }

    /// The seed's card example says `"method": "lnd"`: the plugin lists that method, first
    /// (so the host gives it to a sell entry without a method), and validates such a
    /// card's payments like any other.
    /// A restart with a checkpoint: the buyers its saved invoices pay for are valid
    /// while LND is still being reached; others fail closed as unavailable (the node may
    /// hold a newer payment). Without the checkpoint every buyer would wait for the node.
    #[test]
    fn saved_invoices_keep_buyers_valid_across_a_restart() {
        let memory = checkpoint::memory::Memory::default();
        let (seller, buyer) = ([1; 32], [2; 32]);
        let settled_at = 1_700_000_000;
        // The first run counts a settled invoice and saves it.
        let mut first = State::default();
        first.restore(memory.store());
        first.record(&proto::Invoice {
            memo: payment_memo(&seller, &buyer),
            r_hash: vec![7; 32],
            value: 100,
            settle_date: settled_at,
            settle_index: 5,
            state: proto::INVOICE_SETTLED,
            ..proto::Invoice::default()
        });
        first.note_indexes(9, 5, false);
        drop(first);
        // The restarted plugin has not reached LND yet.
        let mut restarted = State {
            last_error: Some("connecting to LND".into()),
            ..State::default()
        };
        restarted.restore(memory.store());
        assert!(restarted.resume);
        assert_eq!(restarted.indexes, Indexes { add: 9, settle: 5 });
        let plugin = seller_with(restarted);
        let terms = PaymentTerms::new("lnd", "SATS", "1", "seconds", "1");
        let req = |buyer| Request {
            buyer,
            seller,
            terms: &terms,
        };
        let at = |s: i64| u64::try_from(s * 1000).unwrap();
        assert_eq!(
            plugin.validate(&req(buyer), at(settled_at + 40)),
            Ok(Grant::time_ms(60_000))
        );
        let other = plugin.validate(&req([3; 32]), at(settled_at)).unwrap_err();
        assert!(other.contains("LND is not reachable"), "{other}");
        let lapsed = plugin
            .validate(&req(buyer), at(settled_at + 100))
            .unwrap_err();
        assert!(lapsed.contains("LND is not reachable"), "{lapsed}");
    }

    #[test]
    fn a_seed_style_card_with_method_lnd_is_served() {
        let described = LndPlugin::describe();
        assert_eq!(described.methods, ["lnd", "lightning", "ln"]);
        // The host's match is case-insensitive; the seed's currency is the legacy name.
        assert!(described
            .methods
            .iter()
            .any(|m| m.eq_ignore_ascii_case("LND")));
        assert!(described.currencies.contains(&"LightningSats"));

        let (seller, buyer) = ([1; 32], [2; 32]);
        let settled_at = 1_700_000_000;
        let mut state = State {
            live_since: Some(tokio::time::Instant::now()),
            ..State::default()
        };
        state.record(&proto::Invoice {
            memo: payment_memo(&seller, &buyer),
            r_hash: vec![1],
            value: 100,
            settle_date: settled_at,
            state: proto::INVOICE_SETTLED,
            ..proto::Invoice::default()
        });
        let plugin = seller_with(state);
        let terms = PaymentTerms::new("lnd", "LightningSats", "1", "seconds", "1");
        let req = |buyer| Request {
            buyer,
            seller,
            terms: &terms,
        };
        let at = |s: i64| u64::try_from(s * 1000).unwrap();
        // 100 sats at 1 sat/s, 40 s later.
        assert_eq!(
            plugin.validate(&req(buyer), at(settled_at + 40)),
            Ok(Grant::time_ms(60_000))
        );
        assert_eq!(
            plugin.validate(&req(buyer), at(settled_at + 100)),
            Err("the paid time has run out".to_owned())
        );
        assert_eq!(
            plugin.validate(&req([3; 32]), at(settled_at)),
            Err("no settled invoice with this buyer's memo".to_owned())
        );
    }

    /// Data units and `once` go through the shared rules like time does.
    #[test]
    fn each_unit_kind() {
        let (seller, buyer) = ([1; 32], [2; 32]);
        let mut state = State {
            live_since: Some(tokio::time::Instant::now()),
            ..State::default()
        };
        for (hash, value) in [(1, 100), (2, 50)] {
            state.record(&proto::Invoice {
                memo: payment_memo(&seller, &buyer),
                r_hash: vec![hash],
                value,
                settle_date: 1_700_000_000,
                state: proto::INVOICE_SETTLED,
                ..proto::Invoice::default()
            });
        }
        let plugin = seller_with(state);
        let grant = |unit: &str, amount: &str, interval: &str| {
            let terms = PaymentTerms::new("lnd", "SATS", amount, unit, interval);
            plugin.validate(
                &Request {
                    buyer,
                    seller,
                    terms: &terms,
                },
                u64::MAX / 2,
            )
        };
        assert_eq!(grant("bytes", "1", "10"), Ok(Grant::bytes(1500)));
        assert_eq!(grant("kilobytes", "10", "1"), Ok(Grant::bytes(15_000)));
        assert_eq!(grant("megabytes", "150", "2"), Ok(Grant::bytes(2_000_000)));
        assert_eq!(
            grant("gigabytes", "1", "1"),
            Ok(Grant::bytes(150_000_000_000))
        );
        assert_eq!(grant("once", "150", ""), Ok(Grant::once()));
        assert_eq!(
            grant("once", "151", ""),
            Err("the payments do not reach the one-time price".to_owned())
        );
        // Long after the payment, time has run out; data and once have not.
        assert_eq!(
            grant("seconds", "1", "1"),
            Err("the paid time has run out".to_owned())
        );
    }

    #[test]
    fn memo_binding() {
        let mut st = State::default();
        let memo = payment_memo(&[1; 32], &[2; 32]);
        let inv = proto::Invoice {
            memo: memo.clone(),
            r_hash: vec![1],
            value: 100,
            settle_date: 1_700_000_000,
            state: proto::INVOICE_SETTLED,
            ..proto::Invoice::default()
        };
        st.record(&inv);
        st.record(&inv); // the same invoice twice (list, then stream)
        let open = proto::Invoice {
            state: 0,
            r_hash: vec![2],
            ..inv.clone()
        };
        st.record(&open);
        let upper = proto::Invoice {
            memo: memo.to_uppercase(),
            r_hash: vec![3],
            ..inv.clone()
        };
        st.record(&upper);
        assert_eq!(st.settled[&([1; 32], [2; 32])].len(), 1);
    }

    mod wallet_less {
        use super::super::*;
        use crate::test_encoder::{encode, spec_key, Describe, InvoiceSpec};
        use dazaar_plugin_api::PaymentTerms;

        const SELLER: Key = [0x5e; 32];
        const BUYER: Key = [0xb0; 32];
        const NOW: u64 = 1_700_000_100;

        fn memo() -> String {
            payment_memo(&SELLER, &BUYER)
        }

        fn invoice(f: impl FnOnce(&mut InvoiceSpec)) -> String {
            let mut spec = InvoiceSpec::regtest(250_000, &memo(), [4; 32], 1_700_000_000);
            f(&mut spec);
            encode(&spec, &spec_key())
        }

        fn checked(request: &str, asked: Option<i64>) -> Result<bolt11::Invoice, String> {
            check_invoice(request, &memo(), asked, Network::Regtest, 10_000, NOW)
        }

        #[test]
        fn the_checks() {
            let good = invoice(|_| {});
            let inv = checked(&good, Some(250)).unwrap();
            assert_eq!(inv.amount_msat, Some(250_000));

            let e = checked(
                &invoice(|s| s.description = Describe::Text("dazaar: x".into())),
                Some(250),
            );
            assert!(e
                .unwrap_err()
                .contains("description is not this purchase's memo"));
            let other_buyer = payment_memo(&SELLER, &[1; 32]);
            let e = checked(
                &invoice(|s| s.description = Describe::Text(other_buyer)),
                Some(250),
            );
            assert!(e.unwrap_err().contains("description"));
            // A description hash of the memo is as good as the memo.
            use sha2::Digest;
            let hash: [u8; 32] = sha2::Sha256::digest(memo().as_bytes()).into();
            assert!(checked(
                &invoice(|s| s.description = Describe::Hash(hash)),
                Some(250)
            )
            .is_ok());
            let e = checked(
                &invoice(|s| s.description = Describe::Hash([0; 32])),
                Some(250),
            );
            assert!(e.unwrap_err().contains("description"));

            let e = checked(&good, Some(100)).unwrap_err();
            assert_eq!(
                e,
                "the invoice is for 250000 msat, not the 100 sats asked for; not paying"
            );
            assert!(checked(&invoice(|s| s.amount_msat = Some(250_001)), Some(250)).is_err());
            let e = checked(&invoice(|s| s.amount_msat = None), Some(250)).unwrap_err();
            assert!(e.contains("no amount"), "{e}");
            assert!(checked(&good, None)
                .unwrap_err()
                .contains("positive amount"));
            assert!(checked(&good, Some(-250)).is_err());
            let big = invoice(|s| s.amount_msat = Some(20_000_000));
            assert!(checked(&big, Some(20_000))
                .unwrap_err()
                .contains("max_invoice_sats"));

            let e = checked(&invoice(|s| s.prefix = "bc".into()), Some(250)).unwrap_err();
            assert_eq!(
                e,
                "the invoice is for lnbc, not this plugin's network lnbcrt; not paying"
            );
            assert!(checked(&invoice(|s| s.prefix = "tb".into()), Some(250)).is_err());

            // Default expiry 3600 s from 1_700_000_000; NOW is 100 s later.
            assert!(checked(&invoice(|s| s.expiry = None), Some(250)).is_ok());
            let e = checked(&invoice(|s| s.expiry = Some(100)), Some(250)).unwrap_err();
            assert!(e.contains("expired"), "{e}");
            assert!(checked(&invoice(|s| s.expiry = Some(101)), Some(250)).is_ok());

            let mut flipped = good.clone().into_bytes();
            let i = flipped.len() - 10;
            flipped[i] = if flipped[i] == b'q' { b'p' } else { b'q' };
            let e = checked(&String::from_utf8(flipped).unwrap(), Some(250)).unwrap_err();
            assert!(e.contains("not a valid BOLT 11"), "{e}");
        }

        /// LND's reading of an invoice must agree with the local one in every checked field.
        #[test]
        fn lnds_decoding_must_agree() {
            let text = invoice(|_| {});
            let local = checked(&text, Some(250)).unwrap();
            let agree = proto::PayReq {
                destination: hex::encode(local.payee),
                payment_hash: hex::encode(local.payment_hash),
                num_satoshis: 250,
                timestamp: 1_700_000_000,
                expiry: 86_400,
                description: memo(),
                description_hash: String::new(),
                num_msat: 250_000,
            };
            assert_eq!(check_decoded(&agree, &local, &memo(), NOW), Ok(()));
            let refused = |f: &dyn Fn(&mut proto::PayReq)| {
                let mut d = agree.clone();
                f(&mut d);
                check_decoded(&d, &local, &memo(), NOW).unwrap_err()
            };
            assert!(
                refused(&|d| d.destination = "02".to_owned() + &"ab".repeat(32)).contains("payee")
            );
            assert!(refused(&|d| d.payment_hash = "00".repeat(32)).contains("payment hash"));
            assert!(refused(&|d| d.num_satoshis = 251).contains("amount"));
            assert!(refused(&|d| d.num_msat = 250_001).contains("amount"));
            assert!(refused(&|d| d.description = "dazaar: x".into()).contains("memo"));
            assert!(refused(&|d| d.expiry = 100).contains("expired"));
            // A description hash of the memo stands for the memo; another hash does not.
            use sha2::Digest;
            let hash = hex::encode(sha2::Sha256::digest(memo().as_bytes()));
            let mut by_hash = agree.clone();
            by_hash.description = String::new();
            by_hash.description_hash = hash.to_uppercase();
            assert_eq!(check_decoded(&by_hash, &local, &memo(), NOW), Ok(()));
            by_hash.description_hash = "00".repeat(32);
            assert!(check_decoded(&by_hash, &local, &memo(), NOW).is_err());
        }

        #[test]
        fn payment_settings() {
            assert!(LndPlugin::check_config("max_fee_sats = 0").is_ok());
            // TOML integers are i64: a larger fee limit cannot even be written.
            assert!(LndPlugin::check_config("max_fee_sats = 18446744073709551615").is_err());
            assert!(LndPlugin::check_config("max_fee_sats = -1").is_err());
            assert!(LndPlugin::check_config("timeout_ms = 600000").is_ok());
            let e = LndPlugin::check_config("timeout_ms = 600001").unwrap_err();
            assert!(e.contains("timeout_ms"), "{e}");
            let c = check("").unwrap().config;
            assert_eq!(
                (c.max_fee_sats, c.timeout_ms, c.pay_timeout_ms),
                (100, 5000, 60_000)
            );
            assert!(LndPlugin::check_config("pay_timeout_ms = 0").is_err());
        }

        fn terms() -> PaymentTerms {
            PaymentTerms::new("Lightning", "SATS", "1", "seconds", "1")
        }

        #[test]
        fn a_plugin_without_lnd_buys_but_does_not_verify() {
            assert!(LndPlugin::check_config("network = \"regtest\"").is_ok());
            let e = LndPlugin::check_config("pay = true").unwrap_err();
            assert!(e.contains("pay = true needs an LND address"), "{e}");
            let e = LndPlugin::check_config("tls_cert = \"/x\"").unwrap_err();
            assert!(e.contains("address is not"), "{e}");

            let plugin = LndPlugin::open("network = \"regtest\"\nmax_invoice_sats = 1000").unwrap();
            let terms = terms();
            let req = Request {
                buyer: BUYER,
                seller: SELLER,
                terms: &terms,
            };
            assert_eq!(
                plugin.validate(&req, NOW * 1000).unwrap_err(),
                unavailable(NO_LND)
            );
            // Selling needs LND too.
            let e = plugin
                .user_message(&req, MSG_PAY_REQUEST, "{\"amount\":5}")
                .unwrap_err();
            assert_eq!(e, NO_LND);

            // Before asking, a reply is judged by its own amount (up to max_invoice_sats).
            let now = unix_now();
            let spec100 = InvoiceSpec::regtest(100_000, &memo(), [4; 32], now);
            let reply100 = json!({"request": encode(&spec100, &spec_key()), "amount": 100});
            assert_eq!(
                plugin.user_message(&req, MSG_INVOICE, &reply100.to_string()),
                Ok(None)
            );
            let how = plugin.payment_request(&req, "250").unwrap();
            let send = how.send.unwrap();
            assert_eq!(send.name, MSG_PAY_REQUEST);
            assert_eq!(send.message, json!({"amount": 250}));

            // Once 250 was asked for, a consistent reply for 100 is refused.
            let e = plugin
                .user_message(&req, MSG_INVOICE, &reply100.to_string())
                .unwrap_err();
            assert!(e.contains("not the 250 asked for"), "{e}");
            // A fresh invoice with the memo and the amount: checked, then left to the host.
            let mut spec = InvoiceSpec::regtest(250_000, &memo(), [4; 32], now);
            let good = encode(&spec, &spec_key());
            let reply = json!({"request": good, "amount": 250}).to_string();
            assert_eq!(plugin.user_message(&req, MSG_INVOICE, &reply), Ok(None));
            let tampered = json!({"request": good, "amount": 100}).to_string();
            let e = plugin
                .user_message(&req, MSG_INVOICE, &tampered)
                .unwrap_err();
            assert!(e.contains("not paying"), "{e}");
            spec.timestamp = now - 7200;
            spec.expiry = Some(3600);
            let old = json!({"request": encode(&spec, &spec_key()), "amount": 250}).to_string();
            let e = plugin.user_message(&req, MSG_INVOICE, &old).unwrap_err();
            assert!(e.contains("expired"), "{e}");
            assert!(plugin
                .user_message(
                    &req,
                    MSG_INVOICE,
                    "{\"request\":\"lnbcrt1garbage\",\"amount\":250}"
                )
                .is_err());
        }
    }
}
