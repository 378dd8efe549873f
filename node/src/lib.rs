#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod engine;
mod error;
pub mod fsutil;
pub mod keys;
pub mod registration;

pub use error::{Error, Result};
