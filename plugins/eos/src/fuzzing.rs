//! Body of the `eos_responses` fuzz target (`fuzz/` at the repository root) and of its
//! corpus replay test. Not part of the plugin's API.

use serde_json::Value;

use crate::chain::{parse_block_time, read_v1, read_v2, Asset};

/// Target `eos_responses`: a history or chain API response body as the plugin reads it:
/// `actions[]` entries of both history APIs, `get_info` fields, and every string in it
/// as an asset, a block time and a block id.
pub fn eos_responses(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        // Not JSON: the string readers on the raw text still must not panic.
        if let Ok(text) = std::str::from_utf8(data) {
            read_text(text);
        }
        return;
    };
    if let Some(actions) = v.get("actions").and_then(Value::as_array) {
        for entry in actions {
            if let Some((_, Some(t))) = read_v1(entry) {
                check_transfer(&t);
            }
            if let Some(t) = read_v2(entry) {
                check_transfer(&t);
            }
        }
    }
    // Also a bare entry, as the fuzzer finds it easier to build.
    if let Some((_, Some(t))) = read_v1(&v) {
        check_transfer(&t);
    }
    if let Some(t) = read_v2(&v) {
        check_transfer(&t);
    }
    visit_strings(&v, 0);
}

fn check_transfer(t: &crate::chain::Transfer) {
    assert!(t.quantity.symbol.len() <= 7);
    let _ = t.quantity.amount();
}

/// Strings of a JSON value, depth-bounded (serde_json bounds nesting at 128 already).
fn visit_strings(v: &Value, depth: usize) {
    if depth > 64 {
        return;
    }
    match v {
        Value::String(s) => read_text(s),
        Value::Array(items) => items.iter().for_each(|i| visit_strings(i, depth + 1)),
        Value::Object(map) => map.values().for_each(|i| visit_strings(i, depth + 1)),
        _ => {}
    }
}

fn read_text(text: &str) {
    if let Some(asset) = Asset::parse(text) {
        let _ = asset.amount();
        // What parses formats back to an asset that parses to the same units.
        let int = asset.units / 10i64.pow(asset.precision);
        let frac = asset.units % 10i64.pow(asset.precision);
        let amount = if asset.precision == 0 {
            format!("{int}")
        } else {
            format!("{int}.{frac:0width$}", width = asset.precision as usize)
        };
        if asset.units > 0 {
            let formatted = Asset::format(&amount, asset.precision, &asset.symbol);
            let again = formatted.as_deref().and_then(Asset::parse);
            assert_eq!(again.as_ref(), Some(&asset), "asset did not round-trip");
        }
    }
    for precision in [0, 4, 8] {
        let _ = Asset::format(text, precision, "EOS");
    }
    let _ = parse_block_time(text);
    let _ = crate::tx::ref_block(u64::MAX, text);
    let _ = crate::tx::name_to_u64(text);
    let _ = crate::is_account_name(text);
}

#[cfg(test)]
mod tests {
    /// Every file of `fuzz/corpus/eos_responses` runs through the target (as `cargo fuzz run`
    /// would replay it), so a fixed crash stays fixed.
    #[test]
    fn corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/eos_responses");
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let data = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
            super::eos_responses(&data);
            count += 1;
        }
        assert!(count > 0, "corpus {} is empty", dir.display());
    }
}
