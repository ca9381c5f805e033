//! The Dazaar card: the JSON that advertises a dataset and its payment terms.
//!
//! The paper calls the seller key `sellerKey`; JS dazaar reads `id`. We write both and
//! accept either (they must agree when both are present). Fields: `name`, `description`,
//! `homepage`, `contact`, `provider`, `id`/`sellerKey` (hex), `keywords`, `version`,
//! `payment` (array; empty or absent = free). Unknown fields are kept as they are.

use serde::{Serialize, Serializer};
use serde_json::Value;

use dazaar_plugin_api::pricing::Price;
use dazaar_plugin_api::PaymentTerms;

mod entry;

pub use entry::{terms_from_card, terms_to_card, EntryError};

/// The descriptive fields of a card (a `[[sell]]`'s `card` table).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CardFields {
    /// Card `description`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Card `homepage`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
    /// Card `contact`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// Card `provider`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Card `keywords`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
}

/// A burnt buyer's rekeyed feed key pair, published in the card so that a copy of that
/// buyer's feed no longer proves it came from the seller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BurntKey {
    /// The buyer's key.
    #[serde(serialize_with = "hex_bytes")]
    pub buyer: [u8; 32],
    /// The buyer's rekeyed feed key.
    #[serde(rename = "feedKey", serialize_with = "hex_bytes")]
    pub feed_key: [u8; 32],
    /// Its secret key (published on purpose: that is what burning means).
    #[serde(rename = "secretKey", serialize_with = "hex_bytes")]
    pub secret_key: Vec<u8>,
}

/// A card a seller writes: built with [`build`], written with `serde_json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    /// Product name.
    pub name: String,
    /// Description, homepage, contact, provider, keywords.
    pub fields: CardFields,
    /// The seller key of the product (written as both `id` and `sellerKey`).
    pub seller_key: [u8; 32],
    /// Payment entries (empty: free).
    pub payment: Vec<PaymentTerms>,
    /// Burnt buyers' key pairs.
    pub burnt: Vec<BurntKey>,
}

fn hex_bytes<S: Serializer>(bytes: impl AsRef<[u8]>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

fn card_entries<S: Serializer>(terms: &[PaymentTerms], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(terms.iter().map(terms_to_card))
}

/// The card's JSON shape (field order as JS dazaar writes cards).
#[derive(Serialize)]
struct CardJson<'a> {
    name: &'a str,
    #[serde(flatten)]
    fields: &'a CardFields,
    #[serde(serialize_with = "hex_bytes")]
    id: &'a [u8; 32],
    #[serde(rename = "sellerKey", serialize_with = "hex_bytes")]
    seller_key: &'a [u8; 32],
    #[serde(serialize_with = "card_entries")]
    payment: &'a [PaymentTerms],
    #[serde(skip_serializing_if = "<[BurntKey]>::is_empty")]
    burnt: &'a [BurntKey],
}

impl Serialize for Card {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        CardJson {
            name: &self.name,
            fields: &self.fields,
            id: &self.seller_key,
            seller_key: &self.seller_key,
            payment: &self.payment,
            burnt: &self.burnt,
        }
        .serialize(s)
    }
}

impl Card {
    /// The card as JSON.
    pub fn to_json(&self) -> Value {
        // Serializing strings, lists and maps of strings into a `Value` cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

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

/// Builds the card of one product (no burnt keys: the market adds them).
pub fn build(
    name: &str,
    fields: &CardFields,
    seller_key: &[u8; 32],
    payment: &[PaymentTerms],
) -> Card {
    Card {
        name: name.to_owned(),
        fields: fields.clone(),
        seller_key: *seller_key,
        payment: payment.to_vec(),
        burnt: Vec::new(),
    }
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
                Price::from_card(&terms.amount, &terms.unit, &terms.interval)
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

/// What an amount of access costs under one card payment entry ([`quote`]).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Quote {
    /// A time price: `seconds` (raised to the entry's `minSeconds`) cost `amount`.
    Time {
        /// Seconds quoted.
        seconds: f64,
        /// Their cost.
        amount: f64,
    },
    /// A data price: `bytes` cost `amount`.
    Data {
        /// Bytes quoted.
        bytes: u64,
        /// Their cost.
        amount: f64,
    },
    /// A one-time price: access for good costs `amount`.
    Once {
        /// The price.
        amount: f64,
    },
}

/// What `seconds` of access or `bytes` of data cost under `terms`: a time entry quotes
/// `seconds`, a data entry `bytes`, a one-time entry its price. `Ok(None)` when the
/// entry prices what was not asked (a time entry without `seconds`, a data entry
/// without `bytes`).
pub fn quote(
    terms: &PaymentTerms,
    seconds: Option<f64>,
    bytes: Option<u64>,
) -> Result<Option<Quote>, dazaar_plugin_api::PricingError> {
    Ok(
        match Price::from_card(&terms.amount, &terms.unit, &terms.interval)? {
            Price::Time(rate) => seconds.map(|s| {
                let seconds = s.max(terms.min_seconds);
                Quote::Time {
                    seconds,
                    amount: rate.rate_per_second() * seconds,
                }
            }),
            Price::Data(d) => bytes.map(|bytes| Quote::Data {
                bytes,
                amount: d.cost(bytes),
            }),
            Price::Once(o) => Some(Quote::Once { amount: o.amount() }),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_by_unit() {
        let mut t = PaymentTerms::new("ledger", "credits", "2", "minutes", "1");
        t.min_seconds = 30.0;
        assert_eq!(
            quote(&t, Some(10.0), Some(5)).unwrap(),
            Some(Quote::Time {
                seconds: 30.0,
                amount: 1.0
            })
        );
        assert_eq!(quote(&t, None, Some(5)).unwrap(), None);
        let t = PaymentTerms::new("ledger", "credits", "1", "kilobytes", "10");
        assert_eq!(
            quote(&t, None, Some(50_000)).unwrap(),
            Some(Quote::Data {
                bytes: 50_000,
                amount: 5.0
            })
        );
        assert_eq!(quote(&t, Some(1.0), None).unwrap(), None);
        let t = PaymentTerms::new("ledger", "credits", "3", "once", "");
        assert_eq!(
            quote(&t, None, None).unwrap(),
            Some(Quote::Once { amount: 3.0 })
        );
        let t = PaymentTerms::new("ledger", "credits", "3", "days", "1");
        assert!(quote(&t, Some(1.0), None).is_err());
    }

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
        let settings = CardFields {
            description: Some("ticks".into()),
            keywords: vec!["btc".into()],
            ..CardFields::default()
        };
        let terms = PaymentTerms::new("ledger", "USD", "1", "minutes", "1");
        let json = build("Ticks", &settings, &[7; 32], &[terms]).to_json();
        assert_eq!(json["id"], json["sellerKey"]);
        let card = validate(&json).expect("valid");
        assert_eq!(card.seller_key, [7; 32]);
        assert_eq!(card.payment[0].unit.as_str(), "minutes");
        let free = build("Free", &CardFields::default(), &[1; 32], &[]).to_json();
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
