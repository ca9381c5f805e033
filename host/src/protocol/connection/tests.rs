//! Connections driven in memory with virtual time: end-to-end replication, serving on
//! request, announce throttling, timeouts through `handle_timeout`, downloads announced
//! to other connections, and write back-pressure.

use std::sync::Arc;

use super::testing::{block, reader, run, serve_pair, writer, MemShare, Peer};
use super::*;
use crate::protocol::replicate::ReplicatorConfig;

fn uploader(feed: &Arc<MemShare>) -> ChannelSpec<MemShare> {
    ChannelSpec {
        feed: feed.clone(),
        config: ReplicatorConfig::uploader(),
    }
}

/// An uploader of `feed` that announces growth at most every 40 ms.
fn throttled(feed: &Arc<MemShare>) -> ChannelSpec<MemShare> {
    ChannelSpec {
        feed: feed.clone(),
        config: ReplicatorConfig {
            announce_interval_ms: 40,
            ..ReplicatorConfig::uploader()
        },
    }
}

#[test]
fn a_small_feed_replicates_end_to_end() {
    let source = MemShare::new(writer(20));
    let (mut server, mut client, copy, dk) =
        serve_pair(uploader(&source), ReplicatorConfig::downloader());
    run(&mut server, &mut client, 0);
    assert!(server.error.is_none() && client.error.is_none());
    assert!(client.events.contains(&ConnectionEvent::Connected {
        remote_public_key: crate::crypto::NoiseKeyPair::from_seed(&[2; 32]).public_key(),
    }));
    assert!(server
        .events
        .contains(&ConnectionEvent::ChannelOpened { discovery_key: dk }));
    assert!(client.conn.has_channel(&dk) && server.conn.has_channel(&dk));
    assert_eq!(client.downloaded(), 20);
    assert!(client
        .replication()
        .any(|e| matches!(e, ReplicationEvent::Synced { length: 20, .. })));
    let (a, b) = (source.lock(), copy.lock());
    assert!(b.has_all());
    for i in 0..20 {
        assert_eq!(a.get(i).unwrap(), b.get(i).unwrap(), "block {i}");
    }
    // The download grew the shared feed's announced length.
    assert_eq!(copy.length(), 20);
}

#[test]
fn growth_is_announced_at_most_once_per_interval() {
    let source = MemShare::new(writer(3));
    let spec = throttled(&source);
    let (mut server, mut client, copy, _) = serve_pair(spec, ReplicatorConfig::downloader());
    run(&mut server, &mut client, 1000);
    assert_eq!(copy.lock().length(), 3);
    assert_eq!(
        server.conn.poll_timeout(),
        Some(1000 + 20_000 / 2),
        "keep-alive only"
    );

    // The first growth is due at once.
    source.append(&[block(3)]);
    run(&mut server, &mut client, 1000);
    assert_eq!(copy.lock().length(), 4);

    // The next one, 10 ms later, waits for the interval to end.
    source.append(&[block(4)]);
    run(&mut server, &mut client, 1010);
    assert_eq!(copy.lock().length(), 4, "held back by the interval");
    assert_eq!(server.conn.poll_timeout(), Some(1040));
    server.timeout(1039);
    run(&mut server, &mut client, 1039);
    assert_eq!(copy.lock().length(), 4);
    server.timeout(1040);
    run(&mut server, &mut client, 1040);
    assert!(server.error.is_none() && client.error.is_none());
    assert_eq!(copy.lock().length(), 5);
    assert!(copy.lock().has_all());
}

#[test]
fn keep_alive_and_idle_timeout_fire_through_handle_timeout() {
    let source = MemShare::new(writer(1));
    let (mut server, mut client, _, _) =
        serve_pair(uploader(&source), ReplicatorConfig::downloader());
    run(&mut server, &mut client, 0);
    let keep_alive = crate::protocol::DEFAULT_KEEP_ALIVE_MS;
    assert_eq!(client.conn.poll_timeout(), Some(keep_alive));
    client.timeout(keep_alive);
    assert!(client.error.is_none());
    assert!(
        !client.transmit(keep_alive).is_empty(),
        "a keep-alive frame"
    );
    // The server hears nothing more: at its idle deadline it fails.
    let idle = crate::protocol::DEFAULT_IDLE_TIMEOUT_MS;
    server.timeout(keep_alive);
    server.transmit(keep_alive);
    server.timeout(idle - 1);
    assert!(server.error.is_none());
    server.timeout(idle);
    assert!(
        matches!(
            server.error,
            Some(ConnectionError::Session(SessionError::Timeout { .. }))
        ),
        "{:?}",
        server.error
    );
}

