//! The `murmur` command's library: the one-process local network
//! ([`devnet`]) and the demo ([`demo`]), usable from tests and benchmarks.
#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod demo;
pub mod devnet;
