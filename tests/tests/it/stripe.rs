//! The Stripe plugin (`dazaar_fiat_stripe`), loaded as the host loads it, against a local
//! mock of the Stripe API (`dazaar_tests::stripe_mock`: Checkout Sessions, search,
//! failure modes) and against the real `localstripe` (PaymentIntents, refunds, signed
//! webhooks), and a whole card sale through the `dazaar` binary. Only 127.0.0.1 is
//! contacted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::payments::{
    now_ms, CallLimits, OpenedVerifier, PaymentGate, PaymentTerms, PluginRegistry, UserMessage,
    Validation,
};
use dazaar_tests::localstripe::LocalStripe;
use dazaar_tests::plugin_library;
use dazaar_tests::stripe_mock::{now_s, MockStripe, Mode};
use serde_json::{json, Value};

use crate::support::{self, key as buyer, reason, BUYER, SELLER};

const KEY: &str = "sk_test_dazaar_0123456789abcdef";
const WEBHOOK_SECRET: &str = "whsec_dazaar_test_secret";

fn limits() -> CallLimits {
    support::limits(Duration::from_secs(5), 2, 64)
}

/// A temp dir holding the key and webhook secret files.
struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new(key: &str) -> Secrets {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), format!("{key}\n")).unwrap();
        std::fs::write(dir.path().join("whsec"), WEBHOOK_SECRET).unwrap();
        Secrets { dir }
    }
    fn key_file(&self) -> String {
        self.dir.path().join("key").display().to_string()
    }
    fn whsec_file(&self) -> String {
        self.dir.path().join("whsec").display().to_string()
    }
}

fn open(config: &str) -> Arc<OpenedVerifier> {
    support::open("fiat_stripe", config, limits())
}

/// Opens the plugin with a webhook listener: `config(port)` is its config for
/// `webhook_listen = "127.0.0.1:{port}"`. Returns the verifier and the port.
fn open_with_webhook(config: impl Fn(u16) -> String) -> (Arc<OpenedVerifier>, u16) {
    support::on_free_port(
        |port| support::load("fiat_stripe").open(&config(port), limits()),
        |e| e.to_string().contains("cannot listen for webhooks"),
    )
}

fn config(base: &str, secrets: &Secrets, extra: &str) -> String {
    format!(
        "api_base = {base:?}\nsecret_key_file = {:?}\ntimeout_ms = 400\nrefresh_ms = 0\n{extra}",
        secrets.key_file()
    )
}

/// $1 per minute.
fn usd_terms() -> Arc<PaymentTerms> {
    Arc::new(PaymentTerms::new("stripe", "USD", "1", "minutes", "1"))
}

fn gate(v: &Arc<OpenedVerifier>) -> PaymentGate {
    support::gate(v, usd_terms(), Duration::from_millis(1))
}

fn remaining(v: Validation) -> u64 {
    support::remaining(v, "fiat_stripe")
}

#[test]
fn stripe_paid_buyer_is_valid_and_wrong_payments_are_not() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let v = open(&config(&mock.base, &secrets, ""));
    let g = gate(&v);
    let t = now_s();
    mock.add_intent(&SELLER, &BUYER, 500, "usd", t, "succeeded", 0, false);
    // Paid by someone else, for another buyer key or another seller.
    mock.add_intent(&SELLER, &buyer(2), 500, "usd", t, "succeeded", 0, false);
    mock.add_intent(&[0x77; 32], &buyer(3), 500, "usd", t, "succeeded", 0, false);
    mock.add_intent(&SELLER, &buyer(4), 500, "eur", t, "succeeded", 0, false);
    mock.add_intent(
        &SELLER,
        &buyer(5),
        500,
        "usd",
        t,
        "requires_payment_method",
        0,
        false,
    );
    mock.add_intent(&SELLER, &buyer(6), 500, "usd", t, "succeeded", 500, false);
    mock.add_intent(&SELLER, &buyer(7), 500, "usd", t, "succeeded", 250, false);
    mock.add_intent(&SELLER, &buyer(8), 500, "usd", t, "succeeded", 0, true);
    mock.add_intent(&SELLER, &buyer(9), 1, "usd", t - 10, "succeeded", 0, false);

    // $5 at $1/minute: five minutes, less the part of a second since `created`.
    let ms = remaining(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!((298_000..=300_000).contains(&ms), "{ms}");
    // Half refunded: half the time.
    let ms = remaining(dazaar_tests::plugin_check(&g, buyer(7), SELLER));
    assert!((148_000..=150_000).contains(&ms), "{ms}");

    let none = "fiat_stripe: no Stripe payment in USD found for this buyer";
    assert_eq!(
        reason(dazaar_tests::plugin_check(&g, buyer(1), SELLER)),
        none
    );
    assert_eq!(
        reason(dazaar_tests::plugin_check(&g, buyer(3), SELLER)),
        none
    );
    for b in [4, 5, 6, 8] {
        assert_eq!(
            reason(dazaar_tests::plugin_check(&g, buyer(b), SELLER)),
            none,
            "buyer {b}"
        );
    }
    // One cent ten seconds ago bought 0.6 s.
    assert_eq!(
        reason(dazaar_tests::plugin_check(&g, buyer(9), SELLER)),
        "fiat_stripe: the paid time has run out"
    );
    // The same buyer under another seller key is not valid.
    assert!(!dazaar_tests::plugin_check(&g, BUYER, [0x77; 32]).is_valid());
}

