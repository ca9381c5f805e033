//! Market end to end: Rust seller and Rust buyer over loopback TCP.

use std::sync::Arc;
use std::time::Duration;

use dazaar::crypto::Ed25519KeyPair;
use dazaar::market::{
    buy, BuyError, BuyOptions, BuyOutcome, BuyerEvent, Identity, Product, ProductOptions,
    SellerEvent,
};
use dazaar::net::{NetConfig, SharedFeed};
use dazaar::payments::{PaymentGate, PaymentTerms};
use dazaar::storage::{Feed, FsStore};
use tokio::sync::{mpsc, watch};

use crate::support;

struct Sale {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    product: Arc<Product>,
    addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    seller_events: mpsc::Receiver<SellerEvent>,
}

fn net() -> NetConfig {
    NetConfig {
        idle_timeout_ms: 5_000,
        keep_alive_ms: 1_000,
        max_connections: 4096,
        // Every test peer comes from 127.0.0.1 (a thousand of them in one test).
        max_connections_per_ip: 0,
        ..NetConfig::default()
    }
}

async fn start_sale(
    blocks: &[Vec<u8>],
    gate: PaymentGate,
    revalidate: Duration,
    terms: Option<&str>,
) -> Sale {
    start_sale_with(
        blocks,
        gate,
        revalidate,
        terms,
        dazaar::market::seller::HANDSHAKE_TIMEOUT,
    )
    .await
}

async fn start_sale_with(
    blocks: &[Vec<u8>],
    gate: PaymentGate,
    revalidate: Duration,
    terms: Option<&str>,
    handshake_timeout: Duration,
) -> Sale {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let mut feed = Feed::create(
        FsStore::open(root.join("feed"), true).expect("store"),
        Ed25519KeyPair::generate(),
    )
    .expect("feed");
    if !blocks.is_empty() {
        feed.append_batch(blocks).expect("append");
    }
    let identity = Identity::from_master_key([0x33; 32]);
    let product = Product::new(
        &identity,
        SharedFeed::new(feed),
        Arc::new(gate),
        ProductOptions {
            terms: terms.map(str::to_owned),
            revalidate,
            deny: false,
            state: dazaar::state::StatePlace::default_in(&root.join("seller")),
            handshake_timeout,
            unpaid_grace: dazaar::market::seller::UNPAID_GRACE,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = watch::channel(false);
    let (ev_tx, seller_events) = mpsc::channel(1024);
    tokio::spawn(dazaar::market::seller::serve(
        listener,
        product.clone(),
        net(),
        stop_rx,
        Some(ev_tx),
    ));
    Sale {
        _dir: dir,
        dir: root,
        product,
        addr,
        stop,
        seller_events,
    }
}

fn buy_options(sale: &Sale, buyer_dir: &str, live: bool) -> BuyOptions {
    BuyOptions {
        seller_key: sale.product.seller_key(),
        addr: sale.addr,
        out: sale.dir.join(buyer_dir).join("feed"),
        live,
        accept_terms: false,
        data_dir: sale.dir.join(buyer_dir),
        net: net(),
        answer_timeout: Duration::from_secs(5),
        send: Vec::new(),
        report_blocks: false,
        range: None,
        tail: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_sale_rust_to_rust() {
    let blocks: Vec<Vec<u8>> = (0..500u32)
        .map(|i| format!("tick {i}").into_bytes())
        .collect();
    let mut sale = start_sale(
        &blocks,
        PaymentGate::new(Vec::new(), Duration::from_secs(1)),
        Duration::from_millis(200),
        None,
    )
    .await;
    let buyer = Identity::from_master_key([0x44; 32]);
    let (_never, shutdown) = watch::channel(false);
    let (tx, mut rx) = mpsc::channel(4096);
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        buy(&buyer, buy_options(&sale, "b1", false), Some(tx), shutdown),
    )
    .await
    .expect("in time")
    .expect("bought");
    assert_eq!(out.length, 500);
    assert_eq!(
        out.feed_key, sale.product.feed_key,
        "a free product's one-time feed is the feed itself"
    );
    let feed = Feed::open(
        FsStore::open(sale.dir.join("b1/feed"), false).expect("store"),
        Some(out.feed_key),
    )
    .expect("open");
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(feed.get(i as u64).expect("get").as_ref(), Some(b));
    }
    let mut saw_valid = false;
    while let Ok(e) = rx.try_recv() {
        if let BuyerEvent::Valid(info) = e {
            assert_eq!(info["type"], "free");
            saw_valid = true;
        }
    }
    assert!(saw_valid);
    let mut connected = false;
    while let Ok(e) = sale.seller_events.try_recv() {
        connected |= matches!(e, SellerEvent::BuyerConnected { buyer: b } if b == buyer.buyer_key_pair().public_key());
    }
    assert!(connected);
    let _ = sale.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_seller_key_is_refused_by_the_buyer() {
    let sale = start_sale(
        &[b"x".to_vec()],
        PaymentGate::new(Vec::new(), Duration::from_secs(1)),
        Duration::from_millis(200),
        None,
    )
    .await;
    let buyer = Identity::from_master_key([0x45; 32]);
    let (_never, shutdown) = watch::channel(false);
    let mut opts = buy_options(&sale, "b2", false);
    opts.seller_key = [9; 32];
    let err = buy(&buyer, opts, None, shutdown)
        .await
        .expect_err("wrong seller");
    assert!(matches!(err, BuyError::Net(_)), "{err}");
    assert!(!sale.dir.join("b2/feed/key").exists(), "nothing stored");
}

/// A buyer running in its own task, and the events it reports.
fn spawn_buyer(
    buyer: &Identity,
    opts: BuyOptions,
    shutdown: watch::Receiver<bool>,
) -> (
    tokio::task::JoinHandle<Result<BuyOutcome, BuyError>>,
    mpsc::Receiver<BuyerEvent>,
) {
    let (tx, rx) = mpsc::channel(8192);
    let buyer = buyer.clone();
    let task = tokio::spawn(async move { buy(&buyer, opts, Some(tx), shutdown).await });
    (task, rx)
}

/// The next buyer event for which `pred` holds, within `within`; panics with `what`
/// when none comes (or the buyer ends) in time.
async fn wait_event(
    rx: &mut mpsc::Receiver<BuyerEvent>,
    within: Duration,
    what: &str,
    pred: impl Fn(&BuyerEvent) -> bool,
) -> BuyerEvent {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("{what}: the buyer ended"),
            Err(_) => panic!("{what}: not within {within:?}"),
        }
    }
}

fn ledger_gate(file: &std::path::Path, revalidate: Duration) -> PaymentGate {
    let config = format!("file = {:?}\nreload_ms = 0\n", file.display().to_string());
    let verifier = support::open(
        "ledger",
        &config,
        support::limits(Duration::from_secs(2), 1, 64),
    );
    // 1 unit buys 1 second.
    let terms = Arc::new(PaymentTerms::new("ledger", "credits", "1", "seconds", "1"));
    support::gate(&verifier, terms, revalidate)
}

/// A product priced by data through the ledger: 1 unit buys 10,000 bytes.
fn data_ledger_gate(file: &std::path::Path, revalidate: Duration) -> PaymentGate {
    let config = format!("file = {:?}\nreload_ms = 0\n", file.display().to_string());
    let verifier = support::open(
        "ledger",
        &config,
        support::limits(Duration::from_secs(2), 1, 64),
    );
    let terms = Arc::new(PaymentTerms::new(
        "ledger", "credits", "1", "bytes", "10000",
    ));
    support::gate(&verifier, terms, revalidate)
}

/// A JS dazaar@1.6.1 buyer of a product priced by data receives blocks until its
/// allowance is used (3 units: 30 blocks of 1,000 bytes, one more or less), then
/// `dazaar/invalid` saying so; the `dazaar/valid` it saw was of type bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_buyer_of_data_gets_blocks_until_the_allowance() {
    let Some(js) = dazaar_tests::require_js() else {
        return;
    };
    let blocks: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 1000]).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.jsonl");
    let sale = start_sale(
        &blocks,
        data_ledger_gate(&ledger, Duration::from_millis(200)),
        Duration::from_millis(200),
        None,
    )
    .await;
    let js_master = [0x72u8; 32];
    pay(&ledger, &Identity::from_master_key(js_master), 3);
    let got = js_buy_until_invalid(js, &sale, js_master)
        .await
        .expect("join");
    assert_eq!(got["invalid"], "paid data is used up", "{got}");
    assert_eq!(got["valid"]["type"], "bytes", "{got}");
    let held = got["held"].as_u64().expect("held");
    assert!((29..=31).contains(&held), "held {held} blocks for 3 units");
}

