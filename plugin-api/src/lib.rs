//! The stable ABI between the dazaar host and its payment verifier plugins.
