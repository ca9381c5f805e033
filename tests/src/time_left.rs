//! What a time grant may have left, checked against the clock instead of a fixed window:
//! a loaded machine (a nested `cargo build`) can spend any time between a payment and
//! the check, and a window narrow enough to mean something is one it can overrun.

use std::time::Instant;

/// Asserts that `ms`, the time left of a grant of `full` ms bought by a payment stamped
/// after `before`, is what the clock allows: at most `full`, and at least `full` less the
/// time passed since `before` and `resolution_ms`, what the backend's timestamps drop
/// (1,000 for whole seconds; 1 for milliseconds, both clocks truncating to the ms).
pub fn assert_left(ms: u64, full: u64, before: Instant, resolution_ms: u64) {
    let passed = u64::try_from(before.elapsed().as_millis()).unwrap_or(u64::MAX);
    let least = full.saturating_sub(passed.saturating_add(resolution_ms));
    assert!(
        (least..=full).contains(&ms),
        "{ms} ms left of {full}, {passed} ms after the payment (timestamps in units of \
         {resolution_ms} ms)"
    );
}
