//! What a time grant may have left, checked against the clock instead of a fixed window:
//! a loaded machine (a nested `cargo build`) can spend any time between a payment and
//! the check, and a window narrow enough to mean something is one it can overrun.

/// Asserts that `ms`, the time left of a grant of `full` ms bought by a payment stamped
/// at or after `before_ms`, is what the clock allows: at most `full`, and at least `full`
/// less the time passed since `before_ms` and `resolution_ms`, what the backend's
/// timestamps and the price's arithmetic may round away (1,000 for whole seconds).
///
/// `before_ms` is wall-clock time (`now_ms()`, ms since the epoch), the clock a plugin
/// counts a grant with: measured with `Instant` instead, the passed time can come out a
/// millisecond or two short of the wall clock's.
pub fn assert_left(ms: u64, full: u64, before_ms: u64, resolution_ms: u64) {
    // Read after the validation that gave `ms`: at least the time it counted.
    let passed = dazaar::payments::now_ms().saturating_sub(before_ms);
    let least = full.saturating_sub(passed.saturating_add(resolution_ms));
    assert!(
        (least..=full).contains(&ms),
        "{ms} ms left of {full}, {passed} ms after the payment (rounding {resolution_ms} ms)"
    );
}
