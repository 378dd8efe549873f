#![no_main]
//! cargo-fuzz target `descriptor`: see `murmur_fuzz::descriptor`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::descriptor(data));
