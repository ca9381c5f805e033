//! The Dazaar card: the JSON that advertises a dataset and its payment terms.
//!
//! The paper calls the seller key `sellerKey`; JS dazaar reads `id`. We write both and
//! accept either (they must agree when both are present). Fields: `name`, `description`,
//! `homepage`, `contact`, `provider`, `id`/`sellerKey` (hex), `keywords`, `version`,
//! `payment` (array; empty or absent = free). Unknown fields are kept as they are.

use serde_json::{Map, Value};

use crate::config::CardSettings;
use crate::payments::{terms_from_card, terms_to_card};
use dazaar_plugin_api::pricing::Rate;
use dazaar_plugin_api::PaymentTerms;

/// Why a card is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    /// Not JSON, or not an object.
    #[error("not a Dazaar card: {0}")]
    NotACard(String),
    /// A field is missing or wrong; `field` names it (e.g. `payment[1].unit`).
    #[error("{field}: {reason}")]
    Field {
        /// Which field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn field(field: impl Into<String>, reason: impl Into<String>) -> CardError {
    CardError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A card that passed [`validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCard {
    /// The seller's Noise public key for this product.
    pub seller_key: [u8; 32],
    /// Product name.
    pub name: Option<String>,
    /// Payment entries (empty = free).
    pub payment: Vec<PaymentTerms>,
    /// The card as JSON.
    pub json: Value,
}

impl ValidCard {
    /// Whether the product is free.
    pub fn is_free(&self) -> bool {
        self.payment.is_empty()
    }
}

/// Builds the card of one product.
pub fn build(
    name: &str,
    card: &CardSettings,
    seller_key: &[u8; 32],
    payment: &[PaymentTerms],
) -> Value {
    let key = hex::encode(seller_key);
    let mut obj = Map::new();
    obj.insert("name".into(), name.into());
    let text = |v: &Option<String>| v.as_ref().map(|s| Value::from(s.as_str()));
    for (k, v) in [
        ("description", text(&card.description)),
        ("homepage", text(&card.homepage)),
        ("contact", text(&card.contact)),
        ("provider", text(&card.provider)),
    ] {
        if let Some(v) = v {
            obj.insert(k.into(), v);
        }
    }
    obj.insert("id".into(), key.clone().into());
    obj.insert("sellerKey".into(), key.into());
    if !card.keywords.is_empty() {
        obj.insert("keywords".into(), card.keywords.clone().into());
    }
    obj.insert(
        "payment".into(),
        Value::Array(payment.iter().map(terms_to_card).collect()),
    );
    Value::Object(obj)
}

/// Parses and checks a card from its JSON text.
pub fn parse(text: &str) -> Result<ValidCard, CardError> {
    let json: Value = serde_json::from_str(text)
        .map_err(|e| CardError::NotACard(format!("invalid JSON: {e}")))?;
    validate(&json)
}

fn parse_key(v: &Value, name: &str) -> Result<[u8; 32], CardError> {
    let s = v.as_str().ok_or_else(|| field(name, "not a string"))?;
    let bytes = hex::decode(s).map_err(|_| field(name, "not hex"))?;
    bytes
        .try_into()
        .map_err(|_| field(name, "not 32 bytes (64 hex digits)"))
}

/// Checks a card: a seller key (`id` or `sellerKey`, agreeing if both), optional text
/// fields of the right type, and payment entries the pricing rules understand.
pub fn validate(json: &Value) -> Result<ValidCard, CardError> {
    let obj = json
        .as_object()
        .ok_or_else(|| CardError::NotACard("not a JSON object".into()))?;
    let id = obj.get("id").map(|v| parse_key(v, "id")).transpose()?;
    let seller = obj
        .get("sellerKey")
        .map(|v| parse_key(v, "sellerKey"))
        .transpose()?;
    let seller_key = match (id, seller) {
        (Some(a), Some(b)) if a != b => return Err(field("sellerKey", "differs from id")),
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => {
            return Err(field(
                "id",
                "missing (the seller key, as `id` or `sellerKey`)",
            ))
        }
    };
    for k in [
        "name",
        "description",
        "homepage",
        "contact",
        "provider",
        "version",
    ] {
        if let Some(v) = obj.get(k) {
            let ok = v.is_string() || (k == "version" && v.is_number());
            if !ok {
                return Err(field(k, "not a string"));
            }
        }
    }
    if let Some(k) = obj.get("keywords") {
        let ok = k.as_array().is_some_and(|a| a.iter().all(Value::is_string));
        if !ok {
            return Err(field("keywords", "not a list of strings"));
        }
    }
    let mut payment = Vec::new();
    match obj.get("payment") {
        None | Some(Value::Null) => {}
        Some(Value::Array(entries)) => {
            for (i, entry) in entries.iter().enumerate() {
                let terms = terms_from_card(entry)
                    .map_err(|e| field(format!("payment[{i}]"), e.to_string()))?;
                Rate::from_card(&terms.amount, &terms.unit, &terms.interval)
                    .map_err(|e| field(format!("payment[{i}]"), e.to_string()))?;
                if terms.method.trim().is_empty() {
                    return Err(field(format!("payment[{i}].method"), "empty"));
                }
                payment.push(terms);
            }
        }
        Some(_) => return Err(field("payment", "not a list")),
    }
    Ok(ValidCard {
        seller_key,
        name: obj.get("name").and_then(Value::as_str).map(str::to_owned),
        payment,
        json: json.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELD_CARD: &str = r#"{"id":"1dcac8b51ee04f08619cb793399d292ed44e3be46ca82ed9294f51942321b037",
 "name":"Bitfinex Terminal Order Book BTCUSD",
 "payment":[{"method":"Lightning","currency":"SATS","amount":100,"unit":"hours",
             "interval":1,"minSeconds":1}]}"#;

    #[test]
    fn a_real_card_from_the_field() {
        let card = parse(FIELD_CARD).expect("valid");
        assert_eq!(
            hex::encode(card.seller_key),
            "1dcac8b51ee04f08619cb793399d292ed44e3be46ca82ed9294f51942321b037"
        );
        assert_eq!(card.payment.len(), 1);
        assert_eq!(card.payment[0].method.as_str(), "Lightning");
        assert_eq!(card.payment[0].amount.as_str(), "100");
        assert_eq!(card.payment[0].min_seconds, 1.0);
        assert!(!card.is_free());
    }

    #[test]
    fn build_writes_both_keys_and_round_trips() {
        let settings = CardSettings {
            description: Some("ticks".into()),
            keywords: vec!["btc".into()],
            ..CardSettings::default()
        };
        let terms = PaymentTerms::new("ledger", "USD", "1", "minutes", "1");
        let json = build("Ticks", &settings, &[7; 32], &[terms]);
        assert_eq!(json["id"], json["sellerKey"]);
        let card = validate(&json).expect("valid");
        assert_eq!(card.seller_key, [7; 32]);
        assert_eq!(card.payment[0].unit.as_str(), "minutes");
        let free = build("Free", &CardSettings::default(), &[1; 32], &[]);
        assert!(validate(&free).expect("valid").is_free());
    }

    #[test]
    fn mistakes_are_named() {
        let key = "11".repeat(32);
        let cases = [
            ("[]".to_string(), "not a JSON object"),
            ("{".to_string(), "invalid JSON"),
            ("{}".to_string(), "id: missing"),
            (
                format!(r#"{{"id":"{key}","sellerKey":"{}"}}"#, "22".repeat(32)),
                "sellerKey: differs",
            ),
            (r#"{"id":"abc"}"#.to_string(), "id: not hex"),
            (
                format!(r#"{{"sellerKey":"{}"}}"#, "11".repeat(31)),
                "sellerKey: not 32 bytes",
            ),
            (
                format!(r#"{{"id":"{key}","payment":{{}}}}"#),
                "payment: not a list",
            ),
            (
                format!(
                    r#"{{"id":"{key}","payment":[{{"method":"x","currency":"y","amount":1,"unit":"days","interval":1}}]}}"#
                ),
                "payment[0]",
            ),
            (
                format!(
                    r#"{{"id":"{key}","payment":[{{"method":"x","currency":"y","amount":"lots","unit":"hours","interval":1}}]}}"#
                ),
                "payment[0]",
            ),
            (
                format!(r#"{{"id":"{key}","name":5}}"#),
                "name: not a string",
            ),
        ];
        for (text, needle) in cases {
            let err = parse(&text).expect_err(&text).to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
