//! The mainline DHT: a seller's announcement loop, a buyer's lookups, and a bootstrap
//! node for private networks (`dazaar dht-node`).
//!
//! The `mainline` crate runs each node on its own thread (one UDP socket); we talk to it
//! through its async handle.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use futures_lite::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::candidate::{Candidate, Source};
use super::{
    is_loopback, mdns, public_dht_forbidden, stopped, topic, DiscoveryError, DiscoveryOptions,
};

/// Longest wait between two failed announcements.
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Most peers taken from one DHT lookup.
const MAX_PEERS_PER_LOOKUP: usize = 64;

/// Checks the bootstrap list: refuses the public nodes when forbidden, and each address
/// must at least look like `HOST:PORT`.
pub(crate) fn check_bootstrap(bootstrap: &[String]) -> Result<(), DiscoveryError> {
    if bootstrap.is_empty() && public_dht_forbidden() {
        return Err(DiscoveryError::PublicDhtForbidden);
    }
    for b in bootstrap {
        let ok = b.parse::<SocketAddr>().is_ok()
            || b.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(DiscoveryError::Bootstrap(b.clone()));
        }
    }
    Ok(())
}

/// The address a node should bind: loopback when every bootstrap node is on loopback
/// (a private test network: nothing leaves the machine), else all interfaces.
pub(crate) fn bind_for(bootstrap: &[String]) -> Ipv4Addr {
    let all_loopback = !bootstrap.is_empty()
        && bootstrap
            .iter()
            .all(|b| b.parse::<SocketAddr>().is_ok_and(|a| is_loopback(a.ip())));
    if all_loopback {
        Ipv4Addr::LOCALHOST
    } else {
        Ipv4Addr::UNSPECIFIED
    }
}

/// Starts a DHT client node bound to `bind`, bootstrapping from `bootstrap` (the public
/// nodes when empty and allowed).
pub(crate) fn client(bootstrap: &[String], bind: Ipv4Addr) -> Result<Dht, DiscoveryError> {
    check_bootstrap(bootstrap)?;
    let mut builder = Dht::builder();
    builder.bind_address(bind);
    if !bootstrap.is_empty() {
        builder.bootstrap(bootstrap);
    }
    builder.build().map_err(DiscoveryError::Dht)
}

/// A DHT node that answers others (for a private network's bootstrap).
#[derive(Debug)]
pub struct BootstrapNode {
    dht: AsyncDht,
    addr: SocketAddrV4,
}

impl BootstrapNode {
    /// Starts a server-mode node on `listen` (port 0 picks one). With an empty
    /// `bootstrap` it is the first node of a new network; otherwise it joins through them.
    pub async fn start(listen: SocketAddrV4, bootstrap: &[String]) -> Result<Self, DiscoveryError> {
        let mut builder = Dht::builder();
        builder
            .server_mode()
            .bind_address(*listen.ip())
            .port(listen.port());
        if bootstrap.is_empty() {
            builder.no_bootstrap();
        } else {
            check_bootstrap(bootstrap)?;
            builder.bootstrap(bootstrap);
        }
        let dht = builder.build().map_err(DiscoveryError::Dht)?.as_async();
        let addr = dht.info().await.local_addr();
        tracing::info!(%addr, "DHT bootstrap node listening");
        Ok(Self { dht, addr })
    }

    /// Where it listens (UDP).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Its handle (e.g. to ask it for peers in a benchmark).
    pub fn dht(&self) -> &AsyncDht {
        &self.dht
    }
}

/// A seller's presence on the DHT and mDNS; dropping it stops both.
#[derive(Debug)]
pub struct Advertiser {
    announced: watch::Receiver<u64>,
    task: Option<JoinHandle<()>>,
    mdns: Option<mdns::Advertisement>,
}

impl Advertiser {
    /// How many DHT announcements succeeded so far (changes on each).
    pub fn announced(&self) -> watch::Receiver<u64> {
        self.announced.clone()
    }

    /// Whether the seller is on the DHT at all (it is not on loopback without bootstrap).
    pub fn on_dht(&self) -> bool {
        self.task.is_some()
    }

    /// Whether the seller advertises on mDNS.
    pub fn on_mdns(&self) -> bool {
        self.mdns.is_some()
    }
}

