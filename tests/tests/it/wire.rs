//! Replication over real loopback TCP: `dazaar feed serve` / `feed clone` between two
//! processes (live too), and interop with a JS hypercore@9 + hypercore-protocol@8 peer
//! (tests/js/peer.js) in both directions and both Noise roles.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use dazaar::crypto::NoiseKeyPair;
use dazaar::net::{self, ChannelSpec, ConnectionOptions, NetConfig, NetEvent, SharedFeed};
use dazaar::protocol::replicate::{ReplicationEvent, ReplicatorConfig};
use dazaar::storage::{Feed, FsStore, MemStore};
use dazaar_tests::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(10);

fn node_cmd(js: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(repo_root().join("tests/js/peer.js"))
        .args(args)
        .env("NODE_PATH", js.join("node_modules"));
    cmd
}

fn run_ok(mut cmd: Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Block `i` of peer.js `--gen` with `size` bytes.
fn js_gen_block(i: u64, size: usize) -> Vec<u8> {
    let mut b = vec![(i & 255) as u8; size];
    b[..4].copy_from_slice(&(i as u32).to_be_bytes());
    b
}

fn make_feed(dir: &Path, lines: u64) -> String {
    let key = run_ok(dazaar_cmd(&["feed", "create", dir.to_str().unwrap()]));
    let input: String = (0..lines).map(|i| format!("line {i}\n")).collect();
    let mut append = dazaar_cmd(&["feed", "append", dir.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("append");
    append
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    assert!(append.wait().unwrap().success());
    key.trim().to_string()
}

fn open(dir: &Path) -> Feed<FsStore> {
    Feed::open(FsStore::open_read_only(dir).unwrap(), None).unwrap()
}

fn serve_proc(dir: &Path, extra: &[&str]) -> (Proc, String, String) {
    let mut args = vec![
        "feed",
        "serve",
        dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--json",
    ];
    args.extend_from_slice(extra);
    let serve = Proc::spawn(dazaar_cmd(&args));
    let first = serve.json(T);
    assert_eq!(first["event"], "listening");
    let addr = first["addr"].as_str().unwrap().to_string();
    let key = first["key"].as_str().unwrap().to_string();
    (serve, addr, key)
}

#[test]
fn serve_and_clone_between_two_processes_with_resume_and_live() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    let key = make_feed(&src, 500);
    let (_serve, addr, served_key) = serve_proc(&src, &[]);
    assert_eq!(served_key, key);

    let out = run_ok(dazaar_cmd(&[
        "feed",
        "clone",
        &key,
        "--connect",
        &addr,
        "--out",
        dst.to_str().unwrap(),
        "--json",
    ]));
    let done: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["length"], 500);
    let (a, b) = (open(&src), open(&dst));
    assert_eq!(b.length(), 500);
    assert!(b.has_all());
    for i in 0..500 {
        assert_eq!(a.get(i).unwrap(), b.get(i).unwrap());
    }
    assert_eq!(a.byte_length(), done["byteLength"].as_u64().unwrap());

    // Live: `clone --live` (resuming the same dir) sees appends made by another process
    // while `serve` runs.
    let live = Proc::spawn(dazaar_cmd(&[
        "feed",
        "clone",
        &key,
        "--connect",
        &addr,
        "--out",
        dst.to_str().unwrap(),
        "--live",
        "--json",
    ]));
    let first = live.json(T);
    assert_eq!(first["event"], "done");
    assert_eq!(first["length"], 500);
    let mut append = dazaar_cmd(&["feed", "append", src.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    append
        .stdin
        .take()
        .unwrap()
        .write_all(b"live 1\nlive 2\n")
        .unwrap();
    assert!(append.wait().unwrap().success());
    // The appender may commit the two lines one at a time: the clone then reports 501
    // before 502.
    let grown = live.json_where(T, "length 502", |v| {
        assert_eq!(v["event"], "length", "{v}");
        v["length"] == 502
    });
    assert_eq!(grown["length"], 502);
    drop(live);
    let b = open(&dst);
    assert_eq!(b.get(501).unwrap().unwrap(), b"live 2");
}

#[test]
fn clone_errors_are_one_line_and_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_feed(&src, 3);
    let (_serve, addr, _key) = serve_proc(&src, &[]);
    let other = "11".repeat(32);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![other.clone(), "--connect".into(), addr.clone()],
            "does not serve feed",
        ),
        (
            vec![other.clone(), "--connect".into(), "127.0.0.1:1".into()],
            "refused",
        ),
        (
            vec!["zz".into(), "--connect".into(), addr.clone()],
            "the feed key is not hex",
        ),
    ];
    for (i, (args, expect)) in cases.into_iter().enumerate() {
        let out_dir = tmp.path().join(format!("out{i}"));
        let mut cmd = dazaar_cmd(&["feed", "clone"]);
        cmd.args(&args).args(["--out", out_dir.to_str().unwrap()]);
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{err}");
    }

    // A peer that accepts and never speaks: timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let out = dazaar_cmd(&[
        "feed",
        "clone",
        &other,
        "--connect",
        &silent_addr,
        "--out",
        tmp.path().join("silent").to_str().unwrap(),
        "--timeout-ms",
        "300",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ETIMEDOUT"), "{err}");
}

