//! A local stand-in for LND (which cannot be installed here) for the Lightning plugin's
//! tests: a real gRPC server over TLS whose messages and `lnrpc.Lightning` service are
//! generated at build time from LND's own `lightning.proto` (vendored in
//! `tests/proto/lnd/`, see [`crate::lnrpc`]) — not from the plugin's hand-written
//! declarations, so a wrong field number or type in the plugin shows up as a failure.
//!
//! It implements the methods the plugin calls — AddInvoice, ListInvoices (paged by add
//! index), SubscribeInvoices (replay after add/settle index, then live), DecodePayReq,
//! SendPaymentSync — and every other method of the service answers `Unimplemented`.
//! Every call must carry the accepted macaroon in its `macaroon` metadata
//! (`Unauthenticated` otherwise). The TLS certificate is self-signed, made with rcgen for
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
    /// SendPaymentSync answers with a payment error.
    PaymentFails,
}

/// The node's invoices and the live subscriptions.
#[derive(Debug)]
pub struct LndState {
    /// Invoices in add order (add_index = position + 1).
    pub invoices: Vec<proto::Invoice>,
    /// Behaviour.
    pub mode: LndMode,
    /// The macaroon (hex) it accepts.
    pub macaroon_hex: String,
    subscribers: Vec<tokio::sync::mpsc::Sender<Result<proto::Invoice, Status>>>,
    next_settle: u64,
}

impl LndState {
    fn push(&mut self, inv: &proto::Invoice) {
        self.subscribers
            .retain(|s| s.try_send(Ok(inv.clone())).is_ok());
    }

    /// Adds an invoice; returns its payment request.
    pub fn add(&mut self, memo: &str, value: i64, private: bool) -> String {
        let n = self.invoices.len() as u64 + 1;
        let request = format!("lnbcrt{value}n1pmock{n:08}");
        let inv = proto::Invoice {
            memo: memo.to_owned(),
            r_hash: n.to_be_bytes().to_vec(),
            value,
            creation_date: now_s(),
            payment_request: request.clone(),
            expiry: 3600,
            private,
            add_index: n,
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
        let mode = self.authorized(&request)?.mode;
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
        Ok(Response::new(proto::PayReq {
            destination: "02".to_owned() + &"ab".repeat(32),
            payment_hash: hex::encode(&inv.r_hash),
            num_satoshis: inv.value,
            timestamp: inv.creation_date,
            expiry: inv.expiry,
            description: inv.memo.clone(),
            num_msat: inv.value * 1000,
            ..proto::PayReq::default()
        }))
    }

    async fn send_payment_sync(
        &self,
        request: Request<proto::SendRequest>,
    ) -> Result<Response<proto::SendResponse>, Status> {
        let mut s = self.authorized(&request)?;
        let r = request.into_inner();
        if s.mode == LndMode::PaymentFails {
            return Ok(Response::new(proto::SendResponse {
                payment_error: "unable to find a path to destination".into(),
                ..proto::SendResponse::default()
            }));
        }
        let hash = s
            .invoices
            .iter()
            .find(|i| i.payment_request == r.payment_request)
            .map(|i| i.r_hash.clone());
        if !s.settle(&r.payment_request) {
            return Err(Status::invalid_argument("invalid payment request"));
        }
        Ok(Response::new(proto::SendResponse {
            payment_preimage: vec![7; 32],
            payment_hash: hash.unwrap_or_default(),
            ..proto::SendResponse::default()
        }))
    }
}

impl MockLnd {
    /// Starts a node accepting `macaroon_hex`, on a free loopback port.
    pub fn start(macaroon_hex: &str) -> MockLnd {
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("self-signed certificate");
        let port = crate::localstripe::free_port();
        let mut m = MockLnd {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            cert_pem: cert.cert.pem(),
            key_pem: cert.key_pair.serialize_pem(),
            state: Arc::new(Mutex::new(LndState {
                invoices: Vec::new(),
                mode: LndMode::Normal,
                macaroon_hex: macaroon_hex.to_owned(),
                subscribers: Vec::new(),
                next_settle: 0,
            })),
            runtime: None,
        };
        m.resume();
        m
    }

    /// (Re)starts serving on the same port with the same state.
    pub fn resume(&mut self) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let svc = LightningServer::new(Node(Arc::clone(&self.state)));
        let addr = self.addr;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let listener = loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            let _ = ready_tx.send(());
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("tls config")
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        self.runtime = Some(runtime);
    }

    /// Stops serving: the listener and every connection are dropped.
    pub fn stop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.subscribers.clear();
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
