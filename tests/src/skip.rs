//! The one skip policy: a test that needs something the machine may lack (node and the
//! JS reference packages, localstripe, network namespaces) asks [`need`] for it. Absent,
//! the test prints one line and returns without checking anything — unless the `CI`
//! environment variable is set: CI installs everything (`.ci/run`), so there an absent
//! requirement fails the test instead of letting it pass unchecked.

/// Whether missing requirements fail tests rather than skip them: `CI` is set.
pub fn strict() -> bool {
    std::env::var_os("CI").is_some()
}

/// `found`'s value, or `None` after a `SKIPPED` line naming the test, `what` it needs and
/// why it is absent (`found`'s error, which should say how to get it). Under `CI`
/// ([`strict`]) an absent requirement panics instead.
pub fn need<T>(what: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(t) => Some(t),
        Err(why) => {
            let test = std::thread::current().name().unwrap_or("a test").to_owned();
            assert!(!strict(), "{test} needs {what} and CI must have it: {why}");
            eprintln!("SKIPPED {test}: needs {what}: {why}");
            None
        }
    }
}

/// Whether `program` runs (`program --version` exits successfully).
pub fn runs(program: &str) -> Result<(), String> {
    match std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{program} --version` exited with {s}")),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}
