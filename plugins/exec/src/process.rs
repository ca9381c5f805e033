//! The verifier process: started on demand, one request line per call, answers matched
//! to callers by id, restarted with a jittered, capped backoff when it exits, hangs or
//! breaks the protocol. Calls while it is down fail at once (closed), with a reason.
//!
//! Threads per running process: one writes request lines to its stdin (fed by a bounded
//! queue, so a process that stops reading never blocks a caller), one reads its stdout
//! and hands each answer to the caller waiting for that id, one forwards its stderr to
//! the log. The process runs in its own process group, killed as a whole.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dazaar_plugin_api::{str_prefix, unavailable, Backoff};

use crate::protocol::{self, read_line, skip_line, Answer, LineRead, Op, Request};

/// The longest stderr line forwarded to the log (bytes); the rest of a longer line is
/// dropped.
pub const MAX_STDERR_LINE: usize = 1024;

/// The most stderr lines forwarded per second; more are counted and dropped.
pub const STDERR_LINES_PER_SECOND: u32 = 50;

/// What to run.
#[derive(Clone)]
pub struct Spec {
    /// The program (looked up in `PATH` when it has no `/`).
    pub program: String,
    /// Its arguments (may hold secrets: never logged or put in errors).
    pub args: Vec<String>,
    /// Variables added to its environment (values never logged).
    pub env: Vec<(String, String)>,
    /// Its working directory (the host's when `None`).
    pub dir: Option<PathBuf>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Arguments and environment values may be secrets.
        f.debug_struct("Spec")
            .field("args", &self.args.len())
            .field("env", &self.env.len())
            .finish_non_exhaustive()
    }
}

/// The bounds of one verifier.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a call waits for its answer; a process that lets one go unanswered that
    /// long is taken as hung and restarted.
    pub timeout: Duration,
    /// The longest stdout line (bytes, newline excluded); a longer one is a protocol
    /// error and the process is restarted.
    pub max_line: usize,
    /// The most calls waiting for answers at once; more fail at once.
    pub max_pending: usize,
    /// Waits before restarts after failures in a row (then jittered down to half).
    pub backoff: Backoff,
    /// How long a new process may take before its first answer: a call that times out
    /// in that time fails without the process being taken as hung.
    pub start_grace: Duration,
}

/// A call that got no usable answer. Its text is for the log and the host; it never
/// holds the command's arguments or environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The process is down and not yet due for a restart.
    #[error("the verifier is restarting after: {why} (next start in {wait_ms} ms)")]
    Restarting {
        /// Why it went down.
        why: String,
        /// How long until the next start may be tried.
        wait_ms: u64,
    },
    /// The command could not be started.
    #[error("cannot start the verifier command: {0}")]
    Spawn(String),
    /// Too many calls are waiting for answers.
    #[error("the verifier has {0} calls waiting already")]
    Busy(usize),
    /// The process went down while the call waited (or it broke the protocol).
    #[error("{0}")]
    Down(String),
    /// No answer in time: the process is restarted.
    #[error("the verifier did not answer within {0} ms (restarting it)")]
    Timeout(u64),
    /// No answer in time from a process that is still starting (within its grace).
    #[error("the verifier did not answer within {0} ms (it is still starting)")]
    Starting(u64),
}

impl CallError {
    /// The error as a plugin reason: an unavailable check, not a refusal.
    pub fn reason(&self) -> String {
        unavailable(self)
    }
}

type Reply = Result<Answer, String>;

