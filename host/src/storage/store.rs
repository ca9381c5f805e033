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

/// Tree nodes one bitfield page has bits for (its tree region: 2048 bytes).
const NODES_PER_PAGE: u64 = 2048 * 8;

/// Bitfield pages read at once.
const READ_CHUNK_PAGES: u64 = 64;

/// How many pages of a `bitfield` file of `len` bytes to read, and how many it has, next
/// to a `tree` file of `tree_len` bytes. A page holds the bits of 16,384 tree nodes (and
/// of the blocks whose leaves they are), and a node's bit is only set once the node is
/// in the tree, so pages past the tree's last node can hold nothing true: a corrupt or
/// sparse bitfield of a terabyte next to a small tree costs nothing to open.
fn bitfield_pages_to_read(len: u64, tree_len: u64) -> (u64, u64) {
    let page = PAGE_SIZE as u64;
    let in_file = len.saturating_sub(HEADER_LEN).div_ceil(page);
    let nodes = tree_len.saturating_sub(HEADER_LEN).div_ceil(NODE_LEN);
    (in_file.min(nodes.div_ceil(NODES_PER_PAGE)), in_file)
}

/// What [`read_nonzero_pages`] found.
struct PagesRead {
    /// The non-zero pages, and the last one.
    pages: Vec<(u64, Page)>,
    /// How many pages were read from the file (holes are not).
    scanned: u64,
}

/// The non-zero pages among the first `count` pages of a bitfield file, read in bounded
/// chunks and skipping holes (a sparse file's unwritten ranges are never read), plus the
/// last page even when zero, so that the page count (JS's pager length, on which the
/// tree length the bitfield claims depends) is that of the file. Memory: the pages
/// returned and one chunk.
fn read_nonzero_pages(file: &File, count: u64) -> io::Result<PagesRead> {
    let page_len = PAGE_SIZE as u64;
    let end = HEADER_LEN.saturating_add(count.saturating_mul(page_len));
    let mut pages: Vec<(u64, Page)> = Vec::new();
    let mut chunk = vec![0u8; (READ_CHUNK_PAGES * page_len) as usize];
    let mut pos = HEADER_LEN;
    let mut scanned = 0u64;
    while pos < end {
        let Some((data, hole)) = next_data(file, pos)? else {
            break;
        };
        if data >= end {
            break;
        }
        // The pages that overlap [data, hole).
        let first = data.saturating_sub(HEADER_LEN) / page_len;
        let stop = (hole.min(end) - HEADER_LEN)
            .div_ceil(page_len)
            .max(first + 1);
        let mut n = first;
        while n < stop {
            let k = (stop - n).min(READ_CHUNK_PAGES);
            let buf = &mut chunk[..(k * page_len) as usize];
            let got = read_at_most(file, buf, HEADER_LEN + n * page_len)?;
            buf[got..].fill(0);
            for (j, bytes) in buf.chunks_exact(PAGE_SIZE).enumerate() {
                if bytes.iter().any(|&b| b != 0) {
                    let mut page: Page = Box::new([0u8; PAGE_SIZE]);
                    page.copy_from_slice(bytes);
                    pages.push((n + j as u64, page));
                }
            }
            n += k;
            scanned += k;
        }
        pos = HEADER_LEN + stop * page_len;
    }
    if count > 0 && pages.last().map(|(n, _)| *n) != Some(count - 1) {
        pages.push((count - 1, Box::new([0u8; PAGE_SIZE])));
    }
    Ok(PagesRead { pages, scanned })
}

