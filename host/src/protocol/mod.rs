//! The sans-IO protocol v8 session. (Wire issue.)
