//! The Lightning plugin (`dazaar_lnd`), loaded as the host loads it, against a local
//! tonic gRPC server over TLS that implements the `lnrpc.Lightning` subset the plugin
//! uses and checks the `macaroon` metadata (`dazaar_tests::lnd_mock`). Only 127.0.0.1 is
//! contacted. The end-to-end sale through the `dazaar` binary (sell, pay, buy) is in
//! `market_cli.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::payments::{
    now_ms, CallLimits, GrantKind, OpenedVerifier, PaymentEntry, PaymentGate, PaymentTerms,
    PluginRegistry, UserMessage, Validation,
};
use dazaar_plugin_api::payment_memo;
use dazaar_tests::lnd_mock::{LndMode, MockLnd};
use dazaar_tests::plugin_library;
use serde_json::{json, Value};

const SELLER: [u8; 32] = [0x5e; 32];
const BUYER: [u8; 32] = [0xb0; 32];
const MACAROON: &[u8] = b"\x02\x01\x03lnd-invoice-macaroon-bytes-for-tests";

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(node: &MockLnd, macaroon: &[u8]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.cert"), &node.cert_pem).unwrap();
        std::fs::write(dir.path().join("invoice.macaroon"), macaroon).unwrap();
        Files { dir }
    }
    fn config(&self, node: &MockLnd, extra: &str) -> String {
        format!(
            "address = \"{}\"\ntls_cert = {:?}\ntls_domain = \"localhost\"\nmacaroon = {:?}\nnetwork = \"regtest\"\ntimeout_ms = 500\nmax_backoff_ms = 200\n{extra}",
            node.addr,
            self.dir.path().join("tls.cert").display().to_string(),
            self.dir.path().join("invoice.macaroon").display().to_string()
        )
    }
}

fn open(config: &str) -> Arc<OpenedVerifier> {
    let mut reg = PluginRegistry::new();
    let plugin = reg.load_path(&plugin_library("lnd")).unwrap();
    let limits = CallLimits {
        timeout: Duration::from_secs(5),
        workers: 2,
        queue: 64,
    };
    plugin
        .open(config, limits)
        .unwrap_or_else(|e| panic!("open: {e}"))
}

/// 1 sat per second.
fn terms() -> Arc<PaymentTerms> {
    Arc::new(PaymentTerms::new("Lightning", "SATS", "1", "seconds", "1"))
}

fn gate(v: &Arc<OpenedVerifier>) -> PaymentGate {
    PaymentGate::new(
        vec![PaymentEntry {
            terms: terms(),
            verifier: Arc::clone(v),
        }],
        Duration::from_millis(1),
    )
}

fn check(g: &PaymentGate, buyer: [u8; 32]) -> Validation {
    g.validate_uncached(buyer, SELLER, now_ms())
}

fn reason(v: Validation) -> String {
    match v {
        Validation::Invalid { reason } => reason,
        other => panic!("expected invalid, got {other:?}"),
    }
}

