//! Discovery end to end, on a private mainline DHT on 127.0.0.1 (no public node is ever
//! contacted: every DHT here has explicit loopback bootstrap nodes, and
//! `DAZAAR_NO_PUBLIC_DHT=1` makes any fallback to the public nodes an error). mDNS is off
//! in every test (it would multicast on the machine's interfaces).

use std::net::{SocketAddr, SocketAddrV4};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::crypto::{Ed25519KeyPair, NoiseKeyPair};
use dazaar::discovery::{self, BootstrapNode, DiscoveryError, DiscoveryOptions, Source};
use dazaar::market::{buy, BuyOptions, Identity, Product, ProductOptions};
use dazaar::net::{NetConfig, SharedFeed};
use dazaar::payments::PaymentGate;
use dazaar::protocol::{Session, SessionConfig};
use dazaar::storage::{Feed, FsStore};
use dazaar_tests::{dazaar, dazaar_bin, dazaar_cmd, json_lines, s, Proc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// Forbids the public DHT bootstrap nodes to this process's discovery. Every test in the
/// process may see it (they share the environment), and every test wants it so: none
/// may reach the public DHT.
fn no_public_dht() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::env::set_var(discovery::NO_PUBLIC_DHT_ENV, "1"));
}

/// A private DHT: one node started fresh, two more joining through it.
async fn testnet() -> (Vec<BootstrapNode>, Vec<String>) {
    let loopback: SocketAddrV4 = "127.0.0.1:0".parse().expect("addr");
    let first = BootstrapNode::start(loopback, &[]).await.expect("dht node");
    let boot = vec![first.local_addr().to_string()];
    let mut nodes = vec![first];
    for _ in 0..2 {
        nodes.push(
            BootstrapNode::start(loopback, &boot)
                .await
                .expect("dht node"),
        );
    }
    (nodes, boot)
}

fn opts(bootstrap: &[String]) -> DiscoveryOptions {
    let mut o = DiscoveryOptions::private_dht(bootstrap.to_vec());
    o.lookup_timeout = Duration::from_secs(10);
    o.relookup = Duration::from_millis(300);
    o.probe_timeout = Duration::from_secs(2);
    o
}

struct Sale {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    product: Arc<Product>,
    addr: SocketAddr,
    _stop: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
}

async fn start_sale(blocks: &[Vec<u8>]) -> Sale {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let mut feed = Feed::create(
        FsStore::open(root.join("feed"), true).expect("store"),
        Ed25519KeyPair::generate(),
    )
    .expect("feed");
    feed.append_batch(blocks).expect("append");
    let identity = Identity::from_master_key([0x51; 32]);
    let product = Product::new(
        &identity,
        SharedFeed::new(feed),
        Arc::new(PaymentGate::new(Vec::new(), Duration::from_secs(1))),
        ProductOptions {
            terms: None,
            revalidate: Duration::from_millis(200),
            deny: false,
            state: dazaar::state::StatePlace::default_in(&root.join("seller")),
            handshake_timeout: dazaar::market::seller::HANDSHAKE_TIMEOUT,
            unpaid_grace: dazaar::market::seller::UNPAID_GRACE,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(dazaar::market::seller::serve(
        listener,
        product.clone(),
        NetConfig::default(),
        stop_rx.clone(),
        None,
    ));
    Sale {
        _dir: dir,
        dir: root,
        product,
        addr,
        _stop: stop,
        stop_rx,
    }
}

async fn wait_announced(adv: &discovery::Advertiser) {
    let mut rx = adv.announced();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n >= 1))
        .await
        .expect("announced in time")
        .expect("announcer alive");
}

/// A peer that speaks Noise as a responder with its own key (so the handshake fails on
/// the buyer's side); counts connections.
async fn impostor() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let cfg = SessionConfig::new(false, NoiseKeyPair::generate());
                let Ok(mut session) = Session::new(cfg, 0) else {
                    return;
                };
                let mut buf = [0u8; 4096];
                for _ in 0..16 {
                    let out = session.take_outgoing();
                    if !out.is_empty() && s.write_all(&out).await.is_err() {
                        return;
                    }
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 || session.receive(&buf[..n], 0).is_err() {
                        return;
                    }
                    while session.poll_event().is_some() {}
                }
            });
        }
    });
    (addr, hits)
}

