//! The `exec` plugin (`libdazaar_exec.so`): a verifier in another language as a child
//! process. A seller process with the example Python verifier (`examples/verifier.py`)
//! refuses and then serves a buyer as the verifier's file says, survives `kill -9` of
//! the verifier and validates again once it is restarted; through the host's loader, a
//! verifier that hangs, writes garbage or an overlong line fails closed, and its stderr
//! reaches the host's log.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use dazaar::payments::{Validation, PUBLIC_UNAVAILABLE};
use dazaar_tests::*;

use crate::support::{self, BUYER, SELLER};

fn toml_str(s: &str) -> String {
    // A JSON string literal is a TOML basic string.
    serde_json::to_string(s).unwrap()
}

fn example_verifier() -> PathBuf {
    repo_root().join("examples/verifier.py")
}

fn now_ms() -> u64 {
    dazaar::payments::now_ms()
}

/// Writes the example verifier's paid-buyers file atomically (it re-reads it on change).
fn write_paid(path: &Path, buyers: serde_json::Value) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::json!({ "buyers": buyers }).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `invalid` event's error of a refused `buy`.
fn refusal(o: &std::process::Output) -> String {
    assert!(!o.status.success(), "the buyer was served");
    json_lines(&o.stdout)
        .iter()
        .find(|l| l["event"] == "invalid")
        .map(|l| l["error"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("no invalid event: {}", String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn python_verifier_decides_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    make_text_feed(&feed, 20);
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    copy_plugin("exec", &plugins, None);
    let paid = dir.path().join("paid.json");
    write_paid(&paid, serde_json::json!({}));
    let pid_file = dir.path().join("verifier.pid");
    let command = [
        "python3",
        s(&example_verifier()),
        "--paid",
        s(&paid),
        "--pid-file",
        s(&pid_file),
    ]
    .map(toml_str)
    .join(", ");
    // The restart wait is long enough (750..1500 ms) for a buyer to see the gap.
    let config = format!("command = [{command}]\nrestart_min_ms = 1500\nrestart_max_ms = 1500");
    let seller_log = dir.path().join("seller.log");
    let seller_data = dir.path().join("seller");
    let cmd = dazaar_cmd(&[
        "--data-dir",
        s(&seller_data),
        "sell",
        s(&feed),
        "--listen",
        "127.0.0.1:0",
        "--payment",
        "exec",
        "--plugin-dir",
        s(&plugins),
        "--plugin-config",
        &config,
        "--amount",
        "1",
        "--unit",
        "seconds",
        "--interval",
        "1",
        "--revalidate-ms",
        "200",
        "--json",
    ]);
    let seller = Proc::spawn_with_stderr(
        cmd,
        Stdio::from(std::fs::File::create(&seller_log).unwrap()),
    );
    let info = seller.event("listening", Duration::from_secs(15));
    let key = info["sellerKey"].as_str().unwrap().to_owned();
    let addr = info["addr"].as_str().unwrap().to_owned();
    let buyer_data = dir.path().join("buyer");
    let buyer = buyer_key(&buyer_data);
    let out = dir.path().join("bought");

    // Not in the file: refused with the verifier's reason, nothing downloaded.
    let o = buy_once(&buyer_data, &key, &addr, &out);
    assert_eq!(refusal(&o), "exec: no payment recorded for this buyer");
    assert!(!out.join("key").exists());

    // The verifier's file says the buyer paid for an hour: served, with the time left.
    write_paid(
        &paid,
        serde_json::json!({ buyer.clone(): { "paid_until_ms": now_ms() + 3_600_000 } }),
    );
    let lines = buy_until_valid(&buyer_data, &key, &addr, &out, Duration::from_secs(10));
    let valid = lines.iter().find(|l| l["event"] == "valid").expect("valid");
    assert_eq!(valid["info"]["type"], "time");
    let left = valid["info"]["remaining"].as_u64().unwrap();
    assert!((3_500_000..=3_600_000).contains(&left), "{left}");
    assert_eq!(feed_lines(&out).len(), 20);

    // kill -9 the verifier: the seller keeps running, the buyer is refused (closed)
    // while the verifier is down, and served again once the plugin has restarted it.
    let first = read_pid(&pid_file).expect("the verifier's pid");
    // SAFETY: kill(2) on the verifier process the test's seller started.
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    let mut refused = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused.is_none() && Instant::now() < deadline {
        let o = buy_once(&buyer_data, &key, &addr, &dir.path().join("during"));
        if !o.status.success() {
            refused = Some(refusal(&o));
        }
    }
    assert_eq!(refused.as_deref(), Some(PUBLIC_UNAVAILABLE));
    assert!(
        alive(seller.id() as i32),
        "the seller died with its verifier"
    );
    let lines = buy_until_valid(
        &buyer_data,
        &key,
        &addr,
        &dir.path().join("after"),
        Duration::from_secs(15),
    );
    assert!(lines
        .iter()
        .any(|l| l["event"] == "valid" && l["info"]["type"] == "time"));
    let second = read_pid(&pid_file).expect("the new verifier's pid");
    assert_ne!(first, second, "the verifier was restarted");
    assert!(alive(second));

    // The verifier's stderr is in the seller's log; its arguments are not.
    let log = std::fs::read_to_string(&seller_log).unwrap();
    assert!(log.contains("verifier.py: started"), "{log}");
    assert!(log.contains("the verifier is down"), "{log}");
    drop(seller);
    wait_until(
        "the verifier to stop with the seller",
        Duration::from_secs(10),
        || !alive(second),
    );
}

/// A small Python verifier for the in-process tests: `body` defines `answer(req)`, which
/// returns the lines to print for a request.
fn python(body: &str) -> String {
    let script = format!(
        r#"
import sys, json, time
def out(o):
    sys.stdout.write((o if isinstance(o, str) else json.dumps(o)) + "\n")
    sys.stdout.flush()
{body}
for line in sys.stdin:
    req = json.loads(line)
    for o in answer(req):
        out(o)
"#
    );
    format!("[\"python3\", \"-u\", \"-c\", {}]", toml_str(&script))
}

fn limits() -> dazaar::payments::CallLimits {
    support::limits(Duration::from_secs(5), 2, 16)
}

/// `(detail, public text)` of a refused check through the host's loader and gate.
fn refused(config: &str) -> (String, String) {
    let v = support::open("exec", config, limits());
    let gate = support::gate(
        &v,
        std::sync::Arc::new(dazaar::payments::PaymentTerms::new(
            "exec", "EUR", "1", "seconds", "1",
        )),
        Duration::from_millis(10),
    );
    let detail = match plugin_check(&gate, BUYER, SELLER) {
        Validation::Invalid { reason } => reason,
        other => panic!("expected invalid, got {other:?}"),
    };
    let public = match gate.validate(BUYER, SELLER) {
        Validation::Invalid { reason } => reason,
        other => panic!("expected invalid, got {other:?}"),
    };
    (detail, public)
}

#[test]
fn a_hanging_verifier_hits_the_timeout() {
    let body = r#"
def answer(req):
    if req["op"] == "validate":
        time.sleep(3600)
    return [{"id": req["id"], "error": "no"}]
"#;
    support::load("exec"); // built before the clock starts
    let t = Instant::now();
    let (detail, public) = refused(&format!("command = {}\ntimeout_ms = 400", python(body)));
    assert!(detail.contains("did not answer within 400 ms"), "{detail}");
    assert_eq!(public, PUBLIC_UNAVAILABLE);
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[test]
fn garbage_and_overlong_lines_are_refused_without_panic() {
    let garbage = r#"
def answer(req):
    if req["op"] == "describe":
        return [{"id": req["id"], "error": "no"}]
    return ["\x00\xff not json at all {"]
"#;
    let (detail, public) = refused(&format!("command = {}", python(garbage)));
    assert!(
        detail.contains("not a JSON object with a numeric id"),
        "{detail}"
    );
    assert_eq!(public, PUBLIC_UNAVAILABLE);

    let overlong = r#"
def answer(req):
    if req["op"] == "describe":
        return [{"id": req["id"], "error": "no"}]
    return [json.dumps({"id": req["id"], "valid": True, "grant": {"type": "free"}, "pad": "x" * 100000})]
"#;
    let (detail, public) = refused(&format!("command = {}\nmax_line = 4096", python(overlong)));
    assert!(
        detail.contains("longer than max_line (4096 bytes)"),
        "{detail}"
    );
    assert_eq!(public, PUBLIC_UNAVAILABLE);

    // A grant that is not one: refused, never valid.
    let malformed = r#"
def answer(req):
    return [{"id": req["id"], "valid": True, "grant": {"type": "forever"}}]
"#;
    let (detail, _) = refused(&format!("command = {}", python(malformed)));
    assert!(detail.contains("grant.type is not one of"), "{detail}");
}

#[test]
fn verifier_stderr_reaches_the_host_log() {
    let log = capture_host_log();
    let body = r#"
sys.stderr.write("exec-stderr-sentinel " + "y" * 5000 + "\n")
sys.stderr.flush()
def answer(req):
    return [{"id": req["id"], "valid": True, "grant": {"type": "free"}}]
"#;
    let v = support::open("exec", &format!("command = {}", python(body)), limits());
    let terms = std::sync::Arc::new(dazaar::payments::PaymentTerms::new(
        "exec", "EUR", "1", "seconds", "1",
    ));
    assert_eq!(
        v.validate(BUYER, SELLER, &terms, now_ms()).unwrap(),
        dazaar::payments::Grant::free()
    );
    wait_until(
        "the stderr line in the host log",
        Duration::from_secs(5),
        || log.text().contains("exec-stderr-sentinel"),
    );
    // Cut to 1024 bytes.
    let text = log.text();
    let line = text
        .lines()
        .find(|l| l.contains("exec-stderr-sentinel"))
        .unwrap();
    assert!(line.len() < 1400, "{}", line.len());
}

/// The exec plugin lists the wildcard method: the card method is the one the seller
/// names (its program decides what it serves), `exec` when none is named. A plugin
/// without the wildcard still refuses a method it does not list.
#[test]
fn the_card_method_is_the_sellers_choice() {
    use dazaar::payments::{terms_for, PaymentTerms, ANY_METHOD};
    let exec = support::load("exec");
    assert!(exec.methods().any(|m| m == ANY_METHOD));
    let price = PaymentTerms::new("", "EUR", "1", "seconds", "1");
    let t = terms_for(&exec, Some("PaidFile"), &price).unwrap();
    assert_eq!(t.method.as_str(), "PaidFile");
    assert_eq!(
        terms_for(&exec, None, &price).unwrap().method.as_str(),
        "exec"
    );
    // Without a method, the verifier's `describe` names it (and the currencies it
    // serves bound the entry's); a verifier that does not describe leaves `exec`.
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    copy_plugin("exec", &plugins, None);
    let paid = dir.path().join("paid.json");
    write_paid(&paid, serde_json::json!({}));
    let script = example_verifier();
    let config = |extra: &[&str]| {
        let mut args = vec!["python3", s(&script), "--paid", s(&paid)];
        args.extend_from_slice(extra);
        let list: Vec<String> = args.iter().map(|a| toml_str(a)).collect();
        format!("command = [{}]", list.join(", "))
    };
    let card_method = |config: &str, currency: &str| {
        let mut registry = dazaar::payments::PluginRegistry::new();
        let price = PaymentTerms::new("", currency, "1", "seconds", "1");
        dazaar::payments::card_entry(
            &mut registry,
            &plugins,
            &dazaar::payments::PaymentSpec {
                plugin: "exec",
                method: None,
                price: &price,
                config,
                state: None,
            },
        )
        .map(|t| t.method.to_string())
        .map_err(|e| e.to_string())
    };
    let described = config(&["--method", "PaidFile", "--currency", "EUR"]);
    assert_eq!(card_method(&described, "eur"), Ok("PaidFile".into()));
    let e = card_method(&described, "USD").unwrap_err();
    assert!(
        e.contains("does not serve method `PaidFile` with currency `USD`"),
        "{e}"
    );
    let mute = format!(
        "command = {}",
        python("def answer(req):\n    return [{\"id\": req[\"id\"], \"error\": \"no\"}]")
    );
    assert_eq!(card_method(&mute, "USD"), Ok("exec".into()));
    // The same through `open_entry`, as `dazaar sell` opens it.
    let mut registry = dazaar::payments::PluginRegistry::new();
    let price = PaymentTerms::new("", "EUR", "1", "seconds", "1");
    let entry = dazaar::payments::open_entry(
        &mut registry,
        &plugins,
        &dazaar::payments::PaymentSpec {
            plugin: "exec",
            method: None,
            price: &price,
            config: &described,
            state: None,
        },
        limits(),
    )
    .unwrap();
    assert_eq!(entry.terms.method.as_str(), "PaidFile");
    let ledger = support::load("ledger");
    assert!(terms_for(&ledger, Some("PaidFile"), &price).is_err());
    assert_eq!(
        terms_for(&ledger, None, &price).unwrap().method.as_str(),
        "ledger"
    );
}

/// A peer cannot ask the host's own questions: its `dazaar-host/...` messages never reach
/// the plugin (the example verifier would describe itself), while other names do.
#[tokio::test]
async fn peers_cannot_send_host_messages() {
    use dazaar::payments::{PaymentTerms, UserMessage, HOST_DESCRIBE_MESSAGE};
    let dir = tempfile::tempdir().unwrap();
    let paid = dir.path().join("paid.json");
    write_paid(&paid, serde_json::json!({}));
    let config = format!(
        "command = [{}]",
        ["python3", s(&example_verifier()), "--paid", s(&paid)]
            .map(toml_str)
            .join(", ")
    );
    let v = support::open("exec", &config, limits());
    let gate = support::gate(
        &v,
        std::sync::Arc::new(PaymentTerms::new("exec", "EUR", "1", "seconds", "1")),
        Duration::from_secs(1),
    );
    let ask = |name: &str| UserMessage {
        name: name.into(),
        message: "{}".into(),
    };
    // Directly (as the host asks when it builds the card): described.
    let direct = v
        .user_message(
            BUYER,
            SELLER,
            &gate.entries()[0].terms,
            ask(HOST_DESCRIBE_MESSAGE),
        )
        .unwrap()
        .expect("a description");
    assert!(direct.message.as_str().contains("\"methods\""));
    // From a peer: not answered.
    let mut budget = gate.message_budget();
    let ip = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    let t0 = std::time::Instant::now();
    let from_peer = gate
        .answer_message(
            BUYER,
            SELLER,
            ip,
            &mut budget,
            &ask(HOST_DESCRIBE_MESSAGE),
            t0,
        )
        .await;
    assert_eq!(from_peer, Ok(None));
    // Other names go to the verifier (which handles none).
    let other = gate
        .answer_message(BUYER, SELLER, ip, &mut budget, &ask("my-pay-request"), t0)
        .await;
    assert_eq!(other, Ok(None));
}