/// A JS dazaar@1.6.1 buyer of `sale` with master key `master`, run until it is told
/// `dazaar/invalid`: what it printed (`invalid`, `valid`, `held`), when it ends.
fn js_buy_until_invalid(
    js: std::path::PathBuf,
    sale: &Sale,
    master: [u8; 32],
) -> tokio::task::JoinHandle<serde_json::Value> {
    let (key, port) = (
        hex::encode(sale.product.seller_key()),
        sale.addr.port().to_string(),
    );
    tokio::task::spawn_blocking(move || {
        node_json(
            &js,
            &[
                "buy",
                "--seller",
                &key,
                "--port",
                &port,
                "--master",
                &hex::encode(master),
                "--until-invalid",
            ],
        )
    })
}

/// The JS cut-off tests' sale: 20 blocks of 100 bytes through the ledger plugin (its file
/// in `dir`, returned), revalidated every 200 ms.
async fn js_ledger_sale(dir: &std::path::Path) -> (Sale, std::path::PathBuf) {
    let blocks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 100]).collect();
    let ledger = dir.join("ledger.jsonl");
    let revalidate = Duration::from_millis(200);
    let sale = start_sale(&blocks, ledger_gate(&ledger, revalidate), revalidate, None).await;
    (sale, ledger)
}

/// A JS dazaar@1.6.1 buyer whose paid time runs out is cut off: it saw `dazaar/valid` of
/// type time, got every block while paid, then `dazaar/invalid` with the plugin's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_buyer_is_cut_off_when_its_time_lapses() {
    let Some(js) = dazaar_tests::require_js() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (sale, ledger) = js_ledger_sale(dir.path()).await;
    let js_master = [0x74u8; 32];
    pay(&ledger, &Identity::from_master_key(js_master), 2); // two seconds
    let started = std::time::Instant::now();
    let got = js_buy_until_invalid(js, &sale, js_master)
        .await
        .expect("join");
    assert_eq!(got["valid"]["type"], "time", "{got}");
    let reason = got["invalid"].as_str().expect("invalid");
    assert!(!reason.is_empty() && !reason.contains("revoked"), "{got}");
    assert_eq!(got["held"], 20, "every block while paid: {got}");
    // Told no sooner than the lapse (2 s after paying, less the time to connect).
    assert!(started.elapsed() >= Duration::from_millis(1500), "{got}");
}

