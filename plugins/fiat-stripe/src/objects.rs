//! Stripe objects (PaymentIntent, Checkout Session, Charge) read into the one thing the
//! verifier needs: a payment bound to a buyer and seller, net of refunds and disputes.
//!
//! This is the boundary where JSON from the network becomes typed values: anything
//! missing or of the wrong type makes the object count for nothing.

use dazaar_plugin_api::{parse_key, Key};
use serde_json::Value;

use crate::money::Currency;

/// Metadata key holding the seller key (hex).
pub const META_SELLER: &str = "dazaar_seller";
/// Metadata key holding the buyer key (hex).
pub const META_BUYER: &str = "dazaar_buyer";

/// One payment found at Stripe.
#[derive(Debug, Clone, PartialEq)]
pub struct StripePayment {
    /// The PaymentIntent id (or the Checkout Session id when it has none).
    pub id: String,
    /// Seller key from the metadata.
    pub seller: Key,
    /// Buyer key from the metadata.
    pub buyer: Key,
    /// Currency of the payment.
    pub currency: Currency,
    /// Amount kept, in minor units: received, less refunds; zero when disputed.
    pub net_minor: i64,
    /// When it was made (ms since the Unix epoch).
    pub time_ms: u64,
}

/// Refunds and disputes of a charge: (refunded minor units, disputed).
fn charge_losses(charge: &Value) -> (i64, bool) {
    let refunded = charge
        .get("amount_refunded")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .max(0);
    let disputed = charge
        .get("disputed")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    (refunded, disputed)
}

/// Losses over a PaymentIntent's charges: the expanded `latest_charge`, else the older
/// API's `charges.data` list.
fn intent_losses(pi: &Value) -> (i64, bool) {
    if let Some(charge) = pi.get("latest_charge").filter(|c| c.is_object()) {
        return charge_losses(charge);
    }
    let mut refunded = 0i64;
    let mut disputed = false;
    if let Some(list) = pi
        .get("charges")
        .and_then(|c| c.get("data"))
        .and_then(Value::as_array)
    {
        for charge in list {
            let (r, d) = charge_losses(charge);
            refunded = refunded.saturating_add(r);
            disputed |= d;
        }
    }
    (refunded, disputed)
}

fn metadata_keys(obj: &Value) -> Option<(Key, Key)> {
    let meta = obj.get("metadata")?;
    let seller = parse_key(meta.get(META_SELLER)?.as_str()?)?;
    let buyer = parse_key(meta.get(META_BUYER)?.as_str()?)?;
    Some((seller, buyer))
}

fn created_ms(obj: &Value) -> Option<u64> {
    obj.get("created")?.as_u64()?.checked_mul(1000)
}

fn net(received: i64, (refunded, disputed): (i64, bool)) -> i64 {
    if disputed {
        0
    } else {
        received.saturating_sub(refunded).max(0)
    }
}

/// Reads a PaymentIntent or a Checkout Session. `None`: not a succeeded payment carrying
/// dazaar metadata (or not readable), so it counts for nothing.
pub fn read_payment(obj: &Value) -> Option<StripePayment> {
    match obj.get("object")?.as_str()? {
        "payment_intent" => read_intent(obj, None),
        "checkout.session" => read_session(obj),
        _ => None,
    }
}

fn read_intent(pi: &Value, keys: Option<(Key, Key)>) -> Option<StripePayment> {
    if pi.get("status")?.as_str()? != "succeeded" {
        return None;
    }
    let (seller, buyer) = match keys {
        Some(k) => k,
        None => metadata_keys(pi)?,
    };
    let received = match pi.get("amount_received") {
        Some(v) => v.as_i64()?,
        None => pi.get("amount")?.as_i64()?,
    };
    Some(StripePayment {
        id: pi.get("id")?.as_str()?.to_owned(),
        seller,
        buyer,
        currency: Currency::parse(pi.get("currency")?.as_str()?).ok()?,
        net_minor: net(received, intent_losses(pi)),
        time_ms: created_ms(pi)?,
    })
}

fn read_session(s: &Value) -> Option<StripePayment> {
    if s.get("payment_status")?.as_str()? != "paid" {
        return None;
    }
    let keys = metadata_keys(s)?;
    match s.get("payment_intent") {
        // Expanded: the intent knows about refunds; the session's metadata binds it.
        Some(pi) if pi.is_object() => read_intent(pi, Some(keys)),
        other => {
            let id = match other.and_then(Value::as_str) {
                Some(pi) => pi.to_owned(),
                None => s.get("id")?.as_str()?.to_owned(),
            };
            Some(StripePayment {
                id,
                seller: keys.0,
                buyer: keys.1,
                currency: Currency::parse(s.get("currency")?.as_str()?).ok()?,
                net_minor: s.get("amount_total")?.as_i64()?.max(0),
                time_ms: created_ms(s)?,
            })
        }
    }
}

/// The PaymentIntent a charge, refund or dispute event is about, if it names one.
pub fn intent_of(obj: &Value) -> Option<String> {
    match obj.get("payment_intent")? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("id")?.as_str().map(str::to_owned),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pi(status: &str, charge: Value) -> Value {
        json!({"id":"pi_1","object":"payment_intent","status":status,"amount":500,
               "amount_received":500,"currency":"usd","created":1700000000,
               "metadata":{"dazaar_seller":"aa".repeat(32),"dazaar_buyer":"bb".repeat(32)},
               "latest_charge":charge})
    }

    #[test]
    fn intents() {
        let p = read_payment(&pi("succeeded", json!("ch_1"))).unwrap();
        assert_eq!(p.net_minor, 500);
        assert_eq!(p.buyer, [0xbb; 32]);
        assert_eq!(p.time_ms, 1_700_000_000_000);
        assert!(read_payment(&pi("processing", Value::Null)).is_none());
        let refunded = pi("succeeded", json!({"amount_refunded":200,"disputed":false}));
        assert_eq!(read_payment(&refunded).unwrap().net_minor, 300);
        let disputed = pi("succeeded", json!({"amount_refunded":0,"disputed":true}));
        assert_eq!(read_payment(&disputed).unwrap().net_minor, 0);
        let mut no_meta = pi("succeeded", Value::Null);
        no_meta["metadata"] = json!({});
        assert!(read_payment(&no_meta).is_none());
        assert!(read_payment(&json!("garbage")).is_none());
        assert!(read_payment(&json!({"object":"payment_intent","status":"succeeded"})).is_none());
    }

    #[test]
    fn sessions() {
        let s = json!({"id":"cs_1","object":"checkout.session","payment_status":"paid",
            "amount_total":700,"currency":"eur","created":1700000000,"payment_intent":"pi_9",
            "metadata":{"dazaar_seller":"aa".repeat(32),"dazaar_buyer":"bb".repeat(32)}});
        let p = read_payment(&s).unwrap();
        assert_eq!((p.id.as_str(), p.net_minor), ("pi_9", 700));
        let mut unpaid = s.clone();
        unpaid["payment_status"] = json!("unpaid");
        assert!(read_payment(&unpaid).is_none());
        let mut expanded = s.clone();
        expanded["payment_intent"] = pi("succeeded", json!({"amount_refunded":500}));
        assert_eq!(read_payment(&expanded).unwrap().net_minor, 0);
    }
}
