//! The built plugin (`target/<profile>/libdazaar___NAME__.so`) loaded through the host's
//! own loader by `dazaar-plugin-kit`, and called across the real ABI with virtual time.

use std::time::Duration;

use dazaar_plugin_kit::{built_plugin, run_conformance, ConformanceOptions, Grant, PluginHarness};

const LISTED: [u8; 32] = [0xab; 32];

fn config() -> String {
    format!("allow = [\"{}\"]\nseconds = 60\n", "ab".repeat(32))
}

fn harness() -> PluginHarness {
    let file = built_plugin("__NAME__").expect("the plugin library is built");
    PluginHarness::open(&file, &config()).expect("the plugin opens")
}

#[test]
fn a_listed_buyer_is_valid_with_a_time_grant() {
    let mut plugin = harness();
    assert_eq!(plugin.validate(LISTED).unwrap(), Grant::time_ms(60_000));
    // An hour later (virtual time: the test does not wait) the answer is the same.
    plugin.advance(Duration::from_secs(3600));
    assert_eq!(plugin.validate(LISTED).unwrap(), Grant::time_ms(60_000));
}

#[test]
fn another_buyer_is_refused_with_a_reason() {
    let error = harness().validate([1; 32]).unwrap_err();
    assert!(error.is_refusal(), "{error}");
    assert!(error.to_string().contains("allow list"), "{error}");
}

#[test]
fn the_plugin_passes_the_conformance_battery() {
    let file = built_plugin("__NAME__").unwrap();
    let options = ConformanceOptions {
        config: config(),
        ..ConformanceOptions::default()
    };
    let report = run_conformance(&file, &options);
    assert!(report.passed(), "{}", report.to_table());
}
