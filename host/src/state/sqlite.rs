//! The SQLite backend of [`super::StateStore`].

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{Key, LedgerPayment, RevocationRecord, Sale, StateError, BUSY_TIMEOUT};

/// The schema, one step per version: step `i` takes the database from version `i` to
/// `i + 1`. Append only; never edit a released step.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: revocations, ledger, sales, byte counters, plugin key-value state, imports done.
    "CREATE TABLE revocations (
        seller BLOB NOT NULL, buyer BLOB NOT NULL,
        at_ms INTEGER NOT NULL, burnt INTEGER NOT NULL,
        PRIMARY KEY (seller, buyer)
    );
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        buyer BLOB NOT NULL, seller BLOB, amount REAL NOT NULL,
        time_ms INTEGER NOT NULL, note TEXT
    );
    CREATE INDEX ledger_buyer ON ledger (buyer);
    CREATE TABLE sales (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        seller BLOB NOT NULL, buyer BLOB NOT NULL, method TEXT NOT NULL,
        grant_kind TEXT NOT NULL, remaining INTEGER NOT NULL, at_ms INTEGER NOT NULL
    );
    CREATE TABLE bytes_sent (
        seller BLOB NOT NULL, buyer BLOB NOT NULL, bytes INTEGER NOT NULL,
        PRIMARY KEY (seller, buyer)
    );
    CREATE TABLE plugin_state (
        plugin TEXT NOT NULL, product BLOB NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
        PRIMARY KEY (plugin, product, key)
    );
    CREATE TABLE imports (source TEXT PRIMARY KEY, at_ms INTEGER NOT NULL);",
    // 2: seller nodes' heartbeats and the buyers' connection leases.
    "CREATE TABLE nodes (node TEXT PRIMARY KEY, heartbeat_ms INTEGER NOT NULL);
    CREATE TABLE leases (
        seller BLOB NOT NULL, buyer BLOB NOT NULL, node TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        PRIMARY KEY (seller, buyer)
    );",
];

#[derive(Debug)]
pub(super) struct SqliteState {
    conn: Mutex<Connection>,
}

