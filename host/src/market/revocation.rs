//! Revoked and burnt buyers.
//!
//! A seller cuts a buyer off with `dazaar revoke`: the buyer is invalid from the next
//! revalidation on (at most one revalidation period later), whatever its payments say.
//! `dazaar burn` also *publishes* that buyer's rekeyed feed key pair: once its secret key
//! is public, anyone can sign anything under that key, so copies the buyer relays no
//! longer prove they came from the seller. The burnt pairs are published in the seller's
//! Dazaar card (`dazaar card` writes `"burnt": [{"buyer", "feedKey", "secretKey"}]`, hex),
//! the document a seller already makes public to advertise the product.
//!
//! The list lives in the seller's state database ([`crate::state`], by default
//! `<data_dir>/state.db`), keyed by seller key: a revocation is one committed row, seen by
//! a running `dazaar sell` at its next check of that buyer (within [`SNAPSHOT_FOR`] of
//! it: see [`RevocationList`]), and it survives a crash of either process. The `revocations.json` of earlier versions is imported on first open.
//! When the database cannot be read, every buyer is treated as revoked (fail closed).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::identity::Identity;
use crate::card::BurntKey;
use crate::state::{LazyState, StateError, StatePlace};

/// Reading or writing the revocation list failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// The state database.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Revokes (and, with `burn`, burns) `buyer` for the product sold under `seller`, in the
/// state database at `place`.
pub fn revoke(
    place: &StatePlace,
    seller: &[u8; 32],
    buyer: &[u8; 32],
    burn: bool,
) -> Result<(), RevocationError> {
    let store = place.open()?;
    store.revoke(seller, buyer, burn, crate::payments::now_ms())?;
    Ok(())
}

/// The burnt buyers of the product sold under `identity` with feed `feed_key`, with their
/// rekeyed key pairs, for the product's card.
pub fn burnt_keys(
    place: &StatePlace,
    identity: &Identity,
    feed_key: &[u8; 32],
) -> Result<Vec<BurntKey>, RevocationError> {
    let seller = identity.seller_key_pair(feed_key).public_key();
    let store = place.open()?;
    Ok(store
        .revocations(&seller)?
        .into_iter()
        .filter(|r| r.burnt)
        .map(|r| {
            let pair = identity.rekeyed_key_pair(feed_key, &r.buyer);
            BurntKey {
                buyer: r.buyer,
                feed_key: pair.public_key(),
                secret_key: pair.secret_key().to_vec(),
            }
        })
        .collect())
}

/// The revoked buyers of one product, in the state database.
///
/// A running seller checks every buyer at every revalidation: 1,000 buyers at 200 ms are
/// 5,000 checks a second, each a database read on the blocking pool (and two thread
/// hand-offs). [`RevocationList::recheck`] (a valid buyer's revalidation) reads the
/// product's whole list instead, at most once per [`SNAPSHOT_FOR`] whatever the number
/// of buyers, and answers from it (one read in flight; meanwhile the snapshot before
/// answers for up to [`SNAPSHOT_STALE`]): a connected buyer's revocation takes effect
/// within one revalidation period plus [`SNAPSHOT_FOR`], or [`SNAPSHOT_STALE`] while the
/// database is slow. A new connection, or a buyer not valid now
/// ([`RevocationList::check`]), always reads its buyer's row, so a revoked buyer is
/// refused at once and nothing new is granted on a snapshot while the database is down.
/// A list longer than [`SNAPSHOT_MAX`] is not held in memory: every check then reads
/// its buyer's row.
#[derive(Debug)]
pub struct RevocationList {
    state: Arc<LazyState>,
    seller: [u8; 32],
    snapshot: std::sync::Mutex<SnapshotSlot>,
}

/// The snapshot in use, and whether a newer one is being read.
#[derive(Debug, Default)]
struct SnapshotSlot {
    current: Option<Snapshot>,
    refreshing: bool,
}

/// Clears [`SnapshotSlot::refreshing`] when the read ends, however it ends.
struct Refreshing<'a>(&'a RevocationList);

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        self.0.lock_snapshot().refreshing = false;
    }
}

