//! The buyer's side: which of its payment plugins can pay a seller's card, and how.

use std::sync::Arc;

use dazaar_plugin_api::{Key, PaymentInstructions, PaymentTerms, UserMessage};
use serde::Deserialize;
use serde_json::{json, Value};

use super::registry::{OpenedVerifier, PaymentError};

fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// Why `dazaar pay` could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayError {
    /// The plugin could not be asked, or refused.
    #[error(transparent)]
    Payment(#[from] PaymentError),
    /// The seller could not be asked.
    #[error("asking the seller: {0}")]
    Seller(String),
    /// The seller did not answer the payment request.
    #[error("the seller did not answer the payment request")]
    NoAnswer,
}

/// What a buyer acts on to pay: an invoice, a checkout page, or an action to make in a
/// wallet (an `invoice` that is a JSON object, as the EOS plugin gives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayTarget {
    /// An invoice to pay (e.g. BOLT 11).
    Invoice(String),
    /// A web page that takes the payment.
    Page(String),
    /// An action to make in a wallet, as JSON text.
    Action(String),
}

/// The body of a seller's answer to a payment request, as far as the buyer reads it: an
/// invoice (`request`, as in `lnd-invoice`) or a checkout page (`url`, as in
/// `stripe-checkout`). Other fields are the plugin's own.
#[derive(Debug, Default, Deserialize)]
struct SellerAnswer {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    url: Option<String>,
}

/// The outcome of [`BuyerWallet::pay`].
#[derive(Debug, Clone)]
pub struct PaymentReport {
    /// The plugin that paid or says how to pay.
    pub plugin: String,
    /// The card entry it chose.
    pub terms: Arc<PaymentTerms>,
    /// The plugin's first answer.
    pub instructions: PaymentInstructions,
    /// The seller's answer to the plugin's message, if it sent one.
    pub seller_reply: Option<UserMessage>,
    /// The plugin's follow-up to that answer (e.g. `lnd-paid`).
    pub result: Option<UserMessage>,
}

/// A user message as JSON: `{"name", "message"}`, the message parsed when it is JSON.
fn message_json(m: &UserMessage) -> Value {
    let body = serde_json::from_str::<Value>(m.message.as_str())
        .unwrap_or_else(|_| Value::String(m.message.to_string()));
    json!({"name": m.name.as_str(), "message": body})
}

impl PaymentReport {
    /// The report as `dazaar pay --json` prints it: the instructions' fields, then
    /// `sellerReply` and `result` when there were any.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(&self.instructions).unwrap_or_else(|_| json!({}));
        if let Value::Object(obj) = &mut v {
            if let Some(r) = &self.seller_reply {
                obj.insert("sellerReply".into(), message_json(r));
            }
            if let Some(r) = &self.result {
                obj.insert("result".into(), message_json(r));
            }
        }
        v
    }

    /// The id of a payment the plugin made in its first answer (it holds the buyer's
    /// wallet, e.g. an EOS transaction).
    pub fn paid_now(&self) -> Option<&str> {
        self.instructions.paid.as_deref()
    }

    /// Whether the payment was made: in the first answer, or by the plugin's follow-up,
    /// which by convention is named `<something>-paid` (e.g. `lnd-paid`).
    pub fn is_paid(&self) -> bool {
        self.paid_now().is_some()
            || self
                .result
                .as_ref()
                .is_some_and(|r| r.name.as_str().ends_with("-paid"))
    }

    /// What the buyer acts on, without repeats: the plugin's invoice (or wallet action)
    /// and page, then the seller's answer's invoice and page. Nothing once paid.
    pub fn targets(&self) -> Vec<PayTarget> {
        let mut out = Vec::new();
        if self.paid_now().is_some() {
            return out;
        }
        let mut add = |t: PayTarget| {
            if !out.contains(&t) {
                out.push(t);
            }
        };
        let text = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).cloned();
        if let Some(i) = text(&self.instructions.invoice) {
            if i.trim_start().starts_with('{') {
                add(PayTarget::Action(i));
            } else {
                add(PayTarget::Invoice(i));
            }
        }
        if let Some(u) = text(&self.instructions.checkout_url) {
            add(PayTarget::Page(u));
        }
        if let Some(reply) = &self.seller_reply {
            let answer: SellerAnswer =
                serde_json::from_str(reply.message.as_str()).unwrap_or_default();
            if let Some(i) = text(&answer.request) {
                add(PayTarget::Invoice(i));
            }
            if let Some(u) = text(&answer.url) {
                add(PayTarget::Page(u));
            }
        }
        out
    }
}

/// One of the buyer's payment plugins, optionally limited to one card method.
#[derive(Debug, Clone)]
pub struct BuyerPlugin {
    /// Only card entries with this method (case-insensitive); `None`: any it serves.
    pub method: Option<String>,
    /// The opened plugin.
    pub verifier: Arc<OpenedVerifier>,
}

/// The buyer's payment plugins, in order of preference.
#[derive(Debug, Clone, Default)]
pub struct BuyerWallet {
    plugins: Vec<BuyerPlugin>,
}

/// A card entry this wallet can pay, and the plugin that pays it.
#[derive(Debug, Clone)]
pub struct PaymentChoice {
    /// The card entry.
    pub terms: Arc<PaymentTerms>,
    /// The plugin.
    pub verifier: Arc<OpenedVerifier>,
}

