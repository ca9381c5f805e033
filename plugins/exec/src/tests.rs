//! The plugin against real child processes (small Python verifiers): answers, id
//! matching, line bounds, malformed answers, hangs, crashes and restarts.

use super::*;
use dazaar_plugin_api::{PaymentTerms, UNAVAILABLE_PREFIX};
use std::time::Instant;

const BUYER: [u8; 32] = [0xb0; 32];
const SELLER: [u8; 32] = [0x5e; 32];

/// The loop every test verifier runs: `answer(req)` returns the lines to print.
const PRELUDE: &str = r#"
import sys, json, time, os
def out(o):
    sys.stdout.write((o if isinstance(o, str) else json.dumps(o)) + "\n")
    sys.stdout.flush()
def serve(answer):
    for line in sys.stdin:
        req = json.loads(line)
        for o in answer(req):
            out(o)
"#;

fn toml_str(s: &str) -> String {
    // A JSON string literal is a TOML basic string.
    serde_json::to_string(s).unwrap()
}

/// Config running `python3 -c PRELUDE+body` with `extra` settings.
fn config(body: &str, extra: &str) -> String {
    let script = format!("{PRELUDE}\n{body}\n");
    format!(
        "command = [\"python3\", \"-u\", \"-c\", {}]\n{extra}\n",
        toml_str(&script)
    )
}

fn open(body: &str, extra: &str) -> ExecPlugin {
    ExecPlugin::open(&config(body, extra)).unwrap()
}

fn terms() -> PaymentTerms {
    PaymentTerms::new("exec", "EUR", "1", "seconds", "1")
}

fn validate(p: &ExecPlugin) -> Result<Grant, String> {
    let terms = terms();
    p.validate(
        &Request {
            buyer: BUYER,
            seller: SELLER,
            terms: &terms,
        },
        1_700_000_000_000,
    )
}

/// Valid for 5 s for BUYER, refused otherwise; describes itself.
const GOOD: &str = r#"
def answer(req):
    if req["op"] == "describe":
        return [{"id": req["id"], "name": "t", "version": "1", "methods": ["Allow"], "currencies": ["EUR"]}]
    if req["op"] == "validate":
        if req["buyer"] == "b0" * 32 and req["terms"]["currency"] == "EUR":
            return [{"id": req["id"], "valid": True, "grant": {"type": "time", "remaining": 5000}}]
        return [{"id": req["id"], "valid": False, "reason": "not on the list"}]
    if req["op"] == "user_message":
        return [{"id": req["id"], "reply": {"name": "echo", "message": req["message"]}}]
    if req["op"] == "payment_request":
        return [{"id": req["id"], "instructions": {"amount": req["amount"], "note": "cash"}}]
    return [{"id": req["id"], "error": "unknown op"}]
serve(answer)
"#;

