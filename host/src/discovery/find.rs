//! A buyer's search: gather candidate addresses from every enabled source at once, probe
//! them (bounded concurrency), keep the first that proves to be the seller.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::candidate::{Candidate, Source};
use super::{dht, mdns, peer_cache, probe, stopped, DiscoveryError, DiscoveryOptions};
use crate::crypto::NoiseKeyPair;

/// The seller, found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Its address (its Noise static key was the seller key there).
    pub addr: SocketAddr,
    /// Who told us the address.
    pub source: Source,
    /// How many addresses were dialled (including this one).
    pub tried: usize,
}

/// Times one address may be dialled in a search, and the pause before it is tried again
/// (a seller restarting on the same address).
const MAX_ATTEMPTS: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_secs(3);

/// Capacity of the channel from the sources to the prober.
const SOURCE_QUEUE: usize = 64;

#[derive(Debug, Default)]
struct Seen {
    attempts: u32,
    failed_at: Option<Instant>,
    queued: bool,
}

/// Finds the seller with `seller_key`: static peers and the peer cache (in `data_dir`)
/// first, while the DHT and mDNS (as `opts` enable them) are asked at once. Each candidate
/// is dialled and must complete a Noise handshake (as `key_pair`) with the seller key;
/// others are dropped with a debug log. The address found is remembered in `data_dir`.
pub async fn find_seller(
    key_pair: &NoiseKeyPair,
    seller_key: [u8; 32],
    opts: &DiscoveryOptions,
    data_dir: Option<&Path>,
    shutdown: watch::Receiver<bool>,
) -> Result<Found, DiscoveryError> {
    let span = tracing::info_span!("find", seller = %hex::encode(&seller_key[..8]));
    search(key_pair, seller_key, opts, data_dir, shutdown)
        .instrument(span)
        .await
}

async fn search(
    key_pair: &NoiseKeyPair,
    seller_key: [u8; 32],
    opts: &DiscoveryOptions,
    data_dir: Option<&Path>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Found, DiscoveryError> {
    let mut pending: VecDeque<Candidate> = VecDeque::new();
    for addr in &opts.peers {
        pending.push_back(Candidate {
            addr: *addr,
            source: Source::Static,
        });
    }
    if let Some(dir) = data_dir {
        for addr in peer_cache::load(dir, &seller_key) {
            pending.push_back(Candidate {
                addr,
                source: Source::Cache,
            });
        }
    }
    if !opts.dht && !opts.mdns && pending.is_empty() {
        return Err(DiscoveryError::NoSource);
    }
    let (tx, mut rx) = mpsc::channel::<Candidate>(SOURCE_QUEUE);
    // Dropping this set (on any return) aborts the sources.
    let mut sources: JoinSet<Result<(), DiscoveryError>> = JoinSet::new();
    if opts.dht {
        // A configuration error (e.g. the public DHT forbidden) is reported now.
        let node = dht::client(&opts.bootstrap, dht::bind_for(&opts.bootstrap))?;
        sources.spawn(dht::lookup_loop(
            node,
            seller_key,
            opts.relookup,
            tx.clone(),
        ));
    }
    if opts.mdns {
        sources.spawn(mdns::browse(seller_key, tx.clone()));
    }
    drop(tx);

    let deadline = Instant::now() + opts.lookup_timeout;
    let concurrency = opts.concurrency.max(1);
    let mut seen: HashMap<SocketAddr, Seen> = HashMap::new();
    for c in &pending {
        seen.entry(c.addr).or_default().queued = true;
    }
    let mut probes: JoinSet<(Candidate, Result<(), probe::ProbeError>)> = JoinSet::new();
    let mut tried = 0usize;
    let mut sources_open = true;
    loop {
        while probes.len() < concurrency {
            let Some(c) = pending.pop_front() else { break };
            let s = seen.entry(c.addr).or_default();
            s.queued = false;
            s.attempts += 1;
            tried += 1;
            let kp = key_pair.clone();
            let timeout = opts.probe_timeout;
            probes.spawn(async move { (c, probe::probe(c.addr, &kp, seller_key, timeout).await) });
        }
        tokio::select! {
            Some(done) = probes.join_next(), if !probes.is_empty() => {
                let Ok((c, result)) = done else { continue };
                match result {
                    Ok(()) => {
                        tracing::info!(addr = %c.addr, source = c.source.as_str(), tried, "found the seller");
                        if let Some(dir) = data_dir {
                            if let Err(e) = peer_cache::remember(dir, &seller_key, c.addr) {
                                tracing::debug!(error = %e, "could not remember the seller's address");
                            }
                        }
                        return Ok(Found { addr: c.addr, source: c.source, tried });
                    }
                    Err(e) => {
                        tracing::debug!(addr = %c.addr, source = c.source.as_str(), error = %e, "candidate dropped: not the seller");
                        if let Some(s) = seen.get_mut(&c.addr) {
                            s.failed_at = Some(Instant::now());
                        }
                    }
                }
            }
            c = rx.recv(), if sources_open => {
                let Some(c) = c else {
                    sources_open = false;
                    continue;
                };
                if c.addr.port() == 0 || c.addr.ip().is_unspecified() || c.addr.ip().is_multicast() {
                    tracing::debug!(addr = %c.addr, "candidate dropped: not dialable");
                    continue;
                }
                let known = seen.len();
                let s = match seen.get_mut(&c.addr) {
                    Some(s) => s,
                    None if known >= opts.max_candidates => {
                        tracing::debug!(addr = %c.addr, "candidate dropped: too many candidates");
                        continue;
                    }
                    None => seen.entry(c.addr).or_default(),
                };
                let retry_due = s.failed_at.is_some_and(|t| t.elapsed() >= RETRY_AFTER);
                let fresh = s.attempts == 0 && !s.queued;
                if !s.queued && (fresh || (retry_due && s.attempts < MAX_ATTEMPTS)) {
                    s.queued = true;
                    pending.push_back(c);
                }
            }
            Some(ended) = sources.join_next(), if !sources.is_empty() => {
                if let Ok(Err(e)) = ended {
                    tracing::warn!(error = %e, "a discovery source failed");
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(DiscoveryError::NotFound { timeout: opts.lookup_timeout, tried });
            }
            _ = stopped(&mut shutdown) => return Err(DiscoveryError::Cancelled),
        }
        if !sources_open && pending.is_empty() && probes.is_empty() {
            return Err(DiscoveryError::NotFound {
                timeout: opts.lookup_timeout,
                tried,
            });
        }
    }
}
