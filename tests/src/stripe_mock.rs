//! A local mock of the Stripe REST API, for the parts `localstripe` does not implement
//! (Checkout Sessions, the search API) and for failure modes (slow, garbage, HTTP 500,
//! hang-ups).
//!
//! It speaks real Stripe HTTP: form-encoded request bodies with bracketed keys,
//! `Authorization: Bearer` checked against the configured key (401 with an error object
//! otherwise), error objects `{"error":{"type","message"}}`, list pagination (`limit`,
//! `starting_after`, `has_more`, newest first) and search pagination (`query`, `limit`,
//! `page`, `has_more`, `next_page`). The search query language is the subset the plugin
//! uses: clauses `metadata['key']:'value'` and `status:'value'` joined by ` AND `.
//! Related objects are what Stripe answers: ids (strings) unless the request's
//! `expand[]` names them (`data.latest_charge` on a list or search of PaymentIntents,
//! `data.payment_intent` and nested `data.payment_intent.latest_charge` on a list of
//! Checkout Sessions), then the full objects; a path that cannot be expanded is a 400,
//! as at Stripe. Completing a Checkout Session ([`MockStripe::complete_session`]) creates
//! its PaymentIntent (with the session's `payment_intent_data[metadata]`) and Charge, as
//! Stripe does, so the session's payment is found by search and by listing intents too.
//! Refunds and disputes ([`MockStripe::refund`], [`MockStripe::dispute`]) change the
//! Charge only, where Stripe records them.
//! Rate limits as Stripe applies them: `429 Too Many Requests` with a `Retry-After`
//! header (whole seconds) and an error object with `code: rate_limit`, either always
//! ([`Mode::RateLimited`]) or past a number of searches per second
//! ([`MockState::search_limit_per_s`]).
//! It listens on 127.0.0.1 only.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// How the mock answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Like Stripe.
    Normal,
    /// Waits this long before answering.
    Slow(Duration),
    /// Answers 200 with a body that is not JSON.
    Garbage,
    /// Answers 500 with an `api_error` object.
    Error500,
    /// Closes the connection without an answer.
    Hangup,
    /// Answers every request `429 Too Many Requests` with `Retry-After: <seconds>` and
    /// Stripe's `rate_limit` error object, as Stripe does past an account's limit.
    RateLimited(u64),
}

/// What the mock holds; tests change it directly.
#[derive(Debug)]
pub struct MockState {
    /// The secret key it accepts.
    pub key: String,
    /// PaymentIntents, oldest first, as Stripe stores them: `latest_charge` is the id of
    /// a charge in [`MockState::charges`] (or null), expanded only in answers that ask.
    pub intents: Vec<Value>,
    /// Charges, oldest first: where refunds (`amount_refunded`, `refunded`) and disputes
    /// (`disputed`) are recorded; `payment_intent` is the intent's id.
    pub charges: Vec<Value>,
    /// Checkout Sessions, oldest first; `payment_intent` is an id (or null).
    pub sessions: Vec<Value>,
    /// Per Checkout Session id, the `payment_intent_data[metadata]` it was created with:
    /// the metadata Stripe gives the PaymentIntent it creates when the session is paid
    /// (the session's own `metadata` stays on the session).
    pub session_intent_metadata: HashMap<String, Value>,
    /// Current behaviour.
    pub mode: Mode,
    /// Requests served (any answer).
    pub requests: usize,
    /// Search requests received (any answer).
    pub searches: usize,
    /// Requests answered 429.
    pub throttled: usize,
    /// Stripe's own search rate limit, if set: past this many search requests in one
    /// wall-clock second, searches are answered 429 with `Retry-After: 1`.
    pub search_limit_per_s: Option<usize>,
    /// (second, searches in it) for [`MockState::search_limit_per_s`].
    search_window: (u64, usize),
    /// The last form posted to create a Checkout Session, decoded.
    pub last_form: Vec<(String, String)>,
}

