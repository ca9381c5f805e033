//! Harness of the `wire_frames` target; the body is `dazaar::fuzzing::wire_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar::fuzzing::wire_frames(data));
