//! One card payment entry: JSON <-> [`PaymentTerms`].

use abi_stable::std_types::{RNone, RSome};
use dazaar_plugin_api::PaymentTerms;
use serde_json::{Map, Value};

/// Why a card payment entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed card payment entry: {0}")]
pub struct EntryError(String);

fn malformed(detail: impl Into<String>) -> EntryError {
    EntryError(detail.into())
}

fn text_or_number(v: Option<&Value>, key: &'static str) -> Result<String, EntryError> {
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        _ => Err(malformed(format!("`{key}` must be a string or number"))),
    }
}

fn opt_text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads one card payment entry (`method`, `currency`, `amount`, `unit`, `interval` (may
/// be absent for unit `once`),
/// optional `payTo`, `minSeconds`, `paymentDelay`; other keys go to `extra_json`).
pub fn terms_from_card(entry: &Value) -> Result<PaymentTerms, EntryError> {
    let obj = entry
        .as_object()
        .ok_or_else(|| malformed("not an object"))?;
    let text = |k: &'static str| -> Result<String, EntryError> {
        obj.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed(format!("no string `{k}`")))
    };
    let unit = text("unit")?;
    // `once` ignores the interval, so a card may leave it out.
    let interval = match obj.get("interval") {
        None if unit == "once" => String::new(),
        v => text_or_number(v, "interval")?,
    };
    let mut terms = PaymentTerms::new(
        &text("method")?,
        &text("currency")?,
        &text_or_number(obj.get("amount"), "amount")?,
        &unit,
        &interval,
    );
    terms.pay_to = match opt_text(obj.get("payTo")) {
        Some(p) => RSome(p.into()),
        None => RNone,
    };
    if let Some(m) = opt_text(obj.get("minSeconds")) {
        terms.min_seconds = m
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| malformed("`minSeconds` is not a number"))?;
    }
    if let Some(d) = opt_text(obj.get("paymentDelay")) {
        terms.payment_delay_ms = d
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            // Milliseconds; a fraction of one does not matter.
            .map(|v| v as u64)
            .ok_or_else(|| malformed("`paymentDelay` is not a number"))?;
    }
    let known = [
        "method",
        "currency",
        "amount",
        "unit",
        "interval",
        "payTo",
        "minSeconds",
        "paymentDelay",
    ];
    let extra: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    terms.extra_json = Value::Object(extra).to_string().into();
    Ok(terms)
}

/// Writes a card payment entry (the inverse of [`terms_from_card`]).
pub fn terms_to_card(terms: &PaymentTerms) -> Value {
    let mut obj = match serde_json::from_str::<Value>(terms.extra_json.as_str()) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    obj.insert("method".into(), terms.method.as_str().into());
    obj.insert("currency".into(), terms.currency.as_str().into());
    obj.insert("amount".into(), terms.amount.as_str().into());
    obj.insert("unit".into(), terms.unit.as_str().into());
    if !(terms.unit.as_str() == "once" && terms.interval.is_empty()) {
        obj.insert("interval".into(), terms.interval.as_str().into());
    }
    if let Some(p) = terms.pay_to.as_ref().into_option() {
        obj.insert("payTo".into(), p.as_str().into());
    }
    if terms.min_seconds > 0.0 {
        obj.insert("minSeconds".into(), terms.min_seconds.into());
    }
    if terms.payment_delay_ms > 0 {
        obj.insert("paymentDelay".into(), terms.payment_delay_ms.into());
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_entry_from_the_field() {
        let v: Value = serde_json::from_str(
            r#"{"method":"Lightning","currency":"SATS","amount":100,"unit":"hours",
                "interval":1,"minSeconds":1,"label":"hourly"}"#,
        )
        .unwrap();
        let t = terms_from_card(&v).unwrap();
        assert_eq!(t.method.as_str(), "Lightning");
        assert_eq!(t.amount.as_str(), "100");
        assert_eq!(t.interval.as_str(), "1");
        assert_eq!(t.min_seconds, 1.0);
        assert_eq!(t.extra_json.as_str(), r#"{"label":"hourly"}"#);
        let back = terms_to_card(&t);
        assert_eq!(back["label"], "hourly");
        assert_eq!(back["minSeconds"], 1.0);
        assert!(terms_from_card(&serde_json::json!({"method": "x"})).is_err());
    }
}