/// A JS dazaar@1.6.1 buyer revoked while connected is told `dazaar/invalid` "Access
/// revoked by the seller" though it has paid for an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_buyer_is_cut_off_when_revoked() {
    let Some(js) = dazaar_tests::require_js() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut sale, ledger) = js_ledger_sale(dir.path()).await;
    let js_master = [0x75u8; 32];
    let js_buyer = Identity::from_master_key(js_master);
    pay(&ledger, &js_buyer, 3600);
    let buying = js_buy_until_invalid(js, &sale, js_master);
    // Revoke once the seller has found the buyer valid.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ev = tokio::time::timeout_at(deadline, sale.seller_events.recv())
            .await
            .expect("the JS buyer was never valid")
            .expect("seller events");
        if matches!(ev, SellerEvent::BuyerValid { .. }) {
            break;
        }
    }
    dazaar::market::revocation::revoke(
        &dazaar::state::StatePlace::default_in(&sale.dir.join("seller")),
        &sale.product.seller_key(),
        &js_buyer.buyer_key_pair().public_key(),
        false,
    )
    .expect("revoke");
    let got = buying.await.expect("join");
    assert_eq!(got["invalid"], "Access revoked by the seller", "{got}");
    assert_eq!(got["valid"]["type"], "time", "{got}");
}

fn pay(file: &std::path::Path, buyer: &Identity, amount: u64) {
    use std::io::Write;
    let line = format!(
        "{{\"buyer\":\"{}\",\"amount\":{amount},\"time\":{}}}\n",
        hex::encode(buyer.buyer_key_pair().public_key()),
        dazaar::payments::now_ms()
    );
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .expect("ledger");
    f.write_all(line.as_bytes()).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paid_and_unpaid_buyers() {
    dazaar_tests::init_test_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.jsonl");
    let blocks: Vec<Vec<u8>> = (0..300u32)
        .map(|i| format!("paid tick {i}").into_bytes())
        .collect();
    let sale = start_sale(
        &blocks,
        ledger_gate(&ledger, Duration::from_millis(200)),
        Duration::from_millis(200),
        None,
    )
    .await;
    let (_never, shutdown) = watch::channel(false);

    // Unpaid: rejected with the plugin's reason; zero blocks.
    let unpaid = Identity::from_master_key([0x50; 32]);
    let err = buy(
        &unpaid,
        buy_options(&sale, "unpaid", false),
        None,
        shutdown.clone(),
    )
    .await
    .expect_err("unpaid");
    match &err {
        BuyError::Rejected(reason) => assert!(reason.contains("no payment"), "{reason}"),
        other => panic!("expected a rejection, got {other}"),
    }
    let unpaid_feed = sale.dir.join("unpaid/feed");
    if unpaid_feed.join("key").exists() {
        let f = Feed::open(FsStore::open(&unpaid_feed, false).expect("store"), None).expect("open");
        assert_eq!(
            f.downloaded(0, f.length().max(1)),
            0,
            "an unpaid buyer holds no block"
        );
    }

    // Paid: its own rekeyed feed with the seller's data.
    let alice = Identity::from_master_key([0x51; 32]);
    let bob = Identity::from_master_key([0x52; 32]);
    pay(&ledger, &alice, 600);
    pay(&ledger, &bob, 600);
    let a = buy(
        &alice,
        buy_options(&sale, "alice", false),
        None,
        shutdown.clone(),
    )
    .await
    .expect("alice buys");
    let b = buy(
        &bob,
        buy_options(&sale, "bob", false),
        None,
        shutdown.clone(),
    )
    .await
    .expect("bob buys");
    assert_eq!((a.length, b.length), (300, 300));
    assert_ne!(
        a.feed_key, sale.product.feed_key,
        "a paid buyer gets a rekeyed feed"
    );
    assert_ne!(
        a.feed_key, b.feed_key,
        "two buyers get different feed keys over the same data"
    );
    assert_eq!(
        a.feed_key,
        sale.product
            .buyer_feed_key(&alice.buyer_key_pair().public_key())
    );

    // Reconnect: the same feed key, resumed in place.
    let again = buy(
        &alice,
        buy_options(&sale, "alice", false),
        None,
        shutdown.clone(),
    )
    .await
    .expect("again");
    assert_eq!(again.feed_key, a.feed_key);

    let fa = Feed::open(
        FsStore::open(sale.dir.join("alice/feed"), false).expect("store"),
        Some(a.feed_key),
    )
    .expect("open");
    let mut fb = Feed::open(
        FsStore::open(sale.dir.join("bob/feed"), false).expect("store"),
        Some(b.feed_key),
    )
    .expect("open");
    for i in [0u64, 150, 299] {
        assert_eq!(fa.get(i).expect("get"), Some(blocks[i as usize].clone()));
    }
    assert_eq!(fa.tree_hash(), fb.tree_hash(), "same data and tree");

    // A copy relayed by Alice cannot be passed off to Bob as the seller's: her roots are
    // signed by her key, which Bob's feed does not accept.
    let mut bob_copy =
        Feed::create_reader(dazaar::storage::MemStore::new(), b.feed_key).expect("reader");
    let proof = fa
        .proof(7, 0, &mut dazaar::storage::NodeSet::new(), false)
        .expect("proof");
    let alice_sig = fa
        .signature_at(proof.verified_by / 2)
        .expect("sig")
        .expect("stored");
    let err = bob_copy
        .put(7, Some(&blocks[7]), &proof.nodes, Some(&alice_sig))
        .expect_err("relayed copy");
    assert!(err.to_string().contains("signature"), "{err}");
    assert!(!bob_copy.has(7));
    // Bob's own proof from the seller does verify, of course.
    let bob_sig = fb.signature_at(300).expect("sig").expect("stored");
    let proof_b = fb
        .proof(7, 0, &mut dazaar::storage::NodeSet::new(), false)
        .expect("proof");
    bob_copy
        .put(7, Some(&blocks[7]), &proof_b.nodes, Some(&bob_sig))
        .expect("genuine");
    let _ = fb.sync();
}

/// Payment lapses mid-stream: the seller stops uploading once it finds the buyer
/// invalid, and no block appended after that reaches the buyer; paying again resumes.
///
/// Ordered by events, not timed: the seller queues Status uploading=false before
/// `dazaar/invalid` on the buyer's connection, so once the buyer reports the
/// `dazaar/invalid`, its upload has stopped, and every block whose append began after
/// that (stamped before it is issued) must stay with the seller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapse_stops_upload_and_paying_again_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.jsonl");
    let revalidate = Duration::from_millis(200);
    let mut sale = start_sale(
        &[b"genesis".to_vec()],
        ledger_gate(&ledger, revalidate),
        revalidate,
        None,
    )
    .await;
    let buyer = Identity::from_master_key([0x60; 32]);
    let buyer_key = buyer.buyer_key_pair().public_key();
    pay(&ledger, &buyer, 3); // three seconds of access

    // The seller appends a block every 50 ms, noting when each append began.
    let feed = sale.product.feed.clone();
    let appended: Arc<std::sync::Mutex<Vec<(u64, std::time::Instant)>>> = Arc::default();
    let log = appended.clone();
    let appender = tokio::spawn(async move {
        for i in 0..2_000u32 {
            // The pace of a live feed, which the test observes: not a synchronisation.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let issued = std::time::Instant::now();
            let len = feed
                .append_batch(&[format!("live {i}").into_bytes()])
                .expect("append");
            log.lock().expect("log").push((len - 1, issued));
        }
    });

    let (stop_buyer, shutdown) = watch::channel(false);
    let opts = buy_options(&sale, "live", true);
    let out_dir = opts.out.clone();
    let (buying, mut rx) = spawn_buyer(&buyer, opts, shutdown);

    wait_event(
        &mut rx,
        Duration::from_secs(10),
        "the buyer was valid while paid",
        |e| matches!(e, BuyerEvent::Valid(_)),
    )
    .await;
    let e = wait_event(
        &mut rx,
        Duration::from_secs(10),
        "the buyer was told its payment lapsed",
        |e| matches!(e, BuyerEvent::Invalid(_)),
    )
    .await;
    let told = std::time::Instant::now();
    let BuyerEvent::Invalid(reason) = e else {
        unreachable!()
    };
    assert!(!reason.is_empty());
    // The seller reported the same.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, sale.seller_events.recv())
            .await
            .expect("the seller never reported the buyer invalid")
            .expect("seller events");
        if let SellerEvent::BuyerInvalid {
            buyer: b,
            reason: r,
        } = ev
        {
            assert_eq!(b, buyer_key);
            assert_eq!(r, reason);
            break;
        }
    }

    // Blocks appended after the buyer was told: 16 of them (800 ms at the feed's pace,
    // time enough for a leak to deliver the first ones), then look at what arrived.
    let late = || -> Vec<u64> {
        appended
            .lock()
            .expect("log")
            .iter()
            .filter(|(_, issued)| *issued > told)
            .map(|(i, _)| *i)
            .collect()
    };
    dazaar_tests::wait_until_async(
        Duration::from_secs(30),
        "16 blocks appended after the buyer was told it lapsed",
        || late().len() >= 16,
    )
    .await;
    let late = late();
    {
        let f = Feed::open(FsStore::open_read_only(&out_dir).expect("store"), None).expect("open");
        for i in &late {
            assert!(
                !f.has(*i),
                "block {i}, appended after the buyer was told it lapsed, reached it"
            );
        }
    }
    let buyer_again = Identity::from_master_key([0x60; 32]);
    pay(&ledger, &buyer_again, 30);
    wait_event(
        &mut rx,
        Duration::from_secs(10),
        "paying again made the buyer valid",
        |e| matches!(e, BuyerEvent::Valid(_)),
    )
    .await;
    // It catches up on what it missed.
    let target = *late.last().expect("late");
    dazaar_tests::wait_until_async(
        Duration::from_secs(30),
        "paying again resumed the download",
        || {
            Feed::open(FsStore::open_read_only(&out_dir).expect("store"), None)
                .expect("open")
                .has(target)
        },
    )
    .await;
    let _ = stop_buyer.send(true);
    let _ = buying.await;
    appender.abort();
}

