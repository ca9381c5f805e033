//! The seller's state database, SQLite against PostgreSQL:
//! `cargo bench -p dazaar-tests --bench state`.
//!
//! Prints, for each backend (PostgreSQL is the tests' throwaway server on loopback, which
//! runs with `fsync=off`, so its commit figures are not like-for-like with SQLite's
//! fsynced commits; it is skipped with a note when PostgreSQL is not installed):
//! - revocation lookups per second: the state read every validation makes (10,000 buyers,
//!   1,000 of them revoked), on one thread;
//! - `ledger add` per second: one payment per transaction, committed (fsynced on SQLite),
//!   from one thread and from 4 threads at once;
//! - `dazaar ledger add` processes: 20 started at once, the wall time until all 20 are
//!   recorded (each process opens the database, migrates if needed and commits once);
//! - revocation propagation between two seller nodes on one PostgreSQL: a buyer live on
//!   node B, `dazaar revoke` through node A's data dir, the time until the buyer receives
//!   `dazaar/invalid` (bounded below by the revalidation period, 1 s here).
// Benchmark code: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::state::{LedgerPayment, StateStore, StateUrl};
use dazaar_tests::proc::{buyer_key, dazaar, dazaar_cmd, make_text_feed, s, Proc};

const SELLER: [u8; 32] = [0x5e; 32];

fn buyer(i: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k[31] = 0xb0;
    k
}

fn now_ms() -> u64 {
    dazaar::payments::now_ms()
}

fn payment(i: u32) -> LedgerPayment {
    LedgerPayment {
        id: 0,
        buyer: buyer(i),
        seller: Some(SELLER),
        amount: 1.0,
        time: now_ms(),
        note: None,
    }
}

/// Revocation lookups and ledger adds on one backend.
fn store_figures(name: &str, url: &StateUrl) {
    let store = Arc::new(StateStore::open(url).expect("open state"));
    for i in 0..1_000u32 {
        store
            .revoke(&SELLER, &buyer(i * 10), false, now_ms())
            .expect("revoke");
    }
    const LOOKUPS: u32 = 20_000;
    let start = Instant::now();
    let mut revoked = 0u32;
    for i in 0..LOOKUPS {
        let found = store
            .revocation(&SELLER, &buyer(i % 10_000))
            .expect("lookup");
        revoked += u32::from(found.is_some());
    }
    let t = start.elapsed();
    assert_eq!(revoked, LOOKUPS / 10);
    println!(
        "{name}: revocation lookups {:.0}/s ({:?} each, {LOOKUPS} lookups over 10,000 buyers)",
        f64::from(LOOKUPS) / t.as_secs_f64(),
        t / LOOKUPS
    );

    const ADDS: u32 = 300;
    let start = Instant::now();
    for i in 0..ADDS {
        store.ledger_add(&payment(i)).expect("ledger add");
    }
    let t = start.elapsed();
    println!(
        "{name}: ledger add, one thread {:.0}/s ({:?} each, committed)",
        f64::from(ADDS) / t.as_secs_f64(),
        t / ADDS
    );

    const THREADS: u32 = 4;
    let start = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || {
                // One connection per thread, as separate processes would have.
                let store = StateStore::open(&url).expect("open state");
                for i in 0..ADDS / THREADS {
                    store
                        .ledger_add(&payment(100_000 + w * ADDS + i))
                        .expect("ledger add");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let t = start.elapsed();
    let total = store.ledger(None).expect("ledger").len();
    assert_eq!(total, (2 * ADDS) as usize, "a payment was lost");
    println!(
        "{name}: ledger add, {THREADS} threads {:.0}/s (each its own connection)",
        f64::from(ADDS) / t.as_secs_f64()
    );
}

/// 20 `dazaar ledger add` processes at once.
fn cli_figures(name: &str, data: &Path, state: &str) {
    const N: u32 = 20;
    // Built (or found fresh) before the clock starts.
    dazaar_tests::dazaar_bin();
    let start = Instant::now();
    let children: Vec<_> = (0..N)
        .map(|i| {
            dazaar_cmd(&[
                "--data-dir",
                s(data),
                "--state",
                state,
                "ledger",
                "add",
                "--buyer",
                &hex::encode(buyer(500_000 + i)),
                "--amount",
                "1",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().expect("wait");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        if std::env::var_os("BENCH_DEBUG").is_some() {
            eprintln!(
                "{:?} {}",
                start.elapsed(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    let t = start.elapsed();
    let o = dazaar(&[
        "--data-dir",
        s(data),
        "--state",
        state,
        "ledger",
        "list",
        "--json",
    ]);
    let kept = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("\"buyer\""))
        .count();
    assert_eq!(kept, N as usize, "a payment was lost");
    println!("{name}: {N} `dazaar ledger add` processes at once: all recorded in {t:?}");
}

/// Two seller nodes on one PostgreSQL: revoke through one, the buyer on the other lapses.
fn propagation(url: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 5);
    let node = |data: &Path| {
        let p = Proc::spawn(dazaar_cmd(&[
            "--data-dir",
            s(data),
            "--state",
            url,
            "sell",
            s(&feed),
            "--listen",
            "127.0.0.1:0",
            "--revalidate-ms",
            "1000",
            "--json",
        ]));
        let info = p.event("listening", Duration::from_secs(30));
        (
            p,
            info["sellerKey"].as_str().expect("key").to_owned(),
            info["addr"].as_str().expect("addr").to_owned(),
        )
    };
    let a_data = dir.path().join("node-a");
    let (_a, key, _) = node(&a_data);
    let b_data = dir.path().join("node-b");
    std::fs::create_dir_all(&b_data).expect("mkdir");
    std::fs::copy(a_data.join("master-key"), b_data.join("master-key")).expect("identity");
    let (_b, _, addr_b) = node(&b_data);
    let mut times = Vec::new();
    for i in 0..5 {
        let buyer_data = dir.path().join(format!("buyer{i}"));
        let buyer = buyer_key(&buyer_data);
        let live = Proc::spawn(dazaar_cmd(&[
            "--data-dir",
            s(&buyer_data),
            "buy",
            &key,
            "--connect",
            &addr_b,
            "--out",
            s(&dir.path().join(format!("out{i}"))),
            "--live",
            "--json",
        ]));
        live.event("valid", Duration::from_secs(30));
        let start = Instant::now();
        let o = dazaar(&[
            "--data-dir",
            s(&a_data),
            "--state",
            url,
            "revoke",
            &buyer,
            "--feed",
            s(&feed),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        live.event("invalid", Duration::from_secs(30));
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "postgres: revocation through node A to the buyer on node B: median {:?}, max {:?} \
         ({} samples, revalidation every 1 s)",
        times[times.len() / 2],
        times[times.len() - 1],
        times.len()
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = StateUrl::parse(
        &format!("sqlite:{}", s(&dir.path().join("state.db"))),
        dir.path(),
    )
    .expect("url");
    store_figures("sqlite", &sqlite);
    let cli = dir.path().join("cli");
    cli_figures("sqlite", &cli, "sqlite:");
    match dazaar_tests::pg::PgServer::database("bench_state") {
        Some(url) => {
            store_figures("postgres", &StateUrl::parse(&url, dir.path()).expect("url"));
            let url2 = dazaar_tests::pg::PgServer::database("bench_state_cli").expect("db");
            cli_figures("postgres", &cli, &url2);
            let url3 = dazaar_tests::pg::PgServer::database("bench_state_nodes").expect("db");
            propagation(&url3);
        }
        None => println!("postgres: not measured (PostgreSQL is not installed)"),
    }
}