/// What a revalidation does once it has looked at the snapshot.
enum Step {
    /// Answer from the snapshot.
    Answer(Standing),
    /// Read the buyer's row (the list is too long to hold, or another read is in
    /// flight with no snapshot young enough to answer).
    ReadRow,
    /// Read the whole list (this caller; the others answer meanwhile).
    ReadList,
}

/// How long a read of the whole list answers checks.
pub const SNAPSHOT_FOR: Duration = Duration::from_millis(250);
/// How long it answers while the next read is in flight (a busy database): the most a
/// revocation of a connected buyer waits beyond its revalidation period.
pub const SNAPSHOT_STALE: Duration = Duration::from_secs(5);
/// Most revoked buyers a product's list holds in memory.
pub const SNAPSHOT_MAX: usize = 100_000;

/// The list as read at `at` (`None`: too long to hold).
#[derive(Debug)]
struct Snapshot {
    at: Instant,
    revoked: Option<HashSet<[u8; 32]>>,
}

impl Snapshot {
    /// `buyer`'s standing, or `None` when the list was too long to hold.
    fn lookup(&self, buyer: &[u8; 32]) -> Option<Standing> {
        let set = self.revoked.as_ref()?;
        Some(if set.contains(buyer) {
            Standing::Revoked
        } else {
            Standing::Clear
        })
    }
}

impl RevocationList {
    /// The list for the product sold under `seller`, kept in the state at `place`.
    pub fn new(place: &StatePlace, seller: &[u8; 32]) -> Self {
        Self::with_state(Arc::new(LazyState::new(place)), seller)
    }

    /// The list for the product sold under `seller`, kept in `state`.
    pub fn with_state(state: Arc<LazyState>, seller: &[u8; 32]) -> Self {
        Self {
            state,
            seller: *seller,
            snapshot: std::sync::Mutex::new(SnapshotSlot::default()),
        }
    }

    /// Whether `buyer` is revoked: yes when the state cannot be read (fail closed; the
    /// error is logged). Blocks on the database (at most its busy timeout); async
    /// callers use [`check`](Self::check).
    pub fn is_revoked(&self, buyer: &[u8; 32]) -> bool {
        match self
            .state
            .get()
            .and_then(|s| s.revocation(&self.seller, buyer))
        {
            Ok(found) => found.is_some(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the revocation list: refusing the buyer");
                true
            }
        }
    }

    /// Whether `buyer` is revoked, on the blocking pool so a database locked by another
    /// process never stalls the async threads. [`Standing::Unknown`] when the state
    /// cannot be read or does not answer within [`CHECK_TIMEOUT`] (the caller fails
    /// closed; the error is logged).
    pub async fn check(self: &Arc<Self>, buyer: [u8; 32]) -> Standing {
        self.check_one(buyer).await
    }