/// Every unit kind through the shared pricing rules: $5 paid buys 50 kilobytes at $1
/// per 10; a one-time price of $5 is reached, $6 is not.
#[test]
fn stripe_each_unit_kind() {
    use dazaar_plugin_api::Grant;
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let v = open(&config(&mock.base, &secrets, ""));
    mock.add_intent(&SELLER, &BUYER, 300, "usd", now_s(), "succeeded", 0, false);
    mock.add_intent(&SELLER, &BUYER, 200, "usd", now_s(), "succeeded", 0, false);
    let grant = |amount: &str, unit: &str, interval: &str| {
        let t = Arc::new(PaymentTerms::new("stripe", "USD", amount, unit, interval));
        let g = support::gate(&v, t, Duration::from_millis(1));
        match dazaar_tests::plugin_check(&g, BUYER, SELLER) {
            Validation::Valid { grant, .. } => Ok(grant),
            Validation::Invalid { reason } => Err(reason),
        }
    };
    assert_eq!(grant("1", "kilobytes", "10"), Ok(Grant::bytes(50_000)));
    assert_eq!(grant("1", "bytes", "100"), Ok(Grant::bytes(500)));
    assert_eq!(grant("5", "megabytes", "1"), Ok(Grant::bytes(1_000_000)));
    assert_eq!(
        grant("1", "gigabytes", "1"),
        Ok(Grant::bytes(5_000_000_000))
    );
    assert_eq!(grant("5", "once", ""), Ok(Grant::once()));
    let short = grant("6", "once", "").unwrap_err();
    assert!(
        short.ends_with("the payments do not reach the one-time price"),
        "{short}"
    );
    let time = grant("1", "minutes", "1").unwrap();
    assert_eq!(time.kind, dazaar_plugin_api::GrantKind::TIME);
    assert!((298_000..=300_000).contains(&time.remaining), "{time:?}");
}

#[test]
fn stripe_search_follows_pages() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let v = open(&config(&mock.base, &secrets, ""));
    let t = now_s();
    for _ in 0..250 {
        mock.add_intent(&SELLER, &BUYER, 1, "usd", t, "succeeded", 0, false);
    }
    // 250 cents at $1/minute: 150 s.
    let ms = remaining(dazaar_tests::plugin_check(&gate(&v), BUYER, SELLER));
    assert!((148_000..=150_000).contains(&ms), "{ms}");
    assert_eq!(mock.state.lock().unwrap().requests, 3, "three pages of 100");
}

