//! The seller's state database through the CLI: `dazaar ledger add|list|import` and
//! `dazaar revoke` against the SQLite state in a data directory.

use std::process::Stdio;

use dazaar_tests::proc::{dazaar, dazaar_cmd, s};

/// Twenty `dazaar ledger add` processes started at once keep twenty payments: each is one
/// transaction (the ledger file of earlier versions was appended without a lock).
#[test]
fn concurrent_ledger_adds_keep_every_payment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let children: Vec<_> = (0..20u8)
        .map(|i| {
            dazaar_cmd(&[
                "--data-dir",
                s(&data),
                "ledger",
                "add",
                "--buyer",
                &hex::encode([i; 32]),
                "--amount",
                "2.5",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert!(line["id"].as_i64().is_some_and(|id| id > 0), "{line}");
    }
    let list = dazaar(&["--data-dir", s(&data), "ledger", "list", "--json"]);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 20);
    let mut buyers: Vec<&str> = lines.iter().filter_map(|l| l["buyer"].as_str()).collect();
    buyers.sort_unstable();
    buyers.dedup();
    assert_eq!(buyers.len(), 20);
    assert!(lines.iter().all(|l| l["amount"] == 2.5));
    // One buyer's only.
    let one = dazaar(&[
        "--data-dir",
        s(&data),
        "ledger",
        "list",
        "--json",
        "--buyer",
        &hex::encode([3u8; 32]),
    ]);
    assert_eq!(String::from_utf8_lossy(&one.stdout).lines().count(), 1);
    // Bad input is one clear line, and nothing is written.
    let bad = dazaar(&[
        "--data-dir",
        s(&data),
        "ledger",
        "add",
        "--buyer",
        "zz",
        "--amount",
        "1",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--buyer is not hex"));
    let bad = dazaar(&[
        "--data-dir",
        s(&data),
        "ledger",
        "add",
        "--buyer",
        &hex::encode([1u8; 32]),
        "--amount",
        "-3",
    ]);
    assert!(!bad.status.success());
    let list = dazaar(&["--data-dir", s(&data), "ledger", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 20);
}

/// A ledger file of earlier versions is imported once.
#[test]
fn a_ledger_file_is_imported_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let file = dir.path().join("ledger.jsonl");
    let add = dazaar(&[
        "ledger",
        "add",
        "--file",
        s(&file),
        "--buyer",
        &hex::encode([7u8; 32]),
        "--amount",
        "4",
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    for expected in [1, 0] {
        let out = dazaar(&[
            "--data-dir",
            s(&data),
            "ledger",
            "import",
            "--file",
            s(&file),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["payments"], expected);
    }
    let list = dazaar(&["--data-dir", s(&data), "ledger", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 1);
}
