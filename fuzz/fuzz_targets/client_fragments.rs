#![no_main]
//! cargo-fuzz target `client_fragments`: see `murmur_fuzz::client_fragments`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::client_fragments(data));
