//! The storage test suite. The same tests run against [`MemStore`] and [`FsStore`], so
//! the two backends cannot drift; vector tests pin the bytes JS computes.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;

use super::*;
use crate::crypto::Ed25519KeyPair;
use crate::test_vectors::{group, hex32, hex_field};

/// Makes fresh stores of one kind for a test.
trait Backend {
    type S: Store;
    fn fresh(&mut self) -> Self::S;
    /// Reopens the last store made (the fs store reopens its directory; memory is lost
    /// with the `Feed`, so it is handed back through `reopen_from`).
    fn reopen_from(&mut self, old: Self::S) -> Self::S;
}

struct Mem;
impl Backend for Mem {
    type S = MemStore;
    fn fresh(&mut self) -> MemStore {
        MemStore::new()
    }
    fn reopen_from(&mut self, old: MemStore) -> MemStore {
        old
    }
}

struct Fs {
    dirs: Vec<tempfile::TempDir>,
}
impl Backend for Fs {
    type S = FsStore;
    fn fresh(&mut self) -> FsStore {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FsStore::open(dir.path().join("feed"), true).expect("fs store");
        self.dirs.push(dir);
        store
    }
    fn reopen_from(&mut self, old: FsStore) -> FsStore {
        let dir = old.dir().to_path_buf();
        drop(old);
        FsStore::open(dir, false).expect("reopen")
    }
}

fn into_store<S: Store>(feed: Feed<S>) -> S {
    feed.into_store()
}

fn seed01() -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed(&[1; 32])
}

fn check_feed_merkle_vector<B: Backend>(b: &mut B) {
    let v = &group("feed_merkle")[0];
    let mut feed = Feed::create(
        b.fresh(),
        Ed25519KeyPair::from_seed(&hex32(&v["inputs"]["seed"])),
    )
    .expect("create");
    let blocks: Vec<Vec<u8>> = v["inputs"]["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .map(|b| hex_field(&b["hex"]))
        .collect();
    let lengths = v["outputs"]["lengths"].as_array().expect("lengths");
    for (i, block) in blocks.iter().enumerate() {
        feed.append(block).expect("append");
        let want = &lengths[i];
        assert_eq!(feed.length(), want["length"].as_u64().expect("u64"));
        assert_eq!(
            feed.byte_length(),
            want["byteLength"].as_u64().expect("u64")
        );
        assert_eq!(feed.tree_hash().to_vec(), hex_field(&want["treeHash"]));
        assert_eq!(
            merkle::signable(feed.roots(), feed.length()).to_vec(),
            hex_field(&want["signable"])
        );
        assert_eq!(
            feed.signature().expect("sig").expect("present").to_vec(),
            hex_field(&want["signature"])
        );
        let roots: Vec<u64> = want["roots"]
            .as_array()
            .expect("roots")
            .iter()
            .map(|r| r["index"].as_u64().expect("u64"))
            .collect();
        assert_eq!(
            feed.roots().iter().map(|r| r.index).collect::<Vec<_>>(),
            roots
        );
    }
    for n in v["outputs"]["nodes"].as_array().expect("nodes") {
        let node = feed
            .node(n["index"].as_u64().expect("u64"))
            .expect("read")
            .expect("present");
        assert_eq!(node.hash.to_vec(), hex_field(&n["hash"]));
        assert_eq!(node.size, n["size"].as_u64().expect("u64"));
    }
    assert_eq!(
        feed.discovery_key().to_vec(),
        hex_field(&v["outputs"]["discoveryKey"])
    );
    // Reopen: same state.
    let store = b.reopen_from(into_store(feed));
    let feed = Feed::open(store, None).expect("reopen");
    assert_eq!(feed.length(), 3);
    assert_eq!(feed.byte_length(), 11);
    assert_eq!(feed.get(1).expect("get").expect("held"), b"world");
}

fn check_proof_vectors<B: Backend>(b: &mut B) {
    let mut source = Feed::create(b.fresh(), seed01()).expect("create");
    for block in [&b"hello"[..], b"world", b"!"] {
        source.append(block).expect("append");
    }
    for v in group("feed_proofs") {
        let name = v["name"].as_str().expect("name");
        let mut clone = Feed::create_reader(b.fresh(), source.key()).expect("reader");
        for held in v["inputs"]["requesterHas"].as_array().expect("has") {
            let i = held.as_u64().expect("u64");
            let digest = clone.digest(i);
            let p = source
                .proof(i, digest, &mut NodeSet::new(), false)
                .expect("proof");
            let sig = source.signature_at(p.verified_by / 2).expect("sig");
            let value = source.get(i).expect("get").expect("held");
            clone
                .put(i, Some(&value), &p.nodes, sig.as_ref())
                .expect("put held block");
        }
        let req = &v["inputs"]["request"];
        let index = req["index"].as_u64().expect("u64");
        let digest = clone.digest(index);
        assert_eq!(
            digest,
            req["nodes"].as_u64().expect("u64"),
            "{name}: digest"
        );
        let proof = source
            .proof(index, digest, &mut NodeSet::new(), false)
            .expect("proof");
        let want = &v["outputs"]["data"];
        let want_nodes: Vec<(u64, Vec<u8>, u64)> = want["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| {
                (
                    n["index"].as_u64().expect("u64"),
                    hex_field(&n["hash"]),
                    n["size"].as_u64().expect("u64"),
                )
            })
            .collect();
        let got_nodes: Vec<(u64, Vec<u8>, u64)> = proof
            .nodes
            .iter()
            .map(|n| (n.index, n.hash.to_vec(), n.size))
            .collect();
        assert_eq!(got_nodes, want_nodes, "{name}: nodes");
        let sig = if proof.verified_by > 0 {
            source.signature_at(proof.verified_by / 2).expect("sig")
        } else {
            None
        };
        match want["signature"].as_str() {
            Some(s) => assert_eq!(
                sig.map(hex::encode).as_deref(),
                Some(s),
                "{name}: signature"
            ),
            None => assert!(sig.is_none(), "{name}: no signature expected"),
        }
        let value = hex_field(&want["value"]);
        assert_eq!(source.get(index).expect("get").expect("held"), value);
        let out = clone
            .put(index, Some(&value), &proof.nodes, sig.as_ref())
            .expect("verify and store");
        assert!(out.new_block);
        assert_eq!(clone.get(index).expect("get").expect("held"), value);
        assert_eq!(clone.length(), 3);
    }
}

