//! The one error type of murmur-client.

use std::path::PathBuf;

/// What can go wrong using the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The home directory has no client in it.
    #[error("no Murmur client in {home} (run `murmur init` first)")]
    NotInitialised {
        /// The home directory.
        home: PathBuf,
    },

    /// `init` was run on a home that already has a client.
    #[error("a Murmur client already exists in {home}")]
    AlreadyInitialised {
        /// The home directory.
        home: PathBuf,
    },

    /// A network configuration file could not be read or is wrong.
    #[error("network config {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },

    /// An invitation string is not valid.
    #[error("invalid invitation: {reason}")]
    InvalidInvitation {
        /// What was wrong.
        reason: &'static str,
    },

    /// The invitation is one this client made itself.
    #[error("this invitation was made by this client; give it to your contact instead")]
    OwnInvitation,

    /// No contact has that name.
    #[error("no contact named {name:?} (see `murmur contacts`)")]
    UnknownContact {
        /// The name asked for.
        name: String,
    },

    /// A contact with that name exists already.
    #[error("a contact named {name:?} already exists")]
    ContactExists {
        /// The name.
        name: String,
    },

    /// A contact name is empty, too long or has control characters.
    #[error("invalid contact name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What was wrong.
        reason: &'static str,
    },

    /// The contact accepted no invitation yet, so there is nowhere to send.
    #[error("{name:?} has not accepted the invitation yet: nothing can be sent until they do")]
    ContactPending {
        /// The contact.
        name: String,
    },

    /// The contact was made before post-quantum sealing: this client has
    /// no post-quantum key of theirs, so it will not write to them (nor
    /// show a safety number that would not cover such a key).
    #[error(
        "{name:?} was added before post-quantum encryption; exchange a new invitation with them (`murmur invite`)"
    )]
    LegacyContact {
        /// The contact.
        name: String,
    },

    /// A file could not be read or written.
    #[error("{path}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A message is larger than a client sends.
    #[error("message of {size} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// No usable consensus: the directory could not be reached or its
    /// documents did not verify.
    #[error("the network is unreachable: {reason}")]
    Unreachable {
        /// Why (each authority's failure, or the mailbox's).
        reason: String,
    },

    /// The mailbox provider refused a request.
    #[error("mailbox refused {op}: {status} {reason}")]
    Mailbox {
        /// What was asked.
        op: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's one-line reason.
        reason: String,
    },

    /// The mailbox provider's answer does not answer the request sent (it
    /// names another request, or is of the wrong kind): refused, nothing
    /// acted on.
    #[error("the mailbox's answer to {op} does not match the request")]
    Unbound {
        /// What was asked.
        op: &'static str,
    },

    /// A message could not be delivered within its tries.
    #[error("message could not be delivered after {tries} tries per packet")]
    SendFailed {
        /// Tries per packet.
        tries: u32,
    },

    /// Local state could not be read or written.
    #[error("client state")]
    Storage(#[source] Box<redb::Error>),

    /// The passphrase does not unlock the client database (or the
    /// database's header was altered).
    #[error("wrong passphrase for {path}")]
    WrongPassphrase {
        /// The database.
        path: PathBuf,
    },

    /// A stored record could not be decoded or did not open (altered,
    /// truncated, or moved from another row).
    #[error("client state is corrupt: {what}")]
    Corrupt {
        /// Which record.
        what: &'static str,
    },

    /// Sealing or opening a message failed.
    #[error("{0}")]
    Crypto(&'static str),

    /// A protocol-level error from murmur-wire.
    #[error(transparent)]
    Wire(#[from] murmur_wire::Error),

    /// The client has shut down.
    #[error("the client has shut down")]
    Closed,
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(Box::new(e.into()))
            }
        }
    )*};
}

storage_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Result alias for murmur-client.
pub type Result<T, E = Error> = std::result::Result<T, E>;
