//! Hostile soak benchmark (issue 12): paying live buyers served while strangers attack
//! the seller. Reports, per phase, the paying buyers' delivery lag (append → block
//! verified at the buyer: p50, p99, max, and blocks not delivered within 3 s), whether
//! any buyer was made invalid, and the seller's CPU and RSS; then the seller's RSS growth
//! per attack kind (8 strangers of one kind against a fresh seller, each kind alone, then
//! all kinds together).
//!
//! The seller is a `dazaar sell` process (config file: one product, paid through the
//! ledger plugin, which pays the buyers, and the LND plugin against the in-process LND
//! mock of `dazaar_tests::lnd_mock`, which answers strangers' `lnd-pay-request` user
//! messages with invoices). It starts with a soft RLIMIT_NOFILE of 1,024 (set in the
//! child before exec), so 1,500 sockets exceed it; this process raises its own soft limit
//! to the hard one. Blocks `t=<ms>` are appended by a `dazaar feed append` process fed a
//! line every 50 ms (20 blocks/s). Buyers run in this process on their own runtime; the
//! attack clients (`dazaar_tests::attack`) on another. Strangers connect from source
//! addresses 127.0.1.1–127.0.1.32 (loopback, other IPs than the buyers' 127.0.0.1);
//! every packet goes to the seller on 127.0.0.1.
//!
//! Phases (each with a fresh seller and fresh buyer replicas of the same growing feed):
//! - `baseline`: buyers only;
//! - `attack`: + 1,500 idle and dripping sockets (half each), 300 held random-key
//!   handshakes and 8 garbage senders (the "done when" load of issue 12);
//! - `attack+floods`: + 8 strangers of every other kind at once (Options flood, Have
//!   flood, oversized extension payloads, user-message spam);
//! - RSS per kind, then all kinds together, and a Have flood against a free product
//!   (the only kind of product that opens a channel to a stranger).
//!
//! `cargo bench -p dazaar-tests --bench hostile`. Environment: `BENCH_SECONDS` (measure
//! window per phase, default 20), `BENCH_BUYERS` (5), `BENCH_SOCKETS` (1500),
//! `BENCH_HANDSHAKES` (300), `BENCH_STRANGERS` (8 per flood kind), `BENCH_SOURCES`
//! (32 source addresses; 1 = all from 127.0.0.1), `BENCH_SELLER_NOFILE` (1024),
//! `BENCH_PHASES` (comma list of baseline,attack,floods,rss; default all).
// Test and benchmark code: a panic is the failure report, and its queues are
// bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dazaar::market::{buy, BuyOptions, BuyerEvent, Identity};
use dazaar::net::NetConfig;
use dazaar_tests::attack::{self, Kind, Payloads, Stats, Target};
use dazaar_tests::lnd_mock::MockLnd;
use dazaar_tests::*;
use tokio::sync::{mpsc, watch};

/// Lag above which a block counts as not delivered in time (issue 12: "lag under 3 s").
const LAG_LIMIT_MS: u64 = 3000;
/// Blocks per second appended.
const APPEND_PER_S: u64 = 20;

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> f64 {
    procfs::rss_kib(pid).unwrap_or(0) as f64 / 1024.0
}