#[test]
fn js_serves_and_rust_clones_then_live() {
    let Some(js) = require_js() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let mut serve = Proc::spawn(node_cmd(&js, &["serve", "--gen", "1000", "--size", "300"]));
    let info = serve.json(T);
    let port = info["port"].as_u64().unwrap();
    let key = info["key"].as_str().unwrap().to_string();
    let addr = format!("127.0.0.1:{port}");
    let clone = Proc::spawn(dazaar_cmd(&[
        "feed",
        "clone",
        &key,
        "--connect",
        &addr,
        "--out",
        dst.to_str().unwrap(),
        "--live",
        "--json",
    ]));
    let done = clone.json(T);
    assert_eq!(done["event"], "done");
    assert_eq!(done["length"], 1000);
    assert_eq!(done["byteLength"], 300_000);
    // Live append on the JS side.
    serve.write_line(&hex::encode(b"from js"));
    assert_eq!(serve.json(T)["event"], "appended");
    let grown = clone.json(T);
    assert_eq!(grown["length"], 1001);
    drop(clone);
    let feed = open(&dst);
    for i in 0..1000 {
        assert_eq!(
            feed.get(i).unwrap().unwrap(),
            js_gen_block(i, 300),
            "block {i}"
        );
    }
    assert_eq!(feed.get(1000).unwrap().unwrap(), b"from js");
}

