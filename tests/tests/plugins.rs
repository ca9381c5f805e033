//! Payment plugins: the real cdylibs built by the workspace are loaded through the ABI and
//! called; every way a plugin can be wrong gives one clear sentence, keeps the host
//! running and leaves the buyer not valid.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::payments::{
    CallLimits, GrantKind, LoadError, LoadedPlugin, OpenedVerifier, PaymentEntry, PaymentError,
    PaymentGate, PaymentTerms, PluginRegistry, UserMessage, Validation, API_VERSION,
};
use dazaar_plugin_api::{payment_memo, ApiVersion, Grant};
use dazaar_tests::{copy_plugin, plugin_library, target_dir, thread_count};

const BUYER: [u8; 32] = [0xb0; 32];

/// The tests here run one at a time: one of them counts the process's threads, which the
/// others would change by opening verifiers concurrently.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const SELLER: [u8; 32] = [0x5e; 32];

fn load(name: &str) -> Arc<LoadedPlugin> {
    let mut reg = PluginRegistry::new();
    reg.load_path(&plugin_library(name))
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

fn limits(timeout_ms: u64) -> CallLimits {
    CallLimits {
        timeout: Duration::from_millis(timeout_ms),
        workers: 1,
        queue: 4,
    }
}

fn open(name: &str, config: &str) -> Arc<OpenedVerifier> {
    load(name)
        .open(config, limits(2000))
        .unwrap_or_else(|e| panic!("open {name}: {e}"))
}

fn terms(method: &str) -> Arc<PaymentTerms> {
    Arc::new(PaymentTerms::new(method, "SATS", "1", "seconds", "1"))
}

fn gate(entries: Vec<(Arc<OpenedVerifier>, &str)>) -> PaymentGate {
    let entries = entries
        .into_iter()
        .map(|(verifier, method)| PaymentEntry {
            terms: terms(method),
            verifier,
        })
        .collect();
    PaymentGate::new(entries, Duration::from_millis(50))
}

fn assert_one_sentence(msg: &str) {
    assert!(!msg.contains('\n'), "not one line: {msg}");
    assert!(msg.len() < 300, "too long ({}): {msg}", msg.len());
}

fn invalid_reason(v: Validation) -> String {
    match v {
        Validation::Invalid { reason } => reason,
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn free_plugin_loads_by_name_and_grants_free() {
    let _serial = serial();
    let mut reg = PluginRegistry::new();
    let free = reg.load_named(&target_dir(), "free").unwrap();
    assert_eq!(free.name(), "free");
    assert_eq!(free.version(), env!("CARGO_PKG_VERSION"));
    assert_eq!(free.api_version(), API_VERSION);
    assert_eq!(free.declared_api(), dazaar_plugin_api::API_VERSION_STRING);
    assert_eq!(free.methods().collect::<Vec<_>>(), ["free"]);
    assert!(free.serves("FREE", "anything"));
    assert!(!free.serves("lightning", "SATS"));
    assert!(reg.for_entry("Free", "USD").is_some());

    let v = free.open("", limits(2000)).unwrap();
    let g = gate(vec![(v, "free")]);
    let answer = g.validate(BUYER, SELLER);
    assert_eq!(
        answer,
        Validation::Valid {
            grant: Grant::free(),
            plugin: Some("free".into())
        }
    );
    assert_eq!(answer.to_wire_json(), serde_json::json!({"type": "free"}));

    // Its own config check, through the ABI.
    let e = free
        .check_config("x = 1", Duration::from_secs(2))
        .unwrap_err();
    assert!(e.to_string().contains("takes no settings"), "{e}");
    assert!(free.open("x = 1", limits(2000)).is_err());
}

#[test]
fn no_entries_means_free() {
    let _serial = serial();
    let g = PaymentGate::new(Vec::new(), Duration::from_secs(1));
    assert_eq!(
        g.validate(BUYER, SELLER),
        Validation::Valid {
            grant: Grant::free(),
            plugin: None
        }
    );
}

#[test]
fn scanning_a_directory_loads_plugins_and_explains_refusals() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "free",
        "ledger",
        "faulty",
        "oldapi",
        "future",
        "notplugin",
        "mismatch",
    ] {
        copy_plugin(name, dir.path(), None);
    }
    copy_plugin("free", dir.path(), Some("free_copy"));
    std::fs::write(dir.path().join("libdazaar_text.so"), "not a library\n").unwrap();
    std::fs::write(
        dir.path().join("README.txt"),
        "ignored: not a library name\n",
    )
    .unwrap();

    let reg = PluginRegistry::scan_dir(dir.path()).unwrap();
    let names: Vec<_> = reg.plugins().map(|p| p.name().to_owned()).collect();
    assert_eq!(names, ["faulty", "free", "ledger", "oldapi"]);

    let failures = reg.failures();
    assert_eq!(failures.len(), 5, "{failures:?}");
    let by_file = |stem: &str| {
        let f = dazaar::payments::plugin_file_name(stem);
        failures
            .iter()
            .find(|x| x.path.file_name().is_some_and(|n| n == f.as_str()))
            .unwrap_or_else(|| panic!("no failure for {f}"))
    };
    for f in failures {
        assert_one_sentence(&f.error.to_string());
    }
    assert!(matches!(
        by_file("text").error,
        LoadError::NotALibrary { .. }
    ));
    assert!(matches!(
        by_file("notplugin").error,
        LoadError::NotAPlugin { .. }
    ));
    let future = by_file("future").error.to_string();
    assert!(matches!(
        by_file("future").error,
        LoadError::IncompatibleApi { .. }
    ));
    assert!(
        future.contains("plugin API 2.0.0") && future.contains(&format!("speaks {API_VERSION}")),
        "{future}"
    );
    match &by_file("free_copy").error {
        LoadError::Duplicate { name, .. } => assert_eq!(name, "free"),
        other => panic!("expected duplicate, got {other}"),
    }
    assert!(by_file("text")
        .error
        .to_string()
        .contains("is not a shared library"));
    assert!(by_file("notplugin")
        .error
        .to_string()
        .contains("is not a dazaar plugin"));
}

#[test]
fn missing_file_and_wrong_name() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut reg = PluginRegistry::new();
    let e = reg.load_named(dir.path(), "nothere").unwrap_err();
    assert!(matches!(e, LoadError::NotFound { .. }), "{e}");
    assert_one_sentence(&e.to_string());

    copy_plugin("faulty", dir.path(), Some("other"));
    let e = reg.load_named(dir.path(), "other").unwrap_err();
    assert!(matches!(e, LoadError::NameMismatch { .. }), "{e}");
    assert!(e.to_string().contains("calls itself `faulty`"), "{e}");
}

