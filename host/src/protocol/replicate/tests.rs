//! Two connections with replicators joined in memory: full, sparse, live and rekeyed
//! replication, resume, uploading toggles and hostile Data. The connections are
//! [`Connection`]s (the same code `net/` drives); some tests reach into one channel's
//! replicator to inject messages or read its state.

use std::sync::MutexGuard;

use super::*;
use crate::crypto::Ed25519KeyPair;
use crate::protocol::connection::testing::{self, block, reader, writer, MemShare, Peer};
use crate::protocol::connection::{ChannelSpec, Command, Connection, ConnectionError, FeedShare};
use crate::storage::{MemStore, RekeyedSigner};

/// One end: a connection replicating one channel.
struct Side {
    peer: Peer,
    shared: Arc<MemShare>,
    dk: DiscoveryKey,
}

impl Side {
    /// A responder serving `feed` with `config` when asked.
    fn server(feed: Feed<MemStore>, config: ReplicatorConfig) -> Self {
        let shared = MemShare::new(feed);
        let spec = ChannelSpec {
            feed: shared.clone(),
            config,
        };
        let dk = crypto::discovery_key(&spec.key());
        let peer = Peer::new(false, 2, |c| c.serve.push(spec));
        Side { peer, shared, dk }
    }

    /// An initiator opening `feed` with `config`.
    fn client(feed: Feed<MemStore>, config: ReplicatorConfig) -> Self {
        let shared = MemShare::new(feed);
        let spec = ChannelSpec {
            feed: shared.clone(),
            config,
        };
        let dk = crypto::discovery_key(&spec.key());
        let peer = Peer::new(true, 1, |c| c.open.push(spec));
        Side { peer, shared, dk }
    }

    fn feed(&self) -> MutexGuard<'_, Feed<MemStore>> {
        self.shared.lock()
    }

    /// Runs `f` on this side's replicator, session and feed.
    fn rep<R>(
        &mut self,
        f: impl FnOnce(&mut Replicator, &mut Session, &mut Feed<MemStore>) -> R,
    ) -> R {
        let conn: &mut Connection<MemShare> = &mut self.peer.conn;
        conn.with_channel(&self.dk, f).expect("the channel is open")
    }

    /// The replication error that ended the connection.
    fn error(&self) -> Option<&ReplicationError> {
        match &self.peer.error {
            Some(ConnectionError::Replication(e)) => Some(e),
            Some(e) => panic!("not a replication error: {e}"),
            None => None,
        }
    }

    fn events(&self) -> impl Iterator<Item = &ReplicationEvent> {
        self.peer.replication()
    }

    fn deliver(&mut self, bytes: &[u8], now: u64) {
        self.peer.deliver(bytes, now);
    }
}

/// Moves bytes both ways until nothing moves.
fn run(a: &mut Side, b: &mut Side, now: u64) {
    testing::run(&mut a.peer, &mut b.peer, now);
}

fn pair(
    server_feed: Feed<MemStore>,
    server_config: ReplicatorConfig,
    client_config: ReplicatorConfig,
) -> (Side, Side) {
    let client_key = match &server_config.signer {
        Some(s) => s.public_key(),
        None => server_feed.key(),
    };
    let server = Side::server(server_feed, server_config);
    let client = Side::client(reader(client_key), client_config);
    (server, client)
}

fn assert_same(a: &Side, b: &Side, blocks: impl Iterator<Item = u64>) {
    let (a, b) = (a.feed(), b.feed());
    for i in blocks {
        assert_eq!(a.get(i).unwrap(), b.get(i).unwrap(), "block {i}");
    }
}

#[test]
fn full_clone_then_live_appends() {
    let (mut server, mut client) = pair(
        writer(300),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::downloader(),
    );
    run(&mut server, &mut client, 0);
    assert!(server.error().is_none() && client.error().is_none());
    assert_eq!(client.feed().length(), 300);
    assert!(client.feed().has_all());
    assert!(client.rep(|rep, _, _| rep.is_synced()));
    assert!(client
        .events()
        .any(|e| matches!(e, ReplicationEvent::Synced { length: 300, .. })));
    assert_eq!(client.peer.downloaded(), 300);
    assert_same(&server, &client, 0..300);

    // Live: one block, then a batch; the connection announces what the writer appended.
    for batch in [vec![block(300)], (301..340).map(block).collect::<Vec<_>>()] {
        server.shared.append(&batch);
        run(&mut server, &mut client, 1);
        assert_eq!(client.feed().length(), server.feed().length());
        assert!(client.feed().has_all());
    }
    assert_same(&server, &client, 0..340);
    assert!(client
        .events()
        .any(|e| matches!(e, ReplicationEvent::Length { length: 340, .. })));
}