/// A peer that answers every connection with garbage; counts connections.
async fn garbage() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let junk = vec![0xffu8; 64 * 1024];
                let _ = s.write_all(&junk).await;
            });
        }
    });
    (addr, hits)
}

fn blocks(n: u32) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("block {i}").into_bytes()).collect()
}

fn buy_options(sale: &Sale, addr: SocketAddr, who: &str) -> BuyOptions {
    BuyOptions {
        seller_key: sale.product.seller_key(),
        addr,
        out: sale.dir.join(who).join("feed"),
        live: false,
        accept_terms: false,
        data_dir: sale.dir.join(who),
        net: NetConfig::default(),
        answer_timeout: Duration::from_secs(5),
        send: Vec::new(),
        report_blocks: false,
        range: None,
        tail: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyer_finds_seller_on_private_dht_and_buys() {
    no_public_dht();
    let (_nodes, boot) = testnet().await;
    let sale = start_sale(&blocks(50)).await;
    let seller_key = sale.product.seller_key();
    let mut seller_opts = opts(&boot);
    seller_opts.reannounce = Duration::from_millis(200);
    let adv = discovery::advertise(seller_key, sale.addr, &seller_opts, sale.stop_rx.clone())
        .expect("advertise");
    assert!(
        adv.on_dht(),
        "a loopback seller with a bootstrap node uses the DHT"
    );
    assert!(!adv.on_mdns(), "never mDNS on loopback");
    wait_announced(&adv).await;

    let buyer = Identity::from_master_key([0x61; 32]);
    let (_never, shutdown) = watch::channel(false);
    let data_dir = sale.dir.join("buyer");
    let found = discovery::find_seller(
        &buyer.buyer_key_pair(),
        seller_key,
        &opts(&boot),
        Some(&data_dir),
        shutdown.clone(),
    )
    .await
    .expect("found");
    assert_eq!(found.addr, sale.addr);
    assert_eq!(found.source, Source::Dht);
    let out = buy(
        &buyer,
        buy_options(&sale, found.addr, "buyer"),
        None,
        shutdown,
    )
    .await
    .expect("bought");
    assert_eq!(out.length, 50);
    // The announcement is renewed.
    tokio::time::timeout(
        Duration::from_secs(10),
        adv.announced().wait_for(|n| *n >= 2),
    )
    .await
    .expect("re-announced in time")
    .expect("announcer alive");
    // Remembered for the next start.
    assert_eq!(
        discovery::peer_cache::load(&data_dir, &seller_key),
        vec![sale.addr]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_announcers_are_dropped() {
    no_public_dht();
    let (_nodes, boot) = testnet().await;
    let sale = start_sale(&blocks(10)).await;
    let seller_key = sale.product.seller_key();
    let (fake, fake_hits) = impostor().await;
    let (junk, junk_hits) = garbage().await;
    // The hostile peers announce the seller's topic with their own ports.
    let mut advs = Vec::new();
    for addr in [fake, junk, sale.addr] {
        let adv = discovery::advertise(seller_key, addr, &opts(&boot), sale.stop_rx.clone())
            .expect("advertise");
        advs.push(adv);
    }
    for adv in &advs {
        wait_announced(adv).await;
    }
    let buyer = Identity::from_master_key([0x62; 32]);
    let (_never, shutdown) = watch::channel(false);
    // One probe at a time, the hostile addresses first (as static peers too): both must
    // be dialled and dropped before the real seller is kept.
    let mut o = opts(&boot);
    o.concurrency = 1;
    o.peers = vec![fake, junk];
    let found = discovery::find_seller(
        &buyer.buyer_key_pair(),
        seller_key,
        &o,
        None,
        shutdown.clone(),
    )
    .await
    .expect("found despite hostile peers");
    assert_eq!(found.addr, sale.addr);
    assert!(found.tried >= 3, "tried {}", found.tried);
    assert!(fake_hits.load(Ordering::SeqCst) >= 1);
    assert!(junk_hits.load(Ordering::SeqCst) >= 1);
    let out = buy(
        &buyer,
        buy_options(&sale, found.addr, "buyer"),
        None,
        shutdown,
    )
    .await
    .expect("bought");
    assert_eq!(out.length, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_impostors_means_not_found() {
    no_public_dht();
    let (fake, _) = impostor().await;
    let (junk, _) = garbage().await;
    let mut o = DiscoveryOptions::static_peers(vec![fake, junk]);
    o.lookup_timeout = Duration::from_secs(5);
    let (_never, shutdown) = watch::channel(false);
    let start = Instant::now();
    let err = discovery::find_seller(&NoiseKeyPair::generate(), [9; 32], &o, None, shutdown)
        .await
        .expect_err("no seller there");
    assert!(
        matches!(err, DiscoveryError::NotFound { tried: 2, .. }),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "gave up as soon as every source was exhausted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_announcement_where_nothing_could_reach_it() {
    no_public_dht();
    let (_stop, stop_rx) = watch::channel(false);
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let adv = discovery::advertise([1; 32], addr, &DiscoveryOptions::default(), stop_rx.clone())
        .expect("nothing to start");
    assert!(!adv.on_dht() && !adv.on_mdns());
    // Without bootstrap nodes, the public DHT is refused (and so never contacted) here.
    let mut o = DiscoveryOptions::default();
    o.mdns = false;
    let err = discovery::find_seller(&NoiseKeyPair::generate(), [1; 32], &o, None, stop_rx)
        .await
        .expect_err("public DHT forbidden");
    assert!(matches!(err, DiscoveryError::PublicDhtForbidden), "{err}");
}

// ---- the command line -------------------------------------------------------------

fn next_event(p: &Proc, event: &str) -> serde_json::Value {
    p.event(event, Duration::from_secs(10))
}

#[test]
fn cli_dht_node_sell_buy_without_connect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    assert!(dazaar(&["feed", "create", s(&feed)]).status.success());
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "one\ntwo\nthree\n").expect("write");
    assert!(dazaar(&["feed", "append", s(&feed), s(&input)])
        .status
        .success());

    let node = Proc::spawn(dazaar_cmd(&[
        "dht-node",
        "--listen",
        "127.0.0.1:0",
        "--json",
    ]));
    let listening = next_event(&node, "listening");
    let boot = listening["addr"].as_str().expect("addr").to_owned();
    assert!(boot.starts_with("127.0.0.1:"), "{boot}");

    let seller_dir = dir.path().join("seller");
    let seller = Proc::spawn(dazaar_cmd(&[
        "--data-dir",
        s(&seller_dir),
        "sell",
        s(&feed),
        "--json",
        "--bootstrap",
        &boot,
        "--no-mdns",
    ]));
    let first = next_event(&seller, "listening");
    let seller_key = first["sellerKey"].as_str().expect("key").to_owned();
    let announced = next_event(&seller, "announced");
    assert_eq!(announced["via"], "dht");

    let buyer_dir = dir.path().join("buyer");
    let out_dir = dir.path().join("got");
    let out = dazaar(&[
        "--data-dir",
        s(&buyer_dir),
        "buy",
        &seller_key,
        "--out",
        s(&out_dir),
        "--json",
        "--bootstrap",
        &boot,
        "--no-mdns",
        "--find-timeout",
        "10",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let found = lines
        .iter()
        .find(|v| v["event"] == "found")
        .expect("found event");
    assert_eq!(found["source"], "dht");
    assert_eq!(found["addr"], first["addr"]);
    let done = lines.last().expect("done");
    assert_eq!(done["event"], "done");
    assert_eq!(done["length"], 3);

    // Next start: the remembered address, with the DHT and mDNS switched off.
    let out = dazaar(&[
        "--data-dir",
        s(&buyer_dir),
        "buy",
        &seller_key,
        "--out",
        s(&dir.path().join("got2")),
        "--json",
        "--no-dht",
        "--no-mdns",
        "--find-timeout",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let found = lines
        .iter()
        .find(|v| v["event"] == "found")
        .expect("found event");
    assert_eq!(found["source"], "cache");

    // Static peers from the config's [discovery] table (DHT and mDNS off there).
    let config = dir.path().join("dazaar.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[discovery]\ndht = false\nmdns = false\npeers = [{}]\n",
            s(&dir.path().join("configured")),
            first["addr"]
        ),
    )
    .expect("write config");
    let out = dazaar(&[
        "--config",
        s(&config),
        "buy",
        &seller_key,
        "--out",
        s(&dir.path().join("got4")),
        "--json",
        "--find-timeout",
        "5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let found = lines
        .iter()
        .find(|v| v["event"] == "found")
        .expect("found event");
    assert_eq!(found["source"], "static");

    // No way to find it: refused at once, not a hang.
    let out = dazaar(&[
        "--data-dir",
        s(&dir.path().join("stranger")),
        "buy",
        &seller_key,
        "--out",
        s(&dir.path().join("got3")),
        "--no-dht",
        "--no-mdns",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no way to find the seller"));
}

// ---- mDNS, between two network namespaces ------------------------------------------

/// Two network namespaces joined by a veth pair (deleted on drop).
struct Netns {
    names: [String; 2],
}

impl Netns {
    /// Creates them, or says why it cannot (not root, no `ip`, no netns support).
    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let names = [format!("dzs{id}"), format!("dzb{id}")];
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("cannot run ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(&["netns", "add", &names[0]])?;
        let ns = Self { names };
        let [s, b] = &ns.names;
        // Only addresses inside these two namespaces, made here for this test.
        let (veth_s, veth_b) = (format!("{s}v"), format!("{b}v"));
        run(&["netns", "add", b])?;
        run(&[
            "link", "add", &veth_s, "netns", s, "type", "veth", "peer", "name", &veth_b, "netns", b,
        ])?;
        for (n, dev, ip) in [
            (s, &veth_s, "10.237.41.1/24"),
            (b, &veth_b, "10.237.41.2/24"),
        ] {
            run(&["-n", n, "addr", "add", ip, "dev", dev])?;
            run(&["-n", n, "link", "set", dev, "multicast", "on", "up"])?;
            run(&["-n", n, "link", "set", "lo", "up"])?;
            run(&["-n", n, "route", "add", "224.0.0.0/4", "dev", dev])?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

#[test]
fn mdns_finds_seller_on_the_lan() {
    let Some(ns) = dazaar_tests::need("two network namespaces (root and `ip`)", Netns::create())
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let feed = dir.path().join("feed");
    assert!(dazaar(&["feed", "create", s(&feed)]).status.success());
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "lan\n").expect("write");
    assert!(dazaar(&["feed", "append", s(&feed), s(&input)])
        .status
        .success());
    let bin = dazaar_bin();
    let bin = s(&bin).to_owned();
    let seller_dir = dir.path().join("seller");
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.names[0],
        &bin,
        "--data-dir",
        s(&seller_dir),
        "sell",
    ])
    .args([s(&feed), "--listen", "10.237.41.1:0", "--json", "--no-dht"]);
    cmd.env(discovery::NO_PUBLIC_DHT_ENV, "1");
    let seller = Proc::spawn(cmd);
    let first = next_event(&seller, "listening");
    let seller_key = first["sellerKey"].as_str().expect("key").to_owned();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.names[1], &bin, "--data-dir"])
        .arg(dir.path().join("buyer"))
        .args(["buy", &seller_key, "--out"])
        .arg(dir.path().join("got"))
        .args(["--json", "--no-dht", "--find-timeout", "10"])
        .env(discovery::NO_PUBLIC_DHT_ENV, "1")
        .output()
        .expect("run buyer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    let found = lines
        .iter()
        .find(|v| v["event"] == "found")
        .expect("found event");
    assert_eq!(found["source"], "mdns");
    assert_eq!(found["addr"], first["addr"]);
    assert_eq!(lines.last().expect("done")["length"], 1);
}
