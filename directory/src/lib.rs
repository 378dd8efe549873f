#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod admission;
mod authority;
mod client;
pub mod config;
pub mod consensus;
mod error;
mod metrics;
mod pin;
mod store;

pub use authority::{
    AuthorityHandle, MAX_DESCRIPTOR_UPLOAD, start_authority, start_authority_on,
    start_authority_with_probe,
};
pub use client::{
    Attempt, AttemptError, ConsensusWatch, DirectoryClient, FetchError, MAX_CONSENSUS_SIZE,
    UploadReport, spawn_follower,
};
pub use config::AuthorityConfig;
pub use error::Error;
pub use pin::AuthorityPin;
