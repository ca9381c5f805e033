//! Helpers shared by the end-to-end and interop tests in `tests/tests/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The cargo target directory of the running test binary (`target/debug`), found from the
/// binary's own path (`target/debug/deps/<test>-<hash>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// Which package builds which plugin library.
const PACKAGES: &[(&str, &str)] = &[
    ("free", "dazaar-free"),
    ("ledger", "dazaar-ledger"),
    ("faulty", "dazaar-fixture-faulty"),
    ("oldapi", "dazaar-fixture-old-api"),
    ("future", "dazaar-fixture-future-api"),
    ("notplugin", "dazaar-fixture-not-plugin"),
];

static BUILD: Mutex<()> = Mutex::new(());

/// The `dazaar` binary of this target directory, built with `$CARGO build -p dazaar` if
/// missing.
pub fn dazaar_binary() -> PathBuf {
    let path = target_dir().join(format!("dazaar{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "dazaar", "--bin", "dazaar"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p dazaar failed");
    }
    path
}

/// The path of the built library `dazaar_<name>` (`libdazaar_<name>.so` on Linux),
/// building its package with `$CARGO build -p` if it is missing. `cargo test --workspace`
/// builds them already; the fallback covers `cargo test -p dazaar-tests`.
pub fn plugin_library(name: &str) -> PathBuf {
    let file = dazaar::payments::plugin_file_name(name);
    let path = target_dir().join(&file);
    if path.is_file() {
        return path;
    }
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.is_file() {
        let package = PACKAGES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no package builds plugin {name}"));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", package]);
        if target_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} failed");
    }
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Copies plugin libraries into `dir` under their usual file names (or `as_name`).
pub fn copy_plugin(name: &str, dir: &Path, as_name: Option<&str>) -> PathBuf {
    let src = plugin_library(name);
    let dest = dir.join(dazaar::payments::plugin_file_name(as_name.unwrap_or(name)));
    std::fs::copy(&src, &dest).expect("copy plugin");
    dest
}

/// Threads of this process now (Linux), for checking that hung plugins stay bounded.
pub fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}
