//! Secrets (the API key, the webhook signing secret): read from a file or an environment
//! variable named in the config, never from the TOML itself, and never printed.

use dazaar_plugin_api::expand_home;
use std::fmt;

/// A secret string. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value, for the one place that must send it (an HTTP header, an HMAC key).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the secret replaced by `[redacted]`, for text that
    /// came back from a server and might echo it.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_owned();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file holding it (surrounding whitespace is trimmed).
    File(String),
    /// An environment variable holding it.
    Env(String),
}

impl SecretSource {
    /// Picks the source from a `*_file` / `*_env` pair of config keys.
    pub fn from_pair(
        what: &str,
        file: Option<String>,
        env: Option<String>,
    ) -> Result<Option<SecretSource>, String> {
        match (file, env) {
            (Some(_), Some(_)) => Err(format!(
                "set only one of {what}_file and {what}_env, not both"
            )),
            (Some(f), None) => Ok(Some(SecretSource::File(f))),
            (None, Some(e)) => Ok(Some(SecretSource::Env(e))),
            (None, None) => Ok(None),
        }
    }

    /// Reads the secret. Errors name the file or variable, never the value.
    pub fn read(&self, what: &str) -> Result<Secret, String> {
        let value = match self {
            SecretSource::File(path) => {
                let path = expand_home(path).map_err(|e| format!("{what}: {e}"))?;
                std::fs::read_to_string(&path).map_err(|e| {
                    format!("cannot read {what} from {}: {}", path.display(), e.kind())
                })?
            }
            SecretSource::Env(var) => std::env::var(var)
                .map_err(|_| format!("environment variable {var} (for {what}) is not set"))?,
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(format!("{what} is empty"));
        }
        if value.chars().any(|c| c.is_control() || c == ' ') {
            return Err(format!("{what} contains spaces or control characters"));
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("sk_test_abcdef".into());
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert_eq!(
            s.scrub("Invalid API Key provided: sk_test_abcdef"),
            "Invalid API Key provided: [redacted]"
        );
    }

    #[test]
    fn sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "sk_test_1\n").unwrap();
        let src = SecretSource::File(f.display().to_string());
        assert_eq!(src.read("secret key").unwrap().expose(), "sk_test_1");
        let e = SecretSource::Env("DAZAAR_TEST_NOT_SET_VAR".into())
            .read("secret key")
            .unwrap_err();
        assert!(e.contains("DAZAAR_TEST_NOT_SET_VAR"), "{e}");
        assert!(SecretSource::from_pair("secret_key", Some("a".into()), Some("b".into())).is_err());
    }
}
