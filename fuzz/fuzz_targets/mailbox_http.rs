#![no_main]
//! cargo-fuzz target `mailbox_http`: see `murmur_fuzz::mailbox_http`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| murmur_fuzz::mailbox_http(data));