fn check_rekeyed_vector<B: Backend>(b: &mut B) {
    let v = &group("rekeyed_feed")[0];
    let secret: [u8; 64] = hex_field(&v["inputs"]["perBuyerSecretKey"])
        .try_into()
        .expect("64");
    let signer = RekeyedSigner::new(Ed25519KeyPair::from_secret_key(&secret).expect("pair"));
    assert_eq!(
        signer.public_key().to_vec(),
        hex_field(&v["inputs"]["perBuyerPublicKey"])
    );
    let mut feed = Feed::create(b.fresh(), seed01()).expect("create");
    let mut buyer = Feed::create_reader(b.fresh(), signer.public_key()).expect("buyer replica");
    for (block, want) in v["inputs"]["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .zip(v["outputs"]["signatures"].as_array().expect("sigs"))
    {
        feed.append(&hex_field(block)).expect("append");
        assert_eq!(feed.tree_hash().to_vec(), hex_field(&want["treeHash"]));
        let sig = signer.sign(&feed.tree_hash(), feed.length());
        assert_eq!(sig.to_vec(), hex_field(&want["signature"]));
        // The buyer's replica verifies the rekeyed signature (32-byte form).
        let i = feed.length() - 1;
        let p = feed
            .proof(i, buyer.digest(i), &mut NodeSet::new(), false)
            .expect("proof");
        let rekeyed_sig = signer.sign(
            &merkle::tree_hash(&feed.roots_at(p.verified_by / 2).expect("roots")),
            p.verified_by / 2,
        );
        buyer
            .put(i, Some(&hex_field(block)), &p.nodes, Some(&rekeyed_sig))
            .expect("rekeyed proof verifies");
    }
    assert_eq!(buyer.length(), 3);
    // The writer's own (40-byte) signature does not verify for the buyer's key.
    let mut other = Feed::create_reader(b.fresh(), signer.public_key()).expect("replica");
    let p = feed.proof(0, 0, &mut NodeSet::new(), false).expect("proof");
    let writer_sig = feed.signature().expect("sig").expect("present");
    let err = other
        .put(0, Some(b"hello"), &p.nodes, Some(&writer_sig))
        .expect_err("wrong key");
    assert!(
        matches!(err, FeedError::Verify(VerifyError::BadSignature)),
        "{err}"
    );
    assert_eq!(other.length(), 0);
    assert!(!other.has(0));
}

fn check_basics<B: Backend>(b: &mut B) {
    let mut feed = Feed::create(b.fresh(), Ed25519KeyPair::from_seed(&[5; 32])).expect("create");
    assert_eq!(feed.length(), 0);
    assert_eq!(feed.get(0).expect("get"), None);
    assert_eq!(
        feed.append_batch(&[b"one".to_vec(), b"two".to_vec(), Vec::new()])
            .expect("batch"),
        3
    );
    assert_eq!(feed.append(b"four").expect("one"), 4);
    assert_eq!(feed.byte_length(), 10); // "one" "two" "" "four"
    assert_eq!(feed.get(2).expect("get").expect("held"), b"");
    assert_eq!(feed.get(3).expect("get").expect("held"), b"four");
    assert!(feed.has(0) && feed.has(3) && !feed.has(4));
    // Signatures only at batch ends, as JS.
    assert!(feed.signature_at(1).expect("sig").is_none());
    assert!(feed.signature_at(3).expect("sig").is_some());
    assert!(feed.signature_at(4).expect("sig").is_some());
    let too_big = vec![0u8; feed::MAX_BLOCK_SIZE + 1];
    assert!(matches!(
        feed.append(&too_big),
        Err(FeedError::BlockTooLarge(_))
    ));
    assert_eq!(feed.length(), 4);
    // A reader of the same key cannot append; another key is refused.
    let key = feed.key();
    let store = b.reopen_from(into_store(feed));
    let err = Feed::open(store, Some([9; 32])).expect_err("wrong key");
    assert!(matches!(err, FeedError::KeyMismatch { .. }));
    let mut reader = Feed::create_reader(b.fresh(), key).expect("reader");
    assert!(matches!(reader.append(b"x"), Err(FeedError::NotWritable)));
}

fn check_sparse_download<B: Backend>(b: &mut B) {
    let mut source = Feed::create(b.fresh(), Ed25519KeyPair::from_seed(&[6; 32])).expect("create");
    let blocks: Vec<Vec<u8>> = (0..37u32)
        .map(|i| format!("block {i}").into_bytes())
        .collect();
    source.append_batch(&blocks[..20]).expect("batch");
    for b in &blocks[20..] {
        source.append(b).expect("append");
    }
    let mut clone = Feed::create_reader(b.fresh(), source.key()).expect("reader");
    let mut remote = NodeSet::new();
    for &i in &[30u64, 3, 17, 36, 0, 1, 2, 31] {
        let p = source
            .proof(i, clone.digest(i), &mut remote, false)
            .expect("proof");
        let sig = if p.verified_by > 0 {
            source.signature_at(p.verified_by / 2).expect("sig")
        } else {
            None
        };
        clone
            .put(i, Some(&blocks[i as usize]), &p.nodes, sig.as_ref())
            .expect("verifies");
        assert_eq!(
            clone.get(i).expect("get").expect("held"),
            blocks[i as usize]
        );
    }
    assert_eq!(clone.length(), 37);
    assert_eq!(clone.downloaded(0, 37), 8);
    assert!(!clone.has(4));
    assert_eq!(clone.get(4).expect("get"), None);
    // The sparse replica reopens to the same state.
    let store = b.reopen_from(into_store(clone));
    let clone = Feed::open(store, Some(source.key())).expect("reopen");
    assert_eq!(clone.length(), 37);
    assert_eq!(clone.byte_length(), source.byte_length());
    assert_eq!(clone.get(36).expect("get").expect("held"), blocks[36]);
    assert_eq!(clone.downloaded(0, 37), 8);
}

macro_rules! suite {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn feed_merkle_vector() {
                check_feed_merkle_vector(&mut $backend);
            }
            #[test]
            fn proof_vectors() {
                check_proof_vectors(&mut $backend);
            }
            #[test]
            fn rekeyed_vector() {
                check_rekeyed_vector(&mut $backend);
            }
            #[test]
            fn basics() {
                check_basics(&mut $backend);
            }
            #[test]
            fn sparse_download() {
                check_sparse_download(&mut $backend);
            }
        }
    };
}

suite!(mem, Mem);
suite!(fs, Fs { dirs: Vec::new() });