#[test]
fn stripe_backend_failures_fail_closed_and_recover() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let v = open(&config(&mock.base, &secrets, ""));
    let g = gate(&v);
    mock.add_intent(&SELLER, &BUYER, 500, "usd", now_s(), "succeeded", 0, false);
    assert!(dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid());

    mock.set_mode(Mode::Slow(Duration::from_millis(1500)));
    let start = Instant::now();
    let r = reason(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!(
        start.elapsed() < Duration::from_millis(1200),
        "{:?}",
        start.elapsed()
    );
    assert!(
        r.contains("cannot check payments: Stripe is unreachable"),
        "{r}"
    );

    mock.set_mode(Mode::Garbage);
    let r = reason(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!(r.contains("unreadable answer from Stripe"), "{r}");

    mock.set_mode(Mode::Error500);
    let r = reason(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!(r.contains("Stripe answered 500: api_error"), "{r}");

    mock.set_mode(Mode::Hangup);
    let r = reason(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!(r.contains("cannot check payments"), "{r}");

    // Back up: valid again, same verifier, no restart.
    mock.set_mode(Mode::Normal);
    // Valid again once the slow answer has drained.
    wait_valid(&g, BUYER, Duration::from_secs(5)).expect("valid again after Stripe recovered");

    // Nothing listening at all: connection refused.
    let refused = dazaar_tests::RefusedPort::new();
    let down = open(&config(&refused.url(), &secrets, ""));
    let r = reason(dazaar_tests::plugin_check(&gate(&down), BUYER, SELLER));
    assert!(r.contains("Stripe is unreachable"), "{r}");
}

#[test]
fn stripe_checkout_session_carries_the_binding_metadata() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let urls =
        "success_url = \"https://seller.example/paid\"\ncancel_url = \"https://seller.example/\"\n";
    let v = open(&config(&mock.base, &secrets, urls));

    // Buyer side, with a key: creates the session directly.
    let how = v.payment_request(BUYER, SELLER, &usd_terms(), "5").unwrap();
    let url = how.checkout_url.clone().unwrap();
    assert!(
        url.starts_with("https://checkout.stripe.com/c/pay/cs_test_"),
        "{url}"
    );
    assert_eq!(how.currency.as_deref(), Some("USD"));
    let form = mock.state.lock().unwrap().last_form.clone();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {form:?}"))
    };
    assert_eq!(get("mode"), "payment");
    assert_eq!(get("line_items[0][price_data][unit_amount]"), "500");
    assert_eq!(get("line_items[0][price_data][currency]"), "usd");
    assert_eq!(get("metadata[dazaar_buyer]"), hex::encode(BUYER));
    assert_eq!(get("metadata[dazaar_seller]"), hex::encode(SELLER));
    assert_eq!(
        get("payment_intent_data[metadata][dazaar_buyer]"),
        hex::encode(BUYER)
    );
    assert_eq!(
        get("payment_intent_data[metadata][dazaar_seller]"),
        hex::encode(SELLER)
    );

    // Seller side: a buyer's request over dazaar/user-message.
    let g = gate(&v);
    let msg = UserMessage {
        name: "stripe-checkout-request".into(),
        message: "{\"amount\":\"2.50\"}".into(),
    };
    let reply = g.user_message(buyer(2), SELLER, &msg).unwrap().unwrap();
    assert_eq!(reply.name.as_str(), "stripe-checkout");
    let body: Value = serde_json::from_str(reply.message.as_str()).unwrap();
    assert_eq!(body["amount"], "2.50");
    let session_id = body["id"].as_str().unwrap().to_owned();
    assert!(body["url"].as_str().unwrap().ends_with(&session_id));
    assert_eq!(
        mock.state
            .lock()
            .unwrap()
            .last_form
            .iter()
            .find(|(k, _)| k == "line_items[0][price_data][unit_amount]")
            .unwrap()
            .1,
        "250"
    );
    let bad = UserMessage {
        name: "stripe-checkout-request".into(),
        message: "{\"amount\":\"2.505\"}".into(),
    };
    assert!(g.user_message(buyer(2), SELLER, &bad).is_err());

    // Without a key the buyer asks the seller.
    let keyless = open("");
    let how = keyless
        .payment_request(BUYER, SELLER, &usd_terms(), "5")
        .unwrap();
    let send = how.send.unwrap();
    assert_eq!(send.name, "stripe-checkout-request");
    assert_eq!(send.message, json!({"amount": "5"}));
    assert!(
        reason(dazaar_tests::plugin_check(&gate(&keyless), BUYER, SELLER))
            .contains("no Stripe secret key configured")
    );

    // Listing Checkout Sessions (has_more / starting_after): only the paid one counts.
    {
        let mut st = mock.state.lock().unwrap();
        for i in 0..150 {
            st.sessions.insert(
                0,
                json!({"id": format!("cs_old{i}"), "object": "checkout.session",
                "payment_status": "unpaid", "amount_total": 100, "currency": "usd", "created": 1,
                "metadata": {}}),
            );
        }
    }
    let sessions = open(&config(
        &mock.base,
        &secrets,
        "lookup = \"checkout_sessions\"\n",
    ));
    assert!(!gate(&sessions)
        .validate_uncached(buyer(2), SELLER, now_ms())
        .is_valid());
    // The same buyer paid another seller's session: it binds (that seller, buyer), not
    // this seller's product, whichever way payments are looked up.
    let search = open(&config(&mock.base, &secrets, ""));
    let elsewhere = paid_session(&mock, &v, OTHER_SELLER, buyer(2), "2.50");
    for (lookup, verifier) in [("checkout_sessions", &sessions), ("search", &search)] {
        let g = gate(verifier);
        assert_eq!(
            reason(dazaar_tests::plugin_check(&g, buyer(2), SELLER)),
            "fiat_stripe: no Stripe payment in USD found for this buyer",
            "{lookup}: another seller's session counted"
        );
        assert!(
            dazaar_tests::plugin_check(&g, buyer(2), OTHER_SELLER).is_valid(),
            "{lookup}: {elsewhere} not found for its own seller"
        );
    }
    mock.complete_session(&session_id);
    let ms = remaining(dazaar_tests::plugin_check(
        &gate(&sessions),
        buyer(2),
        SELLER,
    ));
    assert!((148_000..=150_000).contains(&ms), "{ms}");
    // Stripe made the session's PaymentIntent with `payment_intent_data[metadata]`:
    // search finds it by both keys.
    let ms = remaining(dazaar_tests::plugin_check(&gate(&search), buyer(2), SELLER));
    assert!((148_000..=150_000).contains(&ms), "{ms}");
}

/// `success_url` and `cancel_url`, for a plugin that creates Checkout Sessions.
const URLS: &str =
    "success_url = \"https://seller.example/paid\"\ncancel_url = \"https://seller.example/\"\n";

/// A seller key other than [`SELLER`].
const OTHER_SELLER: [u8; 32] = [0x77; 32];

/// A Checkout Session that `creator` (a plugin with a key and [`URLS`]) makes for
/// `buyer` of `seller` over `amount` USD, then paid on the page; returns the id of the
/// PaymentIntent Stripe made for it.
fn paid_session(
    mock: &MockStripe,
    creator: &Arc<OpenedVerifier>,
    seller: [u8; 32],
    buyer: [u8; 32],
    amount: &str,
) -> String {
    let how = creator
        .payment_request(buyer, seller, &usd_terms(), amount)
        .unwrap();
    let session = mock.complete_session(how.invoice.as_deref().unwrap());
    session["payment_intent"].as_str().unwrap().to_owned()
}

/// Refunds and disputes are recorded on the Charge, which Stripe sends only as an id
/// unless the request expands it: each lookup must ask for it (`expand[]`), or a
/// refunded or disputed payment would still buy its full time.
#[test]
fn stripe_refunds_and_disputes_count_in_every_lookup() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let creator = open(&config(&mock.base, &secrets, URLS));
    paid_session(&mock, &creator, SELLER, buyer(1), "5");
    let full = paid_session(&mock, &creator, SELLER, buyer(2), "5");
    mock.refund(&full, 500);
    let half = paid_session(&mock, &creator, SELLER, buyer(3), "5");
    mock.refund(&half, 250);
    let disputed = paid_session(&mock, &creator, SELLER, buyer(4), "5");
    mock.dispute(&disputed);
    // A PaymentIntent paid directly, refunded after.
    let direct = mock.add_intent(
        &SELLER,
        &buyer(5),
        500,
        "usd",
        now_s(),
        "succeeded",
        0,
        false,
    );
    mock.refund(&direct, 500);

    for lookup in ["search", "payment_intents", "checkout_sessions"] {
        let v = open(&config(
            &mock.base,
            &secrets,
            &format!("lookup = {lookup:?}\n"),
        ));
        let g = gate(&v);
        let ms = remaining(dazaar_tests::plugin_check(&g, buyer(1), SELLER));
        assert!((298_000..=300_000).contains(&ms), "{lookup}: {ms}");
        let ms = remaining(dazaar_tests::plugin_check(&g, buyer(3), SELLER));
        assert!(
            (148_000..=150_000).contains(&ms),
            "{lookup}: half refunded: {ms}"
        );
        let buyers: &[u8] = if lookup == "checkout_sessions" {
            &[2, 4]
        } else {
            &[2, 4, 5]
        };
        for &b in buyers {
            assert_eq!(
                reason(dazaar_tests::plugin_check(&g, buyer(b), SELLER)),
                "fiat_stripe: no Stripe payment in USD found for this buyer",
                "{lookup}: buyer {b}"
            );
        }
    }
}

