//! A small blocking client for the parts of the Stripe REST API this plugin uses:
//! form-encoded requests with `Authorization: Bearer`, JSON answers, error objects, and
//! the two pagination styles (lists: `has_more` + `starting_after`; search: `has_more` +
//! `next_page`).

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use crate::secret::Secret;

/// The largest answer read from Stripe (bytes).
const MAX_BODY: u64 = 8 * 1024 * 1024;
/// Objects per page asked for (Stripe's maximum).
const PAGE: usize = 100;

/// Why a Stripe call failed. Never holds the API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No connection, or no answer within the timeout.
    #[error("Stripe is unreachable ({0})")]
    Unreachable(String),
    /// Stripe answered with an error status.
    #[error("Stripe answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The error object's message (secrets scrubbed), or a placeholder.
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("unreadable answer from Stripe ({0})")]
    Unreadable(String),
    /// More pages than the configured limit.
    #[error("more than {0} pages of results; raise max_pages")]
    TooManyPages(usize),
}

/// Percent-encodes a form or query component (everything but unreserved characters).
pub fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `k=v&k=v`, both sides encoded.
pub fn encode_form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The client.
pub struct StripeApi {
    agent: ureq::Agent,
    base: String,
    key: Secret,
    stripe_version: Option<String>,
    max_pages: usize,
}

impl std::fmt::Debug for StripeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeApi")
            .field("base", &self.base)
            .field("key", &self.key)
            .finish()
    }
}

