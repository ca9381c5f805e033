//! The `dazaar.toml` configuration file. (Plugin host issue.)