#[test]
fn plugin_built_against_api_1_0_loads_into_this_host() {
    let _serial = serial();
    let path = plugin_library("oldapi");

    // abi_stable's own checked loader refuses it: the host's module has a field more.
    let header = abi_stable::library::lib_header_from_path(&path).unwrap();
    let strict = header.init_root_module::<dazaar_plugin_api::PaymentPluginMod_Ref>();
    assert!(
        strict.is_err(),
        "abi_stable's checker was expected to refuse an older prefix"
    );

    let old = load("oldapi");
    assert_eq!(old.api_version(), ApiVersion { major: 1, minor: 0 });
    assert_eq!(old.declared_api(), "1.0.0");
    assert!(!old.has_check_config());
    let e = old.check_config("", Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, PaymentError::MissingFunction { .. }));
    assert_eq!(
        e.to_string(),
        "plugin `oldapi` (built against API 1.0.0) has no `check_config`, which API 1.1 added"
    );

    let v = old.open("", limits(2000)).unwrap();
    let g = gate(vec![(v, "old")]);
    assert_eq!(
        g.validate(BUYER, SELLER),
        Validation::Valid {
            grant: Grant::time_ms(1234),
            plugin: Some("oldapi".into())
        }
    );
}

#[test]
fn plugin_error_makes_the_buyer_invalid() {
    let _serial = serial();
    let g = gate(vec![(open("faulty", "mode = \"error\""), "faulty")]);
    let reason = invalid_reason(g.validate(BUYER, SELLER));
    assert_eq!(reason, "faulty: the faulty plugin refuses on purpose");
    assert_eq!(
        Validation::Invalid { reason }.to_wire_json(),
        serde_json::json!({"error": "faulty: the faulty plugin refuses on purpose"})
    );
}