impl Drop for Advertiser {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Makes the seller with `seller_key`, listening on `listen` (the bound address, with its
/// real port), findable: announces `listen.port()` under [`topic`] on the DHT (renewed
/// every `opts.reannounce`, retried with backoff while it fails) and advertises it on
/// mDNS. A loopback `listen` is announced on the DHT only with explicit bootstrap nodes
/// and never on mDNS. Runs until `shutdown` turns true or the result is dropped.
pub fn advertise(
    seller_key: [u8; 32],
    listen: SocketAddr,
    opts: &DiscoveryOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<Advertiser, DiscoveryError> {
    let loopback = is_loopback(listen.ip());
    let span = tracing::info_span!("advertise", seller = %hex::encode(&seller_key[..8]), %listen);
    let _enter = span.enter();
    let (count_tx, announced) = watch::channel(0u64);
    let use_dht = opts.dht && !(loopback && opts.bootstrap.is_empty());
    if opts.dht && !use_dht {
        tracing::info!("listening on loopback without a bootstrap node: not on the DHT");
    }
    let task = if use_dht {
        let bind = match listen.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_unspecified() => v4,
            _ => bind_for(&opts.bootstrap),
        };
        let dht = client(&opts.bootstrap, bind)?.as_async();
        let info_hash = Id::from(topic(&seller_key));
        let every = opts.reannounce;
        let port = listen.port();
        let announced = metrics::gauge!(
            crate::monitor::names::DHT_ANNOUNCED,
            crate::monitor::names::PRODUCT => hex::encode(seller_key),
        );
        Some(tokio::spawn(announce_loop(
            dht,
            info_hash,
            port,
            every,
            (count_tx, announced),
            shutdown.clone(),
        )))
    } else {
        None
    };
    let mdns = if opts.mdns && !loopback {
        match mdns::Advertisement::start(&seller_key, listen) {
            Ok(a) => Some(a),
            Err(e) => {
                // The DHT may still work: mDNS is a convenience on the LAN.
                tracing::warn!(error = %e, "mDNS advertisement failed");
                None
            }
        }
    } else {
        None
    };
    Ok(Advertiser {
        announced,
        task,
        mdns,
    })
}

async fn announce_loop(
    dht: AsyncDht,
    info_hash: Id,
    port: u16,
    every: Duration,
    (count, announced): (watch::Sender<u64>, metrics::Gauge),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut retry = Duration::from_millis(500);
    loop {
        let wait = tokio::select! {
            res = dht.announce_peer(info_hash, Some(port)) => match res {
                Ok(_) => {
                    announced.set(1.0);
                    count.send_modify(|c| *c += 1);
                    tracing::debug!(%info_hash, port, "announced on the DHT");
                    retry = Duration::from_millis(500);
                    every
                }
                Err(e) => {
                    announced.set(0.0);
                    tracing::debug!(error = %e, ?retry, "DHT announcement failed; retrying");
                    let w = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    w
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut shutdown) => return,
        }
    }
}

/// Looks `seller_key`'s topic up on the DHT through `node` every `relookup`, sending each
/// peer found to `out`, until `out` is closed. Peers are IPv4 `IP:PORT` as the DHT stores
/// them.
pub(crate) async fn lookup_loop(
    node: Dht,
    seller_key: [u8; 32],
    relookup: Duration,
    out: mpsc::Sender<Candidate>,
) -> Result<(), DiscoveryError> {
    let dht = node.as_async();
    let info_hash = Id::from(topic(&seller_key));
    loop {
        let mut stream = dht.get_peers(info_hash);
        let mut taken = 0usize;
        while let Some(batch) = stream.next().await {
            for peer in batch {
                if taken >= MAX_PEERS_PER_LOOKUP {
                    break;
                }
                taken += 1;
                let c = Candidate {
                    addr: SocketAddr::V4(peer),
                    source: Source::Dht,
                };
                if out.send(c).await.is_err() {
                    return Ok(());
                }
            }
        }
        tracing::trace!(taken, "DHT lookup done");
        tokio::select! {
            _ = tokio::time::sleep(relookup) => {}
            _ = out.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_checks() {
        assert!(check_bootstrap(&["127.0.0.1:6881".into()]).is_ok());
        assert!(check_bootstrap(&["router.example:6881".into()]).is_ok());
        assert!(matches!(
            check_bootstrap(&["nonsense".into()]),
            Err(DiscoveryError::Bootstrap(_))
        ));
        assert_eq!(bind_for(&["127.0.0.1:1".into()]), Ipv4Addr::LOCALHOST);
        assert_eq!(
            bind_for(&["127.0.0.1:1".into(), "192.0.2.1:1".into()]),
            Ipv4Addr::UNSPECIFIED
        );
        assert_eq!(bind_for(&[]), Ipv4Addr::UNSPECIFIED);
    }
}
