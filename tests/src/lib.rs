//! Helpers shared by the end-to-end and interop tests in `tests/tests/`.

use std::path::PathBuf;

/// Block `i` of the crash test's deterministic feed: varied sizes, content tied to `i`.
pub fn crash_block(i: u64) -> Vec<u8> {
    let len = (i * 7919 % 997) as usize;
    let mut block = format!("block {i}:").into_bytes();
    block.extend((0..len).map(|k| (i as usize + k) as u8));
    block
}

/// The `dazaar` binary built by this workspace (built on demand if missing).
pub fn dazaar_bin() -> PathBuf {
    let target = target_dir();
    let bin = target.join("debug").join("dazaar");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "-p", "dazaar", "--bin", "dazaar"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the dazaar binary failed");
    }
    bin
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // tests binaries live in target/debug/deps.
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the JS reference packages are installed (`node_modules` inside), if they are.
/// `.ci/run` installs them; a developer runs `tests/js/install.sh`.
pub fn js_dir() -> Option<PathBuf> {
    let dir = std::env::var("DAZAAR_JS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/dazaar-js")
        });
    dir.join("node_modules/hypercore").is_dir().then_some(dir)
}

/// The JS dir, or a panic explaining how to install it: interop tests must not pass
/// silently when the reference is missing. Set `DAZAAR_SKIP_JS=1` to skip them knowingly.
pub fn require_js() -> Option<PathBuf> {
    if std::env::var("DAZAAR_SKIP_JS").is_ok_and(|v| v == "1") {
        eprintln!("DAZAAR_SKIP_JS=1: skipping a JS interop test");
        return None;
    }
    match js_dir() {
        Some(d) => Some(d),
        None => panic!(
            "the JS reference is not installed: run tests/js/install.sh (or set DAZAAR_JS_DIR), or DAZAAR_SKIP_JS=1 to skip"
        ),
    }
}

/// Runs a script from `tests/js/` with node, the JS packages on NODE_PATH; returns stdout.
pub fn node(js: &std::path::Path, script: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("node")
        .arg(repo_root().join("tests/js").join(script))
        .args(args)
        .env("NODE_PATH", js.join("node_modules"))
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node {script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