fn node_json(js: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("node")
        .arg(dazaar_tests::repo_root().join("tests/js/dazaar-peer.js"))
        .args(args)
        .env("NODE_PATH", js.join("node_modules"))
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("node said {:?}: {e}", String::from_utf8_lossy(&out.stdout)))
}

/// JS dazaar@1.6.1 buyers buy from our seller: free, paid (a rekeyed feed), and rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_buyer_buys_from_rust_seller() {
    let Some(js) = dazaar_tests::require_js() else {
        return;
    };
    let blocks: Vec<Vec<u8>> = (0..40u32)
        .map(|i| format!("rust block {i}").into_bytes())
        .collect();

    let free = start_sale(
        &blocks,
        PaymentGate::new(Vec::new(), Duration::from_secs(1)),
        Duration::from_millis(200),
        None,
    )
    .await;
    let got = tokio::task::spawn_blocking({
        let js = js.clone();
        let (key, port) = (
            hex::encode(free.product.seller_key()),
            free.addr.port().to_string(),
        );
        move || {
            node_json(
                &js,
                &["buy", "--seller", &key, "--port", &port, "--count", "40"],
            )
        }
    })
    .await
    .expect("join");
    assert_eq!(got["feedKey"], hex::encode(free.product.feed_key));
    assert_eq!(got["valid"]["type"], "free");
    let js_blocks: Vec<Vec<u8>> = got["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .map(|b| hex::decode(b.as_str().expect("hex")).expect("hex"))
        .collect();
    assert_eq!(js_blocks, blocks);

    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.jsonl");
    let paid = start_sale(
        &blocks,
        ledger_gate(&ledger, Duration::from_millis(200)),
        Duration::from_millis(200),
        None,
    )
    .await;
    // The JS buyer's key is derived from its master key: pay for it in the ledger.
    let js_master = [0x71u8; 32];
    pay(&ledger, &Identity::from_master_key(js_master), 600);
    let got = tokio::task::spawn_blocking({
        let js = js.clone();
        let (key, port) = (
            hex::encode(paid.product.seller_key()),
            paid.addr.port().to_string(),
        );
        move || {
            node_json(
                &js,
                &[
                    "buy",
                    "--seller",
                    &key,
                    "--port",
                    &port,
                    "--count",
                    "40",
                    "--master",
                    &hex::encode(js_master),
                ],
            )
        }
    })
    .await
    .expect("join");
    let expected_key = paid.product.buyer_feed_key(
        &Identity::from_master_key(js_master)
            .buyer_key_pair()
            .public_key(),
    );
    assert_eq!(
        got["feedKey"],
        hex::encode(expected_key),
        "the JS buyer verified our rekeyed feed"
    );
    assert_eq!(got["valid"]["type"], "time");
    let js_blocks: Vec<Vec<u8>> = got["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .map(|b| hex::decode(b.as_str().expect("hex")).expect("hex"))
        .collect();
    assert_eq!(js_blocks, blocks);

    // An unpaid JS buyer is told why.
    let got = tokio::task::spawn_blocking({
        let js = js.clone();
        let (key, port) = (
            hex::encode(paid.product.seller_key()),
            paid.addr.port().to_string(),
        );
        move || {
            node_json(
                &js,
                &[
                    "buy",
                    "--seller",
                    &key,
                    "--port",
                    &port,
                    "--count",
                    "1",
                    "--master",
                    &"72".repeat(32),
                ],
            )
        }
    })
    .await
    .expect("join");
    assert!(
        got["invalid"]
            .as_str()
            .expect("invalid")
            .contains("no payment"),
        "{got}"
    );
}

struct JsSeller {
    child: std::process::Child,
    info: serde_json::Value,
}

impl Drop for JsSeller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn js_seller(js: &std::path::Path, args: &[&str]) -> JsSeller {
    use std::io::BufRead;
    let mut child = std::process::Command::new("node")
        .arg(dazaar_tests::repo_root().join("tests/js/dazaar-peer.js"))
        .arg("sell")
        .args(args)
        .env("NODE_PATH", js.join("node_modules"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    let info =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("JS seller said {line:?}: {e}"));
    JsSeller { child, info }
}

/// Our buyer buys from a JS dazaar@1.6.1 seller: free, paid (rekeyed), rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_buyer_buys_from_js_seller() {
    let Some(js) = dazaar_tests::require_js() else {
        return;
    };
    // The process's one subscriber (all tests share it): stderr only with RUST_LOG.
    dazaar_tests::init_test_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let buyer = Identity::from_master_key([0x81; 32]);
    for (n, mode) in ["free", "paid", "deny"].into_iter().enumerate() {
        let seller = js_seller(&js, &["--blocks", "25", "--mode", mode]);
        let seller_key: [u8; 32] = hex::decode(seller.info["sellerKey"].as_str().expect("key"))
            .expect("hex")
            .try_into()
            .expect("32");
        let port = seller.info["port"].as_u64().expect("port") as u16;
        let opts = BuyOptions {
            seller_key,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            out: dir.path().join(format!("b{n}/feed")),
            live: false,
            accept_terms: false,
            data_dir: dir.path().join(format!("b{n}")),
            net: net(),
            answer_timeout: Duration::from_secs(10),
            send: Vec::new(),
            report_blocks: false,
            range: None,
            tail: false,
        };
        let (tx, mut rx) = mpsc::channel(4096);
        let (_never, shutdown) = watch::channel(false);
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            buy(&buyer, opts, Some(tx), shutdown),
        )
        .await
        .expect("in time");
        match mode {
            "deny" => match result {
                Err(BuyError::Rejected(reason)) => assert_eq!(reason, "Needs payment"),
                other => panic!("expected a rejection, got {other:?}"),
            },
            _ => {
                let out = result.unwrap_or_else(|e| panic!("{mode}: {e}"));
                assert_eq!(out.length, 25, "{mode}");
                let feed_key_is_original = hex::encode(out.feed_key) == seller.info["feedKey"];
                assert_eq!(
                    feed_key_is_original,
                    mode == "free",
                    "{mode}: one-time feed key"
                );
                let f = Feed::open(
                    FsStore::open(dir.path().join(format!("b{n}/feed")), false).expect("store"),
                    Some(out.feed_key),
                )
                .expect("open");
                for i in 0..25u64 {
                    assert_eq!(
                        f.get(i).expect("get"),
                        Some(format!("block {i}").into_bytes()),
                        "{mode}: block {i}"
                    );
                }
                let mut valid = None;
                while let Ok(e) = rx.try_recv() {
                    if let BuyerEvent::Valid(info) = e {
                        valid = Some(info);
                    }
                }
                let valid = valid.expect("valid event");
                if mode == "free" {
                    // A JS free seller (uniqueFeed false) always sends {"free":true}.
                    assert_eq!(valid, serde_json::json!({"free": true}));
                } else {
                    assert_eq!(valid["type"], "time");
                }
            }
        }
    }
}

