//! Market end to end: Rust seller and Rust buyer over loopback TCP.

use std::sync::Arc;
use std::time::Duration;

use dazaar::crypto::Ed25519KeyPair;
use dazaar::market::{
    buy, BuyError, BuyOptions, BuyerEvent, Identity, Product, ProductOptions, SellerEvent,
};
use dazaar::net::{NetConfig, SharedFeed};
use dazaar::payments::PaymentGate;
use dazaar::storage::{Feed, FsStore};
use tokio::sync::{mpsc, watch};

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
        ..NetConfig::default()
    }
}

async fn start_sale(
    blocks: &[Vec<u8>],
    gate: PaymentGate,
    revalidate: Duration,
    terms: Option<&str>,
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
            data_dir: root.join("seller"),
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