#[test]
fn fs_files_are_byte_identical_to_js() {
    let v = &group("feed_storage_files")[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut feed =
        Feed::create(FsStore::open(dir.path(), true).expect("store"), seed01()).expect("create");
    for block in [&b"hello"[..], b"world", b"!"] {
        feed.append(block).expect("append");
    }
    drop(feed);
    for (name, want) in v["outputs"]["files"].as_object().expect("files") {
        let got = std::fs::read(dir.path().join(name)).expect(name);
        assert_eq!(hex::encode(got), want.as_str().expect("hex"), "file {name}");
    }
}

#[test]
fn fs_key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let _feed =
        Feed::create(FsStore::open(dir.path(), true).expect("store"), seed01()).expect("create");
    for name in ["key", "secret_key"] {
        let mode = std::fs::metadata(dir.path().join(name))
            .expect(name)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
}

#[test]
fn fs_detects_changed_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut feed =
        Feed::create(FsStore::open(dir.path(), true).expect("store"), seed01()).expect("create");
    feed.append_batch(&[b"alpha".to_vec(), b"bravo".to_vec(), b"charlie".to_vec()])
        .expect("append");
    drop(feed);
    let path = dir.path().join("data");
    let mut data = std::fs::read(&path).expect("data");
    data[6] ^= 0x20; // inside "bravo"
    std::fs::write(&path, &data).expect("write");
    let feed = Feed::open(FsStore::open(dir.path(), false).expect("store"), None).expect("open");
    assert_eq!(feed.get(0).expect("intact").expect("held"), b"alpha");
    assert!(matches!(feed.get(1), Err(FeedError::Corrupt(_))));
    assert_eq!(feed.get(2).expect("intact").expect("held"), b"charlie");
}

#[test]
fn fs_rejects_foreign_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("tree"),
        b"this is not a hypercore tree file at all....",
    )
    .expect("write");
    let err = FsStore::open(dir.path(), true).expect_err("bad header");
    assert!(err.to_string().contains("bad header"), "{err}");
    let err = FsStore::open(dir.path().join("missing"), false).expect_err("missing dir");
    assert!(err.to_string().contains("no such feed directory"), "{err}");
}

#[test]
fn tampered_proofs_are_rejected_and_store_nothing() {
    let mut source = Feed::create(MemStore::new(), seed01()).expect("create");
    let blocks: Vec<Vec<u8>> = (0..11u32).map(|i| vec![i as u8; 10 + i as usize]).collect();
    source.append_batch(&blocks).expect("append");
    let i = 6;
    let p = source
        .proof(i, 0, &mut NodeSet::new(), false)
        .expect("proof");
    let sig = source
        .signature_at(p.verified_by / 2)
        .expect("sig")
        .expect("present");
    let mut variants: Vec<(Vec<u8>, Vec<Node>, [u8; 64])> = Vec::new();
    for k in 0..blocks[6].len() {
        let mut v = blocks[6].clone();
        v[k] ^= 1;
        variants.push((v, p.nodes.clone(), sig));
    }
    for n in 0..p.nodes.len() {
        for k in 0..32 {
            let mut nodes = p.nodes.clone();
            nodes[n].hash[k] ^= 0x80;
            variants.push((blocks[6].clone(), nodes, sig));
        }
        let mut nodes = p.nodes.clone();
        nodes[n].size += 1;
        variants.push((blocks[6].clone(), nodes, sig));
    }
    for k in 0..64 {
        let mut s = sig;
        s[k] ^= 4;
        variants.push((blocks[6].clone(), p.nodes.clone(), s));
    }
    for (value, nodes, s) in variants {
        let mut clone = Feed::create_reader(MemStore::new(), source.key()).expect("reader");
        assert!(clone.put(i, Some(&value), &nodes, Some(&s)).is_err());
        assert_eq!(clone.length(), 0);
        assert!(!clone.has(i));
        assert!(!clone.bitfield().is_dirty());
        assert!(clone.store().read_bitfield().expect("pages").is_empty());
    }
    // No signature at all for a signed feed.
    let mut clone = Feed::create_reader(MemStore::new(), source.key()).expect("reader");
    let err = clone
        .put(i, Some(&blocks[6]), &p.nodes, None)
        .expect_err("unsigned");
    assert!(
        matches!(
            err,
            FeedError::Verify(VerifyError::BadChecksum | VerifyError::MissingSignature)
        ),
        "{err}"
    );
}

/// A reference model of a feed: the blocks.
#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Batch(Vec<Vec<u8>>),
    Get(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Op::Append),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..20)
            .prop_map(Op::Batch),
        any::<u64>().prop_map(Op::Get),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn appends_and_reads_match_model(ops in proptest::collection::vec(op(), 1..40), picks in proptest::collection::vec(any::<u64>(), 1..12), flip in any::<(usize, u8)>()) {
        let mut feed = Feed::create(MemStore::new(), Ed25519KeyPair::from_seed(&[3; 32])).expect("create");
        let mut model: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            match op {
                Op::Append(b) => { feed.append(&b).expect("append"); model.push(b); }
                Op::Batch(bs) => { feed.append_batch(&bs).expect("batch"); model.extend(bs); }
                Op::Get(i) => {
                    let i = if model.is_empty() { i } else { i % (model.len() as u64 + 2) };
                    prop_assert_eq!(feed.get(i).expect("get"), model.get(i as usize).cloned());
                }
            }
            prop_assert_eq!(feed.length(), model.len() as u64);
            prop_assert_eq!(feed.byte_length(), model.iter().map(|b| b.len() as u64).sum::<u64>());
        }
        if model.is_empty() {
            return Ok(());
        }
        // Proofs for random blocks verify on a replica that holds only the key, in any order.
        let mut clone = Feed::create_reader(MemStore::new(), feed.key()).expect("reader");
        let mut remote = NodeSet::new();
        for (n, pick) in picks.iter().enumerate() {
            let i = pick % model.len() as u64;
            let p = feed.proof(i, clone.digest(i), &mut remote, false).expect("proof");
            let sig = if p.verified_by > 0 { feed.signature_at(p.verified_by / 2).expect("sig") } else { None };
            if n == 0 {
                // A proof with one byte flipped is rejected and stores nothing.
                let mut value = model[i as usize].clone();
                let mut nodes = p.nodes.clone();
                let mut s = sig;
                let total = value.len() + nodes.len() * 32 + 64;
                let at = flip.0 % total;
                let bit = flip.1 | 1;
                if at < value.len() { value[at] ^= bit; }
                else if at < value.len() + nodes.len() * 32 { let k = at - value.len(); nodes[k / 32].hash[k % 32] ^= bit; }
                else if let Some(sig) = s.as_mut() { sig[at - value.len() - nodes.len() * 32] ^= bit; }
                else { value.push(0); }
                let mut fresh = Feed::create_reader(MemStore::new(), feed.key()).expect("reader");
                prop_assert!(fresh.put(i, Some(&value), &nodes, s.as_ref()).is_err());
                prop_assert_eq!(fresh.length(), 0);
                prop_assert!(!fresh.has(i));
                prop_assert!(fresh.store().read_bitfield().expect("pages").is_empty());
            }
            clone.put(i, Some(&model[i as usize]), &p.nodes, sig.as_ref()).expect("verifies");
            prop_assert_eq!(clone.get(i).expect("get"), Some(model[i as usize].clone()));
        }
        prop_assert_eq!(clone.length(), feed.length());
    }
}

