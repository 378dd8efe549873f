#![no_main]
//! cargo-fuzz target `consensus`: see `murmur_fuzz::consensus`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::consensus(data));