/// Bad buyers — 1,000 handshakes that never finish, garbage bytes, garbage and huge
/// extension messages, a buyer of another seller — while paying buyers keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_buyers_do_not_disturb_paying_buyers() {
    use dazaar::net::{Command, ConnectionOptions};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.jsonl");
    let revalidate = Duration::from_millis(300);
    let sale = start_sale_with(
        &[b"first".to_vec()],
        ledger_gate(&ledger, revalidate),
        revalidate,
        None,
        Duration::from_secs(1),
    )
    .await;
    let alice = Identity::from_master_key([0x91; 32]);
    let bob = Identity::from_master_key([0x92; 32]);
    pay(&ledger, &alice, 600);
    pay(&ledger, &bob, 600);

    // Alice follows live.
    let (stop_alice, alice_shutdown) = watch::channel(false);
    let (alice_task, mut alice_events) =
        spawn_buyer(&alice, buy_options(&sale, "alice", true), alice_shutdown);

    // 1,000 connections that never finish the handshake (half send a few bytes).
    let mut stalled = Vec::new();
    for i in 0..1000 {
        let mut s = tokio::net::TcpStream::connect(sale.addr)
            .await
            .expect("connect");
        if i % 2 == 0 {
            let _ = s.write_all(&[0x40, 1, 2, 3]).await;
        }
        stalled.push(s);
    }
    // Garbage bytes instead of a handshake.
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(sale.addr)
            .await
            .expect("connect");
        let junk: Vec<u8> = (0..4096).map(|_| rand::random()).collect();
        let _ = s.write_all(&junk).await;
    }
    // A real handshake, then garbage extensions and huge user messages.
    let mut rogues = Vec::new();
    for r in 0..3u8 {
        let stream = dazaar::net::dial(sale.addr).await.expect("dial");
        let mut cfg = net().session_config(
            true,
            dazaar::crypto::NoiseKeyPair::from_seed(&[0xa0 + r; 32]),
        );
        cfg.expected_remote_key = Some(sale.product.seller_key());
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        for name in [
            "dazaar/user-message",
            "dazaar/valid",
            "dazaar/one-time-feed",
            "zz/unknown",
        ] {
            cmd_tx
                .send(Command::RegisterExtension(name.into()))
                .await
                .expect("cmd");
        }
        let huge = vec![b'x'; if r == 0 { 4 * 1024 * 1024 } else { 200 * 1024 }];
        for (name, payload) in [
            ("dazaar/user-message", b"not json at all".to_vec()),
            ("dazaar/user-message", br#"{"name": 5}"#.to_vec()),
            ("dazaar/user-message", huge.clone()),
            ("dazaar/valid", vec![0xff; 100]),
            ("dazaar/one-time-feed", vec![1, 2, 3]),
            ("zz/unknown", huge),
        ] {
            cmd_tx
                .send(Command::SendExtension(name.into(), payload))
                .await
                .expect("cmd");
        }
        let net_cfg = net();
        rogues.push(tokio::spawn(async move {
            let options = ConnectionOptions::<FsStore> {
                commands: Some(cmd_rx),
                ..ConnectionOptions::default()
            };
            let _keep = cmd_tx;
            tokio::time::timeout(
                Duration::from_secs(3),
                dazaar::net::run_connection(stream, cfg, &net_cfg, options),
            )
            .await
        }));
    }

    // Meanwhile the seller appends, and Alice receives it live.
    for i in 0..20u32 {
        sale.product
            .feed
            .append_batch(&[format!("live {i}").into_bytes()])
            .expect("append");
        // The pace of a live feed while the bad buyers are connected.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut alice_len = 0;
    while alice_len < 21 {
        match tokio::time::timeout_at(deadline, alice_events.recv()).await {
            Ok(Some(BuyerEvent::Synced { length, .. })) => alice_len = length,
            Ok(Some(_)) => {}
            _ => panic!("Alice stopped receiving while bad buyers were connected (at {alice_len})"),
        }
    }
    // Bob buys the whole feed while all of that is going on.
    let (_never, shutdown) = watch::channel(false);
    let b = tokio::time::timeout(
        Duration::from_secs(10),
        buy(&bob, buy_options(&sale, "bob", false), None, shutdown),
    )
    .await
    .expect("Bob in time")
    .expect("Bob buys");
    assert_eq!(b.length, 21);

    // The stalled handshakes are dropped at the handshake deadline (1 s after they
    // connected): each must end (EOF or reset) within a bound well past it. A responder
    // may have answered part of a handshake before giving up: read past that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut closed = 0;
    for s in stalled.iter_mut() {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                Ok(Ok(_)) => {}
                Err(_) => break,
            }
        }
    }
    assert_eq!(
        closed, 1000,
        "every stalled handshake was dropped by the seller"
    );
    for r in rogues {
        let _ = r.await;
    }
    assert!(
        sale.product.connected_buyers() >= 1,
        "Alice is still connected"
    );
    let _ = stop_alice.send(true);
    let _ = alice_task.await;
}

