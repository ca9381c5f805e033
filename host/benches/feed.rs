//! Feed core benchmark: append 100,000 blocks of 1 KiB (one by one and batched) to the
//! file-system store, random reads, proof generation and verification; and the same
//! appends with JS hypercore@9 (random-access-file) in the same run when the JS
//! reference is installed (tests/js/install.sh). Prints a table and the ratios.
//!
//! `cargo bench -p dazaar --bench feed` (set `BENCH_BLOCKS` to change the count).
// Test and benchmark code: a panic is the failure report, and its queues are
// bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::time::Instant;

use dazaar::crypto::Ed25519KeyPair;
use dazaar::storage::{Durability, Feed, FsStore, MemStore, NodeSet, Store};

fn main() {
    let count: u64 = std::env::var("BENCH_BLOCKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let block = vec![7u8; 1024];
    let batch = 1000usize;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rows: Vec<(String, f64, &str)> = Vec::new();

    // One by one, ordered writes (crash-safe against a process kill at every return),
    // one fsync at the end.
    let dir = tmp.path().join("single");
    let mut feed = Feed::create(
        FsStore::open(&dir, true).expect("store"),
        Ed25519KeyPair::generate(),
    )
    .expect("create");
    let t = Instant::now();
    for _ in 0..count {
        feed.append(&block).expect("append");
    }
    feed.sync().expect("sync");
    let single = count as f64 / t.elapsed().as_secs_f64();
    rows.push((
        "rust append 1-by-1 (fs, sync at end)".into(),
        single,
        "blocks/s",
    ));

    // Batched, fsync per batch (power-loss durable when each batch returns).
    let dir = tmp.path().join("batched");
    let mut feed_b = Feed::create(
        FsStore::open(&dir, true).expect("store"),
        Ed25519KeyPair::generate(),
    )
    .expect("create");
    feed_b.set_durability(Durability::Power);
    let blocks: Vec<&[u8]> = vec![&block[..]; batch];
    let t = Instant::now();
    let mut done = 0u64;
    while done < count {
        let n = batch.min((count - done) as usize);
        feed_b.append_batch(&blocks[..n]).expect("append");
        done += n as u64;
    }
    let batched = count as f64 / t.elapsed().as_secs_f64();
    rows.push((
        format!("rust append batch {batch} (fs, fsync per batch)"),
        batched,
        "blocks/s",
    ));

    // Batched, ordered writes only and one fsync at the end (what JS's figure compares
    // with: random-access-file never fsyncs).
    let dir = tmp.path().join("batched-process");
    let mut feed_c = Feed::create(
        FsStore::open(&dir, true).expect("store"),
        Ed25519KeyPair::generate(),
    )
    .expect("create");
    let t = Instant::now();
    let mut done = 0u64;
    while done < count {
        let n = batch.min((count - done) as usize);
        feed_c.append_batch(&blocks[..n]).expect("append");
        done += n as u64;
    }
    feed_c.sync().expect("sync");
    let batched_process = count as f64 / t.elapsed().as_secs_f64();
    rows.push((
        format!("rust append batch {batch} (fs, sync at end)"),
        batched_process,
        "blocks/s",
    ));

    // Random reads (each verified against its tree hash).
    let reads = 100_000u64.min(count * 2);
    let mut x = 0x2545F4914F6CDD1Du64;
    let t = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let v = feed.get(x % count).expect("get").expect("held");
        assert_eq!(v.len(), 1024);
    }
    rows.push((
        "rust random read (fs, hash-checked)".into(),
        reads as f64 / t.elapsed().as_secs_f64(),
        "reads/s",
    ));

    // Proofs for random blocks from an empty replica's point of view, and their
    // verification into a replica (signature checked each time).
    let proofs = 10_000u64.min(count);
    let mut picks = Vec::new();
    let t = Instant::now();
    for _ in 0..proofs {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = x % count;
        let p = feed.proof(i, 0, &mut NodeSet::new(), false).expect("proof");
        picks.push((i, p));
    }
    rows.push((
        "rust proof generation (fs)".into(),
        proofs as f64 / t.elapsed().as_secs_f64(),
        "proofs/s",
    ));
    let sig = feed.signature().expect("sig").expect("present");
    let t = Instant::now();
    for (i, p) in &picks {
        let mut replica = Feed::create_reader(MemStore::new(), feed.key()).expect("reader");
        replica
            .put(*i, Some(&block), &p.nodes, Some(&sig))
            .expect("verify");
    }
    rows.push((
        "rust proof verification (mem)".into(),
        proofs as f64 / t.elapsed().as_secs_f64(),
        "proofs/s",
    ));

    // A seller polls its feed for appends made by another process (every 20 ms): the
    // cost of one poll of an unchanged feed, against reading the whole bitfield each
    // time (what every poll cost before the stamp check).
    let mut reader = Feed::open(FsStore::open_read_only(&dir).expect("store"), None).expect("open");
    std::thread::sleep(dazaar::storage::REFRESH_STAMP_MARGIN * 2);
    reader
        .refresh(std::time::SystemTime::now())
        .expect("refresh"); // the first poll reads
    let polls = 2000u32;
    let t = Instant::now();
    for _ in 0..polls {
        reader
            .refresh(std::time::SystemTime::now())
            .expect("refresh");
    }
    let per_poll = t.elapsed().as_secs_f64() / f64::from(polls);
    let store = FsStore::open_read_only(&dir).expect("store");
    let full_reads = 50u32;
    let t = Instant::now();
    for _ in 0..full_reads {
        std::hint::black_box(store.read_bitfield().expect("read"));
    }
    let per_read = t.elapsed().as_secs_f64() / f64::from(full_reads);
    rows.push((
        "rust refresh poll, unchanged feed".into(),
        per_poll * 1e9,
        "ns/poll",
    ));
    rows.push((
        "rust full bitfield read (poll without stamp check)".into(),
        per_read * 1e9,
        "ns/read",
    ));

    // JS hypercore@9 in the same run.
    let js = js_dir();
    let mut js_single = None;
    let mut js_batched = None;
    if let Some(js) = &js {
        for (b, slot) in [(1usize, &mut js_single), (batch, &mut js_batched)] {
            let jsdir = tmp.path().join(format!("js-{b}"));
            let out = std::process::Command::new("node")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../tests/js/feed-tool.js"
                ))
                .args([
                    "bench-append",
                    "--count",
                    &count.to_string(),
                    "--size",
                    "1024",
                    "--batch",
                    &b.to_string(),
                ])
                .args(["--dir", jsdir.to_str().expect("utf-8")])
                .env("NODE_PATH", js.join("node_modules"))
                .output()
                .expect("node");
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                *slot = v["blocksPerSec"].as_f64();
            } else {
                eprintln!("JS bench failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    if let Some(v) = js_single {
        rows.push((
            "js hypercore@9 append 1-by-1 (raf, no fsync)".into(),
            v,
            "blocks/s",
        ));
    }
    if let Some(v) = js_batched {
        rows.push((
            format!("js hypercore@9 append batch {batch} (raf, no fsync)"),
            v,
            "blocks/s",
        ));
    }

    println!("feed benchmark: {count} blocks of 1 KiB");
    for (name, value, unit) in &rows {
        println!("  {name:<52} {value:>12.0} {unit}");
    }
    match (js_single, js_batched) {
        (Some(s), Some(b)) => {
            println!("  ratio rust/js, 1-by-1:  {:.1}x", single / s);
            println!(
                "  ratio rust/js, batched (fsync per batch): {:.1}x",
                batched / b
            );
            println!(
                "  ratio rust/js, batched (sync at end):     {:.1}x",
                batched_process / b
            );
        }
        _ => println!("  (JS reference not installed: run tests/js/install.sh for the comparison)"),
    }
}

fn js_dir() -> Option<std::path::PathBuf> {
    let dir = std::env::var("DAZAAR_JS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/dazaar-js")
        });
    dir.join("node_modules/hypercore").is_dir().then_some(dir)
}
