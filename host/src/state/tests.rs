use super::*;

const SELLER: Key = [1; 32];

fn store(dir: &Path) -> StateStore {
    StateStore::open(&StateUrl::default_in(dir)).expect("open")
}

fn payment(buyer: u8, amount: f64) -> LedgerPayment {
    LedgerPayment {
        id: 0,
        buyer: [buyer; 32],
        seller: None,
        amount,
        time: 1_000,
        note: None,
    }
}

#[test]
fn urls_parse_and_hide_passwords() {
    let dir = Path::new("/data");
    assert_eq!(
        StateUrl::parse("sqlite:", dir).unwrap(),
        StateUrl::Sqlite(dir.join(STATE_FILE))
    );
    assert_eq!(
        StateUrl::parse("sqlite:/x/s.db", dir).unwrap(),
        StateUrl::Sqlite("/x/s.db".into())
    );
    let pg = StateUrl::parse("postgres://dazaar:hunter2@db.local:5432/sales", dir).unwrap();
    assert_eq!(pg.to_string(), "postgres://dazaar:***@db.local:5432/sales");
    assert!(!format!("{pg:?}").contains("hunter2"));
    let err = StateUrl::parse("mysql://u:hunter2@h/db", dir).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    // A refused connection's error hides the password too (loopback, nothing listens).
    let refused = crate::state::pg_server::refused_port();
    let pg = StateUrl::parse(
        &format!(
            "postgres://dazaar:hunter2@127.0.0.1:{}/sales",
            refused.port()
        ),
        dir,
    )
    .unwrap();
    let err = StateStore::open(&pg).unwrap_err();
    assert!(matches!(err, StateError::Open { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_new_database_is_migrated_private_and_reopens() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(tmp.path().join(STATE_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    s.revoke(&SELLER, &[2; 32], false, 5).unwrap();
    drop(s);
    let again = store(tmp.path());
    assert_eq!(again.schema_version().unwrap(), SCHEMA_VERSION);
    assert!(again.revocation(&SELLER, &[2; 32]).unwrap().is_some());
}

#[test]
fn a_newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(store(tmp.path()));
    let conn = rusqlite::Connection::open(tmp.path().join(STATE_FILE)).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    let err = StateStore::open(&StateUrl::default_in(tmp.path())).unwrap_err();
    assert!(
        matches!(err, StateError::NewerSchema { found, known, .. } if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade dazaar"));
}

#[test]
fn revocations_per_product_and_burns_stick() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    s.revoke(&SELLER, &[2; 32], false, 10).unwrap();
    s.revoke(&SELLER, &[2; 32], true, 20).unwrap();
    // A later plain revoke does not unburn, and the first time stays.
    s.revoke(&SELLER, &[2; 32], false, 30).unwrap();
    assert_eq!(
        s.revocation(&SELLER, &[2; 32]).unwrap(),
        Some(RevocationRecord {
            buyer: [2; 32],
            at_ms: 10,
            burnt: true
        })
    );
    assert_eq!(s.revocation(&[9; 32], &[2; 32]).unwrap(), None);
    s.revoke(&SELLER, &[3; 32], false, 40).unwrap();
    let all: Vec<Key> = s
        .revocations(&SELLER)
        .unwrap()
        .iter()
        .map(|r| r.buyer)
        .collect();
    assert_eq!(all, vec![[2; 32], [3; 32]]);
}

/// Twenty processes' worth of writers (each its own connection, as `dazaar ledger add`
/// processes are) adding at once keep all twenty payments.
#[test]
fn concurrent_ledger_adds_keep_every_payment() {
    let tmp = tempfile::tempdir().unwrap();
    drop(store(tmp.path()));
    let threads: Vec<_> = (0..20u8)
        .map(|i| {
            let dir = tmp.path().to_owned();
            std::thread::spawn(move || store(&dir).ledger_add(&payment(i, 1.5)).unwrap())
        })
        .collect();
    let mut ids: Vec<i64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    let s = store(tmp.path());
    assert_eq!(s.ledger(None).unwrap().len(), 20);
    let one = s.ledger(Some(&[7; 32])).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!((one[0].buyer, one[0].amount), ([7; 32], 1.5));
    assert!(s.ledger_add(&payment(1, f64::NAN)).is_err());
    assert!(s.ledger_add(&payment(1, -1.0)).is_err());
}

#[test]
fn sales_and_byte_counters() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let sale = Sale {
        seller: SELLER,
        buyer: [4; 32],
        method: "lnd".into(),
        grant: "time".into(),
        remaining: 60_000,
        at_ms: 7,
    };
    s.record_sale(&sale).unwrap();
    assert_eq!(s.sales().unwrap(), vec![sale]);
    assert_eq!(s.bytes(&SELLER, &[4; 32]).unwrap(), 0);
    assert_eq!(s.add_bytes(&SELLER, &[4; 32], 100).unwrap(), 100);
    assert_eq!(s.add_bytes(&SELLER, &[4; 32], 23).unwrap(), 123);
    assert_eq!(
        s.add_bytes(&SELLER, &[4; 32], u64::MAX).unwrap(),
        i64::MAX as u64
    );
    assert_eq!(s.bytes(&[9; 32], &[4; 32]).unwrap(), 0);
}

#[test]
fn legacy_revocations_are_imported_once() {
    let tmp = tempfile::tempdir().unwrap();
    let seller = hex::encode(SELLER);
    std::fs::write(
        tmp.path().join(LEGACY_REVOCATIONS),
        format!(
            r#"{{"{seller}": {{"{}": {{"at_ms": 5, "burnt": true}}, "zz": {{"at_ms": 1}}}}}}"#,
            hex::encode([2u8; 32])
        ),
    )
    .unwrap();
    let s = StateStore::open_in(tmp.path()).unwrap();
    let r = s.revocation(&SELLER, &[2; 32]).unwrap().unwrap();
    assert!(r.burnt);
    assert_eq!(r.at_ms, 5);
    // A second import (a reopen) adds nothing, even after the row was changed.
    let again = s.import_legacy(tmp.path()).unwrap();
    assert_eq!(again, ImportReport::default());
    // A malformed legacy file is a typed error, not a panic.
    std::fs::write(tmp.path().join(LEGACY_REVOCATIONS), "[").unwrap();
    let fresh = tempfile::tempdir().unwrap();
    std::fs::copy(
        tmp.path().join(LEGACY_REVOCATIONS),
        fresh.path().join(LEGACY_REVOCATIONS),
    )
    .unwrap();
    assert!(matches!(
        StateStore::open_in(fresh.path()),
        Err(StateError::Import { .. })
    ));
}

#[test]
fn ledger_files_are_imported_once() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("ledger.jsonl");
    let b = hex::encode([5u8; 32]);
    std::fs::write(
        &file,
        format!(
            "{{\"buyer\":\"{b}\",\"amount\":2,\"time\":9}}\n# comment\nnot json\n{{\"buyer\":\"{b}\",\"amount\":\"0.5\",\"time\":10,\"seller\":\"{}\",\"note\":\"n\"}}\n",
            hex::encode(SELLER)
        ),
    )
    .unwrap();
    let s = store(tmp.path());
    let r = s.import_ledger_file(&file).unwrap();
    assert_eq!((r.payments, r.skipped), (2, 1));
    assert_eq!(
        s.import_ledger_file(&file).unwrap(),
        ImportReport::default()
    );
    let all = s.ledger(Some(&[5; 32])).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].seller, Some(SELLER));
    assert_eq!(all[1].note.as_deref(), Some("n"));
}

/// The same state on a real PostgreSQL server (a throwaway cluster, see `pg_server`).
/// The lease rules, on two handles of one database (two nodes).
fn leases_follow_heartbeats(a: &StateStore, b: &StateStore) {
    let buyer = [7; 32];
    let t = 1_000_000;
    a.heartbeat("node-a", t).unwrap();
    b.heartbeat("node-b", t).unwrap();
    assert_eq!(
        a.acquire_lease(&SELLER, &buyer, "node-a", t).unwrap(),
        Lease::Acquired
    );
    // Held by a live node: refused; asked again by the holder: granted.
    assert_eq!(
        b.acquire_lease(&SELLER, &buyer, "node-b", t + 1).unwrap(),
        Lease::HeldBy("node-a".into())
    );
    assert_eq!(
        a.acquire_lease(&SELLER, &buyer, "node-a", t + 2).unwrap(),
        Lease::Acquired
    );
    // Another product, another buyer: separate leases.
    assert_eq!(
        b.acquire_lease(&[9; 32], &buyer, "node-b", t).unwrap(),
        Lease::Acquired
    );
    assert_eq!(
        b.acquire_lease(&SELLER, &[8; 32], "node-b", t).unwrap(),
        Lease::Acquired
    );
    // Released by its holder (a release by another node does nothing): free again.
    b.release_lease(&SELLER, &buyer, "node-b").unwrap();
    assert!(matches!(
        b.acquire_lease(&SELLER, &buyer, "node-b", t + 3).unwrap(),
        Lease::HeldBy(_)
    ));
    a.release_lease(&SELLER, &buyer, "node-a").unwrap();
    assert_eq!(
        b.acquire_lease(&SELLER, &buyer, "node-b", t + 4).unwrap(),
        Lease::Acquired
    );
    // node-b falls silent: within NODE_EXPIRY its lease holds, after it lapses.
    let expiry = NODE_EXPIRY.as_millis() as u64;
    a.heartbeat("node-a", t + expiry).unwrap();
    assert!(matches!(
        a.acquire_lease(&SELLER, &buyer, "node-a", t + expiry - 1)
            .unwrap(),
        Lease::HeldBy(_)
    ));
    assert_eq!(
        a.acquire_lease(&SELLER, &buyer, "node-a", t + expiry + 1)
            .unwrap(),
        Lease::Acquired
    );
    // A heartbeat never goes back in time.
    b.heartbeat("node-b", t + 2 * expiry).unwrap();
    b.heartbeat("node-b", t).unwrap();
    assert_eq!(
        b.acquire_lease(&SELLER, &[8; 32], "node-c", t + 2 * expiry + 1)
            .unwrap(),
        Lease::HeldBy("node-b".into())
    );
}

#[test]
fn leases_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    leases_follow_heartbeats(&store(tmp.path()), &store(tmp.path()));
}

