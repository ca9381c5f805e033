//! Starts the real `localstripe` (a stateful fake Stripe server, PyPI package
//! `localstripe`, installed by `.ci/run`) on a loopback port it picks itself.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The pinned version `.ci/run` installs.
pub const VERSION: &str = "1.15.10";

/// A running localstripe; killed when dropped.
pub struct LocalStripe {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl LocalStripe {
    /// Starts it, or `None` under the skip policy ([`crate::need`]) when the package is
    /// not installed.
    pub fn start() -> Option<LocalStripe> {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let installed = Command::new(&python)
            .args(["-c", "import localstripe"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        crate::need(
            "localstripe",
            if installed {
                Ok(())
            } else {
                Err(format!(
                    "{python} cannot import it (pip install localstripe=={VERSION}; .ci/run installs it)"
                ))
            },
        )?;
        // Port 0: the kernel picks a free port, and aiohttp prints the one it bound
        // ("======== Running on http://[::]:PORT ========"); `-u` so that line is not
        // held in a pipe buffer.
        let mut child = Command::new(&python)
            .args(["-u", "-m", "localstripe", "--from-scratch", "--port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start localstripe");
        let stdout = child.stdout.take().expect("localstripe's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let port = line
                    .split("Running on http://")
                    .nth(1)
                    .and_then(|rest| rest.rsplit_once(':'))
                    .and_then(|(_, p)| p.split_whitespace().next()?.parse::<u16>().ok());
                if let Some(port) = port {
                    let _ = tx.send(port);
                }
                // Keep reading, so the server never blocks on a full pipe.
            }
        });
        let mut ls = LocalStripe {
            child,
            base: String::new(),
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(port) => {
                ls.base = format!("http://127.0.0.1:{port}");
                Some(ls)
            }
            Err(_) => match ls.child.try_wait() {
                Ok(Some(status)) => panic!("localstripe exited at start: {status}"),
                _ => panic!("localstripe did not say its port within 20 s"),
            },
        }
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
