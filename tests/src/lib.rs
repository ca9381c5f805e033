//! Helpers shared by the end-to-end and interop tests in `tests/tests/it/` (and the
//! benches).
// Test and benchmark code: a panic is the failure report, and its queues are
// bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

pub mod attack;
pub mod bolt11;
pub mod eos_mock;
pub mod light;
pub mod lnd_mock;
/// LND's `lnrpc` package (messages and the `Lightning` server trait), generated at build
/// time from LND's own `lightning.proto` (vendored in `tests/proto/lnd/`, see the README
/// there) by protox and tonic-build; no `protoc` needed.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod lnrpc {
    tonic::include_proto!("lnrpc");
}
/// LND's `routerrpc` package (the `Router` service: `SendPaymentV2`), generated like
/// [`lnrpc`] from the vendored `routerrpc/router.proto`; its messages refer to `lnrpc`'s.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod routerrpc {
    tonic::include_proto!("routerrpc");
}
pub mod localstripe;
pub mod pg;
pub mod proc;
pub mod procfs;
pub mod skip;
pub mod stripe_mock;
pub mod time_left;
pub mod wait;

pub use skip::need;
pub use time_left::assert_left;
pub use wait::{poll_until, wait_until, wait_until_async};

pub use proc::{
    buy_once, buy_until_valid, buyer_key, dazaar, dazaar_cmd, feed_lines, json_lines,
    make_text_feed, s, sell, spawn_listening, Proc,
};

/// Block `i` of the crash test's deterministic feed: varied sizes, content tied to `i`.
pub fn crash_block(i: u64) -> Vec<u8> {
    let len = (i * 7919 % 997) as usize;
    let mut block = format!("block {i}:").into_bytes();
    block.extend((0..len).map(|k| (i as usize + k) as u8));
    block
}

/// The `dazaar` binary built by this workspace (built on demand).
pub fn dazaar_bin() -> PathBuf {
    dazaar_binary()
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the JS reference packages are installed (`node_modules` inside), if they are.
/// `.ci/run` installs them; a developer runs `tests/js/install.sh`.
pub fn js_dir() -> Option<PathBuf> {
    let dir = std::env::var("DAZAAR_JS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/dazaar-js")
        });
    dir.join("node_modules/hypercore").is_dir().then_some(dir)
}

/// The JS dir, when node and the JS reference are installed; otherwise `None` after the
/// skip policy's line ([`need`]: a failure under `CI`).
pub fn require_js() -> Option<PathBuf> {
    let found = skip::runs("node").and_then(|()| {
        js_dir().ok_or_else(|| {
            "the JS reference is not installed: run tests/js/install.sh (or set DAZAAR_JS_DIR)"
                .to_owned()
        })
    });
    need("node and the JS reference packages", found)
}

/// A loopback port where nothing listens, held for as long as this lives: a socket bound
/// to it that never listens, so a connection is refused (unlike a port bound and
/// released, which another process could take meanwhile).
pub struct RefusedPort {
    _socket: tokio::net::TcpSocket,
    /// The port.
    pub port: u16,
}