/// A running mock; stops when dropped.
pub struct MockStripe {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Its state.
    pub state: Arc<Mutex<MockState>>,
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decodes `%XX` and `+` in a form or query component.
pub fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=2` → pairs, decoded.
pub fn decode_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

fn error(status: u16, kind: &str, message: &str) -> (u16, String) {
    (
        status,
        json!({"error": {"type": kind, "message": message}}).to_string(),
    )
}

/// Parses the plugin's search query subset into (field, value) clauses.
fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    q.split(" AND ")
        .map(|clause| {
            let (field, value) = clause.trim().split_once(':')?;
            let value = value.strip_prefix('\'')?.strip_suffix('\'')?;
            Some((field.to_owned(), value.to_owned()))
        })
        .collect()
}

fn matches(obj: &Value, clauses: &[(String, String)]) -> bool {
    clauses.iter().all(|(field, value)| {
        if let Some(key) = field
            .strip_prefix("metadata['")
            .and_then(|f| f.strip_suffix("']"))
        {
            obj["metadata"][key].as_str() == Some(value)
        } else {
            obj[field.as_str()].as_str() == Some(value)
        }
    })
}

/// The kind of object an expandable field of an object of kind `object` holds the id of
/// (the fields the plugin expands; Stripe has more).
fn expandable(object: &str, field: &str) -> Option<&'static str> {
    match (object, field) {
        ("payment_intent", "latest_charge") => Some("charge"),
        ("checkout.session", "payment_intent") | ("charge", "payment_intent") => {
            Some("payment_intent")
        }
        _ => None,
    }
}

/// Expands `path` (the fields of a dotted `expand[]` path) in `obj`: the id at each
/// field becomes the object it names, then the rest of the path is expanded in that.
/// A null (or absent) field stays so. `Err` when a field is not expandable on that
/// object.
fn expand_path(st: &MockState, obj: &mut Value, path: &[&str]) -> Result<(), ()> {
    let Some((field, rest)) = path.split_first() else {
        return Ok(());
    };
    let kind = obj["object"].as_str().unwrap_or("").to_owned();
    let target = expandable(&kind, field).ok_or(())?;
    // An object a test stored without the field has it null, as Stripe would.
    let Some(slot) = obj.get_mut(*field) else {
        return Ok(());
    };
    if let Some(id) = slot.as_str() {
        let list = match target {
            "charge" => &st.charges,
            _ => &st.intents,
        };
        if let Some(found) = list.iter().find(|o| o["id"] == id) {
            *slot = found.clone();
        }
    }
    if slot.is_object() {
        expand_path(st, slot, rest)
    } else {
        Ok(())
    }
}

/// The `expand[]` (or `expand[N]`) values of a request's query.
fn expand_params(query: &str) -> Vec<String> {
    decode_form(query)
        .into_iter()
        .filter(|(k, _)| {
            k.strip_prefix("expand[")
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
        })
        .map(|(_, v)| v)
        .collect()
}

/// The objects of a list or search page as Stripe renders them: each `data.`-prefixed
/// `expand[]` path expanded in every object; `Err` with Stripe's 400 for a path that is
/// not `data.…` or names a field that cannot be expanded.
fn render_page(
    st: &MockState,
    page: &[&Value],
    expand: &[String],
) -> Result<Vec<Value>, (u16, String)> {
    let cannot = |path: &str| {
        error(
            400,
            "invalid_request_error",
            &format!("This property cannot be expanded ({path})."),
        )
    };
    let mut paths = Vec::new();
    for path in expand {
        let Some(inner) = path.strip_prefix("data.") else {
            return Err(cannot(path));
        };
        paths.push((path, inner.split('.').collect::<Vec<_>>()));
    }
    page.iter()
        .map(|o| {
            let mut o = (*o).clone();
            for (path, fields) in &paths {
                expand_path(st, &mut o, fields).map_err(|()| cannot(path))?;
            }
            Ok(o)
        })
        .collect()
}

fn list_page(
    st: &MockState,
    items: &[Value],
    params: &HashMap<String, String>,
    expand: &[String],
    url: &str,
) -> (u16, String) {
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return error(400, "invalid_request_error", "limit must be 1..100");
    }
    // Newest first, as Stripe lists.
    let newest: Vec<&Value> = items.iter().rev().collect();
    let start = match params.get("starting_after") {
        Some(id) => match newest.iter().position(|o| o["id"].as_str() == Some(id)) {
            Some(i) => i + 1,
            None => {
                return error(
                    400,
                    "invalid_request_error",
                    &format!("No such object: '{id}'"),
                )
            }
        },
        None => 0,
    };
    let page: Vec<&Value> = newest.iter().skip(start).take(limit).copied().collect();
    let has_more = start + page.len() < newest.len();
    let data = match render_page(st, &page, expand) {
        Ok(d) => d,
        Err(e) => return e,
    };
    (
        200,
        json!({"object": "list", "url": url, "data": data, "has_more": has_more}).to_string(),
    )
}

impl MockStripe {
    /// Starts a mock accepting `key`, on a free loopback port.
    pub fn start(key: &str) -> MockStripe {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind mock"));
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let state = Arc::new(Mutex::new(MockState {
            key: key.to_owned(),
            intents: Vec::new(),
            charges: Vec::new(),
            sessions: Vec::new(),
            session_intent_metadata: HashMap::new(),
            mode: Mode::Normal,
            requests: 0,
            searches: 0,
            throttled: 0,
            search_limit_per_s: None,
            search_window: (0, 0),
            last_form: Vec::new(),
        }));
        let threads = (0..4)
            .map(|_| {
                let server = Arc::clone(&server);
                let state = Arc::clone(&state);
                std::thread::spawn(move || {
                    while let Ok(request) = server.recv() {
                        serve(request, &state);
                    }
                })
            })
            .collect();
        MockStripe {
            base: format!("http://127.0.0.1:{port}"),
            state,
            server,
            threads,
        }
    }

    /// Sets the behaviour.
    pub fn set_mode(&self, mode: Mode) {
        self.state.lock().unwrap().mode = mode;
    }

    /// Adds a PaymentIntent; returns its id. A succeeded one gets a Charge (its
    /// `latest_charge`) carrying `refunded` minor units refunded and `disputed`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_intent(
        &self,
        seller: &[u8; 32],
        buyer: &[u8; 32],
        amount: i64,
        currency: &str,
        created: u64,
        status: &str,
        refunded: i64,
        disputed: bool,
    ) -> String {
        let mut st = self.state.lock().unwrap();
        let id = format!("pi_mock{}", st.intents.len() + 1);
        let metadata =
            json!({"dazaar_seller": hex::encode(seller), "dazaar_buyer": hex::encode(buyer)});
        st.add_intent(&id, amount, currency, created, status, metadata);
        if refunded != 0 || disputed {
            let charge = st.charge_of(&id).expect("a succeeded intent has a charge");
            charge["amount_refunded"] = json!(refunded);
            charge["refunded"] = json!(refunded >= amount);
            charge["disputed"] = json!(disputed);
        }
        id
    }

    /// Refunds `amount` minor units of the PaymentIntent `intent`'s charge (as `POST
    /// /v1/refunds` does): its `amount_refunded` grows, `refunded` once it is all.
    pub fn refund(&self, intent: &str, amount: i64) {
        let mut st = self.state.lock().unwrap();
        let charge = st.charge_of(intent).expect("the intent has a charge");
        let total = charge["amount"].as_i64().unwrap_or(0);
        let refunded = (charge["amount_refunded"].as_i64().unwrap_or(0) + amount).min(total);
        charge["amount_refunded"] = json!(refunded);
        charge["refunded"] = json!(refunded >= total);
    }