/// Waits until `f` holds for the validation (the subscription is asynchronous).
fn wait_for(
    g: &PaymentGate,
    buyer: [u8; 32],
    within: Duration,
    f: impl Fn(&Validation) -> bool,
) -> Validation {
    let start = Instant::now();
    loop {
        let v = check(g, buyer);
        if f(&v) || start.elapsed() > within {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remaining(v: Validation) -> u64 {
    match v {
        Validation::Valid { grant, plugin } => {
            assert_eq!(plugin.as_deref(), Some("lnd"));
            assert_eq!(grant.kind, GrantKind::TIME);
            grant.remaining
        }
        other => panic!("expected valid, got {other:?}"),
    }
}

fn b(n: u8) -> [u8; 32] {
    [n; 32]
}

#[test]
fn lnd_settled_invoices_with_the_memo_make_buyers_valid() {
    let node = MockLnd::start(&hex::encode(MACAROON));
    {
        let mut s = node.state.lock().unwrap();
        let r = s.add(&payment_memo(&SELLER, &BUYER), 600, true);
        s.settle(&r);
        let r = s.add(&payment_memo(&SELLER, &b(99)), 600, true); // for another buyer
        s.settle(&r);
        let r = s.add(&payment_memo(&[0x77; 32], &b(3)), 600, true); // another seller
        s.settle(&r);
        s.add(&payment_memo(&SELLER, &b(4)), 600, true); // never settled
        let r = s.add(
            &payment_memo(&SELLER, &b(5))
                .to_uppercase()
                .replace("DAZAAR:", "dazaar:"),
            600,
            true,
        );
        s.settle(&r);
    }
    let files = Files::new(&node, MACAROON);
    let v = open(&files.config(&node, ""));
    let g = gate(&v);
    // Listed at start: 600 sats at 1 sat/s.
    let ms = remaining(wait_for(
        &g,
        BUYER,
        Duration::from_secs(5),
        Validation::is_valid,
    ));
    assert!((598_000..=600_000).contains(&ms), "{ms}");
    for n in [1, 3, 4, 5] {
        assert_eq!(
            reason(check(&g, b(n))),
            "lnd: no settled invoice with this buyer's memo",
            "buyer {n}"
        );
    }
    // A currency the plugin does not price.
    let usd = Arc::new(PaymentTerms::new("Lightning", "USD", "1", "seconds", "1"));
    assert!(v.validate(BUYER, SELLER, &usd, now_ms()).is_err());

    // The invoice exchange: the buyer asks, the seller's LND makes a bound invoice.
    let ask = UserMessage {
        name: "lnd-pay-request".into(),
        message: "{\"amount\":300}".into(),
    };
    let reply = g.user_message(b(2), SELLER, &ask).unwrap().unwrap();
    assert_eq!(reply.name.as_str(), "lnd-invoice");
    let body: Value = serde_json::from_str(reply.message.as_str()).unwrap();
    assert_eq!(body["amount"], json!(300));
    let request = body["request"].as_str().unwrap().to_owned();
    {
        let s = node.state.lock().unwrap();
        let inv = s
            .invoices
            .iter()
            .find(|i| i.payment_request == request)
            .unwrap();
        assert_eq!(inv.memo, payment_memo(&SELLER, &b(2)));
        assert_eq!(inv.value, 300);
        assert!(inv.private);
    }
    assert!(!check(&g, b(2)).is_valid(), "unsettled");
    let too_big = UserMessage {
        name: "lnd-pay-request".into(),
        message: "{\"amount\":100000000000}".into(),
    };
    assert!(g.user_message(b(2), SELLER, &too_big).is_err());

    // Paid: the subscription brings it in.
    let paid = Instant::now();
    assert!(node.state.lock().unwrap().settle(&request));
    let ms = remaining(wait_for(
        &g,
        b(2),
        Duration::from_secs(5),
        Validation::is_valid,
    ));
    eprintln!("lnd: settled to valid in {:?}", paid.elapsed());
    assert!((298_000..=300_000).contains(&ms), "{ms}");
}

#[test]
fn lnd_buyer_checks_the_invoice_before_paying() {
    let node = MockLnd::start(&hex::encode(MACAROON));
    let files = Files::new(&node, MACAROON);
    let seller = open(&files.config(&node, ""));
    let buyer = open(&files.config(&node, "pay = true\n"));
    let sg = gate(&seller);

    let how = buyer
        .payment_request(BUYER, SELLER, &terms(), "250")
        .unwrap();
    let send = how.send.unwrap();
    assert_eq!(send.name, "lnd-pay-request");
    assert_eq!(send.message, json!({"amount": 250}));
    let ask = UserMessage {
        name: send.name.clone().into(),
        message: send.message.to_string().into(),
    };
    let invoice = sg.user_message(BUYER, SELLER, &ask).unwrap().unwrap();

    // A tampered amount or an invoice bound to someone else: not paid.
    let body: Value = serde_json::from_str(invoice.message.as_str()).unwrap();
    let tampered = UserMessage {
        name: "lnd-invoice".into(),
        message: json!({"request": body["request"], "amount": 100})
            .to_string()
            .into(),
    };
    let e = buyer
        .user_message(BUYER, SELLER, &terms(), tampered)
        .unwrap_err();
    assert!(e.to_string().contains("not paying"), "{e}");
    let e = buyer
        .user_message(b(9), SELLER, &terms(), invoice.clone())
        .unwrap_err();
    assert!(e.to_string().contains("description"), "{e}");
    assert!(!wait_for(&sg, BUYER, Duration::from_millis(300), Validation::is_valid).is_valid());

    // The right invoice: paid with SendPaymentSync, and the seller sees it settle.
    assert_eq!(
        buyer
            .user_message(BUYER, SELLER, &terms(), invoice)
            .unwrap(),
        None
    );
    let ms = remaining(wait_for(
        &sg,
        BUYER,
        Duration::from_secs(5),
        Validation::is_valid,
    ));
    assert!((248_000..=250_000).contains(&ms), "{ms}");

    // A payment LND cannot route is an error, not a silent success.
    node.state.lock().unwrap().mode = LndMode::PaymentFails;
    let again = sg.user_message(BUYER, SELLER, &ask).unwrap().unwrap();
    let e = buyer
        .user_message(BUYER, SELLER, &terms(), again)
        .unwrap_err();
    assert!(e.to_string().contains("payment failed"), "{e}");
}

#[test]
fn lnd_away_fails_closed_and_comes_back_without_restart() {
    let mut node = MockLnd::start(&hex::encode(MACAROON));
    {
        let mut s = node.state.lock().unwrap();
        let r = s.add(&payment_memo(&SELLER, &BUYER), 600, true);
        s.settle(&r);
    }
    let files = Files::new(&node, MACAROON);
    let log = files.dir.path().join("lnd.log");
    let v = open(&files.config(
        &node,
        &format!(
            "log_file = {:?}\nlog_level = \"trace\"\n",
            log.display().to_string()
        ),
    ));
    let g = gate(&v);
    assert!(wait_for(&g, BUYER, Duration::from_secs(5), Validation::is_valid).is_valid());

    node.stop();
    let r = reason(wait_for(&g, BUYER, Duration::from_secs(5), |v| {
        !v.is_valid()
    }));
    assert!(r.starts_with("lnd: LND is not reachable"), "{r}");

    // Back, but slow to list: still not valid (past the timeout).
    node.state.lock().unwrap().mode = LndMode::SlowList(Duration::from_millis(1500));
    node.resume();
    std::thread::sleep(Duration::from_millis(800));
    assert!(!check(&g, BUYER).is_valid());
    node.state.lock().unwrap().mode = LndMode::Normal;
    let v2 = wait_for(&g, BUYER, Duration::from_secs(8), Validation::is_valid);
    assert!(v2.is_valid(), "{v2:?}");

    // Garbage: something that is not LND (plain HTTP, no TLS) at the address.
    let not_lnd = dazaar_tests::stripe_mock::MockStripe::start("sk_unused");
    let addr = not_lnd.base.trim_start_matches("http://").to_owned();
    let garbage = open(
        &files
            .config(&node, "")
            .replace(&node.addr.to_string(), &addr),
    );
    let r = reason(wait_for(
        &gate(&garbage),
        BUYER,
        Duration::from_secs(3),
        |v| matches!(v, Validation::Invalid { reason } if !reason.contains("connecting")),
    ));
    assert!(
        r.starts_with("lnd: LND is not reachable: ListInvoices failed"),
        "{r}"
    );

    // A wrong macaroon: refused by LND, the reason says so, and shows no macaroon.
    let wrong = Files::new(&node, b"wrong-macaroon-secret");
    let bad = open(&wrong.config(&node, ""));
    let r = reason(wait_for(
        &gate(&bad),
        BUYER,
        Duration::from_secs(3),
        |v| matches!(v, Validation::Invalid { reason } if reason.contains("Unauthenticated")),
    ));
    assert!(r.contains("Unauthenticated"), "{r}");
    for secret in [hex::encode(MACAROON), hex::encode(b"wrong-macaroon-secret")] {
        assert!(!r.contains(&secret));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("TRACE") || text.contains("DEBUG"), "{text}");
        assert!(!text.contains(&secret), "a macaroon is in the log");
    }
}

#[test]
fn lnd_bolt11_test_invoices_decode_with_the_plugins_decoder() {
    use dazaar_lnd::bolt11::{decode, Bolt11Error, Network};
    use dazaar_tests::bolt11::{encode, public_key, Describe, InvoiceSpec};
    use k256::ecdsa::SigningKey;

    let key = SigningKey::from_slice(&[0x42; 32]).unwrap();
    let memo = payment_memo(&SELLER, &BUYER);
    for (prefix, network) in [
        ("bc", Network::Bitcoin),
        ("tb", Network::Testnet),
        ("bcrt", Network::Regtest),
        ("tbs", Network::Signet),
    ] {
        for msat in [1_000, 250_000, 123_456_789, 2_000_000_000, 100_000_000_000] {
            let spec = InvoiceSpec {
                prefix: prefix.into(),
                amount_msat: Some(msat),
                description: Describe::Text(memo.clone()),
                payment_hash: [0xab; 32],
                payment_secret: Some([0xcd; 32]),
                timestamp: 1_750_000_000,
                expiry: Some(600),
                payee_field: None,
                features: Vec::new(),
            };
            let text = encode(&spec, &key);
            let inv = decode(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(inv.network, network);
            assert_eq!(inv.amount_msat, Some(msat));
            assert_eq!(inv.timestamp, 1_750_000_000);
            assert_eq!(inv.expiry, 600);
            assert_eq!(inv.description.as_deref(), Some(memo.as_str()));
            assert_eq!(inv.description_hash, None);
            assert_eq!(inv.payment_hash, [0xab; 32]);
            assert_eq!(inv.payment_secret, Some([0xcd; 32]));
            assert_eq!(inv.payee, public_key(&key));
            // Upper case is the same invoice.
            assert_eq!(decode(&text.to_uppercase()), Ok(inv));

            // One flipped character anywhere after the prefix: refused.
            let mut bytes = text.clone().into_bytes();
            let i = text.len() / 2;
            bytes[i] = if bytes[i] == b'q' { b'p' } else { b'q' };
            let flipped = String::from_utf8(bytes).unwrap();
            assert_eq!(decode(&flipped), Err(Bolt11Error::BadChecksum), "{flipped}");
        }
    }
    // A description hash, no amount, default expiry, and an `n` field.
    let spec = InvoiceSpec {
        prefix: "bcrt".into(),
        amount_msat: None,
        description: Describe::Hash([0x11; 32]),
        payment_hash: [1; 32],
        payment_secret: None,
        timestamp: 1,
        expiry: None,
        payee_field: Some(public_key(&key)),
        features: Vec::new(),
    };
    let inv = decode(&encode(&spec, &key)).unwrap();
    assert_eq!(
        (inv.amount_msat, inv.description, inv.description_hash),
        (None, None, Some([0x11; 32]))
    );
    assert_eq!((inv.expiry, inv.payee), (3600, public_key(&key)));
}
