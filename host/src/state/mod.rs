//! The seller's state in a database: revocations and burns, the ledger, the sales log,
//! byte counters and plugin state, behind one interface.
//!
//! ```text
//! StateUrl::parse("sqlite:PATH" | "sqlite:" | "postgres://…")   which database
//! StateUrl::default_in(data_dir)                                  sqlite:DATA_DIR/state.db
//! StateStore::open(&url) -> StateStore                            schema migrated on open
//!   .revoke(seller, buyer, burnt, at_ms) / .revocation(seller, buyer) / .revocations(seller)
//!   .ledger_add(&payment) / .ledger(buyer?)                       one transaction each
//!   .record_sale(&sale) / .sales()
//!   .add_bytes(seller, buyer, n) / .bytes(seller, buyer)
//! ```
//!
//! SQLite (embedded, the default) keeps the state in `DATA_DIR/state.db` in WAL mode with
//! full fsync on commit, so a revocation or a payment that was acknowledged survives a
//! `kill -9` or a power cut; several processes on one machine share it (SQLite's locks,
//! waited on for at most [`BUSY_TIMEOUT`]). The schema is versioned (`PRAGMA
//! user_version`); a database written by a newer binary is refused with a clear error.
//! On first open, the JSON state of earlier versions (`DATA_DIR/revocations.json`) is
//! imported once.
//!
//! PostgreSQL (`postgres://user:password@host/db`), for several seller nodes sharing one
//! state: the same schema and operations on a server (see [`postgres`]'s notes on
//! timeouts and TLS).
//!
//! Driver: `rusqlite` with the `bundled` feature. It is the maintained SQLite binding,
//! synchronous (every call here is short and bounded by the busy timeout; async callers
//! run it on the blocking pool), and bundling the amalgamation means the binary carries
//! the SQLite it was tested with instead of depending on the host's library.

mod legacy;
mod postgres;
mod sqlite;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// The most keys one plugin keeps for one product.
pub const MAX_PLUGIN_KEYS: u64 = 100_000;

/// File name of the default SQLite database inside a data directory.
pub const STATE_FILE: &str = "state.db";

/// The longest a call waits for another process's lock on the database.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = sqlite::MIGRATIONS.len() as u32;

/// A 32-byte public key.
pub type Key = [u8; 32];

/// Which database holds the state.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum StateUrl {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server (`postgres://user:password@host/db`).
    Postgres(String),
}

impl StateUrl {
    /// The default: `sqlite:DATA_DIR/state.db`.
    pub fn default_in(data_dir: &Path) -> StateUrl {
        StateUrl::Sqlite(data_dir.join(STATE_FILE))
    }

    /// Reads `sqlite:PATH`, `sqlite:` (the default file in `data_dir`) or
    /// `postgres://…` / `postgresql://…`.
    pub fn parse(text: &str, data_dir: &Path) -> Result<StateUrl, StateError> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return Ok(if path.is_empty() {
                StateUrl::default_in(data_dir)
            } else {
                StateUrl::Sqlite(PathBuf::from(path))
            });
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StateUrl::Postgres(text.to_owned()));
        }
        Err(StateError::BadUrl(redact(text)))
    }
}

/// Shown without any password (URLs end up in logs and errors).
impl fmt::Display for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StateUrl::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

impl fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateUrl({self})")
    }
}

