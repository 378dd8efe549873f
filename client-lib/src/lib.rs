#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod client;
mod driver;
mod error;
pub mod fragment;
pub mod identity;
pub mod invite;
mod links;
pub mod mailbox_api;
pub mod network;
pub mod ratchet;
mod receive;
pub mod seal;
mod send;
pub mod store;

pub use client::{
    Client, ClientOptions, ClientStats, ConsensusSource, ContactInfo, Incoming, MAX_MESSAGE_SIZE,
    Progress, ReceivedMessage, SendHandle,
};
pub use error::{Error, Result};
pub use seal::Body;
pub use store::{OutState, Passphrase, Received};