#[test]
fn refresh_sees_appends_from_another_handle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer =
        Feed::create(FsStore::open(dir.path(), true).expect("store"), seed01()).expect("create");
    writer.append(b"first").expect("append");
    let mut server =
        Feed::open(FsStore::open_read_only(dir.path()).expect("store"), None).expect("open");
    assert_eq!(server.length(), 1);
    assert!(!server.refresh(SystemTime::now()).expect("refresh"));
    writer
        .append_batch(&[b"second".to_vec(), b"third".to_vec()])
        .expect("append");
    assert!(server.refresh(SystemTime::now()).expect("refresh"));
    assert_eq!(server.length(), 3);
    assert_eq!(server.get(2).expect("get"), Some(b"third".to_vec()));
    assert_eq!(server.tree_hash(), writer.tree_hash());
    let p = server
        .proof(2, 0, &mut NodeSet::new(), false)
        .expect("proof");
    assert_eq!(p.verified_by, 6);
}

#[test]
fn refresh_sees_every_append_even_within_one_timestamp_tick() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer =
        Feed::create(FsStore::open(dir.path(), true).expect("store"), seed01()).expect("create");
    writer.append(b"0").expect("append");
    let mut server =
        Feed::open(FsStore::open_read_only(dir.path()).expect("store"), None).expect("open");
    // Appends and refreshes back to back: many land in the same mtime tick and leave the
    // bitfield's size unchanged, so the stamp alone cannot tell them apart.
    for i in 1..300u64 {
        writer.append(format!("{i}").as_bytes()).expect("append");
        assert!(
            server.refresh(SystemTime::now()).expect("refresh"),
            "append {i} missed"
        );
        assert_eq!(server.length(), i + 1);
    }
    // Quiet, then one more append after the margin: seen.
    std::thread::sleep(REFRESH_STAMP_MARGIN * 2);
    assert!(!server.refresh(SystemTime::now()).expect("refresh"));
    assert!(!server.refresh(SystemTime::now()).expect("refresh"));
    writer.append(b"late").expect("append");
    assert!(server.refresh(SystemTime::now()).expect("refresh"));
    assert_eq!(server.length(), 301);
}

#[test]
fn refresh_does_not_reread_an_unchanged_bitfield() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer =
        Feed::create(FsStore::open(dir.path(), true).expect("store"), seed01()).expect("create");
    writer.append(b"first").expect("append");
    let mut server =
        Feed::open(FsStore::open_read_only(dir.path()).expect("store"), None).expect("open");
    let bitfield = dir.path().join("bitfield");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let set_old = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&bitfield)
            .expect("open bitfield")
            .set_modified(old)
            .expect("set mtime");
    };
    set_old();
    assert!(!server.refresh(SystemTime::now()).expect("refresh")); // reads, remembers the stamp
                                                                   // The next append changes the bitfield in place without changing its size; with the
                                                                   // time put back, the stamp is the one already read, so the poll does not read it...
    writer.append(b"second").expect("append");
    set_old();
    assert!(!server.refresh(SystemTime::now()).expect("refresh"));
    assert_eq!(server.length(), 1);
    // ...and as soon as the time moves, it does.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bitfield)
        .expect("open bitfield")
        .set_modified(std::time::SystemTime::now())
        .expect("set mtime");
    assert!(server.refresh(SystemTime::now()).expect("refresh"));
    assert_eq!(server.length(), 2);
}

/// The time a poll is made at is the caller's: a poll made within the margin after the
/// bitfield's modification time reads it again whatever the stamp says, a later one trusts
/// the stamp. (Virtual time: no sleeping, no clock.)
#[test]
fn refresh_trusts_an_unchanged_stamp_only_from_the_margin_after_the_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut writer =
        Feed::create(FsStore::open(dir.path(), true).expect("store"), seed01()).expect("create");
    writer.append(b"first").expect("append");
    let mut server =
        Feed::open(FsStore::open_read_only(dir.path()).expect("store"), None).expect("open");
    let written = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let bitfield = dir.path().join("bitfield");
    let set_mtime = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&bitfield)
            .expect("open bitfield")
            .set_modified(written)
            .expect("set mtime");
    };
    let within = written + REFRESH_STAMP_MARGIN / 2;
    let after = written + REFRESH_STAMP_MARGIN * 2;

    set_mtime();
    assert!(!server.refresh(within).expect("refresh"));
    // An append in place with the same stamp, polled within the margin: read again.
    writer.append(b"second").expect("append");
    set_mtime();
    assert!(server.refresh(within).expect("refresh"));
    assert_eq!(server.length(), 2);

    // Polled after the margin, the same stamp is trusted: the next append in place is
    // not seen...
    assert!(!server.refresh(after).expect("refresh"));
    writer.append(b"third").expect("append");
    set_mtime();
    assert!(!server
        .refresh(after + Duration::from_secs(1))
        .expect("refresh"));
    assert_eq!(server.length(), 2);
    // ...until the stamp changes.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bitfield)
        .expect("open bitfield")
        .set_modified(written + Duration::from_secs(5))
        .expect("set mtime");
    assert!(server
        .refresh(after + Duration::from_secs(10))
        .expect("refresh"));
    assert_eq!(server.length(), 3);
}

#[test]
fn proofs_against_an_earlier_length_verify_with_its_signature() {
    let mut feed = Feed::create(MemStore::new(), seed01()).expect("create");
    let blocks: Vec<Vec<u8>> = (0..40u32).map(|i| format!("p{i}").into_bytes()).collect();
    for b in &blocks {
        feed.append(b).expect("append");
    }
    let signer = RekeyedSigner::new(Ed25519KeyPair::from_seed(&[12; 32]));
    for length in [1u64, 7, 16, 23, 39] {
        let roots = feed.roots_at(length).expect("roots");
        let sig = signer.sign(&merkle::tree_hash(&roots), length);
        let mut replica =
            Feed::create_reader(MemStore::new(), signer.public_key()).expect("reader");
        let mut remote = NodeSet::new();
        for i in 0..length {
            let p = feed
                .proof_at(i, replica.digest(i), &mut remote, false, length)
                .expect("proof");
            assert!(
                p.verified_by == 0 || p.verified_by == 2 * length,
                "length {length}: vb {}",
                p.verified_by
            );
            let s = if p.verified_by > 0 { Some(sig) } else { None };
            replica
                .put(i, Some(&blocks[i as usize]), &p.nodes, s.as_ref())
                .expect("verifies");
        }
        assert_eq!(replica.length(), length);
        assert!(
            feed.proof_at(length, 0, &mut NodeSet::new(), false, length)
                .is_err(),
            "beyond the length"
        );
    }
}

#[test]
fn one_writer_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = FsStore::open(dir.path(), true).expect("first writer");
    let err = FsStore::open(dir.path(), false).expect_err("second writer");
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    // Readers need no lock.
    FsStore::open_read_only(dir.path()).expect("reader");
    drop(writer);
    FsStore::open(dir.path(), false).expect("writer after the first closed");
}

