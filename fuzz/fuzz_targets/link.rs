#![no_main]
//! cargo-fuzz target `link`: see `murmur_fuzz::link`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::link(data));