#[test]
fn answers_every_op() {
    let p = open(GOOD, "");
    assert_eq!(validate(&p), Ok(Grant::time_ms(5000)));
    let terms = terms();
    let other = Request {
        buyer: [1; 32],
        seller: SELLER,
        terms: &terms,
    };
    assert_eq!(p.validate(&other, 0), Err("not on the list".into()));
    let d = p.describe_verifier().unwrap();
    assert_eq!(
        (d.methods, d.currencies),
        (vec!["Allow".into()], vec!["EUR".into()])
    );
    assert_eq!(
        p.user_message(&other, "ping", r#"{"a":1}"#),
        Ok(Some(("echo".into(), r#"{"a":1}"#.into())))
    );
    // The host's question is answered from `describe`, not passed on as a message.
    let (name, body) = p
        .user_message(&other, HOST_DESCRIBE_MESSAGE, "{}")
        .unwrap()
        .unwrap();
    assert_eq!(name, HOST_DESCRIBE_MESSAGE);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        serde_json::json!({"methods": ["Allow"], "currencies": ["EUR"]})
    );
    let i = p.payment_request(&other, "7").unwrap();
    assert_eq!(
        (i.amount.as_deref(), i.note.as_deref()),
        (Some("7"), Some("cash"))
    );
    assert_eq!(p.supervisor().starts(), 1);
}

/// A verifier that does not describe leaves the card method to the sell entry.
#[test]
fn no_description_no_method() {
    let p = open(
        r#"
def answer(req):
    return [{"id": req["id"], "error": "unknown op"}]
serve(answer)
"#,
        "",
    );
    let terms = terms();
    let req = Request {
        buyer: BUYER,
        seller: SELLER,
        terms: &terms,
    };
    assert_eq!(p.user_message(&req, HOST_DESCRIBE_MESSAGE, "{}"), Ok(None));
    assert_eq!(p.validate(&req, 0), Err("unknown op".into()));
}

/// Answers for ids nobody waits for are dropped: a verifier that first answers an older
/// id "valid" and then this one "refused" is refused.
#[test]
fn answers_are_matched_by_id() {
    let p = open(
        r#"
def answer(req):
    if req["op"] != "validate":
        return [{"id": req["id"], "error": "no"}]
    return [
        {"id": req["id"] + 1000, "valid": True, "grant": {"type": "free"}},
        {"id": req["id"], "valid": False, "reason": "this one"},
    ]
serve(answer)
"#,
        "",
    );
    let before = p.supervisor().stale_answers();
    assert_eq!(validate(&p), Err("this one".into()));
    assert_eq!(validate(&p), Err("this one".into()));
    assert!(p.supervisor().stale_answers() >= before + 2);
    // The process kept running: a stale answer is not a protocol error.
    assert_eq!(p.supervisor().starts(), 1);
}

/// A verifier that only ever answers the wrong id gets no grant: the call times out.
#[test]
fn a_wrong_id_never_grants() {
    let p = open(
        r#"
def answer(req):
    return [{"id": req["id"] + 1000000, "valid": True, "grant": {"type": "free"}}]
serve(answer)
"#,
        "timeout_ms = 300",
    );
    let e = validate(&p).unwrap_err();
    assert!(e.starts_with(UNAVAILABLE_PREFIX), "{e}");
    assert!(e.contains("did not answer within 300 ms"), "{e}");
}

#[test]
fn malformed_answers_fail_closed_and_keep_the_process() {
    let p = open(
        r#"
def answer(req):
    if req["op"] == "describe":
        return [{"id": req["id"], "error": "no"}]
    return [{"id": req["id"], "valid": True, "grant": {"type": "time"}}]
serve(answer)
"#,
        "",
    );
    let e = validate(&p).unwrap_err();
    assert!(e.starts_with(UNAVAILABLE_PREFIX), "{e}");
    assert!(e.contains("grant.remaining is missing"), "{e}");
    assert_eq!(p.supervisor().starts(), 1);
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Garbage on stdout is a protocol error: the call fails, the process is restarted.
#[test]
fn garbage_restarts_the_process() {
    let p = open(
        r#"
def answer(req):
    if req["op"] == "describe":
        return [{"id": req["id"], "error": "no"}]
    return ["hello, I am not JSON"]
serve(answer)
"#,
        "restart_min_ms = 50\nrestart_max_ms = 50",
    );
    let e = validate(&p).unwrap_err();
    assert!(e.contains("not a JSON object with a numeric id"), "{e}");
    wait_until("a restart", Duration::from_secs(5), || {
        let _ = validate(&p);
        p.supervisor().starts() >= 2
    });
}

/// A line longer than `max_line` fails the call and restarts the process; the reader
/// never holds more than the bound.
#[test]
fn overlong_lines_are_refused() {
    let body = r#"
def answer(req):
    if req["op"] == "describe":
        return [{"id": req["id"], "error": "no"}]
    return [json.dumps({"id": req["id"], "valid": False, "reason": "x" * 5000})]
serve(answer)
"#;
    let p = open(
        body,
        "max_line = 1024\nrestart_min_ms = 50\nrestart_max_ms = 50",
    );
    let e = validate(&p).unwrap_err();
    assert!(e.starts_with(UNAVAILABLE_PREFIX), "{e}");
    assert!(e.contains("longer than max_line (1024 bytes)"), "{e}");
    // Within the bound the same verifier is fine.
    let p = open(body, "max_line = 8192");
    let e = validate(&p).unwrap_err();
    assert!(e.starts_with("xxx"), "{e}");
    assert_eq!(e.len(), protocol::MAX_REASON);
}

/// A verifier that stops answering is hung: the call times out, the process is killed
/// and a new one is started after the backoff.
#[test]
fn a_hung_verifier_times_out_and_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let hang = dir.path().join("hang");
    std::fs::write(&hang, "").unwrap();
    let config = config(
        r#"
hang = os.path.exists(os.environ["HANG_FILE"])
def answer(req):
    if hang and req["op"] == "validate":
        time.sleep(3600)
    return [{"id": req["id"], "valid": True, "grant": {"type": "free"}}]
serve(answer)
"#,
        &format!(
            "timeout_ms = 300\nrestart_min_ms = 100\nrestart_max_ms = 100\n[env]\nHANG_FILE = {}",
            toml_str(hang.to_str().unwrap())
        ),
    );
    let p = ExecPlugin::open(&config).unwrap();
    let first = p.supervisor().pid().unwrap();
    let t = Instant::now();
    let e = validate(&p).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(e.contains("did not answer within 300 ms"), "{e}");
    // Killed: no such process any more (reaped on the next call).
    let e = validate(&p).unwrap_err();
    assert!(e.contains("restarting"), "{e}");
    assert!(!std::path::Path::new(&format!("/proc/{first}")).exists());
    // Once the verifier stops hanging, the restarted one answers.
    std::fs::remove_file(&hang).unwrap();
    wait_until("a restarted verifier", Duration::from_secs(5), || {
        validate(&p) == Ok(Grant::free())
    });
    assert_ne!(p.supervisor().pid(), Some(first));
}

/// `kill -9` of the verifier: calls fail closed until the backoff has passed, then a new
/// process validates again.
#[test]
fn a_killed_verifier_is_restarted_with_backoff() {
    let p = open(GOOD, "restart_min_ms = 600\nrestart_max_ms = 600");
    assert_eq!(validate(&p), Ok(Grant::time_ms(5000)));
    let pid = p.supervisor().pid().unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    let killed = Instant::now();
    wait_until("the refusal", Duration::from_secs(5), || {
        validate(&p).is_err()
    });
    let e = validate(&p).unwrap_err();
    assert!(e.starts_with(UNAVAILABLE_PREFIX), "{e}");
    assert!(e.contains("restarting"), "{e}");
    wait_until("the restart", Duration::from_secs(5), || {
        validate(&p).is_ok()
    });
    // Jittered down to half of 600 ms at most.
    assert!(
        killed.elapsed() >= Duration::from_millis(290),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(p.supervisor().starts(), 2);
    assert_ne!(p.supervisor().pid(), Some(pid));
}

/// Backoff grows while a verifier keeps dying at once; every wait is capped.
#[test]
fn a_crashing_verifier_backs_off() {
    let p = ExecPlugin::open(
        "command = [\"python3\", \"-c\", \"import sys; sys.exit(3)\"]\nrestart_min_ms = 50\nrestart_max_ms = 400"
    )
    .unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        let e = validate(&p).unwrap_err();
        assert!(e.starts_with(UNAVAILABLE_PREFIX), "{e}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let starts = p.supervisor().starts();
    // Unbounded restarts would be ~150 here; with waits of 25..50, 50..100, 100..200,
    // then 200..400 ms, at most about a dozen.
    assert!((2..=14).contains(&starts), "{starts} starts");
}

#[test]
fn config_is_checked_and_secrets_stay_out_of_errors() {
    assert!(ExecPlugin::check_config("command = [\"true\"]").is_ok());
    for (bad, says) in [
        ("", "command"),
        ("command = []", "command must name a program"),
        ("command = [\"\"]", "command must name a program"),
        ("command = [\"x\"]\ntimeout_ms = 0", "timeout_ms"),
        ("command = [\"x\"]\ntimeout_ms = 60001", "timeout_ms"),
        ("command = [\"x\"]\nmax_line = 10", "max_line"),
        ("command = [\"x\"]\nmax_pending = 0", "max_pending"),
        (
            "command = [\"x\"]\nrestart_min_ms = 10\nrestart_max_ms = 5",
            "restart_min_ms",
        ),
        ("command = [\"x\"]\nlog_level = \"loud\"", "log_level"),
        ("command = [\"x\"]\ncomand = 1", "comand"),
    ] {
        let e = ExecPlugin::check_config(bad).unwrap_err();
        assert!(e.starts_with("exec config: "), "{e}");
        assert!(e.contains(says), "{bad}: {e}");
    }
    let marker = "SECRET-MARKER-31337";
    for text in [
        format!("command = [\"x\", \"{marker}\"]\ntimeout_ms = \"{marker}\""),
        format!("command = [\"x\"]\nmax_line = \"{marker}\"\n[env]\nK = \"{marker}\""),
        format!("command = \"{marker}\""),
    ] {
        let e = ExecPlugin::check_config(&text).unwrap_err();
        assert!(!e.contains(marker), "{e}");
    }
    // A program that does not exist: open fails, without the arguments.
    let e = ExecPlugin::open(&format!(
        "command = [\"/nonexistent/verifier\", \"{marker}\"]\n[env]\nK = \"{marker}\""
    ))
    .unwrap_err();
    assert!(e.contains("cannot start the verifier command"), "{e}");
    assert!(!e.contains(marker), "{e}");
    // A verifier that dies: its call errors carry no argument either.
    let p = ExecPlugin::open(&format!(
        "command = [\"python3\", \"-c\", \"import sys; sys.exit(1)\", \"{marker}\"]"
    ))
    .unwrap();
    for _ in 0..3 {
        let e = validate(&p).unwrap_err();
        assert!(!e.contains(marker), "{e}");
    }
}

/// More calls waiting than `max_pending` fail at once instead of queueing.
#[test]
fn waiting_calls_are_bounded() {
    let p = Arc::new(open(
        r#"
def answer(req):
    if req["op"] == "validate":
        time.sleep(0.5)
    return [{"id": req["id"], "valid": True, "grant": {"type": "free"}}]
serve(answer)
"#,
        "max_pending = 2\ntimeout_ms = 5000",
    ));
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let p = Arc::clone(&p);
            std::thread::spawn(move || validate(&p))
        })
        .collect();
    let results: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let busy = results
        .iter()
        .filter(|r| {
            r.as_ref()
                .is_err_and(|e| e.contains("calls waiting already"))
        })
        .count();
    assert!(busy >= 1, "{results:?}");
    assert!(
        results.iter().any(|r| *r == Ok(Grant::free())),
        "{results:?}"
    );
}

use std::sync::Arc;

/// A verifier slower to start than `timeout_ms` is not taken as hung within
/// `start_timeout_ms`: its first calls fail, then it answers, never restarted.
#[test]
fn a_slow_start_is_not_a_hang() {
    let body = r#"
time.sleep(1.0)
def answer(req):
    return [{"id": req["id"], "valid": True, "grant": {"type": "free"}}]
serve(answer)
"#;
    let p = open(body, "timeout_ms = 200\nstart_timeout_ms = 8000");
    wait_until("the verifier to answer", Duration::from_secs(8), || {
        validate(&p) == Ok(Grant::free())
    });
    assert_eq!(p.supervisor().starts(), 1);
    // Without the grace, the same start is a hang: killed and restarted.
    let p = open(
        body,
        "timeout_ms = 200\nstart_timeout_ms = 0\nrestart_min_ms = 50\nrestart_max_ms = 50",
    );
    let e = validate(&p).unwrap_err();
    assert!(
        e.contains("restarting") || e.contains("did not answer"),
        "{e}"
    );
    assert!(p.supervisor().pid().is_none() || p.supervisor().starts() >= 2);
}