/// `scheme://user:secret@host…` → `scheme://user:***@host…`; anything else unchanged.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Not a state URL.
    #[error("not a state URL: {0:?} (use sqlite:PATH or postgres://…)")]
    BadUrl(String),
    /// A backend this build does not serve.
    #[error("{url}: {what} is not supported by this build")]
    Unsupported {
        /// The URL (password hidden).
        url: String,
        /// What is missing.
        what: &'static str,
    },
    /// The database could not be opened or created.
    #[error("{url}: {detail}")]
    Open {
        /// The URL (password hidden).
        url: String,
        /// What failed.
        detail: String,
    },
    /// The database was written by a newer version.
    #[error("{url}: state schema version {found} is newer than this build knows ({known}); upgrade dazaar")]
    NewerSchema {
        /// The URL.
        url: String,
        /// Its version.
        found: u32,
        /// Ours.
        known: u32,
    },
    /// A query failed (locked past the busy timeout, disk full, I/O error, …).
    #[error("state database: {0}")]
    Database(String),
    /// A stored value is not what this build wrote.
    #[error("state database holds a malformed {what}")]
    Malformed {
        /// What.
        what: &'static str,
    },
    /// A plugin's store is full ([`MAX_PLUGIN_KEYS`]).
    #[error("the plugin state holds {0} keys already")]
    Full(u64),
    /// A legacy JSON file could not be imported.
    #[error("importing {path}: {detail}")]
    Import {
        /// The file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        StateError::Database(e.to_string())
    }
}

/// One revoked buyer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RevocationRecord {
    /// The buyer.
    #[serde(with = "hex_key")]
    pub buyer: Key,
    /// When it was revoked (ms since the epoch).
    pub at_ms: u64,
    /// Whether its rekeyed key pair is published.
    pub burnt: bool,
}

/// One payment in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerPayment {
    /// Its number in the ledger (0 before it is stored).
    pub id: i64,
    /// Who paid.
    #[serde(with = "hex_key")]
    pub buyer: Key,
    /// The product it is limited to, if any.
    #[serde(with = "hex_key_opt", skip_serializing_if = "Option::is_none")]
    pub seller: Option<Key>,
    /// How much, in the card's currency.
    pub amount: f64,
    /// When (ms since the epoch).
    pub time: u64,
    /// A free-form note.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One sale: a buyer that became valid for a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sale {
    /// The product's seller key.
    #[serde(with = "hex_key")]
    pub seller: Key,
    /// The buyer.
    #[serde(with = "hex_key")]
    pub buyer: Key,
    /// The payment method that granted it (`free` for a free product).
    pub method: String,
    /// What was granted: `free`, `time` or another grant kind.
    pub grant: String,
    /// What was left of it when granted (ms for time).
    pub remaining: u64,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// What importing legacy JSON state found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Revocations imported.
    pub revocations: usize,
    /// Ledger payments imported.
    pub payments: usize,
    /// Lines or entries that could not be read (skipped).
    pub skipped: usize,
}

/// The seller's state: one handle, shared by every product of a process.
#[derive(Debug)]
pub struct StateStore {
    url: StateUrl,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Sqlite(sqlite::SqliteState),
    Postgres(Box<postgres::PgState>),
}

/// Calls the same method on whichever backend is open.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &$self.backend {
            Backend::Sqlite(b) => b.$method($($arg),*),
            Backend::Postgres(b) => b.$method($($arg),*),
        }
    };
}