fn hwm_mib(pid: u32) -> f64 {
    procfs::peak_rss_kib(pid).unwrap_or(0) as f64 / 1024.0
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

/// Everything the phases share.
struct Env {
    bin: PathBuf,
    root: PathBuf,
    feed: PathBuf,
    config: PathBuf,
    buyers: Vec<Identity>,
    buyer_hex: Arc<Vec<String>>,
    nofile: u64,
    appended: Arc<Mutex<Vec<u64>>>,
}

/// What the seller's stdout and stderr said (counted on reader threads, nothing stored
/// but a few sample lines: under an accept spin it writes megabytes per second).
#[derive(Default)]
struct SellerLog {
    paying_invalid: AtomicU64,
    connected: AtomicU64,
    stderr_lines: AtomicU64,
    accept_failed: AtomicU64,
    samples: Mutex<Vec<String>>,
}

struct Seller {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    feed_key: [u8; 32],
    seller_key: [u8; 32],
    log: Arc<SellerLog>,
}

impl Seller {
    /// Starts `dazaar sell` with `args` (after `--data-dir DIR sell`), soft fd limit `nofile`.
    fn start(env: &Env, data: &Path, config: Option<&Path>, args: &[&str]) -> Seller {
        let mut cmd = Command::new(&env.bin);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--data-dir")
            .arg(data)
            .arg("sell")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--json", "--no-dht", "--no-mdns"])
            .current_dir(&env.root)
            .env(dazaar::discovery::NO_PUBLIC_DHT_ENV, "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let nofile = env.nofile;
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let mut r = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                r.rlim_cur = (nofile as libc::rlim_t).min(r.rlim_max);
                if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn dazaar sell");
        let pid = child.id();
        let log = Arc::new(SellerLog::default());
        let (first_tx, first_rx) = std::sync::mpsc::channel::<String>();
        {
            let stdout = child.stdout.take().expect("stdout");
            let log = log.clone();
            let paying = env.buyer_hex.clone();
            std::thread::spawn(move || {
                let mut first = Some(first_tx);
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("\"listening\"") {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(line);
                        }
                    } else if line.contains("buyer-invalid") {
                        if paying.iter().any(|k| line.contains(k.as_str())) {
                            log.paying_invalid.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if line.contains("buyer-connected") {
                        log.connected.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        {
            let stderr = child.stderr.take().expect("stderr");
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::with_capacity(1 << 16, stderr);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match reader.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    log.stderr_lines.fetch_add(1, Ordering::Relaxed);
                    let text = String::from_utf8_lossy(&line);
                    if text.contains("accept failed") {
                        log.accept_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut s) = log.samples.lock() {
                        if s.len() < 4 {
                            s.push(text.trim_end().chars().take(200).collect());
                        }
                    }
                }
            });
        }
        let line = first_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "the seller did not start listening: {:?}",
                    log.samples.lock().map(|s| s.clone())
                )
            });
        let info: serde_json::Value = serde_json::from_str(&line).expect("json");
        let hex32 = |k: &str| -> [u8; 32] {
            hex::decode(info[k].as_str().expect("key"))
                .expect("hex")
                .try_into()
                .expect("32 bytes")
        };
        Seller {
            pid,
            addr: info["addr"].as_str().expect("addr").parse().expect("addr"),
            feed_key: hex32("feedKey"),
            seller_key: hex32("sellerKey"),
            log,
            child,
        }
    }

    /// The paid product of the bench (ledger + LND).
    fn paid(env: &Env, label: &str) -> Seller {
        let data = env.root.join(format!("seller-{label}"));
        Seller::start(env, &data, Some(&env.config), &[])
    }

    /// The same feed as a free product.
    fn free(env: &Env, label: &str) -> Seller {
        let data = env.root.join(format!("seller-{label}"));
        let feed = env.feed.to_str().expect("utf-8").to_owned();
        Seller::start(env, &data, None, &[&feed, "--payment", "free"])
    }
}

impl Drop for Seller {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the buyers report to the phase.
enum Sample {
    Block { buyer: usize, t: u64, at: u64 },
    Synced { buyer: usize },
    Invalid { buyer: usize },
    Ended,
}

/// Runs live buyer `i` until `stop`, reconnecting (after 500 ms) when its connection ends.
async fn buyer_task(
    i: usize,
    id: Identity,
    seller: (SocketAddr, [u8; 32]),
    dir: PathBuf,
    stop: watch::Receiver<bool>,
    tx: mpsc::Sender<Sample>,
) {
    let mut synced = false;
    let mut attempt = 0;
    while !*stop.borrow() {
        attempt += 1;
        let opts = BuyOptions {
            seller_key: seller.1,
            addr: seller.0,
            out: dir.join(format!("b{i}")),
            live: true,
            accept_terms: true,
            data_dir: dir.join(format!("d{i}")),
            net: NetConfig::default(),
            answer_timeout: Duration::from_secs(30),
            send: Vec::new(),
            report_blocks: true,
            range: None,
            tail: false,
        };
        let (etx, mut erx) = mpsc::channel(1024);
        let id2 = id.clone();
        let shutdown = stop.clone();
        let run = tokio::spawn(async move { buy(&id2, opts, Some(etx), shutdown).await });
        while let Some(ev) = erx.recv().await {
            match ev {
                BuyerEvent::Synced { .. } if !synced => {
                    synced = true;
                    let _ = tx.try_send(Sample::Synced { buyer: i });
                }
                BuyerEvent::Invalid(_) => {
                    let _ = tx.try_send(Sample::Invalid { buyer: i });
                }
                BuyerEvent::Block { data, .. } => {
                    let at = now_ms();
                    if let Some(t) = std::str::from_utf8(&data)
                        .ok()
                        .and_then(|s| s.strip_prefix("t="))
                        .and_then(|t| t.trim().parse::<u64>().ok())
                    {
                        let _ = tx.try_send(Sample::Block { buyer: i, t, at });
                    }
                }
                _ => {}
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), run).await;
        if *stop.borrow() || attempt > 1000 {
            break;
        }
        let _ = tx.try_send(Sample::Ended);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The figures of one phase.
struct PhaseResult {
    label: String,
    buyers: usize,
    synced: usize,
    valid: usize,
    invalid_events: u64,
    seller_invalid: u64,
    reconnects: u64,
    p50: u64,
    p99: u64,
    max: u64,
    expected: u64,
    late: u64,
    cpu: f64,
    rss: f64,
    hwm: f64,
    fds: usize,
    accept_failed: u64,
    stderr_lines: u64,
    attack: Vec<(String, String)>,
    late_synced_ms: Option<u64>,
    late_invalid: u64,
    ramp_ms: u64,
}

impl PhaseResult {
    fn print(&self) {
        println!(
            "{}: buyers {}/{} valid ({} synced, {} reconnects), lag p50 {} ms p99 {} ms max {} ms, late or missing {} of {} deliveries (> {} ms), invalid events {} (seller-side {}), seller CPU {:.2} cores, RSS {:.0} MiB (peak {:.0} MiB), fds {}, stderr {} lines ({} 'accept failed')",
            self.label,
            self.valid,
            self.buyers,
            self.synced,
            self.reconnects,
            self.p50,
            self.p99,
            self.max,
            self.late,
            self.expected,
            LAG_LIMIT_MS,
            self.invalid_events,
            self.seller_invalid,
            self.cpu,
            self.rss,
            self.hwm,
            self.fds,
            self.stderr_lines,
            self.accept_failed,
        );
        println!(
            "    late buyer (connects at the window's start): {}, invalid events {}{}",
            match self.late_synced_ms {
                Some(ms) => format!("has the feed after {ms} ms"),
                None => "never got the feed within the window".to_owned(),
            },
            self.late_invalid,
            if self.attack.is_empty() {
                String::new()
            } else {
                format!(
                    "; attack ramp-up {} ms, strangers at the window's end:",
                    self.ramp_ms
                )
            }
        );
        for (kind, summary) in &self.attack {
            println!("    {kind:<14} {summary}");
        }
    }
}

/// How many strangers of each kind a phase runs.
type Attack = Vec<(Kind, usize)>;

fn sources() -> Vec<Ipv4Addr> {
    let n: u8 = env_or("BENCH_SOURCES", 32u8).max(1);
    if n == 1 {
        return vec![Ipv4Addr::LOCALHOST];
    }
    (1..=n).map(|k| Ipv4Addr::new(127, 0, 1, k)).collect()
}

/// One phase: a fresh paid seller, the buyers, optionally `attack`, a measuring window.
fn phase(
    env: &Env,
    label: &str,
    attack: &Attack,
    payloads: &Payloads,
    seconds: u64,
    buyers_rt: &tokio::runtime::Runtime,
    attack_rt: &tokio::runtime::Runtime,
) -> PhaseResult {
    let seller = Seller::paid(env, label);
    let dir = env.root.join(format!("buyers-{label}"));
    let (stop_tx, stop) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel::<Sample>(1 << 16);
    // The last identity is the late buyer.
    let n = env.buyers.len() - 1;
    for (i, id) in env.buyers.iter().take(n).enumerate() {
        buyers_rt.spawn(buyer_task(
            i,
            id.clone(),
            (seller.addr, seller.seller_key),
            dir.clone(),
            stop.clone(),
            tx.clone(),
        ));
    }
    let tx_late = tx.clone();
    drop(tx);
    let mut synced: HashMap<usize, Instant> = HashMap::new();
    let mut invalid: HashMap<usize, u64> = HashMap::new();
    let mut reconnects = 0u64;
    let mut blocks: Vec<(usize, u64, u64)> = Vec::new();
    let mut take = |s: Sample,
                    synced: &mut HashMap<usize, Instant>,
                    blocks: &mut Vec<(usize, u64, u64)>| match s {
        Sample::Synced { buyer } => {
            synced.entry(buyer).or_insert_with(Instant::now);
        }
        Sample::Invalid { buyer } => *invalid.entry(buyer).or_default() += 1,
        Sample::Ended => reconnects += 1,
        Sample::Block { buyer, t, at } => blocks.push((buyer, t, at)),
    };
    // The buyers in (at most 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while synced.len() < n && Instant::now() < deadline {
        if let Ok(Some(s)) = buyers_rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(200), rx.recv()).await })
        {
            take(s, &mut synced, &mut blocks);
        }
    }
    // The attack, and time for it to ramp up (at most 15 s).
    let (attack_stop_tx, attack_stop) = watch::channel(false);
    let target = Target {
        addr: seller.addr,
        feed_key: Some(seller.feed_key),
        sources: sources(),
    };
    let mut groups: Vec<(Kind, usize, Arc<Stats>)> = Vec::new();
    let mut tasks = Vec::new();
    {
        let _guard = attack_rt.enter();
        let mut first = 0;
        for &(kind, count) in attack {
            let stats = Arc::new(Stats::default());
            tasks.extend(attack::spawn(
                kind,
                count,
                first,
                &target,
                payloads,
                &stats,
                &attack_stop,
            ));
            first += count;
            groups.push((kind, count, stats));
        }
    }
    let ramp_start = Instant::now();
    if !attack.is_empty() {
        let ramp = Instant::now() + Duration::from_secs(15);
        loop {
            while let Ok(s) = rx.try_recv() {
                take(s, &mut synced, &mut blocks);
            }
            // Every stranger made its first attempt (connected, or refused).
            let ready = groups
                .iter()
                .all(|(_, count, st)| Stats::get(&st.ready) >= *count as u64);
            if ready || Instant::now() > ramp {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Then 2 s for the seller to take it in.
        let settle = Instant::now() + Duration::from_secs(2);
        while Instant::now() < settle {
            if let Ok(Some(s)) = buyers_rt.block_on(async {
                tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            }) {
                take(s, &mut synced, &mut blocks);
            }
        }
    }
    let ramp_ms = ramp_start.elapsed().as_millis() as u64;
    // The window.
    while let Ok(s) = rx.try_recv() {
        take(s, &mut synced, &mut blocks);
    }
    let seller_invalid0 = seller.log.paying_invalid.load(Ordering::Relaxed);
    let cpu0 = procfs::cpu_ticks(seller.pid).unwrap_or(0);
    let t0 = now_ms();
    let start = Instant::now();
    // A paying buyer that arrives now, while the attack runs: how long until it has the
    // feed? (`n` is its index; it is not in the lag figures.)
    if let Some(late) = env.buyers.get(n) {
        buyers_rt.spawn(buyer_task(
            n,
            late.clone(),
            (seller.addr, seller.seller_key),
            dir.clone(),
            stop.clone(),
            tx_late,
        ));
    }
    let end = start + Duration::from_secs(seconds);
    while Instant::now() < end {
        if let Ok(Some(s)) = buyers_rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(200), rx.recv()).await })
        {
            take(s, &mut synced, &mut blocks);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu1 = procfs::cpu_ticks(seller.pid).unwrap_or(0);
    let t1 = now_ms();
    let rss = rss_mib(seller.pid);
    let hwm = hwm_mib(seller.pid);
    let fds = fd_count(seller.pid);
    let attack_summary: Vec<(String, String)> = groups
        .iter()
        .map(|(kind, count, st)| (format!("{} x{count}", kind.name()), st.summary()))
        .collect();
    // Blocks appended in the window may arrive up to the lag limit after it.
    let grace = Instant::now() + Duration::from_millis(LAG_LIMIT_MS);
    while Instant::now() < grace {
        if let Ok(Some(s)) = buyers_rt
            .block_on(async { tokio::time::timeout(Duration::from_millis(200), rx.recv()).await })
        {
            take(s, &mut synced, &mut blocks);
        }
    }
    let _ = attack_stop_tx.send(true);
    let _ = stop_tx.send(true);
    attack_rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
    let seller_invalid = seller.log.paying_invalid.load(Ordering::Relaxed) - seller_invalid0;
    let accept_failed = seller.log.accept_failed.load(Ordering::Relaxed);
    let stderr_lines = seller.log.stderr_lines.load(Ordering::Relaxed);
    drop(seller);
    while let Ok(s) = rx.try_recv() {
        take(s, &mut synced, &mut blocks);
    }
    // Deliveries of blocks appended in the window, per buyer.
    let window: Vec<u64> = env
        .appended
        .lock()
        .map(|a| a.iter().copied().filter(|t| (t0..t1).contains(t)).collect())
        .unwrap_or_default();
    let mut lat = Vec::new();
    let mut seen = HashSet::new();
    for &(buyer, t, at) in &blocks {
        if buyer < n && (t0..t1).contains(&t) && seen.insert((buyer, t)) {
            lat.push(at.saturating_sub(t));
        }
    }
    let expected = (window.len() * n) as u64;
    let on_time = lat.iter().filter(|l| **l <= LAG_LIMIT_MS).count() as u64;
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let invalid_events: u64 = (0..n).filter_map(|i| invalid.get(&i)).sum();
    let late_synced_ms = synced
        .get(&n)
        .map(|at| at.saturating_duration_since(start).as_millis() as u64);
    let late_invalid = invalid.get(&n).copied().unwrap_or(0);
    PhaseResult {
        label: label.to_owned(),
        buyers: n,
        synced: (0..n).filter(|i| synced.contains_key(i)).count(),
        valid: (0..n)
            .filter(|i| synced.contains_key(i) && !invalid.contains_key(i))
            .count(),
        invalid_events,
        seller_invalid,
        reconnects,
        p50: pct(0.5),
        p99: pct(0.99),
        max: lat.last().copied().unwrap_or(0),
        expected,
        late: expected.saturating_sub(on_time),
        cpu: (cpu1.saturating_sub(cpu0)) as f64 / procfs::ticks_per_second() as f64 / elapsed,
        rss,
        hwm,
        fds,
        accept_failed,
        stderr_lines,
        attack: attack_summary,
        late_synced_ms,
        late_invalid,
        ramp_ms,
    }
}

/// RSS growth of a fresh seller under `attack` (no buyers): (label, before, after, peak,
/// attack summary).
fn rss_growth(
    env: &Env,
    label: &str,
    free: bool,
    attack: &Attack,
    payloads: &Payloads,
    attack_rt: &tokio::runtime::Runtime,
) -> (String, f64, f64, f64, String) {
    let seller = if free {
        Seller::free(env, label)
    } else {
        Seller::paid(env, label)
    };
    // Let it settle (plugins connect, the LND subscription replays).
    std::thread::sleep(Duration::from_millis(1500));
    let before = rss_mib(seller.pid);
    let target = Target {
        addr: seller.addr,
        feed_key: Some(seller.feed_key),
        sources: sources(),
    };
    let (stop_tx, stop) = watch::channel(false);
    let mut groups = Vec::new();
    let mut tasks = Vec::new();
    {
        let _guard = attack_rt.enter();
        let mut first = 0;
        for &(kind, count) in attack {
            let stats = Arc::new(Stats::default());
            tasks.extend(attack::spawn(
                kind, count, first, &target, payloads, &stats, &stop,
            ));
            first += count;
            groups.push((kind, count, stats));
        }
    }
    // Until every stranger made its first attempt (at most 20 s), then 3 s for the seller to
    // take it all in (and spammers to keep spamming).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done = groups
            .iter()
            .all(|(_, count, st)| Stats::get(&st.ready) >= *count as u64);
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = rss_mib(seller.pid);
    let peak = hwm_mib(seller.pid);
    let summary = groups
        .iter()
        .map(|(kind, count, st)| format!("{} x{count}: {}", kind.name(), st.summary()))
        .collect::<Vec<_>>()
        .join("; ");
    let _ = stop_tx.send(true);
    attack_rt.block_on(async {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
    drop(seller);
    (label.to_owned(), before, after, peak, summary)
}

fn main() {
    let seconds: u64 = env_or("BENCH_SECONDS", 20);
    let n: usize = env_or("BENCH_BUYERS", 5);
    let sockets: usize = env_or("BENCH_SOCKETS", 1500);
    let handshakes: usize = env_or("BENCH_HANDSHAKES", 300);
    let strangers: usize = env_or("BENCH_STRANGERS", 8);
    let seller_nofile: u64 = env_or("BENCH_SELLER_NOFILE", 1024);
    let phases: String = env_or("BENCH_PHASES", "baseline,attack,floods,rss".to_owned());
    let run = |p: &str| phases.split(',').any(|x| x.trim() == p);
    let own_nofile = raise_nofile();
    let bench_start = Instant::now();

    let buyers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-buyers")
        .enable_all()
        .build()
        .expect("runtime");
    let attack_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-attack")
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let bin = dazaar_bin();

    // The feed, the paying buyers in the ledger, the LND mock, the config.
    let feed = root.join("feed");
    assert!(Command::new(&bin)
        .args(["feed", "create"])
        .arg(&feed)
        .stdout(Stdio::null())
        .status()
        .expect("create")
        .success());
    let plugins = root.join("plugins");
    std::fs::create_dir_all(&plugins).expect("mkdir");
    copy_plugin("ledger", &plugins, None);
    copy_plugin("lnd", &plugins, None);
    // `n` live buyers and one that arrives during each window, all paid.
    let buyers: Vec<Identity> = (0..=n)
        .map(|i| {
            let mut m = [0u8; 32];
            m[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            m[8] = 0x50;
            Identity::from_master_key(m)
        })
        .collect();
    let buyer_hex: Vec<String> = buyers
        .iter()
        .map(|b| hex::encode(b.buyer_key_pair().public_key()))
        .collect();
    let ledger = root.join("ledger.jsonl");
    {
        let mut f = std::fs::File::create(&ledger).expect("ledger");
        for b in &buyer_hex {
            writeln!(
                f,
                "{{\"buyer\":\"{b}\",\"amount\":100000000,\"time\":{}}}",
                now_ms()
            )
            .expect("write");
        }
    }
    let macaroon = b"\x02\x01\x03hostile-bench-macaroon";
    let lnd = MockLnd::start(&hex::encode(macaroon));
    std::fs::write(root.join("tls.cert"), &lnd.cert_pem).expect("cert");
    std::fs::write(root.join("lnd.macaroon"), macaroon).expect("macaroon");
    let config = root.join("dazaar.toml");
    std::fs::write(
        &config,
        format!(
            r#"plugin_dir = {plugins:?}

[discovery]
dht = false
mdns = false

[[sell]]
feed = {feed:?}
name = "hostile soak"
revalidate_ms = 1000

[[sell.payment]]
plugin = "ledger"
currency = "credits"
amount = "1"
unit = "seconds"
interval = "1"
[sell.payment.config]
file = {ledger:?}

[[sell.payment]]
plugin = "lnd"
method = "Lightning"
currency = "SATS"
amount = "1"
unit = "seconds"
interval = "1"
[sell.payment.config]
address = "{addr}"
tls_cert = {cert:?}
tls_domain = "localhost"
macaroon = {mac:?}
network = "regtest"
timeout_ms = 2000
max_backoff_ms = 500
"#,
            plugins = plugins.display().to_string(),
            feed = feed.display().to_string(),
            ledger = ledger.display().to_string(),
            addr = lnd.addr,
            cert = root.join("tls.cert").display().to_string(),
            mac = root.join("lnd.macaroon").display().to_string(),
        ),
    )
    .expect("config");

    // The appender: a line `t=<ms>` every 50 ms for the whole bench.
    let mut appender = Command::new(&bin)
        .args(["feed", "append"])
        .arg(&feed)
        .stdin(Stdio::piped())
        .spawn()
        .expect("append");
    let mut stdin = appender.stdin.take().expect("stdin");
    let appended = Arc::new(Mutex::new(Vec::new()));
    let stop_appending = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop_appending.clone();
        let appended = appended.clone();
        std::thread::spawn(move || {
            // Bounded: at most an hour of appends.
            for _ in 0..APPEND_PER_S * 3600 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = now_ms();
                if writeln!(stdin, "t={t}")
                    .and_then(|_| stdin.flush())
                    .is_err()
                {
                    break;
                }
                if let Ok(mut a) = appended.lock() {
                    a.push(t);
                }
                std::thread::sleep(Duration::from_millis(1000 / APPEND_PER_S));
            }
        })
    };

    let env = Env {
        bin,
        root: root.clone(),
        feed,
        config,
        buyers,
        buyer_hex: Arc::new(buyer_hex),
        nofile: seller_nofile,
        appended,
    };

    let floods = [
        Kind::OptionsFlood,
        Kind::HaveFlood,
        Kind::OversizedExtension,
        Kind::UserMessageSpam,
    ];
    let payloads = Payloads::for_kinds(&Kind::ALL);
    let load: Attack = vec![
        (Kind::Idle, sockets / 2),
        (Kind::Drip, sockets - sockets / 2),
        (Kind::Handshake, handshakes),
        (Kind::Garbage, strangers),
    ];
    let mut everything = load.clone();
    everything.extend(floods.iter().map(|k| (*k, strangers)));

    println!(
        "hostile soak: {n} paying live buyers, {APPEND_PER_S} blocks/s, {seconds} s window per phase; seller soft fd limit {seller_nofile} (bench {own_nofile}); strangers from {} source address(es)",
        sources().len()
    );
    let mut results = Vec::new();
    if run("baseline") {
        let r = phase(
            &env,
            "baseline",
            &Vec::new(),
            &payloads,
            seconds,
            &buyers_rt,
            &attack_rt,
        );
        r.print();
        results.push(r);
    }
    if run("attack") {
        let r = phase(
            &env, "attack", &load, &payloads, seconds, &buyers_rt, &attack_rt,
        );
        r.print();
        results.push(r);
    }
    if run("floods") {
        let r = phase(
            &env,
            "attack+floods",
            &everything,
            &payloads,
            seconds,
            &buyers_rt,
            &attack_rt,
        );
        r.print();
        results.push(r);
    }
    let mut total_growth = None;
    if run("rss") {
        println!("seller RSS growth, {strangers} strangers per kind, fresh seller each (paid product unless noted):");
        for kind in Kind::ALL {
            let (label, before, after, peak, summary) = rss_growth(
                &env,
                kind.name(),
                false,
                &vec![(kind, strangers)],
                &payloads,
                &attack_rt,
            );
            println!(
                "  {label:<22} +{:>7.1} MiB (RSS {before:.0} -> {after:.0} MiB, peak {peak:.0} MiB)   [{summary}]",
                after - before
            );
        }
        let all: Attack = Kind::ALL.iter().map(|k| (*k, strangers)).collect();
        let (_, before, after, peak, summary) =
            rss_growth(&env, "all-kinds", false, &all, &payloads, &attack_rt);
        println!(
            "  {:<22} +{:>7.1} MiB (RSS {before:.0} -> {after:.0} MiB, peak {peak:.0} MiB)   [{summary}]",
            "all kinds together",
            after - before
        );
        let all_growth = after - before;
        let (_, before, after, peak, summary) = rss_growth(
            &env,
            "have-free",
            true,
            &vec![(Kind::HaveFlood, strangers)],
            &payloads,
            &attack_rt,
        );
        println!(
            "  {:<22} +{:>7.1} MiB (RSS {before:.0} -> {after:.0} MiB, peak {peak:.0} MiB)   [{summary}]",
            "have-flood (free)",
            after - before
        );
        total_growth = Some((all_growth, after - before));
    }

    // Issue 12's "done when", as far as this bench measures it.
    if let Some(r) = results.iter().find(|r| r.label == "attack") {
        let ok = |b: bool| if b { "yes" } else { "NO" };
        println!(
            "done-when (attack phase): buyers never invalid: {} ({} events); lag under {} ms: {} (max {} ms, {} late or missing); seller under 0.6 core: {} ({:.2})",
            ok(r.invalid_events == 0 && r.seller_invalid == 0 && r.valid == r.buyers),
            r.invalid_events + r.seller_invalid,
            LAG_LIMIT_MS,
            ok(r.late == 0 && r.expected > 0),
            r.max,
            r.late,
            ok(r.cpu < 0.6),
            r.cpu
        );
    }
    if let Some((paid, free)) = total_growth {
        println!(
            "done-when: {strangers} strangers per kind raise the seller's RSS by at most 24 MiB: {} (all kinds on the paid product +{paid:.1} MiB; Have flood on a free product +{free:.1} MiB)",
            if paid <= 24.0 && free <= 24.0 { "yes" } else { "NO" }
        );
    }
    println!("(bench ran {:.0} s)", bench_start.elapsed().as_secs_f64());

    stop_appending.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = appender.kill();
    let _ = appender.wait();
    drop(lnd);
    buyers_rt.shutdown_timeout(Duration::from_secs(2));
    attack_rt.shutdown_timeout(Duration::from_secs(2));
    let _ = std::io::stdout().flush();
}
