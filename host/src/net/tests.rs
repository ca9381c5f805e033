//! Bad peers against a real server over loopback TCP: garbage, an oversized frame, a
//! wrong capability, a silent peer, and a server sending data with bad signatures. Each
//! gets a closed connection and a typed error; nothing unverified is stored; the server
//! keeps serving well-behaved clients.

use super::*;
use crate::crypto::{Ed25519KeyPair, NoiseKeyPair};
use crate::noise::Handshake;
use crate::protocol::replicate::{ReplicationEvent, ReplicatorConfig};
use crate::storage::{MemStore, RekeyedSigner, Signer};
use crate::wire::{frame_to_vec, Message, Open};

const FAST_IDLE_MS: u64 = 400;

fn source(n: u64) -> Arc<SharedFeed<MemStore>> {
    let mut feed = Feed::create(MemStore::new(), Ed25519KeyPair::from_seed(&[3; 32])).unwrap();
    let blocks: Vec<Vec<u8>> = (0..n).map(|i| format!("block {i}").into_bytes()).collect();
    feed.append_batch(&blocks).unwrap();
    SharedFeed::new(feed)
}

fn fast() -> NetConfig {
    NetConfig {
        idle_timeout_ms: FAST_IDLE_MS,
        keep_alive_ms: FAST_IDLE_MS / 2,
        ..NetConfig::default()
    }
}

async fn start_server(
    spec: ChannelSpec<MemStore>,
) -> (
    SocketAddr,
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), NetError>>,
) {
    start_server_with(spec, fast()).await
}

async fn start_server_with(
    spec: ChannelSpec<MemStore>,
    net: NetConfig,
) -> (
    SocketAddr,
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), NetError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = watch::channel(false);
    let options = ServeOptions {
        key_pair: NoiseKeyPair::generate(),
        initiator: false,
        serve: vec![spec],
        net,
    };
    (addr, tx, tokio::spawn(serve(listener, options, rx)))
}

/// Clones `key` from `addr`; returns the connection result and the local feed.
async fn clone_from(
    addr: SocketAddr,
    key: [u8; 32],
) -> (Result<(), NetError>, Arc<SharedFeed<MemStore>>) {
    let feed = SharedFeed::new(Feed::create_reader(MemStore::new(), key).unwrap());
    let stream = dial(addr).await.unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (ctx, crx) = mpsc::channel(4);
    let net = fast();
    let session = net.session_config(true, NoiseKeyPair::generate());
    let options = ConnectionOptions {
        open: vec![ChannelSpec {
            feed: feed.clone(),
            config: ReplicatorConfig::downloader(),
        }],
        events: Some(tx),
        commands: Some(crx),
        ..ConnectionOptions::default()
    };
    let task = tokio::spawn(async move { run_connection(stream, session, &net, options).await });
    while let Some(event) = rx.recv().await {
        if let NetEvent::Replication {
            event: ReplicationEvent::Synced { .. },
            ..
        } = event
        {
            let _ = ctx.send(Command::Shutdown).await;
        }
    }
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("connection ends in time")
        .expect("task");
    (result, feed)
}

async fn assert_good_clone(addr: SocketAddr, key: [u8; 32], length: u64) {
    let (result, feed) = clone_from(addr, key).await;
    result.expect("a good client is served");
    let feed = feed.lock();
    assert_eq!(feed.length(), length);
    assert!(feed.has_all());
}

/// Reads until the server closes the connection; fails if it stays open for 3 s.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server did not close the connection");
}