/// What a [`FailingStore`] does on its writes (shared with the test, which keeps a handle
/// while the feed owns the store).
#[derive(Debug, Default)]
struct WritePlan {
    /// Writes that still succeed before one fails; `None`: none fails.
    ok_before_failure: Option<u64>,
    /// Whether every write after the failing one fails too (a disk that stays full).
    sticky: bool,
    /// Whether a write failed already (with `sticky`, all later ones fail).
    failed: bool,
}

type Plan = std::sync::Arc<std::sync::Mutex<WritePlan>>;

fn fail_after(plan: &Plan, ok: u64, sticky: bool) {
    *plan.lock().expect("plan") = WritePlan {
        ok_before_failure: Some(ok),
        sticky,
        failed: false,
    };
}

fn disarm(plan: &Plan) {
    *plan.lock().expect("plan") = WritePlan::default();
}

/// A store whose writes fail with ENOSPC as the plan says: each call that writes counts
/// as one write, and each bitfield page as one (so a commit can fail halfway). Syncs and
/// truncation fail only once the disk is "full" for good.
struct FailingStore<S> {
    inner: S,
    plan: Plan,
}

impl<S: Store> FailingStore<S> {
    fn new(inner: S) -> (Self, Plan) {
        let plan = Plan::default();
        (
            FailingStore {
                inner,
                plan: plan.clone(),
            },
            plan,
        )
    }

    fn full() -> StoreError {
        StoreError::Io {
            file: "<failing store>".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        }
    }

