//! Waiting for a condition, bounded: for tests where the thing awaited has no event to
//! wait on (a plugin's answer changing, a file appearing), instead of a sleep long
//! enough on a quiet machine.

use std::time::{Duration, Instant};

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(10);

/// Calls `f` until it gives `Some`, for at most `within`; `None` if it never did.
pub fn poll_until<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `cond` holds, for at most `within`; panics naming `what` if it never did.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    if poll_until(within, || cond().then_some(())).is_none() {
        panic!("not within {within:?}: {what}");
    }
}

/// [`wait_until`] in async code: looks again after a tokio sleep, not a blocking one.
pub async fn wait_until_async(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(POLL).await;
    }
}