    /// As [`check`](Self::check) for a buyer already connected and valid (a
    /// revalidation): answered from a snapshot of the list at most [`SNAPSHOT_FOR`] old.
    /// While a newer snapshot is being read, the one before answers for up to
    /// [`SNAPSHOT_STALE`]: a database busy with writes (a reconnect storm's sales) must
    /// not queue thousands of revalidations behind one read. Past that, or with no
    /// snapshot, the buyer's own row.
    pub async fn recheck(self: &Arc<Self>, buyer: [u8; 32]) -> Standing {
        let step = {
            let mut slot = self.lock_snapshot();
            let good_for = if slot.refreshing {
                SNAPSHOT_STALE
            } else {
                SNAPSHOT_FOR
            };
            match slot.current.as_ref().filter(|s| s.at.elapsed() < good_for) {
                Some(s) => s.lookup(&buyer).map_or(Step::ReadRow, Step::Answer),
                None if slot.refreshing => Step::ReadRow,
                None => {
                    slot.refreshing = true;
                    Step::ReadList
                }
            }
        };
        match step {
            Step::Answer(standing) => return standing,
            Step::ReadRow => return self.check_one(buyer).await,
            Step::ReadList => {}
        }
        // Cleared however this ends (an error, a timeout, a dropped future).
        let _reading = Refreshing(self);
        let at = Instant::now();
        let list = Arc::clone(self);
        let ask = tokio::task::spawn_blocking(move || {
            list.state.get().and_then(|s| s.revocations(&list.seller))
        });
        let read = match tokio::time::timeout(CHECK_TIMEOUT, ask).await {
            Ok(Ok(Ok(records))) => Some(Snapshot {
                at,
                revoked: (records.len() <= SNAPSHOT_MAX)
                    .then(|| records.into_iter().map(|r| r.buyer).collect::<HashSet<_>>()),
            }),
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "cannot read the revocation list");
                None
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("the revocation list did not answer in time");
                None
            }
        };
        let found = {
            let mut slot = self.lock_snapshot();
            slot.current = read;
            match &slot.current {
                Some(s) => s.lookup(&buyer),
                None => return Standing::Unknown,
            }
        };
        match found {
            Some(standing) => standing,
            // Too long to hold: this buyer's row.
            None => self.check_one(buyer).await,
        }
    }

    fn lock_snapshot(&self) -> std::sync::MutexGuard<'_, SnapshotSlot> {
        // Never held across an await; the slot stays sound if something panicked.
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `buyer` is revoked, by its own row, on the blocking pool.
    async fn check_one(self: &Arc<Self>, buyer: [u8; 32]) -> Standing {
        let list = Arc::clone(self);
        let ask = tokio::task::spawn_blocking(move || {
            list.state
                .get()
                .and_then(|s| s.revocation(&list.seller, &buyer))
        });
        match tokio::time::timeout(CHECK_TIMEOUT, ask).await {
            Ok(Ok(Ok(Some(_)))) => Standing::Revoked,
            Ok(Ok(Ok(None))) => Standing::Clear,
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "cannot read the revocation list");
                Standing::Unknown
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("the revocation list did not answer in time");
                Standing::Unknown
            }
        }
    }
}

/// A buyer's standing in the revocation list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Not revoked.
    Clear,
    /// Revoked or burnt.
    Revoked,
    /// The state could not be read: nothing new may be granted.
    Unknown,
}