/// A raw initiator: completes the Noise handshake over TCP and then sends any plaintext.
async fn raw_client(addr: SocketAddr) -> (TcpStream, crate::noise::Transport) {
    let mut stream = dial(addr).await.unwrap();
    let mut hs = Handshake::new(true, &NoiseKeyPair::generate()).unwrap();
    stream.write_all(&hs.take_outgoing()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    while !hs.is_finished() {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed during handshake");
        hs.receive(&buf[..n], &mut |_| true).unwrap();
        let out = hs.take_outgoing();
        if !out.is_empty() {
            stream.write_all(&out).await.unwrap();
        }
    }
    (stream, hs.finish().unwrap())
}

#[tokio::test]
async fn bad_clients_are_disconnected_and_others_still_served() {
    let feed = source(50);
    let key = feed.lock().key();
    let (addr, stop, server) = start_server(ChannelSpec {
        feed: feed.clone(),
        config: ReplicatorConfig::uploader(),
    })
    .await;
    assert_good_clone(addr, key, 50).await;

    // Garbage instead of a handshake.
    let mut garbage = dial(addr).await.unwrap();
    let junk: Vec<u8> = (0..300u32).map(|i| (i * 7 + 13) as u8).collect();
    garbage.write_all(&junk).await.unwrap();
    assert_closed(&mut garbage).await;

    // An oversized frame after a good handshake (length varint of 9 MiB).
    let (mut big, mut transport) = raw_client(addr).await;
    let mut frame = Vec::new();
    crate::wire::varint::encode(9 * 1024 * 1024, &mut frame);
    frame.extend_from_slice(&[0x19, 0, 0, 0]);
    transport.cipher.encrypt(&mut frame);
    big.write_all(&frame).await.unwrap();
    assert_closed(&mut big).await;

    // A wrong capability for the served feed.
    let (mut liar, mut transport) = raw_client(addr).await;
    let open = Message::Open(Open {
        discovery_key: crate::crypto::discovery_key(&key).to_vec(),
        capability: Some(vec![0u8; 32]),
    });
    let mut frame = frame_to_vec(1, &open).unwrap();
    transport.cipher.encrypt(&mut frame);
    liar.write_all(&frame).await.unwrap();
    assert_closed(&mut liar).await;

    // A peer that goes silent after connecting: the idle timeout closes it.
    let mut silent = dial(addr).await.unwrap();
    let started = Instant::now();
    assert_closed(&mut silent).await;
    assert!(started.elapsed() >= Duration::from_millis(FAST_IDLE_MS / 2));

    assert_good_clone(addr, key, 50).await;
    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
}

/// Signs with one key while claiming another: every signature is wrong.
struct Impostor {
    claimed: [u8; 32],
    real: RekeyedSigner,
}

impl Signer for Impostor {
    fn public_key(&self) -> [u8; 32] {
        self.claimed
    }
    fn sign(&self, tree_hash: &[u8; 32], length: u64) -> [u8; 64] {
        self.real.sign(tree_hash, length)
    }
}

#[tokio::test]
async fn bad_signatures_from_a_server_fail_the_clone_and_store_nothing() {
    let feed = source(20);
    let key = feed.lock().key();
    let impostor = Impostor {
        claimed: key,
        real: RekeyedSigner::new(Ed25519KeyPair::from_seed(&[66; 32])),
    };
    let (addr, stop, _server) = start_server(ChannelSpec {
        feed,
        config: ReplicatorConfig::rekeyed(Arc::new(impostor)),
    })
    .await;
    let (result, local) = clone_from(addr, key).await;
    match result {
        Err(NetError::Replication(e)) => assert!(e.is_verification(), "{e}"),
        other => panic!("expected a verification error, got {other:?}"),
    }
    let local = local.lock();
    assert_eq!(local.length(), 0);
    assert_eq!(local.downloaded(0, 20), 0);
    stop.send(true).unwrap();
}

/// A client following `key` at `addr` live: its feed, the feed's length, its task.
async fn follow(
    addr: SocketAddr,
    key: [u8; 32],
) -> (
    Arc<SharedFeed<MemStore>>,
    watch::Receiver<u64>,
    tokio::task::JoinHandle<Result<(), NetError>>,
) {
    let local = SharedFeed::new(Feed::create_reader(MemStore::new(), key).unwrap());
    let length = local.watch_length();
    let stream = dial(addr).await.unwrap();
    let net = NetConfig::default();
    let session = net.session_config(true, NoiseKeyPair::generate());
    let options = ConnectionOptions {
        open: vec![ChannelSpec {
            feed: local.clone(),
            config: ReplicatorConfig::downloader(),
        }],
        ..ConnectionOptions::default()
    };
    let task = tokio::spawn(async move { run_connection(stream, session, &net, options).await });
    (local, length, task)
}

#[tokio::test]
async fn live_growth_reaches_a_following_client() {
    let feed = source(10);
    let key = feed.lock().key();
    let (addr, stop, _server) = start_server(ChannelSpec {
        feed: feed.clone(),
        config: ReplicatorConfig::uploader(),
    })
    .await;
    let (local, mut length, task) = follow(addr, key).await;
    tokio::time::timeout(Duration::from_secs(5), length.wait_for(|l| *l == 10))
        .await
        .unwrap()
        .unwrap();
    feed.append_batch(&[b"eleven".as_slice(), b"twelve".as_slice()])
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), length.wait_for(|l| *l == 12))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(local.lock().get(11).unwrap().unwrap(), b"twelve");
    task.abort();
    stop.send(true).unwrap();
}