/// What callers share with one process's threads.
struct Link {
    pid: u32,
    started: Instant,
    /// Whether it has answered anything yet.
    answered: std::sync::atomic::AtomicBool,
    pending: Mutex<HashMap<u64, SyncSender<Reply>>>,
    /// When and why the process went down (set once).
    down: Mutex<Option<(Instant, String)>>,
    stale: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    /// Marks the process down (once), kills its process group and fails every waiting
    /// call with `why`.
    fn fail(&self, why: &str) {
        {
            let mut down = lock(&self.down);
            if down.is_some() {
                return;
            }
            *down = Some((Instant::now(), why.to_owned()));
            // The group of a child that has not been reaped yet: reaping happens only
            // after this (see `Supervisor::retire`), so the id cannot have been reused.
            if let Ok(pgid) = libc::pid_t::try_from(self.pid) {
                // SAFETY: kill(2) with a negative pid signals that process group; no memory
                // is involved.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
        }
        let waiting: Vec<_> = lock(&self.pending).drain().collect();
        for (_, tx) in waiting {
            let _ = tx.try_send(Err(why.to_owned()));
        }
    }

    fn down(&self) -> Option<(Instant, String)> {
        lock(&self.down).clone()
    }

    /// Hands an answer to the call waiting for its id; an answer nobody waits for (its
    /// call timed out, or the id was never asked) is dropped.
    fn deliver(&self, answer: Answer) {
        let id = answer.id;
        self.answered.store(true, Ordering::Relaxed);
        match lock(&self.pending).remove(&id) {
            Some(tx) => {
                let _ = tx.try_send(Ok(answer));
            }
            None => {
                self.stale.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(id, "dropped an answer no call is waiting for");
            }
        }
    }
}

/// One running process.
struct Running {
    child: Child,
    to_stdin: SyncSender<Vec<u8>>,
    link: Arc<Link>,
}

/// The restart state.
struct Slot {
    running: Option<Running>,
    /// Processes that went down in a row without answering a call.
    failures: u32,
    /// No start before this.
    not_before: Option<Instant>,
    /// Why the last process went down.
    last_down: String,
    starts: u64,
}

/// A supervised verifier process.
pub struct Supervisor {
    spec: Spec,
    limits: Limits,
    slot: Mutex<Slot>,
    next_id: AtomicU64,
    stale: Arc<AtomicU64>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// `wait` scaled by a random factor in [1/2, 1]: verifiers of many products (or many
/// sellers) that fail together do not all restart at the same moment.
fn jittered(wait: Duration) -> Duration {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    let permille = 500 + h.finish() % 501;
    wait.mul_f64(permille as f64 / 1000.0)
}

impl Supervisor {
    /// A supervisor for `spec`; nothing is started until the first call (or [`start`]).
    ///
    /// [`start`]: Supervisor::start
    pub fn new(spec: Spec, limits: Limits) -> Supervisor {
        Supervisor {
            spec,
            limits,
            slot: Mutex::new(Slot {
                running: None,
                failures: 0,
                not_before: None,
                last_down: String::new(),
                starts: 0,
            }),
            next_id: AtomicU64::new(1),
            stale: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts the process now, if it is not running.
    pub fn start(&self) -> Result<(), CallError> {
        self.running_link().map(|_| ())
    }

    /// How many processes were started.
    pub fn starts(&self) -> u64 {
        lock(&self.slot).starts
    }

    /// Answers dropped because no call waited for them.
    pub fn stale_answers(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// The running process's id, if one runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.slot)
            .running
            .as_ref()
            .filter(|r| r.link.down().is_none())
            .map(|r| r.child.id())
    }

    /// Sends `op` and waits for its answer.
    pub fn call(&self, op: Op<'_>) -> Result<Answer, CallError> {
        let (link, to_stdin) = self.running_link()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = protocol::request_line(&Request { id, op });
        let (tx, rx): (SyncSender<Reply>, Receiver<Reply>) = sync_channel(1);
        {
            let mut pending = lock(&link.pending);
            if let Some((_, why)) = link.down() {
                return Err(CallError::Down(why));
            }
            if pending.len() >= self.limits.max_pending {
                return Err(CallError::Busy(pending.len()));
            }
            pending.insert(id, tx);
        }
        match to_stdin.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                lock(&link.pending).remove(&id);
                return Err(CallError::Busy(self.limits.max_pending));
            }
            Err(TrySendError::Disconnected(_)) => {
                lock(&link.pending).remove(&id);
                return Err(CallError::Down(
                    "the verifier stopped reading its input".into(),
                ));
            }
        }
        match rx.recv_timeout(self.limits.timeout) {
            Ok(Ok(answer)) => {
                lock(&self.slot).failures = 0;
                Ok(answer)
            }
            Ok(Err(why)) => Err(CallError::Down(why)),
            Err(RecvTimeoutError::Timeout) => {
                lock(&link.pending).remove(&id);
                let ms = u64::try_from(self.limits.timeout.as_millis()).unwrap_or(u64::MAX);
                // A process still starting up (no answer yet, within its grace) is slow,
                // not hung: its later answers are dropped as stale.
                let starting = !link.answered.load(Ordering::Relaxed)
                    && link.started.elapsed() < self.limits.start_grace;
                if starting {
                    return Err(CallError::Starting(ms));
                }
                link.fail(&format!("it did not answer within {ms} ms"));
                Err(CallError::Timeout(ms))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(CallError::Down("the verifier went down".into()))
            }
        }
    }

    /// The running process's link and input queue, starting one if it is due.
    fn running_link(&self) -> Result<(Arc<Link>, SyncSender<Vec<u8>>), CallError> {
        let mut slot = lock(&self.slot);
        if let Some(r) = slot.running.as_mut() {
            if r.link.down().is_none() {
                if let Ok(Some(status)) = r.child.try_wait() {
                    r.link.fail(&format!("it exited ({status})"));
                }
            }
            match r.link.down() {
                None => return Ok((Arc::clone(&r.link), r.to_stdin.clone())),
                Some((at, why)) => self.retire(&mut slot, at, why),
            }
        }
        let now = Instant::now();
        if let Some(t) = slot.not_before.filter(|t| *t > now) {
            return Err(CallError::Restarting {
                why: slot.last_down.clone(),
                wait_ms: u64::try_from((t - now).as_millis()).unwrap_or(u64::MAX),
            });
        }
        match self.spawn() {
            Ok(r) => {
                slot.starts += 1;
                tracing::info!(pid = r.child.id(), "started the verifier");
                let out = (Arc::clone(&r.link), r.to_stdin.clone());
                slot.running = Some(r);
                Ok(out)
            }
            Err(e) => {
                let why = format!("cannot start it: {}", e.kind());
                self.retire(&mut slot, now, why);
                Err(CallError::Spawn(e.kind().to_string()))
            }
        }
    }

