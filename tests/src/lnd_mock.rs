//! A local LND for the Lightning plugin's tests: a tonic gRPC server over TLS (a
//! self-signed certificate made with rcgen for `localhost` and 127.0.0.1) implementing
//! the subset of `lnrpc.Lightning` the plugin uses — AddInvoice, ListInvoices (paged by
//! add index), SubscribeInvoices (replay after add/settle index, then live), DecodePayReq,
//! SendPaymentSync — and checking the `macaroon` metadata of every call
//! (`Unauthenticated` otherwise). It shares the plugin's message declarations
//! (`plugins/lnd/src/proto.rs`). It listens on 127.0.0.1 only, can be stopped (all
//! connections dropped) and started again on the same port with the same state.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::codegen::{empty_body, http, BoxFuture, BoxStream, Service, StdError};
use tonic::{Request, Response, Status};

pub use crate::lnd_proto as proto;

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
        inv.state = proto::INVOICE_SETTLED;
        inv.settled = true;
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

#[derive(Clone)]
struct Lightning(Arc<Mutex<LndState>>);

impl tonic::server::NamedService for Lightning {
    const NAME: &'static str = "lnrpc.Lightning";
}

#[allow(clippy::result_large_err)] // tonic::Status is what the service returns
fn authorized<T>(state: &Mutex<LndState>, req: &Request<T>) -> Result<(), Status> {
    let want = state.lock().unwrap().macaroon_hex.clone();
    match req.metadata().get("macaroon").and_then(|v| v.to_str().ok()) {
        Some(m) if m == want => Ok(()),
        Some(_) => Err(Status::unauthenticated(
            "verification failed: signature mismatch",
        )),
        None => Err(Status::unauthenticated("expected 1 macaroon, got 0")),
    }
}

macro_rules! unary {
    ($name:ident, $req:ty, $resp:ty, |$st:ident, $r:ident| $body:expr) => {
        struct $name(Arc<Mutex<LndState>>);
        impl tonic::server::UnaryService<$req> for $name {
            type Response = $resp;
            type Future = BoxFuture<Response<$resp>, Status>;
            fn call(&mut self, request: Request<$req>) -> Self::Future {
                let state = Arc::clone(&self.0);
                Box::pin(async move {
                    authorized(&state, &request)?;
                    let $r = request.into_inner();
                    let $st = state;
                    let out: Result<$resp, Status> = async { $body }.await;
                    out.map(Response::new)
                })
            }
        }
    };
}

unary!(
    AddInvoice,
    proto::Invoice,
    proto::AddInvoiceResponse,
    |st, r| {
        let mut s = st.lock().unwrap();
        let request = s.add(&r.memo, r.value, r.private);
        let inv = s.invoices.last().cloned().unwrap_or_default();
        Ok(proto::AddInvoiceResponse {
            r_hash: inv.r_hash,
            payment_request: request,
            add_index: inv.add_index,
        })
    }
);

unary!(
    ListInvoices,
    proto::ListInvoiceRequest,
    proto::ListInvoiceResponse,
    |st, r| {
        let mode = st.lock().unwrap().mode;
        if let LndMode::SlowList(d) = mode {
            tokio::time::sleep(d).await;
        }
        let s = st.lock().unwrap();
        let page: Vec<proto::Invoice> = s
            .invoices
            .iter()
            .filter(|i| i.add_index > r.index_offset && (!r.pending_only || i.state == 0))
            .take(r.num_max_invoices.max(1) as usize)
            .cloned()
            .collect();
        Ok(proto::ListInvoiceResponse {
            first_index_offset: page.first().map_or(r.index_offset, |i| i.add_index),
            last_index_offset: page.last().map_or(r.index_offset, |i| i.add_index),
            invoices: page,
        })
    }
);

unary!(DecodePayReq, proto::PayReqString, proto::PayReq, |st, r| {
    let s = st.lock().unwrap();
    let inv = s
        .invoices
        .iter()
        .find(|i| i.payment_request == r.pay_req)
        .ok_or_else(|| Status::invalid_argument("invalid payment request"))?;
    Ok(proto::PayReq {
        destination: "02".to_owned() + &"ab".repeat(32),
        payment_hash: hex::encode(&inv.r_hash),
        num_satoshis: inv.value,
        timestamp: inv.creation_date,
        expiry: inv.expiry,
        description: inv.memo.clone(),
        num_msat: inv.value * 1000,
    })
});

unary!(
    SendPaymentSync,
    proto::SendRequest,
    proto::SendResponse,
    |st, r| {
        let mut s = st.lock().unwrap();
        if s.mode == LndMode::PaymentFails {
            return Ok(proto::SendResponse {
                payment_error: "unable to find a path to destination".into(),
                ..proto::SendResponse::default()
            });
        }
        if !s.settle(&r.payment_request) {
            return Err(Status::invalid_argument("invalid payment request"));
        }
        Ok(proto::SendResponse {
            payment_preimage: vec![7; 32],
            ..proto::SendResponse::default()
        })
    }
);

struct Subscribe(Arc<Mutex<LndState>>);

impl tonic::server::ServerStreamingService<proto::InvoiceSubscription> for Subscribe {
    type Response = proto::Invoice;
    type ResponseStream = BoxStream<proto::Invoice>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
    fn call(&mut self, request: Request<proto::InvoiceSubscription>) -> Self::Future {
        let state = Arc::clone(&self.0);
        Box::pin(async move {
            authorized(&state, &request)?;
            let sub = request.into_inner();
            let (tx, rx) = tokio::sync::mpsc::channel(256);
            {
                let mut s = state.lock().unwrap();
                for inv in &s.invoices {
                    if inv.add_index > sub.add_index
                        || (inv.settle_index > 0 && inv.settle_index > sub.settle_index)
                    {
                        let _ = tx.try_send(Ok(inv.clone()));
                    }
                }
                s.subscribers.push(tx);
            }
            let stream: BoxStream<proto::Invoice> =
                Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
            Ok(Response::new(stream))
        })
    }
}

impl<B> Service<http::Request<B>> for Lightning
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let st = Arc::clone(&self.0);
        match req.uri().path() {
            "/lnrpc.Lightning/AddInvoice" => Box::pin(async move {
                Ok(
                    tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                        .unary(AddInvoice(st), req)
                        .await,
                )
            }),
            "/lnrpc.Lightning/ListInvoices" => Box::pin(async move {
                Ok(
                    tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                        .unary(ListInvoices(st), req)
                        .await,
                )
            }),
            "/lnrpc.Lightning/DecodePayReq" => Box::pin(async move {
                Ok(
                    tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                        .unary(DecodePayReq(st), req)
                        .await,
                )
            }),
            "/lnrpc.Lightning/SendPaymentSync" => Box::pin(async move {
                Ok(
                    tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                        .unary(SendPaymentSync(st), req)
                        .await,
                )
            }),
            "/lnrpc.Lightning/SubscribeInvoices" => Box::pin(async move {
                Ok(
                    tonic::server::Grpc::new(tonic::codec::ProstCodec::default())
                        .server_streaming(Subscribe(st), req)
                        .await,
                )
            }),
            _ => Box::pin(async move {
                Ok(http::Response::builder()
                    .status(200)
                    .header(
                        "grpc-status",
                        (tonic::Code::Unimplemented as i32).to_string(),
                    )
                    .header("content-type", "application/grpc")
                    .body(empty_body())
                    .unwrap())
            }),
        }
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
        let svc = Lightning(Arc::clone(&self.state));
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
