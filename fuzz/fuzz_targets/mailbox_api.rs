#![no_main]
//! cargo-fuzz target `mailbox_api`: see `murmur_fuzz::mailbox_api`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::mailbox_api(data));