/// End to end through the Checkout Session lookup: a buyer asks the seller for a
/// checkout link, pays on the page and is valid; refunds on the session's payment take
/// its time away, half then all.
#[test]
fn stripe_refunded_checkout_session_payment_makes_the_buyer_invalid() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let v = open(&config(
        &mock.base,
        &secrets,
        &format!("{URLS}lookup = \"checkout_sessions\"\n"),
    ));
    let g = gate(&v);
    let msg = UserMessage {
        name: "stripe-checkout-request".into(),
        message: "{\"amount\":\"5\"}".into(),
    };
    let reply = g.user_message(BUYER, SELLER, &msg).unwrap().unwrap();
    let body: Value = serde_json::from_str(reply.message.as_str()).unwrap();
    let session_id = body["id"].as_str().unwrap();
    assert!(!dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid());

    let session = mock.complete_session(session_id);
    let intent = session["payment_intent"].as_str().unwrap();
    let ms = remaining(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!((298_000..=300_000).contains(&ms), "{ms}");

    mock.refund(intent, 250);
    let ms = remaining(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!((148_000..=150_000).contains(&ms), "half refunded: {ms}");
    mock.refund(intent, 250);
    assert_eq!(
        reason(dazaar_tests::plugin_check(&g, BUYER, SELLER)),
        "fiat_stripe: no Stripe payment in USD found for this buyer"
    );
}

/// A session paid and announced by webhook is answered from the webhook index; a refund
/// event drops it from the index, and the plugin searches Stripe again: it finds the
/// PaymentIntent Stripe made for the session and reads the refund on its charge.
#[test]
fn stripe_session_paid_by_webhook_is_searched_again_after_a_refund() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let (v, port) = open_with_webhook(|port| {
        format!(
            "{}webhook_listen = \"127.0.0.1:{port}\"\nwebhook_secret_file = {:?}\n",
            config(&mock.base, &secrets, URLS),
            secrets.whsec_file()
        )
    });
    let g = gate(&v);
    let how = v.payment_request(BUYER, SELLER, &usd_terms(), "5").unwrap();
    let session = mock.complete_session(how.invoice.as_deref().unwrap());
    let intent = session["payment_intent"].as_str().unwrap().to_owned();
    let event = json!({"id": "evt_s1", "object": "event", "type": "checkout.session.completed",
        "data": {"object": session}})
    .to_string();
    let sig = sign(WEBHOOK_SECRET, event.as_bytes(), now_s());
    assert_eq!(post_webhook(port, &event, &sig), 200);
    let ms = remaining(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!((298_000..=300_000).contains(&ms), "{ms}");
    assert_eq!(mock.state.lock().unwrap().searches, 0, "not from the index");

    let refund_event = |n: u32| {
        let charge = {
            let st = mock.state.lock().unwrap();
            st.charges
                .iter()
                .find(|c| c["payment_intent"] == intent.as_str())
                .unwrap()
                .clone()
        };
        let event = json!({"id": format!("evt_r{n}"), "object": "event",
            "type": "charge.refunded", "data": {"object": charge}})
        .to_string();
        let sig = sign(WEBHOOK_SECRET, event.as_bytes(), now_s());
        assert_eq!(post_webhook(port, &event, &sig), 200);
    };
    mock.refund(&intent, 250);
    refund_event(1);
    let ms = remaining(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!((148_000..=150_000).contains(&ms), "half refunded: {ms}");
    assert!(mock.state.lock().unwrap().searches > 0, "did not search");
    mock.refund(&intent, 250);
    refund_event(2);
    assert_eq!(
        reason(dazaar_tests::plugin_check(&g, BUYER, SELLER)),
        "fiat_stripe: no Stripe payment in USD found for this buyer"
    );
}

/// A `Stripe-Signature` header as Stripe writes it: HMAC-SHA256 of `t.body`.
fn sign(secret: &str, body: &[u8], t: u64) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `body` to the webhook listener; returns the status code.
fn post_webhook(port: u16, body: &str, signature: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nStripe-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// How long until `b` was valid, if it was within `within`.
fn wait_valid(g: &PaymentGate, b: [u8; 32], within: Duration) -> Option<Duration> {
    let start = Instant::now();
    dazaar_tests::poll_until(within, || {
        dazaar_tests::plugin_check(g, b, SELLER)
            .is_valid()
            .then(|| start.elapsed())
    })
}

#[test]
fn stripe_webhook_payments_count_at_once_and_are_signature_checked() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let (v, port) = open_with_webhook(|port| {
        format!(
        "api_base = {:?}\nsecret_key_file = {:?}\nrefresh_ms = 60000\nwebhook_listen = \"127.0.0.1:{port}\"\nwebhook_secret_file = {:?}\n",
        mock.base,
        secrets.key_file(),
        secrets.whsec_file()
    )
    });
    let g = gate(&v);
    assert!(!dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid()); // cached for 60 s

    let id = mock.add_intent(&SELLER, &BUYER, 500, "usd", now_s(), "succeeded", 0, false);
    let pi = mock.state.lock().unwrap().intents.last().unwrap().clone();
    let event = json!({"id": "evt_1", "object": "event", "type": "payment_intent.succeeded",
                       "data": {"object": pi}})
    .to_string();
    // Wrong secret, stale timestamp, no signature: refused, nothing counts.
    let wrong = sign("whsec_other", event.as_bytes(), now_s());
    assert_eq!(post_webhook(port, &event, &wrong), 400);
    let stale = sign(WEBHOOK_SECRET, event.as_bytes(), now_s() - 301);
    assert_eq!(post_webhook(port, &event, &stale), 400);
    assert_eq!(post_webhook(port, &event, "t=1"), 400);
    assert!(!dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid());

    let good = sign(WEBHOOK_SECRET, event.as_bytes(), now_s());
    assert_eq!(post_webhook(port, &event, &good), 200);
    let ms = remaining(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!((298_000..=300_000).contains(&ms), "{ms}");

    // A refund event makes the plugin ask Stripe again, which knows of the refund.
    mock.refund(&id, 500);
    let refund = json!({"id": "evt_2", "object": "event", "type": "charge.refunded",
        "data": {"object": {"id": "ch_1", "object": "charge", "payment_intent": id, "amount_refunded": 500}}})
    .to_string();
    let sig = sign(WEBHOOK_SECRET, refund.as_bytes(), now_s());
    assert_eq!(post_webhook(port, &refund, &sig), 200);
    assert!(!dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid());

    // A paid Checkout Session delivered by webhook counts too.
    let session = json!({"id": "cs_w1", "object": "checkout.session", "payment_status": "paid",
        "amount_total": 100, "currency": "usd", "created": now_s(), "payment_intent": "pi_w1",
        "metadata": {"dazaar_seller": hex::encode(SELLER), "dazaar_buyer": hex::encode(buyer(3))}});
    let event =
        json!({"type": "checkout.session.completed", "data": {"object": session}}).to_string();
    assert!(!dazaar_tests::plugin_check(&g, buyer(3), SELLER).is_valid());
    let sig = sign(WEBHOOK_SECRET, event.as_bytes(), now_s());
    assert_eq!(post_webhook(port, &event, &sig), 200);
    let ms = remaining(dazaar_tests::plugin_check(&g, buyer(3), SELLER));
    assert!((58_000..=60_000).contains(&ms), "{ms}");
}

#[test]
fn stripe_secrets_never_appear_in_logs_or_reasons() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let wrong_key = "sk_test_wrong_key_that_must_not_leak";
    let wrong = Secrets::new(wrong_key);
    let log = secrets.dir.path().join("plugin.log");
    let logging = format!(
        "log_file = {:?}\nlog_level = \"trace\"\nsuccess_url = \"https://s.example/ok\"\ncancel_url = \"https://s.example/\"\n",
        log.display().to_string()
    );
    let v = open(&config(&mock.base, &secrets, &logging));
    mock.add_intent(&SELLER, &BUYER, 500, "usd", now_s(), "succeeded", 0, false);
    let mut reasons = Vec::new();
    assert!(gate(&v)
        .validate_uncached(BUYER, SELLER, now_ms())
        .is_valid());
    v.payment_request(BUYER, SELLER, &usd_terms(), "5").unwrap();
    mock.set_mode(Mode::Error500);
    reasons.push(reason(dazaar_tests::plugin_check(&gate(&v), BUYER, SELLER)));
    mock.set_mode(Mode::Normal);

    let bad = open(&config(&mock.base, &wrong, &logging));
    let r = reason(dazaar_tests::plugin_check(&gate(&bad), BUYER, SELLER));
    assert!(
        r.contains("Stripe answered 401") && r.contains("[redacted]"),
        "{r}"
    );
    reasons.push(r);
    reasons.push(
        bad.payment_request(BUYER, SELLER, &usd_terms(), "5")
            .unwrap_err()
            .to_string(),
    );

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("GET from Stripe"),
        "trace log is empty: {text}"
    );
    assert!(text.contains("TRACE"), "{text}");
    for secret in [KEY, wrong_key, WEBHOOK_SECRET] {
        assert!(!text.contains(secret), "a secret is in the log");
        for r in &reasons {
            assert!(!r.contains(secret), "a secret is in a reason: {r}");
        }
    }
}

/// The real localstripe: PaymentIntents paid by card, a declined card, a refund, and a
/// signed webhook delivered by localstripe itself.
#[test]
fn stripe_against_localstripe() {
    let Some(ls) = LocalStripe::start() else {
        return;
    };
    let secrets = Secrets::new(KEY);
    let post = |path: &str, form: &[(&str, &str)]| -> Result<Value, String> {
        let r = ureq::post(&format!("{}{path}", ls.base))
            .set("Authorization", &format!("Bearer {KEY}"))
            .send_form(form);
        match r {
            Ok(resp) => Ok(serde_json::from_str(&resp.into_string().unwrap()).unwrap()),
            Err(e) => Err(e.to_string()),
        }
    };
    let pay = |b: [u8; 32], card: &str, amount: &str| -> Result<Value, String> {
        let pm = post(
            "/v1/payment_methods",
            &[
                ("type", "card"),
                ("card[number]", card),
                ("card[exp_month]", "12"),
                ("card[exp_year]", "2040"),
                ("card[cvc]", "123"),
            ],
        )?;
        let seller = hex::encode(SELLER);
        let buyer = hex::encode(b);
        post(
            "/v1/payment_intents",
            &[
                ("amount", amount),
                ("currency", "usd"),
                ("payment_method", pm["id"].as_str().unwrap()),
                ("confirm", "true"),
                ("metadata[dazaar_seller]", &seller),
                ("metadata[dazaar_buyer]", &buyer),
            ],
        )
    };

    let v = open(&config(
        &ls.base,
        &secrets,
        "lookup = \"payment_intents\"\n",
    ));
    let g = gate(&v);
    let pi = pay(BUYER, "4242424242424242", "500").unwrap();
    assert_eq!(pi["status"], "succeeded", "{pi}");
    let ms = remaining(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!((298_000..=300_000).contains(&ms), "{ms}");

    // Declined card: the intent exists but did not succeed.
    let _ = pay(buyer(2), "4000000000000341", "500");
    assert!(!dazaar_tests::plugin_check(&g, buyer(2), SELLER).is_valid());
    // Unpaid.
    assert!(!dazaar_tests::plugin_check(&g, buyer(3), SELLER).is_valid());

    // Refunded: the time it bought is gone.
    post(
        "/v1/refunds",
        &[("payment_intent", pi["id"].as_str().unwrap())],
    )
    .unwrap();
    assert!(!dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid());

    // Webhooks from localstripe (it waits about a second before delivering).
    let (hooked, port) = open_with_webhook(|port| {
        format!(
        "api_base = {:?}\nsecret_key_file = {:?}\nlookup = \"payment_intents\"\nrefresh_ms = 60000\nwebhook_listen = \"127.0.0.1:{port}\"\nwebhook_secret_file = {:?}\n",
        ls.base, secrets.key_file(), secrets.whsec_file()
    )
    });
    let hg = gate(&hooked);
    let cfg = ureq::post(&format!("{}/_config/webhooks/dazaar", ls.base)).send_form(&[
        ("url", &format!("http://127.0.0.1:{port}/stripe")),
        ("secret", WEBHOOK_SECRET),
    ]);
    assert!(cfg.is_ok(), "{cfg:?}");
    assert!(!dazaar_tests::plugin_check(&hg, buyer(4), SELLER).is_valid()); // cached 60 s
    let paid_at = Instant::now();
    pay(buyer(4), "4242424242424242", "200").unwrap();
    let took = wait_valid(&hg, buyer(4), Duration::from_secs(10))
        .expect("the webhook made the buyer valid");
    eprintln!(
        "localstripe webhook: paid to valid in {:?}",
        paid_at.elapsed().min(took + Duration::from_millis(5))
    );
    let ms = remaining(dazaar_tests::plugin_check(&hg, buyer(4), SELLER));
    assert!((115_000..=120_000).contains(&ms), "{ms}");
}

/// A card sale through the binaries: `dazaar sell` with the Stripe plugin loaded from
/// its `plugin_dir` (against the mock, which has Checkout Sessions), a buyer refused
/// before paying, `dazaar pay` asking the seller's plugin for a Checkout Session over
/// `dazaar/user-message`, the buyer paying on the page (the mock marks the session paid)
/// and Stripe's signed `checkout.session.completed` webhook reaching the seller's plugin,
/// then `dazaar buy` receiving the whole feed with the time the payment bought.
#[test]
fn stripe_sale_end_to_end_through_the_binary() {
    use dazaar_tests::stripe_mock::{post_webhook, sign};
    use dazaar_tests::{
        buy_once, buy_until_valid, buyer_key, copy_plugin, dazaar, feed_lines, json_lines,
        make_text_feed, s, sell,
    };

    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 20);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    copy_plugin("fiat_stripe", &plugins, None);
    // Payments reach the seller by webhook; its own reads of Stripe are cached for a
    // minute, so a buyer valid within seconds proves the webhook path. The listener
    // takes a port the kernel picks and says which in the plugin's log, a file of the
    // seller process alone.
    let plugin_log = dir.path().join("stripe.log");
    let seller_config = format!(
        "api_base = {:?}\nsecret_key_file = {:?}\nlookup = \"checkout_sessions\"\nrefresh_ms = 60000\ntimeout_ms = 2000\nwebhook_listen = \"127.0.0.1:0\"\nwebhook_secret_file = {:?}\nsuccess_url = \"https://seller.example/paid\"\ncancel_url = \"https://seller.example/\"\nlog_file = {:?}\n",
        mock.base,
        secrets.key_file(),
        secrets.whsec_file(),
        plugin_log.display().to_string()
    );
    let (_seller, info) = sell(&[
        "--data-dir",
        s(&dir.path().join("seller")),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--payment",
        "fiat_stripe",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &seller_config,
        "--method",
        "stripe",
        "--currency",
        "USD",
        "--amount",
        "1",
        "--unit",
        "minutes",
        "--interval",
        "1",
        "--revalidate-ms",
        "200",
    ]);
    let key = info["sellerKey"].as_str().unwrap().to_owned();
    let addr = info["addr"].as_str().unwrap().to_owned();
    let port = dazaar_tests::stripe_mock::webhook_port_in_log(&plugin_log)
        .expect("the plugin's log names the webhook address");
    let buyer_data = dir.path().join("buyer");
    let out = dir.path().join("bought");
    let buy = || buy_once(&buyer_data, &key, &addr, &out);

    // Before paying: refused, nothing received.
    let o = buy();
    assert!(!o.status.success());
    assert!(!out.join("key").exists());

    // Pay $5 (five minutes): the buyer holds no Stripe key, so it asks the seller.
    let card = json!({"id": key, "name": "ticks",
        "payment": [{"method": "stripe", "currency": "USD", "amount": "1", "unit": "minutes", "interval": "1"}]});
    let card_file = dir.path().join("card.json");
    std::fs::write(&card_file, card.to_string()).unwrap();
    let p = dazaar(&[
        "--data-dir",
        s(&buyer_data),
        "pay",
        &key,
        "--plugin",
        "fiat_stripe",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        "",
        "--card",
        s(&card_file),
        "--amount",
        "5",
        "--connect",
        &addr,
        "--json",
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let how = &json_lines(&p.stdout)[0];
    assert_eq!(how["sellerReply"]["name"], "stripe-checkout", "{how}");
    let reply = &how["sellerReply"]["message"];
    assert_eq!(reply["amount"], "5");
    let session_id = reply["id"].as_str().unwrap().to_owned();
    assert!(reply["url"].as_str().unwrap().ends_with(&session_id));
    let buyer_key = buyer_key(&buyer_data);
    {
        let st = mock.state.lock().unwrap();
        let session = st.sessions.iter().find(|s| s["id"] == session_id.as_str());
        let session = session.expect("the seller's plugin created the session");
        assert_eq!(session["metadata"]["dazaar_buyer"], buyer_key.as_str());
        assert_eq!(session["metadata"]["dazaar_seller"], key.as_str());
        assert_eq!(session["amount_total"], 500);
    }

    // For a person: the page to open, and its QR code.
    let p = dazaar(&[
        "--data-dir",
        s(&buyer_data),
        "pay",
        &key,
        "--plugin",
        "fiat_stripe",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        "",
        "--card",
        s(&card_file),
        "--amount",
        "5",
        "--connect",
        &addr,
        "--qr",
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let text = String::from_utf8_lossy(&p.stdout);
    assert!(text.contains("open this page to pay:"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("https://checkout.stripe.com/c/pay/cs_")),
        "{text}"
    );
    assert!(
        text.lines().filter(|l| l.contains('\u{2588}')).count() > 10,
        "{text}"
    );

    // An open, unpaid session buys nothing.
    assert!(!buy().status.success());
    assert!(!out.join("key").exists());

    // The buyer pays on the page; Stripe tells the seller by webhook.
    let session = mock.complete_session(&session_id);
    let event = json!({"id": "evt_e2e", "object": "event", "type": "checkout.session.completed",
        "data": {"object": session}})
    .to_string();
    let signature = sign(WEBHOOK_SECRET, event.as_bytes(), now_s());
    assert_eq!(post_webhook(port, &event, &signature), 200);

    let lines = buy_until_valid(&buyer_data, &key, &addr, &out, Duration::from_secs(10));
    let valid = lines
        .iter()
        .find(|l| l["event"] == "valid")
        .unwrap_or_else(|| panic!("no valid event: {lines:?}"));
    assert_eq!(valid["info"]["type"], "time");
    let left = valid["info"]["remaining"].as_u64().unwrap_or(0);
    assert!((280_000..=300_000).contains(&left), "{valid}");
    assert_eq!(lines.last().unwrap()["length"], 20);
    assert_eq!(feed_lines(&out).len(), 20);
}

/// The plugin's events reach the host's own log (API 1.2 log sink) under the target
/// `dazaar::plugin`, at trace level, and no secret is in them.
#[test]
fn stripe_plugin_logs_reach_the_host_log_without_secrets() {
    let log = dazaar_tests::capture_host_log();
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let v = open(&config(&mock.base, &secrets, ""));
    mock.add_intent(&SELLER, &BUYER, 500, "usd", now_s(), "succeeded", 0, false);
    assert!(gate(&v)
        .validate_uncached(BUYER, SELLER, now_ms())
        .is_valid());
    mock.set_mode(Mode::Error500);
    let why = reason(dazaar_tests::plugin_check(&gate(&v), buyer(9), SELLER));
    assert!(why.contains("500"), "{why}");

    let text = log.text();
    let from_plugin: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("dazaar::plugin") && l.contains("from=dazaar_fiat_stripe"))
        .collect();
    assert!(
        from_plugin.iter().any(|l| l.contains("GET from Stripe"))
            && from_plugin.iter().any(|l| l.contains("TRACE")),
        "no plugin debug and trace events in the host log:\n{text}"
    );
    for secret in [KEY, WEBHOOK_SECRET] {
        assert!(!text.contains(secret), "a secret is in the host log");
    }
}

/// After a 429 the plugin sends nothing until `Retry-After` is over: a buyer it has
/// seen pay is answered from that, unknown keys fail closed, and the mock receives no
/// request in between.
#[test]
fn stripe_429_retry_after_stops_calls_until_it_is_over() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let v = open(&config(&mock.base, &secrets, ""));
    let g = gate(&v);
    mock.add_intent(&SELLER, &BUYER, 500, "usd", now_s(), "succeeded", 0, false);
    assert!(dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid());
    assert_eq!(mock.state.lock().unwrap().requests, 1);

    mock.set_mode(Mode::RateLimited(30));
    let r = reason(dazaar_tests::plugin_check(&g, buyer(2), SELLER));
    assert!(r.contains("429"), "{r}");
    assert_eq!(mock.state.lock().unwrap().requests, 2);
    // Stripe would now answer; the plugin must not ask.
    mock.set_mode(Mode::Normal);
    for n in 3..40 {
        let r = reason(dazaar_tests::plugin_check(&g, buyer(n), SELLER));
        assert!(
            r.contains("rate-limiting") && r.contains("resume in"),
            "{r}"
        );
    }
    // The paying buyer is not cut off: its last answer stands in (max_stale_ms).
    for _ in 0..10 {
        assert!(dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid());
    }
    assert_eq!(
        mock.state.lock().unwrap().requests,
        2,
        "the plugin called Stripe during Retry-After"
    );

    // A short Retry-After: calls resume once it is over, and not before.
    let v = open(&config(&mock.base, &secrets, ""));
    let g = gate(&v);
    mock.set_mode(Mode::RateLimited(1));
    assert!(!dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid());
    let before = mock.state.lock().unwrap().requests;
    mock.set_mode(Mode::Normal);
    let took = wait_valid(&g, BUYER, Duration::from_secs(5)).expect("calls resumed");
    let after = mock.state.lock().unwrap().requests;
    assert_eq!(
        after - before,
        1,
        "one call, after the wait (valid in {took:?})"
    );
}

/// Many buyers validating at once: the mock receives no more searches than the budget
/// (`search_per_s`) allows, and the buyers who paid stay valid through the flood of
/// strangers (their last answer stands in when the budget is used up).
#[test]
fn stripe_request_budget_bounds_calls_and_paying_buyers_stay_valid() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let v = open(&config(&mock.base, &secrets, "search_per_s = 10\n"));
    let g = Arc::new(gate(&v));
    let t = now_s();
    let paid: Vec<[u8; 32]> = (1..=5).map(buyer).collect();
    for b in &paid {
        mock.add_intent(&SELLER, b, 500, "usd", t, "succeeded", 0, false);
    }
    for b in &paid {
        assert!(dazaar_tests::plugin_check(&g, *b, SELLER).is_valid());
    }
    let start = Instant::now();
    let base = mock.state.lock().unwrap().searches;
    // 100 keys (95 strangers), 8 rounds each, from 4 threads.
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let g = Arc::clone(&g);
            let paid = paid.clone();
            std::thread::spawn(move || {
                let mut paid_invalid = 0;
                for _round in 0..8 {
                    for n in (1..=100u8).filter(|n| n % 4 == t) {
                        let ok = dazaar_tests::plugin_check(&g, buyer(n), SELLER).is_valid();
                        if paid.contains(&buyer(n)) && !ok {
                            paid_invalid += 1;
                        }
                    }
                }
                paid_invalid
            })
        })
        .collect();
    let paid_invalid: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let elapsed = start.elapsed();
    let searches = mock.state.lock().unwrap().searches - base;
    let allowed = 10 + (10.0 * elapsed.as_secs_f64()).ceil() as usize;
    eprintln!(
        "800 validations of 100 keys in {elapsed:?}: {searches} searches ({:.1}/s)",
        searches as f64 / elapsed.as_secs_f64()
    );
    assert!(
        searches <= allowed,
        "{searches} searches in {elapsed:?}; the budget allows {allowed}"
    );
    assert_eq!(paid_invalid, 0, "a paying buyer was cut off by strangers");
}