fn key_from(blob: Vec<u8>) -> Result<Key, StateError> {
    blob.try_into()
        .map_err(|_| StateError::Malformed { what: "key" })
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteState {
    pub(super) fn open(path: &Path, url: &str) -> Result<SqliteState, StateError> {
        let open_err = |detail: String| StateError::Open {
            url: url.to_owned(),
            detail,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("creating {}: {e}", dir.display())))?;
        }
        let fresh = !path.exists();
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        if fresh {
            // Payments and revocations are the seller's business: owner only.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_err(e.to_string()))?;
        // WAL: readers never wait for the writer; FULL: a commit is on disk when it
        // returns (a revocation or payment survives a crash or power cut).
        // Switching a new database to WAL takes an exclusive lock, and SQLite answers
        // "database is locked" at once (no busy handler) when another process holds one
        // while creating the same database: retry until the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match conn.pragma_update(None, "journal_mode", "WAL") {
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if matches!(
                        f.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(
                        5 + u64::from(rand::random::<u8>() % 20),
                    ));
                }
                r => break r.map_err(|e| open_err(e.to_string()))?,
            }
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| open_err(e.to_string()))?;
        let state = SqliteState {
            conn: Mutex::new(conn),
        };
        state.migrate(url)?;
        Ok(state)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    pub(super) fn schema_version(&self) -> Result<u32, StateError> {
        let v: i64 = self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }

    /// Applies the missing migrations, each in its own write transaction (so two
    /// processes opening a new database at once do not both apply a step).
    fn migrate(&self, url: &str) -> Result<(), StateError> {
        let known = MIGRATIONS.len();
        let mut conn = self.lock();
        loop {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let version = usize::try_from(version).unwrap_or(usize::MAX);
            if version > known {
                return Err(StateError::NewerSchema {
                    url: url.to_owned(),
                    found: u32::try_from(version).unwrap_or(u32::MAX),
                    known: u32::try_from(known).unwrap_or(u32::MAX),
                });
            }
            let Some(step) = MIGRATIONS.get(version) else {
                return Ok(());
            };
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", to_i64(version as u64 + 1))?;
            tx.commit()?;
        }
    }

    pub(super) fn revoke(
        &self,
        seller: &Key,
        buyer: &Key,
        burnt: bool,
        at_ms: u64,
    ) -> Result<(), StateError> {
        self.lock().execute(
            "INSERT INTO revocations (seller, buyer, at_ms, burnt) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (seller, buyer) DO UPDATE SET burnt = MAX(burnt, excluded.burnt)",
            params![&seller[..], &buyer[..], to_i64(at_ms), burnt],
        )?;
        Ok(())
    }

    pub(super) fn revocation(
        &self,
        seller: &Key,
        buyer: &Key,
    ) -> Result<Option<RevocationRecord>, StateError> {
        let row = self
            .lock()
            .query_row(
                "SELECT at_ms, burnt FROM revocations WHERE seller = ?1 AND buyer = ?2",
                params![&seller[..], &buyer[..]],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)),
            )
            .optional()?;
        Ok(row.map(|(at, burnt)| RevocationRecord {
            buyer: *buyer,
            at_ms: to_u64(at),
            burnt,
        }))
    }

    pub(super) fn revocations(&self, seller: &Key) -> Result<Vec<RevocationRecord>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT buyer, at_ms, burnt FROM revocations WHERE seller = ?1 ORDER BY buyer",
        )?;
        let rows = stmt.query_map(params![&seller[..]], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (buyer, at, burnt) = row?;
            out.push(RevocationRecord {
                buyer: key_from(buyer)?,
                at_ms: to_u64(at),
                burnt,
            });
        }
        Ok(out)
    }

    pub(super) fn ledger_add(&self, p: &LedgerPayment) -> Result<i64, StateError> {
        let conn = self.lock();
        conn.execute(
            "INSERT INTO ledger (buyer, seller, amount, time_ms, note) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                &p.buyer[..],
                p.seller.as_ref().map(|s| &s[..]),
                p.amount,
                to_i64(p.time),
                p.note
            ],
        )?;
        Ok(conn.last_insert_rowid())
    }

    pub(super) fn ledger(&self, buyer: Option<&Key>) -> Result<Vec<LedgerPayment>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, buyer, seller, amount, time_ms, note FROM ledger
             WHERE ?1 IS NULL OR buyer = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map(params![buyer.map(|b| &b[..])], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Option<Vec<u8>>>(2)?,
                r.get::<_, f64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, buyer, seller, amount, time, note) = row?;
            out.push(LedgerPayment {
                id,
                buyer: key_from(buyer)?,
                seller: seller.map(key_from).transpose()?,
                amount,
                time: to_u64(time),
                note,
            });
        }
        Ok(out)
    }

    pub(super) fn record_sale(&self, s: &Sale) -> Result<(), StateError> {
        self.lock().execute(
            "INSERT INTO sales (seller, buyer, method, grant_kind, remaining, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                &s.seller[..],
                &s.buyer[..],
                s.method,
                s.grant,
                to_i64(s.remaining),
                to_i64(s.at_ms)
            ],
        )?;
        Ok(())
    }

    pub(super) fn sales(&self) -> Result<Vec<Sale>, StateError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT seller, buyer, method, grant_kind, remaining, at_ms FROM sales ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seller, buyer, method, grant, remaining, at) = row?;
            out.push(Sale {
                seller: key_from(seller)?,
                buyer: key_from(buyer)?,
                method,
                grant,
                remaining: to_u64(remaining),
                at_ms: to_u64(at),
            });
        }
        Ok(out)
    }

    pub(super) fn add_bytes(&self, seller: &Key, buyer: &Key, n: u64) -> Result<u64, StateError> {
        let total: i64 = self.lock().query_row(
            "INSERT INTO bytes_sent (seller, buyer, bytes) VALUES (?1, ?2, ?3)
             ON CONFLICT (seller, buyer) DO UPDATE
               SET bytes = MIN(bytes + excluded.bytes, 9223372036854775807)
             RETURNING bytes",
            params![&seller[..], &buyer[..], to_i64(n)],
            |r| r.get(0),
        )?;
        Ok(to_u64(total))
    }

    pub(super) fn bytes(&self, seller: &Key, buyer: &Key) -> Result<u64, StateError> {
        let v: Option<i64> = self
            .lock()
            .query_row(
                "SELECT bytes FROM bytes_sent WHERE seller = ?1 AND buyer = ?2",
                params![&seller[..], &buyer[..]],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.map_or(0, to_u64))
    }

    pub(super) fn plugin_get(
        &self,
        plugin: &str,
        product: &Key,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT value FROM plugin_state WHERE plugin = ?1 AND product = ?2 AND key = ?3",
                params![plugin, &product[..], key.as_bytes()],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub(super) fn plugin_put(
        &self,
        plugin: &str,
        product: &Key,
        key: &str,
        value: &[u8],
    ) -> Result<(), StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM plugin_state WHERE plugin = ?1 AND product = ?2 AND key = ?3",
                params![plugin, &product[..], key.as_bytes()],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_none() {
            let count: i64 = tx.query_row(
                "SELECT COUNT(*) FROM plugin_state WHERE plugin = ?1 AND product = ?2",
                params![plugin, &product[..]],
                |r| r.get(0),
            )?;
            if to_u64(count) >= super::MAX_PLUGIN_KEYS {
                return Err(StateError::Full(to_u64(count)));
            }
        }
        tx.execute(
            "INSERT INTO plugin_state (plugin, product, key, value) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (plugin, product, key) DO UPDATE SET value = excluded.value",
            params![plugin, &product[..], key.as_bytes(), value],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub(super) fn plugin_delete(
        &self,
        plugin: &str,
        product: &Key,
        key: &str,
    ) -> Result<(), StateError> {
        self.lock().execute(
            "DELETE FROM plugin_state WHERE plugin = ?1 AND product = ?2 AND key = ?3",
            params![plugin, &product[..], key.as_bytes()],
        )?;
        Ok(())
    }

    /// Inserts `revocations` and `payments` in one write transaction unless `source` was
    /// imported before, then marks it imported: all of a file or none of it, once.
    /// Returns whether it was imported now.
    pub(super) fn heartbeat(&self, node: &str, now_ms: u64) -> Result<(), StateError> {
        self.lock().execute(
            "INSERT INTO nodes (node, heartbeat_ms) VALUES (?1, ?2)
             ON CONFLICT (node) DO UPDATE SET heartbeat_ms = MAX(heartbeat_ms, excluded.heartbeat_ms)",
            params![node, to_i64(now_ms)],
        )?;
        Ok(())
    }

    pub(super) fn acquire_lease(
        &self,
        seller: &Key,
        buyer: &Key,
        node: &str,
        now_ms: u64,
        dead_before_ms: u64,
    ) -> Result<Option<String>, StateError> {
        let conn = self.lock();
        let won: Option<String> = conn
            .query_row(
                "INSERT INTO leases (seller, buyer, node, since_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (seller, buyer) DO UPDATE
                   SET node = excluded.node, since_ms = excluded.since_ms
                   WHERE leases.node = excluded.node
                      OR COALESCE((SELECT heartbeat_ms FROM nodes WHERE nodes.node = leases.node), 0) < ?5
                 RETURNING node",
                params![&seller[..], &buyer[..], node, to_i64(now_ms), to_i64(dead_before_ms)],
                |r| r.get(0),
            )
            .optional()?;
        if won.is_some() {
            return Ok(None);
        }
        let holder: Option<String> = conn
            .query_row(
                "SELECT node FROM leases WHERE seller = ?1 AND buyer = ?2",
                params![&seller[..], &buyer[..]],
                |r| r.get(0),
            )
            .optional()?;
        // Released between the two statements: nobody holds it now; the caller asks again.
        Ok(Some(holder.unwrap_or_default()))
    }

    pub(super) fn release_lease(
        &self,
        seller: &Key,
        buyer: &Key,
        node: &str,
    ) -> Result<(), StateError> {
        self.lock().execute(
            "DELETE FROM leases WHERE seller = ?1 AND buyer = ?2 AND node = ?3",
            params![&seller[..], &buyer[..], node],
        )?;
        Ok(())
    }

    pub(super) fn import_rows(
        &self,
        source: &str,
        revocations: &[(Key, RevocationRecord)],
        payments: &[LedgerPayment],
    ) -> Result<bool, StateError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done: Option<i64> = tx
            .query_row(
                "SELECT at_ms FROM imports WHERE source = ?1",
                [source],
                |r| r.get(0),
            )
            .optional()?;
        if done.is_some() {
            return Ok(false);
        }
        for (seller, r) in revocations {
            tx.execute(
                "INSERT INTO revocations (seller, buyer, at_ms, burnt) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (seller, buyer) DO UPDATE SET burnt = MAX(burnt, excluded.burnt)",
                params![&seller[..], &r.buyer[..], to_i64(r.at_ms), r.burnt],
            )?;
        }
        for p in payments {
            tx.execute(
                "INSERT INTO ledger (buyer, seller, amount, time_ms, note) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![&p.buyer[..], p.seller.as_ref().map(|s| &s[..]), p.amount, to_i64(p.time), p.note],
            )?;
        }
        tx.execute(
            "INSERT INTO imports (source, at_ms) VALUES (?1, ?2)",
            params![source, to_i64(super::unix_ms_now())],
        )?;
        tx.commit()?;
        Ok(true)
    }
}
