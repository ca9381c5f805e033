//! Revoked and burnt buyers.
//!
//! A seller cuts a buyer off with `dazaar revoke`: the buyer is invalid from the next
//! revalidation on (at most one revalidation period later), whatever its payments say.
//! `dazaar burn` also *publishes* that buyer's rekeyed feed key pair: once its secret key
//! is public, anyone can sign anything under that key, so copies the buyer relays no
//! longer prove they came from the seller. The burnt pairs are published in the seller's
//! Dazaar card (`dazaar card` writes `"burnt": [{"buyer", "feedKey", "secretKey"}]`, hex),
//! the document a seller already makes public to advertise the product.
//!
//! The list lives in `<data_dir>/revocations.json` (written atomically, mode 0600), keyed
//! by seller key, so a running `dazaar sell` picks up changes made by another process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::identity::Identity;
use crate::card::BurntKey;
use crate::fs_atomic::write_file_atomic;

/// File name of the revocation list inside a data directory.
pub const REVOCATIONS_FILE: &str = "revocations.json";

/// The largest revocation file read (bounded; about 10,000 entries).
const MAX_FILE: u64 = 4 * 1024 * 1024;

/// One revoked buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When it was revoked (ms since the epoch).
    pub at_ms: u64,
    /// Whether its rekeyed key pair is published.
    pub burnt: bool,
}

/// The revocation file: seller key (hex) → buyer key (hex) → revocation.
pub type RevocationMap = BTreeMap<String, BTreeMap<String, Revocation>>;

/// Reading or writing the revocation list failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationError {
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not our format.
    #[error("{path}: not a revocation list: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Reads the revocation file of `data_dir` (empty when absent).
pub fn load(data_dir: &Path) -> Result<RevocationMap, RevocationError> {
    let path = data_dir.join(REVOCATIONS_FILE);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RevocationMap::new()),
        Err(source) => return Err(RevocationError::Io { path, source }),
    };
    if meta.len() > MAX_FILE {
        return Err(RevocationError::Malformed {
            path,
            reason: "too large".into(),
        });
    }
    let text = std::fs::read(&path).map_err(|source| RevocationError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| RevocationError::Malformed {
        path,
        reason: e.to_string(),
    })
}

/// Revokes (and, with `burn`, burns) `buyer` for the product sold under `seller`.
pub fn revoke(
    data_dir: &Path,
    seller: &[u8; 32],
    buyer: &[u8; 32],
    burn: bool,
) -> Result<(), RevocationError> {
    let mut map = load(data_dir)?;
    let at_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let entry = map
        .entry(hex::encode(seller))
        .or_default()
        .entry(hex::encode(buyer))
        .or_insert(Revocation {
            at_ms,
            burnt: false,
        });
    entry.burnt |= burn;
    let path = data_dir.join(REVOCATIONS_FILE);
    std::fs::create_dir_all(data_dir).map_err(|source| RevocationError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let text = serde_json::to_vec_pretty(&map).map_err(|e| RevocationError::Malformed {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    write_file_atomic(&path, &text).map_err(|source| RevocationError::Io { path, source })
}

/// The burnt buyers of the product sold under `identity` with feed `feed_key`, with their
/// rekeyed key pairs, for the product's card.
pub fn burnt_keys(
    data_dir: &Path,
    identity: &Identity,
    feed_key: &[u8; 32],
) -> Result<Vec<BurntKey>, RevocationError> {
    let seller = identity.seller_key_pair(feed_key).public_key();
    let map = load(data_dir)?;
    let Some(buyers) = map.get(&hex::encode(seller)) else {
        return Ok(Vec::new());
    };
    Ok(buyers
        .iter()
        .filter(|(_, r)| r.burnt)
        .filter_map(|(buyer, _)| {
            // A key that is not 64 hex digits was not written by `revoke`: skipped.
            let buyer: [u8; 32] = hex::decode(buyer).ok()?.try_into().ok()?;
            let pair = identity.rekeyed_key_pair(feed_key, &buyer);
            Some(BurntKey {
                buyer,
                feed_key: pair.public_key(),
                secret_key: pair.secret_key().to_vec(),
            })
        })
        .collect())
}

/// How much older than a read the file's modification time must be for the list to trust
/// an unchanged stamp: file systems keep times in coarse ticks, so two writes within one
/// tick can leave the same time (the rule [`crate::storage::Feed::refresh`] uses too).
pub const STAMP_MARGIN: Duration = Duration::from_millis(100);

/// What identifies one version of the revocation file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: SystemTime,
    /// Atomic writes replace the file: a new inode (unless the number is reused at once).
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            len: meta.len(),
            modified: meta.modified().ok()?,
            inode: meta.ino(),
        })
    }
}

