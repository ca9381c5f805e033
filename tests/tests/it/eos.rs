//! The EOS plugin (`dazaar_eos`), loaded as the host loads it, against a local node
//! (`dazaar_tests::eos_mock`) serving the v1 history API and Hyperion's v2 with real
//! response shapes and pagination edge cases. Only 127.0.0.1 is contacted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::payments::{now_ms, OpenedVerifier, PaymentGate, PaymentTerms, Validation};
use dazaar_plugin_api::payment_memo;
use dazaar_tests::assert_left;
use dazaar_tests::eos_mock::{MockEos, Mode};
use serde_json::{json, Value};

use crate::support::{self, key as b, reason, BUYER, SELLER};

const ACCOUNT: &str = "dazaarseller";

fn open(config: &str) -> Arc<OpenedVerifier> {
    support::open(
        "eos",
        config,
        support::limits(Duration::from_secs(5), 2, 64),
    )
}

/// 1 EOS per hour, paid to ACCOUNT.
fn terms() -> Arc<PaymentTerms> {
    let mut t = PaymentTerms::new("eos", "EOS", "1", "hours", "1");
    t.pay_to = abi_stable::std_types::RSome(ACCOUNT.into());
    Arc::new(t)
}

fn gate(v: &Arc<OpenedVerifier>) -> PaymentGate {
    support::gate(v, terms(), Duration::from_millis(1))
}

fn check(g: &PaymentGate, buyer: [u8; 32]) -> Validation {
    g.validate_uncached(buyer, SELLER, now_ms())
}

fn remaining(v: Validation) -> u64 {
    support::remaining(v, "eos")
}

/// What a grant's time left may lose to rounding beyond the time passed since the
/// payment. The mock node stamps an action with the millisecond given (a real node's
/// block times are multiples of 500 ms, at or after the push), the plugin reads block
/// times to the millisecond, and the price's float arithmetic may round one down.
const ROUNDING_MS: u64 = 1;

fn memo(buyer: [u8; 32]) -> String {
    payment_memo(&SELLER, &buyer)
}

/// A history with every kind of wrong payment, non-transfer actions between them.
fn fill(node: &MockEos, now: u64) {
    // A second token of eosio.token, for a transfer of the wrong symbol.
    node.add_token("eosio.token", "TLOS", 4);
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
    let paid = now_ms();
    fill(&node, paid);
    let g = gate(&v);
    // 1 EOS at 1 EOS/hour.
    let ms = remaining(check(&g, BUYER));
    assert_left(ms, 3_600_000, paid, ROUNDING_MS);
    // 0.5 a minute ago + 0.5 now: 3540 s left.
    let ms = remaining(check(&g, b(9)));
    assert_left(ms, 3_540_000, paid, ROUNDING_MS);
    assert_wrong_payments_not_valid(&g);
    // The overlapping pages were not counted twice.
    let ms = remaining(check(&g, BUYER));
    assert!(ms <= 3_600_000, "{ms}");

    // A payment arriving later is picked up by the next poll, from where it left off.
    let before = node.state.lock().unwrap().requests;
    let paid = now_ms();
    node.transfer(
        "eosio.token",
        "bob",
        ACCOUNT,
        "0.2500 EOS",
        &memo(b(2)),
        paid,
    );
    let ms = remaining(check(&g, b(2)));
    assert_left(ms, 900_000, paid, ROUNDING_MS);
    let after = node.state.lock().unwrap().requests;
    assert!(
        after - before <= 2,
        "re-read the whole history: {} requests",
        after - before
    );
}

