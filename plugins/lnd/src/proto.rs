//! The messages of LND's `lnrpc.Lightning` service this plugin uses, written by hand with
//! prost's derive (no `protoc`). Only the fields read or written are declared; the field
//! numbers and types are those of LND's `lightning.proto`, and unknown fields in
//! answers are skipped by the decoder. The `wire` tests in `tests/tests/lnd.rs` encode each
//! of these messages and decode it as the type generated from LND's `lightning.proto`
//! (v0.20.3-beta, vendored in `tests/proto/lnd/`), and the reverse, field by field.

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
    /// Amount in millisatoshis.
    #[prost(int64, tag = "12")]
    pub num_msat: i64,
}

/// `lnrpc.SendRequest` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendRequest {
    /// BOLT 11 to pay.
    #[prost(string, tag = "6")]
    pub payment_request: String,
}

/// `lnrpc.SendResponse` (subset).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SendResponse {
    /// Empty on success.
    #[prost(string, tag = "1")]
    pub payment_error: String,
    /// Preimage on success.
    #[prost(bytes = "vec", tag = "2")]
    pub payment_preimage: Vec<u8>,
    /// Payment hash.
    #[prost(bytes = "vec", tag = "4")]
    pub payment_hash: Vec<u8>,
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
    /// SendPaymentSync.
    pub const SEND_PAYMENT_SYNC: &str = "/lnrpc.Lightning/SendPaymentSync";
}