#[test]
fn node_ids_are_stable_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let id = node_id(tmp.path()).unwrap();
    assert!(valid_node_id(&id), "{id}");
    assert_eq!(node_id(tmp.path()).unwrap(), id);
    std::fs::write(tmp.path().join(NODE_ID_FILE), "bad id with spaces\n").unwrap();
    assert!(node_id(tmp.path()).is_err());
    std::fs::write(tmp.path().join(NODE_ID_FILE), "rack-2\n").unwrap();
    assert_eq!(node_id(tmp.path()).unwrap(), "rack-2");
}

/// Every part of a process that opens one place shares one handle.
#[test]
fn one_place_one_shared_handle() {
    let tmp = tempfile::tempdir().unwrap();
    let place = StatePlace::default_in(tmp.path());
    let a = place.shared().unwrap();
    let b = LazyState::new(&place).get().unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let other = StatePlace::default_in(&tmp.path().join("x"));
    assert!(!std::sync::Arc::ptr_eq(&a, &other.shared().unwrap()));
}

mod on_postgres {
    use super::*;
    use crate::state::pg_server::PgServer;

    fn open(url: &str) -> StateStore {
        StateStore::open(&StateUrl::parse(url, Path::new("/nowhere")).unwrap()).unwrap()
    }

    #[test]
    fn holds_the_same_state_as_sqlite() {
        let Some(url) = PgServer::database("holds_the_same_state_as_sqlite") else {
            return;
        };
        let s = open(&url);
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        s.revoke(&SELLER, &[2; 32], false, 10).unwrap();
        s.revoke(&SELLER, &[2; 32], true, 20).unwrap();
        s.revoke(&SELLER, &[2; 32], false, 30).unwrap();
        assert_eq!(
            s.revocation(&SELLER, &[2; 32]).unwrap(),
            Some(RevocationRecord {
                buyer: [2; 32],
                at_ms: 10,
                burnt: true
            })
        );
        assert_eq!(s.revocations(&SELLER).unwrap().len(), 1);
        let id = s.ledger_add(&payment(3, 2.5)).unwrap();
        let mut with_seller = payment(3, 1.0);
        with_seller.seller = Some(SELLER);
        with_seller.note = Some("n".into());
        s.ledger_add(&with_seller).unwrap();
        let l = s.ledger(Some(&[3; 32])).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].id, l[0].amount, l[0].seller), (id, 2.5, None));
        assert_eq!(l[1].seller, Some(SELLER));
        assert!(s.ledger(Some(&[4; 32])).unwrap().is_empty());
        let sale = Sale {
            seller: SELLER,
            buyer: [4; 32],
            method: "lnd".into(),
            grant: "time".into(),
            remaining: 60_000,
            at_ms: 7,
        };
        s.record_sale(&sale).unwrap();
        assert_eq!(s.sales().unwrap(), vec![sale]);
        assert_eq!(s.add_bytes(&SELLER, &[4; 32], 100).unwrap(), 100);
        assert_eq!(
            s.add_bytes(&SELLER, &[4; 32], u64::MAX).unwrap(),
            i64::MAX as u64
        );
        s.plugin_put("lnd", &SELLER, "k", b"v1").unwrap();
        s.plugin_put("lnd", &SELLER, "k", b"v2").unwrap();
        assert_eq!(
            s.plugin_get("lnd", &SELLER, "k").unwrap(),
            Some(b"v2".to_vec())
        );
        assert_eq!(s.plugin_get("eos", &SELLER, "k").unwrap(), None);
        s.plugin_delete("lnd", &SELLER, "k").unwrap();
        assert_eq!(s.plugin_get("lnd", &SELLER, "k").unwrap(), None);
    }

    /// Two seller nodes on one database: what one records holds on the other at once, and
    /// twenty concurrent writers keep twenty payments.
    #[test]
    fn two_nodes_share_revocations_and_payments() {
        let Some(url) = PgServer::database("two_nodes_share_revocations_and_payments") else {
            return;
        };
        let (a, b) = (open(&url), open(&url));
        a.revoke(&SELLER, &[5; 32], false, 1).unwrap();
        assert!(b.revocation(&SELLER, &[5; 32]).unwrap().is_some());
        let threads: Vec<_> = (0..20u8)
            .map(|i| {
                let url = url.clone();
                std::thread::spawn(move || open(&url).ledger_add(&payment(i, 1.0)).unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.ledger(None).unwrap().len(), 20);
    }

    #[test]
    fn leases() {
        let Some(url) = PgServer::database("leases") else {
            return;
        };
        leases_follow_heartbeats(&open(&url), &open(&url));
        // Eight nodes racing for one new buyer: exactly one wins.
        let now = 5_000_000;
        let wins: usize = (0..8)
            .map(|i| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let s = open(&url);
                    let node = format!("racer-{i}");
                    s.heartbeat(&node, now).unwrap();
                    s.acquire_lease(&SELLER, &[42; 32], &node, now).unwrap() == Lease::Acquired
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(wins, 1);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let Some(url) = PgServer::database("a_newer_schema_is_refused") else {
            return;
        };
        drop(open(&url));
        let mut c = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        c.batch_execute("UPDATE dazaar_schema SET version = version + 1")
            .unwrap();
        let err = StateStore::open(&StateUrl::parse(&url, Path::new("/")).unwrap()).unwrap_err();
        assert!(matches!(err, StateError::NewerSchema { .. }), "{err}");
    }

    /// A legacy ledger file imported from two nodes is imported once.
    #[test]
    fn imports_once_across_nodes() {
        let Some(url) = PgServer::database("imports_once_across_nodes") else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("ledger.jsonl");
        std::fs::write(
            &file,
            format!(
                "{{\"buyer\":\"{}\",\"amount\":2,\"time\":9}}\n",
                hex::encode([6u8; 32])
            ),
        )
        .unwrap();
        let (a, b) = (open(&url), open(&url));
        assert_eq!(a.import_ledger_file(&file).unwrap().payments, 1);
        assert_eq!(b.import_ledger_file(&file).unwrap().payments, 0);
        assert_eq!(b.ledger(None).unwrap().len(), 1);
    }
}