#[test]
fn rust_serves_js_clones_then_live_and_sparse() {
    let Some(js) = require_js() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let key = make_feed(&src, 400);
    let (_serve, addr, _) = serve_proc(&src, &[]);

    // Full clone into a random-access-file dir, then live: blocks appended by another
    // process while serving reach the JS reader.
    let jsdir = tmp.path().join("js");
    let clone = Proc::spawn(node_cmd(
        &js,
        &[
            "clone",
            "--key",
            &key,
            "--connect",
            &addr,
            "--length",
            "400",
            "--live-until",
            "403",
            "--dir",
            jsdir.to_str().unwrap(),
            "--print",
        ],
    ));
    let done = clone.json(T);
    assert_eq!(done["length"], 400);
    let blocks = clone.json(T);
    let feed = open(&src);
    for i in 0..400u64 {
        let hex_block = blocks["blocks"][i as usize].as_str().unwrap();
        assert_eq!(
            hex::decode(hex_block).unwrap(),
            feed.get(i).unwrap().unwrap()
        );
    }
    let mut append = dazaar_cmd(&["feed", "append", src.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    append
        .stdin
        .take()
        .unwrap()
        .write_all(b"a\nb\nc\n")
        .unwrap();
    assert!(append.wait().unwrap().success());
    let live = clone.json(T);
    assert_eq!(live["length"], 403);
    let blocks = clone.json(T);
    assert_eq!(blocks["blocks"][402], hex::encode(b"c"));
    assert!(clone.wait(T).success());

    // The JS dir it wrote is a valid feed for us too.
    let js_feed = open(&jsdir);
    assert_eq!(js_feed.length(), 403);
    assert!(js_feed.has_all());

    // A sparse JS reader gets single blocks.
    let out = run_ok(node_cmd(
        &js,
        &[
            "sparse",
            "--key",
            &key,
            "--connect",
            &addr,
            "--blocks",
            "7,399,0",
        ],
    ));
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["blocks"]["7"], hex::encode(b"line 7"));
    assert_eq!(v["blocks"]["399"], hex::encode(b"line 399"));
    assert_eq!(v["blocks"]["0"], hex::encode(b"line 0"));
    assert_eq!(v["downloaded"], 3);
}

fn runtime() -> tokio::runtime::Runtime {
    // The process's one subscriber (all tests share it): stderr only with RUST_LOG.
    dazaar_tests::init_test_log();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs one library connection on `stream` replicating `spec` (opened by us) until the
/// channel is synced (downloader) or the remote closes the connection (uploader).
async fn run_lib(
    stream: tokio::net::TcpStream,
    initiator: bool,
    spec: ChannelSpec<MemStore>,
    wait_for_sync: bool,
) -> Result<(), net::NetError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let (ctx, crx) = tokio::sync::mpsc::channel(4);
    let net_config = NetConfig::default();
    let session = net_config.session_config(initiator, NoiseKeyPair::generate());
    let options = ConnectionOptions {
        open: vec![spec],
        events: Some(tx),
        commands: Some(crx),
        ..ConnectionOptions::default()
    };
    let task =
        tokio::spawn(
            async move { net::run_connection(stream, session, &net_config, options).await },
        );
    while let Some(event) = rx.recv().await {
        if wait_for_sync
            && matches!(
                event,
                NetEvent::Replication {
                    event: ReplicationEvent::Synced { .. },
                    ..
                }
            )
        {
            let _ = ctx.send(net::Command::Shutdown).await;
        }
    }
    task.await.unwrap()
}

#[test]
fn roles_follow_the_constructor_flag_not_the_dialer() {
    let Some(js) = require_js() else { return };
    let rt = runtime();

    // 1. A JS writer dials us as initiator; we accept as responder and download.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let serve = Proc::spawn(node_cmd(
        &js,
        &[
            "serve",
            "--gen",
            "200",
            "--size",
            "64",
            "--initiator",
            "--dial",
            &addr.to_string(),
        ],
    ));
    let info = serve.json(T);
    let key: [u8; 32] = hex::decode(info["key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let feed = SharedFeed::new(Feed::create_reader(MemStore::new(), key).unwrap());
    rt.block_on(async {
        let (stream, _) = listener.accept().await.unwrap();
        let spec = ChannelSpec {
            feed: feed.clone(),
            config: ReplicatorConfig::downloader(),
        };
        tokio::time::timeout(T, run_lib(stream, false, spec, true))
            .await
            .expect("in time")
            .expect("replicated");
    });
    {
        let f = feed.lock();
        assert_eq!(f.length(), 200);
        for i in 0..200 {
            assert_eq!(f.get(i).unwrap().unwrap(), js_gen_block(i, 64));
        }
    }
    drop(serve);

    // 2. A JS reader listens; we dial and serve, once as initiator (JS responder) and once
    //    as responder (JS constructed with isInitiator = true although it accepted).
    let mut source =
        Feed::create(MemStore::new(), dazaar::crypto::Ed25519KeyPair::generate()).unwrap();
    let blocks: Vec<Vec<u8>> = (0..150u64)
        .map(|i| format!("rs {i}").into_bytes())
        .collect();
    source.append_batch(&blocks).unwrap();
    let key = hex::encode(source.key());
    let source = SharedFeed::new(source);
    for (we_initiate, js_flag) in [(true, "0"), (false, "1")] {
        let clone = Proc::spawn(node_cmd(
            &js,
            &[
                "clone",
                "--key",
                &key,
                "--listen",
                "--initiator",
                js_flag,
                "--length",
                "150",
            ],
        ));
        let port = clone.json(T)["port"].as_u64().unwrap();
        let source = source.clone();
        rt.block_on(async {
            let stream = net::dial(format!("127.0.0.1:{port}").parse().unwrap())
                .await
                .unwrap();
            let spec = ChannelSpec {
                feed: source,
                config: ReplicatorConfig::uploader(),
            };
            let run = run_lib(stream, we_initiate, spec, false);
            // The JS reader exits when done, which closes the connection.
            let _ = tokio::time::timeout(T, run).await;
        });
        let done = clone.json(T);
        assert_eq!(done["event"], "done", "we_initiate={we_initiate}");
        assert_eq!(done["length"], 150);
    }
}
