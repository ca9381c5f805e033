//! Two sessions with replicators joined in memory: full, sparse, live and rekeyed
//! replication, resume, uploading toggles and hostile Data.

use super::*;
use crate::crypto::{Ed25519KeyPair, NoiseKeyPair};
use crate::protocol::{Event, SessionConfig};
use crate::storage::{MemStore, RekeyedSigner};

struct Side {
    session: Session,
    feed: Feed<MemStore>,
    rep: Replicator,
    events: Vec<ReplicationEvent>,
    /// Discovery key this side opens when the remote asks for it (a server).
    serve_on_request: bool,
    error: Option<ReplicationError>,
}

impl Side {
    fn new(initiator: bool, seed: u8, feed: Feed<MemStore>, config: ReplicatorConfig) -> Self {
        let session = Session::new(
            SessionConfig::new(initiator, NoiseKeyPair::from_seed(&[seed; 32])),
            0,
        )
        .unwrap();
        let rep = Replicator::new(&feed, config);
        Side {
            session,
            feed,
            rep,
            events: Vec::new(),
            serve_on_request: false,
            error: None,
        }
    }

    fn open(&mut self) {
        self.session.open_channel(&self.rep.key()).unwrap();
    }

    fn dispatch(&mut self, now: u64) {
        while let Some(event) = self.session.poll_event() {
            let result = match event {
                Event::DiscoveryKey { discovery_key } => {
                    if self.serve_on_request && discovery_key == self.rep.discovery_key() {
                        self.session.open_channel(&self.rep.key()).unwrap();
                    } else {
                        self.session.close_discovery_key(&discovery_key).unwrap();
                    }
                    Ok(())
                }
                Event::ChannelOpened { discovery_key }
                    if discovery_key == self.rep.discovery_key() =>
                {
                    self.rep.on_open(&mut self.session, &mut self.feed, now)
                }
                Event::Message {
                    discovery_key,
                    message,
                } if discovery_key == self.rep.discovery_key() => {
                    self.rep
                        .on_message(&mut self.session, &mut self.feed, message, now)
                }
                _ => Ok(()),
            };
            if let Err(e) = result {
                self.session.destroy();
                self.error = Some(e);
                return;
            }
        }
        while let Some(e) = self.rep.poll_event() {
            self.events.push(e);
        }
    }

    fn deliver(&mut self, mut bytes: &[u8], now: u64) {
        while !bytes.is_empty() && self.error.is_none() {
            match self.session.receive(bytes, now) {
                Ok(n) => bytes = &bytes[n..],
                Err(_) => return,
            }
            self.dispatch(now);
        }
    }

    fn pump(&mut self, now: u64) {
        if self.error.is_some() || self.session.is_destroyed() {
            return;
        }
        if let Err(e) = self.rep.pump(&mut self.session, &mut self.feed, now) {
            self.session.destroy();
            self.error = Some(e);
        }
        while let Some(e) = self.rep.poll_event() {
            self.events.push(e);
        }
    }
}

/// Moves bytes both ways until nothing moves.
fn run(a: &mut Side, b: &mut Side, now: u64) {
    for _ in 0..100_000 {
        a.pump(now);
        b.pump(now);
        let ab = a.session.take_outgoing();
        let ba = b.session.take_outgoing();
        if ab.is_empty() && ba.is_empty() {
            return;
        }
        if !b.session.is_destroyed() {
            b.deliver(&ab, now);
        }
        if !a.session.is_destroyed() {
            a.deliver(&ba, now);
        }
    }
    panic!("replication did not settle");
}

fn block(i: u64) -> Vec<u8> {
    format!("block number {i}").into_bytes()
}

fn writer(n: u64) -> Feed<MemStore> {
    let mut feed = Feed::create(MemStore::new(), Ed25519KeyPair::from_seed(&[9; 32])).unwrap();
    let blocks: Vec<Vec<u8>> = (0..n).map(block).collect();
    if n > 0 {
        feed.append_batch(&blocks).unwrap();
    }
    feed
}

