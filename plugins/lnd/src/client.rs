//! A minimal LND gRPC client: TLS with the node's certificate, the macaroon in the
//! `macaroon` metadata of every call, and the few `lnrpc.Lightning` methods and the
//! `routerrpc.Router` method needed, called through tonic's generic client (no generated
//! code).

use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::proto::{self, path};

/// How a payment ended, as far as this client saw.
#[derive(Debug, Clone, PartialEq)]
pub enum PayOutcome {
    /// A final update: `status` is SUCCEEDED or FAILED.
    Final(proto::Payment),
    /// No final update within the wait: the payment may still succeed or fail.
    Pending {
        /// The last non-final update, if any.
        last: Option<proto::Payment>,
        /// Why the wait ended before the timeout, if it did.
        why: Option<String>,
    },
}

/// A connection to one LND node (cheap to clone).
#[derive(Clone)]
pub struct Lnd {
    channel: Channel,
    macaroon: MetadataValue<tonic::metadata::Ascii>,
    timeout: Duration,
}

impl std::fmt::Debug for Lnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lnd { .. }")
    }
}

/// Why a call failed, without secrets: the gRPC code and message.
pub fn describe(status: &Status) -> String {
    let msg: String = status.message().chars().take(200).collect();
    if msg.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {msg}", status.code())
    }
}

impl Lnd {
    /// A lazily connecting client for `address` (`host:port` or `https://host:port`).
    pub fn new(
        address: &str,
        tls_cert_pem: &[u8],
        domain: Option<&str>,
        macaroon_hex: &str,
        timeout: Duration,
    ) -> Result<Lnd, String> {
        let uri = if address.starts_with("https://") {
            address.to_owned()
        } else {
            format!("https://{address}")
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(tls_cert_pem));
        if let Some(d) = domain {
            tls = tls.domain_name(d);
        }
        let channel = Endpoint::from_shared(uri)
            .map_err(|_| format!("address {address:?} is not a host:port"))?
            .tls_config(tls)
            .map_err(|e| format!("TLS setup: {e}"))?
            .connect_timeout(timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let macaroon = MetadataValue::try_from(macaroon_hex)
            .map_err(|_| "the macaroon is not valid hex".to_owned())?;
        Ok(Lnd {
            channel,
            macaroon,
            timeout,
        })
    }

    fn request<T>(&self, msg: T, deadline: bool) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert("macaroon", self.macaroon.clone());
        if deadline {
            r.set_timeout(self.timeout);
        }
        r
    }

    async fn unary<Q, A>(&self, path: &'static str, msg: Q) -> Result<A, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("not connected: {e}")))?;
        let codec = tonic::codec::ProstCodec::<Q, A>::default();
        let call = grpc.unary(
            self.request(msg, true),
            PathAndQuery::from_static(path),
            codec,
        );
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map(|r| r.into_inner()),
            Err(_) => Err(Status::deadline_exceeded("no answer within the timeout")),
        }
    }

    /// AddInvoice.
    pub async fn add_invoice(
        &self,
        inv: proto::Invoice,
    ) -> Result<proto::AddInvoiceResponse, Status> {
        self.unary(path::ADD_INVOICE, inv).await
    }

    /// ListInvoices.
    pub async fn list_invoices(
        &self,
        req: proto::ListInvoiceRequest,
    ) -> Result<proto::ListInvoiceResponse, Status> {
        self.unary(path::LIST_INVOICES, req).await
    }

    /// DecodePayReq.
    pub async fn decode_pay_req(&self, pay_req: &str) -> Result<proto::PayReq, Status> {
        self.unary(
            path::DECODE_PAY_REQ,
            proto::PayReqString {
                pay_req: pay_req.to_owned(),
            },
        )
        .await
    }

    /// Pays with the Router's SendPaymentV2 and follows its `lnrpc.Payment` updates for at
    /// most `wait` after sending: [`PayOutcome::Final`] with the first SUCCEEDED or FAILED
    /// update, or [`PayOutcome::Pending`] when none came in time (or the stream ended or
    /// broke without one): then the payment may still succeed or fail. `Err`: the call was
    /// refused (e.g. `AlreadyExists` for an invoice already paid) or could not be sent.
    pub async fn send_payment_v2(
        &self,
        req: proto::SendPaymentRequest,
        wait: Duration,
    ) -> Result<PayOutcome, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        match tokio::time::timeout(self.timeout, grpc.ready()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Status::unavailable(format!("not connected: {e}"))),
            Err(_) => return Err(Status::unavailable("not connected within the timeout")),
        }
        // From here on the request may have reached LND: a timeout is not a failure.
        let deadline = tokio::time::Instant::now() + wait;
        let codec =
            tonic::codec::ProstCodec::<proto::SendPaymentRequest, proto::Payment>::default();
        let call = grpc.server_streaming(
            self.request(req, false),
            PathAndQuery::from_static(path::SEND_PAYMENT_V2),
            codec,
        );
        let mut stream = match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                return Ok(PayOutcome::Pending {
                    last: None,
                    why: None,
                })
            }
        };
        let mut last = None;
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(p)))
                    if p.status == proto::PAYMENT_SUCCEEDED
                        || p.status == proto::PAYMENT_FAILED =>
                {
                    return Ok(PayOutcome::Final(p));
                }
                Ok(Ok(Some(p))) => last = Some(p),
                Ok(Ok(None)) => {
                    return Ok(PayOutcome::Pending {
                        last,
                        why: Some("the update stream ended without a final status".into()),
                    })
                }
                Ok(Err(s)) => {
                    return Ok(PayOutcome::Pending {
                        last,
                        why: Some(format!("the update stream broke: {}", describe(&s))),
                    })
                }
                Err(_) => return Ok(PayOutcome::Pending { last, why: None }),
            }
        }
    }

    /// SubscribeInvoices: a stream of added and settled invoices after the indexes.
    pub async fn subscribe_invoices(
        &self,
        sub: proto::InvoiceSubscription,
    ) -> Result<Streaming<proto::Invoice>, Status> {
        self.server_streaming(path::SUBSCRIBE_INVOICES, sub).await
    }

    /// Opens a server-streaming call (no deadline on the stream itself).
    async fn server_streaming<Q, A>(
        &self,
        path: &'static str,
        msg: Q,
    ) -> Result<Streaming<A>, Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("not connected: {e}")))?;
        let codec = tonic::codec::ProstCodec::<Q, A>::default();
        let call = grpc.server_streaming(
            self.request(msg, false),
            PathAndQuery::from_static(path),
            codec,
        );
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map(|r| r.into_inner()),
            Err(_) => Err(Status::deadline_exceeded("no answer within the timeout")),
        }
    }
}
