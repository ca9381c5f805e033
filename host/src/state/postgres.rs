//! The PostgreSQL backend of [`super::StateStore`], for several seller nodes sharing one
//! state.
//!
//! One connection per store, re-opened after it breaks; every statement is bounded by a
//! server-side `statement_timeout` and the connection by `connect_timeout`, so a database
//! that hangs is an error (the seller then fails closed), never a stuck seller. No TLS:
//! run it on loopback or a private network (or put TLS in front); the URL's password is
//! never logged. The schema is versioned in `dazaar_schema`; migrations run under an
//! advisory lock, so nodes starting together apply each step once.

use std::sync::{Mutex, MutexGuard};

use postgres::{Client, NoTls};

use super::{Key, LedgerPayment, RevocationRecord, Sale, StateError, BUSY_TIMEOUT};

/// The schema, one step per version, the same versions as SQLite's (`MIGRATIONS`).
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: revocations, ledger, sales, byte counters, plugin key-value state, imports done.
    "CREATE TABLE revocations (
        seller BYTEA NOT NULL, buyer BYTEA NOT NULL,
        at_ms BIGINT NOT NULL, burnt BOOLEAN NOT NULL,
        PRIMARY KEY (seller, buyer)
    );
    CREATE TABLE ledger (
        id BIGSERIAL PRIMARY KEY,
        buyer BYTEA NOT NULL, seller BYTEA, amount DOUBLE PRECISION NOT NULL,
        time_ms BIGINT NOT NULL, note TEXT
    );
    CREATE INDEX ledger_buyer ON ledger (buyer);
    CREATE TABLE sales (
        id BIGSERIAL PRIMARY KEY,
        seller BYTEA NOT NULL, buyer BYTEA NOT NULL, method TEXT NOT NULL,
        grant_kind TEXT NOT NULL, remaining BIGINT NOT NULL, at_ms BIGINT NOT NULL
    );
    CREATE TABLE bytes_sent (
        seller BYTEA NOT NULL, buyer BYTEA NOT NULL, bytes BIGINT NOT NULL,
        PRIMARY KEY (seller, buyer)
    );
    CREATE TABLE plugin_state (
        plugin TEXT NOT NULL, product BYTEA NOT NULL, key TEXT NOT NULL, value BYTEA NOT NULL,
        PRIMARY KEY (plugin, product, key)
    );
    CREATE TABLE imports (source TEXT PRIMARY KEY, at_ms BIGINT NOT NULL);",
    // 2: seller nodes' heartbeats and the buyers' connection leases.
    "CREATE TABLE nodes (node TEXT PRIMARY KEY, heartbeat_ms BIGINT NOT NULL);
    CREATE TABLE leases (
        seller BYTEA NOT NULL, buyer BYTEA NOT NULL, node TEXT NOT NULL,
        since_ms BIGINT NOT NULL,
        PRIMARY KEY (seller, buyer)
    );",
];

/// The advisory lock key migrations take ("dazaar" in ASCII).
const MIGRATION_LOCK: i64 = 0x6461_7a61_6172;

impl From<postgres::Error> for StateError {
    fn from(e: postgres::Error) -> Self {
        // The driver's text never holds the URL's password.
        StateError::Database(e.to_string())
    }
}

pub(super) struct PgState {
    url: String,
    shown: String,
    client: Mutex<Option<Client>>,
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgState")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn key_from(blob: Vec<u8>) -> Result<Key, StateError> {
    blob.try_into()
        .map_err(|_| StateError::Malformed { what: "key" })
}

/// Runs `f` here, or on a scoped thread when this thread belongs to a tokio runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl Drop for PgState {
    fn drop(&mut self) {
        // Closing the client blocks on its runtime too.
        let client = match self.client.get_mut() {
            Ok(c) => c.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(client) = client {
            off_runtime(move || drop(client));
        }
    }
}

impl PgState {
    /// Connects to `url` (shown as `shown` in errors) and migrates the schema.
    pub(super) fn open(url: &str, shown: &str) -> Result<PgState, StateError> {
        let state = PgState {
            url: url.to_owned(),
            shown: shown.to_owned(),
            client: Mutex::new(None),
        };
        state.migrate()?;
        Ok(state)
    }