    /// The buyer disputes the PaymentIntent `intent`'s charge.
    pub fn dispute(&self, intent: &str) {
        let mut st = self.state.lock().unwrap();
        st.charge_of(intent).expect("the intent has a charge")["disputed"] = json!(true);
    }

    /// Marks a Checkout Session paid (as if the buyer paid on the page) and creates its
    /// PaymentIntent and Charge as Stripe does; returns the session object as Stripe
    /// sends it in `checkout.session.completed` (`payment_intent` an id).
    pub fn complete_session(&self, id: &str) -> Value {
        let mut st = self.state.lock().unwrap();
        let (amount, currency) = {
            let s = st.sessions.iter().find(|s| s["id"] == id).expect("session");
            (
                s["amount_total"].as_i64().expect("amount_total"),
                s["currency"].as_str().expect("currency").to_owned(),
            )
        };
        let intent = format!("pi_for_{id}");
        let metadata = st
            .session_intent_metadata
            .get(id)
            .cloned()
            .unwrap_or_else(|| json!({}));
        st.add_intent(&intent, amount, &currency, now_s(), "succeeded", metadata);
        let s = st
            .sessions
            .iter_mut()
            .find(|s| s["id"] == id)
            .expect("session");
        s["payment_status"] = json!("paid");
        s["status"] = json!("complete");
        s["payment_intent"] = json!(intent);
        s.clone()
    }
}

