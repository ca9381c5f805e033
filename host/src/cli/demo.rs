//! `dazaar demo`: the README's main job, narrated on the terminal.
//!
//! For now a feed round trip (the market's sale replaces it once seller and buyer
//! exist): a seller's feed on disk, a stream of appends, a replica that receives each
//! block with its proof and verifies it against the signed tree, and a tampered proof
//! that is refused.

use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use dazaar::crypto::Ed25519KeyPair;
use dazaar::storage::{Feed, FsStore, NodeSet};

/// Runs the demo; exits non-zero if any step fails.
pub fn run() -> Result<ExitCode> {
    let tmp = tempdir()?;
    let seller_dir = tmp.join("seller-feed");
    let replica_dir = tmp.join("replica");
    println!("dazaar demo: a feed round trip in {}", tmp.display());

    let mut feed = Feed::create(
        FsStore::open(&seller_dir, true)?,
        Ed25519KeyPair::generate(),
    )?;
    println!("1. created a feed, key {}", hex::encode(feed.key()));
    let ticks: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("BTC/USD tick {i}: {}", 40000 + (i * 37) % 997).into_bytes())
        .collect();
    feed.append_batch(&ticks[..500])?;
    for t in &ticks[500..] {
        feed.append(t)?;
    }
    feed.sync()?;
    println!(
        "2. appended {} blocks ({} bytes); tree hash {}",
        feed.length(),
        feed.byte_length(),
        hex::encode(&feed.tree_hash()[..8])
    );

    let mut replica = Feed::create_reader(FsStore::open(&replica_dir, true)?, feed.key())?;
    let mut remote = NodeSet::new();
    for i in 0..feed.length() {
        let proof = feed.proof(i, replica.digest(i), &mut remote, false)?;
        let sig = if proof.verified_by > 0 {
            feed.signature_at(proof.verified_by / 2)?
        } else {
            None
        };
        let value = feed.get(i)?.context("seller lacks a block")?;
        replica.put(i, Some(&value), &proof.nodes, sig.as_ref())?;
    }
    ensure!(
        replica.has_all() && replica.tree_hash() == feed.tree_hash(),
        "replica differs"
    );
    println!(
        "3. a replica holding only the key verified and stored all {} blocks",
        replica.length()
    );

    feed.append(b"one more tick")?;
    let last = feed.length() - 1;
    let proof = feed.proof(last, replica.digest(last), &mut remote, false)?;
    let sig = feed.signature_at(proof.verified_by / 2)?;
    let mut forged = b"one more tick".to_vec();
    forged[0] ^= 1;
    ensure!(
        replica
            .put(last, Some(&forged), &proof.nodes, sig.as_ref())
            .is_err(),
        "forged block accepted"
    );
    println!("4. a forged live block was refused; nothing was stored");
    replica.put(last, Some(b"one more tick"), &proof.nodes, sig.as_ref())?;
    ensure!(
        replica.get(last)?.as_deref() == Some(&b"one more tick"[..]),
        "live block missing"
    );
    println!(
        "5. the genuine live block verified; replica length {}",
        replica.length()
    );
    let _ = std::fs::remove_dir_all(&tmp);
    println!("demo finished: ok");
    Ok(ExitCode::SUCCESS)
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("dazaar-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
