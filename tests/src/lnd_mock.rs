//! A local stand-in for LND (which cannot be installed here) for the Lightning plugin's
//! tests: a real gRPC server over TLS whose messages and `lnrpc.Lightning` and
//! `routerrpc.Router` services are generated at build time from LND's own
//! `lightning.proto` and `routerrpc/router.proto` (v0.21.2-beta, vendored in
//! `tests/proto/lnd/`, see [`crate::lnrpc`]) — not from the plugin's hand-written
//! declarations, so a wrong field number or type in the plugin shows up as a failure.
//!
//! It implements the methods the plugin calls — AddInvoice, ListInvoices (paged by add
//! index), SubscribeInvoices (replay after add/settle index, then live), DecodePayReq and
//! the Router's SendPaymentV2 — and every other method of the two services answers
//! `Unimplemented` (LND v0.21 has no `SendPaymentSync`). Invoices are real BOLT 11
//! ([`crate::bolt11`]): signed by a fixed node key ([`node_key`]), for the network of
//! [`LndState::network_prefix`] (regtest `lnbcrt` by default), described by the memo,
//! for `value` sats, with the SHA-256 of a random preimage as payment hash. Every call
//! must carry the accepted macaroon in its `macaroon` metadata (`Unauthenticated`
//! otherwise). The TLS certificate is self-signed, made with rcgen for `localhost` and
//! 127.0.0.1. It listens on 127.0.0.1 only, and can be stopped (all connections dropped)
//! and started again on the same port with the same state.

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

/// The mock node's identity key (fixed): it signs every invoice.
pub fn node_key() -> k256::ecdsa::SigningKey {
    k256::ecdsa::SigningKey::from_slice(&[0x4d; 32]).expect("a valid secp256k1 key")
}

/// The mock node's public key, hex (as LND's `destination` and `identity_pubkey`).
pub fn node_pubkey_hex() -> String {
    hex::encode(crate::bolt11::public_key(&node_key()))
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
    /// The macaroon (hex) it accepts.
    pub macaroon_hex: String,
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
    fn push(&mut self, inv: &proto::Invoice) {
        self.subscribers
            .retain(|s| s.try_send(Ok(inv.clone())).is_ok());
    }

    /// Adds an invoice (a real BOLT 11 signed by [`node_key`]; `value` 0 or less: "any
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
        let request = crate::bolt11::encode(&spec, &node_key());
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

/// A running (or stopped) mock node.
pub struct MockLnd {
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    /// The TLS certificate (PEM) clients must trust.
    pub cert_pem: String,
    key_pem: String,
    /// Shared state.
    pub state: Arc<Mutex<LndState>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The service: LND's generated `Lightning` trait over the shared state.
struct Node(Arc<Mutex<LndState>>);

impl Node {
    /// The state, after checking the call's macaroon.
    #[allow(clippy::result_large_err)] // tonic::Status is what the service returns
    fn authorized<T>(&self, req: &Request<T>) -> Result<MutexGuard<'_, LndState>, Status> {
        let state = self.state()?;
        match req.metadata().get("macaroon").and_then(|v| v.to_str().ok()) {
            Some(m) if m == state.macaroon_hex => Ok(state),
            Some(_) => Err(Status::unauthenticated(
                "verification failed: signature mismatch",
            )),
            None => Err(Status::unauthenticated("expected 1 macaroon, got 0")),
        }
    }

    #[allow(clippy::result_large_err)]
    fn state(&self) -> Result<MutexGuard<'_, LndState>, Status> {
        self.0
            .lock()
            .map_err(|_| Status::internal("mock state poisoned"))
    }
}

#[tonic::async_trait]
impl Lightning for Node {
    async fn add_invoice(
        &self,
        request: Request<proto::Invoice>,
    ) -> Result<Response<proto::AddInvoiceResponse>, Status> {
        let mut s = self.authorized(&request)?;
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

    async fn list_invoices(
        &self,
        request: Request<proto::ListInvoiceRequest>,
    ) -> Result<Response<proto::ListInvoiceResponse>, Status> {
        let mode = {
            let mut s = self.authorized(&request)?;
            s.list_calls += 1;
            s.mode
        };
        if let LndMode::SlowList(d) = mode {
            tokio::time::sleep(d).await;
        }
        let r = request.into_inner();
        let s = self.state()?;
        let page: Vec<proto::Invoice> = s
            .invoices
            .iter()
            .filter(|i| {
                i.add_index > r.index_offset && (!r.pending_only || i.state == INVOICE_OPEN)
            })
            .take(r.num_max_invoices.max(1) as usize)
            .cloned()
            .collect();
        Ok(Response::new(proto::ListInvoiceResponse {
            first_index_offset: page.first().map_or(r.index_offset, |i| i.add_index),
            last_index_offset: page.last().map_or(r.index_offset, |i| i.add_index),
            invoices: page,
        }))
    }

    async fn subscribe_invoices(
        &self,
        request: Request<proto::InvoiceSubscription>,
    ) -> Result<Response<BoxStream<proto::Invoice>>, Status> {
        let mut s = self.authorized(&request)?;
        let sub = request.get_ref();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        for inv in &s.invoices {
            if inv.add_index > sub.add_index
                || (inv.settle_index > 0 && inv.settle_index > sub.settle_index)
            {
                let _ = tx.try_send(Ok(inv.clone()));
            }
        }
        s.subscribers.push(tx);
        let stream: BoxStream<proto::Invoice> =
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::new(stream))
    }

