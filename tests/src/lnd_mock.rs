//! A local stand-in for LND (which cannot be installed here) for the Lightning plugin's
//! tests: a real gRPC server over TLS whose messages and `lnrpc.Lightning` and
//! `routerrpc.Router` services are generated at build time from LND's own
//! `lightning.proto` and `routerrpc/router.proto` (v0.21.2-beta, vendored in
//! `tests/proto/lnd/`, see [`crate::lnrpc`]) — not from the plugin's hand-written
//! declarations, so a wrong field number or type in the plugin shows up as a failure.
//!
//! It implements the methods the plugin calls — AddInvoice, ListInvoices (paged by add
//! index, forwards or `reversed`, as LND pages), SubscribeInvoices (replay after a
//! non-zero add/settle index, then live), DecodePayReq and the Router's SendPaymentV2 —
//! and every other method of the two services answers `Unimplemented` (LND v0.21 has no
//! `SendPaymentSync`). Invoices are real BOLT 11 ([`crate::bolt11`]): signed by the
//! node's key ([`node_key`] for the first node), for the network of
//! [`LndState::network_prefix`] (regtest `lnbcrt` by default), described by the memo,
//! for `value` sats, with the SHA-256 of a random preimage as payment hash.
//!
//! Macaroons: every call must carry one the node knows in its `macaroon` metadata
//! (`Unauthenticated` otherwise), and that macaroon must hold the permission LND requires
//! for the method (AddInvoice `invoices:write`; ListInvoices, SubscribeInvoices and
//! LookupInvoice `invoices:read`; DecodePayReq `offchain:read`; SendPaymentV2
//! `offchain:write`), else the call fails as LND's macaroon check fails it: status
//! `Unknown`, message `permission denied` (LND returns the bakery's plain error, which
//! gRPC sends as `Unknown`). [`INVOICE_PERMISSIONS`], [`READONLY_PERMISSIONS`] and
//! [`ADMIN_PERMISSIONS`] are the sets of LND's `invoice.macaroon`, `readonly.macaroon`
//! and `admin.macaroon`.
//!
//! Payments: a node refuses to pay an invoice it issued itself (LND finds no route to
//! itself unless the request sets `allow_self_payment`, or the mock's
//! [`LndState::allow_self_payment`] is set). A second node made with
//! [`MockLnd::start_peer`] has its own key, certificate, port and invoices; SendPaymentV2
//! on one settles the other's invoice through a shared list of the nodes — the stand-in
//! for the Lightning network between them (no channels, one hop, the payer's
//! `route_fee_sat` as the fee). The TLS certificate is self-signed, made with rcgen for
//! `localhost` and 127.0.0.1. It listens on 127.0.0.1 only, and can be stopped (all
//! connections dropped) and started again on the same port with the same state.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

/// The node's messages: those of LND's `lightning.proto`.
pub use crate::lnrpc as proto;
use crate::lnrpc::lightning_server::{Lightning, LightningServer};
use crate::routerrpc::router_server::{Router, RouterServer};
use crate::routerrpc::SendPaymentRequest;

/// `InvoiceState.SETTLED`, as the node reports it.
pub const INVOICE_SETTLED: i32 = proto::invoice::InvoiceState::Settled as i32;
/// `InvoiceState.OPEN`.
pub const INVOICE_OPEN: i32 = proto::invoice::InvoiceState::Open as i32;

/// How the node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LndMode {
    /// Normally.
    Normal,
    /// ListInvoices waits this long.
    SlowList(Duration),
    /// SendPaymentV2 streams a FAILED payment (`FAILURE_REASON_NO_ROUTE`).
    PaymentFails,
    /// SendPaymentV2 never gives a final status (the stream stays open).
    PaymentInFlight,
    /// DecodePayReq says the invoice is for one satoshi more than it is.
    DecodeDisagrees,
}

/// The first mock node's identity key (fixed): it signs that node's invoices.
pub fn node_key() -> k256::ecdsa::SigningKey {
    key_from_seed(FIRST_KEY_SEED)
}

/// The first mock node's public key, hex (as LND's `destination` and `identity_pubkey`).
pub fn node_pubkey_hex() -> String {
    hex::encode(crate::bolt11::public_key(&node_key()))
}

const FIRST_KEY_SEED: u8 = 0x4d;

fn key_from_seed(seed: u8) -> k256::ecdsa::SigningKey {
    k256::ecdsa::SigningKey::from_slice(&[seed; 32]).expect("a valid secp256k1 key")
}