#[test]
fn status_on_open_and_first_want_as_js() {
    // The writer sends Status{true,false}; the reader's Want is answered with
    // Have{start: len-1} and then the bitfield Have.
    let (mut server, mut client) = pair(
        writer(5),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::downloader(),
    );
    run(&mut server, &mut client, 0);
    assert_eq!(client.rep(|rep, _, _| rep.remote_status()), (true, false));
    assert_eq!(client.rep(|rep, _, _| rep.remote_length()), 5);
    assert_eq!(client.feed().length(), 5);
}

#[test]
fn sparse_reader_gets_only_selected_blocks() {
    let (mut server, mut client) = pair(
        writer(100),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::sparse(),
    );
    run(&mut server, &mut client, 0);
    assert_eq!(client.feed().downloaded(0, 100), 0);
    let dk = client.dk;
    client.peer.command(Command::Download(dk, 3, Some(4)), 0);
    client.peer.command(Command::Download(dk, 70, Some(75)), 0);
    run(&mut server, &mut client, 0);
    assert!(client.error().is_none(), "{:?}", client.error());
    assert_eq!(client.feed().downloaded(0, 100), 6);
    assert!(client.feed().has(3) && client.feed().has(74) && !client.feed().has(0));
    assert_same(&server, &client, [3, 70, 71, 72, 73, 74].into_iter());
    assert_eq!(client.feed().length(), 100);
}

#[test]
fn resume_downloads_only_missing_blocks() {
    let source = writer(50);
    let mut partial = reader(source.key());
    let mut remote = NodeSet::new();
    for i in 0..20 {
        let proof = source
            .proof(i, partial.digest(i), &mut remote, false)
            .unwrap();
        let sig = source.signature_at(proof.verified_by / 2).unwrap();
        partial
            .put(
                i,
                source.get(i).unwrap().as_deref(),
                &proof.nodes,
                sig.as_ref(),
            )
            .unwrap();
    }
    let mut server = Side::server(source, ReplicatorConfig::uploader());
    let mut client = Side::client(partial, ReplicatorConfig::downloader());
    run(&mut server, &mut client, 0);
    assert!(client.feed().has_all());
    assert_eq!(client.peer.downloaded(), 30);
}

#[test]
fn rekeyed_signer_channel_verifies_under_the_buyer_key() {
    let signer = Arc::new(RekeyedSigner::new(Ed25519KeyPair::from_seed(&[77; 32])));
    let buyer_key = signer.public_key();
    let (mut server, mut client) = pair(
        writer(40),
        ReplicatorConfig::rekeyed(signer),
        ReplicatorConfig::downloader(),
    );
    assert_eq!(client.feed().key(), buyer_key);
    run(&mut server, &mut client, 0);
    assert_eq!(server.rep(|rep, _, _| rep.key()), buyer_key);
    assert!(
        server.error().is_none() && client.error().is_none(),
        "{:?} {:?}",
        server.error(),
        client.error()
    );
    assert_eq!(client.feed().length(), 40);
    assert!(client.feed().has_all());
    assert_same(&server, &client, 0..40);

    // Live appends to the seller feed reach the rekeyed buyer with fresh signatures
    // (after the rekeyed channel's announce interval).
    server.shared.append(&[block(40)]);
    run(&mut server, &mut client, REKEYED_ANNOUNCE_INTERVAL_MS);
    assert_eq!(client.feed().length(), 41);

    // A reader of the seller's own key would refuse these signatures.
    let seller_key = server.feed().key();
    assert_ne!(seller_key, buyer_key);
}

#[test]
fn uploading_false_stops_serving_and_true_resumes() {
    let (mut server, mut client) = pair(
        writer(10),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::downloader(),
    );
    run(&mut server, &mut client, 0);
    let dk = server.dk;
    server.peer.command(Command::SetUploading(dk, false), 0);
    run(&mut server, &mut client, 0);
    assert_eq!(client.rep(|rep, _, _| rep.remote_status()), (false, false));
    server.shared.append(&[block(10)]);
    run(&mut server, &mut client, 0);
    assert_eq!(client.feed().length(), 10);
    server.peer.command(Command::SetUploading(dk, true), 0);
    run(&mut server, &mut client, 0);
    assert_eq!(client.rep(|rep, _, _| rep.remote_status()), (true, false));
    assert_eq!(client.feed().length(), 11);
    assert!(client.feed().has_all());
}