    /// Counts one write; errs when it is the one to fail.
    fn write(&self) -> Result<(), StoreError> {
        let mut plan = self.plan.lock().expect("plan");
        if plan.failed && plan.sticky {
            return Err(Self::full());
        }
        match plan.ok_before_failure {
            Some(0) => {
                plan.ok_before_failure = None;
                plan.failed = true;
                Err(Self::full())
            }
            Some(n) => {
                plan.ok_before_failure = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// For syncs and truncation: fail only on a disk full for good.
    fn other(&self) -> Result<(), StoreError> {
        let plan = self.plan.lock().expect("plan");
        if plan.failed && plan.sticky {
            return Err(Self::full());
        }
        Ok(())
    }
}

impl<S: Store> Store for FailingStore<S> {
    fn read_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.inner.read_key()
    }
    fn write_key(&mut self, key: &[u8; 32]) -> Result<(), StoreError> {
        self.write()?;
        self.inner.write_key(key)
    }
    fn read_secret_key(&self) -> Result<Option<[u8; 64]>, StoreError> {
        self.inner.read_secret_key()
    }
    fn write_secret_key(&mut self, secret: &[u8; 64]) -> Result<(), StoreError> {
        self.write()?;
        self.inner.write_secret_key(secret)
    }
    fn read_data(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        self.inner.read_data(offset, len)
    }
    fn write_data(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.write()?;
        self.inner.write_data(offset, bytes)
    }
    fn read_node(&self, index: u64) -> Result<Option<Node>, StoreError> {
        self.inner.read_node(index)
    }
    fn write_nodes(&mut self, nodes: &[Node]) -> Result<(), StoreError> {
        self.write()?;
        self.inner.write_nodes(nodes)
    }
    fn read_signature(&self, block: u64) -> Result<Option<[u8; 64]>, StoreError> {
        self.inner.read_signature(block)
    }
    fn write_signature(&mut self, block: u64, signature: &[u8; 64]) -> Result<(), StoreError> {
        self.write()?;
        self.inner.write_signature(block, signature)
    }
    fn read_bitfield(&self) -> Result<Vec<(u64, store::Page)>, StoreError> {
        self.inner.read_bitfield()
    }
    fn write_bitfield(&mut self, pages: &[(u64, store::Page)]) -> Result<(), StoreError> {
        // Page by page, so that a failure can leave the first pages written.
        for page in pages {
            self.write()?;
            self.inner.write_bitfield(std::slice::from_ref(page))?;
        }
        Ok(())
    }
    fn truncate(&mut self, byte_length: u64, length: u64) -> Result<(), StoreError> {
        self.other()?;
        self.inner.truncate(byte_length, length)
    }
    fn sync_data(&mut self) -> Result<(), StoreError> {
        self.other()?;
        self.inner.sync_data()
    }
    fn sync_bitfield(&mut self) -> Result<(), StoreError> {
        self.other()?;
        self.inner.sync_bitfield()
    }
}

/// What [`held_count_matches_a_recount`] does to a writer and its replica.
#[derive(Debug, Clone)]
enum HeldOp {
    /// The writer appends this many blocks.
    Append(u8),
    /// The replica downloads a block (picked modulo the writer's length), or only its
    /// proof (hash-only: tree bits, no block bit).
    Download(u64, bool),
    /// The replica defers (or stops deferring) its commits.
    Defer(bool),
    /// The replica writes its deferred pages.
    Flush,
    /// The replica's (`true`) or the writer's store fails after this many writes, and
    /// with `sticky` keeps failing.
    Fail(bool, u8, bool),
    /// Both stores work again.
    Disarm,
    /// The replica (`true`) or the writer is closed and opened again.
    Reopen(bool),
}

fn held_op() -> impl Strategy<Value = HeldOp> {
    prop_oneof![
        3 => (1u8..6).prop_map(HeldOp::Append),
        6 => (any::<u64>(), proptest::bool::weighted(0.2)).prop_map(|(i, h)| HeldOp::Download(i, h)),
        1 => any::<bool>().prop_map(HeldOp::Defer),
        1 => Just(HeldOp::Flush),
        2 => (any::<bool>(), 0u8..4, any::<bool>()).prop_map(|(r, n, s)| HeldOp::Fail(r, n, s)),
        1 => Just(HeldOp::Disarm),
        1 => any::<bool>().prop_map(HeldOp::Reopen),
    ]
}

/// The running count of held blocks equals a recount of the bitfield, for the writer and
/// its replica.
fn assert_held_counted<S: Store>(feed: &Feed<S>) -> Result<(), TestCaseError> {
    prop_assert_eq!(feed.held(), feed.downloaded(0, feed.length()));
    prop_assert_eq!(
        feed.has_all(),
        feed.downloaded(0, feed.length()) == feed.length()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Appends, downloads (sparse, hash-only, deferred), failed and half-failed commits
    /// (rolled back), crash repair and reopening: after each, the held count kept by the
    /// feed is the one a recount gives.
    #[test]
    fn held_count_matches_a_recount(ops in proptest::collection::vec(held_op(), 1..60)) {
        let (source_store, source_plan) = FailingStore::new(MemStore::new());
        let mut source = Feed::create(source_store, Ed25519KeyPair::from_seed(&[8; 32])).expect("create");
        let key = source.key();
        let (replica_store, replica_plan) = FailingStore::new(MemStore::new());
        let mut replica = Feed::create_reader(replica_store, key).expect("reader");
        let mut appended = 0u32;
        for op in ops {
            match op {
                HeldOp::Append(n) => {
                    let blocks: Vec<Vec<u8>> = (0..n)
                        .map(|_| {
                            appended += 1;
                            format!("block {appended}").into_bytes()
                        })
                        .collect();
                    let _ = source.append_batch(&blocks);
                }
                HeldOp::Download(pick, hash_only) => {
                    if source.length() > 0 {
                        let i = pick % source.length();
                        let proof = source.proof(i, replica.digest(i), &mut NodeSet::new(), hash_only);
                        let value = source.get(i).ok().flatten();
                        if let (Ok(p), Some(value)) = (proof, value) {
                            let sig = match p.verified_by {
                                0 => None,
                                v => source.signature_at(v / 2).ok().flatten(),
                            };
                            let value = (!hash_only).then_some(value.as_slice());
                            let _ = replica.put(i, value, &p.nodes, sig.as_ref());
                        }
                    }
                }
                HeldOp::Defer(defer) => replica.set_deferred_commit(defer),
                HeldOp::Flush => {
                    let _ = replica.flush();
                }
                HeldOp::Fail(on_replica, ok, sticky) => {
                    fail_after(if on_replica { &replica_plan } else { &source_plan }, u64::from(ok), sticky);
                }
                HeldOp::Disarm => {
                    disarm(&replica_plan);
                    disarm(&source_plan);
                }
                HeldOp::Reopen(which_replica) => {
                    disarm(&replica_plan);
                    disarm(&source_plan);
                    if which_replica {
                        let _ = replica.flush();
                        replica = Feed::open(into_store(replica), Some(key)).expect("reopen replica");
                    } else {
                        source = Feed::open(into_store(source), Some(key)).expect("reopen writer");
                    }
                }
            }
            assert_held_counted(&source)?;
            assert_held_counted(&replica)?;
        }
    }
}

/// The running count follows a length learned before the blocks under it: a replica that
/// first holds nothing of a long feed, then blocks at both ends, then the rest.
#[test]
fn held_count_follows_sparse_downloads_and_growth() {
    let mut source =
        Feed::create(MemStore::new(), Ed25519KeyPair::from_seed(&[9; 32])).expect("create");
    let blocks: Vec<Vec<u8>> = (0..40u32).map(|i| vec![i as u8; 3]).collect();
    source.append_batch(&blocks[..30]).expect("append");
    let mut replica = Feed::create_reader(MemStore::new(), source.key()).expect("reader");
    let download = |replica: &mut Feed<MemStore>, source: &Feed<MemStore>, i: u64| {
        let p = source
            .proof(i, replica.digest(i), &mut NodeSet::new(), false)
            .expect("proof");
        let sig = source.signature_at(p.verified_by / 2).expect("sig");
        replica
            .put(i, Some(&blocks[i as usize]), &p.nodes, sig.as_ref())
            .expect("verifies");
    };
    download(&mut replica, &source, 29);
    assert_eq!((replica.length(), replica.held()), (30, 1));
    download(&mut replica, &source, 0);
    download(&mut replica, &source, 0);
    assert_eq!(replica.held(), 2, "a block stored twice counts once");
    source.append_batch(&blocks[30..]).expect("append");
    download(&mut replica, &source, 35);
    assert_eq!((replica.length(), replica.held()), (40, 3));
    for i in 0..40 {
        if !replica.has(i) {
            download(&mut replica, &source, i);
        }
    }
    assert_eq!(replica.held(), 40);
    assert!(replica.has_all());
    assert_eq!(source.held(), 40);
}

fn is_disk_full(err: &FeedError) -> bool {
    matches!(err, FeedError::Store(StoreError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC))
}

/// Opens the feed in `dir` as a second, read-only handle (what a restart would find) and
/// checks that `feed` says the same: length, bytes, roots, every block up to a bit past
/// the length, and, with `same_pages`, the bitfield bytes themselves.
fn assert_matches_disk<S: Store>(feed: &Feed<S>, dir: &std::path::Path, same_pages: bool) {
    let disk = Feed::open(FsStore::open_read_only(dir).expect("reader"), None).expect("reopen");
    assert_eq!(feed.length(), disk.length(), "length");
    assert_eq!(feed.byte_length(), disk.byte_length(), "byte length");
    assert_eq!(feed.roots(), disk.roots(), "roots");
    assert_eq!(
        feed.downloaded(0, feed.length()),
        disk.downloaded(0, disk.length())
    );
    for i in 0..feed.length() + 8 {
        assert_eq!(
            feed.get(i).expect("memory"),
            disk.get(i).expect("disk"),
            "block {i}"
        );
    }
    if same_pages {
        assert_eq!(
            feed.bitfield().nonzero_pages(),
            disk.bitfield().nonzero_pages(),
            "bitfield pages"
        );
    }
}

#[test]
fn a_failed_append_commit_leaves_memory_as_on_disk_and_the_next_append_persists() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, plan) = FailingStore::new(FsStore::open(dir.path(), true).expect("store"));
    let mut feed = Feed::create(store, seed01()).expect("create");
    feed.append_batch(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .expect("append");
    // Data, nodes and signature are written; the bitfield page, which commits them, is
    // not (ENOSPC).
    fail_after(&plan, 3, false);
    let err = feed.append(b"lost").expect_err("disk full");
    assert!(is_disk_full(&err), "{err}");
    assert_eq!(feed.length(), 3);
    assert!(!feed.has(3));
    assert!(!feed.bitfield().is_dirty(), "nothing left to write");
    assert_matches_disk(&feed, dir.path(), true);
    // The disk has room again: the next append takes the failed one's place and persists.
    assert_eq!(feed.append(b"kept").expect("append"), 4);
    assert_matches_disk(&feed, dir.path(), true);
    let store = feed.into_store().inner;
    let dir_path = store.dir().to_path_buf();
    drop(store);
    let feed = Feed::open(FsStore::open(&dir_path, false).expect("reopen"), None).expect("open");
    assert_eq!(feed.length(), 4);
    assert_eq!(feed.get(3).expect("get"), Some(b"kept".to_vec()));
    assert!(feed.signature_at(4).expect("sig").is_some());
}

/// The block and node caches never serve what a failed append wrote: the next append
/// at that index (here too large for the block cache) is what is read and proven. Two
/// guards keep it so (the rollback clears the caches; a block not cached evicts its
/// index's old entry): removing both fails this test, `cache::tests` covers the second.
#[test]
fn after_a_failed_append_the_caches_serve_the_block_that_took_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, plan) = FailingStore::new(FsStore::open(dir.path(), true).expect("store"));
    let mut feed = Feed::create(store, seed01()).expect("create");
    feed.append_batch(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .expect("append");
    fail_after(&plan, 3, false);
    feed.append(b"lost").expect_err("disk full");
    let kept = vec![7u8; super::cache::BLOCK_MAX + 1];
    assert_eq!(feed.append(&kept).expect("append"), 4);
    assert_eq!(feed.get_for_upload(3).expect("read"), Some(kept.clone()));
    let leaf = feed.node(6).expect("node").expect("held");
    assert_eq!(leaf, Node::leaf(3, &kept));
    // A reader verifies the block with the writer's proof.
    let mut reader = Feed::create_reader(MemStore::new(), feed.key()).expect("reader");
    let proof = feed.proof(3, 0, &mut NodeSet::new(), false).expect("proof");
    let sig = feed.signature_at(proof.verified_by / 2).expect("sig");
    reader
        .put(3, Some(&kept), &proof.nodes, sig.as_ref())
        .expect("verifies");
}

/// A batch whose bits span two pages, on a disk that fills after the first page.
fn fail_a_commit_halfway(sticky: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, plan) = FailingStore::new(FsStore::open(dir.path(), true).expect("store"));
    let mut feed = Feed::create(store, seed01()).expect("create");
    // Block 8192 is the first of page 1.
    let first: Vec<Vec<u8>> = (0..8190u32).map(|i| vec![i as u8]).collect();
    feed.append_batch(&first).expect("append");
    let before = feed.bitfield().nonzero_pages();
    let batch: Vec<Vec<u8>> = (0..4u8).map(|i| vec![b'x', i]).collect();
    // Data, nodes, signature, page 0: written. Page 1: fails.
    fail_after(&plan, 4, sticky);
    let err = feed.append_batch(&batch).expect_err("disk full");
    assert!(is_disk_full(&err), "{err}");
    assert_eq!(feed.length(), 8190);
    assert_eq!(feed.downloaded(0, 9000), 8190);
    assert_eq!(feed.bitfield().nonzero_pages(), before, "memory is back");
    if sticky {
        // Page 0 on disk keeps the new bits (writing it back failed), yet a restart
        // recovers the same feed; the pages stay dirty for the next commit.
        assert!(feed.bitfield().is_dirty());
        assert_matches_disk(&feed, dir.path(), false);
    } else {
        // Page 0 was written back as it was.
        assert!(!feed.bitfield().is_dirty());
        assert_matches_disk(&feed, dir.path(), true);
        assert!(feed.signature_at(8194).expect("sig").is_none(), "trimmed");
    }
    disarm(&plan);
    assert_eq!(feed.append_batch(&batch).expect("append"), 8194);
    assert!(!feed.bitfield().is_dirty());
    assert_matches_disk(&feed, dir.path(), true);
}

