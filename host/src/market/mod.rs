//! Seller and buyer: identities, rekeyed feeds, revalidation, revocation.

pub mod buyer;
pub mod ext;
pub mod identity;
pub mod lease;
pub mod metering;
pub mod reload;
pub mod revocation;
pub mod seller;
pub mod seller_state;
pub mod shop;

pub use buyer::{
    buy, buy_reconnecting, exchange, BuyError, BuyOptions, BuyOutcome, BuyerEvent, Reconnect,
};
pub use identity::{Identity, IdentityError, KdfParams};
pub use seller::{Product, ProductOptions, SellerEvent};