impl BuyerWallet {
    /// A wallet over `plugins`, first preferred.
    pub fn new(plugins: Vec<BuyerPlugin>) -> BuyerWallet {
        BuyerWallet { plugins }
    }

    /// The first (plugin, card entry) pair that fits, by plugin preference then card
    /// order. `None`: nothing fits.
    pub fn choose(&self, card_payment: &[PaymentTerms]) -> Option<PaymentChoice> {
        for p in &self.plugins {
            for terms in card_payment {
                let method_ok = match p.method.as_deref() {
                    Some(m) => m.eq_ignore_ascii_case(terms.method.as_str()),
                    None => true,
                };
                if method_ok && p.verifier.plugin().serves(&terms.method, &terms.currency) {
                    return Some(PaymentChoice {
                        terms: Arc::new(terms.clone()),
                        verifier: Arc::clone(&p.verifier),
                    });
                }
            }
        }
        None
    }

    /// How to pay for the product behind `card_payment` (a card's payment entries):
    /// `amount` in the card's currency, or the card entry's own amount when `None`.
    pub fn payment_request(
        &self,
        buyer: Key,
        seller: Key,
        card_payment: &[PaymentTerms],
        amount: Option<&str>,
    ) -> Result<(PaymentChoice, PaymentInstructions), PaymentError> {
        let choice = self
            .choose(card_payment)
            .ok_or_else(|| PaymentError::Unsupported {
                method: join(card_payment.iter().map(|t| t.method.as_str())),
                currency: join(card_payment.iter().map(|t| t.currency.as_str())),
            })?;
        let amount = amount.unwrap_or(choice.terms.amount.as_str()).to_owned();
        let how = choice
            .verifier
            .payment_request(buyer, seller, &choice.terms, &amount)?;
        Ok((choice, how))
    }

    /// The whole of `dazaar pay`: asks the chosen plugin how to pay; when it says to ask
    /// the seller first, sends that message with `ask_seller` (which delivers it as a
    /// `dazaar/user-message` and returns the answer) and hands the answer back to the
    /// plugin, whose follow-up (e.g. `lnd-paid` after it paid an invoice itself) ends
    /// the report. The follow-up is the buyer's: it is never sent to the seller.
    pub fn pay<F>(
        &self,
        buyer: Key,
        seller: Key,
        card_payment: &[PaymentTerms],
        amount: Option<&str>,
        ask_seller: F,
    ) -> Result<PaymentReport, PayError>
    where
        F: FnOnce(&UserMessage) -> Result<Option<UserMessage>, String>,
    {
        let (choice, instructions) = self.payment_request(buyer, seller, card_payment, amount)?;
        let mut report = PaymentReport {
            plugin: choice.verifier.plugin().name().to_owned(),
            terms: Arc::clone(&choice.terms),
            instructions,
            seller_reply: None,
            result: None,
        };
        if let Some(send) = &report.instructions.send {
            let message = UserMessage {
                name: send.name.as_str().into(),
                message: send.message.to_string().into(),
            };
            let reply = ask_seller(&message)
                .map_err(PayError::Seller)?
                .ok_or(PayError::NoAnswer)?;
            report.result = self.user_message(buyer, seller, &choice, &reply)?;
            report.seller_reply = Some(reply);
        }
        Ok(report)
    }

    /// A `dazaar/user-message` from the seller (e.g. `lnd-invoice`), offered to each plugin
    /// that serves the chosen entry's method; the first reply wins.
    pub fn user_message(
        &self,
        buyer: Key,
        seller: Key,
        choice: &PaymentChoice,
        message: &UserMessage,
    ) -> Result<Option<UserMessage>, PaymentError> {
        choice
            .verifier
            .user_message(buyer, seller, &choice.terms, message.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dazaar_plugin_api::OutgoingMessage;

    fn report(instructions: PaymentInstructions, reply: Option<&str>) -> PaymentReport {
        PaymentReport {
            plugin: "p".into(),
            terms: Arc::new(PaymentTerms::new("m", "c", "1", "seconds", "1")),
            instructions,
            seller_reply: reply.map(|r| UserMessage {
                name: "lnd-invoice".into(),
                message: r.into(),
            }),
            result: None,
        }
    }

    #[test]
    fn targets_tell_an_action_from_an_invoice() {
        let eos = report(
            PaymentInstructions {
                invoice: Some(r#"{"account":"eosio.token","name":"transfer"}"#.into()),
                ..Default::default()
            },
            None,
        );
        assert_eq!(
            eos.targets(),
            vec![PayTarget::Action(
                r#"{"account":"eosio.token","name":"transfer"}"#.into()
            )]
        );
        let ln = report(
            PaymentInstructions {
                invoice: Some("lnbcrt1".into()),
                send: Some(OutgoingMessage {
                    name: "lnd-pay-request".into(),
                    message: json!({}),
                }),
                ..Default::default()
            },
            Some(r#"{"request":"lnbcrt1","url":"https://pay"}"#),
        );
        assert_eq!(
            ln.targets(),
            vec![
                PayTarget::Invoice("lnbcrt1".into()),
                PayTarget::Page("https://pay".into())
            ]
        );
        assert_eq!(ln.to_json()["sellerReply"]["message"]["request"], "lnbcrt1");
        assert!(!ln.is_paid());
        let paid = report(
            PaymentInstructions {
                invoice: Some("lnbcrt1".into()),
                paid: Some("tx1".into()),
                ..Default::default()
            },
            None,
        );
        assert!(paid.is_paid());
        assert!(paid.targets().is_empty());
    }
}