#[test]
fn a_commit_failing_halfway_is_written_back() {
    fail_a_commit_halfway(false);
}

#[test]
fn a_commit_failing_halfway_on_a_full_disk_is_retried_by_the_next() {
    fail_a_commit_halfway(true);
}

#[test]
fn a_failed_flush_of_downloads_forgets_them_until_they_are_stored_again() {
    let mut source = Feed::create(MemStore::new(), seed01()).expect("create");
    let blocks: Vec<Vec<u8>> = (0..20u32).map(|i| format!("d{i}").into_bytes()).collect();
    source.append_batch(&blocks[..10]).expect("append");
    source.append_batch(&blocks[10..]).expect("append");
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, plan) = FailingStore::new(FsStore::open(dir.path(), true).expect("store"));
    let mut clone = Feed::create_reader(store, source.key()).expect("reader");
    clone.set_deferred_commit(true);
    // Blocks `range` proven against the source at `length`.
    let put = |clone: &mut Feed<FailingStore<FsStore>>, range: std::ops::Range<u64>, length| {
        let mut remote = NodeSet::new();
        for i in range {
            let p = source
                .proof_at(i, clone.digest(i), &mut remote, false, length)
                .expect("proof");
            let sig = source.signature_at(p.verified_by / 2).expect("sig");
            clone
                .put(i, Some(&blocks[i as usize]), &p.nodes, sig.as_ref())
                .expect("verifies");
        }
    };
    put(&mut clone, 0..5, 10);
    clone.flush().expect("flush");
    assert_eq!(clone.length(), 10);
    put(&mut clone, 5..12, 20);
    assert_eq!(clone.length(), 20);
    assert_eq!(clone.downloaded(0, 20), 12);
    fail_after(&plan, 0, false);
    let err = clone.flush().expect_err("disk full");
    assert!(is_disk_full(&err), "{err}");
    // Back to what the first flush committed.
    assert_eq!(clone.length(), 10);
    assert_eq!(clone.downloaded(0, 20), 5);
    assert!(!clone.has(7));
    assert_eq!(clone.get(7).expect("get"), None);
    assert_matches_disk(&clone, dir.path(), true);
    // Downloaded again, they persist.
    put(&mut clone, 5..12, 20);
    clone.flush().expect("flush");
    assert_eq!(clone.length(), 20);
    assert_eq!(clone.downloaded(0, 20), 12);
    assert_matches_disk(&clone, dir.path(), true);
}

/// Writes one byte at `offset` of `file` in the feed directory `dir` (a sparse file when
/// far past its end).
fn poke(dir: &std::path::Path, file: &str, offset: u64) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(file))
        .expect("open")
        .write_all_at(&[0xff], offset)
        .expect("poke");
}

/// Runs `work` on a thread and fails if it has not finished within 30 s: for a test
/// whose bug is an hours-long loop (a hang, not slowness, is what it detects).
fn finishes<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("did not finish within 30 s")
}

#[test]
fn a_sparse_bitfield_of_a_terabyte_opens_with_the_pages_the_tree_supports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut feed =
        Feed::create(FsStore::open(dir.path(), true).expect("store"), seed01()).expect("create");
    feed.append_batch(&[b"one".to_vec(), b"two".to_vec(), b"three".to_vec()])
        .expect("append");
    drop(feed);
    poke(dir.path(), "bitfield", 1 << 40);
    let store = FsStore::open(dir.path(), false).expect("store");
    // One page: the tree's 5 nodes fit in page 0; the rest is never read.
    let pages = store.read_bitfield().expect("read");
    assert_eq!(pages.len(), 1);
    let feed = Feed::open(store, None).expect("open");
    assert_eq!(feed.length(), 3);
    assert_eq!(feed.get(2).expect("get"), Some(b"three".to_vec()));
    assert_eq!(feed.bitfield().allocated_pages(), 1);
}

