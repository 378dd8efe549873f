//! The link handshake on a socket: [`connect`] as the initiator,
//! [`accept`] as the responder, each within a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use murmur_wire::link::{
    Initiator, LinkPublicKey, LinkSecretKey, MESSAGE1_SIZE, MESSAGE2_SIZE, MESSAGE3_SIZE, Purpose,
    RECORD_HEADER_SIZE, Responder, frame_message,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Stage};
use crate::stream::LinkStream;

/// How links behave: handshake timeout and rekey interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkSettings {
    /// The whole handshake (connect included, for the initiator) must
    /// finish within this.
    pub handshake_timeout: Duration,
    /// Each direction's key is replaced at least this often.
    pub rekey_interval: Duration,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            rekey_interval: Duration::from_secs(600),
        }
    }
}

/// A link accepted by a responder.
#[derive(Debug)]
pub struct AcceptedLink<S> {
    /// The encrypted stream.
    pub stream: LinkStream<S>,
    /// The initiator's static X25519 key: look it up in the consensus to
    /// know whether a node is calling (else it is a client, unidentified).
    pub remote_static: [u8; 32],
}

async fn read_message<S: AsyncRead + Unpin>(
    io: &mut S,
    expected: usize,
    stage: Stage,
) -> Result<Vec<u8>, Error> {
    let mut header = [0u8; RECORD_HEADER_SIZE];
    io.read_exact(&mut header)
        .await
        .map_err(|source| Error::Io { stage, source })?;
    let len = usize::from(u16::from_be_bytes(header));
    if len != expected {
        // Refused before reading (or allocating) what the peer announced.
        return Err(Error::Handshake {
            stage,
            source: murmur_wire::Error::Link {
                reason: "handshake message of the wrong length",
            },
        });
    }
    let mut msg = vec![0u8; len];
    io.read_exact(&mut msg)
        .await
        .map_err(|source| Error::Io { stage, source })?;
    Ok(msg)
}

async fn write_message<S: AsyncWrite + Unpin>(
    io: &mut S,
    msg: &[u8],
    stage: Stage,
) -> Result<(), Error> {
    let framed = frame_message(msg).map_err(|source| Error::Handshake { stage, source })?;
    io.write_all(&framed)
        .await
        .map_err(|source| Error::Io { stage, source })?;
    io.flush()
        .await
        .map_err(|source| Error::Io { stage, source })
}

/// Runs the initiator's side on an open stream.
pub async fn initiate<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    purpose: Purpose,
    local: Option<&LinkSecretKey>,
    remote: &LinkPublicKey,
    settings: &LinkSettings,
) -> Result<LinkStream<S>, Error> {
    let run = async {
        let (init, m1) = {
            let mut rng = rand::rng();
            Initiator::start(&mut rng, purpose, local, remote).map_err(|source| {
                Error::Handshake {
                    stage: Stage::Message1,
                    source,
                }
            })?
        };
        write_message(&mut io, &m1, Stage::Message1).await?;
        let m2 = read_message(&mut io, MESSAGE2_SIZE, Stage::Message2).await?;
        let (m3, transport) = init.finish(&m2).map_err(|source| Error::Handshake {
            stage: Stage::Message2,
            source,
        })?;
        write_message(&mut io, &m3, Stage::Message3).await?;
        Ok::<_, Error>(transport)
    };
    let transport = tokio::time::timeout(settings.handshake_timeout, run)
        .await
        .map_err(|_| Error::Timeout)??;
    Ok(LinkStream::new(io, transport, settings.rekey_interval))
}

/// Runs the responder's side on an accepted stream.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    purpose: Purpose,
    local: &LinkSecretKey,
    settings: &LinkSettings,
) -> Result<AcceptedLink<S>, Error> {
    let run = async {
        let m1 = read_message(&mut io, MESSAGE1_SIZE, Stage::Message1).await?;
        let (resp, m2) = {
            let mut rng = rand::rng();
            Responder::respond(&mut rng, purpose, local, &m1).map_err(|source| {
                Error::Handshake {
                    stage: Stage::Message1,
                    source,
                }
            })?
        };
        write_message(&mut io, &m2, Stage::Message2).await?;
        let m3 = read_message(&mut io, MESSAGE3_SIZE, Stage::Message3).await?;
        resp.finish(&m3).map_err(|source| Error::Handshake {
            stage: Stage::Message3,
            source,
        })
    };
    let accepted = tokio::time::timeout(settings.handshake_timeout, run)
        .await
        .map_err(|_| Error::Timeout)??;
    Ok(AcceptedLink {
        stream: LinkStream::new(io, accepted.transport, settings.rekey_interval),
        remote_static: accepted.remote_static,
    })
}

/// Connects to `addr` and runs the initiator's side: the connection and the
/// handshake together must finish within the handshake timeout.
pub async fn connect(
    addr: SocketAddr,
    purpose: Purpose,
    local: Option<&LinkSecretKey>,
    remote: &LinkPublicKey,
    settings: &LinkSettings,
) -> Result<LinkStream<TcpStream>, Error> {
    let started = tokio::time::Instant::now();
    let stream = tokio::time::timeout(settings.handshake_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Timeout)?
        .map_err(|source| Error::Io {
            stage: Stage::Connect,
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let left = LinkSettings {
        handshake_timeout: settings
            .handshake_timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1)),
        ..*settings
    };
    initiate(stream, purpose, local, remote, &left).await
}
