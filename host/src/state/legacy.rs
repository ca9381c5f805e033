//! The JSON state of earlier versions, read for a one-time import: `revocations.json`
//! (seller hex → buyer hex → `{at_ms, burnt}`) and ledger files (JSON lines, as `dazaar
//! ledger add --file` writes and the ledger plugin reads).

use std::collections::BTreeMap;
use std::path::Path;

use super::{parse_hex_key, Key, LedgerPayment, RevocationRecord, StateError};

/// The largest legacy file imported.
const MAX_LEGACY_FILE: u64 = 64 * 1024 * 1024;

#[derive(serde::Deserialize)]
struct LegacyRevocation {
    at_ms: u64,
    #[serde(default)]
    burnt: bool,
}

/// Rows read from a legacy file, and how many entries were unreadable.
pub(super) struct Rows<T> {
    pub(super) rows: Vec<T>,
    pub(super) skipped: usize,
}

/// The revocations of a legacy `revocations.json` (`None`: no such file). A file that is
/// not JSON of that shape is an error (imported nothing); a key that is not hex is
/// skipped.
pub(super) fn revocations(
    path: &Path,
) -> Result<Option<Rows<(Key, RevocationRecord)>>, StateError> {
    let Some(text) = read(path)? else {
        return Ok(None);
    };
    let map: BTreeMap<String, BTreeMap<String, LegacyRevocation>> = serde_json::from_str(&text)
        .map_err(|e| StateError::Import {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    let mut out = Rows {
        rows: Vec::new(),
        skipped: 0,
    };
    for (seller, buyers) in &map {
        for (buyer, r) in buyers {
            match (parse_hex_key(seller), parse_hex_key(buyer)) {
                (Some(seller), Some(buyer)) => out.rows.push((
                    seller,
                    RevocationRecord {
                        buyer,
                        at_ms: r.at_ms,
                        burnt: r.burnt,
                    },
                )),
                _ => out.skipped += 1,
            }
        }
    }
    Ok(Some(out))
}

/// The payments of a ledger file; unreadable lines are skipped and counted.
pub(super) fn ledger(path: &Path) -> Result<Rows<LedgerPayment>, StateError> {
    let Some(text) = read(path)? else {
        return Err(StateError::Import {
            path: path.to_owned(),
            detail: "no such file".into(),
        });
    };
    let mut out = Rows {
        rows: Vec::new(),
        skipped: 0,
    };
    for line in dazaar_plugin_api::ledger_lines(&text) {
        match line {
            Some(l) => out.rows.push(LedgerPayment {
                id: 0,
                buyer: l.buyer,
                seller: l.seller,
                amount: l.amount,
                time: l.time_ms,
                note: l.note,
            }),
            None => out.skipped += 1,
        }
    }
    Ok(out)
}

/// A legacy file's text; `None` when it does not exist. Bounded in size.
fn read(path: &Path) -> Result<Option<String>, StateError> {
    let import_err = |detail: String| StateError::Import {
        path: path.to_owned(),
        detail,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(import_err(e.to_string())),
    };
    if meta.len() > MAX_LEGACY_FILE {
        return Err(import_err(format!("larger than {MAX_LEGACY_FILE} bytes")));
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| import_err(e.to_string()))
}
