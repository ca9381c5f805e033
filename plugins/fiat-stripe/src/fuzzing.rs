//! Body of the `stripe` fuzz target (`fuzz/` at the repository root) and of its corpus
//! replay test. Not part of the plugin's API.

use serde_json::Value;

use crate::money::Currency;
use crate::objects::{intent_of, read_payment};
use crate::secret::Secret;
use crate::webhook::{sign, verify_signature, SignatureError};

/// The clock the webhook checks run at (Unix seconds), and their tolerance.
const NOW_S: u64 = 1_700_000_000;
const TOLERANCE_S: u64 = 300;

/// Target `stripe`. First byte even: the rest is an API response body (a list or search
/// page, or one object). Odd: a webhook delivery, `Stripe-Signature` header, a newline,
/// then the body.
pub fn stripe(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        response(rest);
    } else {
        webhook(rest);
    }
}

/// An API response as `api::list_all`/`search_all` and the lookups read it.
fn response(body: &[u8]) {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    if let Some(items) = v.get("data").and_then(Value::as_array) {
        for item in items {
            read_object(item);
        }
    }
    let _ = v.get("has_more").and_then(Value::as_bool);
    let _ = v.get("next_page").and_then(Value::as_str);
    read_object(&v);
}

fn read_object(obj: &Value) {
    if let Some(p) = read_payment(obj) {
        assert!(p.net_minor >= 0, "a payment with a negative net amount");
        let _ = p.currency.to_major(p.net_minor);
        let _ = p.currency.code();
    }
    let _ = intent_of(obj);
    for key in ["currency", "amount", "amount_total"] {
        if let Some(text) = obj.get(key).and_then(Value::as_str) {
            if let Ok(c) = Currency::parse(text) {
                let _ = c.exponent();
            }
            if let Ok(usd) = Currency::parse("usd") {
                let _ = usd.to_minor(text);
            }
        }
    }
}

/// A webhook delivery: the signature check, then the event as `on_event` reads it.
fn webhook(data: &[u8]) {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            data.get(..i).unwrap_or_default(),
            data.get(i + 1..).unwrap_or_default(),
        ),
        None => (data, &[][..]),
    };
    let secret = Secret::new("whsec_fuzz".to_owned());
    if let Ok(header) = std::str::from_utf8(header) {
        let _ = verify_signature(&secret, header, body, NOW_S, TOLERANCE_S);
    }
    // Our own signature verifies; on another body, or stale, it does not.
    let good = sign(&secret, body, NOW_S);
    assert_eq!(
        verify_signature(&secret, &good, body, NOW_S, TOLERANCE_S),
        Ok(())
    );
    let mut other = body.to_vec();
    other.push(b' ');
    assert_eq!(
        verify_signature(&secret, &good, &other, NOW_S, TOLERANCE_S),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify_signature(&secret, &good, body, NOW_S + TOLERANCE_S + 1, TOLERANCE_S),
        Err(SignatureError::Stale)
    );
    // The event body, as the plugin's event handler reads it.
    let Ok(event) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let _kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    if let Some(obj) = event.get("data").and_then(|d| d.get("object")) {
        read_object(obj);
    }
}

#[cfg(test)]
mod tests {
    /// Every file of `fuzz/corpus/stripe` runs through the target (as `cargo fuzz run`
    /// would replay it), so a fixed crash stays fixed.
    #[test]
    fn corpus_replays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/stripe");
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
        let mut count = 0;
        for entry in entries {
            let data = std::fs::read(entry.expect("corpus entry").path()).expect("corpus file");
            super::stripe(&data);
            count += 1;
        }
        assert!(count > 0, "corpus {} is empty", dir.display());
    }
}
