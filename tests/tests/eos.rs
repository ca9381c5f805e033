//! The EOS plugin (`dazaar_eos`), loaded as the host loads it, against a local node
//! (`dazaar_tests::eos_mock`) serving the v1 history API and Hyperion's v2 with real
//! response shapes and pagination edge cases. Only 127.0.0.1 is contacted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::payments::{
    now_ms, CallLimits, GrantKind, OpenedVerifier, PaymentEntry, PaymentGate, PaymentTerms,
    PluginRegistry, Validation,
};
use dazaar_plugin_api::payment_memo;
use dazaar_tests::eos_mock::{MockEos, Mode};
use dazaar_tests::localstripe::free_port;
use dazaar_tests::plugin_library;
use serde_json::{json, Value};

const SELLER: [u8; 32] = [0x5e; 32];
const BUYER: [u8; 32] = [0xb0; 32];
const ACCOUNT: &str = "dazaarseller";

fn open(config: &str) -> Arc<OpenedVerifier> {
    let mut reg = PluginRegistry::new();
    let plugin = reg.load_path(&plugin_library("eos")).unwrap();
    let limits = CallLimits {
        timeout: Duration::from_secs(5),
        workers: 2,
        queue: 64,
    };
    plugin
        .open(config, limits)
        .unwrap_or_else(|e| panic!("open: {e}"))
}

