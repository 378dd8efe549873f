#![no_main]
//! cargo-fuzz target `final_payload`: see `murmur_fuzz::final_payload`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::final_payload(data));