/// The next range of `file` at or after `pos` that may hold data, `[data, hole)`, as
/// `lseek(SEEK_DATA / SEEK_HOLE)` tells; `None` when only holes follow. A file system
/// that cannot tell has the whole rest of the file read.
fn next_data(file: &File, pos: u64) -> io::Result<Option<(u64, u64)>> {
    use std::os::unix::io::AsRawFd;
    let len = file.metadata()?.len();
    if pos >= len {
        return Ok(None);
    }
    let seek = |from: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        let from = libc::off_t::try_from(from).map_err(|_| io::Error::other("offset too large"))?;
        // SAFETY: lseek on a file descriptor we own; no memory is involved. The file
        // offset it moves is used by none of our reads and writes (all positioned).
        let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
        if at < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENXIO) => Ok(None),
                _ => Err(err),
            };
        }
        Ok(u64::try_from(at).ok())
    };
    let data = match seek(pos, libc::SEEK_DATA) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(Some((pos, len))),
        Err(e) => return Err(e),
    };
    let hole = match seek(data, libc::SEEK_HOLE) {
        Ok(Some(h)) => h.min(len),
        Ok(None) | Err(_) => len,
    };
    Ok(Some((data, hole.max(data + 1))))
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
        let tree_len = self.tree.metadata().map_err(self.io("tree"))?.len();
        let (count, in_file) = bitfield_pages_to_read(len, tree_len);
        if in_file > count {
            tracing::warn!(
                dir = %self.dir.display(),
                pages = in_file,
                kept = count,
                "the bitfield is longer than the tree can use; ignoring the rest"
            );
        }
        let read = read_nonzero_pages(&self.bitfield, count).map_err(self.io("bitfield"))?;
        tracing::debug!(
            pages = count,
            read = read.scanned,
            kept = read.pages.len(),
            "bitfield loaded"
        );
        Ok(read.pages)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A bitfield file with one byte written `offset` bytes in (sparse before it).
    fn sparse_bitfield(offset: u64) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("bitfield"))
            .expect("create");
        file.write_all_at(&bitfield_header(), 0).expect("header");
        file.write_all_at(&[0x80], offset).expect("poke");
        (dir, file)
    }

    #[test]
    fn holes_are_skipped_not_read() {
        // 8 GiB of hole, then one page with a bit: reading the hole would scan 2.4
        // million pages.
        let offset = 1u64 << 33;
        let (_dir, file) = sparse_bitfield(offset);
        let count = (offset + 1 - HEADER_LEN).div_ceil(PAGE_SIZE as u64);
        let read = read_nonzero_pages(&file, count).expect("read");
        let far = (offset - HEADER_LEN) / PAGE_SIZE as u64;
        let numbers: Vec<u64> = read.pages.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, vec![far]);
        assert!(read.scanned <= 2 * READ_CHUNK_PAGES, "{}", read.scanned);
    }

    #[test]
    fn zero_pages_are_not_kept_but_the_page_count_is() {
        let (_dir, file) = sparse_bitfield(HEADER_LEN + PAGE_SIZE as u64 * 3 + 5);
        file.write_all_at(&[0u8; PAGE_SIZE * 8], HEADER_LEN + PAGE_SIZE as u64 * 4)
            .expect("zeros");
        let read = read_nonzero_pages(&file, 12).expect("read");
        let numbers: Vec<u64> = read.pages.iter().map(|(n, _)| *n).collect();
        // Page 3 holds the bit; page 11 (all zero, the file's last) keeps the count.
        assert_eq!(numbers, vec![3, 11]);
        assert!(read.pages[1].1.iter().all(|&b| b == 0));
        // Fewer pages than the file has: only those are read.
        let read = read_nonzero_pages(&file, 2).expect("read");
        assert_eq!(read.pages.len(), 1);
        assert_eq!(read.pages[0].0, 1);
    }

    #[test]
    fn the_tree_bounds_the_pages_read() {
        let page = PAGE_SIZE as u64;
        // No tree: nothing.
        assert_eq!(bitfield_pages_to_read(HEADER_LEN + 10 * page, 0), (0, 10));
        // One node: page 0 only.
        assert_eq!(
            bitfield_pages_to_read(HEADER_LEN + 10 * page, HEADER_LEN + NODE_LEN),
            (1, 10)
        );
        // Node 16384 is the first of page 1.
        let tree = HEADER_LEN + (NODES_PER_PAGE + 1) * NODE_LEN;
        assert_eq!(
            bitfield_pages_to_read(HEADER_LEN + 10 * page, tree),
            (2, 10)
        );
        // A bitfield shorter than the tree allows is read whole, a partial page included.
        assert_eq!(
            bitfield_pages_to_read(HEADER_LEN + page + 1, u64::MAX),
            (2, 2)
        );
        assert_eq!(bitfield_pages_to_read(0, u64::MAX), (0, 0));
    }
}