#[test]
fn plugin_panic_makes_the_buyer_invalid_and_the_host_carries_on() {
    let _serial = serial();
    let faulty = open("faulty", "mode = \"panic\"");
    let g = gate(vec![(Arc::clone(&faulty), "faulty")]);
    for _ in 0..3 {
        let reason = g.validate_uncached(BUYER, SELLER, 0);
        let reason = invalid_reason(reason);
        assert!(reason.contains("plugin panicked in validate"), "{reason}");
        assert!(
            reason.contains("faulty plugin panics on purpose"),
            "{reason}"
        );
    }
    // The same plugin's other entry points panic too; still only errors.
    let t = terms("faulty");
    let e = faulty.payment_request(BUYER, SELLER, &t, "5").unwrap_err();
    assert!(e.to_string().contains("panicked in payment_request"), "{e}");
    // And other plugins still work.
    let free = gate(vec![(open("free", ""), "free")]);
    assert!(free.validate(BUYER, SELLER).is_valid());
}

#[test]
fn panic_or_error_while_opening_is_an_error() {
    let _serial = serial();
    let faulty = load("faulty");
    let e = faulty
        .open("mode = \"panic-open\"", limits(2000))
        .unwrap_err();
    assert!(e.to_string().contains("panicked in open"), "{e}");
    let e = faulty
        .open("mode = \"error-open\"", limits(2000))
        .unwrap_err();
    assert_eq!(e.to_string(), "faulty: faulty plugin cannot open");
    let e = faulty
        .check_config("mode = \"sideways\"", Duration::from_secs(2))
        .unwrap_err();
    assert_eq!(e.to_string(), "faulty: unknown mode \"sideways\"");
}

#[test]
fn hung_plugin_times_out_with_bounded_threads() {
    let _serial = serial();
    let limits = CallLimits {
        timeout: Duration::from_millis(150),
        workers: 2,
        queue: 2,
    };
    let hung = load("faulty").open("mode = \"hang\"", limits).unwrap();
    let g = PaymentGate::new(
        vec![PaymentEntry {
            terms: terms("faulty"),
            verifier: hung,
        }],
        Duration::from_millis(1),
    );
    // A thread names itself once it runs, and the pools of earlier tests (dropped) wind
    // down on their own: wait until exactly this pool's two threads are there.
    let named_by = Instant::now() + Duration::from_secs(5);
    let mut before = thread_count("plugin-");
    while before.is_some_and(|n| n != 2) && Instant::now() < named_by {
        std::thread::sleep(Duration::from_millis(5));
        before = thread_count("plugin-");
    }
    let start = Instant::now();
    let mut reasons = Vec::new();
    for i in 0..12u8 {
        let mut buyer = BUYER;
        buyer[0] = i;
        reasons.push(invalid_reason(g.validate(buyer, SELLER)));
    }
    let elapsed = start.elapsed();
    // Each call waits at most the timeout; once the threads are stuck and the queue is
    // full, calls fail at once.
    assert!(
        elapsed < Duration::from_millis(150 * 12),
        "took {elapsed:?}"
    );
    assert_eq!(reasons[0], "faulty: no answer within 150 ms");
    assert!(
        reasons.iter().any(|r| r.contains("too many calls waiting")),
        "{reasons:?}"
    );
    if let (Some(b), Some(a)) = (before, thread_count("plugin-")) {
        assert_eq!(b, 2, "plugin threads other than the pool's two");
        assert!(a <= b, "threads grew from {b} to {a} while the plugin hung");
    }
    // The host is fine: another plugin answers.
    assert!(gate(vec![(open("free", ""), "free")])
        .validate(BUYER, SELLER)
        .is_valid());
}

