//! Feed core end to end: crash safety under SIGKILL, the `dazaar feed` CLI contract, and
//! cross-checks with JS hypercore@9.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use dazaar::crypto::Ed25519KeyPair;
use dazaar::storage::{Feed, FsStore};
use dazaar_tests::*;
use rand::Rng;

/// Kills an appending child at random moments, at least 50 times, alternating the two
/// durability modes: every reopen must give a prefix of the block sequence whose
/// signature verifies (checked by `Feed::open`), holding at least every length the child
/// reported as committed.
#[test]
fn sigkill_during_append_leaves_a_verifying_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed_dir = dir.path().join("feed");
    let seed = [0x42u8; 32];
    let key = Ed25519KeyPair::from_seed(&seed).public_key();
    let mut rng = rand::thread_rng();
    let mut last_length = 0u64;
    for round in 0..60 {
        let mode = if round % 2 == 0 { "process" } else { "power" };
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_appender"))
            .args([feed_dir.to_str().expect("utf-8"), &hex::encode(seed), mode])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn appender");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(n) = line.trim().parse::<u64>() {
                    let _ = tx.send(n);
                }
            }
        });
        // The kill lands at a random point of the append: the behaviour under test.
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..60)));
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let status = child.wait().expect("wait");
        assert!(!status.success(), "the appender should have been killed");
        reader.join().expect("reader");
        let committed = rx.try_iter().max().unwrap_or(0);

        let store = FsStore::open(&feed_dir, false).expect("reopen store");
        let feed = match Feed::open(store, Some(key)) {
            // Killed before it created the feed (a slow start on a loaded machine):
            // nothing was committed, nothing can be lost.
            Err(dazaar::storage::FeedError::NoFeed) if committed == 0 && last_length == 0 => {
                continue
            }
            other => other.unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}")),
        };
        assert!(
            feed.length() >= committed.max(last_length),
            "round {round}: length {} lost appends (child committed {committed}, before {last_length})",
            feed.length()
        );
        assert!(feed.has_all());
        let step = (feed.length() / 50).max(1);
        let mut i = 0;
        while i < feed.length() {
            assert_eq!(
                feed.get(i).expect("verified read"),
                Some(crash_block(i)),
                "round {round}: block {i}"
            );
            i += step;
        }
        if feed.length() > 0 {
            let last = feed.length() - 1;
            assert_eq!(
                feed.get(last).expect("verified read"),
                Some(crash_block(last))
            );
        }
        last_length = feed.length();
    }
    assert!(
        last_length > 100,
        "the appender made too little progress ({last_length})"
    );
}

