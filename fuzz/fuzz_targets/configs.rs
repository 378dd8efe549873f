#![no_main]
//! cargo-fuzz target `configs`: see `murmur_fuzz::configs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::configs(data));
