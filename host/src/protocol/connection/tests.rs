//! Two Connections driven in memory with virtual time.
