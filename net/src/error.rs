//! The one error type of murmur-net.

/// Where in setting up a link something failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Opening the TCP connection.
    Connect,
    /// Handshake message 1 (initiator → responder).
    Message1,
    /// Handshake message 2 (responder → initiator).
    Message2,
    /// Handshake message 3 (initiator → responder).
    Message3,
}

impl Stage {
    /// A short label (for metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Message1 => "message1",
            Stage::Message2 => "message2",
            Stage::Message3 => "message3",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can go wrong on a link.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed during the handshake.
    #[error("link I/O failed at {stage}")]
    Io {
        /// Where.
        stage: Stage,
        /// The socket's error.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed: the peer is not who the consensus says, spoke
    /// another protocol, or tampered with a message.
    #[error("link handshake failed at {stage}")]
    Handshake {
        /// Where.
        stage: Stage,
        /// What failed.
        #[source]
        source: murmur_wire::Error,
    },
    /// The handshake did not finish in time.
    #[error("link handshake timed out")]
    Timeout,
    /// An HTTP exchange over a link failed.
    #[error("HTTP over the link failed: {what}")]
    Http {
        /// What failed.
        what: &'static str,
        /// The cause, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl Error {
    /// A short label of the failure (for metrics): `timeout`, `io`, or the
    /// handshake stage that failed.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Timeout => "timeout",
            Error::Io { .. } => "io",
            Error::Handshake { stage, .. } => match stage {
                Stage::Connect => "connect",
                Stage::Message1 => "bad_message1",
                Stage::Message2 => "bad_message2",
                Stage::Message3 => "bad_message3",
            },
            Error::Http { .. } => "http",
        }
    }
}
