//! Running the `dazaar` binary (and JS peers) as child processes in tests and benches:
//! one `Proc` type that reads the child's stdout line by line on a thread, hands out its
//! JSON lines with a timeout, and stops the child when dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dazaar_bin;

/// How long a stopped child gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// A child process. Dropping it sends SIGTERM, waits up to three seconds, then kills it.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdin: Option<ChildStdin>,
}

impl Proc {
    /// Starts `cmd` with stdin and stdout piped (stderr goes to the test's stderr).
    pub fn spawn(cmd: Command) -> Proc {
        Proc::spawn_with_stderr(cmd, Stdio::inherit())
    }

    /// [`Proc::spawn`] with stderr going to `stderr` (a file the test reads).
    pub fn spawn_with_stderr(mut cmd: Command, stderr: impl Into<Stdio>) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines: rx,
            stdin,
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line that is JSON, or `None` if none comes within `timeout` (or
    /// stdout closed). Other lines are skipped.
    pub fn try_json(&self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        return Some(v);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// The next JSON line; panics if none comes within `timeout`.
    pub fn json(&self, timeout: Duration) -> Value {
        self.try_json(timeout)
            .unwrap_or_else(|| panic!("no JSON line from the child within {timeout:?}"))
    }

    /// The next JSON line for which `pred` holds, skipping others; panics after `timeout`.
    pub fn json_where(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.try_json(left) {
                Some(v) if pred(&v) => return v,
                Some(_) => {}
                None => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// The next line `{"event": event, ...}`, skipping others; panics after `timeout`.
    pub fn event(&self, event: &str, timeout: Duration) -> Value {
        self.json_where(timeout, &format!("a {event} event"), |v| {
            v["event"] == event
        })
    }

    /// Writes one line to the child's stdin.
    pub fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush");
    }

    /// Waits for the child to exit by itself; panics after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "child did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the child with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after the grace period).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `dazaar ARGS` as a command. Public DHT bootstrap nodes are forbidden to it.
pub fn dazaar_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(dazaar_bin());
    cmd.args(args)
        .env(dazaar::discovery::NO_PUBLIC_DHT_ENV, "1");
    cmd
}

/// Runs `dazaar ARGS` to completion.
pub fn dazaar(args: &[&str]) -> Output {
    dazaar_cmd(args)
        .stdin(Stdio::null())
        .output()
        .expect("run dazaar")
}

/// Starts `dazaar ARGS` and returns it with its first `listening` event.
pub fn spawn_listening(args: &[&str]) -> (Proc, Value) {
    let p = Proc::spawn(dazaar_cmd(args));
    let first = p.event("listening", Duration::from_secs(10));
    (p, first)
}

/// Starts `dazaar sell ARGS --json` and returns it with its `listening` line.
pub fn sell(args: &[&str]) -> (Proc, Value) {
    let mut all = vec!["sell"];
    all.extend_from_slice(args);
    all.push("--json");
    spawn_listening(&all)
}

/// A path as a command-line argument (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The JSON lines of a finished command's output.
pub fn json_lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Makes a feed in `dir` with `lines` text blocks `line 0\n`, `line 1\n`, ... through the
/// CLI (`feed create` + `feed append`).
pub fn make_text_feed(dir: &Path, lines: usize) {
    let o = dazaar(&["feed", "create", s(dir)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let input = dir.with_extension("txt");
    let text: String = (0..lines).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&input, text).expect("write");
    let o = dazaar(&["feed", "append", s(dir), s(&input)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `dazaar --data-dir DATA buy KEY --connect ADDR --out OUT --json`, once.
pub fn buy_once(data: &Path, key: &str, addr: &str, out: &Path) -> Output {
    dazaar(&[
        "--data-dir",
        s(data),
        "buy",
        key,
        "--connect",
        addr,
        "--out",
        s(out),
        "--json",
    ])
}

/// Buys (as [`buy_once`]) until the seller lets the buyer have the feed, for at most
/// `within` (a payment reaches the seller's plugin within a revalidation period or a
/// poll); returns the successful run's JSON lines. Panics with the last error after that.
pub fn buy_until_valid(
    data: &Path,
    key: &str,
    addr: &str,
    out: &Path,
    within: Duration,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let o = buy_once(data, key, addr, out);
        if o.status.success() {
            return json_lines(&o.stdout);
        }
        assert!(
            Instant::now() < deadline,
            "the paid buyer never became valid: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The text lines of a feed received into `out` (`dazaar feed cat --lines`).
pub fn feed_lines(out: &Path) -> Vec<String> {
    let cat = dazaar(&["feed", "cat", s(out), "--lines"]);
    assert!(
        cat.status.success(),
        "{}",
        String::from_utf8_lossy(&cat.stderr)
    );
    String::from_utf8_lossy(&cat.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The buyer key (hex) of the identity in data dir `data` (`dazaar id --json`).
pub fn buyer_key(data: &Path) -> String {
    let id = dazaar(&["--data-dir", s(data), "id", "--json"]);
    assert!(
        id.status.success(),
        "{}",
        String::from_utf8_lossy(&id.stderr)
    );
    json_lines(&id.stdout)[0]["buyerKey"]
        .as_str()
        .expect("a buyer key")
        .to_owned()
}