/// A payment delivered by webhook is in the index: the buyer is answered from it
/// without asking Stripe again, however often it is validated.
#[test]
fn stripe_webhook_index_answers_without_searching() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let (v, port) = open_with_webhook(|port| {
        format!(
        "api_base = {:?}\nsecret_key_file = {:?}\nrefresh_ms = 0\nwebhook_listen = \"127.0.0.1:{port}\"\nwebhook_secret_file = {:?}\n",
        mock.base,
        secrets.key_file(),
        secrets.whsec_file()
    )
    });
    let g = gate(&v);
    mock.add_intent(&SELLER, &BUYER, 500, "usd", now_s(), "succeeded", 0, false);
    let pi = mock.state.lock().unwrap().intents.last().unwrap().clone();
    let event = json!({"id": "evt_i", "object": "event", "type": "payment_intent.succeeded",
                       "data": {"object": pi}})
    .to_string();
    let sig = sign(WEBHOOK_SECRET, event.as_bytes(), now_s());
    assert_eq!(post_webhook(port, &event, &sig), 200);
    for _ in 0..20 {
        assert!(dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid());
    }
    assert_eq!(mock.state.lock().unwrap().requests, 0, "searched anyway");
    // Unknown keys still fall back to search.
    assert!(!dazaar_tests::plugin_check(&g, buyer(2), SELLER).is_valid());
    assert_eq!(mock.state.lock().unwrap().requests, 1);
}

