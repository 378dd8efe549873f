//! The always-online client: `murmur daemon` (and `murmur watch`) keep one
//! client running — cover traffic, retrieval, retransmissions — and serve
//! the other commands over a local socket, `<home>/murmur.sock`.
//!
//! The socket is a Unix stream socket, mode 0600 inside the client's home
//! folder (mode 0700), and the daemon also checks that each peer runs as
//! the user who owns it (`SO_PEERCRED`). A connection carries one request,
//! a line of JSON, and gets back lines of JSON: output for stdout, notes for
//! stderr, and a last `done` line with the command's error, if any.
//!
//! Whoever can use the socket can use the running client without its
//! passphrase, as with ssh-agent: the same user, on this machine.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use murmur_client::Client;

/// The socket's file name in the client's home folder.
pub(crate) const SOCKET_FILE: &str = "murmur.sock";
/// The longest request line accepted: a text message of up to 1 MiB,
/// JSON-escaped, with room to spare.
const MAX_REQUEST: u64 = 8 << 20;

/// A command, as a CLI asks the daemon to run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Is the client online, and what is it doing?
    Status,
    /// Make an invitation.
    Invite {
        /// Local name for the contact.
        name: Option<String>,
    },
    /// Accept an invitation.
    Accept {
        /// The invitation.
        invitation: String,
        /// Local name for the contact.
        name: Option<String>,
    },
    /// List contacts.
    Contacts,
    /// A contact's safety number.
    SafetyNumber {
        /// The contact.
        contact: String,
    },
    /// Send a text or a file and wait for delivery.
    Send {
        /// The contact.
        contact: String,
        /// The text.
        text: Option<String>,
        /// The file, as an absolute path.
        file: Option<PathBuf>,
        /// How long to wait for delivery.
        timeout_secs: u64,
    },
    /// Print new (or all) mail.
    Inbox {
        /// All mail, not only new.
        all: bool,
    },
    /// Stream mail as it arrives.
    Watch,
    /// Stop the daemon.
    Stop,
}

/// One line of a reply.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply {
    /// A line for stdout.
    Out(String),
    /// A line for stderr.
    Note(String),
    /// The end: `None` on success, else the error.
    Done(Option<String>),
}

/// Where a command's output goes: this process's terminal, or a CLI
/// connected to the daemon.
#[derive(Debug, Clone)]
pub(crate) enum Out {
    /// Print here.
    Local,
    /// Send to a connected CLI.
    Remote(mpsc::UnboundedSender<Reply>),
}

impl Out {
    /// A line of output (stdout).
    pub(crate) fn line(&self, s: impl Into<String>) {
        match self {
            Out::Local => println!("{}", s.into()),
            Out::Remote(tx) => {
                let _ = tx.send(Reply::Out(s.into()));
            }
        }
    }

    /// A note about progress (stderr).
    pub(crate) fn note(&self, s: impl Into<String>) {
        match self {
            Out::Local => eprintln!("{}", s.into()),
            Out::Remote(tx) => {
                let _ = tx.send(Reply::Note(s.into()));
            }
        }
    }

    /// Resolves when nobody reads this output any more (a remote CLI went
    /// away); never for local output.
    pub(crate) async fn gone(&self) {
        match self {
            Out::Local => std::future::pending().await,
            Out::Remote(tx) => tx.closed().await,
        }
    }
}

/// The socket path of the client in `home`.
pub(crate) fn socket_path(home: &Path) -> PathBuf {
    home.join(SOCKET_FILE)
}

/// Connects to the daemon of `home`, if one runs.
pub(crate) async fn connect(home: &Path) -> Option<UnixStream> {
    let path = socket_path(home);
    if !path.exists() {
        return None;
    }
    UnixStream::connect(&path).await.ok()
}