#[test]
fn a_discovery_key_not_served_is_closed_and_a_kept_one_opens_on_command() {
    let source = MemShare::new(writer(5));
    let key = source.lock().key();
    let dk = crate::crypto::discovery_key(&key);
    let copy = MemShare::new(reader(key));
    let open = |c: &mut ConnectionConfig<MemShare>| {
        c.open.push(ChannelSpec {
            feed: copy.clone(),
            config: ReplicatorConfig::downloader(),
        })
    };
    // Nothing served: the remote's Open is answered with Close.
    let mut server = Peer::new(false, 2, |_| {});
    let mut client = Peer::new(true, 1, open);
    run(&mut server, &mut client, 0);
    assert!(client
        .events
        .contains(&ConnectionEvent::ChannelClosed { discovery_key: dk }));
    assert!(!server.conn.has_channel(&dk));

    // keep_unknown: pending until the owner opens it.
    let mut server = Peer::new(false, 2, |c| c.keep_unknown = true);
    let mut client = Peer::new(true, 1, open);
    run(&mut server, &mut client, 0);
    assert!(!client.events.iter().any(|e| matches!(
        e,
        ConnectionEvent::ChannelOpened { .. } | ConnectionEvent::ChannelClosed { .. }
    )));
    assert_eq!(copy.lock().length(), 0);
    server.command(Command::Open(uploader(&source)), 0);
    run(&mut server, &mut client, 0);
    assert!(client.error.is_none() && server.error.is_none());
    assert_eq!(copy.lock().length(), 5);
}

#[test]
fn blocks_one_connection_downloads_are_announced_on_the_others() {
    // origin -> middle (downloads into `shared`) ; middle -> follower (serves `shared`).
    let origin_feed = MemShare::new(writer(8));
    let key = origin_feed.lock().key();
    let dk = crate::crypto::discovery_key(&key);
    let shared = MemShare::new(reader(key));
    let mut origin = Peer::new(false, 2, |c| c.serve.push(uploader(&origin_feed)));
    let mut middle_down = Peer::new(true, 3, |c| {
        c.open.push(ChannelSpec {
            feed: shared.clone(),
            config: ReplicatorConfig::sparse(),
        })
    });
    run(&mut origin, &mut middle_down, 0);
    // A first block brings the signed length (8).
    middle_down.command(Command::Download(dk, 0, Some(1)), 1);
    run(&mut origin, &mut middle_down, 1);
    assert_eq!(shared.lock().length(), 8);

    // The follower connects to the middle peer and gets the one block it holds.
    let mut middle_up = Peer::new(false, 4, |c| {
        c.serve.push(ChannelSpec {
            feed: shared.clone(),
            config: ReplicatorConfig::uploader(),
        })
    });
    let mut follower = Peer::new(true, 5, |c| {
        c.open.push(ChannelSpec {
            feed: MemShare::new(reader(key)),
            config: ReplicatorConfig::downloader(),
        })
    });
    run(&mut middle_up, &mut follower, 2);
    assert_eq!(follower.downloaded(), 1);

    // The middle peer downloads another block on its other connection: no growth, only
    // the download log tells the follower's connection (woken), which sends Have.
    let woken = middle_up.waker.load(std::sync::atomic::Ordering::Relaxed);
    middle_down.command(Command::Download(dk, 5, Some(6)), 3);
    run(&mut origin, &mut middle_down, 3);
    assert!(shared.lock().has(5));
    assert_eq!(shared.lock().length(), 8);
    assert!(middle_up.waker.load(std::sync::atomic::Ordering::Relaxed) > woken);
    run(&mut middle_up, &mut follower, 3);
    assert!(follower.error.is_none() && middle_up.error.is_none());
    assert_eq!(follower.downloaded(), 2);
    assert!(origin.error.is_none() && middle_down.error.is_none());
}