#[test]
fn several_entries_first_success_wins_else_last_error() {
    let _serial = serial();
    let erring = open("faulty", "mode = \"error\"");
    let panicking = open("faulty", "mode = \"panic\"");
    let free = open("free", "");

    let g = gate(vec![
        (Arc::clone(&erring), "faulty"),
        (Arc::clone(&free), "free"),
    ]);
    assert_eq!(
        g.validate(BUYER, SELLER),
        Validation::Valid {
            grant: Grant::free(),
            plugin: Some("free".into())
        }
    );

    let g = gate(vec![(erring, "faulty"), (panicking, "faulty")]);
    let reason = invalid_reason(g.validate(BUYER, SELLER));
    assert!(
        reason.contains("panicked"),
        "last error expected, got {reason}"
    );
}

#[test]
fn user_messages_are_routed_to_the_sellers_plugin() {
    let _serial = serial();
    let g = gate(vec![
        (open("free", ""), "free"),
        (open("faulty", "mode = \"ok\""), "faulty"),
    ]);
    let ping = UserMessage {
        name: "faulty-ping".into(),
        message: "{}".into(),
    };
    let reply = g.user_message(BUYER, SELLER, &ping).unwrap().unwrap();
    assert_eq!(reply.name.as_str(), "faulty-pong");
    let other = UserMessage {
        name: "lnd-pay-request".into(),
        message: "{\"amount\":1}".into(),
    };
    assert_eq!(g.user_message(BUYER, SELLER, &other).unwrap(), None);

    let g = gate(vec![(open("faulty", "mode = \"error\""), "faulty")]);
    assert!(g.user_message(BUYER, SELLER, &ping).is_err());
}

#[test]
fn ledger_payment_added_while_selling_becomes_valid() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.jsonl");
    let config = format!("file = {:?}\nreload_ms = 0\n", file.display().to_string());
    let ledger = open("ledger", &config);
    // 1 unit buys 1 second.
    let entry = PaymentEntry {
        terms: terms("ledger"),
        verifier: Arc::clone(&ledger),
    };
    let g = PaymentGate::new(vec![entry], Duration::from_millis(20));

    let reason = invalid_reason(g.validate(BUYER, SELLER));
    assert_eq!(reason, "ledger: no payment recorded for this buyer");

    let now = dazaar::payments::now_ms();
    let line = format!(
        "{{\"buyer\":\"{}\",\"amount\":60,\"time\":{now}}}\n",
        hex::encode(BUYER)
    );
    std::fs::write(&file, line).unwrap();
    std::thread::sleep(Duration::from_millis(30)); // let the cached "no" expire

    match g.validate(BUYER, SELLER) {
        Validation::Valid { grant, plugin } => {
            assert_eq!(plugin.as_deref(), Some("ledger"));
            assert_eq!(grant.kind, GrantKind::TIME);
            assert!((55_000..=60_000).contains(&grant.remaining), "{grant:?}");
        }
        other => panic!("expected valid, got {other:?}"),
    }
    // Another buyer is still not valid.
    assert!(!g.validate([1; 32], SELLER).is_valid());

    // An unknown unit on the card is a clear error, not access.
    let bad = Arc::new(PaymentTerms::new("ledger", "SATS", "1", "days", "1"));
    let e = ledger.validate(BUYER, SELLER, &bad, now).unwrap_err();
    assert!(e.to_string().contains("unknown time unit \"days\""), "{e}");

    // Buyer side: how to pay, bound to this buyer by the memo.
    let how = ledger
        .payment_request(BUYER, SELLER, &terms("ledger"), "60")
        .unwrap();
    assert_eq!(
        how.memo.as_deref(),
        Some(payment_memo(&SELLER, &BUYER).as_str())
    );
    assert_eq!(how.amount.as_deref(), Some("60"));
}

