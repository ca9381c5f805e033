//! Starts the real `localstripe` (a stateful fake Stripe server, PyPI package
//! `localstripe`, installed by `.ci/run`) on a free loopback port.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The pinned version `.ci/run` installs.
pub const VERSION: &str = "1.15.10";

/// A running localstripe; killed when dropped.
pub struct LocalStripe {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl LocalStripe {
    /// Starts it, or `None` with a message on stderr when the package is not installed.
    pub fn start() -> Option<LocalStripe> {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let installed = Command::new(&python)
            .args(["-c", "import localstripe"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            eprintln!(
                "SKIPPED: localstripe is not installed (pip install localstripe=={VERSION}); .ci/run installs it"
            );
            return None;
        }
        let port = free_port();
        let child = Command::new(&python)
            .args(["-m", "localstripe", "--from-scratch", "--port"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start localstripe");
        let mut ls = LocalStripe {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(ls);
            }
            if let Ok(Some(status)) = ls.child.try_wait() {
                panic!("localstripe exited at start: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("localstripe did not listen on port {port} within 20 s");
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