/// A sparse copy that learns a longer length (from a downloaded block's signature) while
/// serving another peer announces only the blocks it holds, not the whole new range:
/// the follower is synced with what it can get instead of asking for blocks the middle
/// peer does not have.
#[test]
fn a_sparse_copy_announces_only_the_blocks_it_holds() {
    let origin_feed = MemShare::new(writer(8));
    let key = origin_feed.lock().key();
    let dk = crate::crypto::discovery_key(&key);
    let shared = MemShare::new(reader(key));
    let mut origin = Peer::new(false, 2, |c| c.serve.push(uploader(&origin_feed)));
    let mut middle_down = Peer::new(true, 3, |c| {
        c.open.push(ChannelSpec {
            feed: shared.clone(),
            config: ReplicatorConfig::sparse(),
        })
    });
    run(&mut origin, &mut middle_down, 0);
    // The follower is connected to the middle peer before it holds anything.
    let mut middle_up = Peer::new(false, 4, |c| {
        c.serve.push(ChannelSpec {
            feed: shared.clone(),
            config: ReplicatorConfig::uploader(),
        })
    });
    let follower_feed = MemShare::new(reader(key));
    let mut follower = Peer::new(true, 5, |c| {
        c.open.push(ChannelSpec {
            feed: follower_feed.clone(),
            config: ReplicatorConfig::downloader(),
        })
    });
    run(&mut middle_up, &mut follower, 1);
    // Block 3 brings the signed length (8); only block 3 is held.
    middle_down.command(Command::Download(dk, 3, Some(4)), 2);
    run(&mut origin, &mut middle_down, 2);
    assert_eq!(shared.lock().length(), 8);
    assert_eq!(shared.lock().downloaded(0, 8), 1);
    middle_up.wake_if_woken(3);
    run(&mut middle_up, &mut follower, 3);
    assert!(follower.error.is_none() && middle_up.error.is_none());
    assert_eq!(follower.downloaded(), 1);
    assert!(follower_feed.lock().has(3));
    let remote_lengths: Vec<u64> = follower
        .replication()
        .filter_map(|e| match e {
            ReplicationEvent::RemoteLength { length, .. } => Some(*length),
            _ => None,
        })
        .collect();
    assert!(
        remote_lengths.iter().all(|l| *l <= 4),
        "the middle peer announced blocks it does not hold: {remote_lengths:?}"
    );
}

#[test]
fn unsent_bytes_above_the_high_water_mark_stop_input() {
    let source = MemShare::new(writer(1));
    let mut server = Peer::new(false, 2, |c| {
        c.serve.push(uploader(&source));
        c.write_high_water = 1;
    });
    let mut client = Peer::new(true, 1, |_| {});
    // The initiator's first message reaches the responder, whose answer stays unsent.
    let hello = client.transmit(0);
    server.deliver(&hello, 0);
    assert!(server.error.is_none());
    let answer = server.conn.poll_transmit().unwrap();
    assert!(!server.conn.wants_input(), "answer not written yet");
    server.conn.handle_sent(answer.len() - 1, 0).unwrap();
    assert!(!server.conn.wants_input());
    server.conn.handle_sent(1, 0).unwrap();
    assert!(server.conn.wants_input());
    // Closing stops input too.
    server.conn.close();
    assert!(server.conn.is_closing() && !server.conn.wants_input());
}

#[test]
fn the_download_log_skips_the_origin_and_keeps_the_newest() {
    let mut log = DownloadLog::default();
    log.record(1, &[10, 11]);
    log.record(2, &[12]);
    let mut out = Vec::new();
    assert_eq!(log.since(0, 1, &mut out), 3);
    assert_eq!(out, [12]);
    out.clear();
    assert_eq!(log.since(0, 3, &mut out), 3);
    assert_eq!(out, [10, 11, 12]);
    out.clear();
    let blocks: Vec<u64> = (0..DOWNLOAD_LOG as u64 + 5).collect();
    log.record(2, &blocks);
    assert_eq!(log.entries.len(), DOWNLOAD_LOG);
    assert_eq!(log.since(0, 1, &mut out), 3 + DOWNLOAD_LOG as u64 + 5);
    assert_eq!(out.len(), DOWNLOAD_LOG);
    // 3 + 4101 entries: the oldest 8 (10, 11, 12, then blocks 0..5) are gone.
    assert_eq!(out.first(), Some(&5));
}

/// A wake-up with nothing to do for a channel (growth held back by the announce
/// interval, no request queued) does not take the shared feed's lock: a seller's
/// thousand connections are all woken by each append.
#[test]
fn a_wake_with_nothing_to_do_leaves_the_feed_lock_alone() {
    let source = MemShare::new(writer(3));
    let spec = throttled(&source);
    let (mut server, mut client, copy, _) = serve_pair(spec, ReplicatorConfig::downloader());
    run(&mut server, &mut client, 1000);
    source.append(&[block(3)]);
    run(&mut server, &mut client, 1000);
    assert_eq!(copy.lock().length(), 4);
    // Held back by the interval: the wake has nothing to do.
    source.append(&[block(4)]);
    let held = source.lock();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let worker = std::thread::spawn(move || {
        let result = server.conn.handle_wake(1010);
        let _ = tx.send(result.is_ok());
        server
    });
    let answered = rx.recv_timeout(std::time::Duration::from_secs(5));
    drop(held);
    let mut server = worker.join().expect("the wake ran");
    assert_eq!(
        answered,
        Ok(true),
        "the wake waited for the feed lock (or failed)"
    );
    // The held-back block still goes out when the interval ends.
    server.timeout(1040);
    run(&mut server, &mut client, 1040);
    assert_eq!(copy.lock().length(), 5);
}

