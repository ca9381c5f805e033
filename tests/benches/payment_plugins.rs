//! Payment plugin throughput and payment latency against local backends:
//! `cargo bench -p dazaar-tests --bench payment_plugins`.
//!
//! For the Stripe plugin (against `dazaar_tests::stripe_mock`), the EOS plugin (against
//! `dazaar_tests::eos_mock`) and the LND plugin (against `dazaar_tests::lnd_mock`, gRPC
//! over TLS), through the host's loader and call pool, with 1,000 distinct paying buyers:
//! - validations per second when every validation asks the backend (`refresh_ms = 0` /
//!   `poll_ms = 0`) and when the plugin answers from what it already read;
//! - the time from a payment landing at the backend to the buyer being valid: Stripe by
//!   a signed webhook (polling effectively off), EOS by its poll (`poll_ms` 1000 and 250),
//!   LND by its invoice subscription, with the seller validating every 20 ms. (LND
//!   validations never ask the node: they read what the subscription delivered.)
// Test and benchmark code: a panic is the failure report, and its queues are
// bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::payments::{now_ms, CallLimits, OpenedVerifier, PaymentTerms, PluginRegistry};
use dazaar_plugin_api::payment_memo;
use dazaar_tests::eos_mock::MockEos;
use dazaar_tests::plugin_library;
use dazaar_tests::stripe_mock::{now_s, post_webhook, sign, MockStripe};
use serde_json::json;

const SELLER: [u8; 32] = [0x5e; 32];
const BUYERS: u32 = 1000;
const KEY: &str = "sk_test_bench";
const WHSEC: &str = "whsec_bench";

fn buyer(i: u32) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..4].copy_from_slice(&i.to_le_bytes());
    k[31] = 0xb0;
    k
}

fn open(name: &str, config: &str) -> Arc<OpenedVerifier> {
    let mut reg = PluginRegistry::new();
    let plugin = reg.load_path(&plugin_library(name)).expect("load");
    let limits = CallLimits {
        timeout: Duration::from_secs(10),
        workers: 1,
        queue: 1024,
    };
    plugin.open(config, limits).expect("open")
}

fn rate(v: &OpenedVerifier, terms: &Arc<PaymentTerms>, rounds: u32) -> f64 {
    let start = Instant::now();
    let mut ok = 0;
    for _ in 0..rounds {
        for i in 0..BUYERS {
            ok += u32::from(v.validate(buyer(i), SELLER, terms, now_ms()).is_ok());
        }
    }
    assert_eq!(ok, BUYERS * rounds, "every buyer paid");
    f64::from(BUYERS * rounds) / start.elapsed().as_secs_f64()
}

