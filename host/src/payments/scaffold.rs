//! `dazaar plugins new`: a new plugin crate from the templates in `host/templates/plugin`
//! (the allow-list verifier docs/writing-a-plugin.md walks through).

use std::path::{Path, PathBuf};

use super::loader::is_plugin_name;

/// Why a plugin crate could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScaffoldError {
    /// The name is not a plugin name.
    #[error("{0:?} is not a plugin name (lowercase letters, digits and _, at most 64)")]
    BadName(String),
    /// The directory exists and is not empty.
    #[error("{0} exists and is not empty")]
    NotEmpty(PathBuf),
    /// A file could not be written.
    #[error("cannot write {path}: {reason}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
}

const CARGO_TOML: &str = include_str!("../../templates/plugin/Cargo.toml.in");
const LIB_RS: &str = include_str!("../../templates/plugin/lib.rs");
const KIT_TEST_RS: &str = include_str!("../../templates/plugin/kit_test.rs");
const README: &str = include_str!("../../templates/plugin/README.md.in");
const GITIGNORE: &str = include_str!("../../templates/plugin/gitignore.in");

/// The plugin crate for `name`: (path relative to the crate, contents). The plugin API
/// comes from `api_path` when given (and the test kit from `plugin-kit` beside it, when
/// there is one), else from crates.io by version.
pub fn plugin_crate_files(
    name: &str,
    api_path: Option<&Path>,
) -> Result<Vec<(&'static str, String)>, ScaffoldError> {
    if !is_plugin_name(name) {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let api = dazaar_plugin_api::API_VERSION;
    let by_path = |p: &Path| format!("{{ path = {} }}", toml_string(&p.display().to_string()));
    let api_dep = match api_path {
        Some(p) => by_path(p),
        None => format!("\"{}.{}\"", api.major, api.minor),
    };
    let kit_path = api_path
        .and_then(Path::parent)
        .map(|root| root.join("plugin-kit"))
        .filter(|kit| kit.join("Cargo.toml").is_file());
    let kit_dep = match kit_path {
        Some(p) => by_path(&p),
        None => format!("\"{}\"", env!("CARGO_PKG_VERSION")),
    };
    let fill = |template: &str| {
        template
            .replace("__API_DEP__", &api_dep)
            .replace("__KIT_DEP__", &kit_dep)
            .replace("__CRATE__", &name.replace('_', "-"))
            .replace("__NAME__", name)
    };
    Ok(vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        ("tests/plugin.rs", fill(KIT_TEST_RS)),
        ("README.md", fill(README)),
        (".gitignore", fill(GITIGNORE)),
    ])
}

/// `text` as a TOML basic string (quoted, escaped).
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Writes the plugin crate for `name` into `dir` (created; refused when it exists and is
/// not empty). Returns the files written.
pub fn scaffold_plugin(
    name: &str,
    dir: &Path,
    api_path: Option<&Path>,
) -> Result<Vec<PathBuf>, ScaffoldError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| ScaffoldError::Io {
            path,
            reason: e.to_string(),
        }
    };
    let files = plugin_crate_files(name, api_path)?;
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(ScaffoldError::NotEmpty(dir.to_path_buf()));
        }
    }
    let mut written = Vec::new();
    for (relative, contents) in files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, contents).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_filled() {
        let files =
            plugin_crate_files("allow_x", Some(Path::new("/src/dazaar/plugin-api"))).unwrap();
        let cargo = &files[0].1;
        assert!(cargo.contains("name = \"dazaar-allow-x\""), "{cargo}");
        assert!(cargo.contains("name = \"dazaar_allow_x\""), "{cargo}");
        assert!(
            cargo.contains("crate-type = [\"cdylib\", \"rlib\"]"),
            "{cargo}"
        );
        assert!(
            cargo.contains("dazaar-plugin-api = { path = \"/src/dazaar/plugin-api\" }"),
            "{cargo}"
        );
        let lib = &files[1].1;
        assert!(lib.contains("name: \"allow_x\""));
        for (_, text) in &files {
            assert!(!text.contains("__"), "a placeholder is left: {text}");
        }
        let by_version = plugin_crate_files("x", None).unwrap();
        let api = dazaar_plugin_api::API_VERSION;
        assert!(by_version[0].1.contains(&format!(
            "dazaar-plugin-api = \"{}.{}\"",
            api.major, api.minor
        )));
        assert!(matches!(
            plugin_crate_files("Bad-Name", None),
            Err(ScaffoldError::BadName(_))
        ));
    }

    #[test]
    fn a_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), "").unwrap();
        assert!(matches!(
            scaffold_plugin("x", dir.path(), None),
            Err(ScaffoldError::NotEmpty(_))
        ));
        let fresh = dir.path().join("new");
        let written = scaffold_plugin("x", &fresh, None).unwrap();
        assert_eq!(written.len(), 5);
        assert!(fresh.join("src/lib.rs").is_file());
    }
}
