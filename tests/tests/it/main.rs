//! The integration tests of dazaar-rs, as one test binary (one link instead of one per
//! file, and one process whose helpers are shared). Each module was a test file of its
//! own; a test is named `<module>::<test>` (`cargo test -p dazaar-tests --test it --
//! stripe::`).
//!
//! Everything here runs in one process, with the harness's parallel threads: a test
//! must not depend on process-wide state it sets (environment variables, the current
//! directory, a global `tracing` subscriber) unless every test agrees on it; see
//! [`support`] for the shared pieces.

// A panic is a test's failure report; its queues are bounded by the test itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod support;

mod config;
mod discovery;
mod eos;
mod exec;
mod feed;
mod hostile;
mod hostile_memory;
mod lnd;
mod market;
mod market_cli;
mod plugin_kit;
mod plugins;
mod pricing;
mod service;
mod state;
mod stripe;
mod wire;