/// The permissions of LND's `invoice.macaroon` (`entity:action`).
pub const INVOICE_PERMISSIONS: &[&str] = &[
    "invoices:read",
    "invoices:write",
    "address:read",
    "address:write",
    "onchain:read",
];

/// The permissions of LND's `admin.macaroon`.
pub const ADMIN_PERMISSIONS: &[&str] = &[
    "onchain:read",
    "onchain:write",
    "offchain:read",
    "offchain:write",
    "address:read",
    "address:write",
    "message:read",
    "message:write",
    "peers:read",
    "peers:write",
    "info:read",
    "info:write",
    "invoices:read",
    "invoices:write",
    "signer:generate",
    "signer:read",
    "macaroon:generate",
    "macaroon:read",
    "macaroon:write",
];

/// The permissions of LND's `readonly.macaroon`.
pub const READONLY_PERMISSIONS: &[&str] = &[
    "onchain:read",
    "offchain:read",
    "address:read",
    "message:read",
    "peers:read",
    "info:read",
    "invoices:read",
    "signer:read",
    "macaroon:read",
];

/// A macaroon the node accepts: its bytes (hex, as sent in the `macaroon` metadata) and
/// the permissions it holds.
#[derive(Debug, Clone)]
pub struct Macaroon {
    /// The macaroon, hex.
    pub hex: String,
    /// What it allows ([`INVOICE_PERMISSIONS`], [`ADMIN_PERMISSIONS`], or any other set).
    pub permissions: &'static [&'static str],
}

/// The longest memo the mock accepts (a BOLT 11 `d` field holds at most 639 bytes).
pub const MAX_MEMO: usize = 639;

/// The node's invoices and the live subscriptions.
#[derive(Debug)]
pub struct LndState {
    /// Invoices in add order (add_index = position + 1).
    pub invoices: Vec<proto::Invoice>,
    /// Behaviour.
    pub mode: LndMode,
    /// The macaroons it accepts, each with its permissions.
    pub macaroons: Vec<Macaroon>,
    /// Pays its own invoices even when the request does not set `allow_self_payment`
    /// (LND refuses them by default).
    pub allow_self_payment: bool,
    /// The node key is 32 times this byte (see [`LndState::key`]).
    pub key_seed: u8,
    /// The BOLT 11 currency prefix after `ln` of its invoices: `bcrt` (regtest) by default.
    pub network_prefix: String,
    /// Routing fee SendPaymentV2 charges (sats); above the request's `fee_limit_sat`, the
    /// payment fails with no route.
    pub route_fee_sat: i64,
    /// Every SendPaymentV2 request received, in order.
    pub payment_calls: Vec<SendPaymentRequest>,
    /// ListInvoices calls received (authorised ones).
    pub list_calls: usize,
    /// Streams of payments left in flight (kept open).
    held: Vec<tokio::sync::mpsc::Sender<Result<proto::Payment, Status>>>,
    subscribers: Vec<tokio::sync::mpsc::Sender<Result<proto::Invoice, Status>>>,
    next_settle: u64,
}

impl LndState {
    /// The node's identity key: it signs the node's invoices.
    pub fn key(&self) -> k256::ecdsa::SigningKey {
        key_from_seed(self.key_seed)
    }

    /// The node's public key, hex.
    pub fn pubkey_hex(&self) -> String {
        hex::encode(crate::bolt11::public_key(&self.key()))
    }

    fn push(&mut self, inv: &proto::Invoice) {
        self.subscribers
            .retain(|s| s.try_send(Ok(inv.clone())).is_ok());
    }

    /// Adds an invoice (a real BOLT 11 signed by [`LndState::key`]; `value` 0 or less: "any
    /// amount"); returns its payment request. The memo must be at most [`MAX_MEMO`] bytes.
    pub fn add(&mut self, memo: &str, value: i64, private: bool) -> String {
        use sha2::Digest;
        let n = self.invoices.len() as u64 + 1;
        let preimage: [u8; 32] = rand::random();
        let secret: [u8; 32] = rand::random();
        let hash: [u8; 32] = sha2::Sha256::digest(preimage).into();
        let now = now_s();
        let amount_msat = u64::try_from(value)
            .ok()
            .filter(|v| *v > 0)
            .map(|v| v * 1000);
        let spec = crate::bolt11::InvoiceSpec {
            prefix: self.network_prefix.clone(),
            amount_msat,
            description: crate::bolt11::Describe::Text(memo.to_owned()),
            payment_hash: hash,
            payment_secret: Some(secret),
            timestamp: u64::try_from(now).unwrap_or(0),
            expiry: Some(3600),
            payee_field: None,
            features: Vec::new(),
        };
        let request = crate::bolt11::encode(&spec, &self.key());
        let inv = proto::Invoice {
            memo: memo.to_owned(),
            r_preimage: preimage.to_vec(),
            r_hash: hash.to_vec(),
            value,
            value_msat: value.saturating_mul(1000),
            creation_date: now,
            payment_request: request.clone(),
            expiry: 3600,
            private,
            add_index: n,
            payment_addr: secret.to_vec(),
            ..proto::Invoice::default()
        };
        self.push(&inv);
        self.invoices.push(inv);
        request
    }

