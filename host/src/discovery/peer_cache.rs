//! Addresses where a seller was found before, remembered per seller in
//! `<data_dir>/peers/<sellerHex>.json` (`{"peers":["IP:PORT", ...]}`, newest first, at most
//! [`MAX_CACHED`]) so the next start can dial them before any lookup answers.
//!
//! The file is a hint, not a trust anchor: every address is still checked by handshake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Most addresses remembered per seller.
pub const MAX_CACHED: usize = 8;

/// Largest cache file read (a bigger one is ignored).
const MAX_FILE: u64 = 16 * 1024;

/// The cache file of `seller_key`.
pub fn path(data_dir: &Path, seller_key: &[u8; 32]) -> PathBuf {
    data_dir
        .join("peers")
        .join(format!("{}.json", hex::encode(seller_key)))
}

/// The remembered addresses (newest first); nothing when the file is missing or bad.
pub fn load(data_dir: &Path, seller_key: &[u8; 32]) -> Vec<SocketAddr> {
    let p = path(data_dir, seller_key);
    let too_big = std::fs::metadata(&p).map_or(true, |m| m.len() > MAX_FILE);
    if too_big {
        return Vec::new();
    }
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        tracing::debug!(path = %p.display(), "ignoring a malformed peer cache");
        return Vec::new();
    };
    value
        .get("peers")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str()?.parse::<SocketAddr>().ok())
                .take(MAX_CACHED)
                .collect()
        })
        .unwrap_or_default()
}

/// Puts `addr` first in the cache of `seller_key` (keeping at most [`MAX_CACHED`]).
pub fn remember(data_dir: &Path, seller_key: &[u8; 32], addr: SocketAddr) -> std::io::Result<()> {
    let mut peers = load(data_dir, seller_key);
    peers.retain(|a| *a != addr);
    peers.insert(0, addr);
    peers.truncate(MAX_CACHED);
    let p = path(data_dir, seller_key);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let list: Vec<String> = peers.iter().map(ToString::to_string).collect();
    let text = serde_json::json!({ "peers": list }).to_string();
    crate::fs_atomic::write_file_atomic(&p, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let key = [7u8; 32];
        assert!(load(dir.path(), &key).is_empty());
        for port in 1..=20u16 {
            remember(dir.path(), &key, SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        }
        remember(dir.path(), &key, SocketAddr::from(([127, 0, 0, 1], 15))).unwrap();
        let got = load(dir.path(), &key);
        assert_eq!(got.len(), MAX_CACHED);
        assert_eq!(got[0].port(), 15);
        assert_eq!(got[1].port(), 20);
        assert_eq!(got.iter().filter(|a| a.port() == 15).count(), 1);
    }

    #[test]
    fn garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let key = [1u8; 32];
        let p = path(dir.path(), &key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "{\"peers\": [\"not an address\", 5, \"127.0.0.1:9\"]}").unwrap();
        assert_eq!(load(dir.path(), &key), vec!["127.0.0.1:9".parse().unwrap()]);
        std::fs::write(&p, "nonsense").unwrap();
        assert!(load(dir.path(), &key).is_empty());
    }
}