/// The longest a seller waits for the revocation list (the database's busy timeout and
/// some).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(6);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_is_seen_by_a_running_list_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = RevocationList::new(&StatePlace::default_in(dir.path()), &[1; 32]);
        assert!(!list.is_revoked(&[2; 32]));
        // Two revocations in quick succession (within one file-time tick, which the
        // JSON file of earlier versions could miss) both hold at once.
        revoke(
            &StatePlace::default_in(dir.path()),
            &[1; 32],
            &[2; 32],
            false,
        )
        .expect("revoke");
        revoke(
            &StatePlace::default_in(dir.path()),
            &[1; 32],
            &[3; 32],
            false,
        )
        .expect("revoke");
        assert!(list.is_revoked(&[2; 32]));
        assert!(list.is_revoked(&[3; 32]));
        assert!(!list.is_revoked(&[4; 32]));
        // Another product's list is separate.
        assert!(
            !RevocationList::new(&StatePlace::default_in(dir.path()), &[9; 32])
                .is_revoked(&[2; 32])
        );
        revoke(
            &StatePlace::default_in(dir.path()),
            &[1; 32],
            &[2; 32],
            true,
        )
        .expect("burn");
        let store = crate::state::StateStore::open_in(dir.path()).expect("state");
        assert!(store
            .revocation(&[1; 32], &[2; 32])
            .expect("read")
            .is_some_and(|r| r.burnt));
    }

    /// A state database that cannot be read refuses every buyer.
    #[test]
    fn an_unreadable_state_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(crate::state::STATE_FILE),
            b"not a database, at all: 32+ bytes of junk",
        )
        .expect("write");
        let list = RevocationList::new(&StatePlace::default_in(dir.path()), &[1; 32]);
        assert!(list.is_revoked(&[2; 32]));
    }

    #[test]
    fn burnt_keys_are_the_rekeyed_pairs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let identity = Identity::from_master_key([7; 32]);
        let feed = [8u8; 32];
        let seller = identity.seller_key_pair(&feed).public_key();
        revoke(&StatePlace::default_in(dir.path()), &seller, &[2; 32], true).expect("burn");
        revoke(
            &StatePlace::default_in(dir.path()),
            &seller,
            &[3; 32],
            false,
        )
        .expect("revoke");
        let burnt =
            burnt_keys(&StatePlace::default_in(dir.path()), &identity, &feed).expect("burnt");
        assert_eq!(burnt.len(), 1);
        assert_eq!(burnt[0].buyer, [2; 32]);
        assert_eq!(
            burnt[0].feed_key,
            identity.rekeyed_key_pair(&feed, &[2; 32]).public_key()
        );
    }

    /// A revalidation is answered from a snapshot of the list, and a revocation made
    /// after it is seen once the snapshot is [`SNAPSHOT_FOR`] old; a new connection's
    /// check sees it at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_sees_a_revocation_once_the_snapshot_ages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let place = StatePlace::default_in(dir.path());
        let list = Arc::new(RevocationList::new(&place, &[1; 32]));
        assert_eq!(list.recheck([2; 32]).await, Standing::Clear);
        revoke(&place, &[1; 32], &[2; 32], false).expect("revoke");
        revoke(&place, &[1; 32], &[3; 32], false).expect("revoke");
        // A new connection's check reads the row: at once.
        assert_eq!(list.check([2; 32]).await, Standing::Revoked);
        tokio::time::sleep(SNAPSHOT_FOR).await;
        assert_eq!(list.recheck([2; 32]).await, Standing::Revoked);
        assert_eq!(list.recheck([3; 32]).await, Standing::Revoked);
        assert_eq!(list.recheck([4; 32]).await, Standing::Clear);
        // Another product's list is separate.
        let other = Arc::new(RevocationList::new(&place, &[9; 32]));
        assert_eq!(other.recheck([2; 32]).await, Standing::Clear);
    }

    /// An unreadable state answers Unknown (the seller fails closed), not a stale "clear".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn check_of_an_unreadable_state_is_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(crate::state::STATE_FILE),
            b"not a database, at all: 32+ bytes of junk",
        )
        .expect("write");
        let list = Arc::new(RevocationList::new(
            &StatePlace::default_in(dir.path()),
            &[1; 32],
        ));
        assert_eq!(list.check([2; 32]).await, Standing::Unknown);
        assert_eq!(list.recheck([2; 32]).await, Standing::Unknown);
        assert_eq!(
            list.recheck([2; 32]).await,
            Standing::Unknown,
            "no snapshot kept"
        );
    }

    /// While another revalidation reads a newer snapshot, the one before answers for up
    /// to [`SNAPSHOT_STALE`] (nobody queues behind the read); past it, the buyer's row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_in_flight_lets_the_snapshot_before_answer_for_a_while() {
        let dir = tempfile::tempdir().expect("tempdir");
        let place = StatePlace::default_in(dir.path());
        let list = Arc::new(RevocationList::new(&place, &[1; 32]));
        assert_eq!(list.recheck([2; 32]).await, Standing::Clear);
        revoke(&place, &[1; 32], &[2; 32], false).expect("revoke");
        let age = |by: Duration| {
            let mut slot = list.lock_snapshot();
            slot.refreshing = true;
            let s = slot.current.as_mut().expect("a snapshot");
            s.at = Instant::now().checked_sub(by).expect("uptime");
        };
        age(SNAPSHOT_FOR * 4);
        assert_eq!(
            list.recheck([2; 32]).await,
            Standing::Clear,
            "answered by the snapshot before while a read is in flight"
        );
        age(SNAPSHOT_STALE);
        assert_eq!(
            list.recheck([2; 32]).await,
            Standing::Revoked,
            "too old: the row"
        );
        // The read in flight ends: the next revalidation reads the list again.
        list.lock_snapshot().refreshing = false;
        assert_eq!(list.recheck([2; 32]).await, Standing::Revoked);
        assert!(!list.lock_snapshot().refreshing, "cleared after the read");
    }
}