#[test]
fn cli_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    let f = feed.to_str().expect("utf-8");

    let out = dazaar(&["feed", "create", f, "--json"]);
    assert!(out.status.success());
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let key = created["key"].as_str().expect("key").to_string();
    assert_eq!(key.len(), 64);
    assert_eq!(created["discoveryKey"].as_str().expect("dk").len(), 64);

    // Lines from a file; the last line has no newline.
    let input = dir.path().join("in.txt");
    std::fs::write(&input, b"first\nsecond\n\nlast").expect("write");
    assert!(
        dazaar(&["feed", "append", f, input.to_str().expect("utf-8")])
            .status
            .success()
    );
    // Fixed-size blocks from stdin.
    let mut child = Command::new(dazaar_bin())
        .args(["feed", "append", f, "--block-size", "4"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"abcdefghij")
        .expect("write");
    assert!(child.wait().expect("wait").success());

    let out = dazaar(&["feed", "info", f, "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(info["key"], key.as_str());
    assert_eq!(info["length"], 7);
    // "first", "second", "", "last", then 10 bytes in blocks of 4.
    assert_eq!(info["byteLength"], 25);
    assert_eq!(info["treeHash"].as_str().expect("hash").len(), 64);
    assert_eq!(info["signature"].as_str().expect("sig").len(), 128);

    let out = dazaar(&["feed", "cat", f, "--lines"]);
    assert_eq!(out.stdout, b"first\nsecond\n\nlast\nabcd\nefgh\nij\n");
    let out = dazaar(&["feed", "cat", f, "--start", "4", "--end", "6"]);
    assert_eq!(out.stdout, b"abcdefgh");

    // Errors: one clear line on stderr, non-zero exit.
    for (args, needle) in [
        (
            vec!["feed", "info", "/nonexistent/feed"],
            "no such feed directory",
        ),
        (
            vec!["feed", "info", dir.path().to_str().expect("utf-8")],
            "not a feed",
        ),
        (vec!["feed", "create", f], "already exists"),
        (
            vec!["feed", "cat", f, "--end", "99"],
            "past the feed's length",
        ),
    ] {
        let out = dazaar(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line: {err}");
    }
    // No secret key: cannot append.
    std::fs::remove_file(feed.join("secret_key")).expect("rm");
    let out = dazaar(&["feed", "append", f, input.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret key"));
    // Corrupt data: reported, not returned.
    let data = feed.join("data");
    let mut bytes = std::fs::read(&data).expect("read");
    bytes[1] ^= 0xff;
    std::fs::write(&data, bytes).expect("write");
    let out = dazaar(&["feed", "cat", f]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
}

/// `tail -f source | dazaar feed append DIR`: blocks become visible while input still
/// flows (committed at least once a second).
#[test]
fn streaming_append_commits_while_input_flows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    let f = feed.to_str().expect("utf-8");
    assert!(dazaar(&["feed", "create", f]).status.success());
    let mut child = Command::new(dazaar_bin())
        .args(["feed", "append", f])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut stdin, b"one\ntwo\n").expect("write");
    std::io::Write::flush(&mut stdin).expect("flush");
    // The input stays open; within a second the blocks must be readable.
    let mut length = 0;
    let committed = dazaar_tests::poll_until(Duration::from_secs(3), || {
        let out = dazaar(&["feed", "info", f, "--json"]);
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        length = info["length"].as_u64().expect("length");
        (length == 2).then_some(())
    });
    assert!(
        committed.is_some(),
        "appended lines were not committed while the input stayed open (length {length})"
    );
    std::io::Write::write_all(&mut stdin, b"three\n").expect("write");
    drop(stdin);
    assert!(child.wait().expect("wait").success());
    let out = dazaar(&["feed", "cat", f, "--lines"]);
    assert_eq!(out.stdout, b"one\ntwo\nthree\n");
}

/// Blocks as the hex lines `feed-tool.js build` reads (`-` for an empty block).
fn hex_lines(blocks: &[Vec<u8>]) -> String {
    blocks
        .iter()
        .map(|b| {
            if b.is_empty() {
                "-".to_string()
            } else {
                hex::encode(b)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn node_with_stdin(js: &std::path::Path, args: &[&str], stdin: &str) -> serde_json::Value {
    let mut child = Command::new("node")
        .arg(repo_root().join("tests/js/feed-tool.js"))
        .args(args)
        .env("NODE_PATH", js.join("node_modules"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), stdin.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("node");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from node")
}

fn our_info<S: dazaar::storage::Store>(feed: &Feed<S>) -> serde_json::Value {
    serde_json::json!({
        "key": hex::encode(feed.key()),
        "discoveryKey": hex::encode(feed.discovery_key()),
        "length": feed.length(),
        "byteLength": feed.byte_length(),
        "treeHash": hex::encode(feed.tree_hash()),
        "signature": feed.signature().expect("sig").map(hex::encode),
    })
}

/// JS hypercore@9 and we build feeds from the same seed, blocks and batches: same key,
/// tree hash and signature.
#[test]
fn js_builds_the_same_feed() {
    let Some(js) = require_js() else { return };
    let mut rng = rand::thread_rng();
    for case in 0..6 {
        let seed: [u8; 32] = rng.gen();
        let count = [1usize, 2, 7, 33, 100, 257][case];
        let blocks: Vec<Vec<u8>> = (0..count)
            .map(|_| {
                let len = if rng.gen_bool(0.1) {
                    0
                } else {
                    rng.gen_range(1..2000)
                };
                (0..len).map(|_| rng.gen()).collect()
            })
            .collect();
        let mut batches = Vec::new();
        let mut left = count;
        while left > 0 {
            let n = rng.gen_range(1..=left.min(40));
            batches.push(n);
            left -= n;
        }
        let batch_arg = batches
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let theirs = node_with_stdin(
            &js,
            &[
                "build",
                "--seed",
                &hex::encode(seed),
                "--batches",
                &batch_arg,
            ],
            &hex_lines(&blocks),
        );

        let mut feed = Feed::create(
            dazaar::storage::MemStore::new(),
            Ed25519KeyPair::from_seed(&seed),
        )
        .expect("create");
        let mut at = 0;
        for n in &batches {
            feed.append_batch(&blocks[at..at + n]).expect("append");
            at += n;
        }
        assert_eq!(our_info(&feed), theirs, "case {case}: batches {batch_arg}");
    }
}

/// A feed directory written by JS imports into ours with the same info and blocks, and a
/// directory we write is read by JS with the same info and blocks.
#[test]
fn feed_directories_cross_between_js_and_us() {
    let Some(js) = require_js() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let blocks: Vec<Vec<u8>> = (0..300u32)
        .map(|i| format!("line {i} {}", "x".repeat((i % 50) as usize)).into_bytes())
        .collect();
    let js_dir = dir.path().join("js-feed");
    let theirs = node_with_stdin(
        &js,
        &[
            "build",
            "--seed",
            &"07".repeat(32),
            "--dir",
            js_dir.to_str().expect("utf-8"),
            "--batches",
            "1,1,50,3,100",
        ],
        &hex_lines(&blocks),
    );
    let ours_dir = dir.path().join("imported");
    let out = dazaar(&[
        "feed",
        "import",
        js_dir.to_str().expect("utf-8"),
        ours_dir.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dazaar(&["feed", "info", ours_dir.to_str().expect("utf-8"), "--json"]);
    let mut info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // `held` is ours (JS has no such field): every block of an imported writer's feed.
    let held = info
        .as_object_mut()
        .and_then(|o| o.remove("held"))
        .expect("held");
    assert_eq!(held, info["length"]);
    assert_eq!(info, theirs);
    let out = dazaar(&["feed", "cat", ours_dir.to_str().expect("utf-8"), "--lines"]);
    let expected: Vec<u8> = blocks
        .iter()
        .flat_map(|b| b.iter().copied().chain([b'\n']))
        .collect();
    assert_eq!(out.stdout, expected);
    // The JS directory was not modified by the import.
    let again = node(
        &js,
        "feed-tool.js",
        &["info", "--dir", js_dir.to_str().expect("utf-8")],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).expect("json"),
        theirs
    );

    // JS reads what we wrote (we keep the hypercore v9 layout).
    let js_view = node(
        &js,
        "feed-tool.js",
        &["info", "--dir", ours_dir.to_str().expect("utf-8")],
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&js_view).expect("json"),
        theirs
    );
    let js_cat = node(
        &js,
        "feed-tool.js",
        &["cat", "--dir", ours_dir.to_str().expect("utf-8")],
    );
    let got: Vec<Vec<u8>> = js_cat
        .lines()
        .map(|l| hex::decode(l).expect("hex"))
        .collect();
    assert_eq!(got, blocks);
}

/// Importing a replica (no secret key, sparse) moves each held block with its proof.
#[test]
fn import_of_a_sparse_replica_verifies_each_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = Feed::create(
        dazaar::storage::MemStore::new(),
        Ed25519KeyPair::from_seed(&[8; 32]),
    )
    .expect("create");
    let blocks: Vec<Vec<u8>> = (0..40u32).map(|i| format!("b{i}").into_bytes()).collect();
    source.append_batch(&blocks).expect("append");
    let replica_dir = dir.path().join("replica");
    let mut replica = Feed::create_reader(
        FsStore::open(&replica_dir, true).expect("store"),
        source.key(),
    )
    .expect("reader");
    let mut remote = dazaar::storage::NodeSet::new();
    for i in [3u64, 39, 17] {
        let p = source
            .proof(i, replica.digest(i), &mut remote, false)
            .expect("proof");
        let sig = source.signature_at(p.verified_by / 2).expect("sig");
        replica
            .put(i, Some(&blocks[i as usize]), &p.nodes, sig.as_ref())
            .expect("put");
    }
    drop(replica);
    let out_dir = dir.path().join("out");
    let out = dazaar(&[
        "feed",
        "import",
        replica_dir.to_str().expect("utf-8"),
        out_dir.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let feed = Feed::open(
        FsStore::open(&out_dir, false).expect("store"),
        Some(source.key()),
    )
    .expect("open");
    assert_eq!(feed.length(), 40);
    assert_eq!(feed.downloaded(0, 40), 3);
    assert_eq!(feed.get(39).expect("get"), Some(blocks[39].clone()));
    assert!(!feed.is_writable());

    // A replica whose block bytes were altered is refused.
    let data = replica_dir.join("data");
    let mut bytes = std::fs::read(&data).expect("data");
    let len = bytes.len();
    bytes[len - 1] ^= 1;
    std::fs::write(&data, bytes).expect("write");
    let bad_out = dir.path().join("bad");
    let out = dazaar(&[
        "feed",
        "import",
        replica_dir.to_str().expect("utf-8"),
        bad_out.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's main job runs to the end by itself.
#[test]
fn demo_runs_to_the_end() {
    let out = dazaar(&["demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo finished: ok"));
}