#[test]
fn a_signed_length_of_2_pow_48_costs_nothing_to_count() {
    // A malicious seller signs a tree of 2^48 blocks and proves block 0 against it: the
    // proof is 48 made-up siblings on the leftmost path and one signature.
    let seller = seed01();
    let value = b"x";
    let mut top = Node::leaf(0, value);
    let mut proof = Vec::new();
    for depth in 0..48u64 {
        let sibling = Node {
            index: 3 * (1u64 << depth) - 1,
            hash: [depth as u8; 32],
            size: 0,
        };
        top = Node::parent_of(&top, &sibling);
        proof.push(sibling);
    }
    let length = feed::MAX_LENGTH;
    assert_eq!(top.index, length - 1, "the single root of 2^48 blocks");
    let signature = Signer::sign(&seller, &merkle::tree_hash(&[top]), length);
    let mut buyer = Feed::create_reader(MemStore::new(), seller.public_key()).expect("reader");
    let outcome = buyer
        .put(0, Some(value), &proof, Some(&signature))
        .expect("verifies");
    assert_eq!(outcome.new_length, Some(length));
    let (all, held) = finishes(move || (buyer.has_all(), buyer.downloaded(0, buyer.length())));
    assert!(!all);
    assert_eq!(held, 1);
}

#[test]
fn counting_blocks_visits_only_allocated_pages() {
    let mut bf = bitfield::Bitfield::new();
    for i in [0u64, 7, 8, 8191, 8192, 20_000, 1 << 40] {
        bf.set_block(i, true);
    }
    let counts = finishes(move || {
        (
            bf.count_blocks(0, 1 << 48),
            bf.count_blocks(1, 8192),
            bf.count_blocks(8, 8193),
            bf.count_blocks(8191, 8192),
            bf.count_blocks(9, 8191),
            bf.count_blocks(20_000, 20_000),
            bf.count_blocks(100, 50),
            bf.count_blocks(1 << 40, (1 << 40) + 1),
        )
    });
    assert_eq!(counts, (7, 3, 3, 1, 0, 0, 0, 1));
}

/// A writer's feed of ten 10-byte blocks in `dir`, each signed, closed; returns its key.
fn ten_blocks(dir: &std::path::Path) -> [u8; 32] {
    let mut feed =
        Feed::create(FsStore::open(dir, true).expect("store"), seed01()).expect("create");
    // One append each: a batch is signed only at its end (as in hypercore@9).
    for i in 0..10 {
        feed.append(format!("block {i:04}").as_bytes())
            .expect("append");
    }
    feed.key()
}

/// After a crash repair to `length` blocks: the writer holds exactly those (no bit, data
/// or tree node beyond), appends after them, and a reader opening the files afterwards
/// verifies every block.
fn assert_repaired(dir: &std::path::Path, key: [u8; 32], length: u64) {
    let mut feed = Feed::open(FsStore::open(dir, false).expect("store"), Some(key)).expect("open");
    assert_eq!(feed.length(), length);
    assert_eq!(feed.held(), length);
    assert!(!feed.has(length), "block {length} is still marked held");
    assert_eq!(feed.get(length).expect("get"), None);
    // The files were trimmed to the recovered prefix (10 bytes a block, 40 per tree node
    // after the 32-byte header).
    let size = |f: &str| std::fs::metadata(dir.join(f)).expect("stat").len();
    assert_eq!(size("data"), 10 * length, "data not trimmed");
    assert_eq!(feed.byte_length(), 10 * length);
    assert!(size("tree") <= 32 + 40 * 2 * length, "tree not trimmed");
    feed.append(b"after 0000").expect("append after repair");
    drop(feed);
    let reader =
        Feed::open(FsStore::open_read_only(dir).expect("store"), Some(key)).expect("reopen");
    assert_eq!(reader.length(), length + 1);
    assert_eq!(
        reader.get(length).expect("get"),
        Some(b"after 0000".to_vec())
    );
    let mut replica = Feed::create_reader(MemStore::new(), key).expect("replica");
    for i in 0..=length {
        let p = reader
            .proof(i, replica.digest(i), &mut NodeSet::new(), false)
            .expect("proof");
        let sig = match p.verified_by {
            0 => None,
            v => reader.signature_at(v / 2).expect("signature"),
        };
        let value = reader.get(i).expect("get").expect("held");
        replica
            .put(i, Some(&value), &p.nodes, sig.as_ref())
            .expect("every block verifies");
    }
}

/// A crash after the data, tree and bitfield of the last append but before its signature:
/// the writer reopens at the last signed length and drops the unsigned block.
#[test]
fn crash_repair_of_a_missing_signature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ten_blocks(dir.path());
    let sigs = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("signatures"))
        .expect("open");
    sigs.set_len(32 + 64 * 9).expect("truncate");
    drop(sigs);
    assert_repaired(dir.path(), key, 9);
}

/// A torn signature (the last one's bytes not what was signed): the same repair.
#[test]
fn crash_repair_of_a_corrupt_signature() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ten_blocks(dir.path());
    poke(dir.path(), "signatures", 32 + 64 * 9 + 5);
    assert_repaired(dir.path(), key, 9);
}

/// A tree file cut short (its last nodes lost): the writer reopens at the longest length
/// whose roots are all stored and signed.
#[test]
fn crash_repair_of_a_truncated_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ten_blocks(dir.path());
    // Nodes 0..=15 kept: the roots of length 8 (node 7) survive, those of 9 and 10 not.
    let tree = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("tree"))
        .expect("open");
    tree.set_len(32 + 40 * 16).expect("truncate");
    drop(tree);
    assert_repaired(dir.path(), key, 8);
}

/// A feed checks the signature over the roots unless a benchmark's light buyer says
/// otherwise, and even then a proof without a signature is refused.
#[test]
fn signature_checks_are_skipped_only_when_asked() {
    let mut source = Feed::create(MemStore::new(), seed01()).expect("create");
    let blocks: Vec<Vec<u8>> = (0..11u32).map(|i| vec![i as u8; 10 + i as usize]).collect();
    source.append_batch(&blocks).expect("append");
    let p = source
        .proof(6, 0, &mut NodeSet::new(), false)
        .expect("proof");
    let mut sig = source
        .signature_at(p.verified_by / 2)
        .expect("sig")
        .expect("present");
    sig[0] ^= 1;
    let mut checked = Feed::create_reader(MemStore::new(), source.key()).expect("replica");
    let err = checked
        .put(6, Some(&blocks[6]), &p.nodes, Some(&sig))
        .expect_err("bad signature");
    assert!(
        matches!(err, FeedError::Verify(VerifyError::BadSignature)),
        "{err}"
    );
    assert!(!checked.has(6));

    let mut light = Feed::create_reader(MemStore::new(), source.key()).expect("replica");
    light.skip_signature_checks_for_bench();
    let err = light
        .put(6, Some(&blocks[6]), &p.nodes, None)
        .expect_err("no signature");
    assert!(matches!(err, FeedError::Verify(_)), "{err}");
    light
        .put(6, Some(&blocks[6]), &p.nodes, Some(&sig))
        .expect("taken on trust");
    assert!(light.has(6));
    assert_eq!(light.length(), p.verified_by / 2);
}
