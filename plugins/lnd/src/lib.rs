//! Lightning (LND gRPC) payment verifier plugin. Filled by the payment plugins issue.
