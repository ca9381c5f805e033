//! Replication benchmark: clone 100,000 blocks of 1 KiB over loopback TCP in four
//! pairings in one run: Rust→Rust, JS→JS, Rust→JS, JS→Rust (uploader→downloader; JS
//! through tests/js/peer.js, skipped when the JS reference is not installed). Both
//! sides keep the feed in memory, so the figures are about the protocol, hashing,
//! verification and copying rather than the disk. A Rust→Rust clone into a
//! file-system store is measured too. Prints MiB/s and ratios, and MiB per CPU-second
//! of both sides together (the machine may be shared: wall-clock rates move with the
//! load, CPU time much less).
//!
//! `cargo bench -p dazaar --bench replicate` (`BENCH_BLOCKS` changes the count).
// Test and benchmark code: a panic is the failure report, and its queues are
// bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::crypto::{Ed25519KeyPair, NoiseKeyPair};
use dazaar::net::{self, ChannelSpec, ConnectionOptions, NetConfig, NetEvent, SharedFeed};
use dazaar::protocol::replicate::{ReplicationEvent, ReplicatorConfig};
use dazaar::storage::{Feed, FsStore, MemStore, Store};

const SIZE: usize = 1024;

fn block(i: u64) -> Vec<u8> {
    let mut b = vec![(i & 255) as u8; SIZE];
    b[..4].copy_from_slice(&(i as u32).to_be_bytes());
    b
}

fn js_dir() -> Option<PathBuf> {
    let dir = std::env::var("DAZAAR_JS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/dazaar-js")
        });
    dir.join("node_modules/hypercore").is_dir().then_some(dir)
}

fn peer_js() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/js/peer.js")
}

struct Js(Child, std::io::Lines<BufReader<std::process::ChildStdout>>);

