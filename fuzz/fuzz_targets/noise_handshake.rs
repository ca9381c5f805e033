//! Harness of the `noise_handshake` target; the body is `dazaar::fuzzing::noise_handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar::fuzzing::noise_handshake(data));
