//! A throwaway PostgreSQL cluster for the tests: `initdb` into a temporary directory (as
//! the `postgres` user when running as root, which `initdb` refuses), a server on a
//! loopback port with its socket in that directory, stopped and deleted at the end. One
//! per test process; each test takes a database of its own. No mock: the real server.
//!
//! Also compiled into the host library's unit tests (`state::pg_server`).
//!
//! Skip policy: without PostgreSQL's programs a test prints one `SKIPPED` line and passes,
//! unless `CI` is set (CI installs them: a missing server there is a failure).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// A port nothing listens on (bound, never listening), held as long as the value lives.
pub fn refused_port() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    // Closed again at once: a connection is refused (nothing listens on loopback there).
    drop(socket);
    addr
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();

extern "C" fn stop_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(server)) = SERVER.get() {
            server.stop();
            let _ = std::fs::remove_dir_all(server.dir.path());
        }
    });
}

pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DAZAAR_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

impl PgServer {
    fn stop(&self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data.display().to_string(), "-m", "immediate", "stop"])
            .output();
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start() -> Result<PgServer, String> {
        let bin = bin_dir().ok_or("no PostgreSQL programs (/usr/lib/postgresql/*/bin)")?;
        // SAFETY: geteuid has no preconditions.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("cannot hand the cluster directory to the postgres user".into());
            }
        }
        let mut server = PgServer {
            dir,
            bin,
            port: 0,
            as_postgres,
        };
        let data = server.dir.path().join("data");
        let out = server
            .command("initdb")
            .args([
                "-D",
                &data.display().to_string(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
        }
        // The server must be told its port: take a free one and retry with another when
        // something else took it first (the port is known only once bound).
        for _ in 0..5 {
            let port = refused_port().port();
            let log = server.dir.path().join("log");
            let out = server
                .command("pg_ctl")
                .args([
                    "-D",
                    &data.display().to_string(),
                    "-l",
                    &log.display().to_string(),
                ])
                .args(["-w", "-t", "30", "-o"])
                .arg(format!(
                    "-p {port} -h 127.0.0.1 -k {} -c fsync=off",
                    server.dir.path().display()
                ))
                .arg("start")
                .output()
                .map_err(|e| format!("pg_ctl: {e}"))?;
            if out.status.success() {
                server.port = port;
                return Ok(server);
            }
        }
        Err(format!(
            "the server did not start: {}",
            std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default()
        ))
    }

    /// A new empty database on the shared server, as a URL; `None` (after one `SKIPPED`
    /// line) when PostgreSQL is not installed and `CI` is not set. The server is stopped
    /// and its directory deleted when the test process exits (statics are never dropped,
    /// so through `atexit`).
    pub fn database(test: &str) -> Option<String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let server = match SERVER.get_or_init(|| {
            let started = PgServer::start();
            if started.is_ok() {
                // SAFETY: `stop_at_exit` is an `extern "C" fn()` that does not unwind.
                unsafe { libc::atexit(stop_at_exit) };
            }
            started
        }) {
            Ok(s) => s,
            Err(why) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "{test}: needs PostgreSQL: {why}"
                );
                eprintln!("SKIPPED {test}: needs PostgreSQL: {why}");
                return None;
            }
        };
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port);
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).expect("connect");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        Some(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            server.port
        ))
    }
}
