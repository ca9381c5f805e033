//! A small blocking client for the parts of the Stripe REST API this plugin uses:
//! form-encoded requests with `Authorization: Bearer`, JSON answers, error objects, and
//! the two pagination styles (lists: `has_more` + `starting_after`; search: `has_more` +
//! `next_page`).
//!
//! Every request goes through a [`Lane`] first (a request budget, and Stripe's
//! `Retry-After` after a 429): a request the lane refuses is not sent.

use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::limit::{parse_retry_after, Denied, Lane, Priority};
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
    /// Stripe answered 429 (now or earlier): no request until its `Retry-After` is over.
    #[error("Stripe is rate-limiting this account (HTTP 429); calls resume in {}s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// The plugin's own request budget (`search_per_s` / `api_per_s`) is used up.
    #[error("too many requests to Stripe at once (request budget); try again shortly")]
    OverBudget,
}

impl ApiError {
    /// Whether the call was not made (or was refused) for lack of budget, so an older
    /// answer may stand in for it.
    pub fn is_throttled(&self) -> bool {
        matches!(self, ApiError::RateLimited(_) | ApiError::OverBudget)
    }
}

/// The two request budgets: Stripe limits search separately from everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/*/search`.
    Search,
    /// Every other call (lists, creating Checkout Sessions and PaymentIntents).
    Other,
}

/// Requests a second allowed per endpoint class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Search requests a second.
    pub search_per_s: u32,
    /// Other requests a second.
    pub other_per_s: u32,
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
    search: Mutex<Lane>,
    other: Mutex<Lane>,
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
        budget: Budget,
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
            search: Mutex::new(Lane::new(budget.search_per_s, 0, Instant::now())),
            // A whole listing (`max_pages` requests) must fit in one burst, or a long
            // list could never be read to its end.
            other: Mutex::new(Lane::new(
                budget.other_per_s,
                u32::try_from(max_pages).unwrap_or(u32::MAX),
                Instant::now(),
            )),
        }
    }

    fn lane(&self, endpoint: Endpoint) -> &Mutex<Lane> {
        match endpoint {
            Endpoint::Search => &self.search,
            Endpoint::Other => &self.other,
        }
    }

    /// Takes a token of `endpoint`'s budget, or says why not.
    fn admit(&self, endpoint: Endpoint, priority: Priority) -> Result<(), ApiError> {
        let mut lane = self
            .lane(endpoint)
            .lock()
            .map_err(|_| ApiError::Unreachable("the request budget is poisoned".into()))?;
        match lane.admit(Instant::now(), priority) {
            Ok(()) => Ok(()),
            Err(Denied::RetryAfter(left)) => {
                tracing::debug!(
                    ?endpoint,
                    left_ms = left.as_millis() as u64,
                    "not calling Stripe: Retry-After"
                );
                Err(ApiError::RateLimited(left))
            }
            Err(Denied::Budget) => {
                tracing::debug!(
                    ?endpoint,
                    ?priority,
                    "not calling Stripe: request budget used up"
                );
                Err(ApiError::OverBudget)
            }
        }
    }

    /// Stripe answered 429: stop calling `endpoint` for `wait`.
    fn back_off(&self, endpoint: Endpoint, wait: Duration) {
        if let Ok(mut lane) = self.lane(endpoint).lock() {
            lane.block(Instant::now(), wait);
        }
        tracing::warn!(
            ?endpoint,
            wait_s = wait.as_secs(),
            "Stripe answered 429; pausing calls"
        );
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

    fn finish(
        &self,
        endpoint: Endpoint,
        result: Result<ureq::Response, ureq::Error>,
    ) -> Result<Value, ApiError> {
        if let Err(ureq::Error::Status(429, resp)) = &result {
            let wait = parse_retry_after(resp.header("Retry-After"));
            self.back_off(endpoint, wait);
            return Err(ApiError::RateLimited(wait));
        }
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

    /// `GET path?query`, if the budget of `endpoint` allows it.
    pub fn get(
        &self,
        endpoint: Endpoint,
        priority: Priority,
        path_and_query: &str,
    ) -> Result<Value, ApiError> {
        self.admit(endpoint, priority)?;
        tracing::debug!(path = path_and_query, "GET from Stripe");
        self.finish(endpoint, self.request("GET", path_and_query).call())
    }

    /// `POST path` with a form body, if the budget allows it. Creating things is never
    /// done for a known buyer's revalidation, so it never uses the reserve.
    pub fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, ApiError> {
        self.admit(Endpoint::Other, Priority::Unknown)?;
        tracing::debug!(path, "POST to Stripe");
        self.finish(
            Endpoint::Other,
            self.request("POST", path)
                .set("Content-Type", "application/x-www-form-urlencoded")
                .send_string(&encode_form(form)),
        )
    }

    /// Every object of a list endpoint (`/v1/payment_intents`, `/v1/checkout/sessions`),
    /// following `has_more` / `starting_after`, at most `max_pages` pages.
    pub fn list_all(
        &self,
        path: &str,
        expand: &[&str],
        priority: Priority,
    ) -> Result<Listing, ApiError> {
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
            let page = self.get(Endpoint::Other, priority, &with_query(path, &q))?;
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
                (false, _) => {
                    return Ok(Listing {
                        objects: out,
                        complete: true,
                    })
                }
            }
        }
        // Lists are newest first, so what was read is the newest `max_pages` pages:
        // the payments that still buy time. Older ones are left out, not the whole list.
        tracing::warn!(
            path,
            pages = self.max_pages,
            "more objects than max_pages pages; only the newest are counted"
        );
        Ok(Listing {
            objects: out,
            complete: false,
        })
    }

    /// Every result of a search (`/v1/payment_intents/search`), following `next_page`.
    pub fn search_all(
        &self,
        path: &str,
        query: &str,
        expand: &[&str],
        priority: Priority,
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
            let page = self.get(Endpoint::Search, priority, &with_query(path, &q))?;
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

/// What a list walk found.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The objects, newest first.
    pub objects: Vec<Value>,
    /// Whether the end of the list was reached (false: only the newest `max_pages`
    /// pages were read).
    pub complete: bool,
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