    fn connect(&self) -> Result<Client, StateError> {
        let mut config: postgres::Config =
            self.url
                .parse()
                .map_err(|e: postgres::Error| StateError::Open {
                    url: self.shown.clone(),
                    detail: e.to_string(),
                })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(BUSY_TIMEOUT);
        }
        let mut client = config.connect(NoTls).map_err(|e| StateError::Open {
            url: self.shown.clone(),
            detail: e.to_string(),
        })?;
        let ms = BUSY_TIMEOUT.as_millis();
        client.batch_execute(&format!(
            "SET statement_timeout = {ms}; SET lock_timeout = {ms}"
        ))?;
        Ok(client)
    }

    /// The connection, opened (again) if it is not.
    fn client(&self) -> Result<MutexGuard<'_, Option<Client>>, StateError> {
        let mut slot = match self.client.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.connect()?);
        }
        Ok(slot)
    }

    /// Runs `f` on the connection; a broken connection is dropped (the next call opens
    /// a new one) and the error returned.
    ///
    /// The synchronous client drives its own small runtime, which tokio refuses to start
    /// on a thread that belongs to a runtime: there (a seller's async tasks, its blocking
    /// pool) the call runs on a short-lived thread of its own, and the caller waits.
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, StateError> {
        off_runtime(|| self.with_here(f))
    }

    fn with_here<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StateError> {
        let mut slot = self.client()?;
        let Some(client) = slot.as_mut() else {
            return Err(StateError::Database("not connected".into()));
        };
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                if client.is_closed() {
                    *slot = None;
                }
                Err(e.into())
            }
        }
    }

    pub(super) fn schema_version(&self) -> Result<u32, StateError> {
        let v: i32 = self.with(|c| {
            c.query_one("SELECT version FROM dazaar_schema", &[])
                .map(|r| r.get(0))
        })?;
        Ok(u32::try_from(v).unwrap_or(0))
    }

    fn migrate(&self) -> Result<(), StateError> {
        let known = MIGRATIONS.len();
        let found = self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
            tx.batch_execute(
                "CREATE TABLE IF NOT EXISTS dazaar_schema (version INTEGER NOT NULL)",
            )?;
            let version: i32 = match tx.query_opt("SELECT version FROM dazaar_schema", &[])? {
                Some(row) => row.get(0),
                None => {
                    tx.execute("INSERT INTO dazaar_schema (version) VALUES (0)", &[])?;
                    0
                }
            };
            let version = usize::try_from(version).unwrap_or(0);
            if version > known {
                return Ok(version);
            }
            for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.batch_execute(step)?;
                let next = i32::try_from(i + 1).unwrap_or(i32::MAX);
                tx.execute("UPDATE dazaar_schema SET version = $1", &[&next])?;
            }
            tx.commit()?;
            Ok(known)
        })?;
        if found > known {
            return Err(StateError::NewerSchema {
                url: self.shown.clone(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                known: u32::try_from(known).unwrap_or(u32::MAX),
            });
        }
        Ok(())
    }

    pub(super) fn revoke(
        &self,
        seller: &Key,
        buyer: &Key,
        burnt: bool,
        at_ms: u64,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO revocations (seller, buyer, at_ms, burnt) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (seller, buyer) DO UPDATE SET burnt = revocations.burnt OR excluded.burnt",
                &[&&seller[..], &&buyer[..], &to_i64(at_ms), &burnt],
            )
        })?;
        Ok(())
    }

    pub(super) fn revocation(
        &self,
        seller: &Key,
        buyer: &Key,
    ) -> Result<Option<RevocationRecord>, StateError> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT at_ms, burnt FROM revocations WHERE seller = $1 AND buyer = $2",
                &[&&seller[..], &&buyer[..]],
            )
        })?;
        Ok(row.map(|r| RevocationRecord {
            buyer: *buyer,
            at_ms: to_u64(r.get(0)),
            burnt: r.get(1),
        }))
    }

    pub(super) fn revocations(&self, seller: &Key) -> Result<Vec<RevocationRecord>, StateError> {
        let rows = self.with(|c| {
            c.query(
                "SELECT buyer, at_ms, burnt FROM revocations WHERE seller = $1 ORDER BY buyer",
                &[&&seller[..]],
            )
        })?;
        rows.into_iter()
            .map(|r| {
                Ok(RevocationRecord {
                    buyer: key_from(r.get(0))?,
                    at_ms: to_u64(r.get(1)),
                    burnt: r.get(2),
                })
            })
            .collect()
    }

    pub(super) fn ledger_add(&self, p: &LedgerPayment) -> Result<i64, StateError> {
        let seller = p.seller.as_ref().map(|s| &s[..]);
        let row = self.with(|c| {
            c.query_one(
                "INSERT INTO ledger (buyer, seller, amount, time_ms, note) VALUES ($1, $2, $3, $4, $5)
                 RETURNING id",
                &[&&p.buyer[..], &seller, &p.amount, &to_i64(p.time), &p.note],
            )
        })?;
        Ok(row.get(0))
    }

    pub(super) fn ledger(&self, buyer: Option<&Key>) -> Result<Vec<LedgerPayment>, StateError> {
        let buyer = buyer.map(|b| &b[..]);
        let rows = self.with(|c| {
            c.query(
                "SELECT id, buyer, seller, amount, time_ms, note FROM ledger
                 WHERE $1::BYTEA IS NULL OR buyer = $1 ORDER BY id",
                &[&buyer],
            )
        })?;
        rows.into_iter()
            .map(|r| {
                Ok(LedgerPayment {
                    id: r.get(0),
                    buyer: key_from(r.get(1))?,
                    seller: r.get::<_, Option<Vec<u8>>>(2).map(key_from).transpose()?,
                    amount: r.get(3),
                    time: to_u64(r.get(4)),
                    note: r.get(5),
                })
            })
            .collect()
    }

    pub(super) fn record_sale(&self, s: &Sale) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sales (seller, buyer, method, grant_kind, remaining, at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &&s.seller[..],
                    &&s.buyer[..],
                    &s.method,
                    &s.grant,
                    &to_i64(s.remaining),
                    &to_i64(s.at_ms),
                ],
            )
        })?;
        Ok(())
    }

    pub(super) fn sales(&self) -> Result<Vec<Sale>, StateError> {
        let rows = self.with(|c| {
            c.query(
                "SELECT seller, buyer, method, grant_kind, remaining, at_ms FROM sales ORDER BY id",
                &[],
            )
        })?;
        rows.into_iter()
            .map(|r| {
                Ok(Sale {
                    seller: key_from(r.get(0))?,
                    buyer: key_from(r.get(1))?,
                    method: r.get(2),
                    grant: r.get(3),
                    remaining: to_u64(r.get(4)),
                    at_ms: to_u64(r.get(5)),
                })
            })
            .collect()
    }

    pub(super) fn add_bytes(&self, seller: &Key, buyer: &Key, n: u64) -> Result<u64, StateError> {
        let row = self.with(|c| {
            c.query_one(
                "INSERT INTO bytes_sent (seller, buyer, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT (seller, buyer) DO UPDATE
                   SET bytes = LEAST(bytes_sent.bytes::NUMERIC + excluded.bytes, 9223372036854775807)::BIGINT
                 RETURNING bytes",
                &[&&seller[..], &&buyer[..], &to_i64(n)],
            )
        })?;
        Ok(to_u64(row.get(0)))
    }

    pub(super) fn bytes(&self, seller: &Key, buyer: &Key) -> Result<u64, StateError> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT bytes FROM bytes_sent WHERE seller = $1 AND buyer = $2",
                &[&&seller[..], &&buyer[..]],
            )
        })?;
        Ok(row.map_or(0, |r| to_u64(r.get(0))))
    }

    pub(super) fn plugin_get(
        &self,
        plugin: &str,
        product: &Key,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let row = self.with(|c| {
            c.query_opt(
                "SELECT value FROM plugin_state WHERE plugin = $1 AND product = $2 AND key = $3",
                &[&plugin, &&product[..], &key],
            )
        })?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(super) fn plugin_put(
        &self,
        plugin: &str,
        product: &Key,
        key: &str,
        value: &[u8],
    ) -> Result<(), StateError> {
        let full = self.with(|c| {
            let mut tx = c.transaction()?;
            let exists = tx
                .query_opt(
                    "SELECT 1 FROM plugin_state WHERE plugin = $1 AND product = $2 AND key = $3",
                    &[&plugin, &&product[..], &key],
                )?
                .is_some();
            if !exists {
                let count: i64 = tx
                    .query_one(
                        "SELECT COUNT(*) FROM plugin_state WHERE plugin = $1 AND product = $2",
                        &[&plugin, &&product[..]],
                    )?
                    .get(0);
                if to_u64(count) >= super::MAX_PLUGIN_KEYS {
                    return Ok(Some(to_u64(count)));
                }
            }
            tx.execute(
                "INSERT INTO plugin_state (plugin, product, key, value) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (plugin, product, key) DO UPDATE SET value = excluded.value",
                &[&plugin, &&product[..], &key, &value],
            )?;
            tx.commit()?;
            Ok(None)
        })?;
        match full {
            Some(n) => Err(StateError::Full(n)),
            None => Ok(()),
        }
    }

    pub(super) fn plugin_delete(
        &self,
        plugin: &str,
        product: &Key,
        key: &str,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM plugin_state WHERE plugin = $1 AND product = $2 AND key = $3",
                &[&plugin, &&product[..], &key],
            )
        })?;
        Ok(())
    }

    pub(super) fn heartbeat(&self, node: &str, now_ms: u64) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO nodes (node, heartbeat_ms) VALUES ($1, $2)
                 ON CONFLICT (node) DO UPDATE
                   SET heartbeat_ms = GREATEST(nodes.heartbeat_ms, excluded.heartbeat_ms)",
                &[&node, &to_i64(now_ms)],
            )
        })?;
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
        self.with(|c| {
            // One statement: a conflicting insert waits for the other transaction and then
            // sees its row, so two nodes never both win.
            let won = c.query_opt(
                "INSERT INTO leases (seller, buyer, node, since_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (seller, buyer) DO UPDATE
                   SET node = excluded.node, since_ms = excluded.since_ms
                   WHERE leases.node = excluded.node
                      OR COALESCE((SELECT heartbeat_ms FROM nodes WHERE nodes.node = leases.node), 0) < $5
                 RETURNING node",
                &[&&seller[..], &&buyer[..], &node, &to_i64(now_ms), &to_i64(dead_before_ms)],
            )?;
            if won.is_some() {
                return Ok(None);
            }
            let holder = c.query_opt(
                "SELECT node FROM leases WHERE seller = $1 AND buyer = $2",
                &[&&seller[..], &&buyer[..]],
            )?;
            Ok(Some(holder.map(|r| r.get::<_, String>(0)).unwrap_or_default()))
        })
    }

    pub(super) fn release_lease(
        &self,
        seller: &Key,
        buyer: &Key,
        node: &str,
    ) -> Result<(), StateError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM leases WHERE seller = $1 AND buyer = $2 AND node = $3",
                &[&&seller[..], &&buyer[..], &node],
            )
        })?;
        Ok(())
    }

    pub(super) fn import_rows(
        &self,
        source: &str,
        revocations: &[(Key, RevocationRecord)],
        payments: &[LedgerPayment],
    ) -> Result<bool, StateError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // Taken first: two nodes importing the same file at once import it once.
            let claimed = tx.execute(
                "INSERT INTO imports (source, at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&source, &to_i64(super::unix_ms_now())],
            )?;
            if claimed == 0 {
                return Ok(false);
            }
            for (seller, r) in revocations {
                tx.execute(
                    "INSERT INTO revocations (seller, buyer, at_ms, burnt) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (seller, buyer) DO UPDATE SET burnt = revocations.burnt OR excluded.burnt",
                    &[&&seller[..], &&r.buyer[..], &to_i64(r.at_ms), &r.burnt],
                )?;
            }
            for p in payments {
                let seller = p.seller.as_ref().map(|s| &s[..]);
                tx.execute(
                    "INSERT INTO ledger (buyer, seller, amount, time_ms, note) VALUES ($1, $2, $3, $4, $5)",
                    &[&&p.buyer[..], &seller, &p.amount, &to_i64(p.time), &p.note],
                )?;
            }
            tx.commit()?;
            Ok(true)
        })
    }
}