/// 1 EOS per hour, paid to ACCOUNT.
fn terms() -> Arc<PaymentTerms> {
    let mut t = PaymentTerms::new("eos", "EOS", "1", "hours", "1");
    t.pay_to = abi_stable::std_types::RSome(ACCOUNT.into());
    Arc::new(t)
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

fn remaining(v: Validation) -> u64 {
    match v {
        Validation::Valid { grant, plugin } => {
            assert_eq!(plugin.as_deref(), Some("eos"));
            assert_eq!(grant.kind, GrantKind::TIME);
            grant.remaining
        }
        other => panic!("expected valid, got {other:?}"),
    }
}

fn reason(v: Validation) -> String {
    match v {
        Validation::Invalid { reason } => reason,
        other => panic!("expected invalid, got {other:?}"),
    }
}

fn memo(buyer: [u8; 32]) -> String {
    payment_memo(&SELLER, &buyer)
}

fn b(n: u8) -> [u8; 32] {
    [n; 32]
}

/// A history with every kind of wrong payment, non-transfer actions between them.
fn fill(node: &MockEos, now: u64) {
    node.transfer(
        "eosio.token",
        "alice",
        ACCOUNT,
        "1.0000 EOS",
        &memo(BUYER),
        now,
    );
    node.push(
        "eosio",
        "buyrambytes",
        json!({"payer": ACCOUNT, "receiver": ACCOUNT, "bytes": 4096}),
        now,
    );
    node.transfer(
        "eosio.token",
        "bob",
        ACCOUNT,
        "1.0000 EOS",
        &payment_memo(&SELLER, &b(99)),
        now,
    );
    node.transfer(
        "eosio.token",
        "carol",
        ACCOUNT,
        "1.0000 EOS",
        &payment_memo(&[0x77; 32], &b(3)),
        now,
    );
    node.transfer(
        "eosio.token",
        "dave",
        ACCOUNT,
        "1.0000 TLOS",
        &memo(b(4)),
        now,
    );
    node.transfer("fake.token", "eve", ACCOUNT, "1.0000 EOS", &memo(b(5)), now);
    node.transfer(
        "eosio.token",
        ACCOUNT,
        "frank",
        "1.0000 EOS",
        &memo(b(6)),
        now,
    );
    node.transfer(
        "eosio.token",
        "gina",
        ACCOUNT,
        "1.0000 EOS",
        &memo(b(7)).to_uppercase().replace("DAZAAR:", "dazaar:"),
        now,
    );
    node.transfer(
        "eosio.token",
        "hank",
        ACCOUNT,
        "0.0001 EOS",
        &memo(b(8)),
        now - 10_000,
    );
    node.push("eosio", "voteproducer", json!({"voter": ACCOUNT}), now);
    // Half an EOS, then another half: they stack.
    node.transfer(
        "eosio.token",
        "ivy",
        ACCOUNT,
        "0.5000 EOS",
        &memo(b(9)),
        now - 60_000,
    );
    node.transfer(
        "eosio.token",
        "ivy",
        ACCOUNT,
        "0.5000 EOS",
        &memo(b(9)),
        now,
    );
}

fn assert_wrong_payments_not_valid(g: &PaymentGate) {
    for n in [1, 2, 3, 4, 5, 6, 7] {
        let r = reason(check(g, b(n)));
        assert_eq!(
            r,
            format!("eos: no EOS transfer to {ACCOUNT} with this buyer's memo"),
            "buyer {n}"
        );
    }
    assert_eq!(reason(check(g, b(8))), "eos: the paid time has run out");
}

#[test]
fn eos_v1_history_pays_by_memo_with_paging_and_overlap() {
    let node = MockEos::start(ACCOUNT);
    node.state.lock().unwrap().overlap = true;
    let v = open(&format!(
        "rpc = {:?}\npage_size = 3\npoll_ms = 0\n",
        node.base
    ));
    fill(&node, now_ms());
    let g = gate(&v);
    // 1 EOS at 1 EOS/hour.
    let ms = remaining(check(&g, BUYER));
    assert!((3_598_000..=3_600_000).contains(&ms), "{ms}");
    // 0.5 a minute ago + 0.5 now: 3540 s left.
    let ms = remaining(check(&g, b(9)));
    assert!((3_538_000..=3_540_000).contains(&ms), "{ms}");
    assert_wrong_payments_not_valid(&g);
    // The overlapping pages were not counted twice.
    let ms = remaining(check(&g, BUYER));
    assert!(ms <= 3_600_000, "{ms}");

    // A payment arriving later is picked up by the next poll, from where it left off.
    let before = node.state.lock().unwrap().requests;
    node.transfer(
        "eosio.token",
        "bob",
        ACCOUNT,
        "0.2500 EOS",
        &memo(b(2)),
        now_ms(),
    );
    let ms = remaining(check(&g, b(2)));
    assert!((898_000..=900_000).contains(&ms), "{ms}");
    let after = node.state.lock().unwrap().requests;
    assert!(
        after - before <= 2,
        "re-read the whole history: {} requests",
        after - before
    );
}

#[test]
fn eos_hyperion_v2_paging_and_irreversible_only() {
    let node = MockEos::start(ACCOUNT);
    let v = open(&format!(
        "rpc = {:?}\napi = \"hyperion\"\npage_size = 2\npoll_ms = 0\n",
        node.base
    ));
    fill(&node, now_ms());
    let g = gate(&v);
    let ms = remaining(check(&g, BUYER));
    assert!((3_598_000..=3_600_000).contains(&ms), "{ms}");
    assert_wrong_payments_not_valid(&g);

    // Irreversible only: nothing counts until the node's LIB passes the block.
    let strict = open(&format!(
        "rpc = {:?}\napi = \"hyperion\"\nirreversible_only = true\npoll_ms = 0\n",
        node.base
    ));
    let sg = gate(&strict);
    assert!(!check(&sg, BUYER).is_valid());
    node.state.lock().unwrap().lib = 5000;
    assert!(check(&sg, BUYER).is_valid());
}

#[test]
fn eos_node_failures_fail_closed_and_recover() {
    let node = MockEos::start(ACCOUNT);
    let v = open(&format!(
        "rpc = {:?}\npoll_ms = 0\nmax_backoff_ms = 100\ntimeout_ms = 300\n",
        node.base
    ));
    fill(&node, now_ms());
    let g = gate(&v);
    assert!(check(&g, BUYER).is_valid());
    for (mode, expect) in [
        (
            Mode::Slow(Duration::from_millis(1000)),
            "the node is unreachable",
        ),
        (Mode::Garbage, "unreadable answer from the node"),
        (Mode::Error500, "the node answered 500: database is down"),
        (Mode::Hangup, "cannot read EOS history"),
    ] {
        node.set_mode(mode);
        std::thread::sleep(Duration::from_millis(120)); // past the backoff
        let start = Instant::now();
        let r = reason(check(&g, BUYER));
        assert!(
            r.starts_with("eos: cannot read EOS history: ") && r.contains(expect),
            "{mode:?}: {r}"
        );
        assert!(
            start.elapsed() < Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
        // Within the backoff: still not valid, without asking the node.
        let asked = node.state.lock().unwrap().requests;
        assert!(!check(&g, BUYER).is_valid());
        let now_asked = node.state.lock().unwrap().requests;
        assert_eq!(
            now_asked, asked,
            "{mode:?}: asked the node during the backoff"
        );
    }
    node.set_mode(Mode::Normal);
    std::thread::sleep(Duration::from_millis(1000)); // the slow answer drains; backoff passes
    assert!(check(&g, BUYER).is_valid());

    let down = open(&format!(
        "rpc = \"http://127.0.0.1:{}\"\ntimeout_ms = 300\n",
        free_port()
    ));
    let r = reason(check(&gate(&down), BUYER));
    assert!(r.contains("the node is unreachable"), "{r}");
}

#[test]
fn eos_buyer_gets_the_transfer_to_make() {
    let v = open("rpc = \"http://127.0.0.1:9\"\nfrom = \"buyeraccount\"\n");
    let how = v.payment_request(BUYER, SELLER, &terms(), "2.5").unwrap();
    assert_eq!(how.pay_to.as_deref(), Some(ACCOUNT));
    assert_eq!(how.amount.as_deref(), Some("2.5000 EOS"));
    assert_eq!(how.memo.as_deref(), Some(memo(BUYER).as_str()));
    let action: Value = serde_json::from_str(how.invoice.as_deref().unwrap()).unwrap();
    assert_eq!(
        action,
        json!({"account": "eosio.token", "name": "transfer",
               "authorization": [{"actor": "buyeraccount", "permission": "active"}],
               "data": {"from": "buyeraccount", "to": ACCOUNT, "quantity": "2.5000 EOS",
                        "memo": memo(BUYER)}})
    );
    assert!(v
        .payment_request(BUYER, SELLER, &terms(), "0.00001")
        .is_err());
    // A card without payTo and no account configured: a clear error.
    let bare = Arc::new(PaymentTerms::new("eos", "EOS", "1", "hours", "1"));
    let e = v.payment_request(BUYER, SELLER, &bare, "1").unwrap_err();
    assert!(e.to_string().contains("no seller account"), "{e}");
}
