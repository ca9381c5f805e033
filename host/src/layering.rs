//! The direction of dependencies between the library's layers, checked by a test instead
//! of by crate boundaries (see the architecture notes in the README): a lower layer that
//! starts importing a higher one, or tokio, fails here.
//!
//! ```text
//! crypto, wire::varint  <-  storage  <-  wire  <-  noise  <-  protocol   (sans-IO, no tokio)
//!                       <-  card, state                                  (no network)
//! net (tokio: sockets, timers), monitor  <-  market, payments, discovery  <-  cli
//! ```

use std::path::Path;

/// Each sans-IO or leaf module, and what it must not use.
const RULES: &[(&str, &[&str])] = &[
    (
        "storage",
        &[
            "net",
            "protocol",
            "market",
            "payments",
            "discovery",
            "cli",
            "config",
            "state",
            "noise",
            "card",
            "tokio",
        ],
    ),
    (
        "wire",
        &[
            "net",
            "protocol",
            "market",
            "payments",
            "discovery",
            "cli",
            "config",
            "state",
            "noise",
            "card",
            "tokio",
        ],
    ),
    (
        "noise",
        &[
            "net",
            "protocol",
            "market",
            "payments",
            "discovery",
            "cli",
            "config",
            "state",
            "card",
            "tokio",
        ],
    ),
    (
        "protocol",
        &[
            "net",
            "market",
            "payments",
            "discovery",
            "cli",
            "config",
            "state",
            "card",
            "tokio",
        ],
    ),
    (
        "card",
        &[
            "net",
            "protocol",
            "market",
            "payments",
            "discovery",
            "cli",
            "config",
            "state",
            "tokio",
        ],
    ),
    // monitor is a driver of its own (tokio, the metrics facade): the layers record into
    // it, it imports none of them.
    (
        "monitor",
        &[
            "net",
            "protocol",
            "market",
            "payments",
            "discovery",
            "cli",
            "config",
            "state",
            "card",
            "storage",
            "wire",
            "noise",
        ],
    ),
    // state may ask tokio whether it runs on a runtime thread (the PostgreSQL client must
    // not block there), but uses no other layer.
    (
        "state",
        &[
            "net",
            "protocol",
            "market",
            "payments",
            "discovery",
            "cli",
            "config",
            "card",
        ],
    ),
];

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// What `line` (code, not a comment) imports that `forbidden` names.
fn offends(line: &str, forbidden: &[&str]) -> Option<String> {
    let code = line.split("//").next().unwrap_or("");
    forbidden
        .iter()
        .find(|m| {
            if **m == "tokio" {
                code.contains("tokio::")
            } else {
                code.contains(&format!("crate::{m}::"))
                    || code.contains(&format!("crate::{m};"))
                    || code.contains(&format!("crate::{m}}}"))
                    || code.contains(&format!("crate::{{{m}"))
            }
        })
        .map(|m| (*m).to_owned())
}

#[test]
fn lower_layers_do_not_import_higher_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut problems = Vec::new();
    for (module, forbidden) in RULES {
        let mut list = Vec::new();
        let dir = src.join(module);
        files(&dir, &mut list);
        let single = src.join(format!("{module}.rs"));
        if single.is_file() {
            list.push(single);
        }
        assert!(!list.is_empty(), "no sources for {module}");
        for file in list {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                if let Some(m) = offends(line, forbidden) {
                    problems.push(format!("{}:{}: {module} uses {m}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_sees_an_offending_import() {
    assert_eq!(
        offends("use crate::net::SharedFeed;", &["net"]),
        Some("net".into())
    );
    assert_eq!(
        offends("    let x = tokio::spawn(f);", &["tokio"]),
        Some("tokio".into())
    );
    assert_eq!(offends("// see crate::net::serve", &["net"]), None);
    assert_eq!(offends("use crate::network::X;", &["net"]), None);
}