#[tokio::test]
async fn rekeyed_view_is_served_under_the_signer_key() {
    // The seller's feed served to one buyer under a per-buyer key: same blocks, the
    // buyer verifies every signature against the signer's public key.
    let feed = source(30);
    let signer = Arc::new(RekeyedSigner::new(Ed25519KeyPair::from_seed(&[12; 32])));
    let buyer_key = signer.public_key();
    assert_ne!(buyer_key, feed.lock().key());
    let (addr, stop, _server) = start_server(ChannelSpec {
        feed: feed.clone(),
        config: ReplicatorConfig::rekeyed(signer),
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(5),
        assert_good_clone(addr, buyer_key, 30),
    )
    .await
    .expect("rekeyed clone in time");
    // The seller's own key is not served on this server.
    let seller_key = feed.lock().key();
    let (result, local) = tokio::time::timeout(
        Duration::from_secs(5),
        clone_from_expecting_close(addr, seller_key),
    )
    .await
    .expect("refusal in time");
    assert!(result, "the server closes a channel it does not serve");
    assert_eq!(local.lock().length(), 0);
    stop.send(true).unwrap();
}

/// Opens `key` and reports whether the server closed the channel.
async fn clone_from_expecting_close(
    addr: SocketAddr,
    key: [u8; 32],
) -> (bool, Arc<SharedFeed<MemStore>>) {
    let feed = SharedFeed::new(Feed::create_reader(MemStore::new(), key).unwrap());
    let stream = dial(addr).await.unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let (ctx, crx) = mpsc::channel(4);
    let net = fast();
    let session = net.session_config(true, NoiseKeyPair::generate());
    let options = ConnectionOptions {
        open: vec![ChannelSpec {
            feed: feed.clone(),
            config: ReplicatorConfig::downloader(),
        }],
        events: Some(tx),
        commands: Some(crx),
        ..ConnectionOptions::default()
    };
    let task = tokio::spawn(async move { run_connection(stream, session, &net, options).await });
    let mut closed = false;
    while let Some(event) = rx.recv().await {
        if let NetEvent::ChannelClosed { .. } = event {
            closed = true;
            let _ = ctx.send(Command::Shutdown).await;
        }
    }
    let _ = task.await;
    (closed, feed)
}

#[tokio::test]
async fn blocks_downloaded_from_one_peer_are_announced_to_another() {
    // A relay holds a reader of the feed and serves it; a follower that sent a Want is
    // told about blocks as the relay downloads them from the origin.
    let origin = source(40);
    let key = origin.lock().key();
    let (origin_addr, stop_origin, _o) = start_server(ChannelSpec {
        feed: origin.clone(),
        config: ReplicatorConfig::uploader(),
    })
    .await;
    let relay = SharedFeed::new(Feed::create_reader(MemStore::new(), key).unwrap());
    let (relay_addr, stop_relay, _r) = start_server(ChannelSpec {
        feed: relay.clone(),
        config: ReplicatorConfig::uploader(),
    })
    .await;
    // The follower connects to the (still empty) relay first.
    let follower = SharedFeed::new(Feed::create_reader(MemStore::new(), key).unwrap());
    let mut follower_length = follower.watch_length();
    let stream = dial(relay_addr).await.unwrap();
    let net = NetConfig::default();
    let session = net.session_config(true, NoiseKeyPair::generate());
    let (events, mut follower_events) = mpsc::channel(64);
    let options = ConnectionOptions {
        open: vec![ChannelSpec {
            feed: follower.clone(),
            config: ReplicatorConfig::downloader(),
        }],
        events: Some(events),
        ..ConnectionOptions::default()
    };
    let follower_task =
        tokio::spawn(async move { run_connection(stream, session, &net, options).await });
    // Synced at length 0: the relay answered the follower's Want (its empty bitfield), so
    // it knows the follower wants blocks before it has any.
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(event) = follower_events.recv().await {
            if let NetEvent::Replication {
                event: ReplicationEvent::Synced { length: 0, .. },
                ..
            } = event
            {
                return;
            }
        }
        panic!("the follower's connection ended");
    })
    .await
    .expect("the relay answers the follower's Want");
    // The connection waits for its events to be taken: keep taking them.
    tokio::spawn(async move { while follower_events.recv().await.is_some() {} });
    // Now the relay downloads from the origin.
    let stream = dial(origin_addr).await.unwrap();
    let net = NetConfig::default();
    let session = net.session_config(true, NoiseKeyPair::generate());
    let options = ConnectionOptions {
        open: vec![ChannelSpec {
            feed: relay.clone(),
            config: ReplicatorConfig::downloader(),
        }],
        ..ConnectionOptions::default()
    };
    let relay_task =
        tokio::spawn(async move { run_connection(stream, session, &net, options).await });
    tokio::time::timeout(
        Duration::from_secs(5),
        follower_length.wait_for(|l| *l == 40),
    )
    .await
    .expect("the follower learns of the relay's downloads")
    .unwrap();
    assert!(follower.lock().has_all());
    follower_task.abort();
    relay_task.abort();
    stop_origin.send(true).unwrap();
    stop_relay.send(true).unwrap();
}