/// Terms of use: a buyer that has not accepted them gets nothing; accepting records them;
/// changed terms must be accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terms_of_use_must_be_accepted() {
    let blocks = vec![b"a".to_vec(), b"b".to_vec()];
    let sale = start_sale(
        &blocks,
        PaymentGate::new(Vec::new(), Duration::from_secs(1)),
        Duration::from_millis(200),
        Some("be nice"),
    )
    .await;
    let buyer = Identity::from_master_key([0xb1; 32]);
    let (_never, shutdown) = watch::channel(false);
    let err = buy(
        &buyer,
        buy_options(&sale, "t", false),
        None,
        shutdown.clone(),
    )
    .await
    .expect_err("not accepted");
    assert_eq!(
        err.to_string(),
        "Terms of Use must be accepted before data can be replicated"
    );
    assert!(
        !sale.dir.join("t/feed/key").exists() || {
            let f = Feed::open(
                FsStore::open(sale.dir.join("t/feed"), false).expect("store"),
                None,
            )
            .expect("open");
            f.downloaded(0, f.length().max(1)) == 0
        }
    );
    let mut opts = buy_options(&sale, "t", false);
    opts.accept_terms = true;
    let out = buy(&buyer, opts, None, shutdown.clone())
        .await
        .expect("accepted");
    assert_eq!(out.length, 2);
    // Accepted once: no flag needed next time.
    buy(
        &buyer,
        buy_options(&sale, "t", false),
        None,
        shutdown.clone(),
    )
    .await
    .expect("remembered");
    // A seller whose terms changed since they were accepted is refused until accepted again.
    let changed = start_sale(
        &blocks,
        PaymentGate::new(Vec::new(), Duration::from_secs(1)),
        Duration::from_millis(200),
        Some("be nicer"),
    )
    .await;
    let accepted = sale
        .dir
        .join("t/accepted-terms")
        .join(hex::encode(changed.product.seller_key()));
    std::fs::write(&accepted, "be nice").expect("earlier terms");
    let mut opts = buy_options(&changed, "t", false);
    opts.data_dir = sale.dir.join("t");
    let err = buy(&buyer, opts.clone(), None, shutdown.clone())
        .await
        .expect_err("updated terms");
    assert_eq!(
        err.to_string(),
        "Terms of Use updated, new terms must be accepted before data can be replicated"
    );
    opts.accept_terms = true;
    buy(&buyer, opts, None, shutdown)
        .await
        .expect("accepted again");
    assert_eq!(
        std::fs::read_to_string(&accepted).expect("recorded"),
        "be nicer"
    );
}

