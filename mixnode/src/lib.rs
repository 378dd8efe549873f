#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod config;
pub mod loops;
mod node;

pub use config::MixNodeConfig;
pub use murmur_node::{Error, Result};
pub use node::{MixNodeHandle, start_mixnode, start_mixnode_with_topology};