/// Milliseconds since the Unix epoch (when an import was made).
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl StateStore {
    /// Opens (creating it if needed) the database at `url` and migrates its schema; on a
    /// new SQLite database in a data directory, imports that directory's legacy JSON
    /// state once.
    pub fn open(url: &StateUrl) -> Result<StateStore, StateError> {
        match url {
            StateUrl::Sqlite(path) => Ok(StateStore {
                url: url.clone(),
                backend: Backend::Sqlite(sqlite::SqliteState::open(path, &url.to_string())?),
            }),
            StateUrl::Postgres(text) => Ok(StateStore {
                url: url.clone(),
                backend: Backend::Postgres(Box::new(postgres::PgState::open(
                    text,
                    &url.to_string(),
                )?)),
            }),
        }
    }

    /// [`open`](Self::open) the default database of `data_dir`.
    pub fn open_in(data_dir: &Path) -> Result<StateStore, StateError> {
        let store = StateStore::open(&StateUrl::default_in(data_dir))?;
        store.import_legacy(data_dir)?;
        Ok(store)
    }

    /// Where the state lives.
    pub fn url(&self) -> &StateUrl {
        &self.url
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32, StateError> {
        dispatch!(self.schema_version())
    }

    /// Records that `buyer` is revoked (and burnt) for the product sold under `seller`.
    /// Burning a revoked buyer keeps the first revocation's time; a burn is never undone
    /// by a later plain revoke.
    pub fn revoke(
        &self,
        seller: &Key,
        buyer: &Key,
        burnt: bool,
        at_ms: u64,
    ) -> Result<(), StateError> {
        dispatch!(self.revoke(seller, buyer, burnt, at_ms))
    }

    /// `buyer`'s revocation for `seller`'s product, if any.
    pub fn revocation(
        &self,
        seller: &Key,
        buyer: &Key,
    ) -> Result<Option<RevocationRecord>, StateError> {
        dispatch!(self.revocation(seller, buyer))
    }

    /// Every revocation of `seller`'s product, by buyer.
    pub fn revocations(&self, seller: &Key) -> Result<Vec<RevocationRecord>, StateError> {
        dispatch!(self.revocations(seller))
    }

    /// Adds a payment to the ledger in one transaction; returns its id.
    pub fn ledger_add(&self, payment: &LedgerPayment) -> Result<i64, StateError> {
        if !(payment.amount.is_finite() && payment.amount >= 0.0) {
            return Err(StateError::Malformed {
                what: "ledger amount",
            });
        }
        dispatch!(self.ledger_add(payment))
    }

    /// The ledger's payments in the order they were added, for `buyer` only if given.
    pub fn ledger(&self, buyer: Option<&Key>) -> Result<Vec<LedgerPayment>, StateError> {
        dispatch!(self.ledger(buyer))
    }

    /// Adds one line to the sales log.
    pub fn record_sale(&self, sale: &Sale) -> Result<(), StateError> {
        dispatch!(self.record_sale(sale))
    }

    /// The sales log, oldest first.
    pub fn sales(&self) -> Result<Vec<Sale>, StateError> {
        dispatch!(self.sales())
    }

    /// Adds `n` bytes to what `buyer` has been sent of `seller`'s product; returns the new
    /// total (saturating).
    pub fn add_bytes(&self, seller: &Key, buyer: &Key, n: u64) -> Result<u64, StateError> {
        dispatch!(self.add_bytes(seller, buyer, n))
    }

    /// The bytes `buyer` has been sent of `seller`'s product.
    pub fn bytes(&self, seller: &Key, buyer: &Key) -> Result<u64, StateError> {
        dispatch!(self.bytes(seller, buyer))
    }

    /// Whether several seller nodes may share this state (PostgreSQL): then buyers'
    /// connections are leased here (see [`acquire_lease`](Self::acquire_lease)); an SQLite
    /// file belongs to one node, whose own bookkeeping is enough.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Records that seller node `node` is alive at `now_ms`. A node beats every
    /// [`NODE_HEARTBEAT`]; one silent for [`NODE_EXPIRY`] is dead and its leases lapse.
    pub fn heartbeat(&self, node: &str, now_ms: u64) -> Result<(), StateError> {
        dispatch!(self.heartbeat(node, now_ms))
    }

    /// Leases `buyer`'s connection to `seller`'s product to `node`: granted when nobody
    /// holds it, `node` already does, or its holder's last heartbeat is older than
    /// [`NODE_EXPIRY`] before `now_ms`. Atomic across nodes: of two nodes asking at once,
    /// one wins.
    pub fn acquire_lease(
        &self,
        seller: &Key,
        buyer: &Key,
        node: &str,
        now_ms: u64,
    ) -> Result<Lease, StateError> {
        let expiry = u64::try_from(NODE_EXPIRY.as_millis()).unwrap_or(u64::MAX);
        let dead_before = now_ms.saturating_sub(expiry);
        Ok(
            match dispatch!(self.acquire_lease(seller, buyer, node, now_ms, dead_before))? {
                None => Lease::Acquired,
                Some(holder) => Lease::HeldBy(holder),
            },
        )
    }

    /// Gives up `node`'s lease on `buyer`'s connection (if it holds it).
    pub fn release_lease(&self, seller: &Key, buyer: &Key, node: &str) -> Result<(), StateError> {
        dispatch!(self.release_lease(seller, buyer, node))
    }

    /// The value `plugin` stored under `key` for `product`.
    pub fn plugin_get(
        &self,
        plugin: &str,
        product: &Key,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        dispatch!(self.plugin_get(plugin, product, key))
    }

    /// Stores `value` under `key` for `plugin` and `product` (committed on return). At
    /// most [`MAX_PLUGIN_KEYS`] keys per plugin and product.
    pub fn plugin_put(
        &self,
        plugin: &str,
        product: &Key,
        key: &str,
        value: &[u8],
    ) -> Result<(), StateError> {
        dispatch!(self.plugin_put(plugin, product, key, value))
    }

    /// Removes `key` of `plugin` and `product`.
    pub fn plugin_delete(&self, plugin: &str, product: &Key, key: &str) -> Result<(), StateError> {
        dispatch!(self.plugin_delete(plugin, product, key))
    }

    /// Imports `data_dir`'s `revocations.json` (if any) once per database; later calls do
    /// nothing. The file is left in place (an older binary may still read it).
    pub fn import_legacy(&self, data_dir: &Path) -> Result<ImportReport, StateError> {
        let path = data_dir.join(LEGACY_REVOCATIONS);
        let Some(read) = legacy::revocations(&path)? else {
            return Ok(ImportReport::default());
        };
        let source = format!("revocations:{}", path.display());
        if !dispatch!(self.import_rows(&source, &read.rows, &[]))? {
            return Ok(ImportReport::default());
        }
        Ok(ImportReport {
            revocations: read.rows.len(),
            payments: 0,
            skipped: read.skipped,
        })
    }

    /// Imports a ledger file (JSON lines `{"buyer","amount","time","seller"?,"note"?}`, as
    /// `dazaar ledger add --file` writes) once per file path; bad lines are skipped and
    /// counted.
    pub fn import_ledger_file(&self, path: &Path) -> Result<ImportReport, StateError> {
        let read = legacy::ledger(path)?;
        let source = format!(
            "ledger:{}",
            std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_owned())
                .display()
        );
        if !dispatch!(self.import_rows(&source, &[], &read.rows))? {
            return Ok(ImportReport::default());
        }
        Ok(ImportReport {
            revocations: 0,
            payments: read.rows.len(),
            skipped: read.skipped,
        })
    }
}

