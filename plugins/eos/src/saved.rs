//! What the seller side keeps across restarts in the host's state store (API 1.3), per
//! seller account: the history cursor (with the last irreversible block and the seller
//! keys it was read for) and the dazaar transfers found. With them a restart resumes
//! reading the account's history from the saved cursor instead of from its start, and
//! the payments found before count at once.
//!
//! Layout: `found/<account>/<n>` holds up to [`CHUNK_ENTRIES`] transfers, one JSON object
//! a line, appended to the last chunk; `cursor/<account>` holds the cursor, the last
//! irreversible block and the seller keys (binary, 16 + 32 × n bytes). Transfers are
//! written before the cursor that covers them, so a crash between the two only reads a
//! few actions again (recorded once: by their id).

use std::collections::HashMap;

use dazaar_plugin_api::{parse_key, Key, PluginStore};
use serde::{Deserialize, Serialize};

use crate::chain::Asset;

/// Transfers per chunk: 2048 lines of at most ~300 bytes, under the host's value limit.
pub const CHUNK_ENTRIES: usize = 2048;

/// The longest id kept (the global sequence, or a transaction id and position).
const MAX_ID: usize = 128;

/// One transfer that paid `buyer` for `seller`'s product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTransfer {
    pub seller: Key,
    pub buyer: Key,
    pub id: String,
    pub quantity: Asset,
    pub time_ms: u64,
    pub block_num: u64,
}

/// A transfer as a line of a chunk.
#[derive(Serialize, Deserialize)]
struct Line {
    seller: String,
    buyer: String,
    id: String,
    units: i64,
    precision: u32,
    symbol: String,
    time_ms: u64,
    block_num: u64,
}

impl SavedTransfer {
    fn to_line(&self) -> String {
        serde_json::json!(Line {
            seller: hex::encode(self.seller),
            buyer: hex::encode(self.buyer),
            id: self.id.clone(),
            units: self.quantity.units,
            precision: self.quantity.precision,
            symbol: self.quantity.symbol.clone(),
            time_ms: self.time_ms,
            block_num: self.block_num,
        })
        .to_string()
    }

    fn from_line(line: &str) -> Option<SavedTransfer> {
        let l: Line = serde_json::from_str(line).ok()?;
        if l.id.len() > MAX_ID || l.precision > 18 {
            return None;
        }
        // The symbol is checked as the chain's JSON is.
        let symbol = Asset::parse(&format!("0 {}", l.symbol))?.symbol;
        Some(SavedTransfer {
            seller: parse_key(&l.seller)?,
            buyer: parse_key(&l.buyer)?,
            id: l.id,
            quantity: Asset {
                units: l.units,
                precision: l.precision,
                symbol,
            },
            time_ms: l.time_ms,
            block_num: l.block_num,
        })
    }
}

/// An account's saved cursor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SavedCursor {
    /// Where reading the history continues.
    pub cursor: u64,
    /// The last irreversible block seen.
    pub lib: u64,
    /// The seller keys the history up to `cursor` was read for.
    pub sellers: Vec<Key>,
}

impl SavedCursor {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + 32 * self.sellers.len());
        b.extend_from_slice(&self.cursor.to_le_bytes());
        b.extend_from_slice(&self.lib.to_le_bytes());
        for s in &self.sellers {
            b.extend_from_slice(s);
        }
        b
    }

    fn decode(b: &[u8]) -> Option<SavedCursor> {
        let word = |r: std::ops::Range<usize>| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(r)?.try_into().ok()?))
        };
        let rest = b.get(16..)?;
        if rest.len() % 32 != 0 {
            return None;
        }
        Some(SavedCursor {
            cursor: word(0..8)?,
            lib: word(8..16)?,
            sellers: rest
                .chunks_exact(32)
                .filter_map(|k| k.try_into().ok())
                .collect(),
        })
    }
}

/// The last chunk of one account's transfers.
#[derive(Debug, Default)]
struct Tail {
    number: usize,
    lines: usize,
    bytes: Vec<u8>,
}

/// The plugin's saved state in the host's store.
#[derive(Debug)]
pub struct Saved {
    store: PluginStore,
    tails: HashMap<String, Tail>,
}

fn chunk_key(account: &str, n: usize) -> String {
    format!("found/{account}/{n}")
}

fn cursor_key(account: &str) -> String {
    format!("cursor/{account}")
}

impl Saved {
    /// The saved state in `store`.
    pub fn new(store: PluginStore) -> Saved {
        Saved {
            store,
            tails: HashMap::new(),
        }
    }

    /// Reads what was saved for `account`: its transfers (at most `max`; unreadable lines
    /// are skipped) and its cursor (`None`: read the history from the start).
    pub fn load(
        &mut self,
        account: &str,
        max: usize,
    ) -> Result<(Vec<SavedTransfer>, Option<SavedCursor>), String> {
        let mut found = Vec::new();
        let mut tail = Tail::default();
        let mut n = 0;
        while let Some(bytes) = self.store.get(&chunk_key(account, n))? {
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("saved chunk {n} of {account} is not text"))?;
            let mut lines = 0;
            for line in text.lines() {
                lines += 1;
                if found.len() < max {
                    found.extend(SavedTransfer::from_line(line));
                }
            }
            tail = Tail {
                number: n,
                lines,
                bytes: text.into_bytes(),
            };
            n += 1;
        }
        let cursor = match self.store.get(&cursor_key(account))? {
            Some(b) => Some(
                SavedCursor::decode(&b)
                    .ok_or_else(|| format!("the saved cursor of {account} is damaged"))?,
            ),
            None => None,
        };
        self.tails.insert(account.to_owned(), tail);
        Ok((found, cursor))
    }

    /// Saves transfers found for `account` (after [`load`](Self::load)).
    pub fn append(&mut self, account: &str, found: &[SavedTransfer]) -> Result<(), String> {
        let tail = self.tails.entry(account.to_owned()).or_default();
        for t in found {
            if tail.lines >= CHUNK_ENTRIES {
                *tail = Tail {
                    number: tail.number + 1,
                    ..Tail::default()
                };
            }
            let mut bytes = tail.bytes.clone();
            bytes.extend_from_slice(t.to_line().as_bytes());
            bytes.push(b'\n');
            self.store.put(&chunk_key(account, tail.number), &bytes)?;
            tail.bytes = bytes;
            tail.lines += 1;
        }
        Ok(())
    }

    /// Saves `account`'s cursor.
    pub fn save_cursor(&self, account: &str, cursor: &SavedCursor) -> Result<(), String> {
        self.store.put(&cursor_key(account), &cursor.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_cursors_read_back() {
        let t = SavedTransfer {
            seller: [1; 32],
            buyer: [2; 32],
            id: "500001".into(),
            quantity: Asset::parse("1.2500 EOS").unwrap(),
            time_ms: 1_700_000_000_000,
            block_num: 1001,
        };
        assert_eq!(SavedTransfer::from_line(&t.to_line()), Some(t));
        assert_eq!(SavedTransfer::from_line("{\"seller\":1}"), None);
        let c = SavedCursor {
            cursor: 12,
            lib: 7,
            sellers: vec![[3; 32], [4; 32]],
        };
        assert_eq!(SavedCursor::decode(&c.encode()), Some(c));
        assert_eq!(SavedCursor::decode(&[0; 20]), None);
        assert_eq!(SavedCursor::decode(&[0; 8]), None);
    }
}
