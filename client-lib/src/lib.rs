#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod error;
pub mod fragment;
pub mod identity;
pub mod invite;
pub mod seal;
pub mod store;

pub use error::{Error, Result};