/// A list longer than `max_pages` no longer fails every validation: the newest pages
/// count, and a buyer not among them is told why.
#[test]
fn stripe_list_past_max_pages_counts_the_newest() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let v = open(&config(
        &mock.base,
        &secrets,
        "lookup = \"payment_intents\"\nmax_pages = 2\n",
    ));
    let g = gate(&v);
    let t = now_s();
    mock.add_intent(&SELLER, &buyer(2), 500, "usd", t, "succeeded", 0, false);
    for _ in 0..250 {
        mock.add_intent(&[0x77; 32], &buyer(9), 1, "usd", t, "succeeded", 0, false);
    }
    mock.add_intent(&SELLER, &BUYER, 500, "usd", t, "succeeded", 0, false);
    let ms = remaining(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!((298_000..=300_000).contains(&ms), "{ms}");
    let r = reason(dazaar_tests::plugin_check(&g, buyer(2), SELLER));
    assert!(r.contains("among the newest 200"), "{r}");
}

/// The webhook listener keeps working while clients announce bodies and never send
/// them and 200 more sockets sit idle: a signed event is still answered and makes
/// its buyer valid.
#[test]
fn stripe_webhook_flows_while_clients_stall_and_idle() {
    let mock = MockStripe::start(KEY);
    let secrets = Secrets::new(KEY);
    let (v, port) = open_with_webhook(|port| {
        format!(
        "api_base = {:?}\nsecret_key_file = {:?}\nrefresh_ms = 60000\nwebhook_listen = \"127.0.0.1:{port}\"\nwebhook_secret_file = {:?}\n",
        mock.base,
        secrets.key_file(),
        secrets.whsec_file()
    )
    });
    let g = gate(&v);
    assert!(!dazaar_tests::plugin_check(&g, BUYER, SELLER).is_valid()); // cached 60 s

    // Bodies announced and never sent: a small one and one of 100 kB (tiny_http read
    // bodies under 1 KiB on the connection's own thread, larger ones on the one thread
    // that handled every request).
    let stalled: Vec<TcpStream> = [1000, 100_000]
        .into_iter()
        .map(|len| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            write!(
                s,
                "POST /stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nStripe-Signature: t=1,v1=00\r\nContent-Length: {len}\r\n\r\n"
            )
            .unwrap();
            s.flush().unwrap();
            s
        })
        .collect();
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();

    mock.add_intent(&SELLER, &BUYER, 500, "usd", now_s(), "succeeded", 0, false);
    let pi = mock.state.lock().unwrap().intents.last().unwrap().clone();
    let event = json!({"id": "evt_f", "object": "event", "type": "payment_intent.succeeded",
                       "data": {"object": pi}})
    .to_string();
    let sig = sign(WEBHOOK_SECRET, event.as_bytes(), now_s());
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    // The deadline a failing listener runs into (it would never answer).
    s.set_read_timeout(Some(Duration::from_secs(4))).unwrap();
    write!(
        s,
        "POST /stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nStripe-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{event}",
        event.len()
    )
    .unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "no answer to a signed event while clients stall: {answer:?}"
    );
    let ms = remaining(dazaar_tests::plugin_check(&g, BUYER, SELLER));
    assert!((298_000..=300_000).contains(&ms), "{ms}");
    drop(idle);
    drop(stalled);
}

