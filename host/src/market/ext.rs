//! The Dazaar stream extensions (all stream level, channel 0) and their payloads.

/// `{"error": ...}` (JSON), seller → buyer on each transition into invalid.
pub const INVALID: &str = "dazaar/invalid";
/// The buyer's 32-byte feed key (binary), once, on the first successful validation.
pub const ONE_TIME_FEED: &str = "dazaar/one-time-feed";
/// 32 random bytes (binary), sent by the seller before the handshake.
pub const SELLER_ID: &str = "dazaar/seller-id";
/// The terms of use (UTF-8), right after the seller id, if the seller has terms.
pub const TERMS_OF_USE: &str = "dazaar/terms-of-use";
/// `{"name": ..., "message": ...}` (JSON), both ways: payment requests and answers.
pub const USER_MESSAGE: &str = "dazaar/user-message";
/// The validation info (JSON), e.g. `{"type":"time","remaining":ms}`.
pub const VALID: &str = "dazaar/valid";

/// The names a JS dazaar@1.6.1 seller registers before sending its seller id, in its
/// registration order; [`USER_MESSAGE`] follows after.
pub const SELLER_FIRST: [&str; 5] = [ONE_TIME_FEED, SELLER_ID, VALID, INVALID, TERMS_OF_USE];

/// All six names.
pub const ALL: [&str; 6] = [
    ONE_TIME_FEED,
    SELLER_ID,
    VALID,
    INVALID,
    TERMS_OF_USE,
    USER_MESSAGE,
];

/// The largest extension payload we read (user messages are bounded further by the
/// payments layer); the session refuses larger ones
/// ([`crate::protocol::SessionConfig::max_extension_payload`]).
pub const MAX_PAYLOAD: usize = crate::protocol::DEFAULT_MAX_EXTENSION_PAYLOAD;

/// The JS buyer's errors for terms of use, verbatim.
pub const TERMS_NOT_ACCEPTED: &str = "Terms of Use must be accepted before data can be replicated";
/// The JS buyer's error when the seller's terms changed since they were accepted.
pub const TERMS_UPDATED: &str =
    "Terms of Use updated, new terms must be accepted before data can be replicated";
