//! The tokio driver for protocol sessions. (Wire issue.)