    /// Settles the invoice with this payment request (as if it were paid).
    pub fn settle(&mut self, request: &str) -> bool {
        self.next_settle += 1;
        let settle_index = self.next_settle;
        let Some(inv) = self
            .invoices
            .iter_mut()
            .find(|i| i.payment_request == request)
        else {
            return false;
        };
        inv.state = INVOICE_SETTLED;
        #[allow(deprecated)] // LND still sets the deprecated flag; older clients read it
        {
            inv.settled = true;
        }
        inv.settle_date = now_s();
        inv.settle_index = settle_index;
        inv.amt_paid_sat = inv.value;
        inv.amt_paid_msat = inv.value_msat;
        let inv = inv.clone();
        self.push(&inv);
        true
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The nodes that can pay one another: the stand-in for the Lightning network.
type Network = Arc<Mutex<Vec<Arc<Mutex<LndState>>>>>;

/// A running (or stopped) mock node.
pub struct MockLnd {
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    /// The TLS certificate (PEM) clients must trust.
    pub cert_pem: String,
    key_pem: String,
    /// Shared state.
    pub state: Arc<Mutex<LndState>>,
    network: Network,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The service: LND's generated `Lightning` and `Router` traits over the shared state.
struct Node {
    state: Arc<Mutex<LndState>>,
    network: Network,
}

/// The status LND's macaroon check answers a call the macaroon does not allow.
fn permission_denied() -> Status {
    Status::unknown("permission denied")
}

impl Node {
    /// The state, after checking that the call's macaroon is one the node knows and that
    /// it holds `permission` (`entity:action`).
    #[allow(clippy::result_large_err)] // tonic::Status is what the service returns
    fn authorized<T>(
        &self,
        req: &Request<T>,
        permission: &str,
    ) -> Result<MutexGuard<'_, LndState>, Status> {
        let state = self.state()?;
        let Some(sent) = req.metadata().get("macaroon").and_then(|v| v.to_str().ok()) else {
            return Err(Status::unauthenticated("expected 1 macaroon, got 0"));
        };
        match state.macaroons.iter().find(|m| m.hex == sent) {
            Some(m) if m.permissions.contains(&permission) => Ok(state),
            Some(_) => Err(permission_denied()),
            None => Err(Status::unauthenticated(
                "verification failed: signature mismatch",
            )),
        }
    }

    #[allow(clippy::result_large_err)]
    fn state(&self) -> Result<MutexGuard<'_, LndState>, Status> {
        self.state
            .lock()
            .map_err(|_| Status::internal("mock state poisoned"))
    }

    /// The other nodes of the network (not this one).
    fn peers(&self) -> Vec<Arc<Mutex<LndState>>> {
        self.network
            .lock()
            .map(|n| {
                n.iter()
                    .filter(|s| !Arc::ptr_eq(s, &self.state))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The invoice with this payment request on another node, with that node and its
    /// public key.
    fn find_on_network(
        &self,
        request: &str,
    ) -> Option<(Arc<Mutex<LndState>>, proto::Invoice, String)> {
        self.peers().into_iter().find_map(|peer| {
            let found = {
                let s = peer.lock().ok()?;
                let inv = s
                    .invoices
                    .iter()
                    .find(|i| i.payment_request == request)
                    .cloned()?;
                (inv, s.pubkey_hex())
            };
            Some((peer, found.0, found.1))
        })
    }
}

#[tonic::async_trait]
impl Lightning for Node {
    async fn add_invoice(
        &self,
        request: Request<proto::Invoice>,
    ) -> Result<Response<proto::AddInvoiceResponse>, Status> {
        let mut s = self.authorized(&request, "invoices:write")?;
        let r = request.into_inner();
        if r.memo.len() > MAX_MEMO {
            return Err(Status::invalid_argument("memo too large"));
        }
        let request = s.add(&r.memo, r.value, r.private);
        let inv = s.invoices.last().cloned().unwrap_or_default();
        Ok(Response::new(proto::AddInvoiceResponse {
            r_hash: inv.r_hash,
            payment_request: request,
            add_index: inv.add_index,
            payment_addr: inv.payment_addr,
        }))
    }

    /// As LND's ListInvoices: `num_max_invoices` 0 means 100; forwards, the invoices
    /// after `index_offset`; `reversed`, the last ones before `index_offset` (before the
    /// end when it is 0). Either way in add order, `pending_only` filtering before the
    /// count, and `first_index_offset`/`last_index_offset` the add indexes of the first
    /// and last invoice returned (0 and 0 for none).
    async fn list_invoices(
        &self,
        request: Request<proto::ListInvoiceRequest>,
    ) -> Result<Response<proto::ListInvoiceResponse>, Status> {
        let mode = {
            let mut s = self.authorized(&request, "invoices:read")?;
            s.list_calls += 1;
            s.mode
        };
        if let LndMode::SlowList(d) = mode {
            tokio::time::sleep(d).await;
        }
        let r = request.into_inner();
        let max = match r.num_max_invoices {
            0 => 100,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let s = self.state()?;
        let listed = s
            .invoices
            .iter()
            .filter(|i| !r.pending_only || i.state == INVOICE_OPEN);
        let page: Vec<proto::Invoice> = if r.reversed {
            let mut page: Vec<proto::Invoice> = listed
                .filter(|i| r.index_offset == 0 || i.add_index < r.index_offset)
                .rev()
                .take(max)
                .cloned()
                .collect();
            page.reverse();
            page
        } else {
            listed
                .filter(|i| i.add_index > r.index_offset)
                .take(max)
                .cloned()
                .collect()
        };
        Ok(Response::new(proto::ListInvoiceResponse {
            first_index_offset: page.first().map_or(0, |i| i.add_index),
            last_index_offset: page.last().map_or(0, |i| i.add_index),
            invoices: page,
        }))
    }

    /// As LND's SubscribeInvoices: first the invoices added after `add_index`, then those
    /// settled after `settle_index` (each once, in their current state), then live
    /// updates. An index of 0 asks for no backlog of its kind (LND's
    /// `InvoicesAddedSince(0)` and `InvoicesSettledSince(0)` return nothing).
    async fn subscribe_invoices(
        &self,
        request: Request<proto::InvoiceSubscription>,
    ) -> Result<Response<BoxStream<proto::Invoice>>, Status> {
        let mut s = self.authorized(&request, "invoices:read")?;
        let sub = request.get_ref();
        let mut backlog: Vec<&proto::Invoice> = Vec::new();
        // Invoices added after a non-zero add index (all of them are in this part).
        let replayed = |i: &proto::Invoice| sub.add_index != 0 && i.add_index > sub.add_index;
        backlog.extend(s.invoices.iter().filter(|i| replayed(i)));
        if sub.settle_index != 0 {
            let mut settled: Vec<&proto::Invoice> = s
                .invoices
                .iter()
                .filter(|i| i.settle_index > sub.settle_index && !replayed(i))
                .collect();
            settled.sort_by_key(|i| i.settle_index);
            backlog.extend(settled);
        }
        // Room for the whole backlog (LND delivers all of it) and 256 live updates.
        let (tx, rx) = tokio::sync::mpsc::channel(backlog.len() + 256);
        for inv in backlog {
            let _ = tx.try_send(Ok(inv.clone()));
        }
        s.subscribers.push(tx);
        let stream: BoxStream<proto::Invoice> =
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }

    /// Decodes an invoice of this node or of another node of the network.
    async fn decode_pay_req(
        &self,
        request: Request<proto::PayReqString>,
    ) -> Result<Response<proto::PayReq>, Status> {
        let (own, extra) = {
            let s = self.authorized(&request, "offchain:read")?;
            let own = s
                .invoices
                .iter()
                .find(|i| i.payment_request == request.get_ref().pay_req)
                .map(|i| (i.clone(), s.pubkey_hex()));
            (own, i64::from(s.mode == LndMode::DecodeDisagrees))
        };
        let (inv, destination) = match own {
            Some(found) => found,
            None => self
                .find_on_network(&request.get_ref().pay_req)
                .map(|(_, inv, key)| (inv, key))
                .ok_or_else(|| Status::invalid_argument("invalid payment request"))?,
        };
        Ok(Response::new(proto::PayReq {
            destination,
            payment_hash: hex::encode(&inv.r_hash),
            num_satoshis: inv.value + extra,
            timestamp: inv.creation_date,
            expiry: inv.expiry,
            description: inv.memo.clone(),
            num_msat: (inv.value + extra) * 1000,
            payment_addr: inv.payment_addr.clone(),
            cltv_expiry: 18,
            ..proto::PayReq::default()
        }))
    }
}

/// A final or in-flight `lnrpc.Payment` update.
fn payment(
    inv: Option<&proto::Invoice>,
    request: &str,
    status: proto::payment::PaymentStatus,
) -> proto::Payment {
    proto::Payment {
        payment_hash: inv.map(|i| hex::encode(&i.r_hash)).unwrap_or_default(),
        value_sat: inv.map_or(0, |i| i.value),
        value_msat: inv.map_or(0, |i| i.value_msat),
        payment_request: request.to_owned(),
        status: status as i32,
        creation_time_ns: now_s().saturating_mul(1_000_000_000),
        ..proto::Payment::default()
    }
}

#[tonic::async_trait]
impl Router for Node {
    /// Pays an invoice of another node of the network (settling it there), or one of
    /// this node's own when self-payments are allowed, as LND would: FAILED with
    /// `NO_ROUTE` for an invoice no node knows, for its own invoice without
    /// `allow_self_payment`, under `PaymentFails`, or when its routing fee is above
    /// `fee_limit_sat`; `AlreadyExists` for a settled one.
    async fn send_payment_v2(
        &self,
        request: Request<SendPaymentRequest>,
    ) -> Result<Response<BoxStream<proto::Payment>>, Status> {
        use proto::payment::PaymentStatus;
        let (own, self_ok, mode, route_fee, r) = {
            let mut s = self.authorized(&request, "offchain:write")?;
            let r = request.into_inner();
            s.payment_calls.push(r.clone());
            if !r.payment_request.to_ascii_lowercase().starts_with("ln") {
                return Err(Status::invalid_argument("invalid payment request"));
            }
            let own = s
                .invoices
                .iter()
                .find(|i| i.payment_request == r.payment_request)
                .cloned();
            let self_ok = r.allow_self_payment || s.allow_self_payment;
            (own, self_ok, s.mode, s.route_fee_sat, r)
        };
        // Where the invoice lives: this node, or another one reached over the network.
        let (payee, inv) = match own {
            Some(i) => (Some(Arc::clone(&self.state)), Some(i)),
            None => match self.find_on_network(&r.payment_request) {
                Some((peer, i, _)) => (Some(peer), Some(i)),
                None => (None, None),
            },
        };
        let to_self = payee.as_ref().is_some_and(|p| Arc::ptr_eq(p, &self.state));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let failed = |reason: proto::PaymentFailureReason| {
            let mut p = payment(inv.as_ref(), &r.payment_request, PaymentStatus::Failed);
            p.failure_reason = reason as i32;
            p
        };
        let no_route = || failed(proto::PaymentFailureReason::FailureReasonNoRoute);
        let update = match (&inv, &payee, mode) {
            (Some(i), _, _) if i.state == INVOICE_SETTLED => {
                return Err(Status::already_exists("invoice is already paid"));
            }
            (None, _, _) | (_, None, _) | (_, _, LndMode::PaymentFails) => Some(no_route()),
            _ if to_self && !self_ok => Some(no_route()),
            _ if route_fee > r.fee_limit_sat => Some(no_route()),
            (Some(i), Some(_), LndMode::PaymentInFlight) => {
                self.state()?.held.push(tx.clone());
                (!r.no_inflight_updates)
                    .then(|| payment(Some(i), &r.payment_request, PaymentStatus::InFlight))
            }
            (Some(i), Some(payee), _) => {
                let settled = payee
                    .lock()
                    .map_err(|_| Status::internal("mock state poisoned"))?
                    .settle(&r.payment_request);
                if !settled {
                    return Err(Status::internal("the invoice went away"));
                }
                let mut p = payment(Some(i), &r.payment_request, PaymentStatus::Succeeded);
                p.payment_preimage = hex::encode(&i.r_preimage);
                p.fee_sat = route_fee;
                p.fee_msat = route_fee.saturating_mul(1000);
                Some(p)
            }
        };
        if let Some(u) = update {
            let _ = tx.try_send(Ok(u));
        }
        let stream: BoxStream<proto::Payment> =
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }
}

impl MockLnd {
    /// Starts a node whose only macaroon is `macaroon_hex`, with the permissions of an
    /// admin macaroon, on a loopback port the kernel picks.
    pub fn start(macaroon_hex: &str) -> MockLnd {
        MockLnd::start_with(vec![Macaroon {
            hex: macaroon_hex.to_owned(),
            permissions: ADMIN_PERMISSIONS,
        }])
    }

    /// Starts a node knowing an invoice macaroon and an admin macaroon (hex).
    pub fn start_with_invoice_and_admin(invoice_hex: &str, admin_hex: &str) -> MockLnd {
        MockLnd::start_with(vec![
            Macaroon {
                hex: invoice_hex.to_owned(),
                permissions: INVOICE_PERMISSIONS,
            },
            Macaroon {
                hex: admin_hex.to_owned(),
                permissions: ADMIN_PERMISSIONS,
            },
        ])
    }

    /// Starts a node accepting these macaroons, on a loopback port the kernel picks, in a
    /// network of its own.
    pub fn start_with(macaroons: Vec<Macaroon>) -> MockLnd {
        MockLnd::start_in(macaroons, Arc::default(), FIRST_KEY_SEED)
    }

    /// Starts another node in this node's network: its own key, certificate, port and
    /// invoices, the same macaroons. Either node's SendPaymentV2 pays (settles) the
    /// other's invoices, as if a channel joined them.
    pub fn start_peer(&self) -> MockLnd {
        let (macaroons, seed) = match self.state.lock() {
            Ok(s) => (s.macaroons.clone(), s.key_seed),
            Err(_) => panic!("mock state poisoned"),
        };
        let n = self.network.lock().map_or(1, |n| n.len());
        let seed = seed.wrapping_add(u8::try_from(n).unwrap_or(u8::MAX));
        MockLnd::start_in(macaroons, Arc::clone(&self.network), seed)
    }

    fn start_in(macaroons: Vec<Macaroon>, network: Network, key_seed: u8) -> MockLnd {
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("self-signed certificate");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the mock node");
        let state = Arc::new(Mutex::new(LndState {
            invoices: Vec::new(),
            mode: LndMode::Normal,
            macaroons,
            allow_self_payment: false,
            key_seed,
            network_prefix: "bcrt".to_owned(),
            route_fee_sat: 1,
            payment_calls: Vec::new(),
            list_calls: 0,
            held: Vec::new(),
            subscribers: Vec::new(),
            next_settle: 0,
        }));
        network
            .lock()
            .expect("the mock network")
            .push(Arc::clone(&state));
        let mut m = MockLnd {
            addr: listener.local_addr().expect("the mock node's address"),
            cert_pem: cert.cert.pem(),
            key_pem: cert.key_pair.serialize_pem(),
            state,
            network,
            runtime: None,
        };
        m.serve(listener);
        m
    }

    /// The node's public key, hex.
    pub fn pubkey_hex(&self) -> String {
        self.state.lock().expect("mock state").pubkey_hex()
    }

    /// Starts serving again after [`MockLnd::stop`], on the same port with the same
    /// state: the node a plugin knows comes back at its address. The port was released
    /// by `stop` (that is what a node going away looks like), so binding it again is
    /// retried for a while in case the kernel has not freed it yet.
    pub fn resume(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() >= deadline => {
                    panic!("cannot listen on {} again: {e}", self.addr)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        self.serve(listener);
    }

    /// Serves the node's services on `listener` from a runtime of its own.
    fn serve(&mut self, listener: std::net::TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let node = || Node {
            state: Arc::clone(&self.state),
            network: Arc::clone(&self.network),
        };
        let lightning = LightningServer::new(node());
        let router = RouterServer::new(node());
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("a tokio listener")
        };
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("tls config")
                .add_service(lightning)
                .add_service(router)
                .serve_with_incoming(incoming)
                .await;
        });
        self.runtime = Some(runtime);
    }

    /// Stops serving: the listener and every connection are dropped.
    pub fn stop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.subscribers.clear();
            s.held.clear();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for MockLnd {
    fn drop(&mut self) {
        self.stop();
        // Leave the network: the other nodes no longer reach this one.
        if let Ok(mut n) = self.network.lock() {
            n.retain(|s| !Arc::ptr_eq(s, &self.state));
        }
    }
}
