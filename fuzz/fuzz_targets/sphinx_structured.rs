#![no_main]
//! cargo-fuzz target `sphinx_structured`: see `murmur_fuzz::sphinx_structured`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::sphinx_structured(data));
