#![no_main]
//! cargo-fuzz target `sphinx_packet`: see `murmur_fuzz::sphinx_packet`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::sphinx_packet(data));