impl MockState {
    /// Stores a PaymentIntent, and for a succeeded one its Charge.
    fn add_intent(
        &mut self,
        id: &str,
        amount: i64,
        currency: &str,
        created: u64,
        status: &str,
        metadata: Value,
    ) {
        let succeeded = status == "succeeded";
        let charge = succeeded.then(|| format!("ch_{id}"));
        if let Some(ch) = &charge {
            self.charges.push(json!({
                "id": ch, "object": "charge", "amount": amount, "amount_captured": amount,
                "amount_refunded": 0, "refunded": false, "disputed": false,
                "currency": currency, "created": created, "status": "succeeded",
                "paid": true, "payment_intent": id, "livemode": false,
            }));
        }
        self.intents.push(json!({
            "id": id, "object": "payment_intent", "amount": amount,
            "amount_received": if succeeded { amount } else { 0 },
            "currency": currency, "created": created, "status": status, "livemode": false,
            "metadata": metadata, "latest_charge": charge,
        }));
    }

    /// The charge of PaymentIntent `intent`, if it has one.
    fn charge_of(&mut self, intent: &str) -> Option<&mut Value> {
        let ch = self
            .intents
            .iter()
            .find(|p| p["id"] == intent)?
            .get("latest_charge")?
            .as_str()?
            .to_owned();
        self.charges.iter_mut().find(|c| c["id"] == ch.as_str())
    }
}