/// Measurement, not a check (`cargo test -p dazaar-tests --test stripe -- --ignored
/// stripe_measure`): 100 keys (5 of them paid) validated continuously for 4 s from 4
/// threads with the default `refresh_ms` against a mock enforcing Stripe's search limit
/// (20/s, then 429 + `Retry-After: 1`). Prints the searches a second the mock received,
/// the 429s, and how often a paying buyer was refused. `DAZAAR_STRIPE_SO` loads another
/// build of the plugin (an older one, for a before/after figure).
#[test]
#[ignore]
fn stripe_measure_100_buyers() {
    let mock = MockStripe::start(KEY);
    mock.state.lock().unwrap().search_limit_per_s = Some(20);
    let secrets = Secrets::new(KEY);
    let config = format!(
        "api_base = {:?}\nsecret_key_file = {:?}\ntimeout_ms = 2000\n",
        mock.base,
        secrets.key_file()
    );
    let mut reg = PluginRegistry::new();
    let path = std::env::var_os("DAZAAR_STRIPE_SO")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| plugin_library("fiat_stripe"));
    let v = reg
        .load_path(&path)
        .unwrap()
        .open(&config, limits())
        .unwrap();
    let g = Arc::new(gate(&v));
    let t = now_s();
    let paid: Vec<[u8; 32]> = (1..=5).map(buyer).collect();
    for b in &paid {
        mock.add_intent(&SELLER, b, 500, "usd", t, "succeeded", 0, false);
    }
    for b in &paid {
        assert!(dazaar_tests::plugin_check(&g, *b, SELLER).is_valid());
    }
    let base = {
        let st = mock.state.lock().unwrap();
        (st.searches, st.throttled)
    };
    let start = Instant::now();
    let run = Duration::from_secs(4);
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let g = Arc::clone(&g);
            let paid = paid.clone();
            std::thread::spawn(move || {
                let (mut checks, mut refused) = (0, 0);
                while start.elapsed() < run {
                    for n in (1..=100u8).filter(|n| n % 4 == t) {
                        let ok = dazaar_tests::plugin_check(&g, buyer(n), SELLER).is_valid();
                        if paid.contains(&buyer(n)) {
                            checks += 1;
                            if !ok {
                                refused += 1;
                            }
                        }
                    }
                }
                (checks, refused)
            })
        })
        .collect();
    let (checks, refused) = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let elapsed = start.elapsed().as_secs_f64();
    let st = mock.state.lock().unwrap();
    eprintln!(
        "{}: {:.1} searches/s, {} answered 429, paying buyers refused {refused} of {checks} checks",
        path.display(),
        (st.searches - base.0) as f64 / elapsed,
        st.throttled - base.1,
    );
}
