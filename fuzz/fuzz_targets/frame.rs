#![no_main]
//! cargo-fuzz target `frame`: see `murmur_fuzz::frame`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::frame(data));
