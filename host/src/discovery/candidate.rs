//! A candidate address for a seller and where it came from: what every source (static
//! peers, the peer cache, the DHT, mDNS) hands to the search in [`super::find`]. Its own
//! module so the sources and the search do not import each other.

use std::net::SocketAddr;

/// Where a candidate address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// `[discovery] peers` or `--peer`.
    Static,
    /// The peer cache in the data dir.
    Cache,
    /// The mainline DHT.
    Dht,
    /// mDNS on the LAN.
    Mdns,
}

impl Source {
    /// A short name for logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Cache => "cache",
            Source::Dht => "dht",
            Source::Mdns => "mdns",
        }
    }
}

/// A candidate address, not yet checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Where to dial.
    pub addr: SocketAddr,
    /// Who said so.
    pub source: Source,
}