impl RefusedPort {
    /// Binds one.
    pub fn new() -> RefusedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind a loopback port");
        let port = socket.local_addr().expect("its address").port();
        RefusedPort {
            _socket: socket,
            port,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Default for RefusedPort {
    fn default() -> Self {
        RefusedPort::new()
    }
}

/// Runs a script from `tests/js/` with node, the JS packages on NODE_PATH; returns stdout.
pub fn node(js: &Path, script: &str, args: &[&str]) -> String {
    let out = Command::new("node")
        .arg(repo_root().join("tests/js").join(script))
        .args(args)
        .env("NODE_PATH", js.join("node_modules"))
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node {script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The cargo target directory of the running test binary (`target/debug`), found from the
/// binary's own path (`target/debug/deps/<test>-<hash>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Which package builds which plugin library.
const PACKAGES: &[(&str, &str)] = &[
    ("free", "dazaar-free"),
    ("ledger", "dazaar-ledger"),
    ("exec", "dazaar-exec"),
    ("fiat_stripe", "dazaar-fiat-stripe"),
    ("eos", "dazaar-eos"),
    ("lnd", "dazaar-lnd"),
    ("faulty", "dazaar-fixture-faulty"),
    ("oldapi", "dazaar-fixture-old-api"),
    ("future", "dazaar-fixture-future-api"),
    ("notplugin", "dazaar-fixture-not-plugin"),
    ("mismatch", "dazaar-fixture-mismatch"),
];

static BUILD: Once = Once::new();

/// Builds the plugin libraries and the `dazaar` binary once per test process with
/// `$CARGO build` (a no-op when they are fresh). `cargo test --workspace` does not build a
/// cdylib-only package's library, nor the host's binary, so without this a test could
/// load a stale or missing file.
fn build_all() {
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build").arg("--quiet");
        // Cargo sets the test crate's package variables (CARGO_PKG_NAME, CARGO_MANIFEST_DIR,
        // ...) for this process. Build scripts that watch them (ring's does) would see them
        // change between this build and the user's, and rebuild half the tree each time.
        for (key, _) in std::env::vars_os() {
            let Some(k) = key.to_str() else { continue };
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&k)
            {
                cmd.env_remove(&key);
            }
        }
        for (_, package) in PACKAGES {
            cmd.args(["-p", package]);
        }
        cmd.args(["-p", "dazaar"]);
        if target_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of the plugins failed");
    });
}

/// The `dazaar` binary of this target directory (built if needed).
pub fn dazaar_binary() -> PathBuf {
    build_all();
    let path = target_dir().join(format!("dazaar{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// The path of the built library `dazaar_<name>` (`libdazaar_<name>.so` on Linux).
pub fn plugin_library(name: &str) -> PathBuf {
    assert!(
        PACKAGES.iter().any(|(n, _)| *n == name),
        "no package builds plugin {name}"
    );
    build_all();
    // A plugin passes the host the events at the host's level when it is first loaded,
    // and a process loads each library once: the process's subscriber must be there
    // before, or a later [`capture_host_log`] would get none of the plugin's events.
    install_test_subscriber();
    let path = target_dir().join(dazaar::payments::plugin_file_name(name));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Copies plugin libraries into `dir` under their usual file names (or `as_name`).
pub fn copy_plugin(name: &str, dir: &Path, as_name: Option<&str>) -> PathBuf {
    let src = plugin_library(name);
    let dest = dir.join(dazaar::payments::plugin_file_name(as_name.unwrap_or(name)));
    std::fs::copy(&src, &dest).expect("copy plugin");
    dest
}

/// Threads of this process whose name starts with `prefix` (Linux), for checking that
/// hung plugins stay bounded. Counting by name keeps the test harness's own threads, which
/// come and go as other tests start and finish, out of the figure.
pub fn thread_count(prefix: &str) -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .map(|name| name.starts_with(prefix))
                    .unwrap_or(false)
            })
            .count(),
    )
}

/// Records this test process's `tracing` events of the host library (targets
/// `dazaar...`, which include plugins' events passed on through the plugin API's log
/// sink, `dazaar::plugin`) at every level, from now until the returned buffer is dropped.
/// Every test shares the process: events of tests running meanwhile are recorded too.
pub fn capture_host_log() -> HostLog {
    install_test_subscriber();
    let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    if let Ok(mut active) = CAPTURES.lock() {
        active.push(std::sync::Arc::clone(&buffer));
    }
    HostLog(buffer)
}

/// What [`capture_host_log`] recorded; recording stops when it is dropped.
pub struct HostLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl HostLog {
    /// The text recorded so far.
    pub fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for HostLog {
    fn drop(&mut self) {
        if let Ok(mut active) = CAPTURES.lock() {
            active.retain(|b| !std::sync::Arc::ptr_eq(b, &self.0));
        }
    }
}

type Buffer = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// The buffers of the [`HostLog`]s alive.
static CAPTURES: std::sync::Mutex<Vec<Buffer>> = std::sync::Mutex::new(Vec::new());

/// Writes to every live capture.
struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(active) = CAPTURES.lock() {
            for b in active.iter() {
                if let Ok(mut b) = b.lock() {
                    // Bounded: a test never needs more than a few MiB of log.
                    if b.len() < 16 << 20 {
                        b.extend_from_slice(buf);
                    }
                }
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the process's one global subscriber, once: the captures' output (only while
/// one is alive) and, when `RUST_LOG` is set, stderr filtered by it. Both helpers go
/// through here because a process has one global subscriber, and all the tests share it.
fn install_test_subscriber() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let capture = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(|| CaptureWriter)
            // Dynamic (asked at every event): whether a capture is alive changes, and a
            // plain `filter_fn`'s first answer is cached per callsite for good.
            .with_filter(tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
                meta.target().starts_with("dazaar")
                    && CAPTURES.lock().is_ok_and(|active| !active.is_empty())
            }));
        let registry = tracing_subscriber::registry().with(capture);
        let _ = if std::env::var_os("RUST_LOG").is_some() {
            let stderr = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::EnvFilter::from_default_env());
            tracing::subscriber::set_global_default(registry.with(stderr))
        } else {
            tracing::subscriber::set_global_default(registry)
        };
    });
}

/// When `RUST_LOG` is set, logs this test process's events to stderr (run the test with
/// `--nocapture` to see them); otherwise does nothing.
pub fn init_test_log() {
    if std::env::var_os("RUST_LOG").is_some() {
        install_test_subscriber();
    }
}

/// What the first entry's plugin answers for `buyer`, its failure detail included. A
/// peer is told only a public text when a check fails (the gate's job, tested in
/// tests/tests/it/plugins.rs); the plugin tests read the plugin's own reasons.
pub fn plugin_check(
    gate: &dazaar::payments::PaymentGate,
    buyer: [u8; 32],
    seller: [u8; 32],
) -> dazaar::payments::Validation {
    use dazaar::payments::Validation;
    let Some(entry) = gate.entries().first() else {
        panic!("the gate has no payment entry");
    };
    match entry
        .verifier
        .validate(buyer, seller, &entry.terms, dazaar::payments::now_ms())
    {
        Ok(grant) => Validation::Valid {
            grant,
            plugin: Some(entry.verifier.plugin().name().to_owned()),
        },
        Err(e) => Validation::Invalid {
            reason: e.to_string(),
        },
    }
}
