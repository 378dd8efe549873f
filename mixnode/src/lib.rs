#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod engine;
mod error;
mod fsutil;
pub mod keys;

pub use error::{Error, Result};
