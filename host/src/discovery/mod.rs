//! Discovery: how a buyer that knows only a seller key finds an address to dial.
//!
//! Three sources, used together:
//!
//! - **The BitTorrent mainline DHT** ([`dht`]). A seller announces its TCP port under a
//!   *topic*, a 20-byte info-hash derived from its seller key:
//!
//!   ```text
//!   topic = BLAKE2b-256("dazaar/discovery/v1" ‖ sellerKey)[0..20]
//!   ```
//!
//!   so the DHT sees a hash, not the key itself (a node that stores the announcement
//!   cannot tell which seller it is without already knowing the key). The announcement
//!   is renewed every [`REANNOUNCE`] (mainline nodes forget peers after about 30 min).
//! - **mDNS on the LAN** ([`mdns`]): service type `_dazaar._tcp.local.`, with the seller
//!   key (hex) in the TXT record `key`.
//! - **Static peers** from `[discovery] peers` or `--peer`, and the addresses where this
//!   buyer found the seller before ([`peer_cache`], `<data_dir>/peers/<sellerHex>.json`).
//!
//! Nothing any of these sources says is trusted: the buyer dials candidates (at most
//! [`DiscoveryOptions::concurrency`] at once) and runs only the Noise handshake
//! ([`probe`]); the first whose static key is the seller key wins. Any other peer (a
//! stale address, or a hostile node announcing the topic) is dropped with a debug log.
//!
//! Where nothing outside could reach the seller it does not announce: a seller listening
//! on a loopback address uses the DHT only with explicit bootstrap nodes (a private
//! network, e.g. `dazaar dht-node`) and never mDNS.
//!
//! The public DHT bootstrap nodes are used only when no bootstrap node is configured.
//! Setting the variable [`NO_PUBLIC_DHT_ENV`] (tests and CI do) turns that case into an
//! error, so a test can never reach the public network by mistake.

pub mod candidate;
pub mod dht;
pub mod find;
pub mod mdns;
pub mod peer_cache;
pub mod probe;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use candidate::{Candidate, Source};
pub use dht::{advertise, Advertiser, BootstrapNode};
pub use find::{find_seller, Found};

/// The namespace hashed in front of the seller key to make the topic.
pub const TOPIC_NAMESPACE: &[u8] = b"dazaar/discovery/v1";

/// How often a seller renews its DHT announcement.
pub const REANNOUNCE: Duration = Duration::from_secs(15 * 60);

/// When this variable is set (to anything but `0` or empty), the public DHT bootstrap
/// nodes are never used: a DHT without configured bootstrap nodes is an error.
pub const NO_PUBLIC_DHT_ENV: &str = "DAZAAR_NO_PUBLIC_DHT";

/// The mDNS service type.
pub const MDNS_SERVICE: &str = "_dazaar._tcp.local.";

/// The 20-byte DHT info-hash under which the seller with `seller_key` is announced.
pub fn topic(seller_key: &[u8; 32]) -> [u8; 20] {
    let hash = crate::crypto::blake2b256(&[TOPIC_NAMESPACE, seller_key]);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[..20]);
    out
}

/// What went wrong while announcing or looking up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The DHT node could not start (its UDP socket).
    #[error("starting the DHT node: {0}")]
    Dht(#[source] std::io::Error),
    /// mDNS could not start.
    #[error("mDNS: {0}")]
    Mdns(String),
    /// The public bootstrap nodes would be used but [`NO_PUBLIC_DHT_ENV`] forbids them.
    #[error("no DHT bootstrap node is configured and {NO_PUBLIC_DHT_ENV} forbids the public ones (give --bootstrap, or --no-dht)")]
    PublicDhtForbidden,
    /// A bootstrap address that is not `IP:PORT` or `HOST:PORT`.
    #[error("bad DHT bootstrap address {0:?}")]
    Bootstrap(String),
    /// Every source is switched off and there are no static peers.
    #[error("no way to find the seller: the DHT and mDNS are off and no peer is known (give --connect or --peer)")]
    NoSource,
    /// No candidate proved to be the seller in time.
    #[error("seller not found within {timeout:?} ({tried} candidate addresses tried)")]
    NotFound {
        /// How long the search ran.
        timeout: Duration,
        /// How many distinct addresses were dialled.
        tried: usize,
    },
    /// Shut down while searching.
    #[error("discovery cancelled")]
    Cancelled,
}

/// How to discover (buyer) or be discovered (seller).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DiscoveryOptions {
    /// Use the mainline DHT.
    pub dht: bool,
    /// Use mDNS on the LAN.
    pub mdns: bool,
    /// Static candidate addresses (buyer).
    pub peers: Vec<SocketAddr>,
    /// DHT bootstrap nodes (`IP:PORT` or `HOST:PORT`); empty means the public ones.
    pub bootstrap: Vec<String>,
    /// How often the seller renews its announcement.
    pub reannounce: Duration,
    /// How long a buyer searches before giving up.
    pub lookup_timeout: Duration,
    /// How long one candidate may take to complete the handshake.
    pub probe_timeout: Duration,
    /// How often a buyer repeats its DHT lookup while searching.
    pub relookup: Duration,
    /// Most candidates probed at once.
    pub concurrency: usize,
    /// Most distinct candidate addresses considered in one search.
    pub max_candidates: usize,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            dht: true,
            mdns: true,
            peers: Vec::new(),
            bootstrap: Vec::new(),
            reannounce: REANNOUNCE,
            lookup_timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(3),
            relookup: Duration::from_secs(2),
            concurrency: 8,
            max_candidates: 256,
        }
    }
}

impl DiscoveryOptions {
    /// Only static peers (no DHT, no mDNS).
    pub fn static_peers(peers: Vec<SocketAddr>) -> Self {
        Self {
            dht: false,
            mdns: false,
            peers,
            ..Self::default()
        }
    }

    /// The DHT on a private network reached through `bootstrap`; no mDNS.
    pub fn private_dht(bootstrap: Vec<String>) -> Self {
        Self {
            dht: true,
            mdns: false,
            bootstrap,
            ..Self::default()
        }
    }
}

/// Whether the public bootstrap nodes are forbidden by [`NO_PUBLIC_DHT_ENV`].
fn public_dht_forbidden() -> bool {
    std::env::var_os(NO_PUBLIC_DHT_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// True for loopback addresses (127/8, ::1, and v4-mapped loopback).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Resolves when `shutdown` is (or turns) true; never when its sender is gone.
pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The topic is pinned: a change would split the network between versions.
    #[test]
    fn topic_vector() {
        // sellerKey = 00 01 02 .. 1f
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let t = topic(&key);
        let full = crate::crypto::blake2b256(&[b"dazaar/discovery/v1", &key]);
        assert_eq!(t[..], full[..20]);
        assert_ne!(t[..], key[..20], "the key itself is not announced");
        assert_eq!(hex::encode(t), TOPIC_VECTOR);
    }

    // Independently computed: hashlib.blake2b(b"dazaar/discovery/v1" + bytes(range(32)), digest_size=32)[:20].
    const TOPIC_VECTOR: &str = "038c75f9a94cda827bc2ec5a15c6534cc7665c0e";

    #[test]
    fn loopback() {
        assert!(is_loopback("127.0.0.2".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("0.0.0.0".parse().unwrap()));
        assert!(!is_loopback("192.0.2.1".parse().unwrap()));
    }
}
