//! Where a feed keeps its bytes: the [`Store`] trait and its two backends,
//! [`MemStore`] and [`FsStore`].
//!
//! Both keep the hypercore v9 layout (`key`, `secret_key`, `data`, `tree`, `signatures`,
//! `bitfield`; WIRE.md §3): the file-system store writes exactly the files JS
//! `hypercore@9` with `random-access-file` writes, so either implementation can open a
//! feed directory written by the other.
//!
//! A store does no verification and keeps no invariants: [`super::Feed`] decides what is
//! written, in which order, and verifies what is read.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::bitfield::PAGE_SIZE;
use super::merkle::Node;

/// Size of the header at the start of `tree`, `signatures` and `bitfield`.
pub const HEADER_LEN: u64 = 32;
/// Size of one `tree` entry: hash and u64be size.
pub const NODE_LEN: u64 = 40;
/// Size of one `signatures` entry.
pub const SIGNATURE_LEN: u64 = 64;

/// One bitfield page as stored.
pub type Page = Box<[u8; PAGE_SIZE]>;

/// A store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An I/O error on one of the feed's files.
    #[error("{file}: {source}")]
    Io {
        /// The file (or directory) involved.
        file: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another process (or handle) has the feed open for writing.
    #[error("{0}: the feed is open for writing by another process")]
    Locked(PathBuf),
    /// A file exists but is not what a hypercore v9 feed keeps there.
    #[error("{file}: {reason}")]
    NotAFeed {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The storage behind a feed.
///
/// Reads take `&self` so that readers can share a store; writes take `&mut self`.
pub trait Store: Send + Sync + 'static {
    /// The stored public key, if any.
    fn read_key(&self) -> Result<Option<[u8; 32]>, StoreError>;
    /// Stores the public key (atomically).
    fn write_key(&mut self, key: &[u8; 32]) -> Result<(), StoreError>;
    /// The stored 64-byte secret key, if any.
    fn read_secret_key(&self) -> Result<Option<[u8; 64]>, StoreError>;
    /// Stores the secret key (atomically; on disk with mode 0600).
    fn write_secret_key(&mut self, secret: &[u8; 64]) -> Result<(), StoreError>;
    /// Reads `len` bytes of block data at `offset`; fewer bytes available is an error.
    fn read_data(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError>;
    /// Writes block data at `offset`.
    fn write_data(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StoreError>;
    /// Reads tree node `index`; `None` when the slot is absent or blank.
    fn read_node(&self, index: u64) -> Result<Option<Node>, StoreError>;
    /// Writes tree nodes (any order; contiguous runs are written together).
    fn write_nodes(&mut self, nodes: &[Node]) -> Result<(), StoreError>;
    /// Reads the signature for length `block + 1`; `None` when blank.
    fn read_signature(&self, block: u64) -> Result<Option<[u8; 64]>, StoreError>;
    /// Writes the signature for length `block + 1`.
    fn write_signature(&mut self, block: u64, signature: &[u8; 64]) -> Result<(), StoreError>;
    /// All stored bitfield pages.
    fn read_bitfield(&self) -> Result<Vec<(u64, Page)>, StoreError>;
    /// Writes bitfield pages.
    fn write_bitfield(&mut self, pages: &[(u64, Page)]) -> Result<(), StoreError>;
    /// Drops everything past `byte_length` bytes of data, `length` signatures and the tree
    /// nodes of a `length`-block feed (used when a writer recovers after a crash).
    fn truncate(&mut self, byte_length: u64, length: u64) -> Result<(), StoreError>;
    /// Makes data, tree and signatures durable (fsync); called before the bitfield that
    /// commits them is written when power-loss durability is asked for.
    fn sync_data(&mut self) -> Result<(), StoreError>;
    /// Makes the bitfield durable (fsync).
    fn sync_bitfield(&mut self) -> Result<(), StoreError>;
    /// Whether this store refuses writes (then a feed never repairs it on open).
    fn is_read_only(&self) -> bool {
        false
    }
    /// A cheap fingerprint of the stored bitfield (size and modification time), so that a
    /// reader polling for another process's appends can skip re-reading an unchanged
    /// bitfield. `None` when the store has no such thing (the caller then reads).
    fn bitfield_stamp(&self) -> Option<BitfieldStamp> {
        None
    }
}

/// The size and modification time of a stored bitfield: see [`Store::bitfield_stamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitfieldStamp {
    /// Bytes.
    pub len: u64,
    /// Last modification.
    pub modified: std::time::SystemTime,
}

/// A store in memory: for tests, for rekeyed views, for buyers that keep nothing.
#[derive(Default)]
pub struct MemStore {
    key: Option<[u8; 32]>,
    secret: Option<[u8; 64]>,
    /// Written extents by offset: sparse, so a replica holding one late block does not
    /// allocate everything before it.
    data: BTreeMap<u64, Vec<u8>>,
    nodes: BTreeMap<u64, Node>,
    signatures: BTreeMap<u64, [u8; 64]>,
    pages: BTreeMap<u64, Page>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn mem_err(reason: &str) -> StoreError {
        StoreError::NotAFeed {
            file: PathBuf::from("<memory>"),
            reason: reason.to_string(),
        }
    }
}

/// The most data a memory store holds (it lives in one `Vec`).
const MEM_MAX_DATA: u64 = 1 << 36;

impl Store for MemStore {
    fn read_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        Ok(self.key)
    }
    fn write_key(&mut self, key: &[u8; 32]) -> Result<(), StoreError> {
        self.key = Some(*key);
        Ok(())
    }
    fn read_secret_key(&self) -> Result<Option<[u8; 64]>, StoreError> {
        Ok(self.secret)
    }
    fn write_secret_key(&mut self, secret: &[u8; 64]) -> Result<(), StoreError> {
        self.secret = Some(*secret);
        Ok(())
    }
    fn read_data(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Self::mem_err("data range overflows"))?;
        // The extent that starts at or before `offset` must cover the whole range (blocks
        // are read where they were written, alone or as part of a batch).
        let (start, bytes) = self
            .data
            .range(..=offset)
            .next_back()
            .ok_or_else(|| Self::mem_err("data read past the end"))?;
        let from = offset - start;
        let to = end - start;
        if to > bytes.len() as u64 {
            return Err(Self::mem_err("data read past the end"));
        }
        Ok(bytes[from as usize..to as usize].to_vec())
    }
    fn write_data(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        offset
            .checked_add(bytes.len() as u64)
            .filter(|&e| e <= MEM_MAX_DATA)
            .ok_or_else(|| Self::mem_err("data beyond the memory store's limit"))?;
        self.data.insert(offset, bytes.to_vec());
        Ok(())
    }
    fn read_node(&self, index: u64) -> Result<Option<Node>, StoreError> {
        Ok(self.nodes.get(&index).copied())
    }
    fn write_nodes(&mut self, nodes: &[Node]) -> Result<(), StoreError> {
        for node in nodes {
            self.nodes.insert(node.index, *node);
        }
        Ok(())
    }
    fn read_signature(&self, block: u64) -> Result<Option<[u8; 64]>, StoreError> {
        Ok(self.signatures.get(&block).copied())
    }
    fn write_signature(&mut self, block: u64, signature: &[u8; 64]) -> Result<(), StoreError> {
        self.signatures.insert(block, *signature);
        Ok(())
    }
    fn read_bitfield(&self) -> Result<Vec<(u64, Page)>, StoreError> {
        Ok(self.pages.iter().map(|(n, p)| (*n, p.clone())).collect())
    }
    fn write_bitfield(&mut self, pages: &[(u64, Page)]) -> Result<(), StoreError> {
        for (n, page) in pages {
            self.pages.insert(*n, page.clone());
        }
        Ok(())
    }
    fn truncate(&mut self, byte_length: u64, length: u64) -> Result<(), StoreError> {
        self.data.retain(|&o, _| o < byte_length);
        if let Some((&o, last)) = self.data.iter_mut().next_back() {
            last.truncate(byte_length.saturating_sub(o) as usize);
        }
        self.signatures.retain(|&i, _| i < length);
        self.nodes.retain(|&i, _| i < 2 * length);
        Ok(())
    }
    fn sync_data(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    fn sync_bitfield(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The 32-byte headers JS writes at the start of `tree`, `signatures` and `bitfield`.
fn header(kind: u8, entry_size: u16, name: &str) -> [u8; 32] {
    let mut h = [0u8; 32];
    h[..3].copy_from_slice(&[0x05, 0x02, 0x57]);
    h[3] = kind;
    h[4] = 0;
    h[5..7].copy_from_slice(&entry_size.to_be_bytes());
    h[7] = name.len() as u8;
    h[8..8 + name.len()].copy_from_slice(name.as_bytes());
    h
}

/// Header of the `tree` file.
pub fn tree_header() -> [u8; 32] {
    header(2, NODE_LEN as u16, "BLAKE2b")
}
/// Header of the `signatures` file.
pub fn signatures_header() -> [u8; 32] {
    header(1, SIGNATURE_LEN as u16, "Ed25519")
}
/// Header of the `bitfield` file.
pub fn bitfield_header() -> [u8; 32] {
    header(0, PAGE_SIZE as u16, "")
}

/// A feed directory on disk in the hypercore v9 layout.
pub struct FsStore {
    dir: PathBuf,
    read_only: bool,
    data: File,
    tree: File,
    signatures: File,
    bitfield: File,
}

impl std::fmt::Debug for FsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl FsStore {
    /// Opens the feed directory `dir`, creating it and its files when `create` is set.
    /// Existing `tree`, `signatures` and `bitfield` files must carry the hypercore headers.
    pub fn open(dir: impl AsRef<Path>, create: bool) -> Result<Self, StoreError> {
        Self::open_with(dir.as_ref(), create, false)
    }

    /// Opens an existing feed directory without ever writing to it (for importing a
    /// feed written by another program). Every write fails.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir.as_ref(), false, true)
    }

    fn open_with(dir: &Path, create: bool, read_only: bool) -> Result<Self, StoreError> {
        let dir = dir.to_path_buf();
        if create {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
                file: dir.clone(),
                source,
            })?;
        } else if !dir.is_dir() {
            return Err(StoreError::Io {
                file: dir.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no such feed directory"),
            });
        }
        let open = |name: &str| -> Result<File, StoreError> {
            let path = dir.join(name);
            if read_only && !path.exists() {
                // A JS reader that never wrote a bitfield or signature: treat as empty.
                return File::open("/dev/null")
                    .map_err(|source| StoreError::Io { file: path, source });
            }
            OpenOptions::new()
                .read(true)
                .write(!read_only)
                .create(create)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(|source| StoreError::Io { file: path, source })
        };
        let store = FsStore {
            data: open("data")?,
            tree: open("tree")?,
            signatures: open("signatures")?,
            bitfield: open("bitfield")?,
            dir,
            read_only,
        };
        if !read_only {
            // One writer at a time: an exclusive advisory lock on `data`, released when
            // the store is dropped (or the process dies). Readers take no lock.
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc::flock(store.data.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    return Err(StoreError::Locked(store.dir.clone()));
                }
                return Err(StoreError::Io {
                    file: store.dir.join("data"),
                    source: err,
                });
            }
        }
        store.check_header(&store.tree, "tree", &tree_header(), 5)?;
        store.check_header(&store.signatures, "signatures", &signatures_header(), 5)?;
        store.check_header(&store.bitfield, "bitfield", &bitfield_header(), 5)?;
        Ok(store)
    }

    /// The directory of this feed.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io<'a>(&'a self, name: &'a str) -> impl Fn(io::Error) -> StoreError + 'a {
        // The path is built only on error: this runs on every read and write.
        move |source| StoreError::Io {
            file: self.dir.join(name),
            source,
        }
    }

    /// Writes the header to an empty file, or checks the first `check` bytes (magic,
    /// type, version) of an existing one. JS rewrites headers on open; the entry size of
    /// the bitfield may differ in old feeds, so only the fixed part is compared.
    fn check_header(
        &self,
        file: &File,
        name: &str,
        expected: &[u8; 32],
        check: usize,
    ) -> Result<(), StoreError> {
        let len = file.metadata().map_err(self.io(name))?.len();
        if len == 0 && self.read_only {
            return Ok(());
        }
        if len == 0 {
            file.write_all_at(expected, 0).map_err(self.io(name))?;
            return Ok(());
        }
        let mut found = [0u8; 32];
        let n = read_at_most(file, &mut found, 0).map_err(self.io(name))?;
        if n < check || found[..check] != expected[..check] {
            return Err(StoreError::NotAFeed {
                file: self.dir.join(name),
                reason: "not a hypercore v9 file (bad header)".into(),
            });
        }
        Ok(())
    }

    fn read_key_file<const N: usize>(&self, name: &str) -> Result<Option<[u8; N]>, StoreError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let arr: [u8; N] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::NotAFeed {
                            file: path.clone(),
                            reason: format!("expected {N} bytes, found {}", bytes.len()),
                        })?;
                Ok(Some(arr))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { file: path, source }),
        }
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns the bytes read.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl Store for FsStore {
    fn read_key(&self) -> Result<Option<[u8; 32]>, StoreError> {
        self.read_key_file::<32>("key")
    }
    fn write_key(&mut self, key: &[u8; 32]) -> Result<(), StoreError> {
        crate::fs_atomic::write_file_atomic(&self.dir.join("key"), key).map_err(self.io("key"))
    }
    fn read_secret_key(&self) -> Result<Option<[u8; 64]>, StoreError> {
        self.read_key_file::<64>("secret_key")
    }
    fn write_secret_key(&mut self, secret: &[u8; 64]) -> Result<(), StoreError> {
        crate::fs_atomic::write_file_atomic(&self.dir.join("secret_key"), secret)
            .map_err(self.io("secret_key"))
    }
    fn read_data(&self, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::other("block too large"))
            .map_err(self.io("data"))?;
        let mut buf = vec![0u8; len];
        let n = read_at_most(&self.data, &mut buf, offset).map_err(self.io("data"))?;
        if n < len {
            return Err(StoreError::NotAFeed {
                file: self.dir.join("data"),
                reason: format!("truncated: block at byte {offset} is missing"),
            });
        }
        Ok(buf)
    }
    fn write_data(&mut self, offset: u64, bytes: &[u8]) -> Result<(), StoreError> {
        self.data
            .write_all_at(bytes, offset)
            .map_err(self.io("data"))
    }
    fn read_node(&self, index: u64) -> Result<Option<Node>, StoreError> {
        let mut buf = [0u8; NODE_LEN as usize];
        let offset = index
            .checked_mul(NODE_LEN)
            .and_then(|o| o.checked_add(HEADER_LEN))
            .ok_or_else(|| io::Error::other("node index out of range"))
            .map_err(self.io("tree"))?;
        let n = read_at_most(&self.tree, &mut buf, offset).map_err(self.io("tree"))?;
        if n < buf.len() || buf.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&buf[..32]);
        let mut size = [0u8; 8];
        size.copy_from_slice(&buf[32..]);
        Ok(Some(Node {
            index,
            hash,
            size: u64::from_be_bytes(size),
        }))
    }
    fn write_nodes(&mut self, nodes: &[Node]) -> Result<(), StoreError> {
        let mut sorted: Vec<&Node> = nodes.iter().collect();
        sorted.sort_by_key(|n| n.index);
        sorted.dedup_by_key(|n| n.index);
        let mut run: Vec<u8> = Vec::new();
        let mut run_start = 0u64;
        let mut next = None;
        for node in sorted {
            if next != Some(node.index) {
                if !run.is_empty() {
                    self.tree
                        .write_all_at(&run, HEADER_LEN + run_start * NODE_LEN)
                        .map_err(self.io("tree"))?;
                    run.clear();
                }
                run_start = node.index;
            }
            run.extend_from_slice(&node.hash);
            run.extend_from_slice(&node.size.to_be_bytes());
            next = Some(node.index + 1);
        }
        if !run.is_empty() {
            self.tree
                .write_all_at(&run, HEADER_LEN + run_start * NODE_LEN)
                .map_err(self.io("tree"))?;
        }
        Ok(())
    }
    fn read_signature(&self, block: u64) -> Result<Option<[u8; 64]>, StoreError> {
        let mut buf = [0u8; 64];
        let offset = block
            .checked_mul(SIGNATURE_LEN)
            .and_then(|o| o.checked_add(HEADER_LEN))
            .ok_or_else(|| io::Error::other("signature index out of range"))
            .map_err(self.io("signatures"))?;
        let n = read_at_most(&self.signatures, &mut buf, offset).map_err(self.io("signatures"))?;
        if n < 64 || buf.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        Ok(Some(buf))
    }
    fn write_signature(&mut self, block: u64, signature: &[u8; 64]) -> Result<(), StoreError> {
        self.signatures
            .write_all_at(signature, HEADER_LEN + block * SIGNATURE_LEN)
            .map_err(self.io("signatures"))
    }
    fn bitfield_stamp(&self) -> Option<BitfieldStamp> {
        let meta = self.bitfield.metadata().ok()?;
        Some(BitfieldStamp {
            len: meta.len(),
            modified: meta.modified().ok()?,
        })
    }
    fn read_bitfield(&self) -> Result<Vec<(u64, Page)>, StoreError> {
        let len = self.bitfield.metadata().map_err(self.io("bitfield"))?.len();
        let mut pages = Vec::new();
        let mut n = 0u64;
        while HEADER_LEN + n * (PAGE_SIZE as u64) < len {
            let mut page: Page = Box::new([0u8; PAGE_SIZE]);
            read_at_most(
                &self.bitfield,
                &mut page[..],
                HEADER_LEN + n * PAGE_SIZE as u64,
            )
            .map_err(self.io("bitfield"))?;
            pages.push((n, page));
            n += 1;
        }
        Ok(pages)
    }
    fn write_bitfield(&mut self, pages: &[(u64, Page)]) -> Result<(), StoreError> {
        for (n, page) in pages {
            self.bitfield
                .write_all_at(&page[..], HEADER_LEN + n * PAGE_SIZE as u64)
                .map_err(self.io("bitfield"))?;
        }
        Ok(())
    }
    fn truncate(&mut self, byte_length: u64, length: u64) -> Result<(), StoreError> {
        self.data.set_len(byte_length).map_err(self.io("data"))?;
        self.signatures
            .set_len(HEADER_LEN + length * SIGNATURE_LEN)
            .map_err(self.io("signatures"))?;
        self.tree
            .set_len(HEADER_LEN + 2 * length * NODE_LEN)
            .map_err(self.io("tree"))?;
        Ok(())
    }
    fn sync_data(&mut self) -> Result<(), StoreError> {
        self.data.sync_data().map_err(self.io("data"))?;
        self.tree.sync_data().map_err(self.io("tree"))?;
        self.signatures.sync_data().map_err(self.io("signatures"))
    }
    fn sync_bitfield(&mut self) -> Result<(), StoreError> {
        self.bitfield.sync_data().map_err(self.io("bitfield"))
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
}
