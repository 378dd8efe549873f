#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
mod daemon;
mod error;
pub mod limits;
pub mod metrics;
mod nonce;
pub mod postgres;
pub mod provider;
pub mod reaper;
pub mod store;
pub mod writer;

pub use api::{Api, ApiConfig, HealthCheck};
pub use config::{Backend, Config, ExampleOptions, example_config};
pub use daemon::{
    MailboxHandle, init_dir, load_identity, mailbox_descriptor, start_mailbox,
    start_mailbox_with_topology,
};
pub use error::{Error, Result};
pub use metrics::Metrics;
pub use postgres::{PostgresSettings, PostgresStore};
pub use provider::{Mailbox, PacketSink, WriterThread};
pub use store::{
    CreateOutcome, InsertOutcome, NewItem, QueueInfo, Quota, RedbStore, Store, open_store,
};
pub use writer::{Writer, WriterConfig};