/// A buyer's user message reaches the seller's payment plugin and its answer comes back
/// (the invoice exchange of Lightning rides on this), without the buyer being valid.
// The lock spans the test on purpose (`support::faulty_plugin_lock`).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_messages_reach_the_sellers_plugin() {
    let _faulty = support::faulty_plugin_lock();
    use dazaar::payments::{CallLimits, PaymentEntry, PaymentTerms, PluginRegistry, UserMessage};
    let mut registry = PluginRegistry::new();
    let faulty = registry
        .load_path(&dazaar_tests::plugin_library("faulty"))
        .expect("load");
    let verifier = faulty
        .open(
            "mode = \"ok\"",
            CallLimits {
                timeout: Duration::from_secs(2),
                workers: 1,
                queue: 8,
            },
        )
        .expect("open");
    let terms = Arc::new(PaymentTerms::new(
        faulty.methods().next().expect("method"),
        "X",
        "1",
        "seconds",
        "1",
    ));
    let gate = PaymentGate::new(
        vec![PaymentEntry { terms, verifier }],
        Duration::from_secs(1),
    );
    let sale = start_sale(&[b"x".to_vec()], gate, Duration::from_millis(200), None).await;
    let buyer = Identity::from_master_key([0xc1; 32]);
    let ping = UserMessage {
        name: "faulty-ping".into(),
        message: "{}".into(),
    };
    let reply = dazaar::market::exchange(
        &buyer,
        sale.product.seller_key(),
        sale.addr,
        &ping,
        &net(),
        Duration::from_secs(5),
    )
    .await
    .expect("exchange")
    .expect("a reply");
    assert_eq!(reply.name.as_str(), "faulty-pong");
    // A message no plugin handles gets no answer.
    let other = UserMessage {
        name: "nobody-handles-this".into(),
        message: "1".into(),
    };
    let none = dazaar::market::exchange(
        &buyer,
        sale.product.seller_key(),
        sale.addr,
        &other,
        &net(),
        Duration::from_millis(500),
    )
    .await
    .expect("exchange");
    assert!(none.is_none());
}

/// One live connection per buyer key: a second connection of the same buyer replaces the
/// first, which the seller closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_live_connection_per_buyer() {
    let sale = start_sale(
        &[b"x".to_vec()],
        PaymentGate::new(Vec::new(), Duration::from_secs(1)),
        Duration::from_millis(200),
        None,
    )
    .await;
    let buyer = Identity::from_master_key([0xd1; 32]);
    let (_keep, shutdown) = watch::channel(false);
    let (first, mut rx1) = spawn_buyer(&buyer, buy_options(&sale, "one", true), shutdown.clone());
    // Wait until the first is synced.
    wait_event(&mut rx1, Duration::from_secs(5), "first syncs", |e| {
        matches!(e, BuyerEvent::Synced { .. })
    })
    .await;
    assert_eq!(sale.product.connected_buyers(), 1);
    let (second, mut rx2) = spawn_buyer(&buyer, buy_options(&sale, "two", true), shutdown.clone());
    wait_event(&mut rx2, Duration::from_secs(5), "second syncs", |e| {
        matches!(e, BuyerEvent::Synced { .. })
    })
    .await;
    // The first connection is closed by the seller.
    let ended = tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the older connection was closed");
    assert!(ended.is_ok());
    assert_eq!(sale.product.connected_buyers(), 1);
    assert!(!second.is_finished(), "the newer connection stays");
    second.abort();
}