#[test]
fn wrong_key_data_destroys_the_stream_and_stores_nothing() {
    // The server serves the real tree under the real key's channel with an impostor's
    // signatures: a signer whose public key claims the feed key but signs with another.
    struct Liar(Arc<RekeyedSigner>, [u8; 32]);
    impl Signer for Liar {
        fn public_key(&self) -> [u8; 32] {
            self.1
        }
        fn sign(&self, tree_hash: &[u8; 32], length: u64) -> [u8; 64] {
            self.0.sign(tree_hash, length)
        }
    }
    let server_feed = writer(10);
    let key = server_feed.key();
    let evil_signer = Arc::new(RekeyedSigner::new(Ed25519KeyPair::from_seed(&[5; 32])));
    let liar = ReplicatorConfig {
        announce_interval_ms: 0,
        ..ReplicatorConfig::rekeyed(Arc::new(Liar(evil_signer, key)))
    };
    let mut server = Side::server(server_feed, liar);
    let mut client = Side::client(reader(key), ReplicatorConfig::downloader());
    run(&mut server, &mut client, 0);
    let err = client.error().expect("client must fail");
    assert!(err.is_verification(), "{err}");
    assert_eq!(client.feed().downloaded(0, 10), 0);
    assert_eq!(client.feed().length(), 0);
}

#[test]
fn request_timeout_fires_when_remote_never_answers() {
    // The server does not upload: it says Status{uploading: false} and answers nothing.
    let (mut server, mut client) = pair(
        writer(10),
        ReplicatorConfig {
            uploading: false,
            ..ReplicatorConfig::uploader()
        },
        ReplicatorConfig::downloader(),
    );
    run(&mut server, &mut client, 0);
    assert_eq!(client.rep(|rep, _, _| rep.inflight()), 0);
    // Pretend the server had said it uploads and announced blocks it never sends.
    client.rep(|rep, session, feed| {
        rep.remote_uploading = true;
        let have = Message::Have(Have::range(0, 3));
        rep.on_message(session, feed, have, 5).unwrap();
        assert_eq!(rep.inflight(), 3);
        assert_eq!(rep.next_deadline(), Some(5 + DEFAULT_REQUEST_TIMEOUT_MS));
        rep.tick(100).unwrap();
    });
    // The connection fires the deadline through handle_timeout (before the session's
    // idle timeout, once the server keeps the link alive).
    let deadline = 5 + DEFAULT_REQUEST_TIMEOUT_MS;
    let keep_alive = crate::protocol::DEFAULT_KEEP_ALIVE_MS;
    server.peer.timeout(keep_alive);
    run(&mut server, &mut client, keep_alive);
    client.peer.timeout(deadline - 1);
    assert!(client.error().is_none(), "{:?}", client.error());
    client.peer.timeout(deadline);
    assert!(
        matches!(
            client.error(),
            Some(ReplicationError::RequestTimeout { index: 0, .. })
        ),
        "{:?}",
        client.error()
    );
}

#[test]
fn unrequested_data_is_refused_with_unhave() {
    // The server also downloads, so it keeps a map of the client's blocks.
    let server_config = ReplicatorConfig {
        downloading: true,
        ..ReplicatorConfig::uploader()
    };
    let (mut server, mut client) = pair(writer(3), server_config, ReplicatorConfig::sparse());
    run(&mut server, &mut client, 0);
    // The server is told the client holds block 1 (as the client's Have would say), so
    // the client's Unhave for it shows at the server once it arrives.
    server.rep(|rep, session, feed| {
        rep.on_message(session, feed, Message::Have(Have::block(1)), 0)
            .unwrap();
        assert!(rep.remote_bits.get(1));
    });
    let data = Data {
        index: 1,
        value: Some(block(1)),
        nodes: vec![],
        signature: None,
    };
    client.rep(|rep, session, feed| {
        rep.on_message(session, feed, Message::Data(data), 0)
            .unwrap();
        assert!(!feed.has(1));
    });
    run(&mut server, &mut client, 0);
    assert!(
        !server.rep(|rep, _, _| rep.remote_bits.get(1)),
        "the client's Unhave of block 1 reached the server"
    );
    assert!(client.error().is_none() && server.error().is_none());
    assert!(!client.feed().has(1));
}