#[derive(Debug, Default)]
struct ListState {
    /// The stamp of the file last read and the time of that read (`None`: no file).
    read: Option<(Option<FileStamp>, SystemTime)>,
    revoked: BTreeMap<String, Revocation>,
}

/// The revoked buyers of one product, re-read from disk when the file changes.
#[derive(Debug)]
pub struct RevocationList {
    data_dir: PathBuf,
    seller: String,
    state: Mutex<ListState>,
}

impl RevocationList {
    /// The list for the product sold under `seller` in `data_dir`.
    pub fn new(data_dir: &Path, seller: &[u8; 32]) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            seller: hex::encode(seller),
            state: Mutex::new(ListState::default()),
        }
    }

    /// Whether `buyer` is revoked. A file that cannot be read keeps the last good list
    /// (and is logged): revocations already seen stay in force.
    pub fn is_revoked(&self, buyer: &[u8; 32]) -> bool {
        self.is_revoked_at(buyer, SystemTime::now())
    }

    /// [`is_revoked`](Self::is_revoked), read at wall-clock time `now` (taken before the
    /// call). The file is read again unless its stamp (size, modification time, inode) is
    /// the one last read *and* that modification lay [`STAMP_MARGIN`] before the last
    /// read: a second revocation written within the same time tick is not missed.
    pub fn is_revoked_at(&self, buyer: &[u8; 32], now: SystemTime) -> bool {
        let stamp = FileStamp::of(&self.data_dir.join(REVOCATIONS_FILE));
        let mut state = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let unchanged = match (&state.read, stamp) {
            (Some((seen, read_at)), Some(current)) => {
                *seen == Some(current) && current.modified + STAMP_MARGIN <= *read_at
            }
            (Some((None, _)), None) => true,
            _ => false,
        };
        if !unchanged {
            match load(&self.data_dir) {
                Ok(mut map) => {
                    state.revoked = map.remove(&self.seller).unwrap_or_default();
                    state.read = Some((stamp, now));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the revocation list; keeping the last one")
                }
            }
        }
        state.revoked.contains_key(&hex::encode(buyer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoke_is_seen_by_a_running_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let list = RevocationList::new(dir.path(), &[1; 32]);
        assert!(!list.is_revoked(&[2; 32]));
        revoke(dir.path(), &[1; 32], &[2; 32], false).expect("revoke");
        assert!(list.is_revoked(&[2; 32]));
        assert!(!list.is_revoked(&[3; 32]));
        // Another product's list is separate.
        assert!(!RevocationList::new(dir.path(), &[9; 32]).is_revoked(&[2; 32]));
        revoke(dir.path(), &[1; 32], &[2; 32], true).expect("burn");
        let map = load(dir.path()).expect("load");
        assert!(map[&hex::encode([1u8; 32])][&hex::encode([2u8; 32])].burnt);
    }

    /// Two revocations written within one modification-time tick (here: the same time,
    /// the same size, the same inode) are both seen: an mtime-only check kept the first
    /// list. Fails with the stamp margin removed.
    #[test]
    fn two_revocations_within_one_mtime_tick() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(REVOCATIONS_FILE);
        let seller = [1u8; 32];
        let list = RevocationList::new(dir.path(), &seller);
        let write = |buyer: [u8; 32]| {
            let mut map = RevocationMap::new();
            map.entry(hex::encode(seller)).or_default().insert(
                hex::encode(buyer),
                Revocation {
                    at_ms: 1,
                    burnt: false,
                },
            );
            // In place: keeps the inode, as a write by another tool may.
            std::fs::write(&path, serde_json::to_vec(&map).expect("json")).expect("write");
        };
        let set_mtime = |t: SystemTime| {
            let file = std::fs::File::options()
                .write(true)
                .open(&path)
                .expect("open");
            file.set_modified(t).expect("set mtime");
        };
        write([2; 32]);
        let t0 = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert!(list.is_revoked_at(&[2; 32], t0 + Duration::from_millis(10)));
        // The second write lands in the same tick: same size, same time.
        write([3; 32]);
        set_mtime(t0);
        assert!(list.is_revoked_at(&[3; 32], t0 + Duration::from_millis(20)));
        assert!(!list.is_revoked_at(&[2; 32], t0 + Duration::from_millis(20)));
        // Once the stamp is old enough, an unchanged file is not read again: a change
        // that keeps the stamp (not something a real write does) is then not seen.
        let later = t0 + STAMP_MARGIN + Duration::from_millis(1);
        assert!(list.is_revoked_at(&[3; 32], later));
        write([4; 32]);
        set_mtime(t0);
        assert!(!list.is_revoked_at(&[4; 32], later + Duration::from_secs(1)));
    }
}