/// A sparse range, and a live tail that receives only what is appended after it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_range_and_live_tail() {
    let blocks: Vec<Vec<u8>> = (0..100u32).map(|i| format!("b{i}").into_bytes()).collect();
    let sale = start_sale(
        &blocks,
        PaymentGate::new(Vec::new(), Duration::from_secs(1)),
        Duration::from_millis(200),
        None,
    )
    .await;
    let buyer = Identity::from_master_key([0xe1; 32]);
    let (_keep, shutdown) = watch::channel(false);
    let mut opts = buy_options(&sale, "range", false);
    opts.range = Some((40, Some(50)));
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        buy(&buyer, opts, None, shutdown.clone()),
    )
    .await
    .expect("in time")
    .expect("range");
    assert_eq!(out.length, 100);
    let f = Feed::open(
        FsStore::open(sale.dir.join("range/feed"), false).expect("store"),
        None,
    )
    .expect("open");
    assert_eq!(f.downloaded(0, 100), 10, "only the range");
    assert_eq!(f.get(45).expect("get"), Some(blocks[45].clone()));
    assert!(!f.has(39) && !f.has(50));

    let mut opts = buy_options(&sale, "tail", true);
    opts.tail = true;
    let (tail, mut rx) = spawn_buyer(&buyer, opts, shutdown);
    // Wait until the tail has started, then append.
    wait_event(&mut rx, Duration::from_secs(5), "tail starts", |e| {
        matches!(e, BuyerEvent::Progress { .. } | BuyerEvent::Synced { .. })
    })
    .await;
    sale.product
        .feed
        .append_batch(&[b"new one".to_vec(), b"new two".to_vec()])
        .expect("append");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let f = Feed::open(
            FsStore::open_read_only(sale.dir.join("tail/feed")).expect("store"),
            None,
        )
        .expect("open");
        if f.has(101) {
            assert_eq!(f.get(100).expect("get"), Some(b"new one".to_vec()));
            assert_eq!(
                f.downloaded(0, 100),
                0,
                "a tail does not download the history"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tail did not receive the new blocks"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tail.abort();
}

/// A buyer's Open for its one-time feed may reach the seller before the seller has set
/// that feed up to serve (it tells the key, then opens; the two race with the buyer's
/// answer). The seller must keep such an early Open pending, not close it: a buyer whose
/// channel was closed that way used to wait forever with a valid payment. Here the buyer
/// opens its feed right after the handshake, before it is told the key at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_opening_its_feed_before_the_seller_is_still_served() {
    use dazaar::net::{ChannelSpec, ConnectionOptions, NetEvent};
    use dazaar::protocol::replicate::{ReplicationEvent, ReplicatorConfig};
    use dazaar::storage::MemStore;
    dazaar_tests::init_test_log();
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger = dir.path().join("ledger.jsonl");
    let blocks: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("early {i}").into_bytes())
        .collect();
    let sale = start_sale(
        &blocks,
        ledger_gate(&ledger, Duration::from_millis(200)),
        Duration::from_millis(200),
        None,
    )
    .await;
    let buyer = Identity::from_master_key([0x61; 32]);
    pay(&ledger, &buyer, 600);
    let key = sale
        .product
        .buyer_feed_key(&buyer.buyer_key_pair().public_key());
    let feed = SharedFeed::new(Feed::create_reader(MemStore::new(), key).expect("reader"));

    let stream = dazaar::net::dial(sale.addr).await.expect("dial");
    let mut session = net().session_config(true, buyer.buyer_key_pair());
    session.expected_remote_key = Some(sale.product.seller_key());
    let (ev_tx, mut events) = mpsc::channel(1024);
    let (_stop, shutdown) = watch::channel(false);
    let options = ConnectionOptions {
        open: vec![ChannelSpec {
            feed: feed.clone(),
            config: ReplicatorConfig::downloader(),
        }],
        events: Some(ev_tx),
        shutdown: Some(shutdown),
        extensions: dazaar::market::ext::ALL
            .iter()
            .map(|n| (*n).to_owned())
            .collect(),
        keep_unknown: true,
        ..ConnectionOptions::default()
    };
    let cfg = net();
    let conn =
        tokio::spawn(
            async move { dazaar::net::run_connection(stream, session, &cfg, options).await },
        );
    let synced = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.recv().await {
            match ev {
                NetEvent::ChannelClosed { .. } => {
                    return Err("the seller closed the early channel")
                }
                NetEvent::Replication {
                    event: ReplicationEvent::Synced { length, .. },
                    ..
                } if length == 50 && feed.lock().has_all() => return Ok(()),
                _ => {}
            }
        }
        Err("the connection ended")
    })
    .await
    .expect("the early buyer was served within 10 s");
    assert_eq!(synced, Ok(()));
    assert_eq!(feed.lock().get(49).expect("get"), Some(blocks[49].clone()));
    conn.abort();
}

/// A gate over the faulty fixture plugin in `mode` (hold [`support::faulty_plugin_lock`]).
fn faulty_gate(mode: &str) -> PaymentGate {
    let verifier = support::open(
        "faulty",
        &format!("mode = {mode:?}\n"),
        dazaar::payments::CallLimits::default(),
    );
    let terms = Arc::new(PaymentTerms::new("faulty", "SATS", "1", "seconds", "1"));
    support::gate(&verifier, terms, Duration::from_millis(200))
}

// The lock spans the test on purpose: it keeps the faulty fixture's threads out of a
// thread count (`support::faulty_plugin_lock`).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_payment_backend_is_reported_to_the_buyer_as_a_public_text() {
    let _faulty = support::faulty_plugin_lock();
    let (_never, shutdown) = watch::channel(false);
    // The plugin's backend fails: the buyer is told only that the check is unavailable
    // (the address and path in the error stay in the seller's log).
    let sale = start_sale(
        &[b"x".to_vec()],
        faulty_gate("unavailable"),
        Duration::from_millis(200),
        None,
    )
    .await;
    let buyer = Identity::from_master_key([0x61; 32]);
    let err = buy(
        &buyer,
        buy_options(&sale, "b", false),
        None,
        shutdown.clone(),
    )
    .await
    .expect_err("not valid");
    match &err {
        BuyError::Rejected(reason) => {
            assert_eq!(reason, dazaar::payments::PUBLIC_UNAVAILABLE)
        }
        other => panic!("expected a rejection, got {other}"),
    }
    let _ = sale.stop.send(true);

    // A refusal is for the buyer: its reason goes through.
    let sale = start_sale(
        &[b"x".to_vec()],
        faulty_gate("error"),
        Duration::from_millis(200),
        None,
    )
    .await;
    let err = buy(&buyer, buy_options(&sale, "c", false), None, shutdown)
        .await
        .expect_err("not valid");
    match &err {
        BuyError::Rejected(reason) => {
            assert_eq!(reason, "faulty: the faulty plugin refuses on purpose")
        }
        other => panic!("expected a rejection, got {other}"),
    }
    let _ = sale.stop.send(true);
}