/// Every unit kind through the shared pricing rules: 1.5 EOS paid (1 + 0.5) buys 15,000
/// bytes at 1 EOS per 10 kilobytes; a one-time price of 1.5 is reached, 1.6 is not.
#[test]
fn eos_each_unit_kind() {
    use dazaar_plugin_api::Grant;
    let node = MockEos::start(ACCOUNT);
    let v = open(&format!("rpc = {:?}\npoll_ms = 0\n", node.base));
    let now = now_ms();
    for amount in ["1.0000 EOS", "0.5000 EOS"] {
        node.transfer("eosio.token", "alice", ACCOUNT, amount, &memo(BUYER), now);
    }
    let grant = |amount: &str, unit: &str, interval: &str| {
        let mut t = PaymentTerms::new("eos", "EOS", amount, unit, interval);
        t.pay_to = abi_stable::std_types::RSome(ACCOUNT.into());
        let g = support::gate(&v, Arc::new(t), Duration::from_millis(1));
        match check(&g, BUYER) {
            Validation::Valid { grant, .. } => Ok(grant),
            Validation::Invalid { reason } => Err(reason),
        }
    };
    assert_eq!(grant("1", "bytes", "10000"), Ok(Grant::bytes(15_000)));
    assert_eq!(grant("1", "kilobytes", "10"), Ok(Grant::bytes(15_000)));
    assert_eq!(grant("3", "megabytes", "1"), Ok(Grant::bytes(500_000)));
    assert_eq!(
        grant("1", "gigabytes", "2"),
        Ok(Grant::bytes(3_000_000_000))
    );
    assert_eq!(grant("1.5", "once", ""), Ok(Grant::once()));
    let short = grant("1.6", "once", "").unwrap_err();
    assert!(
        short.ends_with("the payments do not reach the one-time price"),
        "{short}"
    );
    let time = grant("1", "hours", "1").unwrap();
    assert_eq!(time.kind, dazaar_plugin_api::GrantKind::TIME);
    assert_left(time.remaining, 5_400_000, now, ROUNDING_MS);
}

/// The seller's account history can hold transfers between others (a contract that
/// notifies the account, `require_recipient`): one carrying this seller's memo but paid
/// `from alice to bob` paid bob, not the seller, and buys nothing.
#[test]
fn eos_transfer_with_the_memo_to_another_account_does_not_pay() {
    for api in ["v1", "hyperion"] {
        let node = MockEos::start(ACCOUNT);
        let v = open(&format!(
            "rpc = {:?}\napi = {api:?}\npoll_ms = 0\n",
            node.base
        ));
        let now = now_ms();
        node.transfer(
            "eosio.token",
            "alice",
            "bob",
            "1.0000 EOS",
            &memo(BUYER),
            now,
        );
        // A real payment after it: the history was read past the transfer to bob.
        node.transfer(
            "eosio.token",
            "alice",
            ACCOUNT,
            "1.0000 EOS",
            &memo(b(2)),
            now,
        );
        let g = gate(&v);
        assert!(check(&g, b(2)).is_valid(), "{api}");
        assert_eq!(
            reason(check(&g, BUYER)),
            format!("eos: no EOS transfer to {ACCOUNT} with this buyer's memo"),
            "{api}"
        );
    }
}

/// eosio.token refuses a quantity whose precision is not the token's (`1.00 EOS` for a
/// `4,EOS` token), so such a transfer never reaches the chain: a buyer configured with
/// the wrong `precision` is told so by the node and pays nothing.
#[test]
fn eos_transfer_with_the_wrong_precision_is_refused_by_the_token_contract() {
    let c = chain();
    let err = c
        .node
        .try_transfer(
            "eosio.token",
            "alice",
            ACCOUNT,
            "1.00 EOS",
            &memo(BUYER),
            now_ms(),
        )
        .unwrap_err();
    assert_eq!(err, "symbol precision mismatch");
    assert!(c
        .node
        .try_transfer(
            "eosio.token",
            "alice",
            ACCOUNT,
            "1.0000 EOS",
            &memo(b(2)),
            now_ms()
        )
        .is_ok());

    let buyer = open(&c.buyer_config(BUYER_WIF, "precision = 2\n"));
    let e = buyer
        .payment_request(BUYER, SELLER, &terms(), "0.5")
        .unwrap_err()
        .to_string();
    assert!(e.contains("symbol precision mismatch"), "{e}");
    assert!(c.node.state.lock().unwrap().pushed.is_empty());
    assert_eq!(
        reason(check(&c.seller, BUYER)),
        format!("eos: no EOS transfer to {ACCOUNT} with this buyer's memo")
    );
    // The token's precision goes through.
    let right = open(&c.buyer_config(BUYER_WIF, "precision = 4\n"));
    assert!(right
        .payment_request(BUYER, SELLER, &terms(), "0.5")
        .unwrap()
        .paid
        .is_some());
    assert!(check(&c.seller, BUYER).is_valid());
}

