#![no_main]
//! cargo-fuzz target `invitation`: see `murmur_fuzz::invitation`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::invitation(data));