/// Sends `request` to the daemon on `stream` and prints its reply as it
/// comes; the command's result is the daemon's.
pub(crate) async fn forward(stream: UnixStream, request: &Request) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).context("encoding the request")?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .context("talking to the murmur daemon")?;
    let mut lines = BufReader::new(read).lines();
    loop {
        let Some(line) = lines
            .next_line()
            .await
            .context("reading the murmur daemon's answer")?
        else {
            bail!("the murmur daemon closed the connection before answering");
        };
        match serde_json::from_str::<Reply>(&line)
            .with_context(|| "the murmur daemon's answer is garbled")?
        {
            Reply::Out(s) => println!("{s}"),
            Reply::Note(s) => eprintln!("{s}"),
            Reply::Done(None) => return Ok(()),
            Reply::Done(Some(e)) => return Err(anyhow!(e)),
        }
    }
}

/// A bound daemon socket; the file is removed on drop.
pub(crate) struct Socket {
    listener: UnixListener,
    path: PathBuf,
    owner: u32,
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Socket {
    /// Binds `<home>/murmur.sock`. A daemon already answering there is an
    /// error; a stale socket file (nobody answers) is replaced.
    pub(crate) async fn bind(home: &Path) -> Result<Self> {
        let path = socket_path(home);
        if path.exists() {
            if UnixStream::connect(&path).await.is_ok() {
                bail!(
                    "a murmur daemon already runs for {} (murmur --home {} stop)",
                    home.display(),
                    home.display()
                );
            }
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        let mut socket = Self {
            listener,
            owner: 0,
            path,
        };
        // From here on, dropping `socket` removes the file.
        std::fs::set_permissions(&socket.path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", socket.path.display()))?;
        socket.owner = std::fs::metadata(&socket.path)
            .with_context(|| format!("reading {}", socket.path.display()))?
            .uid();
        Ok(socket)
    }
}

/// Serves requests on `socket` with `client` until `stop` is cancelled or a
/// CLI asks the daemon to stop; then waits for the connections to end.
pub(crate) async fn serve(socket: Socket, client: Arc<Client>, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the local socket");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == socket.owner => {}
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), "refused a local connection: another user");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "refused a local connection: no peer credentials");
                continue;
            }
        }
        tracker.spawn(connection(stream, client.clone(), stop.clone()));
    }
    tracker.close();
    tracker.wait().await;
}

/// One CLI's request and its answer.
async fn connection(stream: UnixStream, client: Arc<Client>, stop: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(MAX_REQUEST);
    let read = reader.read_line(&mut line);
    let request = match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
        Ok(Ok(_)) if line.ends_with('\n') => serde_json::from_str::<Request>(&line)
            .map_err(|e| format!("the murmur daemon does not understand the request: {e}")),
        Ok(Ok(_)) => Err("the request is incomplete or too long".to_owned()),
        Ok(Err(e)) => Err(format!("reading the request: {e}")),
        Err(_) => Err("no request within 10 s".to_owned()),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let out = Out::Remote(tx.clone());
    let work = async move {
        let result = match request {
            Ok(Request::Stop) => {
                out.note("stopping the murmur daemon");
                stop.cancel();
                Ok(())
            }
            Ok(request) => {
                tokio::select! {
                    r = crate::commands::exec(&client, request, &out) => r,
                    _ = stop.cancelled() => Err(anyhow!("the murmur daemon is stopping")),
                }
            }
            Err(e) => Err(anyhow!(e)),
        };
        let _ = tx.send(Reply::Done(result.err().map(|e| format!("{e:#}"))));
    };
    let writer = async move {
        while let Some(reply) = rx.recv().await {
            let Ok(mut bytes) = serde_json::to_vec(&reply) else {
                continue;
            };
            bytes.push(b'\n');
            if write.write_all(&bytes).await.is_err() {
                // The CLI went away: dropping `rx` tells the command (Out::gone).
                return;
            }
            if matches!(reply, Reply::Done(_)) {
                let _ = write.shutdown().await;
                return;
            }
        }
    };
    tokio::join!(work, writer);
}
