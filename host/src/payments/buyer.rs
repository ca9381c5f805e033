//! The buyer's side: which of its payment plugins can pay a seller's card, and how.

use std::sync::Arc;

use dazaar_plugin_api::{Key, PaymentInstructions, PaymentTerms, UserMessage};
use serde_json::Value;

use super::registry::{OpenedVerifier, PaymentError};
use super::wire::terms_from_card;

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
    /// order. Card entries that cannot be read are skipped. `None`: nothing fits.
    pub fn choose(&self, card_payment: &[Value]) -> Option<PaymentChoice> {
        let entries: Vec<PaymentTerms> = card_payment
            .iter()
            .filter_map(|e| terms_from_card(e).ok())
            .collect();
        for p in &self.plugins {
            for terms in &entries {
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

    /// How to pay for the product behind `card_payment` (a card's `payment` array):
    /// `amount` in the card's currency, or the card entry's own amount when `None`.
    pub fn payment_request(
        &self,
        buyer: Key,
        seller: Key,
        card_payment: &[Value],
        amount: Option<&str>,
    ) -> Result<(PaymentChoice, PaymentInstructions), PaymentError> {
        let choice = self
            .choose(card_payment)
            .ok_or_else(|| PaymentError::Unsupported {
                method: card_payment
                    .iter()
                    .filter_map(|e| e.get("method").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(", "),
                currency: card_payment
                    .iter()
                    .filter_map(|e| e.get("currency").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let amount = amount.unwrap_or(choice.terms.amount.as_str()).to_owned();
        let how = choice
            .verifier
            .payment_request(buyer, seller, &choice.terms, &amount)?;
        Ok((choice, how))
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
