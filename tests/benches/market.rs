//! Market benchmark: one seller, N concurrent buyers (default 1,000), each with its own
//! rekeyed feed on its own connection, the seller appending 100 blocks/s. Reports the
//! delivery latency (append → block verified and stored at a full buyer: p50, p99, max),
//! the buyers live, the blocks delivered, the seller's CPU (also per 1,000 block
//! deliveries) and RSS; then the same load against the JS dazaar@1.6.1 seller.
//!
//! The buyers run in this process, on the same cores as the seller, so most of them are
//! light, to measure the seller rather than the buyers. A light buyer
//! (`dazaar_tests::light`) has its own key, connection and rekeyed feed and does
//! everything on the wire that a full buyer does: handshake, payment check, Want, a
//! Request for every block (naming the tree nodes it holds, as a full buyer's do) and
//! every block received, decrypted and decoded, its Merkle proof hashed up to the roots,
//! so the seller does exactly the same work for it. It skips exactly two things: the
//! Ed25519 verification of the seller's signature over the roots (one per announcement;
//! without it the hashed roots are not checked against anything), and storage (block
//! bytes and signatures are dropped, tree nodes and bitfield are kept in memory; no disk,
//! and its blocks are not read back or parsed for a timestamp). A set of full buyers (`BENCH_FULL_BUYERS`,
//! default 10, spread over the connection storm) verify everything and store their feed
//! on disk like `dazaar buy`; the latency percentiles are theirs. "Live" counts every
//! buyer that synced; "deliveries" counts the blocks every buyer received in the window.
//!
//! The Rust seller is a `dazaar sell` process selling through the ledger plugin (every
//! buyer paid); blocks are appended by a `dazaar feed append` process fed one line per
//! 10 ms, each line carrying its wall-clock time; the JS seller appends the same lines
//! itself.
//!
//! Like with like: both sellers revalidate every buyer every 200 ms (the JS seller's
//! `validateInterval`); the CPU of the Rust seller's appending process is counted with
//! the seller's (the JS seller appends in its own process). Differences that remain: the
//! Rust appender fsyncs each append to disk while the JS seller keeps its feed in RAM; a
//! Rust block's time is stamped when its line is written to the appender's pipe, a JS
//! block's when the JS seller appends it (so the Rust latency includes the pipe and the
//! appender's write); the JS seller sends `dazaar/valid` on every validation, the Rust
//! seller when the answer changes and then every 5 s (`VALID_REPEAT`).
//!
//! `cargo bench -p dazaar-tests --bench market` (`BENCH_BUYERS`, `BENCH_FULL_BUYERS`,
//! `BENCH_SECONDS` to change; `BENCH_REVALIDATE_MS` sets both sellers' revalidation
//! period). `BENCH_IDLE_BUYERS=N` adds N idle buyers, connected and paid but holding
//! block 0 only (a sparse purchase that follows nothing): the seller still announces
//! growth to them, and they measure what a connected buyer costs in memory
//! (`BENCH_BUYERS=100 BENCH_IDLE_BUYERS=9900 BENCH_REVALIDATE_MS=1000` is the
//! 10,000-buyer figure: at 200 ms, 10,000 buyers are 50,000 plugin calls a second).
//! `BENCH_SIGNATURES=N` sets the Rust seller's `--signatures-per-second`.
// Test and benchmark code: a panic is the failure report, and its queues are
// bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dazaar::market::buyer::BuyProgress;
use dazaar::market::{buy, BuyOptions, BuyerEvent, Identity};
use dazaar::net::NetConfig;
use dazaar_tests::light::buy_light;
use dazaar_tests::*;
use tokio::sync::{mpsc, watch};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Result {
    label: String,
    p50: u64,
    p99: u64,
    max: u64,
    samples: usize,
    deliveries: u64,
    buyers_ok: usize,
    cpu: f64,
    /// Seller CPU seconds over the window.
    cpu_s: f64,
    rss_mib: f64,
    hwm_mib: f64,
    /// The buyers' CPU (this process) over the window, in cores.
    buyers_cpu: f64,
    /// Idle buyers connected and valid.
    idle_connected: usize,
}

