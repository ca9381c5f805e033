//! One connection per buyer across the seller nodes that share a PostgreSQL state.
//!
//! Within one process a product keeps one connection per buyer by itself (a newer
//! connection replaces the older). Several `dazaar sell` nodes serving one product from one
//! shared state database (see [`crate::state`]) also keep one between them: a node that
//! finds a buyer valid takes that buyer's *lease* (a row in the database) before serving
//! it, and gives it back when the connection ends. A buyer whose lease another live node
//! holds is refused ("connected to another node of this seller"). Each node records a
//! heartbeat every [`NODE_HEARTBEAT`]; the leases of a node silent for [`NODE_EXPIRY`]
//! (crashed, cut off) lapse and any node may take them. A node's id is stable across
//! restarts ([`crate::state::node_id`]), so a restarted node takes its own leases back at
//! once.
//!
//! Only paying buyers take a lease (a stranger's connection costs the database nothing),
//! and only with a shared (PostgreSQL) state: an SQLite file belongs to one node. The
//! lease is taken once per connection, when the buyer is first found valid; revalidations
//! do not read it again. When the database does not answer within [`CHECK_TIMEOUT`], the
//! buyer is refused (fail closed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::watch;

use super::revocation::CHECK_TIMEOUT;
use crate::state::{node_id, LazyState, Lease, StateError, NODE_EXPIRY, NODE_HEARTBEAT};

/// The reason a buyer held by another node is refused with.
pub const HELD_ELSEWHERE: &str = "This buyer is connected to another node of this seller";

/// The reason a buyer is refused with when the lease cannot be checked.
pub const LEASE_UNAVAILABLE: &str = "The seller cannot check this buyer's connections now";

/// One product's leases on this node.
#[derive(Debug)]
pub struct Leases {
    state: Arc<LazyState>,
    data_dir: PathBuf,
    node: OnceLock<String>,
    /// When this node's heartbeat was last written.
    beat: Mutex<Option<Instant>>,
    seller: [u8; 32],
}

impl Leases {
    /// The leases of the product sold under `seller`, for the node whose data directory is
    /// `data_dir`, in `state`.
    pub fn new(state: Arc<LazyState>, data_dir: PathBuf, seller: [u8; 32]) -> Leases {
        Leases {
            state,
            data_dir,
            node: OnceLock::new(),
            beat: Mutex::new(None),
            seller,
        }
    }

    /// This node's id (read or created at first use).
    pub fn node(&self) -> Result<&str, StateError> {
        if let Some(id) = self.node.get() {
            return Ok(id);
        }
        let id = node_id(&self.data_dir)?;
        Ok(self.node.get_or_init(|| id))
    }

    /// Writes this node's heartbeat if the last one is older than half a period.
    fn beat(&self, force: bool) -> Result<(), StateError> {
        let due = {
            let last = match self.beat.lock() {
                Ok(g) => *g,
                Err(p) => *p.into_inner(),
            };
            force || last.is_none_or(|at| at.elapsed() >= NODE_HEARTBEAT / 2)
        };
        if due {
            let node = self.node()?.to_owned();
            self.state
                .get()?
                .heartbeat(&node, crate::payments::now_ms())?;
            if let Ok(mut g) = self.beat.lock() {
                *g = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Takes `buyer`'s lease for this node (blocking on the database).
    fn acquire_now(&self, buyer: &[u8; 32]) -> Result<Lease, StateError> {
        // The heartbeat first: a lease whose holder has no fresh heartbeat is free to take.
        self.beat(false)?;
        let node = self.node()?.to_owned();
        self.state
            .get()?
            .acquire_lease(&self.seller, buyer, &node, crate::payments::now_ms())
    }

    /// Takes `buyer`'s lease, off the async threads: `Err(reason)` when another node holds
    /// it or the database fails or is slow (fail closed).
    pub async fn acquire(self: &Arc<Self>, buyer: [u8; 32]) -> Result<(), String> {
        let leases = Arc::clone(self);
        let ask = tokio::task::spawn_blocking(move || leases.acquire_now(&buyer));
        match tokio::time::timeout(CHECK_TIMEOUT, ask).await {
            Ok(Ok(Ok(Lease::Acquired))) => Ok(()),
            Ok(Ok(Ok(Lease::HeldBy(node)))) => {
                tracing::info!(buyer = %hex::encode(buyer), holder = %node, "refusing a buyer connected to another node");
                Err(HELD_ELSEWHERE.to_owned())
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "cannot take a buyer's connection lease: refusing the buyer");
                Err(LEASE_UNAVAILABLE.to_owned())
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("the lease table did not answer in time: refusing the buyer");
                Err(LEASE_UNAVAILABLE.to_owned())
            }
        }
    }

    /// Gives `buyer`'s lease back, in the background (a failure only delays the buyer on
    /// other nodes until this node's heartbeat lapses).
    pub fn release(self: &Arc<Self>, buyer: [u8; 32]) {
        let leases = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let done = leases.node().map(str::to_owned).and_then(|node| {
                leases
                    .state
                    .get()?
                    .release_lease(&leases.seller, &buyer, &node)
            });
            if let Err(e) = done {
                tracing::warn!(error = %e, "cannot release a buyer's connection lease");
            }
        });
    }

    /// Writes this node's heartbeat every [`NODE_HEARTBEAT`] until `shutdown` turns true.
    pub async fn heartbeat(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(NODE_HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
            }
            let leases = Arc::clone(&self);
            let beat = tokio::task::spawn_blocking(move || leases.beat(true));
            match tokio::time::timeout(NODE_EXPIRY / 2, beat).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "cannot record this node's heartbeat"),
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!("the state database did not take this node's heartbeat in time")
                }
            }
        }
    }
}
