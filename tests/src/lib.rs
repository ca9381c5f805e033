//! Helpers shared by the end-to-end and interop tests in `tests/tests/`.