fn reader(key: [u8; 32]) -> Feed<MemStore> {
    Feed::create_reader(MemStore::new(), key).unwrap()
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
    let mut server = Side::new(false, 2, server_feed, server_config);
    server.serve_on_request = true;
    let client = Side::new(true, 1, reader(client_key), client_config);
    (server, client)
}

fn assert_same(a: &Feed<MemStore>, b: &Feed<MemStore>, blocks: impl Iterator<Item = u64>) {
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
    client.open();
    run(&mut server, &mut client, 0);
    assert!(server.error.is_none() && client.error.is_none());
    assert_eq!(client.feed.length(), 300);
    assert!(client.feed.has_all());
    assert!(client.rep.is_synced());
    assert!(client
        .events
        .iter()
        .any(|e| matches!(e, ReplicationEvent::Synced { length: 300, .. })));
    assert_eq!(
        client
            .events
            .iter()
            .filter(|e| matches!(e, ReplicationEvent::Downloaded { .. }))
            .count(),
        300
    );
    assert_same(&server.feed, &client.feed, 0..300);

    // Live: one block, then a batch.
    for batch in [vec![block(300)], (301..340).map(block).collect::<Vec<_>>()] {
        let old = server.feed.length();
        server.feed.append_batch(&batch).unwrap();
        server
            .rep
            .on_local_append(&mut server.session, &server.feed, old)
            .unwrap();
        run(&mut server, &mut client, 1);
        assert_eq!(client.feed.length(), server.feed.length());
        assert!(client.feed.has_all());
    }
    assert_same(&server.feed, &client.feed, 0..340);
    assert!(client
        .events
        .iter()
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
    client.open();
    run(&mut server, &mut client, 0);
    assert_eq!(client.rep.remote_status(), (true, false));
    assert_eq!(client.rep.remote_length(), 5);
    assert_eq!(client.feed.length(), 5);
}

#[test]
fn sparse_reader_gets_only_selected_blocks() {
    let (mut server, mut client) = pair(
        writer(100),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::sparse(),
    );
    client.open();
    run(&mut server, &mut client, 0);
    assert_eq!(client.feed.downloaded(0, 100), 0);
    client
        .rep
        .download(&mut client.session, &mut client.feed, 3, Some(4))
        .unwrap();
    client
        .rep
        .download(&mut client.session, &mut client.feed, 70, Some(75))
        .unwrap();
    run(&mut server, &mut client, 0);
    assert!(client.error.is_none(), "{:?}", client.error);
    assert_eq!(client.feed.downloaded(0, 100), 6);
    assert!(client.feed.has(3) && client.feed.has(74) && !client.feed.has(0));
    assert_same(
        &server.feed,
        &client.feed,
        [3, 70, 71, 72, 73, 74].into_iter(),
    );
    assert_eq!(client.feed.length(), 100);
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
    let mut server = Side::new(false, 2, source, ReplicatorConfig::uploader());
    server.serve_on_request = true;
    let mut client = Side::new(true, 1, partial, ReplicatorConfig::downloader());
    client.open();
    run(&mut server, &mut client, 0);
    assert!(client.feed.has_all());
    assert_eq!(
        client
            .events
            .iter()
            .filter(|e| matches!(e, ReplicationEvent::Downloaded { .. }))
            .count(),
        30
    );
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
    assert_eq!(server.rep.key(), buyer_key);
    assert_eq!(client.feed.key(), buyer_key);
    client.open();
    run(&mut server, &mut client, 0);
    assert!(
        server.error.is_none() && client.error.is_none(),
        "{:?} {:?}",
        server.error,
        client.error
    );
    assert_eq!(client.feed.length(), 40);
    assert!(client.feed.has_all());
    assert_same(&server.feed, &client.feed, 0..40);

    // Live appends to the seller feed reach the rekeyed buyer with fresh signatures.
    let old = server.feed.length();
    server.feed.append(&block(40)).unwrap();
    server
        .rep
        .on_local_append(&mut server.session, &server.feed, old)
        .unwrap();
    run(&mut server, &mut client, 1);
    assert_eq!(client.feed.length(), 41);

    // A reader of the seller's own key would refuse these signatures.
    let seller_key = server.feed.key();
    assert_ne!(seller_key, buyer_key);
}

#[test]
fn uploading_false_stops_serving_and_true_resumes() {
    let (mut server, mut client) = pair(
        writer(10),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::downloader(),
    );
    client.open();
    run(&mut server, &mut client, 0);
    server
        .rep
        .set_uploading(&mut server.session, false)
        .unwrap();
    run(&mut server, &mut client, 0);
    assert_eq!(client.rep.remote_status(), (false, false));
    let old = server.feed.length();
    server.feed.append(&block(10)).unwrap();
    server
        .rep
        .on_local_append(&mut server.session, &server.feed, old)
        .unwrap();
    run(&mut server, &mut client, 0);
    assert_eq!(client.feed.length(), 10);
    server.rep.set_uploading(&mut server.session, true).unwrap();
    run(&mut server, &mut client, 0);
    assert_eq!(client.rep.remote_status(), (true, false));
    assert_eq!(client.feed.length(), 11);
    assert!(client.feed.has_all());
}

#[test]
fn wrong_key_data_destroys_the_stream_and_stores_nothing() {
    // The server serves a feed under a key whose signatures do not match what the
    // client expects: the client's reader key is another writer's key.
    let server_feed = writer(10);
    let mut server = Side::new(false, 2, server_feed, ReplicatorConfig::uploader());
    server.serve_on_request = true;
    // Same discovery key as the server's feed, but different blocks (another writer
    // with the same key pair and other content).
    let mut forged = Feed::create(MemStore::new(), Ed25519KeyPair::from_seed(&[9; 32])).unwrap();
    let _ = &mut forged;
    let evil_signer = Arc::new(RekeyedSigner::new(Ed25519KeyPair::from_seed(&[5; 32])));
    // Serve the real tree with an impostor's signatures under the real key's channel:
    // build a signer whose public key claims the feed key but signs with another key.
    struct Liar(Arc<RekeyedSigner>, [u8; 32]);
    impl Signer for Liar {
        fn public_key(&self) -> [u8; 32] {
            self.1
        }
        fn sign(&self, tree_hash: &[u8; 32], length: u64) -> [u8; 64] {
            self.0.sign(tree_hash, length)
        }
    }
    let key = server.feed.key();
    server.rep = Replicator::new(
        &server.feed,
        ReplicatorConfig::rekeyed(Arc::new(Liar(evil_signer, key))),
    );
    let mut client = Side::new(true, 1, reader(key), ReplicatorConfig::downloader());
    client.open();
    run(&mut server, &mut client, 0);
    let err = client.error.as_ref().expect("client must fail");
    assert!(err.is_verification(), "{err}");
    assert_eq!(client.feed.downloaded(0, 10), 0);
    assert_eq!(client.feed.length(), 0);
}

#[test]
fn request_timeout_fires_when_remote_never_answers() {
    let (mut server, mut client) = pair(
        writer(10),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::downloader(),
    );
    client.open();
    // Deliver handshake and Opens, but drop the server's answers to requests: run until
    // the client sent its requests, then stop the server from uploading silently.
    server.rep.config.uploading = false;
    run(&mut server, &mut client, 0);
    // The server never sent Status (it believes it was already told), so the client has
    // its Wants unanswered and no requests; give it a remote length by hand.
    assert_eq!(client.rep.inflight(), 0);
    // The server said Status{uploading: false}; pretend it came back without answering.
    client.rep.remote_uploading = true;
    let have = Message::Have(Have::range(0, 3));
    client
        .rep
        .on_message(&mut client.session, &mut client.feed, have, 5)
        .unwrap();
    assert_eq!(client.rep.inflight(), 3);
    assert_eq!(
        client.rep.next_deadline(),
        Some(5 + DEFAULT_REQUEST_TIMEOUT_MS)
    );
    client.rep.tick(100).unwrap();
    let err = client.rep.tick(5 + DEFAULT_REQUEST_TIMEOUT_MS).unwrap_err();
    assert!(
        matches!(err, ReplicationError::RequestTimeout { index: 0, .. }),
        "{err}"
    );
}

#[test]
fn unrequested_data_is_refused_with_unhave() {
    let (mut server, mut client) = pair(
        writer(3),
        ReplicatorConfig::uploader(),
        ReplicatorConfig::sparse(),
    );
    client.open();
    run(&mut server, &mut client, 0);
    let data = Data {
        index: 1,
        value: Some(block(1)),
        nodes: vec![],
        signature: None,
    };
    client
        .rep
        .on_message(
            &mut client.session,
            &mut client.feed,
            Message::Data(data),
            0,
        )
        .unwrap();
    assert!(!client.feed.has(1));
    assert!(client.session.outgoing_len() > 0, "Unhave sent");
}

#[test]
fn too_many_remote_requests_is_fatal() {
    let config = ReplicatorConfig {
        max_remote_requests: 4,
        upload_high_water: 0,
        ..ReplicatorConfig::uploader()
    };
    let (mut server, mut client) = pair(writer(10), config, ReplicatorConfig::downloader());
    client.open();
    run(&mut server, &mut client, 0);
    assert!(matches!(
        server.error,
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
    client.open();
    run(&mut server, &mut client, 0);
    assert!(client.rep.is_synced());
    assert!(client.events.iter().any(|e| matches!(
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
    client.open();
    run(&mut server, &mut client, 0);
    assert!(server.error.is_none() && client.error.is_none());
    (server, client)
}

#[test]
fn a_have_flood_keeps_the_remote_map_bounded() {
    let (mut server, mut client) = settled(10);
    let dk = client.rep.discovery_key();
    // One Have per 4096-block page: every page of the map would need its own bitmap.
    let flood = |from: &mut Side| {
        for k in 0..(1u64 << 16) {
            from.session
                .send(&dk, Message::Have(Have::block(k * 4096 + 1)))
                .unwrap();
        }
        from.session.take_outgoing()
    };
    let bytes = flood(&mut server);
    client.deliver(&bytes, 1);
    assert!(client.error.is_none());
    assert!(
        client.rep.remote_bits.partial_pages() <= MAX_REMOTE_PARTIAL_PAGES,
        "{} partial pages",
        client.rep.remote_bits.partial_pages()
    );
    // A peer that only uploads keeps no map of the remote's blocks at all.
    let bytes = flood(&mut client);
    server.deliver(&bytes, 1);
    assert!(server.error.is_none());
    assert!(server.rep.remote_bits.pages.is_empty());
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
    let legacy = || Message::Want(Want::range(0, 0));
    let mut sizes = Vec::new();
    for _ in 0..5 {
        server.session.take_outgoing();
        server
            .rep
            .on_message(&mut server.session, &mut server.feed, legacy(), 1)
            .unwrap();
        sizes.push(server.session.outgoing_len());
    }
    // The client's own Want (region 0, at length 100) was answered while settling; the
    // legacy range is answered once, then no more at this length.
    assert!(sizes[0] > 0, "{sizes:?}");
    assert_eq!(&sizes[1..], &[0, 0, 0, 0], "{sizes:?}");
    server.session.take_outgoing();
    server
        .rep
        .on_message(
            &mut server.session,
            &mut server.feed,
            Message::Want(Want::range(0, WANT_REGION)),
            1,
        )
        .unwrap();
    assert_eq!(server.session.outgoing_len(), 0, "answered while settling");
    // The feed grew: the same Want is answered again.
    let old = server.feed.length();
    server.feed.append_batch(&[block(100)]).unwrap();
    server
        .rep
        .on_local_append(&mut server.session, &server.feed, old)
        .unwrap();
    server.session.take_outgoing();
    server
        .rep
        .on_message(&mut server.session, &mut server.feed, legacy(), 2)
        .unwrap();
    assert!(server.session.outgoing_len() > 0);
}
