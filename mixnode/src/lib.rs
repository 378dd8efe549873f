#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod config;
pub mod engine;
mod error;
mod fsutil;
pub mod keys;
pub mod loops;
mod node;
pub mod registration;

pub use config::MixNodeConfig;
pub use error::{Error, Result};
pub use node::{MixNodeHandle, start_mixnode, start_mixnode_with_topology};