/// Whether buyer `i` of `n` is one of the `full` full buyers: every (n / full)-th, so
/// that they connect throughout the storm (exactly `full` of them when `full <= n`).
fn is_full(i: usize, n: usize, full: usize) -> bool {
    full >= n || (i * full) % n < full
}

/// Runs `buyers` live buyers against `addr` for `seconds`, `full` of them full buyers
/// measuring the latency of blocks whose content is `t=<ms>`, the others light (see the
/// module doc). `seller_pid` is sampled for CPU and memory; the CPU of `appender_pid` (the
/// Rust seller's separate appending process) is added to the seller's.
#[allow(clippy::too_many_arguments)]
async fn measure(
    label: &str,
    seller_key: [u8; 32],
    addr: std::net::SocketAddr,
    buyers: &[Identity],
    live: usize,
    full: usize,
    dir: &std::path::Path,
    seconds: u64,
    seller_pid: u32,
    appender_pid: Option<u32>,
) -> Result {
    let (stop, shutdown) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel::<(usize, u64)>(1 << 16);
    let connected = Arc::new(AtomicUsize::new(0));
    // Blocks received by every buyer (full and light) since the start.
    let delivered = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let idle_ok = Arc::new(AtomicUsize::new(0));
    for (i, id) in buyers.iter().enumerate() {
        // Buyers past `live` are idle: they hold block 0 only and stay connected.
        let idle = i >= live;
        let full = !idle && is_full(i, live, full);
        let opts = BuyOptions {
            seller_key,
            addr,
            out: dir.join(format!("{label}-b{i}")),
            live: true,
            accept_terms: true,
            data_dir: dir.join(format!("{label}-d{i}")),
            net: NetConfig {
                max_connections: 8192,
                ..NetConfig::default()
            },
            answer_timeout: Duration::from_secs(60),
            send: Vec::new(),
            report_blocks: full,
            range: idle.then_some((0, Some(1))),
            tail: false,
        };
        let id = id.clone();
        let idle_ok = idle_ok.clone();
        let shutdown = shutdown.clone();
        let tx = tx.clone();
        let connected = connected.clone();
        let delivered = delivered.clone();
        tasks.push(tokio::spawn(async move {
            let (etx, mut erx) = mpsc::channel(1024);
            let (ptx, mut progress) = watch::channel(BuyProgress::default());
            let run = tokio::spawn(async move {
                if full {
                    buy(&id, opts, Some(etx), shutdown).await
                } else {
                    buy_light(&id, opts, Some(etx), Some(ptx), shutdown).await
                }
            });
            // A light buyer's deliveries, from its progress (a full buyer counts its
            // Block events below).
            let counter = (!full).then(|| {
                let delivered = delivered.clone();
                tokio::spawn(async move {
                    let mut seen = 0;
                    while progress.changed().await.is_ok() {
                        let now = progress.borrow_and_update().downloaded;
                        delivered.fetch_add(now.saturating_sub(seen), Ordering::Relaxed);
                        seen = seen.max(now);
                    }
                })
            });
            let mut synced = false;
            while let Some(ev) = erx.recv().await {
                match ev {
                    BuyerEvent::Valid(_) if idle && !synced => {
                        synced = true;
                        idle_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ if idle => {}
                    BuyerEvent::Synced { .. } if !synced => {
                        synced = true;
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    BuyerEvent::Block { data, .. } => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        if !synced {
                            continue;
                        }
                        let at = now_ms();
                        if let Some(t) = std::str::from_utf8(&data)
                            .ok()
                            .and_then(|s| s.strip_prefix("t="))
                            .and_then(|t| t.parse::<u64>().ok())
                        {
                            let _ = tx.try_send((i, at.saturating_sub(t)));
                        }
                    }
                    _ => {}
                }
            }
            let _ = run.await;
            if let Some(counter) = counter {
                let _ = counter.await;
            }
        }));
        // Pace the connection storm a little.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(tx);
    // Wait until the buyers are in (or 60 s).
    let start = std::time::Instant::now();
    let wait = Duration::from_secs(60 + buyers.len() as u64 / 100);
    while (connected.load(Ordering::Relaxed) < live
        || idle_ok.load(Ordering::Relaxed) < buyers.len() - live)
        && start.elapsed() < wait
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let buyers_ok = connected.load(Ordering::Relaxed);
    let idle_connected = idle_ok.load(Ordering::Relaxed);
    // Drop what arrived while connecting; measure a window.
    while rx.try_recv().is_ok() {}
    let seller_cpu = || {
        procfs::cpu_ticks(seller_pid).unwrap_or(0)
            + appender_pid.and_then(procfs::cpu_ticks).unwrap_or(0)
    };
    let cpu0 = seller_cpu();
    let own0 = procfs::cpu_ticks(std::process::id()).unwrap_or(0);
    let delivered0 = delivered.load(Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    let mut lat = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while let Ok(Some((_, l))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        lat.push(l);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = seller_cpu();
    let own1 = procfs::cpu_ticks(std::process::id()).unwrap_or(0);
    let deliveries = delivered.load(Ordering::Relaxed).saturating_sub(delivered0);
    let ticks_per_s = procfs::ticks_per_second() as f64;
    let rss = procfs::rss_kib(seller_pid).unwrap_or(0) as f64 / 1024.0;
    let hwm = procfs::peak_rss_kib(seller_pid).unwrap_or(0) as f64 / 1024.0;
    let _ = stop.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Result {
        label: label.to_owned(),
        p50: pct(0.5),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or(0),
        samples: lat.len(),
        deliveries,
        buyers_ok,
        cpu: (cpu1.saturating_sub(cpu0)) as f64 / ticks_per_s / elapsed,
        cpu_s: (cpu1.saturating_sub(cpu0)) as f64 / ticks_per_s,
        rss_mib: rss,
        hwm_mib: hwm,
        buyers_cpu: (own1.saturating_sub(own0)) as f64 / ticks_per_s / elapsed,
        idle_connected,
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_BUYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let full: usize = std::env::var("BENCH_FULL_BUYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .min(n);
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // Both sellers revalidate this often (the JS seller's validateInterval is 200 ms).
    let revalidate_ms = std::env::var("BENCH_REVALIDATE_MS").unwrap_or_else(|_| "200".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let bin = dazaar_bin();
    let idle: usize = std::env::var("BENCH_IDLE_BUYERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let buyers: Vec<Identity> = (0..n + idle)
        .map(|i| {
            let mut m = [0u8; 32];
            m[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            Identity::from_master_key(m)
        })
        .collect();
    let mut results = Vec::new();

    // --- Rust seller ---
    let feed = root.join("feed");
    assert!(Command::new(&bin)
        .args(["feed", "create"])
        .arg(&feed)
        .status()
        .expect("create")
        .success());
    let plugins = root.join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    copy_plugin("ledger", &plugins, None);
    let ledger = root.join("ledger.jsonl");
    {
        let mut f = std::fs::File::create(&ledger).expect("ledger");
        for b in &buyers {
            writeln!(
                f,
                "{{\"buyer\":\"{}\",\"amount\":100000,\"time\":{}}}",
                hex::encode(b.buyer_key_pair().public_key()),
                now_ms()
            )
            .expect("write");
        }
    }
    let mut seller = Command::new(&bin)
        .args(["--data-dir"])
        .arg(root.join("seller"))
        .args(["sell"])
        .arg(&feed)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--payment",
            "ledger",
            "--plugin-dir",
        ])
        .arg(&plugins)
        .args([
            "--plugin-config",
            &format!("file = {:?}", ledger.display().to_string()),
            "--json",
            // The JS seller's validateInterval (tests/js/dazaar-peer.js).
            "--revalidate-ms",
            &revalidate_ms,
            // Every buyer of the bench dials from 127.0.0.1.
            "--max-connections-per-ip",
            "0",
            "--max-connections",
            "20000",
            "--payment-checks-per-ip",
            "0",
            // The JS seller has no admission limit: 10,000 buyers connecting at once
            // would otherwise be let in at the default 100 a second.
            "--payment-checks-per-second",
            "0",
        ])
        .args(
            std::env::var("BENCH_SIGNATURES")
                .ok()
                .map(|n| ["--signatures-per-second".to_owned(), n])
                .into_iter()
                .flatten(),
        )
        .envs(
            std::env::var("BENCH_SELLER_WORKERS")
                .ok()
                .map(|w| ("TOKIO_WORKER_THREADS", w)),
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("sell");
    let mut line = String::new();
    BufReader::new(seller.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening");
    let seller = Proc(seller);
    let info: serde_json::Value = serde_json::from_str(&line).expect("json");
    let seller_key: [u8; 32] = hex::decode(info["sellerKey"].as_str().expect("key"))
        .expect("hex")
        .try_into()
        .expect("32");
    let addr: std::net::SocketAddr = info["addr"].as_str().expect("addr").parse().expect("addr");
    let mut appender = Command::new(&bin)
        .args(["feed", "append"])
        .arg(&feed)
        .stdin(Stdio::piped())
        .spawn()
        .expect("append");
    let mut stdin = appender.stdin.take().expect("stdin");
    let appender = Proc(appender);
    let stop_appending = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop_appending.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if writeln!(stdin, "t={}", now_ms())
                    .and_then(|_| stdin.flush())
                    .is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let r = rt.block_on(measure(
        "rust",
        seller_key,
        addr,
        &buyers,
        n,
        full,
        root,
        seconds,
        seller.0.id(),
        Some(appender.0.id()),
    ));
    results.push(r);
    stop_appending.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.join();
    drop(appender);
    drop(seller);

    // --- JS seller, same load ---
    if let Some(js) = js_dir() {
        let mut child = Command::new("node")
            .arg(repo_root().join("tests/js/dazaar-peer.js"))
            .args([
                "sell",
                "--blocks",
                "1",
                "--mode",
                "paid",
                "--append-ms",
                "10",
            ])
            .env("NODE_PATH", js.join("node_modules"))
            .env("DAZAAR_VALIDATE_MS", &revalidate_ms)
            .stdout(Stdio::piped())
            .spawn()
            .expect("node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("listening");
        let js_seller = Proc(child);
        let info: serde_json::Value = serde_json::from_str(&line).expect("json");
        let seller_key: [u8; 32] = hex::decode(info["sellerKey"].as_str().expect("key"))
            .expect("hex")
            .try_into()
            .expect("32");
        let addr = std::net::SocketAddr::from((
            [127, 0, 0, 1],
            info["port"].as_u64().expect("port") as u16,
        ));
        let r = rt.block_on(measure(
            "js",
            seller_key,
            addr,
            &buyers,
            n,
            full,
            root,
            seconds,
            js_seller.0.id(),
            None,
        ));
        results.push(r);
    } else {
        println!(
            "(JS reference not installed: run tests/js/install.sh for the JS seller's figures)"
        );
    }

    println!(
        "market benchmark: {n} buyers ({full} full, {} light), seller appending 100 blocks/s, {seconds} s window",
        n - full
    );
    for r in &results {
        println!(
            "  {:<4} seller: buyers live {:>5}/{n}  latency p50 {:>5} ms  p99 {:>6} ms  max {:>6} ms  ({} deliveries)  seller CPU {:.2} cores  RSS {:.0} MiB (peak {:.0} MiB)",
            r.label, r.buyers_ok, r.p50, r.p99, r.max, r.deliveries, r.cpu, r.rss_mib, r.hwm_mib
        );
    }
    if idle > 0 {
        for r in &results {
            println!(
                "  {:<4} seller: idle buyers connected {}/{idle} (holding block 0, following nothing)",
                r.label, r.idle_connected
            );
        }
    }
    for r in &results {
        let per_k = if r.deliveries > 0 {
            format!("{:.1} ms", r.cpu_s * 1e6 / r.deliveries as f64)
        } else {
            "-".to_owned()
        };
        println!(
            "  {:<4} seller: CPU {per_k} per 1,000 block deliveries ({} latency samples from the full buyers; the buyers used {:.2} cores)",
            r.label, r.samples, r.buyers_cpu
        );
    }
}