fn wait_valid(
    v: &OpenedVerifier,
    terms: &Arc<PaymentTerms>,
    b: [u8; 32],
    from: Instant,
) -> Duration {
    loop {
        if v.validate(b, SELLER, terms, now_ms()).is_ok() {
            return from.elapsed();
        }
        assert!(from.elapsed() < Duration::from_secs(10), "never valid");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn stripe() {
    let mock = MockStripe::start(KEY);
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("key");
    let wh_file = dir.path().join("whsec");
    std::fs::write(&key_file, KEY).expect("write key");
    std::fs::write(&wh_file, WHSEC).expect("write whsec");
    let t = now_s();
    for i in 0..BUYERS {
        mock.add_intent(&SELLER, &buyer(i), 500, "usd", t, "succeeded", 0, false);
    }
    let terms = Arc::new(PaymentTerms::new("stripe", "USD", "1", "minutes", "1"));
    // The plugin's own cost is measured here, not Stripe's rate limits: a request budget
    // far above what the mock can serve.
    let base = format!(
        "api_base = {:?}\nsecret_key_file = {:?}\nsearch_per_s = 1000000\n",
        mock.base,
        key_file.display().to_string()
    );
    let cold = open("fiat_stripe", &format!("{base}refresh_ms = 0\n"));
    println!(
        "stripe: {:.0} validations/s, every one a search request (1,000 buyers, 1,000 PaymentIntents)",
        rate(&cold, &terms, 1)
    );
    let warm = open("fiat_stripe", &format!("{base}refresh_ms = 600000\n"));
    rate(&warm, &terms, 1);
    println!(
        "stripe: {:.0} validations/s from the plugin's cache",
        rate(&warm, &terms, 5)
    );

    // The listener takes a port the kernel picks; the plugin's log (this process's
    // only one) says which.
    let hook_log = dir.path().join("stripe.log");
    let hooked = open(
        "fiat_stripe",
        &format!(
            "{base}refresh_ms = 600000\nwebhook_listen = \"127.0.0.1:0\"\nwebhook_secret_file = {:?}\nlog_file = {:?}\n",
            wh_file.display().to_string(),
            hook_log.display().to_string()
        ),
    );
    let port = dazaar_tests::stripe_mock::webhook_port_in_log(&hook_log)
        .expect("the plugin's log names the webhook address");
    let mut lat = Vec::new();
    for n in 0..20u32 {
        let b = buyer(BUYERS + n);
        assert!(hooked.validate(b, SELLER, &terms, now_ms()).is_err());
        let landed = Instant::now();
        mock.add_intent(&SELLER, &b, 100, "usd", now_s(), "succeeded", 0, false);
        let pi = mock
            .state
            .lock()
            .expect("mock")
            .intents
            .last()
            .cloned()
            .expect("pi");
        let event = json!({"type": "payment_intent.succeeded", "data": {"object": pi}}).to_string();
        assert_eq!(
            post_webhook(port, &event, &sign(WHSEC, event.as_bytes(), now_s())),
            200
        );
        lat.push(wait_valid(&hooked, &terms, b, landed));
    }
    println!(
        "stripe: payment landed to buyer valid by webhook: median {:?}, max {:?} (20 payments)",
        median(lat.clone()),
        lat.iter().max().copied().unwrap_or_default()
    );
}

fn eos() {
    let account = "dazaarseller";
    let node = MockEos::start(account);
    let now = now_ms();
    for i in 0..BUYERS {
        node.transfer(
            "eosio.token",
            "payer",
            account,
            "1.0000 EOS",
            &payment_memo(&SELLER, &buyer(i)),
            now,
        );
    }
    let mut terms = PaymentTerms::new("eos", "EOS", "1", "hours", "1");
    terms.pay_to = abi_stable::std_types::RSome(account.into());
    let terms = Arc::new(terms);
    let cold = open("eos", &format!("rpc = {:?}\npoll_ms = 0\n", node.base));
    println!(
        "eos: {:.0} validations/s, every one an incremental get_actions (1,000 buyers)",
        rate(&cold, &terms, 1)
    );
    let warm = open("eos", &format!("rpc = {:?}\npoll_ms = 600000\n", node.base));
    rate(&warm, &terms, 1);
    println!(
        "eos: {:.0} validations/s between polls",
        rate(&warm, &terms, 5)
    );

    for poll in [1000u64, 250] {
        let v = open("eos", &format!("rpc = {:?}\npoll_ms = {poll}\n", node.base));
        let mut lat = Vec::new();
        for n in 0..8u32 {
            let b = buyer(BUYERS + 100 + n + poll as u32);
            assert!(v.validate(b, SELLER, &terms, now_ms()).is_err());
            // Land at a random point of the poll cycle.
            std::thread::sleep(Duration::from_millis(u64::from(n) * poll / 8));
            let landed = Instant::now();
            node.transfer(
                "eosio.token",
                "payer",
                account,
                "1.0000 EOS",
                &payment_memo(&SELLER, &b),
                now_ms(),
            );
            lat.push(wait_valid(&v, &terms, b, landed));
        }
        println!(
            "eos: payment landed to buyer valid with poll_ms = {poll}: median {:?}, max {:?} (8 payments)",
            median(lat.clone()),
            lat.iter().max().copied().unwrap_or_default()
        );
    }
}

fn lnd() {
    use dazaar_tests::lnd_mock::MockLnd;
    let macaroon = b"bench-macaroon";
    let node = MockLnd::start(&hex::encode(macaroon));
    {
        let mut s = node.state.lock().expect("mock");
        for i in 0..BUYERS {
            let r = s.add(&payment_memo(&SELLER, &buyer(i)), 3600, true);
            s.settle(&r);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.cert"), &node.cert_pem).expect("cert");
    std::fs::write(dir.path().join("m"), macaroon).expect("macaroon");
    let v = open(
        "lnd",
        &format!(
            "address = \"{}\"\ntls_cert = {:?}\ntls_domain = \"localhost\"\nmacaroon = {:?}\n",
            node.addr,
            dir.path().join("tls.cert").display().to_string(),
            dir.path().join("m").display().to_string()
        ),
    );
    let terms = Arc::new(PaymentTerms::new("lightning", "SATS", "1", "seconds", "1"));
    let start = Instant::now();
    while v.validate(buyer(0), SELLER, &terms, now_ms()).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "never synced");
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "lnd: listed 1,000 settled invoices in {:?} (TLS connect, ListInvoices, subscribe)",
        start.elapsed()
    );
    rate(&v, &terms, 1);
    println!(
        "lnd: {:.0} validations/s (1,000 buyers)",
        rate(&v, &terms, 5)
    );
    let mut lat = Vec::new();
    for n in 0..20u32 {
        let b = buyer(BUYERS + 500 + n);
        let request = node
            .state
            .lock()
            .expect("mock")
            .add(&payment_memo(&SELLER, &b), 100, true);
        assert!(v.validate(b, SELLER, &terms, now_ms()).is_err());
        let landed = Instant::now();
        assert!(node.state.lock().expect("mock").settle(&request));
        lat.push(wait_valid(&v, &terms, b, landed));
    }
    println!(
        "lnd: invoice settled to buyer valid by subscription: median {:?}, max {:?} (20 payments; 20 ms validation loop)",
        median(lat.clone()),
        lat.iter().max().copied().unwrap_or_default()
    );
}

/// LND plugin restart to first valid buyer with 10,000 settled invoices on the node:
/// without a state store (the plugin lists every invoice before it answers) and with one
/// (API 1.3: it restores the saved checkpoint and resumes the subscription from it).
fn lnd_restart() {
    use dazaar::payments::StateScope;
    use dazaar::state::StateStore;
    use dazaar_tests::lnd_mock::MockLnd;
    const INVOICES: u32 = 10_000;
    let macaroon = b"bench-macaroon";
    let node = MockLnd::start(&hex::encode(macaroon));
    {
        let mut s = node.state.lock().expect("mock");
        for i in 0..INVOICES {
            let r = s.add(&payment_memo(&SELLER, &buyer(i)), 3600, true);
            s.settle(&r);
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("tls.cert"), &node.cert_pem).expect("cert");
    std::fs::write(dir.path().join("m"), macaroon).expect("macaroon");
    let config = format!(
        "address = \"{}\"\ntls_cert = {:?}\ntls_domain = \"localhost\"\nmacaroon = {:?}\n",
        node.addr,
        dir.path().join("tls.cert").display().to_string(),
        dir.path().join("m").display().to_string()
    );
    let terms = Arc::new(PaymentTerms::new("lightning", "SATS", "1", "seconds", "1"));
    let mut reg = PluginRegistry::new();
    let plugin = reg.load_path(&plugin_library("lnd")).expect("load");
    let limits = CallLimits {
        timeout: Duration::from_secs(10),
        workers: 1,
        queue: 1024,
    };
    let state_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(StateStore::open_in(state_dir.path()).expect("state"));
    let scope = StateScope {
        store,
        product: [0x42; 32],
        seller: SELLER,
    };
    // The time from opening the plugin to the last-paid buyer being valid.
    let first_valid = |state: Option<&StateScope>| {
        let start = Instant::now();
        let v = plugin
            .open_with_state(&config, limits, state)
            .expect("open");
        while v
            .validate(buyer(INVOICES - 1), SELLER, &terms, now_ms())
            .is_err()
        {
            assert!(start.elapsed() < Duration::from_secs(60), "never valid");
            std::thread::sleep(Duration::from_millis(2));
        }
        (start.elapsed(), v)
    };
    let (cold, v) = first_valid(None);
    drop(v);
    // Once with the store, to save the checkpoint; then the restart that is measured.
    let (first, v) = first_valid(Some(&scope));
    drop(v);
    std::thread::sleep(Duration::from_millis(500));
    let lists = node.state.lock().expect("mock").list_calls;
    let (warm, v) = first_valid(Some(&scope));
    let listed_again = node.state.lock().expect("mock").list_calls - lists;
    drop(v);
    println!(
        "lnd: restart to first valid with {INVOICES} settled invoices: no state store {cold:?} \
         (lists the node), with the saved checkpoint {warm:?} (ListInvoices calls: {listed_again}; \
         the first run with an empty store took {first:?})"
    );
}

fn main() {
    stripe();
    eos();
    lnd();
    lnd_restart();
}