impl StripeApi {
    /// A client for `base` (e.g. `https://api.stripe.com`) with a whole-request timeout.
    pub fn new(
        base: &str,
        key: Secret,
        timeout: Duration,
        stripe_version: Option<String>,
        max_pages: usize,
    ) -> StripeApi {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout)
            .timeout(timeout)
            .user_agent(concat!("dazaar-fiat-stripe/", env!("CARGO_PKG_VERSION")))
            .build();
        StripeApi {
            agent,
            base: base.trim_end_matches('/').to_owned(),
            key,
            stripe_version,
            max_pages: max_pages.max(1),
        }
    }

    fn request(&self, method: &str, path_and_query: &str) -> ureq::Request {
        let mut req = self
            .agent
            .request(method, &format!("{}{}", self.base, path_and_query))
            .set("Authorization", &format!("Bearer {}", self.key.expose()));
        if let Some(v) = &self.stripe_version {
            req = req.set("Stripe-Version", v);
        }
        req
    }

    fn finish(&self, result: Result<ureq::Response, ureq::Error>) -> Result<Value, ApiError> {
        match result {
            Ok(resp) => {
                let status = resp.status();
                let body = read_body(resp)?;
                tracing::trace!(status, bytes = body.len(), "Stripe answered");
                serde_json::from_str::<Value>(&body)
                    .ok()
                    .filter(Value::is_object)
                    .ok_or_else(|| ApiError::Unreadable("not a JSON object".into()))
            }
            Err(ureq::Error::Status(status, resp)) => {
                let body = read_body(resp).unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| {
                        let e = v.get("error")?;
                        let msg = e.get("message").and_then(Value::as_str);
                        let kind = e.get("type").and_then(Value::as_str);
                        Some(match (kind, msg) {
                            (Some(k), Some(m)) => format!("{k}: {m}"),
                            (None, Some(m)) => m.to_owned(),
                            (Some(k), None) => k.to_owned(),
                            (None, None) => return None,
                        })
                    })
                    .unwrap_or_else(|| "no error object".to_owned());
                let mut message = self.key.scrub(&message);
                message.truncate(dazaar_plugin_api::str_prefix(&message, 300).len());
                tracing::debug!(status, %message, "Stripe error");
                Err(ApiError::Status { status, message })
            }
            Err(ureq::Error::Transport(t)) => {
                let detail = match t.message() {
                    Some(m) => format!("{}: {}", t.kind(), self.key.scrub(m)),
                    None => t.kind().to_string(),
                };
                tracing::debug!(%detail, "Stripe transport error");
                Err(ApiError::Unreachable(detail))
            }
        }
    }

    /// `GET path?query`.
    pub fn get(&self, path_and_query: &str) -> Result<Value, ApiError> {
        tracing::debug!(path = path_and_query, "GET from Stripe");
        self.finish(self.request("GET", path_and_query).call())
    }

    /// `POST path` with a form body.
    pub fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, ApiError> {
        tracing::debug!(path, "POST to Stripe");
        self.finish(
            self.request("POST", path)
                .set("Content-Type", "application/x-www-form-urlencoded")
                .send_string(&encode_form(form)),
        )
    }

    /// Every object of a list endpoint (`/v1/payment_intents`, `/v1/checkout/sessions`),
    /// following `has_more` / `starting_after`, at most `max_pages` pages.
    pub fn list_all(&self, path: &str, expand: &[&str]) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..self.max_pages {
            let mut q = vec![("limit".to_owned(), PAGE.to_string())];
            q.extend(
                expand
                    .iter()
                    .map(|e| ("expand[]".to_owned(), (*e).to_owned())),
            );
            if let Some(a) = &after {
                q.push(("starting_after".to_owned(), a.clone()));
            }
            let page = self.get(&with_query(path, &q))?;
            let (data, more) = page_data(&page)?;
            let last = data
                .last()
                .and_then(|o| o.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            out.extend(data);
            match (more, last) {
                (true, Some(id)) if Some(&id) != after.as_ref() => after = Some(id),
                (true, _) => {
                    return Err(ApiError::Unreadable(
                        "has_more without a new last id".into(),
                    ))
                }
                (false, _) => return Ok(out),
            }
        }
        Err(ApiError::TooManyPages(self.max_pages))
    }

    /// Every result of a search (`/v1/payment_intents/search`), following `next_page`.
    pub fn search_all(
        &self,
        path: &str,
        query: &str,
        expand: &[&str],
    ) -> Result<Vec<Value>, ApiError> {
        let mut out = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..self.max_pages {
            let mut q = vec![
                ("query".to_owned(), query.to_owned()),
                ("limit".to_owned(), PAGE.to_string()),
            ];
            q.extend(
                expand
                    .iter()
                    .map(|e| ("expand[]".to_owned(), (*e).to_owned())),
            );
            if let Some(p) = &page_token {
                q.push(("page".to_owned(), p.clone()));
            }
            let page = self.get(&with_query(path, &q))?;
            let (data, more) = page_data(&page)?;
            out.extend(data);
            if !more {
                return Ok(out);
            }
            match page.get("next_page").and_then(Value::as_str) {
                Some(next) if Some(next) != page_token.as_deref() => {
                    page_token = Some(next.to_owned())
                }
                _ => {
                    return Err(ApiError::Unreadable(
                        "has_more without a new next_page".into(),
                    ))
                }
            }
        }
        Err(ApiError::TooManyPages(self.max_pages))
    }
}

fn with_query(path: &str, q: &[(String, String)]) -> String {
    let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    format!("{path}?{}", encode_form(&pairs))
}

fn page_data(page: &Value) -> Result<(Vec<Value>, bool), ApiError> {
    let data = page
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::Unreadable("a list without `data`".into()))?;
    let more = page
        .get("has_more")
        .and_then(Value::as_bool)
        .ok_or_else(|| ApiError::Unreadable("a list without `has_more`".into()))?;
    Ok((data.clone(), more))
}

fn read_body(resp: ureq::Response) -> Result<String, ApiError> {
    let mut body = String::new();
    resp.into_reader()
        .take(MAX_BODY + 1)
        .read_to_string(&mut body)
        .map_err(|e| ApiError::Unreadable(format!("reading the body: {}", e.kind())))?;
    if body.len() as u64 > MAX_BODY {
        return Err(ApiError::Unreadable("answer larger than 8 MiB".into()));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(
            encode_form(&[("metadata[dazaar_buyer]", "ab"), ("q", "a b'&=")]),
            "metadata%5Bdazaar_buyer%5D=ab&q=a%20b%27%26%3D"
        );
    }
}