/// Rekeyed channels sharing a signature budget announce less often as more of them
/// sign: with a budget of 20 signatures a second, one signing channel waits 50 ms, not
/// its own 40; one that has not signed for a second no longer counts.
#[test]
fn a_signature_budget_widens_the_announce_interval() {
    use crate::protocol::budget::SignatureBudget;
    use crate::storage::RekeyedSigner;
    let source = MemShare::new(writer(3));
    let budget = SignatureBudget::new(20);
    let signer = Arc::new(RekeyedSigner::new(
        crate::crypto::Ed25519KeyPair::from_seed(&[9; 32]),
    ));
    let spec = ChannelSpec {
        feed: source.clone(),
        config: ReplicatorConfig {
            announce_interval_ms: 40,
            signature_budget: Some(budget.clone()),
            ..ReplicatorConfig::rekeyed(signer)
        },
    };
    let (mut server, mut client, copy, _) = serve_pair(spec, ReplicatorConfig::downloader());
    run(&mut server, &mut client, 1000);
    assert_eq!(copy.lock().length(), 3);
    assert_eq!(budget.announcing(), 1, "the channel signed: it counts");
    source.append(&[block(3)]);
    run(&mut server, &mut client, 1000);
    assert_eq!(copy.lock().length(), 4);
    source.append(&[block(4)]);
    run(&mut server, &mut client, 1010);
    assert_eq!(server.conn.poll_timeout(), Some(1050));
    server.timeout(1040);
    run(&mut server, &mut client, 1040);
    assert_eq!(copy.lock().length(), 4, "still within the widened interval");
    server.timeout(1050);
    run(&mut server, &mut client, 1050);
    assert_eq!(copy.lock().length(), 5);
    // A second without signing: out of the budget (looked at on the next wake).
    server.timeout(2100);
    run(&mut server, &mut client, 2100);
    assert_eq!(budget.announcing(), 0, "an idle channel does not count");
    source.append(&[block(5)]);
    run(&mut server, &mut client, 2100);
    assert_eq!(copy.lock().length(), 6);
    run(&mut server, &mut client, 2101);
    assert_eq!(budget.announcing(), 1, "signing again: counted again");
    drop(server);
    assert_eq!(
        budget.announcing(),
        0,
        "a closed connection leaves the budget"
    );
}

#[test]
fn a_remote_that_requests_nothing_is_told_of_growth_once_a_second() {
    let source = MemShare::new(writer(3));
    let spec = throttled(&source);
    // A sparse copy wants nothing it is told of: it never sends a Request.
    let (mut server, mut client, _, _) = serve_pair(spec, ReplicatorConfig::sparse());
    run(&mut server, &mut client, 0);
    let told = |client: &Peer| {
        client
            .replication()
            .filter_map(|e| match e {
                ReplicationEvent::RemoteLength { length, .. } => Some(*length),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    // Within 2 s of opening it still counts as reading: the channel's own interval.
    source.append(&[block(3)]);
    run(&mut server, &mut client, 100);
    assert_eq!(told(&client), 4);
    source.append(&[block(4)]);
    run(&mut server, &mut client, 110);
    assert_eq!(server.conn.poll_timeout(), Some(140));
    server.timeout(140);
    run(&mut server, &mut client, 140);
    assert_eq!(told(&client), 5, "not idle yet: held 40 ms");
    // Past 2 s without a Request: growth is coalesced for a second.
    source.append(&[block(5)]);
    run(&mut server, &mut client, 3000);
    assert_eq!(
        told(&client),
        6,
        "the first growth after a quiet spell is due"
    );
    source.append(&[block(6)]);
    run(&mut server, &mut client, 3010);
    assert_eq!(server.conn.poll_timeout(), Some(4000));
    server.timeout(3040);
    run(&mut server, &mut client, 3040);
    assert_eq!(told(&client), 6, "held back a second, not 40 ms");
    server.timeout(4000);
    run(&mut server, &mut client, 4000);
    assert!(server.error.is_none() && client.error.is_none());
    assert_eq!(told(&client), 7);
}
