//! The `murmur-mixnode` daemon.
fn main() {}
