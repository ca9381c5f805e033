//! Harness of the `bitfield_rle` target; the body is `dazaar::fuzzing::bitfield_rle`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dazaar::fuzzing::bitfield_rle(data));