/// How often a seller node records that it is alive.
pub const NODE_HEARTBEAT: Duration = Duration::from_secs(2);

/// A node whose last heartbeat is this old is dead: its leases may be taken.
pub const NODE_EXPIRY: Duration = Duration::from_secs(10);

/// The answer of [`StateStore::acquire_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// This node holds the lease now.
    Acquired,
    /// Another live node holds it (its id; empty if it was released meanwhile).
    HeldBy(String),
}

/// The file in a data directory that names its seller node.
pub const NODE_ID_FILE: &str = "node-id";

/// The id of the seller node whose data directory is `data_dir`: read from its
/// [`NODE_ID_FILE`], created on first use as `HOSTNAME-RANDOM` (stable across restarts, so
/// a restarted node takes its own leases back at once rather than after [`NODE_EXPIRY`]).
pub fn node_id(data_dir: &Path) -> Result<String, StateError> {
    let path = data_dir.join(NODE_ID_FILE);
    let io = |e: std::io::Error| StateError::Open {
        url: path.display().to_string(),
        detail: e.to_string(),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if valid_node_id(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(_) => {
            return Err(StateError::Malformed {
                what: "node-id file (1 to 100 characters of [A-Za-z0-9._-])",
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(60)
        .collect();
    let host = if host.is_empty() {
        "node".to_owned()
    } else {
        host
    };
    let id = format!("{host}-{}", hex::encode(rand::random::<[u8; 4]>()));
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let tmp = data_dir.join(format!(".{NODE_ID_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
    // Two first starts at once: the first link wins and both read it.
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
    }
    let _ = std::fs::remove_file(&tmp);
    let text = std::fs::read_to_string(&path).map_err(io)?;
    Ok(text.trim().to_owned())
}

fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// The JSON revocation list of earlier versions, in the data directory.
pub const LEGACY_REVOCATIONS: &str = "revocations.json";

/// Where a seller's state lives: the database, and the data directory whose JSON state
/// of earlier versions is imported into it on first open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatePlace {
    /// The database.
    pub url: StateUrl,
    /// The data directory.
    pub data_dir: PathBuf,
}

impl StatePlace {
    /// The default database of `data_dir` (`sqlite:DATA_DIR/state.db`).
    pub fn default_in(data_dir: &Path) -> StatePlace {
        StatePlace {
            url: StateUrl::default_in(data_dir),
            data_dir: data_dir.to_owned(),
        }
    }

    /// Opens the database (migrating it) and imports the data directory's legacy state
    /// once.
    pub fn open(&self) -> Result<StateStore, StateError> {
        let store = StateStore::open(&self.url)?;
        store.import_legacy(&self.data_dir)?;
        Ok(store)
    }

    /// The process's one open handle on this database, opened now if no part of the
    /// process holds it: every product, plugin store and the seller's own bookkeeping
    /// share one connection (and the legacy import runs once).
    pub fn shared(&self) -> Result<std::sync::Arc<StateStore>, StateError> {
        type Open = std::collections::HashMap<StatePlace, std::sync::Weak<StateStore>>;
        static OPEN: std::sync::Mutex<Option<Open>> = std::sync::Mutex::new(None);
        let mut open = match OPEN.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let open = open.get_or_insert_with(Open::new);
        open.retain(|_, weak| weak.strong_count() > 0);
        if let Some(store) = open.get(self).and_then(std::sync::Weak::upgrade) {
            return Ok(store);
        }
        let store = std::sync::Arc::new(self.open()?);
        open.insert(self.clone(), std::sync::Arc::downgrade(&store));
        Ok(store)
    }
}

/// A seller's state database, opened at first use (and again after a failed open),
/// shared by the parts of one product.
#[derive(Debug)]
pub struct LazyState {
    place: StatePlace,
    slot: std::sync::Mutex<Option<std::sync::Arc<StateStore>>>,
}

impl LazyState {
    /// The state at `place`, not opened yet.
    pub fn new(place: &StatePlace) -> LazyState {
        LazyState {
            place: place.clone(),
            slot: std::sync::Mutex::new(None),
        }
    }

    /// The open store, opening it now if needed.
    pub fn get(&self) -> Result<std::sync::Arc<StateStore>, StateError> {
        let mut slot = match self.slot.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(store) = &*slot {
            return Ok(std::sync::Arc::clone(store));
        }
        let store = self.place.shared()?;
        *slot = Some(std::sync::Arc::clone(&store));
        Ok(store)
    }
}

mod hex_key {
    pub fn serialize<S: serde::Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(key))
    }
}

mod hex_key_opt {
    pub fn serialize<S: serde::Serializer>(
        key: &Option<[u8; 32]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match key {
            Some(k) => s.serialize_str(&hex::encode(k)),
            None => s.serialize_none(),
        }
    }
}

/// A 32-byte key from 64 hex digits.
pub(crate) fn parse_hex_key(text: &str) -> Option<Key> {
    hex::decode(text.trim()).ok()?.try_into().ok()
}

/// The throwaway PostgreSQL server of the tests (shared with the integration tests).
#[cfg(test)]
#[path = "../../../tests/src/pg.rs"]
pub(crate) mod pg_server;
#[cfg(test)]
mod tests;