    async fn decode_pay_req(
        &self,
        request: Request<proto::PayReqString>,
    ) -> Result<Response<proto::PayReq>, Status> {
        let s = self.authorized(&request)?;
        let r = request.get_ref();
        let inv = s
            .invoices
            .iter()
            .find(|i| i.payment_request == r.pay_req)
            .ok_or_else(|| Status::invalid_argument("invalid payment request"))?;
        let extra = i64::from(s.mode == LndMode::DecodeDisagrees);
        Ok(Response::new(proto::PayReq {
            destination: node_pubkey_hex(),
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
    /// Pays one of this node's own invoices (settling it) as LND would: FAILED with
    /// `NO_ROUTE` for an invoice it does not know, under `PaymentFails`, or when its
    /// routing fee is above `fee_limit_sat`; `AlreadyExists` for a settled one.
    async fn send_payment_v2(
        &self,
        request: Request<SendPaymentRequest>,
    ) -> Result<Response<BoxStream<proto::Payment>>, Status> {
        use proto::payment::PaymentStatus;
        let mut s = self.authorized(&request)?;
        let r = request.into_inner();
        s.payment_calls.push(r.clone());
        if !r.payment_request.to_ascii_lowercase().starts_with("ln") {
            return Err(Status::invalid_argument("invalid payment request"));
        }
        let inv = s
            .invoices
            .iter()
            .find(|i| i.payment_request == r.payment_request)
            .cloned();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let failed = |reason: proto::PaymentFailureReason| {
            let mut p = payment(inv.as_ref(), &r.payment_request, PaymentStatus::Failed);
            p.failure_reason = reason as i32;
            p
        };
        let update = match (&inv, s.mode) {
            (Some(i), _) if i.state == INVOICE_SETTLED => {
                return Err(Status::already_exists("invoice is already paid"));
            }
            (None, _) | (_, LndMode::PaymentFails) => {
                Some(failed(proto::PaymentFailureReason::FailureReasonNoRoute))
            }
            (Some(_), _) if s.route_fee_sat > r.fee_limit_sat => {
                Some(failed(proto::PaymentFailureReason::FailureReasonNoRoute))
            }
            (Some(i), LndMode::PaymentInFlight) => {
                s.held.push(tx.clone());
                (!r.no_inflight_updates)
                    .then(|| payment(Some(i), &r.payment_request, PaymentStatus::InFlight))
            }
            (Some(i), _) => {
                s.settle(&r.payment_request);
                let mut p = payment(Some(i), &r.payment_request, PaymentStatus::Succeeded);
                p.payment_preimage = hex::encode(&i.r_preimage);
                p.fee_sat = s.route_fee_sat;
                p.fee_msat = s.route_fee_sat.saturating_mul(1000);
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
    /// Starts a node accepting `macaroon_hex`, on a loopback port the kernel picks.
    pub fn start(macaroon_hex: &str) -> MockLnd {
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("self-signed certificate");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the mock node");
        let mut m = MockLnd {
            addr: listener.local_addr().expect("the mock node's address"),
            cert_pem: cert.cert.pem(),
            key_pem: cert.key_pair.serialize_pem(),
            state: Arc::new(Mutex::new(LndState {
                invoices: Vec::new(),
                mode: LndMode::Normal,
                macaroon_hex: macaroon_hex.to_owned(),
                network_prefix: "bcrt".to_owned(),
                route_fee_sat: 1,
                payment_calls: Vec::new(),
                list_calls: 0,
                held: Vec::new(),
                subscribers: Vec::new(),
                next_settle: 0,
            })),
            runtime: None,
        };
        m.serve(listener);
        m
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
        let lightning = LightningServer::new(Node(Arc::clone(&self.state)));
        let router = RouterServer::new(Node(Arc::clone(&self.state)));
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
    }
}
