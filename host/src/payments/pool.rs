//! A small, bounded pool of threads that make the calls into one opened verifier, with
//! two lanes so that strangers cannot starve the buyers who pay.
//!
//! Plugin code may block (network, disk) or hang. Calls therefore run on the pool's own
//! threads, never on the caller's (an async runtime's) thread, and the caller waits at
//! most the timeout. The pool never grows: a fixed number of threads and bounded queues.
//! If a plugin hangs, its threads stay stuck, the queues fill, and later calls fail at
//! once with "busy" — the host does not pile up threads and keeps running.
//!
//! # Lanes
//!
//! [`Lane::Priority`] carries the revalidations of buyers that were valid (and the calls
//! of trusted callers: the buyer side, tests); [`Lane::Stranger`] carries everything a
//! stranger can cause (first checks of unknown keys, user messages). Workers take priority
//! calls first (strict priority), and thread 0 never takes a stranger's call: however many
//! stranger calls hang in the plugin, one thread is left for the paying buyers. The
//! stranger queue is a quarter of the queue; when it is full a stranger's call is shed at
//! once ([`CallFailure::Busy`]) and never waits in front of a priority call.
//!
//! Callers wait either on the calling thread ([`CallPool::call`], for synchronous code) or
//! as a future ([`CallPool::call_async`]), which holds no thread while it waits.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use dazaar_plugin_api::VerifierBox;

/// Limits on the calls into one opened verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// How long a caller waits for one answer.
    pub timeout: Duration,
    /// Threads making calls into the plugin. At least 2 are started: thread 0 is kept for
    /// the priority lane (buyers that were valid), the others serve both lanes.
    pub workers: usize,
    /// Priority calls that may wait for a thread (at least 1); beyond it a call fails as
    /// busy. Strangers' calls may wait in a separate queue of a quarter of this (at
    /// least 1).
    pub queue: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits {
            timeout: Duration::from_secs(5),
            workers: 2,
            queue: 1024,
        }
    }
}

/// Which queue a call waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Buyers that were valid, and trusted callers: served first, with a thread of its own.
    Priority,
    /// Work a stranger can cause: a bounded share, shed when full.
    Stranger,
}

/// Why a call did not produce an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallFailure {
    /// No answer within the timeout.
    TimedOut,
    /// The lane's queue is full (the plugin's threads are all stuck or overloaded).
    Busy,
    /// The call panicked on the host side of the boundary, or the pool is gone.
    Lost,
}

/// A call: it counts itself in the `AtomicU64` when it reaches the plugin.
type Job = Box<dyn FnOnce(&VerifierBox, &AtomicU64) + Send + 'static>;

/// A call waiting for a thread.
struct Queued {
    job: Job,
    /// Past it the caller has given up: the call is dropped, not made.
    deadline: Instant,
}

#[derive(Default)]
struct Queues {
    priority: VecDeque<Queued>,
    stranger: VecDeque<Queued>,
    closed: bool,
    /// Threads waiting for a call (none: nobody needs waking).
    idle: usize,
}

/// What the pool's threads share.
struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
    priority_cap: usize,
    stranger_cap: usize,
    /// Calls that reached the plugin.
    made: AtomicU64,
    /// Calls refused at once because their lane was full.
    shed: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        // Jobs never run under the lock, so a poisoned lock still holds sound queues.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Threads calling one verifier.
pub(crate) struct CallPool {
    shared: Arc<Shared>,
    timeout: Duration,
}

/// The number of threads a pool with `limits` starts.
pub(crate) fn thread_count(limits: CallLimits) -> usize {
    limits.workers.max(2)
}

