//! Metering the data a seller uploads to one buyer, for products priced by data.
//!
//! A [`ByteMeter`] holds *credit*: bytes the seller has already reserved for the buyer in
//! its state store (so the count survives a restart and is shared between nodes) and has
//! not sent yet. The replicator asks the meter before it builds each Data message
//! ([`ByteMeter::try_spend`] with the block's size): with enough credit the block goes
//! out; without, the request stays queued, the meter is marked *wanting* and its waker
//! tells the owner to reserve more ([`reservation`]) and then resume the connection.
//!
//! Reserving before sending means a crash (even `kill -9`) can lose reserved bytes the
//! buyer did not receive, never send bytes nobody counted: the seller errs on its own
//! side, by at most one reservation. The last block may overrun the allowance: when the
//! allowance is fully reserved ([`ByteMeter::add_credit`] with `last`) and some credit is
//! left but less than the block, the block is sent, so a buyer never gets more than the
//! allowance plus one block.
//!
//! Sans-IO like the rest of `protocol/`: no clock, no tokio; the waker is a plain
//! callback the owner installs.

use std::sync::{Arc, Mutex, MutexGuard};

/// The smallest reservation (unless less is left): a store write per 16 KiB at most.
pub const MIN_RESERVATION: u64 = 16 * 1024;
/// The largest reservation: what a crash can cost a buyer at most.
pub const MAX_RESERVATION: u64 = 8 * 1024 * 1024;

/// How many bytes to reserve when `left` bytes of the allowance are not reserved yet: a
/// quarter of them, clamped to [`MIN_RESERVATION`]..=[`MAX_RESERVATION`], and never more
/// than `left`.
pub fn reservation(left: u64) -> u64 {
    (left / 4).clamp(MIN_RESERVATION, MAX_RESERVATION).min(left)
}

/// What the owner is told when the meter runs out of credit.
pub type MeterWaker = Arc<dyn Fn() + Send + Sync>;

#[derive(Debug, Default)]
struct MeterState {
    /// Reserved, not yet sent.
    credit: u64,
    /// The allowance is fully reserved: no more credit will come until it is raised.
    last: bool,
    /// Sending is not limited (the buyer holds a time, free or one-time grant).
    unlimited: bool,
    /// A block waits for credit, and the waker was called.
    wanting: bool,
    /// Bytes sent through this meter (for logs and tests).
    sent: u64,
}

/// One buyer's metered upload of one product (see the module documentation). Shared by
/// the owner (which reserves) and the replicator (which spends).
pub struct ByteMeter {
    state: Mutex<MeterState>,
    waker: Mutex<Option<MeterWaker>>,
}

impl std::fmt::Debug for ByteMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ByteMeter")
            .field("state", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl Default for ByteMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl ByteMeter {
    /// A meter with no credit: nothing is sent until credit is added.
    pub fn new() -> ByteMeter {
        ByteMeter {
            state: Mutex::new(MeterState::default()),
            waker: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, MeterState> {
        // The state is a few counters, consistent after any panic: keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs what is called when a block waits for credit (the connection that now
    /// serves this buyer), replacing the previous one.
    pub fn set_waker(&self, waker: Option<MeterWaker>) {
        *self.waker.lock().unwrap_or_else(|p| p.into_inner()) = waker;
    }

    /// Asks to send a block of `bytes` bytes: true when it may go (its bytes are counted),
    /// false when it must wait for credit (the waker is called once per wait).
    pub fn try_spend(&self, bytes: u64) -> bool {
        let mut st = self.lock();
        if st.unlimited {
            st.sent = st.sent.saturating_add(bytes);
            return true;
        }
        if st.credit >= bytes || (st.last && st.credit > 0) {
            st.credit = st.credit.saturating_sub(bytes);
            st.sent = st.sent.saturating_add(bytes);
            return true;
        }
        let call = !st.wanting;
        st.wanting = true;
        drop(st);
        if call {
            let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(wake) = waker {
                wake();
            }
        }
        false
    }

    /// Adds `bytes` of credit just reserved; `last` when the allowance is now fully
    /// reserved. Clears the wait: the owner then resumes the connection.
    pub fn add_credit(&self, bytes: u64, last: bool) {
        let mut st = self.lock();
        st.credit = st.credit.saturating_add(bytes);
        st.last = last;
        st.wanting = false;
    }

    /// Lifts (true) or restores (false) the limit: a buyer whose grant is not a data
    /// grant is not metered.
    pub fn set_unlimited(&self, unlimited: bool) {
        self.lock().unlimited = unlimited;
    }

    /// Credit reserved and not yet sent.
    pub fn credit(&self) -> u64 {
        self.lock().credit
    }

    /// Whether a block waits for credit.
    pub fn is_wanting(&self) -> bool {
        self.lock().wanting
    }

    /// Bytes sent through this meter.
    pub fn sent(&self) -> u64 {
        self.lock().sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn reservations_are_a_clamped_quarter() {
        assert_eq!(reservation(0), 0);
        assert_eq!(reservation(1000), 1000);
        assert_eq!(reservation(50_000), MIN_RESERVATION);
        assert_eq!(reservation(400_000), 100_000);
        assert_eq!(reservation(u64::MAX), MAX_RESERVATION);
    }

    #[test]
    fn spends_only_credit_and_wakes_once_per_wait() {
        let meter = ByteMeter::new();
        let woken = Arc::new(AtomicUsize::new(0));
        let w = Arc::clone(&woken);
        meter.set_waker(Some(Arc::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        })));
        assert!(!meter.try_spend(1));
        assert!(!meter.try_spend(1));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert!(meter.is_wanting());
        meter.add_credit(2500, false);
        assert!(!meter.is_wanting());
        assert!(meter.try_spend(1000));
        assert!(meter.try_spend(1000));
        // 500 left, more may come: the block waits.
        assert!(!meter.try_spend(1000));
        assert_eq!(woken.load(Ordering::SeqCst), 2);
        assert_eq!(meter.sent(), 2000);
        // The allowance is fully reserved: the last, partly paid block goes, then nothing.
        meter.add_credit(0, true);
        assert!(meter.try_spend(1000));
        assert_eq!(meter.credit(), 0);
        assert!(!meter.try_spend(1));
        assert_eq!(meter.sent(), 3000);
    }

    #[test]
    fn unlimited_is_not_counted_against_credit() {
        let meter = ByteMeter::new();
        meter.set_unlimited(true);
        assert!(meter.try_spend(u64::MAX));
        meter.set_unlimited(false);
        assert!(!meter.try_spend(1));
    }
}
