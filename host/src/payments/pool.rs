//! A small, bounded pool of threads that make the calls into one opened verifier.
//!
//! Plugin code may block (network, disk) or hang. Calls therefore run on the pool's own
//! threads, never on the caller's (an async runtime's) thread, and the caller waits at
//! most the timeout. The pool never grows: a fixed number of threads and a bounded queue.
//! If a plugin hangs, its threads stay stuck, the queue fills, and later calls fail at
//! once with "busy" — the host does not pile up threads and keeps running.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use dazaar_plugin_api::VerifierBox;

/// Limits on the calls into one opened verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// How long a caller waits for one answer.
    pub timeout: Duration,
    /// Threads making calls into the plugin (at least 1).
    pub workers: usize,
    /// Calls that may wait for a thread (at least 1); beyond it a call fails as busy.
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

/// Why a call did not produce an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallFailure {
    /// No answer within the timeout.
    TimedOut,
    /// The queue is full (the plugin's threads are all stuck or overloaded).
    Busy,
    /// The call panicked on the host side of the boundary, or the pool is gone.
    Lost,
}

type Job = Box<dyn FnOnce(&VerifierBox) + Send + 'static>;

/// Threads calling one verifier.
pub(crate) struct CallPool {
    jobs: SyncSender<Job>,
    timeout: Duration,
}

impl CallPool {
    /// Starts `limits.workers` threads named after the plugin.
    pub(crate) fn start(
        verifier: VerifierBox,
        plugin: &str,
        limits: CallLimits,
    ) -> std::io::Result<CallPool> {
        let (jobs, rx) = mpsc::sync_channel::<Job>(limits.queue.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let verifier = Arc::new(verifier);
        for i in 0..limits.workers.max(1) {
            let rx = Arc::clone(&rx);
            let verifier = Arc::clone(&verifier);
            thread::Builder::new()
                .name(format!("plugin-{plugin}-{i}"))
                .spawn(move || loop {
                    // Take one job, releasing the lock before running it.
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => {
                            // The closure already guards plugin panics; this guards ours.
                            let _ = catch_unwind(AssertUnwindSafe(|| job(&verifier)));
                        }
                        Err(_) => return, // pool dropped
                    }
                })?;
        }
        Ok(CallPool {
            jobs,
            timeout: limits.timeout,
        })
    }

    /// Runs `f` on a pool thread and waits for its answer, at most the timeout.
    pub(crate) fn call<T, F>(&self, f: F) -> Result<T, CallFailure>
    where
        T: Send + 'static,
        F: FnOnce(&VerifierBox) -> T + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel::<T>(1);
        let deadline = Instant::now() + self.timeout;
        let job: Job = Box::new(move |verifier| {
            // A caller that gave up is not waiting: do not spend a plugin call on it.
            if Instant::now() >= deadline {
                return;
            }
            let _ = reply.send(f(verifier));
        });
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(CallFailure::Busy),
            Err(TrySendError::Disconnected(_)) => return Err(CallFailure::Lost),
        }
        match answer.recv_timeout(self.timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(CallFailure::TimedOut),
            Err(RecvTimeoutError::Disconnected) => Err(CallFailure::Lost),
        }
    }
}