impl CallPool {
    /// Starts the threads (see [`CallLimits::workers`]), named after the plugin.
    pub(crate) fn start(
        verifier: VerifierBox,
        plugin: &str,
        limits: CallLimits,
    ) -> std::io::Result<CallPool> {
        let queue = limits.queue.max(1);
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            priority_cap: queue,
            stranger_cap: (queue / 4).max(1),
            made: AtomicU64::new(0),
            shed: AtomicU64::new(0),
        });
        let verifier = Arc::new(verifier);
        let pool = CallPool {
            shared: Arc::clone(&shared),
            timeout: limits.timeout,
        };
        for i in 0..thread_count(limits) {
            let shared = Arc::clone(&shared);
            let verifier = Arc::clone(&verifier);
            // Thread 0 is the priority lane's own.
            let takes_strangers = i > 0;
            // On failure `pool` is dropped, which stops the threads already started.
            thread::Builder::new()
                .name(format!("plugin-{plugin}-{i}"))
                .spawn(move || worker(&shared, &verifier, takes_strangers))?;
        }
        Ok(pool)
    }

    /// Calls that reached the plugin so far.
    pub(crate) fn calls_made(&self) -> u64 {
        self.shared.made.load(Ordering::Relaxed)
    }

    /// Calls refused at once because their lane's queue was full.
    pub(crate) fn calls_shed(&self) -> u64 {
        self.shared.shed.load(Ordering::Relaxed)
    }

    fn submit(&self, lane: Lane, job: Job) -> Result<(), CallFailure> {
        let deadline = Instant::now() + self.timeout;
        let mut queues = self.shared.lock();
        if queues.closed {
            return Err(CallFailure::Lost);
        }
        let (queue, cap) = match lane {
            Lane::Priority => (&mut queues.priority, self.shared.priority_cap),
            Lane::Stranger => (&mut queues.stranger, self.shared.stranger_cap),
        };
        if queue.len() >= cap {
            drop(queues);
            self.shared.shed.fetch_add(1, Ordering::Relaxed);
            return Err(CallFailure::Busy);
        }
        queue.push_back(Queued { job, deadline });
        let idle = queues.idle;
        drop(queues);
        // Thousands of revalidations a second come through here: wake a thread only when
        // one waits, and one for a priority call (any thread takes it). All for a
        // stranger's: thread 0 may not take it and would swallow a single wake-up.
        match (idle, lane) {
            (0, _) => {}
            (_, Lane::Priority) => self.shared.ready.notify_one(),
            (_, Lane::Stranger) => self.shared.ready.notify_all(),
        }
        Ok(())
    }

    /// Runs `f` on a pool thread and waits for its answer on this thread, at most the
    /// timeout.
    pub(crate) fn call<T, F>(&self, lane: Lane, f: F) -> Result<T, CallFailure>
    where
        T: Send + 'static,
        F: FnOnce(&VerifierBox) -> T + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel::<T>(1);
        self.submit(
            lane,
            Box::new(move |verifier, made| {
                made.fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(f(verifier));
            }),
        )?;
        match answer.recv_timeout(self.timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(CallFailure::TimedOut),
            Err(RecvTimeoutError::Disconnected) => Err(CallFailure::Lost),
        }
    }

    /// Queues `f` now (a full lane fails at once) and gives a future of its answer that
    /// waits at most the timeout without holding a thread. Needs a tokio runtime with
    /// timers to be polled.
    pub(crate) fn call_async<T, F>(
        &self,
        lane: Lane,
        f: F,
    ) -> impl Future<Output = Result<T, CallFailure>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(&VerifierBox) -> T + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel::<T>();
        let submitted = self.submit(
            lane,
            Box::new(move |verifier, made| {
                // A caller that dropped its future is not waiting: skip the plugin call.
                if !reply.is_closed() {
                    made.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(f(verifier));
                }
            }),
        );
        let timeout = self.timeout;
        async move {
            submitted?;
            match tokio::time::timeout(timeout, answer).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(_)) => Err(CallFailure::Lost),
                Err(_) => Err(CallFailure::TimedOut),
            }
        }
    }
}

impl Drop for CallPool {
    fn drop(&mut self) {
        let mut queues = self.shared.lock();
        queues.closed = true;
        // Queued callers get `Lost` as their replies are dropped.
        queues.priority.clear();
        queues.stranger.clear();
        drop(queues);
        self.shared.ready.notify_all();
    }
}