#[test]
fn too_many_remote_requests_is_fatal() {
    let config = ReplicatorConfig {
        max_remote_requests: 4,
        upload_high_water: 0,
        ..ReplicatorConfig::uploader()
    };
    let (mut server, mut client) = pair(writer(10), config, ReplicatorConfig::downloader());
    run(&mut server, &mut client, 0);
    assert!(matches!(
        server.error(),
        Some(ReplicationError::TooManyRequests { max: 4 })
    ));
}

#[test]
fn empty_feed_is_synced_at_length_zero() {
    let (mut server, mut client) = pair(
        writer(0),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::downloader(),
    );
    run(&mut server, &mut client, 0);
    assert!(client.rep(|rep, _, _| rep.is_synced()));
    assert!(client.events().any(|e| matches!(
        e,
        ReplicationEvent::Synced {
            length: 0,
            remote_length: 0
        }
    )));
}

/// Opens a server (uploader of `n` blocks) and a downloading client and lets them settle.
fn settled(n: u64) -> (Side, Side) {
    let (mut server, mut client) = pair(
        writer(n),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::downloader(),
    );
    run(&mut server, &mut client, 0);
    assert!(server.error().is_none() && client.error().is_none());
    (server, client)
}

#[test]
fn a_have_flood_keeps_the_remote_map_bounded() {
    let (mut server, mut client) = settled(10);
    let dk = client.dk;
    // One Have per 4096-block page: every page of the map would need its own bitmap.
    let flood = |from: &mut Side| {
        from.rep(|_, session, _| {
            for k in 0..(1u64 << 16) {
                session
                    .send(&dk, Message::Have(Have::block(k * 4096 + 1)))
                    .unwrap();
            }
        });
        from.peer.transmit(1)
    };
    let bytes = flood(&mut server);
    client.deliver(&bytes, 1);
    assert!(client.error().is_none());
    let partial = client.rep(|rep, _, _| rep.remote_bits.partial_pages());
    assert!(
        partial <= MAX_REMOTE_PARTIAL_PAGES,
        "{partial} partial pages"
    );
    // A peer that only uploads keeps no map of the remote's blocks at all.
    let bytes = flood(&mut client);
    server.deliver(&bytes, 1);
    assert!(server.error().is_none());
    assert!(server.rep(|rep, _, _| rep.remote_bits.pages.is_empty()));
}

#[test]
fn whole_pages_the_remote_has_cost_no_bitmap() {
    let mut bits = RemoteBits::default();
    bits.set_range(0, 1 << 24, true);
    assert_eq!(bits.partial_pages(), 0);
    assert_eq!(bits.pages.len(), (1 << 24) / 4096);
    assert!(bits.get(0) && bits.get((1 << 24) - 1) && !bits.get(1 << 24));
    // An exception inside a full page makes it a bitmap; filling it again compacts it.
    bits.set(5000, false);
    assert_eq!(bits.partial_pages(), 1);
    assert!(!bits.get(5000) && bits.get(5001));
    bits.set(5000, true);
    assert_eq!(bits.partial_pages(), 0);
    // Clearing a page frees it.
    bits.set_range(8192, 8192 + 4096, false);
    assert!(!bits.get(8192 + 100));
    assert_eq!(bits.pages.len(), (1 << 24) / 4096 - 1);
}

#[test]
fn a_repeated_want_is_answered_once_per_length() {
    let (mut server, _client) = settled(100);
    server.rep(|rep, session, feed| {
        let legacy = || Message::Want(Want::range(0, 0));
        let mut sizes = Vec::new();
        for _ in 0..5 {
            session.take_outgoing();
            rep.on_message(session, feed, legacy(), 1).unwrap();
            sizes.push(session.outgoing_len());
        }
        // The client's own Want (region 0, at length 100) was answered while settling;
        // the legacy range is answered once, then no more at this length.
        assert!(sizes[0] > 0, "{sizes:?}");
        assert_eq!(&sizes[1..], &[0, 0, 0, 0], "{sizes:?}");
        session.take_outgoing();
        rep.on_message(session, feed, Message::Want(Want::range(0, WANT_REGION)), 1)
            .unwrap();
        assert_eq!(session.outgoing_len(), 0, "answered while settling");
        // The feed grew: the same Want is answered again.
        let old = feed.length();
        feed.append_batch(&[block(100)]).unwrap();
        rep.on_local_append(session, feed, old).unwrap();
        session.take_outgoing();
        rep.on_message(session, feed, legacy(), 2).unwrap();
        assert!(session.outgoing_len() > 0);
    });
}