#[tokio::test]
async fn a_busy_owner_holds_few_extension_payloads() {
    let (tx, mut rx) = mpsc::channel(64);
    let ext = |i: u8| NetEvent::Extension {
        name: "dazaar/user-message".into(),
        payload: vec![i; 1000],
    };
    for i in 0..MAX_QUEUED_EXTENSIONS as u8 {
        assert!(send_extension_event(&tx, ext(i)).await);
    }
    // The owner reads nothing (a payment check is running): the next one waits.
    let next = send_extension_event(&tx, ext(99));
    tokio::pin!(next);
    tokio::select! {
        biased;
        _ = &mut next => panic!("a fifth extension payload was queued"),
        _ = async {} => {}
    }
    assert_eq!(rx.len(), MAX_QUEUED_EXTENSIONS);
    rx.recv().await.unwrap();
    assert!(next.await);
    assert_eq!(rx.len(), MAX_QUEUED_EXTENSIONS);
}

#[test]
fn the_inbound_budget_is_shared_and_given_back() {
    let budget = InboundBudget::new(100_000);
    let mut a = BudgetShare::new(budget.clone());
    let mut b = BudgetShare::new(budget.clone());
    // Within the free allowance nothing is taken.
    assert!(a.cover(FREE_INBOUND, 0));
    assert_eq!(budget.used(), 0);
    assert!(a.cover(FREE_INBOUND + 60_000, 30_000));
    assert_eq!(budget.used(), 90_000);
    // No room for b: it must not read, and the budget is contended.
    assert!(!b.cover(FREE_INBOUND + 20_000, 0));
    assert!(budget.contended());
    assert_eq!(budget.used(), 90_000);
    // a pins a partial frame for long while b waits: a is the hog.
    a.pinned(FREE_INBOUND + 60_000);
    assert!(!a.hogging());
    a.since = Instant::now().checked_sub(Duration::from_millis(BUDGET_HOG_MS + 1));
    assert!(a.hogging());
    // Bytes read but not pinned (a read buffer) do not make a hog.
    a.pinned(FREE_INBOUND);
    assert!(!a.hogging());
    // a's frame completed: it gives back what it no longer holds, b gets its share.
    assert!(a.cover(FREE_INBOUND + 10_000, 0));
    assert!(b.cover(FREE_INBOUND + 20_000, 0));
    assert!(!budget.contended());
    assert_eq!(budget.used(), 30_000);
    drop(a);
    assert_eq!(budget.used(), 20_000);
    drop(b);
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_server_takes_only_control_frames_and_a_downloader_gets_large_blocks() {
    // Blocks far above the control-frame limit reach a downloader (its limit is raised
    // when it opens a downloading channel).
    let mut feed = Feed::create(MemStore::new(), Ed25519KeyPair::from_seed(&[4; 32])).unwrap();
    let big = vec![7u8; 4 * crate::protocol::CONTROL_FRAME_LIMIT];
    feed.append_batch(&[big.as_slice(), b"small", big.as_slice()])
        .unwrap();
    let feed = SharedFeed::new(feed);
    let key = feed.lock().key();
    let (addr, stop, server) = start_server(ChannelSpec {
        feed: feed.clone(),
        config: ReplicatorConfig::uploader(),
    })
    .await;
    let (result, copy) = clone_from(addr, key).await;
    result.expect("a downloader receives large blocks");
    assert_eq!(copy.lock().get(2).unwrap(), Some(big));

    stop.send(true).unwrap();
    server.await.unwrap().unwrap();

    // The server (it only uploads) refuses a frame above the control limit (a long idle
    // timeout: only the limit can close the connection within assert_closed's 3 s).
    let (addr, stop, server) = start_server_with(
        ChannelSpec {
            feed,
            config: ReplicatorConfig::uploader(),
        },
        NetConfig {
            idle_timeout_ms: 60_000,
            keep_alive_ms: 30_000,
            ..NetConfig::default()
        },
    )
    .await;
    let (mut peer, mut transport) = raw_client(addr).await;
    let mut frame = Vec::new();
    crate::wire::varint::encode(crate::protocol::CONTROL_FRAME_LIMIT as u64 + 2, &mut frame);
    frame.extend_from_slice(&[0x1b, 0, 0, 0]);
    transport.cipher.encrypt(&mut frame);
    peer.write_all(&frame).await.unwrap();
    assert_closed(&mut peer).await;

    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
}

/// Sends the start of a frame of `body` bytes (of which `sent` arrive), encrypted.
async fn partial_frame(
    stream: &mut TcpStream,
    transport: &mut crate::noise::Transport,
    body: usize,
    sent: usize,
) {
    let mut frame = Vec::new();
    crate::wire::varint::encode(body as u64 + 1, &mut frame);
    frame.push(0x1b); // channel 1, type 11 (ignored by the receiver)
    frame.resize(frame.len() + sent, 0);
    transport.cipher.encrypt(&mut frame);
    stream.write_all(&frame).await.unwrap();
}

#[tokio::test]
async fn a_peer_pinning_the_inbound_budget_is_dropped_when_others_wait() {
    let budget = InboundBudget::new(100 * 1024);
    let (addr, stop, server) = start_server_with(
        ChannelSpec {
            feed: source(5),
            config: ReplicatorConfig::uploader(),
        },
        NetConfig {
            idle_timeout_ms: 60_000,
            keep_alive_ms: 30_000,
            inbound_budget: budget.clone(),
            ..NetConfig::default()
        },
    )
    .await;
    // A sends most of a 60 KiB frame and stops: the server holds it, from the budget.
    let (mut hog, mut hog_transport) = raw_client(addr).await;
    partial_frame(&mut hog, &mut hog_transport, 60 * 1024, 40 * 1024).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while budget.used() == 0 {
        assert!(Instant::now() < deadline, "the server never took budget");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B does the same and finds no budget left: it waits, and A, pinning budget while
    // B waits, is dropped.
    let (mut waiter, mut waiter_transport) = raw_client(addr).await;
    partial_frame(&mut waiter, &mut waiter_transport, 60 * 1024, 40 * 1024).await;
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match hog.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the peer pinning the budget was not dropped"
    );
    stop.send(true).unwrap();
    server.await.unwrap().unwrap();
    drop(waiter);
}

/// A connection that asked to be quiet is not woken by the feed's growth until its quiet
/// time ends (its timer looks then); one that did not is woken at once.
#[tokio::test]
async fn a_quiet_connection_is_not_woken_by_growth() {
    let feed = source(1);
    let quiet = Arc::new(ConnWaker::default());
    let awake = Arc::new(ConnWaker::default());
    feed.subscribe(&quiet);
    feed.subscribe(&awake);
    feed.quiet(&quiet, 60_000);
    feed.grown(2);
    let woken = |w: Arc<ConnWaker>| async move {
        tokio::time::timeout(Duration::from_millis(200), w.notified())
            .await
            .is_ok()
    };
    assert!(
        woken(awake.clone()).await,
        "an ordinary connection is woken"
    );
    assert!(!woken(quiet.clone()).await, "a quiet one is not");
    feed.quiet(&quiet, 0);
    feed.grown(3);
    assert!(woken(quiet).await, "woken again once its quiet ends");
}

/// A rekeyed seller's connection following a feed that grows every 10 ms is woken about
/// once per announce interval, not once per append, and its buyer still gets every block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_connection_is_woken_once_per_announce_interval() {
    let feed = source(1);
    let signer = Arc::new(RekeyedSigner::new(Ed25519KeyPair::from_seed(&[13; 32])));
    let key = signer.public_key();
    let (addr, stop, _server) = start_server(ChannelSpec {
        feed: feed.clone(),
        config: ReplicatorConfig {
            announce_interval_ms: 100,
            ..ReplicatorConfig::rekeyed(signer)
        },
    })
    .await;
    let (local, mut length, task) = follow(addr, key).await;
    tokio::time::timeout(Duration::from_secs(5), length.wait_for(|l| *l == 1))
        .await
        .unwrap()
        .unwrap();
    let waker = feed
        .subscribers
        .lock()
        .unwrap()
        .iter()
        .find_map(|w| w.upgrade())
        .expect("the seller's connection subscribed");
    let before = waker.notifications();
    for i in 1..=100u64 {
        feed.append_batch(&[format!("b{i}").into_bytes()]).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let woken = waker.notifications() - before;
    tokio::time::timeout(Duration::from_secs(5), length.wait_for(|l| *l == 101))
        .await
        .expect("every block reached the buyer")
        .unwrap();
    assert_eq!(local.lock().get(100).unwrap().unwrap(), b"b100");
    // About 10 intervals in the ~1 s of appends (more on a loaded machine, where the
    // appends spread out); without the quiet time it is one per append.
    assert!(
        woken <= 60,
        "woken {woken} times by 100 appends with a 100 ms announce interval"
    );
    task.abort();
    stop.send(true).unwrap();
}
