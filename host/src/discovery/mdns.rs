//! mDNS on the LAN: a seller registers `_dazaar._tcp.local.` with its key in the TXT
//! record `key`; a buyer browses that type and keeps the instances carrying its key.
//!
//! `mdns-sd` runs its own thread; its receivers are read asynchronously.

use std::net::{IpAddr, SocketAddr};

use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;

use super::candidate::{Candidate, Source};
use super::{DiscoveryError, MDNS_SERVICE};

/// The TXT key holding the seller key (hex).
pub const TXT_KEY: &str = "key";

fn mdns_err(e: mdns_sd::Error) -> DiscoveryError {
    DiscoveryError::Mdns(e.to_string())
}

/// The instance name: mDNS labels are at most 63 bytes, so a prefix of the key (the full
/// key is in the TXT record, and the handshake proves it anyway).
fn instance_name(seller_key: &[u8; 32]) -> String {
    format!("dazaar-{}", hex::encode(&seller_key[..16]))
}

/// A registered service; dropping it unregisters and stops the daemon.
pub struct Advertisement {
    daemon: ServiceDaemon,
    fullname: String,
}

impl std::fmt::Debug for Advertisement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Advertisement")
            .field("fullname", &self.fullname)
            .finish()
    }
}

impl Advertisement {
    /// Registers the seller listening on `listen`. A specific address limits mDNS to that
    /// interface; an unspecified one advertises every non-loopback address.
    pub fn start(seller_key: &[u8; 32], listen: SocketAddr) -> Result<Self, DiscoveryError> {
        let daemon = ServiceDaemon::new().map_err(mdns_err)?;
        let instance = instance_name(seller_key);
        let host = format!("{instance}.local.");
        let key_hex = hex::encode(seller_key);
        let props = [(TXT_KEY, key_hex.as_str())];
        let info = if listen.ip().is_unspecified() {
            ServiceInfo::new(
                MDNS_SERVICE,
                &instance,
                &host,
                "",
                listen.port(),
                &props[..],
            )
            .map(ServiceInfo::enable_addr_auto)
        } else {
            daemon
                .disable_interface(IfKind::All)
                .and_then(|()| daemon.enable_interface(IfKind::Addr(listen.ip())))
                .map_err(mdns_err)?;
            ServiceInfo::new(
                MDNS_SERVICE,
                &instance,
                &host,
                listen.ip(),
                listen.port(),
                &props[..],
            )
        }
        .map_err(mdns_err)?;
        let fullname = info.get_fullname().to_owned();
        daemon.register(info).map_err(mdns_err)?;
        tracing::info!(%fullname, "advertised on mDNS");
        Ok(Self { daemon, fullname })
    }
}

impl Drop for Advertisement {
    fn drop(&mut self) {
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

/// Browses the LAN for `seller_key` and sends each address found to `out` until `out`
/// closes. Runs on a blocking thread (mdns-sd's receiver is synchronous).
pub(crate) async fn browse(
    seller_key: [u8; 32],
    out: mpsc::Sender<Candidate>,
) -> Result<(), DiscoveryError> {
    let daemon = ServiceDaemon::new().map_err(mdns_err)?;
    let events = daemon.browse(MDNS_SERVICE).map_err(mdns_err)?;
    let want = hex::encode(seller_key);
    loop {
        let ev = tokio::select! {
            ev = events.recv_async() => match ev {
                Ok(ev) => ev,
                Err(_) => break,
            },
            _ = out.closed() => break,
        };
        let ServiceEvent::ServiceResolved(svc) = ev else {
            continue;
        };
        let key = svc.get_property_val_str(TXT_KEY);
        if key.map(str::to_ascii_lowercase).as_deref() != Some(want.as_str()) {
            tracing::trace!(name = svc.get_fullname(), "mDNS: another seller");
            continue;
        }
        let port = svc.get_port();
        for ip in svc.get_addresses_v4() {
            let c = Candidate {
                addr: SocketAddr::new(IpAddr::V4(ip), port),
                source: Source::Mdns,
            };
            if out.send(c).await.is_err() {
                break;
            }
        }
    }
    let _ = daemon.stop_browse(MDNS_SERVICE);
    let _ = daemon.shutdown();
    Ok(())
}
