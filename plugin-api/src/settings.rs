//! Reading a plugin's settings (its TOML table): paths that start with `~/`.

use std::ffi::OsString;
use std::path::PathBuf;

/// A setting's path starts with `~/`, but there is no home directory to put there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path:?} starts with ~ but HOME is not set")]
pub struct HomeNotSet {
    /// The path as written in the settings.
    pub path: String,
}

/// `path` with a leading `~/` replaced by the home directory (`$HOME`), as a shell would;
/// any other path (`~user/...`, a `~` later on, a lone `~`) as it is.
///
/// `~/...` without `HOME` (unset or empty) is an error, not the relative directory
/// `./~`: a service started without a home would otherwise read or write somewhere
/// unexpected.
pub fn expand_home(path: &str) -> Result<PathBuf, HomeNotSet> {
    expand_home_in(path, std::env::var_os("HOME"))
}

fn expand_home_in(path: &str, home: Option<OsString>) -> Result<PathBuf, HomeNotSet> {
    let Some(rest) = path.strip_prefix("~/") else {
        return Ok(PathBuf::from(path));
    };
    match home.filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(rest)),
        None => Err(HomeNotSet { path: path.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> Option<OsString> {
        Some("/home/u".into())
    }

    #[test]
    fn a_leading_tilde_slash_is_home() {
        assert_eq!(
            expand_home_in("~/a/b", home()),
            Ok(PathBuf::from("/home/u/a/b"))
        );
        assert_eq!(expand_home_in("~/", home()), Ok(PathBuf::from("/home/u/")));
    }

    #[test]
    fn other_paths_are_kept() {
        for path in ["/abs/x", "rel/x", "~", "~user/x", "a/~/x", ""] {
            assert_eq!(expand_home_in(path, home()), Ok(PathBuf::from(path)));
            assert_eq!(expand_home_in(path, None), Ok(PathBuf::from(path)));
        }
    }

    #[test]
    fn without_a_home_it_is_an_error() {
        let e = HomeNotSet { path: "~/k".into() };
        assert_eq!(expand_home_in("~/k", None), Err(e.clone()));
        assert_eq!(expand_home_in("~/k", Some(OsString::new())), Err(e.clone()));
        assert_eq!(e.to_string(), "\"~/k\" starts with ~ but HOME is not set");
    }

    #[test]
    fn reads_home_from_the_environment() {
        // Whatever this process's HOME is; the variable is not changed (tests run in
        // parallel threads).
        assert_eq!(
            expand_home("~/x"),
            expand_home_in("~/x", std::env::var_os("HOME"))
        );
    }
}