    /// Reaps the process that went down at `at` (if any) and sets when the next may start.
    fn retire(&self, slot: &mut Slot, at: Instant, why: String) {
        if let Some(mut r) = slot.running.take() {
            r.link.fail(&why);
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        slot.failures = slot.failures.saturating_add(1);
        let wait = jittered(self.limits.backoff.wait(slot.failures));
        tracing::warn!(
            failures = slot.failures,
            restart_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            "the verifier is down: {why}"
        );
        slot.not_before = Some(at + wait);
        slot.last_down = why;
    }

    fn spawn(&self) -> std::io::Result<Running> {
        let mut cmd = Command::new(&self.spec.program);
        cmd.args(&self.spec.args)
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so a shell wrapper's children are killed with it.
            .process_group(0);
        if let Some(dir) = &self.spec.dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("no pipes to the child"));
        };
        let pid = child.id();
        let link = Arc::new(Link {
            pid,
            started: Instant::now(),
            answered: std::sync::atomic::AtomicBool::new(false),
            pending: Mutex::new(HashMap::new()),
            down: Mutex::new(None),
            stale: Arc::clone(&self.stale),
        });
        let (to_stdin, queue) = sync_channel(self.limits.max_pending);
        let started = [
            spawn_thread("exec-verifier-in", {
                let link = Arc::clone(&link);
                move || write_requests(stdin, queue, &link)
            }),
            spawn_thread("exec-verifier-out", {
                let link = Arc::clone(&link);
                let max = self.limits.max_line;
                move || read_answers(stdout, max, &link)
            }),
            spawn_thread("exec-verifier-err", move || forward_stderr(stderr, pid)),
        ];
        if let Some(Err(e)) = started.into_iter().find(Result::is_err) {
            link.fail("the plugin could not start its threads");
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(Running {
            child,
            to_stdin,
            link,
        })
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let mut slot = lock(&self.slot);
        if let Some(mut r) = slot.running.take() {
            r.link.fail("the plugin was closed");
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(|_| ())
}

fn write_requests(mut stdin: ChildStdin, queue: Receiver<Vec<u8>>, link: &Link) {
    while let Ok(line) = queue.recv() {
        if let Err(e) = stdin.write_all(&line).and_then(|()| stdin.flush()) {
            link.fail(&format!("cannot write to its input: {}", e.kind()));
            return;
        }
    }
    // The supervisor dropped the queue: closing stdin tells the process to stop.
}

fn read_answers(stdout: ChildStdout, max_line: usize, link: &Link) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::with_capacity(max_line.min(64 * 1024));
    loop {
        match read_line(&mut reader, max_line, &mut buf) {
            Ok(LineRead::Line) => match protocol::parse_answer(&buf) {
                Ok(Some(answer)) => link.deliver(answer),
                Ok(None) => {}
                Err(e) => {
                    link.fail(&e.to_string());
                    return;
                }
            },
            Ok(LineRead::Overlong) => {
                link.fail(&format!(
                    "it wrote a line longer than max_line ({max_line} bytes)"
                ));
                return;
            }
            Ok(LineRead::Eof) => {
                link.fail("it closed its output (exited)");
                return;
            }
            Err(e) => {
                link.fail(&format!("cannot read its output: {}", e.kind()));
                return;
            }
        }
    }
}

/// Forwards stderr lines to the log: each cut to [`MAX_STDERR_LINE`], control characters
/// replaced, at most [`STDERR_LINES_PER_SECOND`] a second (the others counted).
fn forward_stderr(stderr: ChildStderr, pid: u32) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::with_capacity(MAX_STDERR_LINE);
    let mut window = Instant::now();
    let mut in_window = 0u32;
    let mut dropped = 0u64;
    loop {
        let read = match read_line(&mut reader, MAX_STDERR_LINE, &mut buf) {
            Ok(LineRead::Eof) | Err(_) => break,
            Ok(r) => r,
        };
        if read == LineRead::Overlong {
            // The rest of the line is dropped (at the end of the stream, the next read
            // says so).
            let _ = skip_line(&mut reader);
        }
        if window.elapsed() >= Duration::from_secs(1) {
            if dropped > 0 {
                tracing::warn!(pid, dropped, "dropped verifier stderr lines (too many)");
                dropped = 0;
            }
            window = Instant::now();
            in_window = 0;
        }
        if in_window >= STDERR_LINES_PER_SECOND {
            dropped += 1;
            continue;
        }
        in_window += 1;
        let text = String::from_utf8_lossy(&buf);
        let text: String = str_prefix(&text, MAX_STDERR_LINE)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        // Warn: what a program writes to stderr is most often trouble (a traceback), and
        // a seller logs warnings by default.
        tracing::warn!(pid, "verifier: {text}");
    }
    if dropped > 0 {
        tracing::warn!(pid, dropped, "dropped verifier stderr lines (too many)");
    }
}
