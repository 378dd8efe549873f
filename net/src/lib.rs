#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod error;
mod handshake;
pub mod http;
mod stream;

pub use error::{Error, Stage};
pub use handshake::{AcceptedLink, LinkSettings, accept, connect, initiate};
pub use murmur_wire::link::{LinkPublicKey, LinkSecretKey, Purpose};
pub use stream::LinkStream;