#[test]
fn eos_hyperion_v2_paging_and_irreversible_only() {
    let node = MockEos::start(ACCOUNT);
    let v = open(&format!(
        "rpc = {:?}\napi = \"hyperion\"\npage_size = 2\npoll_ms = 0\n",
        node.base
    ));
    let paid = now_ms();
    fill(&node, paid);
    let g = gate(&v);
    let ms = remaining(check(&g, BUYER));
    assert_left(ms, 3_600_000, paid, ROUNDING_MS);
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

/// Dust sent to the seller's account with memos naming other sellers costs a stranger
/// almost nothing; it must not fill `max_payments` and push a real payment out.
#[test]
fn eos_dust_naming_other_sellers_does_not_push_out_a_real_payment() {
    let node = MockEos::start(ACCOUNT);
    let v = open(&format!(
        "rpc = {:?}
page_size = 50
poll_ms = 0
max_payments = 10
",
        node.base
    ));
    let now = now_ms();
    for i in 0..40u8 {
        // One of them is a real payment to the other product.
        let quantity = if i == 3 { "0.1000 EOS" } else { "0.0001 EOS" };
        node.transfer(
            "eosio.token",
            "mallory",
            ACCOUNT,
            quantity,
            &payment_memo(&[0x77; 32], &b(i)),
            now,
        );
    }
    node.transfer(
        "eosio.token",
        "alice",
        ACCOUNT,
        "1.0000 EOS",
        &memo(BUYER),
        now,
    );
    let g = gate(&v);
    let ms = remaining(check(&g, BUYER));
    assert_left(ms, 3_600_000, now, ROUNDING_MS);

    // Another product of the same verifier (another seller key, same account) is read
    // for when it is first asked about, its earlier payments included.
    let other = [0x77; 32];
    let ms = remaining(g.validate_uncached(b(3), other, now_ms()));
    assert_left(ms, 360_000, now, ROUNDING_MS);
}

#[test]
fn eos_node_failures_fail_closed_and_recover() {
    let node = MockEos::start(ACCOUNT);
    fill(&node, now_ms());
    // Each failure on a verifier of its own: its first read of the history is due at
    // once, with no backoff of an earlier failure to wait out.
    for (mode, expect) in [
        // The node answers, with the history, after 3 s: the plugin's 300 ms timeout is
        // what makes it unreachable (waiting for the answer would make the buyer valid).
        (
            Mode::Slow(Duration::from_secs(3)),
            "the node is unreachable",
        ),
        (Mode::Garbage, "unreadable answer from the node"),
        (Mode::Error500, "the node answered 500: database is down"),
        (Mode::Hangup, "cannot read EOS history"),
    ] {
        node.set_mode(mode);
        let v = open(&format!(
            "rpc = {:?}\npoll_ms = 0\ntimeout_ms = 300\n",
            node.base
        ));
        let g = gate(&v);
        // The peer is told only that the check is unavailable; the plugin's detail is
        // for the seller's log.
        let r = reason(check(&g, BUYER));
        assert_eq!(r, dazaar::payments::PUBLIC_UNAVAILABLE, "{mode:?}");
        let err = v
            .validate(BUYER, SELLER, &terms(), now_ms())
            .expect_err("the node fails");
        assert!(!err.is_refusal(), "{mode:?}: a failure, not a refusal");
        let detail = err.to_string();
        assert!(
            detail.starts_with("eos: cannot read EOS history: ") && detail.contains(expect),
            "{mode:?}: {detail}"
        );
    }

    // After a failure the node is not asked again before the backoff has passed, even
    // though it has recovered: every validation meanwhile fails closed. The first wait
    // is twice the poll interval (5 s here, capped there), long enough that the checks
    // within it stay within it on a loaded machine.
    const BACKOFF: Duration = Duration::from_secs(5);
    node.set_mode(Mode::Error500);
    let v = open(&format!(
        "rpc = {:?}\npoll_ms = 2500\nmax_backoff_ms = 5000\ntimeout_ms = 300\n",
        node.base
    ));
    let g = gate(&v);
    // The plugin counts the backoff from the end of its attempt, so from after `failing`.
    let failing = Instant::now();
    assert_eq!(
        reason(check(&g, BUYER)),
        dazaar::payments::PUBLIC_UNAVAILABLE
    );
    let asked = node.state.lock().unwrap().requests;
    node.set_mode(Mode::Normal);
    let mut within = 0;
    loop {
        let valid = check(&g, BUYER).is_valid();
        // A check that returned before `failing + BACKOFF` decided before the backoff
        // ended; a later one may have asked.
        if failing.elapsed() >= BACKOFF {
            break;
        }
        within += 1;
        assert!(!valid, "valid during the backoff");
        assert_eq!(
            node.state.lock().unwrap().requests,
            asked,
            "asked the node during the backoff"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(within > 0, "no check landed within the {BACKOFF:?} backoff");
    // Past it: the same verifier asks again and the buyer is valid.
    dazaar_tests::wait_until(
        Duration::from_secs(30),
        "valid again once the backoff passed",
        || check(&g, BUYER).is_valid(),
    );
    assert!(node.state.lock().unwrap().requests > asked);

    // Nothing listening at all: connection refused.
    let refused = dazaar_tests::RefusedPort::new();
    let down = open(&format!("rpc = {:?}\ntimeout_ms = 300\n", refused.url()));
    let r = reason(check(&gate(&down), BUYER));
    assert_eq!(r, dazaar::payments::PUBLIC_UNAVAILABLE);
    let detail = down
        .validate(BUYER, SELLER, &terms(), now_ms())
        .expect_err("no node")
        .to_string();
    assert!(detail.contains("the node is unreachable"), "{detail}");
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

/// The EOSIO development key (published in the EOSIO tutorials), in both private forms.
const BUYER_WIF: &str = "5KQwrPbwdL6PhXujxW37FSSQZ1JiwsST4cqQzDeyXtP79zkvFD3";
const BUYER_PVT_K1: &str = "PVT_K1_2bfGi9rYsXQSXXTvJbDAPhHLQUojjaNLomdm3cEJ1XTzMqUt3V";
const BUYER_PUB: &str = "EOS6MRyAjQq8ud7hVNYcfnVPJqcVpscN5So8BhtHuGYqET5GDW5CV";
/// Another key: sha256("dazaar eos test key 2"), as eosjs prints it.
const OTHER_WIF: &str = "5KFWGtFXWi5ngt51Gc2cypcjDmWhvKHncbXzaZ3QS9uN7bbigCJ";
const OTHER_SECRET_HEX: &str = "bcf5651ab8601c6485ba4cc14a4c8a957da0e0d5ec1f6c02fd65de6d32e1a803";
/// The development key's secret scalar.
const BUYER_SECRET_HEX: &str = "d2653ff7cbb2d8ff129ac27ef5781ce68b2558c41a74af1f2ddca635cbeef07d";
const PAYER: &str = "buyeraccount";

/// Pieces of every key form that must never be written anywhere.
fn key_material() -> Vec<String> {
    let mut out = Vec::new();
    for k in [
        BUYER_WIF,
        BUYER_PVT_K1,
        OTHER_WIF,
        BUYER_SECRET_HEX,
        OTHER_SECRET_HEX,
    ] {
        out.push(k.to_owned());
        out.push(k[10..30].to_owned());
    }
    out
}

fn assert_no_key_material(text: &str, what: &str) {
    for m in key_material() {
        assert!(
            !text.contains(&m),
            "{what} contains key material {m:?}: {text}"
        );
    }
}

/// A node that knows `PAYER`'s key, a seller verifier on it, and a key file.
struct Chain {
    node: MockEos,
    seller: PaymentGate,
    dir: tempfile::TempDir,
}

fn chain() -> Chain {
    let node = MockEos::start(ACCOUNT);
    node.add_key(PAYER, BUYER_PUB);
    let seller = gate(&open(&format!("rpc = {:?}\npoll_ms = 0\n", node.base)));
    Chain {
        node,
        seller,
        dir: tempfile::tempdir().unwrap(),
    }
}

impl Chain {
    /// A buyer config whose key is in a file holding `key`.
    fn buyer_config(&self, key: &str, extra: &str) -> String {
        let path = self.dir.path().join(format!("key-{}", &key[..8]));
        std::fs::write(&path, format!("{key}\n")).unwrap();
        format!(
            "rpc = {:?}\nfrom = {PAYER:?}\nprivate_key_file = {:?}\n{extra}",
            self.node.base,
            path.display().to_string()
        )
    }
}

#[test]
fn eos_buyer_signs_and_pushes_the_transfer_and_the_seller_counts_it() {
    let c = chain();
    let log = c.dir.path().join("buyer.log");
    let buyer = open(&c.buyer_config(
        BUYER_PVT_K1,
        &format!(
            "log_file = {:?}\nlog_level = \"trace\"\n",
            log.display().to_string()
        ),
    ));
    assert_eq!(
        reason(check(&c.seller, BUYER)),
        format!("eos: no EOS transfer to {ACCOUNT} with this buyer's memo")
    );

    // Half an EOS at 1 EOS/hour: 30 minutes, from the node's stamp of the push.
    let paid = now_ms();
    let how = buyer
        .payment_request(BUYER, SELLER, &terms(), "0.5")
        .unwrap();
    let id = how.paid.clone().expect("paid");
    assert_eq!(how.amount.as_deref(), Some("0.5000 EOS"));
    assert!(how
        .note
        .as_deref()
        .unwrap()
        .starts_with("paid: transaction "));
    {
        let st = c.node.state.lock().unwrap();
        assert_eq!(st.pushed, vec![id.clone()]);
        let body: Value = serde_json::from_str(&st.push_bodies[0]).unwrap();
        assert_eq!(body["compression"], 0);
        assert_eq!(body["packed_context_free_data"], "");
        assert!(body["signatures"][0]
            .as_str()
            .unwrap()
            .starts_with("SIG_K1_"));
        assert_no_key_material(&st.push_bodies[0], "the push");
        let last = st.actions.last().unwrap();
        assert_eq!(
            last.data,
            json!({"from": PAYER, "to": ACCOUNT, "quantity": "0.5000 EOS", "memo": memo(BUYER)})
        );
    }
    let ms = remaining(check(&c.seller, BUYER));
    assert_left(ms, 1_800_000, paid, ROUNDING_MS);
    // Another buyer is not paid by it.
    assert!(!check(&c.seller, b(42)).is_valid());

    // The same key in WIF, from an environment variable, pays again: time stacks.
    std::env::set_var("DAZAAR_TEST_EOS_KEY_WIF", BUYER_WIF);
    let wif_buyer = open(&format!(
        "rpc = {:?}\nfrom = {PAYER:?}\nprivate_key_env = \"DAZAAR_TEST_EOS_KEY_WIF\"\n",
        c.node.base
    ));
    let again = wif_buyer
        .payment_request(BUYER, SELLER, &terms(), "0.25")
        .unwrap();
    assert_ne!(again.paid, Some(id));
    // Paid before the first one ran out: 45 minutes from the first.
    let ms = remaining(check(&c.seller, BUYER));
    assert_left(ms, 2_700_000, paid, ROUNDING_MS);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("TRACE") || text.contains("DEBUG"), "{text}");
    assert!(text.contains("transfer pushed"), "{text}");
    assert_no_key_material(&text, "the plugin's log");
}

#[test]
fn eos_push_signed_with_another_key_is_refused_and_pays_nothing() {
    let c = chain();
    let log = c.dir.path().join("wrong.log");
    let buyer = open(&c.buyer_config(
        OTHER_WIF,
        &format!(
            "log_file = {:?}\nlog_level = \"trace\"\n",
            log.display().to_string()
        ),
    ));
    let e = buyer
        .payment_request(BUYER, SELLER, &terms(), "1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("the transfer was not pushed"), "{e}");
    assert!(e.contains("unsatisfied_authorization"), "{e}");
    assert_no_key_material(&e, "the error");
    assert!(c.node.state.lock().unwrap().pushed.is_empty());
    assert_eq!(
        reason(check(&c.seller, BUYER)),
        format!("eos: no EOS transfer to {ACCOUNT} with this buyer's memo")
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("unsatisfied_authorization"), "{text}");
    assert_no_key_material(&text, "the plugin's log");
}

#[test]
fn eos_push_that_arrives_after_expiry_is_refused() {
    let c = chain();
    let buyer = open(&c.buyer_config(BUYER_WIF, "expire_seconds = 30\n"));
    c.node.state.lock().unwrap().push_clock_shift_ms = 120_000;
    let e = buyer
        .payment_request(BUYER, SELLER, &terms(), "1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expired_tx_exception"), "{e}");
    assert!(!check(&c.seller, BUYER).is_valid());
    // On time, it goes through.
    c.node.state.lock().unwrap().push_clock_shift_ms = 0;
    assert!(buyer
        .payment_request(BUYER, SELLER, &terms(), "1")
        .unwrap()
        .paid
        .is_some());
    assert!(check(&c.seller, BUYER).is_valid());
}

#[test]
fn eos_keys_are_never_taken_inline_and_never_echoed() {
    let plugin = support::load("eos");
    let limits = support::limits(Duration::from_secs(5), 1, 4);
    let base = "rpc = \"http://127.0.0.1:9\"\nfrom = \"buyeraccount\"\n";
    for config in [
        format!("{base}private_key = {BUYER_WIF:?}\n"),
        format!("{base}private_key = {BUYER_PVT_K1:?}\n"),
        format!("{base}private_key_env = {BUYER_WIF:?}\n"),
        format!("{base}wif = {BUYER_WIF:?}\n"),
        format!("rpc = \"http://127.0.0.1:9\"\nfrom = {BUYER_WIF:?}\n"),
    ] {
        let e = plugin.open(&config, limits).unwrap_err().to_string();
        assert!(e.contains("never put a key in the config"), "{e}");
        assert_no_key_material(&e, "the error");
    }
    // A key file that is not a key, a variable that is not set, no `from`.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.key");
    let mut tampered = BUYER_WIF.to_owned();
    tampered.replace_range(20..21, "2");
    std::fs::write(&bad, &tampered).unwrap();
    for (config, expect) in [
        (
            format!("{base}private_key_file = {:?}\n", bad.display().to_string()),
            "the private key's checksum does not match",
        ),
        (
            format!("{base}private_key_env = \"DAZAAR_TEST_EOS_UNSET\"\n"),
            "DAZAAR_TEST_EOS_UNSET (private_key_env) is not set",
        ),
        (
            "rpc = \"http://127.0.0.1:9\"\nprivate_key_env = \"X\"\n".to_owned(),
            "needs from",
        ),
    ] {
        let e = plugin.open(&config, limits).unwrap_err().to_string();
        assert!(e.contains(expect), "{e}");
        assert!(!e.contains(&tampered[5..25]), "{e}");
    }
}

/// A sale through the binary: `dazaar sell` with the EOS plugin loaded from
/// `plugin_dir`, reading the mock node's v1 history; a buyer is refused before paying;
/// `dazaar pay --plugin eos` signs the transfer with the buyer's key (from a file) and
/// pushes it to the node; the seller sees it in the history and `dazaar buy` receives
/// the whole feed.
#[test]
fn eos_sale_end_to_end_through_the_binary() {
    use dazaar_tests::{
        buy_once, buy_until_valid, buyer_key, copy_plugin, dazaar, feed_lines, json_lines,
        make_text_feed, s, sell,
    };
    let node = MockEos::start(ACCOUNT);
    node.add_key(PAYER, BUYER_PUB);
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 30);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    copy_plugin("eos", &plugins, None);
    let (_seller, info) = sell(&[
        "--data-dir",
        s(&dir.path().join("seller")),
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--payment",
        "eos",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &format!(
            "rpc = {:?}\naccount = {ACCOUNT:?}\npoll_ms = 100\n",
            node.base
        ),
        "--method",
        "eos",
        "--currency",
        "EOS",
        "--amount",
        "0.01",
        "--unit",
        "seconds",
        "--interval",
        "1",
        "--revalidate-ms",
        "200",
    ]);
    let (key, addr) = (
        info["sellerKey"].as_str().unwrap().to_owned(),
        info["addr"].as_str().unwrap().to_owned(),
    );
    let buyer_data = dir.path().join("buyer");
    let out = dir.path().join("bought");

    // Before paying: refused, zero blocks.
    let o = buy_once(&buyer_data, &key, &addr, &out);
    assert!(!o.status.success());
    assert!(!out.join("key").exists());

    // Pay 3 EOS (300 seconds at 0.01 EOS/s), signed by the buyer's key from a file.
    let key_file = dir.path().join("eos.key");
    std::fs::write(&key_file, format!("{BUYER_WIF}\n")).unwrap();
    let card = json!({"id": key, "name": "ticks",
        "payment": [{"method": "eos", "currency": "EOS", "amount": "0.01", "unit": "seconds",
                     "interval": "1", "payTo": ACCOUNT}]});
    let card_file = dir.path().join("card.json");
    std::fs::write(&card_file, card.to_string()).unwrap();
    let p = dazaar(&[
        "--data-dir",
        s(&buyer_data),
        "pay",
        &key,
        "--connect",
        &addr,
        "--plugin",
        "eos",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &format!(
            "rpc = {:?}\nfrom = {PAYER:?}\nprivate_key_file = {:?}\n",
            node.base,
            s(&key_file)
        ),
        "--card",
        s(&card_file),
        "--amount",
        "3",
        "--json",
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    assert_no_key_material(&String::from_utf8_lossy(&p.stdout), "pay's output");
    assert_no_key_material(&String::from_utf8_lossy(&p.stderr), "pay's log");
    let how = &json_lines(&p.stdout)[0];
    let id = how["paid"].as_str().expect("paid").to_owned();
    assert_eq!(node.state.lock().unwrap().pushed, vec![id]);
    assert_eq!(how["amount"], "3.0000 EOS");
    let buyer_key = buyer_key(&buyer_data);
    assert_eq!(how["memo"], format!("dazaar: {key} {buyer_key}"));
    {
        let st = node.state.lock().unwrap();
        let last = st.actions.last().unwrap();
        assert_eq!(last.data["memo"], how["memo"]);
        assert_eq!(last.data["from"], PAYER);
    }

    // The seller reads it from the history: the buyer gets the whole feed.
    let lines = buy_until_valid(&buyer_data, &key, &addr, &out, Duration::from_secs(10));
    assert!(lines
        .iter()
        .any(|l| l["event"] == "valid" && l["info"]["type"] == "time"));
    assert_eq!(lines.last().unwrap()["length"], 30);
    assert_eq!(feed_lines(&out).len(), 30);

    // The human form says it was paid.
    let p = dazaar(&[
        "--data-dir",
        s(&buyer_data),
        "pay",
        &key,
        "--plugin",
        "eos",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &format!(
            "rpc = {:?}\nfrom = {PAYER:?}\nprivate_key_file = {:?}\n",
            node.base,
            s(&key_file)
        ),
        "--card",
        s(&card_file),
        "--amount",
        "1",
        "--no-qr",
    ]);
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    let text = String::from_utf8_lossy(&p.stdout);
    assert!(text.starts_with("paid with eos (eos EOS):"), "{text}");
    assert!(text.contains("  paid: "), "{text}");
    assert_eq!(node.state.lock().unwrap().pushed.len(), 2);
}

/// A seller restarted with its state store (API 1.3) resumes reading the account's
/// history from the saved cursor, not from its first action: the buyers paid before the
/// restart are valid from the saved transfers, and a payment made while the seller was
/// down is found from the cursor on.
#[test]
fn eos_restart_resumes_from_the_saved_cursor() {
    use dazaar::payments::StateScope;
    use dazaar::state::StateStore;

    let node = MockEos::start(ACCOUNT);
    let paid = now_ms();
    fill(&node, paid);
    let config = format!("rpc = {:?}\npage_size = 3\npoll_ms = 0\n", node.base);
    let data = tempfile::tempdir().unwrap();
    let open_with_state = || {
        let scope = StateScope {
            store: Arc::new(StateStore::open_in(data.path()).unwrap()),
            product: [0x42; 32],
            seller: SELLER,
        };
        support::load("eos")
            .open_with_state(
                &config,
                support::limits(Duration::from_secs(5), 2, 64),
                Some(&scope),
            )
            .unwrap()
    };
    {
        let v = open_with_state();
        let g = gate(&v);
        let ms = remaining(check(&g, BUYER));
        assert_left(ms, 3_600_000, paid, ROUNDING_MS);
        assert!(node.state.lock().unwrap().positions.contains(&0));
    }
    let read = node.state.lock().unwrap().actions.len() as u64;

    // Restarted; a buyer paid meanwhile.
    let paid_later = now_ms();
    node.transfer(
        "eosio.token",
        "bob",
        ACCOUNT,
        "0.2500 EOS",
        &memo(b(10)),
        paid_later,
    );
    node.state.lock().unwrap().positions.clear();
    let v = open_with_state();
    let g = gate(&v);
    let ms = remaining(check(&g, BUYER));
    assert_left(ms, 3_600_000, paid, ROUNDING_MS);
    let ms = remaining(check(&g, b(9)));
    assert_left(ms, 3_540_000, paid, ROUNDING_MS);
    let ms = remaining(check(&g, b(10)));
    assert_left(ms, 900_000, paid_later, ROUNDING_MS);
    assert_wrong_payments_not_valid(&g);
    let positions = node.state.lock().unwrap().positions.clone();
    assert!(!positions.is_empty());
    assert!(
        positions.iter().all(|&p| p >= read),
        "read the history again from before the saved cursor ({read}): {positions:?}"
    );
}
