//! Seller and buyer: identities, rekeyed feeds, revalidation, revocation.

pub mod identity;

pub use identity::{Identity, IdentityError, KdfParams};
