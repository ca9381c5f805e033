//! Test helper for the crash test: appends deterministic blocks to a feed forever,
//! printing each committed length, until it is killed.
//!
//! Usage: `crash_appender DIR SEED_HEX (process|power)`. Block `i` is [`dazaar_tests::crash_block`]`(i)`.

use std::io::Write;

use dazaar::crypto::Ed25519KeyPair;
use dazaar::storage::{Durability, Feed, FsStore};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(seed), Some(mode)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: crash_appender DIR SEED_HEX (process|power)");
        std::process::exit(2);
    };
    let seed: [u8; 32] = match hex::decode(seed).ok().and_then(|s| s.try_into().ok()) {
        Some(s) => s,
        None => {
            eprintln!("bad seed");
            std::process::exit(2);
        }
    };
    let store = match FsStore::open(dir, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let pair = Ed25519KeyPair::from_seed(&seed);
    let mut feed = match Feed::open(store, Some(pair.public_key())) {
        Ok(f) => f,
        Err(dazaar::storage::FeedError::NoFeed) => {
            match FsStore::open(dir, true).map(|s| Feed::create(s, pair)) {
                Ok(Ok(f)) => f,
                _ => std::process::exit(1),
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    if mode == "power" {
        feed.set_durability(Durability::Power);
    }
    let mut out = std::io::stdout();
    let mut round = 0u64;
    loop {
        let start = feed.length();
        // Alternate single appends and batches of varied sizes.
        let n = [1u64, 7, 1, 64, 3, 1, 200][(round % 7) as usize];
        let blocks: Vec<Vec<u8>> = (start..start + n).map(dazaar_tests::crash_block).collect();
        let result = if n == 1 {
            feed.append(&blocks[0])
        } else {
            feed.append_batch(&blocks)
        };
        match result {
            Ok(len) => {
                let _ = writeln!(out, "{len}");
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("append failed: {e}");
                std::process::exit(1);
            }
        }
        round += 1;
    }
}
