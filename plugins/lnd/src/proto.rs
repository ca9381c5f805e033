//! The messages of LND's `lnrpc.Lightning` and `routerrpc.Router` services this plugin
//! uses, written by hand with prost's derive (no `protoc`). Only the fields read or
//! written are declared; the field numbers and types are those of LND's `lightning.proto`
//! and `routerrpc/router.proto`, and unknown fields in answers are skipped by the decoder.
//! The `wire` tests in `tests/tests/lnd.rs` encode each of these messages and decode it as
//! the type generated from LND's own files (v0.21.2-beta, vendored in
//! `tests/proto/lnd/`), and the reverse, field by field.

/// `lnrpc.Invoice` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Invoice {
    /// Description (our binding memo).
    #[prost(string, tag = "1")]
    pub memo: String,
    /// Payment hash.
    #[prost(bytes = "vec", tag = "4")]
    pub r_hash: Vec<u8>,
    /// Amount in satoshis.
    #[prost(int64, tag = "5")]
    pub value: i64,
    /// Deprecated `settled` flag (older LNDs).
    #[prost(bool, tag = "6")]
    pub settled: bool,
    /// Creation time (Unix seconds).
    #[prost(int64, tag = "7")]
    pub creation_date: i64,
    /// Settlement time (Unix seconds).
    #[prost(int64, tag = "8")]
    pub settle_date: i64,
    /// BOLT 11 request.
    #[prost(string, tag = "9")]
    pub payment_request: String,
    /// Expiry in seconds.
    #[prost(int64, tag = "11")]
    pub expiry: i64,
    /// Include private route hints.
    #[prost(bool, tag = "15")]
    pub private: bool,
    /// Add index.
    #[prost(uint64, tag = "16")]
    pub add_index: u64,
    /// Settle index.
    #[prost(uint64, tag = "17")]
    pub settle_index: u64,
    /// Amount paid in satoshis.
    #[prost(int64, tag = "19")]
    pub amt_paid_sat: i64,
    /// State: 0 open, 1 settled, 2 canceled, 3 accepted.
    #[prost(int32, tag = "21")]
    pub state: i32,
}

/// `InvoiceState.SETTLED`.
pub const INVOICE_SETTLED: i32 = 1;

/// `lnrpc.AddInvoiceResponse` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddInvoiceResponse {
    /// Payment hash.
    #[prost(bytes = "vec", tag = "1")]
    pub r_hash: Vec<u8>,
    /// BOLT 11 request.
    #[prost(string, tag = "2")]
    pub payment_request: String,
    /// Add index.
    #[prost(uint64, tag = "16")]
    pub add_index: u64,
}

/// `lnrpc.ListInvoiceRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListInvoiceRequest {
    /// Only open invoices.
    #[prost(bool, tag = "1")]
    pub pending_only: bool,
    /// Start after this add index.
    #[prost(uint64, tag = "4")]
    pub index_offset: u64,
    /// Page size.
    #[prost(uint64, tag = "5")]
    pub num_max_invoices: u64,
    /// Newest first.
    #[prost(bool, tag = "6")]
    pub reversed: bool,
}

/// `lnrpc.ListInvoiceResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListInvoiceResponse {
    /// The page.
    #[prost(message, repeated, tag = "1")]
    pub invoices: Vec<Invoice>,
    /// Add index of the last invoice in the page.
    #[prost(uint64, tag = "2")]
    pub last_index_offset: u64,
    /// Add index of the first invoice in the page.
    #[prost(uint64, tag = "3")]
    pub first_index_offset: u64,
}

/// `lnrpc.InvoiceSubscription`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InvoiceSubscription {
    /// Replay invoices added after this index.
    #[prost(uint64, tag = "1")]
    pub add_index: u64,
    /// Replay invoices settled after this index.
    #[prost(uint64, tag = "2")]
    pub settle_index: u64,
}

/// `lnrpc.PaymentHash`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PaymentHash {
    /// The hash.
    #[prost(bytes = "vec", tag = "2")]
    pub r_hash: Vec<u8>,
}

/// `lnrpc.PayReqString`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PayReqString {
    /// BOLT 11 text.
    #[prost(string, tag = "1")]
    pub pay_req: String,
}