impl Drop for MockStripe {
    fn drop(&mut self) {
        self.server.unblock();
        for _ in 0..self.threads.len() {
            self.server.unblock();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Stripe's answer past a rate limit.
fn rate_limited(request: tiny_http::Request, retry_after_s: u64) {
    let body = json!({"error": {
        "type": "invalid_request_error",
        "code": "rate_limit",
        "message": "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
    }});
    let response = tiny_http::Response::from_string(body.to_string())
        .with_status_code(429)
        .with_header(tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap())
        .with_header(
            tiny_http::Header::from_bytes("Retry-After", retry_after_s.to_string()).unwrap(),
        );
    let _ = request.respond(response);
}

fn serve(mut request: tiny_http::Request, state: &Mutex<MockState>) {
    let is_search = request.url().contains("/search");
    let (mode, over_limit) = {
        let mut st = state.lock().unwrap();
        st.requests += 1;
        let mut over = false;
        if is_search {
            st.searches += 1;
            if let Some(limit) = st.search_limit_per_s {
                let now = now_s();
                if st.search_window.0 != now {
                    st.search_window = (now, 0);
                }
                st.search_window.1 += 1;
                over = st.search_window.1 > limit;
            }
        }
        if over || matches!(st.mode, Mode::RateLimited(_)) {
            st.throttled += 1;
        }
        (st.mode, over)
    };
    if over_limit {
        return rate_limited(request, 1);
    }
    match mode {
        Mode::Hangup => return, // dropping the request closes the connection
        Mode::Slow(d) => std::thread::sleep(d),
        Mode::RateLimited(s) => return rate_limited(request, s),
        _ => {}
    }
    let (status, body) = match mode {
        Mode::Garbage => (200, "<html>upstream says hi</html>".to_owned()),
        Mode::Error500 => error(500, "api_error", "Something went wrong on Stripe's end."),
        _ => {
            let mut body = String::new();
            let _ = request.as_reader().take(1 << 20).read_to_string(&mut body);
            route(&request, &body, state)
        }
    };
    let response = tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap());
    let _ = request.respond(response);
}

fn route(request: &tiny_http::Request, body: &str, state: &Mutex<MockState>) -> (u16, String) {
    let mut st = state.lock().unwrap();
    let auth = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.as_str().to_owned())
        .unwrap_or_default();
    match auth.strip_prefix("Bearer ") {
        Some(k) if k == st.key => {}
        Some(k) => {
            // Echoes the key it was given, so the plugin's scrubbing is tested.
            return error(
                401,
                "invalid_request_error",
                &format!("Invalid API Key provided: {k}"),
            );
        }
        None => {
            return error(
                401,
                "invalid_request_error",
                "You did not provide an API key.",
            )
        }
    }
    let url = request.url().to_owned();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let params: HashMap<String, String> = decode_form(query).into_iter().collect();
    let expand = expand_params(query);
    match (request.method(), path) {
        (tiny_http::Method::Get, "/v1/payment_intents/search") => {
            let Some(clauses) = params.get("query").and_then(|q| parse_query(q)) else {
                return error(400, "invalid_request_error", "Invalid search query");
            };
            let limit: usize = params
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(10);
            let offset: usize = match params.get("page") {
                Some(p) => match p.strip_prefix("page_").and_then(|n| n.parse().ok()) {
                    Some(n) => n,
                    None => return error(400, "invalid_request_error", "Invalid page"),
                },
                None => 0,
            };
            let hits: Vec<&Value> = st
                .intents
                .iter()
                .rev()
                .filter(|o| matches(o, &clauses))
                .collect();
            let page: Vec<&Value> = hits.iter().skip(offset).take(limit).copied().collect();
            let has_more = offset + page.len() < hits.len();
            let next = has_more.then(|| format!("page_{}", offset + page.len()));
            let data = match render_page(&st, &page, &expand) {
                Ok(d) => d,
                Err(e) => return e,
            };
            (
                200,
                json!({"object": "search_result", "url": path, "data": data,
                       "has_more": has_more, "next_page": next})
                .to_string(),
            )
        }
        (tiny_http::Method::Get, "/v1/payment_intents") => {
            list_page(&st, &st.intents, &params, &expand, path)
        }
        (tiny_http::Method::Get, "/v1/checkout/sessions") => {
            list_page(&st, &st.sessions, &params, &expand, path)
        }
        (tiny_http::Method::Post, "/v1/checkout/sessions") => {
            let form = decode_form(body);
            let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            for required in [
                "mode",
                "success_url",
                "cancel_url",
                "line_items[0][price_data][currency]",
                "line_items[0][price_data][unit_amount]",
                "line_items[0][quantity]",
            ] {
                if get(required).is_none() {
                    return error(
                        400,
                        "invalid_request_error",
                        &format!("Missing required param: {required}."),
                    );
                }
            }
            let Some(amount) =
                get("line_items[0][price_data][unit_amount]").and_then(|a| a.parse::<i64>().ok())
            else {
                return error(400, "invalid_request_error", "Invalid integer: unit_amount");
            };
            let id = format!("cs_test_mock{}", st.sessions.len() + 1);
            // `metadata[k]` is the session's; `payment_intent_data[metadata][k]` goes to
            // the PaymentIntent created when it is paid.
            let metadata_with = |prefix: &str| -> Value {
                form.iter()
                    .filter_map(|(k, v)| {
                        let key = k.strip_prefix(prefix)?.strip_suffix(']')?;
                        Some((key.to_owned(), json!(v)))
                    })
                    .collect::<serde_json::Map<String, Value>>()
                    .into()
            };
            st.session_intent_metadata
                .insert(id.clone(), metadata_with("payment_intent_data[metadata]["));
            let session = json!({
                "id": id, "object": "checkout.session", "mode": "payment",
                "url": format!("https://checkout.stripe.com/c/pay/{id}"),
                "payment_status": "unpaid", "status": "open",
                "amount_total": amount, "currency": get("line_items[0][price_data][currency]"),
                "created": now_s(), "payment_intent": null,
                "client_reference_id": get("client_reference_id"),
                "metadata": metadata_with("metadata["),
            });
            st.last_form = form;
            st.sessions.push(session.clone());
            (200, session.to_string())
        }
        _ => error(
            404,
            "invalid_request_error",
            &format!("Unrecognized request URL ({path})."),
        ),
    }
}

/// A `Stripe-Signature` header as Stripe writes it: HMAC-SHA256 over `t.body`.
pub fn sign(secret: &str, body: &[u8], t: u64) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs a signed event to a webhook listener on 127.0.0.1; returns the status code.
pub fn post_webhook(port: u16, body: &str, signature: &str) -> u16 {
    use std::io::Write;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = write!(
        s,
        "POST /stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nStripe-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The port of the Stripe plugin's webhook listener, from its "listening for Stripe
/// webhooks" line in the plugin's log file (`log_file`): with `webhook_listen =
/// "127.0.0.1:0"` the kernel picks the port, and this is where the plugin says which.
/// Only for a log file no other opening of the plugin writes to: the plugin's log files
/// take every event of the library loaded in that process.
pub fn webhook_port_in_log(log: &std::path::Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    let mut ports = text
        .lines()
        .filter(|l| l.contains("listening for Stripe webhooks"))
        .filter_map(|l| {
            let addr = l.split("addr=").nth(1)?.split_whitespace().next()?;
            addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
        });
    ports.next()
}
