#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod clock;
mod error;
pub mod fsutil;
mod handshake;
pub mod http;
pub mod keyfile;
mod stream;

pub use error::{Error, Stage};
pub use handshake::{AcceptedLink, LinkSettings, accept, connect, initiate};
pub use murmur_wire::link::{LinkPublicKey, LinkSecretKey, Purpose};
pub use stream::LinkStream;
