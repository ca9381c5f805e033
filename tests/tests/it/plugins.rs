//! Payment plugins: the real cdylibs built by the workspace are loaded through the ABI and
//! called; every way a plugin can be wrong gives one clear sentence, keeps the host
//! running and leaves the buyer not valid.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dazaar::payments::{
    Admission, CallLimits, GateLimits, GrantKind, LoadError, MessageRefusal, OpenedVerifier,
    PaymentEntry, PaymentError, PaymentGate, PaymentTerms, PluginRegistry, RateLimit, UserMessage,
    Validation, API_VERSION, PUBLIC_BUSY, PUBLIC_UNAVAILABLE,
};
use dazaar_plugin_api::{payment_memo, ApiVersion, Grant};
use dazaar_tests::{copy_plugin, plugin_library, target_dir, thread_count};

use crate::support::{self, load, BUYER, SELLER};

/// The tests here run one at a time, and not while another module's test opens the
/// faulty fixture: one of them counts the fixture's threads, which the others would
/// change by opening verifiers concurrently.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    support::faulty_plugin_lock()
}

fn limits(timeout_ms: u64) -> CallLimits {
    support::limits(Duration::from_millis(timeout_ms), 1, 4)
}

fn open(name: &str, config: &str) -> Arc<OpenedVerifier> {
    support::open(name, config, limits(2000))
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
        // The peer gets the public text; the panic is the plugin's error, for the log.
        let reason = g.validate_uncached(BUYER, SELLER, 0);
        assert_eq!(invalid_reason(reason), PUBLIC_UNAVAILABLE);
        let e = faulty
            .validate(BUYER, SELLER, &terms("faulty"), 0)
            .unwrap_err();
        assert!(matches!(e, PaymentError::Panicked { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("plugin panicked in validate"), "{e}");
        assert!(e.contains("faulty plugin panics on purpose"), "{e}");
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
    // down on their own: wait until exactly this pool's two threads are there. Only the
    // faulty fixture's threads count: other modules' tests, running meanwhile in this
    // process, have pools of other plugins (and no test opens this one meanwhile:
    // `serial`).
    const THREADS: &str = "plugin-faulty-";
    let before = dazaar_tests::poll_until(Duration::from_secs(5), || {
        thread_count(THREADS).filter(|n| *n == 2)
    })
    .or_else(|| thread_count(THREADS));
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
    // Timed out, then shed: both only the public texts for the peer.
    assert_eq!(reasons[0], PUBLIC_UNAVAILABLE);
    assert!(reasons.iter().any(|r| r == PUBLIC_BUSY), "{reasons:?}");
    if let (Some(b), Some(a)) = (before, thread_count(THREADS)) {
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
    // The last entry's answer: its panic, told to the peer as the public text.
    let reason = invalid_reason(g.validate(BUYER, SELLER));
    assert_eq!(reason, PUBLIC_UNAVAILABLE, "last error expected");
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
    // The gate's cached "no" expires after 20 ms by its own clock (`validate` reads the
    // time itself): waiting it out is the behaviour under test.
    std::thread::sleep(Duration::from_millis(30));

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
    assert!(e.to_string().contains("unknown unit \"days\""), "{e}");

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
    let entries: Vec<PaymentTerms> = card
        .as_array()
        .unwrap()
        .iter()
        .map(|e| dazaar::card::terms_from_card(e).unwrap())
        .collect();
    let (choice, how) = wallet
        .payment_request(BUYER, SELLER, &entries, None)
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
        serde_json::json!(["lnd", "lightning", "ln"])
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

// ---- Hostile peers: strangers cannot starve the buyers who pay (issue 12, items 4 and 7).

/// A stranger's key (never starts with 0xb0, the byte the `picky` fixture grants).
fn stranger(i: u32) -> [u8; 32] {
    let mut key = [0x01; 32];
    key[1..5].copy_from_slice(&i.to_be_bytes());
    key
}

/// A peer address for the gate's per-IP limits (only a map key: no traffic).
fn ip(i: u32) -> Option<std::net::IpAddr> {
    Some(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
        0x0a00_0000 + i,
    )))
}

/// The faulty fixture in `picky` mode: grants BUYER at once, refuses strangers (after the
/// `hold` file exists, if given).
fn picky(hold: Option<&std::path::Path>, limits: CallLimits) -> Arc<OpenedVerifier> {
    let mut config = "mode = \"picky\"\n".to_owned();
    if let Some(hold) = hold {
        config.push_str(&format!("hold = {:?}\n", hold.display().to_string()));
    }
    load("faulty").open(&config, limits).unwrap()
}

fn entry(verifier: &Arc<OpenedVerifier>) -> PaymentEntry {
    PaymentEntry {
        terms: terms("faulty"),
        verifier: Arc::clone(verifier),
    }
}

fn ping() -> UserMessage {
    UserMessage {
        name: "faulty-ping".into(),
        message: "{}".into(),
    }
}

const PICKY_REFUSAL: &str = "faulty: no payment recorded for this buyer";

/// Waits (bounded) until `cond` holds: the pool reports through its counters.
async fn until(what: &str, cond: impl Fn() -> bool) {
    dazaar_tests::wait_until_async(Duration::from_secs(20), what, cond).await;
}

// The serial guard spans the whole test on purpose (other tests count threads).
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paying_buyer_is_answered_while_strangers_flood_the_gate() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("release");
    // Two threads: one kept for buyers that were valid, one for both lanes. The
    // strangers' queue is 4 / 4 = 1 call.
    let limits = CallLimits {
        timeout: Duration::from_secs(5),
        workers: 2,
        queue: 4,
    };
    let v = picky(Some(&hold), limits);
    // No admission limits here: this is about the pool's lanes alone.
    let gate = Arc::new(PaymentGate::with_limits(
        vec![entry(&v)],
        Duration::from_millis(50),
        GateLimits::unlimited(),
    ));
    let t0 = Instant::now();
    assert!(gate.check(BUYER, SELLER, ip(0), true, t0).await.is_valid());
    assert_eq!(v.calls_made(), 1);

    // The first stranger takes the shared thread and stays in the plugin.
    let mut checks = Vec::new();
    let spawn_check = |i: u32| {
        let g = Arc::clone(&gate);
        tokio::spawn(async move { g.check(stranger(i), SELLER, ip(i), true, t0).await })
    };
    checks.push(spawn_check(0));
    until("a stranger's call holds the shared thread", || {
        v.calls_made() == 2
    })
    .await;
    // 999 more strangers' first checks and 1,000 user messages at once.
    for i in 1..1000 {
        checks.push(spawn_check(i));
    }
    let mut messages = Vec::new();
    for i in 0..1000u32 {
        let g = Arc::clone(&gate);
        messages.push(tokio::spawn(async move {
            let mut budget = g.message_budget();
            let key = stranger(10_000 + i);
            g.answer_message(key, SELLER, ip(i), &mut budget, &ping(), t0)
                .await
        }));
    }
    // One waits in the strangers' queue; the other 1,998 are shed at once (counted
    // exactly below: here, enough for the pool to be full either way).
    until("the flood is shed", || v.calls_shed() >= 1997).await;

    // The paying buyer reconnects (a fresh check: a plugin call), during the flood.
    let answer = gate
        .check(BUYER, SELLER, ip(0), true, t0 + Duration::from_millis(100))
        .await;
    assert_eq!(
        answer,
        Validation::Valid {
            grant: Grant::time_ms(10_000),
            plugin: Some("faulty".into())
        }
    );
    assert_eq!(v.calls_made(), 3);
    assert_eq!(v.calls_shed(), 1998);

    std::fs::write(&hold, b"").unwrap();
    let (mut refused, mut busy, mut answered) = (0, 0, 0);
    for c in checks {
        match c.await.unwrap() {
            Validation::Invalid { reason } if reason == PICKY_REFUSAL => refused += 1,
            Validation::Invalid { reason } if reason == PUBLIC_BUSY => busy += 1,
            other => panic!("unexpected answer for a stranger: {other:?}"),
        }
    }
    for m in messages {
        match m.await.unwrap() {
            Ok(Some(reply)) if reply.name.as_str() == "faulty-pong" => answered += 1,
            Err(MessageRefusal::Busy) => busy += 1,
            other => panic!("unexpected answer to a stranger's message: {other:?}"),
        }
    }
    // The held stranger and the queued one were answered; everyone else was shed.
    assert!(refused >= 1, "the held stranger's check was answered");
    assert_eq!((refused + answered, busy), (2, 1998));
    assert_eq!(v.calls_made(), 4);
}

/// `admit` answers without a call whatever it can (a stranger not admitted, a refusal
/// reused, a fresh answer), so a seller can skip its own reads for them; `ask` makes the
/// admitted calls.
// The serial guard spans the whole test on purpose (other tests count threads).
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn admit_answers_without_a_call_and_ask_makes_the_admitted_ones() {
    let _serial = serial();
    let v = picky(None, limits(2000));
    let mut limits = GateLimits::default();
    limits.checks_global = RateLimit::new(1, Duration::from_secs(60));
    let gate = PaymentGate::with_limits(vec![entry(&v)], Duration::from_secs(1), limits);
    let t0 = Instant::now();
    let now_ms = dazaar::payments::Now::system().unix_ms;
    let answered = |a: Admission| match a {
        Admission::Answered(v) => v,
        Admission::Call(c) => panic!("expected an answer without a call, got {c:?}"),
    };
    // The global bucket holds one check: the first stranger gets a call...
    let first = gate.admit(stranger(1), SELLER, ip(1), true, t0);
    assert!(matches!(first, Admission::Call(_)));
    // ...the second is refused as busy on the spot.
    let busy = answered(gate.admit(stranger(2), SELLER, ip(2), true, t0));
    assert_eq!(invalid_reason(busy), PUBLIC_BUSY);
    assert_eq!(v.calls_made(), 0, "admitting calls no plugin");
    assert_eq!(invalid_reason(gate.ask(first, now_ms).await), PICKY_REFUSAL);
    assert_eq!(v.calls_made(), 1);
    // The first stranger's revalidation reuses its refusal, without a call.
    let again = answered(gate.admit(stranger(1), SELLER, ip(1), false, t0));
    assert_eq!(invalid_reason(again), PICKY_REFUSAL);
    // A paying buyer is a stranger too until it was valid once: once the bucket has
    // refilled it is admitted, asked and found valid...
    let t1 = t0 + Duration::from_secs(60);
    let paid = gate.admit(BUYER, SELLER, ip(3), true, t1);
    assert!(gate.ask(paid, now_ms).await.is_valid());
    // ...and its revalidation within the period is answered from the cache.
    assert!(answered(gate.admit(BUYER, SELLER, ip(3), false, t1)).is_valid());
    assert_eq!(v.calls_made(), 2);
}

// The serial guard spans the whole test on purpose (other tests count threads).
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn admission_and_the_negative_cache_bound_plugin_calls_from_random_keys() {
    let _serial = serial();
    let v = picky(None, limits(2000));
    let mut limits = GateLimits::default();
    limits.checks_per_ip = RateLimit::new(4, Duration::from_millis(500));
    limits.checks_global = RateLimit::new(32, Duration::from_millis(100));
    limits.refused_for = Duration::from_secs(3);
    let gate = PaymentGate::with_limits(vec![entry(&v)], Duration::from_secs(1), limits);
    let t0 = Instant::now();
    let count = |answers: Vec<Validation>| {
        let (mut refused, mut busy) = (0, 0);
        for a in answers {
            match invalid_reason(a).as_str() {
                PICKY_REFUSAL => refused += 1,
                PUBLIC_BUSY => busy += 1,
                other => panic!("unexpected reason {other}"),
            }
        }
        (refused, busy)
    };

    // 1,000 random keys from 100 IPs at once: the global burst is all they get.
    let mut answers = Vec::new();
    for i in 0..1000 {
        answers.push(gate.check(stranger(i), SELLER, ip(i % 100), true, t0).await);
    }
    assert_eq!(count(answers), (32, 968));
    assert_eq!(v.calls_made(), 32);

    // A second later the global bucket has earned ten more.
    let t1 = t0 + Duration::from_secs(1);
    let mut answers = Vec::new();
    for i in 1000..1100 {
        answers.push(gate.check(stranger(i), SELLER, ip(i), true, t1).await);
    }
    assert_eq!(count(answers), (10, 90));
    assert_eq!(v.calls_made(), 42);

    // Much later, the paying buyer becomes valid; then one IP's many keys get its burst.
    let t2 = t0 + Duration::from_secs(60);
    assert!(gate
        .check(BUYER, SELLER, ip(7777), true, t2)
        .await
        .is_valid());
    let mut answers = Vec::new();
    for i in 2000..2100 {
        answers.push(gate.check(stranger(i), SELLER, ip(5000), true, t2).await);
    }
    assert_eq!(count(answers), (4, 96));
    assert_eq!(v.calls_made(), 47);
    // The buyer that paid is not held back by that IP's empty bucket.
    assert!(gate
        .check(BUYER, SELLER, ip(5000), true, t2)
        .await
        .is_valid());
    assert_eq!(v.calls_made(), 48);

    // A refused key revalidated on its connection, soon after: its refusal again, no
    // plugin call.
    let again = gate
        .check(
            stranger(2000),
            SELLER,
            ip(5000),
            false,
            t2 + Duration::from_secs(2),
        )
        .await;
    assert_eq!(invalid_reason(again), PICKY_REFUSAL);
    assert_eq!(v.calls_made(), 48);
    assert_eq!(gate.stats().refusals_reused, 1);
    // The same key on a new connection is checked afresh at once (it may have just paid:
    // pay, then connect), within its IP's admission.
    let reconnected = gate
        .check(
            stranger(2000),
            SELLER,
            ip(5000),
            true,
            t2 + Duration::from_secs(2),
        )
        .await;
    assert_eq!(invalid_reason(reconnected), PICKY_REFUSAL);
    assert_eq!(v.calls_made(), 49);
    assert_eq!(gate.stats().refusals_reused, 1);
    // Past `refused_for` a revalidation asks the plugin again.
    let later = gate
        .check(
            stranger(2000),
            SELLER,
            ip(5000),
            false,
            t2 + Duration::from_secs(6),
        )
        .await;
    assert_eq!(invalid_reason(later), PICKY_REFUSAL);
    assert_eq!(v.calls_made(), 50);
    let stats = gate.stats();
    assert_eq!(stats.checks_refused, 968 + 90 + 96);
}

// The serial guard spans the whole test on purpose (other tests count threads).
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn user_messages_are_limited_per_connection_ip_and_plugin() {
    let _serial = serial();
    let v = picky(None, limits(2000));
    let mut limits = GateLimits::default();
    let ten_s = Duration::from_secs(10);
    limits.messages_per_connection = RateLimit::new(3, ten_s);
    limits.messages_per_ip = RateLimit::new(5, ten_s);
    limits.messages_per_plugin = RateLimit::new(8, ten_s);
    let gate = PaymentGate::with_limits(vec![entry(&v)], Duration::from_secs(1), limits);
    let t0 = Instant::now();
    let pong = |r: Result<Option<UserMessage>, MessageRefusal>| match r {
        Ok(Some(m)) => assert_eq!(m.name.as_str(), "faulty-pong"),
        other => panic!("expected a reply, got {other:?}"),
    };

    // Per connection: three, then refused.
    let mut a = gate.message_budget();
    for _ in 0..3 {
        pong(
            gate.answer_message(stranger(1), SELLER, ip(1), &mut a, &ping(), t0)
                .await,
        );
    }
    let refused = gate
        .answer_message(stranger(1), SELLER, ip(1), &mut a, &ping(), t0)
        .await;
    assert_eq!(refused, Err(MessageRefusal::TooMany));
    assert_eq!(
        MessageRefusal::TooMany.to_user_message().message.as_str(),
        r#"{"error":"too many requests, try later"}"#
    );
    // Per IP: another connection from the same address gets the IP's last two.
    let mut b = gate.message_budget();
    for _ in 0..2 {
        pong(
            gate.answer_message(stranger(2), SELLER, ip(1), &mut b, &ping(), t0)
                .await,
        );
    }
    let refused = gate
        .answer_message(stranger(2), SELLER, ip(1), &mut b, &ping(), t0)
        .await;
    assert_eq!(refused, Err(MessageRefusal::TooMany));
    // Per plugin: new connections from other addresses, until the plugin's eight.
    for i in 3..6 {
        let mut c = gate.message_budget();
        pong(
            gate.answer_message(stranger(i), SELLER, ip(i), &mut c, &ping(), t0)
                .await,
        );
    }
    let mut d = gate.message_budget();
    let refused = gate
        .answer_message(stranger(6), SELLER, ip(6), &mut d, &ping(), t0)
        .await;
    assert_eq!(refused, Err(MessageRefusal::TooMany));
    assert_eq!(v.calls_made(), 8);
    assert_eq!(gate.stats().messages_refused, 3);

    // A buyer that paid is held only by its own connection's limit.
    assert!(gate.check(BUYER, SELLER, ip(1), true, t0).await.is_valid());
    let mut e = gate.message_budget();
    for _ in 0..3 {
        pong(
            gate.answer_message(BUYER, SELLER, ip(1), &mut e, &ping(), t0)
                .await,
        );
    }
    let refused = gate
        .answer_message(BUYER, SELLER, ip(1), &mut e, &ping(), t0)
        .await;
    assert_eq!(refused, Err(MessageRefusal::TooMany));
    assert_eq!(v.calls_made(), 12);

    // Ten seconds later every bucket has earned one back.
    let t1 = t0 + ten_s;
    pong(
        gate.answer_message(stranger(1), SELLER, ip(1), &mut a, &ping(), t1)
            .await,
    );
    assert_eq!(v.calls_made(), 13);
}

// The serial guard spans the whole test on purpose (other tests count threads).
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn plugin_failures_reach_the_peer_as_a_public_text_and_the_log_in_detail() {
    let _serial = serial();
    // The process's log, recorded while this test runs (a scoped subscriber of its own
    // would hide the test's events from the process's one, which other tests read).
    let logs = dazaar_tests::capture_host_log();
    let key = stranger(7);
    let prefix = hex::encode(&key[..8]);
    for (mode, detail) in [
        (
            "unavailable",
            "HTTP 500 from http://10.9.8.7:8080/v1/secret-path",
        ),
        ("panic", "faulty plugin panics on purpose"),
    ] {
        let g = gate(vec![(
            open("faulty", &format!("mode = {mode:?}")),
            "faulty",
        )]);
        let answer = g.check(key, SELLER, ip(1), true, Instant::now()).await;
        let wire = answer.to_wire_json();
        assert_eq!(
            answer,
            Validation::Invalid {
                reason: PUBLIC_UNAVAILABLE.into()
            }
        );
        assert_eq!(wire, serde_json::json!({ "error": PUBLIC_UNAVAILABLE }));
        assert!(!wire.to_string().contains(detail), "{wire}");
        let reply = g
            .answer_message(
                key,
                SELLER,
                ip(1),
                &mut g.message_budget(),
                &ping(),
                Instant::now(),
            )
            .await;
        assert_eq!(reply, Err(MessageRefusal::Unavailable));
        assert!(!reply
            .unwrap_err()
            .to_user_message()
            .message
            .contains(detail));
        // The seller's log has the detail, the buyer's key prefix and the plugin.
        let log = logs.text();
        let line = log
            .lines()
            .find(|l| l.contains(detail) && l.contains("payment check failed"))
            .unwrap_or_else(|| panic!("no log line with {detail:?} in\n{log}"));
        assert!(line.contains(&prefix) && line.contains("faulty"), "{line}");
    }

    // A refusal's reason is for the buyer: it goes through.
    let g = gate(vec![(open("faulty", "mode = \"error\""), "faulty")]);
    let answer = g.check(key, SELLER, ip(1), true, Instant::now()).await;
    assert_eq!(
        invalid_reason(answer),
        "faulty: the faulty plugin refuses on purpose"
    );
    let reply = g
        .answer_message(
            key,
            SELLER,
            ip(1),
            &mut g.message_budget(),
            &ping(),
            Instant::now(),
        )
        .await;
    assert_eq!(
        reply,
        Err(MessageRefusal::Refused(
            "faulty: the faulty plugin refuses on purpose".into()
        ))
    );
}
