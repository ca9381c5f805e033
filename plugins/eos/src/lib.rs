//! EOS chain payment verifier plugin. Filled by the payment plugins issue.