#[test]
fn cli_lists_plugins_and_refusals() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    copy_plugin("free", dir.path(), None);
    copy_plugin("oldapi", dir.path(), None);
    copy_plugin("future", dir.path(), None);
    let out = std::process::Command::new(dazaar_tests::dazaar_binary())
        .args(["plugins", "list", "--json", "--plugin-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(
        names,
        [serde_json::json!("free"), serde_json::json!("oldapi")]
    );
    assert_eq!(v["plugins"][0]["api"], API_VERSION.to_string());
    assert_eq!(v["plugins"][0]["methods"], serde_json::json!(["free"]));
    assert_eq!(v["plugins"][1]["api"], "1.0");
    let refused = v["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1);
    assert!(refused[0]["error"]
        .as_str()
        .unwrap()
        .contains("plugin API 2.0.0"));

    // `plugins check` on a refused file: exit 1, one line on stderr.
    let out = std::process::Command::new(dazaar_tests::dazaar_binary())
        .args(["plugins", "check"])
        .arg(
            dir.path()
                .join(dazaar::payments::plugin_file_name("future")),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("dazaar: ") && err.contains("built against plugin API 2.0.0"),
        "{err}"
    );
}

#[test]
fn cli_ledger_add_is_read_by_the_ledger_plugin() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.jsonl");
    let now = dazaar::payments::now_ms();
    let out = std::process::Command::new(dazaar_tests::dazaar_binary())
        .args([
            "ledger",
            "add",
            "--buyer",
            &hex::encode(BUYER),
            "--amount",
            "30",
        ])
        .args(["--time", &now.to_string(), "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ledger = open(
        "ledger",
        &format!("file = {:?}\n", file.display().to_string()),
    );
    let grant = ledger
        .validate(BUYER, SELLER, &terms("ledger"), now)
        .unwrap();
    assert_eq!(grant, Grant::time_ms(30_000));

    let out = std::process::Command::new(dazaar_tests::dazaar_binary())
        .args([
            "ledger", "add", "--buyer", "nothex", "--amount", "30", "--file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn config_to_gate_end_to_end() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    copy_plugin("ledger", &plugins, None);
    copy_plugin("free", &plugins, None);
    let ledger_file = dir.path().join("ledger.jsonl");
    let now = dazaar::payments::now_ms();
    std::fs::write(
        &ledger_file,
        format!(
            "{{\"buyer\":\"{}\",\"amount\":\"2\",\"time\":{now}}}\n",
            hex::encode(BUYER)
        ),
    )
    .unwrap();
    let text = format!(
        r#"plugin_dir = "plugins"
[[sell]]
feed = "feed"
name = "paid"
revalidate_ms = 250
[[sell.payment]]
plugin = "ledger"
currency = "EUR"
amount = 1
unit = "minutes"
interval = 1
[sell.payment.config]
file = {:?}

[[sell]]
feed = "feed2"
name = "oops"
[[sell.payment]]
plugin = "free"
method = "lightning"
currency = "SATS"
amount = 1
unit = "seconds"
interval = 1
"#,
        ledger_file.display().to_string()
    );
    let file = dir.path().join("dazaar.toml");
    let settings = dazaar::config::parse(&text, &file).unwrap();
    let mut reg = PluginRegistry::new();
    let gate = settings
        .payment_gate(&settings.sell[0], &mut reg, limits(2000))
        .unwrap();
    assert_eq!(gate.entries()[0].terms.method.as_str(), "ledger");
    match gate.validate(BUYER, SELLER) {
        // 2 EUR at 1 EUR/minute: two minutes.
        Validation::Valid { grant, .. } => {
            assert!((119_000..=120_000).contains(&grant.remaining), "{grant:?}")
        }
        other => panic!("expected valid, got {other:?}"),
    }
    assert!(gate.cached(BUYER, SELLER).is_some());
    assert!(gate.cached([3; 32], SELLER).is_none());

    let e = settings
        .payment_gate(&settings.sell[1], &mut reg, limits(2000))
        .unwrap_err();
    assert_eq!(e.line(), 18);
    assert!(
        e.to_string()
            .ends_with("plugin `free`: does not serve method `lightning` with currency `SATS`"),
        "{e}"
    );
}

#[test]
fn buyer_wallet_picks_a_plugin_for_the_card_and_asks_how_to_pay() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    copy_plugin("ledger", dir.path(), None);
    copy_plugin("free", dir.path(), None);
    let text = format!(
        "plugin_dir = {:?}\n[buy]\n[[buy.payment]]\nplugin = \"free\"\n[[buy.payment]]\nplugin = \"ledger\"\n[buy.payment.config]\nfile = \"unused.jsonl\"\n",
        dir.path().display().to_string()
    );
    let settings = dazaar::config::parse(&text, &dir.path().join("dazaar.toml")).unwrap();
    let mut reg = PluginRegistry::new();
    let wallet = settings.buyer_wallet(&mut reg, limits(2000)).unwrap();

    let card: serde_json::Value = serde_json::json!([
        {"method": "Lightning", "currency": "SATS", "amount": 100, "unit": "hours", "interval": 1},
        {"method": "ledger", "currency": "EUR", "amount": "5", "unit": "minutes", "interval": 1,
         "payTo": "IBAN XX00"}
    ]);
    let entries = card.as_array().unwrap();
    let (choice, how) = wallet
        .payment_request(BUYER, SELLER, entries, None)
        .unwrap();
    assert_eq!(choice.verifier.plugin().name(), "ledger");
    assert_eq!(choice.terms.method.as_str(), "ledger");
    assert_eq!(
        how.memo.as_deref(),
        Some(payment_memo(&SELLER, &BUYER).as_str())
    );
    assert_eq!(how.amount.as_deref(), Some("5"));
    assert_eq!(how.currency.as_deref(), Some("EUR"));
    assert_eq!(how.pay_to.as_deref(), Some("IBAN XX00"));

    let lightning_only = &entries[..1];
    let e = wallet
        .payment_request(BUYER, SELLER, lightning_only, Some("10"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "no payment plugin serves method `Lightning` with currency `SATS`"
    );
}

#[test]
fn cli_lists_the_payment_plugins_with_methods_and_currencies() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    for name in ["fiat_stripe", "eos", "lnd"] {
        copy_plugin(name, dir.path(), None);
    }
    let out = std::process::Command::new(dazaar_tests::dazaar_binary())
        .args(["plugins", "list", "--json", "--plugin-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let plugins = v["plugins"].as_array().unwrap();
    let find = |n: &str| {
        plugins
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed: {v}"))
    };
    assert_eq!(find("eos")["methods"], serde_json::json!(["eos"]));
    assert_eq!(
        find("eos")["currencies"],
        serde_json::json!(["EOS", "EOS Testnet"])
    );
    assert_eq!(
        find("lnd")["methods"],
        serde_json::json!(["lightning", "ln"])
    );
    assert_eq!(
        find("lnd")["currencies"],
        serde_json::json!(["SATS", "BTC", "LightningSats", "LightningBTC"])
    );
    assert_eq!(
        find("fiat_stripe")["methods"],
        serde_json::json!(["stripe", "card", "fiat"])
    );
    assert!(find("fiat_stripe")["currencies"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("USD")));
    assert!(v["refused"].as_array().unwrap().is_empty(), "{v}");
}