/// One pool thread: takes priority calls first and, unless it is the priority lane's own
/// thread, strangers' calls when no priority call waits.
fn worker(shared: &Shared, verifier: &VerifierBox, takes_strangers: bool) {
    loop {
        let next = {
            let mut queues = shared.lock();
            loop {
                if queues.closed {
                    return;
                }
                if let Some(q) = queues.priority.pop_front() {
                    break q;
                }
                if takes_strangers {
                    if let Some(q) = queues.stranger.pop_front() {
                        break q;
                    }
                }
                queues.idle += 1;
                queues = shared.ready.wait(queues).unwrap_or_else(|p| p.into_inner());
                queues.idle -= 1;
            }
        };
        // A caller that gave up is not waiting: do not spend a plugin call on it.
        if Instant::now() >= next.deadline {
            continue;
        }
        // The closure already guards plugin panics; this guards ours.
        let _ = catch_unwind(AssertUnwindSafe(|| (next.job)(verifier, &shared.made)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::sabi_trait::TD_Opaque;
    use abi_stable::std_types::{RErr, RNone, ROk, ROption, RResult, RStr, RString};
    use dazaar_plugin_api::{Grant, KeyBytes, PaymentTerms, UserMessage, Verifier, Verifier_TO};

    /// A verifier that keeps every call for a buyer whose key starts with 0 waiting until
    /// the test opens `held`, and answers the others at once.
    struct Held {
        held: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Verifier for Held {
        fn validate(
            &self,
            buyer: KeyBytes,
            _seller: KeyBytes,
            _terms: &PaymentTerms,
            _now_ms: u64,
        ) -> RResult<Grant, RString> {
            if buyer.bytes[0] == 0 {
                let (lock, open) = &*self.held;
                let mut released = lock.lock().unwrap();
                while !*released {
                    released = open.wait(released).unwrap();
                }
            }
            ROk(Grant::free())
        }

        fn user_message(
            &self,
            _buyer: KeyBytes,
            _seller: KeyBytes,
            _terms: &PaymentTerms,
            _message: &UserMessage,
        ) -> RResult<ROption<UserMessage>, RString> {
            ROk(RNone)
        }

        fn payment_request(
            &self,
            _buyer: KeyBytes,
            _seller: KeyBytes,
            _terms: &PaymentTerms,
            _amount: RStr<'_>,
        ) -> RResult<RString, RString> {
            RErr("not here".into())
        }
    }

    fn held_pool(workers: usize, queue: usize) -> (CallPool, Arc<(Mutex<bool>, Condvar)>) {
        let held = Arc::new((Mutex::new(false), Condvar::new()));
        let verifier = Verifier_TO::from_value(
            Held {
                held: Arc::clone(&held),
            },
            TD_Opaque,
        );
        let limits = CallLimits {
            timeout: Duration::from_secs(10),
            workers,
            queue,
        };
        (CallPool::start(verifier, "test", limits).unwrap(), held)
    }

    fn release(held: &(Mutex<bool>, Condvar)) {
        *held.0.lock().unwrap() = true;
        held.1.notify_all();
    }

    fn ask(buyer: u8) -> impl FnOnce(&VerifierBox) -> bool + Send + 'static {
        move |v| {
            let terms = PaymentTerms::new("test", "", "1", "seconds", "1");
            v.validate(
                KeyBytes::from([buyer; 32]),
                KeyBytes::from([9; 32]),
                &terms,
                0,
            )
            .is_ok()
        }
    }

    /// Waits (bounded) until `cond` holds: the pool's threads report through counters.
    fn wait_for(cond: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < until, "condition not reached");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[tokio::test]
    async fn strangers_that_hang_leave_a_thread_for_the_priority_lane() {
        let (pool, held) = held_pool(3, 8);
        // Strangers' calls that never return: two fill the threads that take them, two
        // the stranger queue (8 / 4), the rest are shed at once.
        let mut strangers = Vec::new();
        for _ in 0..2 {
            strangers.push(pool.call_async(Lane::Stranger, ask(0)));
        }
        wait_for(|| pool.calls_made() == 2);
        for _ in 0..8 {
            strangers.push(pool.call_async(Lane::Stranger, ask(0)));
        }
        assert_eq!(pool.calls_shed(), 6);
        // A priority call is answered by the reserved thread.
        assert_eq!(pool.call_async(Lane::Priority, ask(1)).await, Ok(true));
        assert_eq!(pool.call(Lane::Priority, ask(1)), Ok(true));
        assert_eq!(pool.calls_made(), 4);
        release(&held);
        let mut answered = 0;
        let mut busy = 0;
        for s in strangers {
            match s.await {
                Ok(true) => answered += 1,
                Err(CallFailure::Busy) => busy += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!((answered, busy), (4, 6));
    }

    #[tokio::test]
    async fn priority_calls_go_before_waiting_strangers() {
        // One thread for both lanes (plus the reserved one): once a stranger holds it, a
        // waiting stranger stays queued while priority calls are served.
        let (pool, held) = held_pool(2, 8);
        let first = pool.call_async(Lane::Stranger, ask(0));
        wait_for(|| pool.calls_made() == 1);
        let second = pool.call_async(Lane::Stranger, ask(2));
        for _ in 0..5 {
            assert_eq!(pool.call_async(Lane::Priority, ask(1)).await, Ok(true));
        }
        // The queued stranger was not served by the reserved thread.
        assert_eq!(pool.calls_made(), 6);
        release(&held);
        assert_eq!(first.await, Ok(true));
        assert_eq!(second.await, Ok(true));
        assert_eq!(pool.calls_made(), 7);
    }

    #[tokio::test]
    async fn a_dropped_future_costs_no_plugin_call() {
        let (pool, held) = held_pool(2, 8);
        let first = pool.call_async(Lane::Stranger, ask(0));
        wait_for(|| pool.calls_made() == 1);
        drop(pool.call_async(Lane::Stranger, ask(2)));
        release(&held);
        assert_eq!(first.await, Ok(true));
        // The dropped caller's job is taken off the queue before this one, sees nobody
        // waiting, and skips the plugin.
        assert_eq!(pool.call_async(Lane::Stranger, ask(3)).await, Ok(true));
        assert_eq!(pool.calls_made(), 2);
    }
}
