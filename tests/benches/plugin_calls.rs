//! Plugin call costs, with the real cdylibs: `cargo bench -p dazaar-tests --bench plugin_calls`.
//!
//! Prints:
//! - the cost of one `validate` call through the ABI (free plugin, on one thread);
//! - the cost of one call through the host's pool (thread hand-off and timeout included);
//! - validations per second for 10,000 distinct buyers with the ledger plugin: raw ABI on
//!   one thread, through the pool, and served from the gate's cache.
// Test and benchmark code: a panic is the failure report, and its queues are
// bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::payments::{
    now_ms, CallLimits, KeyBytes, PaymentEntry, PaymentGate, PaymentTerms, PluginRegistry,
};
use dazaar_tests::plugin_library;

const SELLER: [u8; 32] = [0x5e; 32];

fn buyer(i: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k[31] = 0xb0;
    k
}

fn main() {
    let limits = CallLimits {
        timeout: Duration::from_secs(5),
        workers: 1,
        queue: 1024,
    };
    let mut reg = PluginRegistry::new();
    let free = reg.load_path(&plugin_library("free")).expect("load free");
    let ledger = reg
        .load_path(&plugin_library("ledger"))
        .expect("load ledger");

    // 1. Raw ABI call, many calls inside one pool job (so no hand-off is measured).
    let free_v = free.open("", limits).expect("open free");
    let terms = Arc::new(PaymentTerms::new("free", "", "1", "seconds", "1"));
    let t = Arc::clone(&terms);
    const N: u32 = 2_000_000;
    let per_call = free_v
        .with_verifier_for_bench(move |v| {
            let start = Instant::now();
            let mut ok = 0u32;
            for i in 0..N {
                let r = v.validate(KeyBytes::from(buyer(i)), KeyBytes::from(SELLER), &t, 0);
                ok += u32::from(r.is_ok());
            }
            assert_eq!(ok, N);
            start.elapsed() / N
        })
        .expect("bench job");
    println!("free: validate through the ABI, one thread: {per_call:?} per call ({N} calls)");

    // 2. Through the pool (what the market layer calls), free plugin, uncached.
    let gate = PaymentGate::new(
        vec![PaymentEntry {
            terms: Arc::clone(&terms),
            verifier: Arc::clone(&free_v),
        }],
        Duration::from_secs(1),
    );
    const M: u32 = 100_000;
    let start = Instant::now();
    for i in 0..M {
        assert!(gate.validate_uncached(buyer(i), SELLER, 0).is_valid());
    }
    let pooled = start.elapsed() / M;
    println!("free: validate through the pool (hand-off + ABI): {pooled:?} per call ({M} calls)");

    // 3. Ledger with 10,000 distinct buyers, each with one payment.
    const BUYERS: u32 = 10_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ledger.jsonl");
    let now = now_ms();
    let mut text = String::new();
    for i in 0..BUYERS {
        let _ = writeln!(
            text,
            "{{\"buyer\":\"{}\",\"amount\":3600,\"time\":{now}}}",
            hex::encode(buyer(i))
        );
    }
    std::fs::write(&file, text).expect("write ledger");
    let config = format!("file = {:?}\n", file.display().to_string());
    let ledger_v = ledger.open(&config, limits).expect("open ledger");
    let lterms = Arc::new(PaymentTerms::new("ledger", "SATS", "1", "seconds", "1"));

    let t = Arc::clone(&lterms);
    let raw = ledger_v
        .with_verifier_for_bench(move |v| {
            // First call loads the file; time the passes after it.
            let _ = v.validate(KeyBytes::from(buyer(0)), KeyBytes::from(SELLER), &t, now);
            let start = Instant::now();
            for _ in 0..5 {
                for i in 0..BUYERS {
                    let r = v.validate(KeyBytes::from(buyer(i)), KeyBytes::from(SELLER), &t, now);
                    assert!(r.is_ok());
                }
            }
            start.elapsed() / 5
        })
        .expect("bench job");
    println!(
        "ledger: 10,000 buyers through the ABI, one thread: {raw:?} per pass = {:.0} validations/s",
        f64::from(BUYERS) / raw.as_secs_f64()
    );

    let gate = PaymentGate::new(
        vec![PaymentEntry {
            terms: Arc::clone(&lterms),
            verifier: Arc::clone(&ledger_v),
        }],
        Duration::from_secs(60),
    );
    let start = Instant::now();
    for i in 0..BUYERS {
        assert!(gate.validate_uncached(buyer(i), SELLER, now).is_valid());
    }
    let pass = start.elapsed();
    println!(
        "ledger: 10,000 buyers through the pool, uncached: {pass:?} per pass = {:.0} validations/s",
        f64::from(BUYERS) / pass.as_secs_f64()
    );

    for i in 0..BUYERS {
        assert!(gate.validate(buyer(i), SELLER).is_valid()); // fills the cache
    }
    let start = Instant::now();
    for i in 0..BUYERS {
        assert!(gate.validate(buyer(i), SELLER).is_valid());
    }
    let pass = start.elapsed();
    println!(
        "ledger: 10,000 buyers, revalidation served from the cache: {pass:?} per pass = {:.0} validations/s",
        f64::from(BUYERS) / pass.as_secs_f64()
    );
}
