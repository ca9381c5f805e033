//! Free-access and ledger payment verifier plugins.
