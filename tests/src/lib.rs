//! Helpers shared by the end-to-end and interop tests in `tests/tests/`.
// Test and benchmark code: a panic is the failure report, and its queues are
// bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

pub mod attack;
pub mod bolt11;
pub mod eos_mock;
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
pub mod proc;
pub mod procfs;
pub mod stripe_mock;

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

/// The JS dir, or a panic explaining how to install it: interop tests must not pass
/// silently when the reference is missing. Set `DAZAAR_SKIP_JS=1` to skip them knowingly.
pub fn require_js() -> Option<PathBuf> {
    if std::env::var("DAZAAR_SKIP_JS").is_ok_and(|v| v == "1") {
        eprintln!("DAZAAR_SKIP_JS=1: skipping a JS interop test");
        return None;
    }
    match js_dir() {
        Some(d) => Some(d),
        None => panic!(
            "the JS reference is not installed: run tests/js/install.sh (or set DAZAAR_JS_DIR), or DAZAAR_SKIP_JS=1 to skip"
        ),
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

/// Sends this test process's `tracing` events (the host library's, and through the plugin
/// API's log sink the plugins') at every level to a buffer, and returns it. The
/// subscriber is process-wide and installed once; later calls return the same buffer.
pub fn capture_host_log() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER
        .get_or_init(|| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let writer = Arc::clone(&buffer);
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || CaptureWriter(Arc::clone(&writer)))
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in this test binary");
            buffer
        })
        .clone()
}

struct CaptureWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            // Bounded: a test never needs more than a few MiB of log.
            if b.len() < 16 << 20 {
                b.extend_from_slice(buf);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// When `RUST_LOG` is set, logs this test process's events to stderr (run the test with
/// `--nocapture` to see them); otherwise does nothing.
pub fn init_test_log() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// What the first entry's plugin answers for `buyer`, its failure detail included. A
/// peer is told only a public text when a check fails (the gate's job, tested in
/// tests/tests/plugins.rs); the plugin tests read the plugin's own reasons.
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