/// `lnrpc.PayReq` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PayReq {
    /// Payee node.
    #[prost(string, tag = "1")]
    pub destination: String,
    /// Payment hash (hex).
    #[prost(string, tag = "2")]
    pub payment_hash: String,
    /// Amount in satoshis.
    #[prost(int64, tag = "3")]
    pub num_satoshis: i64,
    /// Creation time.
    #[prost(int64, tag = "4")]
    pub timestamp: i64,
    /// Expiry in seconds.
    #[prost(int64, tag = "5")]
    pub expiry: i64,
    /// Description.
    #[prost(string, tag = "6")]
    pub description: String,
    /// SHA-256 of a longer description (hex), when the invoice has one instead.
    #[prost(string, tag = "7")]
    pub description_hash: String,
    /// Amount in millisatoshis.
    #[prost(int64, tag = "12")]
    pub num_msat: i64,
}

/// `routerrpc.SendPaymentRequest` (subset): pay a BOLT 11 invoice.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendPaymentRequest {
    /// BOLT 11 to pay (its amount, destination and hash are used).
    #[prost(string, tag = "5")]
    pub payment_request: String,
    /// How long LND keeps trying new routes (seconds; 0 means LND's default of 60).
    #[prost(int32, tag = "6")]
    pub timeout_seconds: i32,
    /// The most to pay in routing fees (satoshis; 0 allows only fee-free routes).
    #[prost(int64, tag = "7")]
    pub fee_limit_sat: i64,
    /// Only the final update is streamed back.
    #[prost(bool, tag = "18")]
    pub no_inflight_updates: bool,
}

/// `lnrpc.Payment` (subset): one update of a payment's progress.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payment {
    /// Payment hash (hex).
    #[prost(string, tag = "1")]
    pub payment_hash: String,
    /// Amount paid, without fees, in satoshis.
    #[prost(int64, tag = "7")]
    pub value_sat: i64,
    /// Amount paid, without fees, in millisatoshis.
    #[prost(int64, tag = "8")]
    pub value_msat: i64,
    /// `Payment.PaymentStatus`: see [`PAYMENT_SUCCEEDED`] and the others.
    #[prost(int32, tag = "10")]
    pub status: i32,
    /// Routing fees paid, in satoshis.
    #[prost(int64, tag = "11")]
    pub fee_sat: i64,
    /// Routing fees paid, in millisatoshis.
    #[prost(int64, tag = "12")]
    pub fee_msat: i64,
    /// `lnrpc.PaymentFailureReason` when failed: see [`failure_reason`].
    #[prost(int32, tag = "16")]
    pub failure_reason: i32,
}

/// `Payment.PaymentStatus.IN_FLIGHT`.
pub const PAYMENT_IN_FLIGHT: i32 = 1;
/// `Payment.PaymentStatus.SUCCEEDED`.
pub const PAYMENT_SUCCEEDED: i32 = 2;
/// `Payment.PaymentStatus.FAILED`.
pub const PAYMENT_FAILED: i32 = 3;
/// `Payment.PaymentStatus.INITIATED`.
pub const PAYMENT_INITIATED: i32 = 4;

/// The name of an `lnrpc.PaymentFailureReason` value, as LND spells it.
pub fn failure_reason(reason: i32) -> &'static str {
    match reason {
        0 => "FAILURE_REASON_NONE",
        1 => "FAILURE_REASON_TIMEOUT",
        2 => "FAILURE_REASON_NO_ROUTE",
        3 => "FAILURE_REASON_ERROR",
        4 => "FAILURE_REASON_INCORRECT_PAYMENT_DETAILS",
        5 => "FAILURE_REASON_INSUFFICIENT_BALANCE",
        6 => "FAILURE_REASON_CANCELED",
        _ => "an unknown failure reason",
    }
}

/// gRPC method paths.
pub mod path {
    /// AddInvoice.
    pub const ADD_INVOICE: &str = "/lnrpc.Lightning/AddInvoice";
    /// ListInvoices.
    pub const LIST_INVOICES: &str = "/lnrpc.Lightning/ListInvoices";
    /// SubscribeInvoices (server streaming).
    pub const SUBSCRIBE_INVOICES: &str = "/lnrpc.Lightning/SubscribeInvoices";
    /// LookupInvoice.
    pub const LOOKUP_INVOICE: &str = "/lnrpc.Lightning/LookupInvoice";
    /// DecodePayReq.
    pub const DECODE_PAY_REQ: &str = "/lnrpc.Lightning/DecodePayReq";
    /// The Router service's SendPaymentV2 (server streaming `lnrpc.Payment` updates).
    pub const SEND_PAYMENT_V2: &str = "/routerrpc.Router/SendPaymentV2";
}
