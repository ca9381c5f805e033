//! Discovery benchmark, on a private mainline DHT on 127.0.0.1 (never the public one).
//!
//! 1. `dazaar buy SELLER_KEY` start → first block (a one-block feed, so the process ends
//!    when the first block is held): median of 20 runs with a fresh data dir (so found
//!    through the DHT, no peer cache), and, for comparison, with `--connect`.
//! 2. DHT lookups per second: (a) full iterative lookups of the seller's topic through a
//!    mainline client (8 tasks, for 3 s), counting those that returned the seller's
//!    address; (b) raw KRPC `get_peers` requests sent straight to the node that stores the
//!    seller's announcement (the `dht-node`), 64 outstanding, for 3 s: answers per second
//!    and how many carried the seller's address. (a) is bounded by how long one mainline
//!    query lives (it waits up to its request timeout for silent nodes, e.g. the DHT nodes
//!    of buyers that already exited) and mainline merges concurrent queries for one
//!    target; (b) is what the announcing node can answer.
//!
//! Run: `cargo bench -p dazaar-tests --bench discovery`.
// Test and benchmark code: a panic is the failure report, and its queues are
// bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::discovery::{self, BootstrapNode};
use dazaar_tests::{dazaar, dazaar_cmd, Proc};
use futures_lite::StreamExt;

const RUNS: usize = 20;

fn wait_event(p: &Proc, event: &str) -> serde_json::Value {
    p.event(event, Duration::from_secs(20))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    assert!(dazaar(&["feed", "create", &p("feed")]).status.success());
    std::fs::write(p("in.txt"), "the first block\n").expect("write");
    assert!(dazaar(&["feed", "append", &p("feed"), &p("in.txt")])
        .status
        .success());

    let node = Proc::spawn(dazaar_cmd(&[
        "dht-node",
        "--listen",
        "127.0.0.1:0",
        "--json",
    ]));
    let boot = wait_event(&node, "listening")["addr"]
        .as_str()
        .expect("addr")
        .to_owned();
    let seller = Proc::spawn(dazaar_cmd(&[
        "--data-dir",
        &p("seller"),
        "sell",
        &p("feed"),
        "--json",
        "--bootstrap",
        &boot,
        "--no-mdns",
    ]));
    let listening = wait_event(&seller, "listening");
    let key = listening["sellerKey"].as_str().expect("key").to_owned();
    let addr = listening["addr"].as_str().expect("addr").to_owned();
    wait_event(&seller, "announced");

    let mut by_key = Vec::new();
    let mut direct = Vec::new();
    for i in 0..RUNS {
        let t = Instant::now();
        let out = dazaar(&[
            "--data-dir",
            &p(&format!("b{i}")),
            "buy",
            &key,
            "--out",
            &p(&format!("out{i}")),
            "--bootstrap",
            &boot,
            "--no-mdns",
            "--json",
        ]);
        by_key.push(t.elapsed());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = Instant::now();
        let out = dazaar(&[
            "--data-dir",
            &p(&format!("c{i}")),
            "buy",
            &key,
            "--out",
            &p(&format!("cout{i}")),
            "--connect",
            &addr,
        ]);
        direct.push(t.elapsed());
        assert!(out.status.success());
    }
    println!(
        "dazaar buy start -> first block, median of {RUNS}: found by key on the DHT {:.1} ms; --connect {:.1} ms",
        median(by_key).as_secs_f64() * 1e3,
        median(direct).as_secs_f64() * 1e3
    );

    // Lookups per second against the DHT holding the seller's announcement.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let loopback: SocketAddrV4 = "127.0.0.1:0".parse().expect("addr");
        let client = BootstrapNode::start(loopback, std::slice::from_ref(&boot))
            .await
            .expect("client node");
        let seller_key: [u8; 32] = hex::decode(&key)
            .expect("hex")
            .try_into()
            .expect("32 bytes");
        let topic = mainline::Id::from(discovery::topic(&seller_key));
        let want: std::net::SocketAddr = addr.parse().expect("addr");
        let ok = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let window = Duration::from_secs(3);
        let started = Instant::now();
        let end = started + window;
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let dht = client.dht().clone();
            let (ok, total) = (ok.clone(), total.clone());
            tasks.push(tokio::spawn(async move {
                while Instant::now() < end {
                    let mut found = false;
                    let mut s = dht.get_peers(topic);
                    while let Some(batch) = s.next().await {
                        found |= batch.iter().any(|a| std::net::SocketAddr::V4(*a) == want);
                    }
                    total.fetch_add(1, Ordering::Relaxed);
                    if found {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        // Lookups still in flight when the window closed are waited for and counted, so
        // the rate is over the time they really took, not the nominal window.
        let secs = started.elapsed().as_secs_f64();
        raw_get_peers_rate(&boot, &topic, want);
        println!(
            "DHT lookups of the seller's topic (8 in flight, {secs:.1} s): {:.0}/s, {:.0}/s returning the seller ({} of {})",
            total.load(Ordering::Relaxed) as f64 / secs,
            ok.load(Ordering::Relaxed) as f64 / secs,
            ok.load(Ordering::Relaxed),
            total.load(Ordering::Relaxed)
        );
    });
}

/// Sends `get_peers` for `topic` straight to the node at `node` (64 outstanding) for 3 s;
/// prints answers/s and how many carried `want`.
fn raw_get_peers_rate(node: &str, topic: &mainline::Id, want: std::net::SocketAddr) {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    sock.connect(node).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let std::net::SocketAddr::V4(want) = want else {
        return;
    };
    // The compact peer form: 4 bytes IP, 2 bytes port.
    let mut compact = want.ip().octets().to_vec();
    compact.extend_from_slice(&want.port().to_be_bytes());
    let id: [u8; 20] = rand::random();
    // mainline wants 4-byte transaction ids.
    let query = |tid: u32| {
        let mut q = b"d1:ad2:id20:".to_vec();
        q.extend_from_slice(&id);
        q.extend_from_slice(b"9:info_hash20:");
        q.extend_from_slice(topic.as_bytes());
        q.extend_from_slice(b"e1:q9:get_peers1:t4:");
        q.extend_from_slice(&tid.to_be_bytes());
        q.extend_from_slice(b"1:y1:qe");
        q
    };
    let window = Duration::from_secs(3);
    let end = Instant::now() + window;
    let (mut sent, mut answered, mut with_seller) = (0u64, 0u64, 0u64);
    let mut buf = [0u8; 2048];
    let mut outstanding = 0u32;
    while Instant::now() < end {
        while outstanding < 64 {
            let _ = sock.send(&query(sent as u32));
            sent += 1;
            outstanding += 1;
        }
        match sock.recv(&mut buf) {
            Ok(n) => {
                outstanding = outstanding.saturating_sub(1);
                answered += 1;
                let reply = &buf[..n];
                if reply
                    .windows(compact.len())
                    .any(|w| w == compact.as_slice())
                {
                    with_seller += 1;
                }
            }
            // Lost or refused: let the window refill.
            Err(_) => outstanding = 0,
        }
    }
    let secs = window.as_secs_f64();
    println!(
        "raw get_peers to the node holding the announcement (64 outstanding, {secs:.0} s): {:.0} answers/s, {:.0}/s with the seller ({with_seller} of {answered} answers, {sent} sent)",
        answered as f64 / secs,
        with_seller as f64 / secs
    );
}