impl Js {
    fn spawn(js: &Path, args: &[&str]) -> Js {
        let mut child = Command::new("node")
            .arg(peer_js())
            .args(args)
            .env("NODE_PATH", js.join("node_modules"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Js(child, lines)
    }
    fn json(&mut self) -> serde_json::Value {
        let line = self.1.next().expect("a line from node").expect("read");
        serde_json::from_str(&line).expect("json")
    }
}

impl Drop for Js {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves `feed` on 127.0.0.1 until the returned sender is dropped.
async fn rust_server<S: Store>(
    feed: Arc<SharedFeed<S>>,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let options = net::ServeOptions {
        key_pair: NoiseKeyPair::generate(),
        initiator: false,
        serve: vec![ChannelSpec {
            feed,
            config: ReplicatorConfig::uploader(),
        }],
        net: NetConfig::default(),
    };
    tokio::spawn(net::serve(listener, options, rx));
    (addr, tx)
}

/// Clones from `addr` into `feed`; returns seconds from dial to sync.
async fn rust_clone<S: Store>(
    addr: std::net::SocketAddr,
    feed: Arc<SharedFeed<S>>,
    want: u64,
) -> f64 {
    let start = Instant::now();
    let stream = net::dial(addr).await.expect("dial");
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let (ctx, crx) = tokio::sync::mpsc::channel(4);
    let config = NetConfig::default();
    let session = config.session_config(true, NoiseKeyPair::generate());
    let options = ConnectionOptions {
        open: vec![ChannelSpec {
            feed: feed.clone(),
            config: ReplicatorConfig::downloader(),
        }],
        events: Some(tx),
        commands: Some(crx),
        ..ConnectionOptions::default()
    };
    let task =
        tokio::spawn(async move { net::run_connection(stream, session, &config, options).await });
    let mut elapsed = None;
    while let Some(event) = rx.recv().await {
        if let NetEvent::Replication {
            event: ReplicationEvent::Synced { length, .. },
            ..
        } = event
        {
            if length >= want && elapsed.is_none() {
                elapsed = Some(start.elapsed().as_secs_f64());
                let _ = ctx.send(net::Command::Shutdown).await;
            }
        }
    }
    let _ = task.await;
    let f = feed.lock();
    assert_eq!(f.length(), want, "clone incomplete");
    assert!(f.has_all());
    elapsed.expect("synced")
}

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one).
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) follow the last ')'.
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

fn main() {
    let count: u64 = std::env::var("BENCH_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let mib = (count as f64) * SIZE as f64 / (1024.0 * 1024.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // (pairing, MiB/s, MiB per CPU-second of both sides)
    let mut rows: Vec<(&str, f64, f64)> = Vec::new();

    // The Rust source feed, in memory.
    let pair = Ed25519KeyPair::generate();
    let mut source = Feed::create(MemStore::new(), pair).expect("create");
    let blocks: Vec<Vec<u8>> = (0..count).map(block).collect();
    for chunk in blocks.chunks(4096) {
        source.append_batch(chunk).expect("append");
    }
    let key = source.key();
    let source = SharedFeed::new(source);

    // Rust → Rust.
    let cpu = cpu_seconds("self");
    let secs = rt.block_on(async {
        let (addr, _stop) = rust_server(source.clone()).await;
        let dest = SharedFeed::new(Feed::create_reader(MemStore::new(), key).expect("reader"));
        rust_clone(addr, dest, count).await
    });
    rows.push((
        "Rust -> Rust (mem)",
        mib / secs,
        mib / (cpu_seconds("self") - cpu),
    ));
    let tmp = tempfile::tempdir().expect("tempdir");
    let cpu = cpu_seconds("self");
    let secs = rt.block_on(async {
        let (addr, _stop) = rust_server(source.clone()).await;
        let store = FsStore::open(tmp.path().join("dst"), true).expect("store");
        let dest = SharedFeed::new(Feed::create_reader(store, key).expect("reader"));
        rust_clone(addr, dest, count).await
    });
    rows.push((
        "Rust -> Rust (fs dest)",
        mib / secs,
        mib / (cpu_seconds("self") - cpu),
    ));

    if let Some(js) = js_dir() {
        let n = count.to_string();
        // JS → JS.
        let mut server = Js::spawn(&js, &["serve", "--gen", &n, "--size", "1024"]);
        let info = server.json();
        let port = info["port"].as_u64().expect("port");
        let js_key = info["key"].as_str().expect("key").to_string();
        let addr = format!("127.0.0.1:{port}");
        let server_pid = server.0.id().to_string();
        let server_cpu = cpu_seconds(&server_pid);
        let mut client = Js::spawn(
            &js,
            &[
                "clone",
                "--key",
                &js_key,
                "--connect",
                &addr,
                "--length",
                &n,
            ],
        );
        let done = client.json();
        let cpu =
            done["cpuSeconds"].as_f64().unwrap_or(0.0) + cpu_seconds(&server_pid) - server_cpu;
        rows.push((
            "JS -> JS",
            mib / done["seconds"].as_f64().expect("seconds"),
            mib / cpu,
        ));
        drop(client);

        // JS → Rust.
        let js_key_bytes: [u8; 32] = hex::decode(&js_key)
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        let server_cpu = cpu_seconds(&server_pid);
        let cpu = cpu_seconds("self");
        let secs = rt.block_on(async {
            let dest = SharedFeed::new(
                Feed::create_reader(MemStore::new(), js_key_bytes).expect("reader"),
            );
            rust_clone(addr.parse().expect("addr"), dest, count).await
        });
        let cpu = cpu_seconds("self") - cpu + cpu_seconds(&server_pid) - server_cpu;
        rows.push(("JS -> Rust", mib / secs, mib / cpu));
        drop(server);

        // Rust → JS.
        let (addr, stop) = rt.block_on(rust_server(source.clone()));
        let key_hex = hex::encode(key);
        let addr_s = addr.to_string();
        let cpu = cpu_seconds("self");
        let mut client = Js::spawn(
            &js,
            &[
                "clone",
                "--key",
                &key_hex,
                "--connect",
                &addr_s,
                "--length",
                &n,
            ],
        );
        let done = client.json();
        let cpu = cpu_seconds("self") - cpu + done["cpuSeconds"].as_f64().unwrap_or(0.0);
        rows.push((
            "Rust -> JS",
            mib / done["seconds"].as_f64().expect("seconds"),
            mib / cpu,
        ));
        drop(client);
        drop(stop);
    } else {
        eprintln!("JS reference not installed (tests/js/install.sh): JS pairings skipped");
    }
    rt.shutdown_timeout(Duration::from_secs(1));

    println!("clone of {count} blocks x {SIZE} B ({mib:.1} MiB) over loopback TCP");
    println!(
        "  {:<24} {:>15} {:>9} {:>17} {:>9}",
        "pairing", "wall", "vs JS", "per CPU-second", "vs JS"
    );
    let js_js = rows.iter().find(|r| r.0 == "JS -> JS").map(|r| (r.1, r.2));
    for (name, rate, per_cpu) in &rows {
        match js_js {
            Some((base, base_cpu)) => println!(
                "  {name:<24} {rate:>9.1} MiB/s {:>8.2}x {per_cpu:>11.1} MiB/cs {:>8.2}x",
                rate / base,
                per_cpu / base_cpu
            ),
            None => println!(
                "  {name:<24} {rate:>9.1} MiB/s {:>9} {per_cpu:>11.1} MiB/cs",
                ""
            ),
        }
    }
}
