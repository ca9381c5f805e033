//! dazaar: a Rust peer for the Dazaar data marketplace.
//!
//! Layers, from the bottom up (dependencies point downwards only):
//!
//! - [`crypto`]: BLAKE2b helpers, Ed25519 and X25519 key pairs, Dazaar key derivation.
//! - [`storage`]: Hypercore v9 logs: flat tree, Merkle hashing, signatures, proofs,
//!   bitfield, and the [`storage::Store`] trait with in-memory and file-system backends.
//! - [`wire`]: varint, protobuf messages, frame codec of protocol v8.
//! - [`noise`]: the Noise XX handshake and the XSalsa20 transport cipher.
//! - [`protocol`]: the sans-IO protocol session (channels, replication, extensions).
//! - [`net`]: the tokio driver.
//! - [`monitor`]: metric names, the Prometheus recorder, and the `/metrics` and
//!   `/healthz` HTTP server (tokio; uses no other layer).
//! - [`card`], [`payments`], [`config`], [`market`], [`discovery`]: the marketplace.
//!
//! `storage`, `wire`, `noise` and `protocol` never touch tokio or a clock.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod card;
pub mod config;
pub mod crypto;
pub mod discovery;
pub mod fs_atomic;
#[doc(hidden)]
pub mod fuzzing;
pub mod market;
pub mod monitor;
pub mod net;
pub mod noise;
pub mod payments;
pub mod protocol;
pub mod state;
pub mod storage;
pub mod wire;

#[cfg(test)]
mod layering;

#[cfg(test)]
pub(crate) mod test_vectors;
