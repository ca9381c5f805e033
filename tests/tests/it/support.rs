//! What the plugin tests (`eos`, `lnd`, `stripe`, `plugins`, `market`) had each copied:
//! loading a built plugin as the host does, a gate over one entry, reading a
//! validation's reason or remaining time, test keys, and the lock held by tests that
//! open the `faulty` fixture.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dazaar::payments::{
    CallLimits, GrantKind, LoadedPlugin, OpenedVerifier, PaymentEntry, PaymentGate, PaymentTerms,
    PluginRegistry, Validation,
};

/// The seller key the plugin tests sell under.
pub const SELLER: [u8; 32] = [0x5e; 32];
/// The buyer key that pays in the plugin tests.
pub const BUYER: [u8; 32] = [0xb0; 32];

/// A test key: 32 times `n`.
pub fn key(n: u8) -> [u8; 32] {
    [n; 32]
}

/// Plugin `name` (built by the workspace), loaded as the host loads it.
pub fn load(name: &str) -> Arc<LoadedPlugin> {
    let mut registry = PluginRegistry::new();
    registry
        .load_path(&dazaar_tests::plugin_library(name))
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

/// Call limits: each call waits at most `timeout` on `workers` threads, `queue` waiting.
pub fn limits(timeout: Duration, workers: usize, queue: usize) -> CallLimits {
    CallLimits {
        timeout,
        workers,
        queue,
    }
}

/// Plugin `name` opened with `config` (panics with the plugin's sentence if it refuses).
pub fn open(name: &str, config: &str, limits: CallLimits) -> Arc<OpenedVerifier> {
    load(name)
        .open(config, limits)
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

/// A gate over one entry: `verifier` for `terms`, answers cached for `revalidate`.
pub fn gate(
    verifier: &Arc<OpenedVerifier>,
    terms: Arc<PaymentTerms>,
    revalidate: Duration,
) -> PaymentGate {
    PaymentGate::new(
        vec![PaymentEntry {
            terms,
            verifier: Arc::clone(verifier),
        }],
        revalidate,
    )
}

/// Why `v` is not valid (panics if it is).
pub fn reason(v: Validation) -> String {
    match v {
        Validation::Invalid { reason } => reason,
        other => panic!("expected invalid, got {other:?}"),
    }
}

/// The milliseconds a time grant from `plugin` has left (panics on anything else).
pub fn remaining(v: Validation, plugin: &str) -> u64 {
    match v {
        Validation::Valid { grant, plugin: by } => {
            assert_eq!(by.as_deref(), Some(plugin));
            assert_eq!(grant.kind, GrantKind::TIME);
            grant.remaining
        }
        other => panic!("expected valid, got {other:?}"),
    }
}

/// Held by every test that opens the `faulty` fixture: `plugins::hung_plugin_times_out_
/// with_bounded_threads` counts the process's `plugin-faulty-*` threads, which a test
/// opening that plugin at the same time would change (all modules share one process).
pub fn faulty_plugin_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `open_on(port)` with a loopback port for a server that a plugin binds itself
/// (the Stripe plugin's `webhook_listen`), again with another port if that one was
/// taken. The plugin can be told port 0, but it reports the port it bound only in its
/// log, which every test that loads the same library shares (and which holds at most
/// eight files per process), so the test picks the port: one the kernel just handed
/// out (free at that moment), and on a bind failure (`addr_in_use(&error)`) a new one.
pub fn on_free_port<T, E: std::fmt::Display>(
    mut open_on: impl FnMut(u16) -> Result<T, E>,
    addr_in_use: impl Fn(&E) -> bool,
) -> (T, u16) {
    let mut last = String::new();
    for _ in 0..20 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a loopback port");
        match open_on(port) {
            Ok(t) => return (t, port),
            Err(e) if addr_in_use(&e) => last = e.to_string(),
            Err(e) => panic!("on port {port}: {e}"),
        }
    }
    panic!("no free loopback port in 20 tries: {last}");
}
