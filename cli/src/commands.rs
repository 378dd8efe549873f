//! The user commands: init, invite, accept, contacts, safety-number, send,
//! inbox, watch, daemon, status, stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use murmur_client::network::{NetworkConfig, follow};
use murmur_client::{Body, Client, ClientOptions, ConsensusSource, Passphrase, Received};
use murmur_wire::NodeId;
use tokio_util::sync::CancellationToken;

use crate::Command;
use crate::daemon::{self, Out, Request};
use crate::display;

const NETWORK_FILE: &str = "network.toml";
/// The environment variable a passphrase may come from.
const PASSPHRASE_VAR: &str = "MURMUR_PASSPHRASE";
/// The environment variable a new passphrase may come from (`passphrase`).
const NEW_PASSPHRASE_VAR: &str = "MURMUR_NEW_PASSPHRASE";
/// How long a command waits for a first verified consensus.
const CONSENSUS_WAIT: Duration = Duration::from_secs(15);

fn home_dir(cli_home: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(h) = cli_home {
        return Ok(h);
    }
    if let Some(h) = std::env::var_os("MURMUR_HOME") {
        return Ok(PathBuf::from(h));
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| anyhow!("no --home given and $HOME is not set"))?;
    Ok(PathBuf::from(home).join(".murmur"))
}

/// The passphrase of the client database in `home`: `$MURMUR_PASSPHRASE`
/// if set, else asked on the terminal (twice when `new`, for `init`),
/// else an error.
fn passphrase(home: &Path, new: bool) -> Result<Passphrase> {
    use std::io::IsTerminal;
    let passphrase = if let Some(value) = std::env::var_os(PASSPHRASE_VAR) {
        let value = value
            .into_string()
            .map_err(|_| anyhow!("{PASSPHRASE_VAR} is not valid UTF-8"))?;
        Passphrase::new(value)
    } else if !std::io::stdin().is_terminal() {
        bail!(
            "the client's files are encrypted with a passphrase: set {PASSPHRASE_VAR}, \
             or run murmur in a terminal to be asked for it"
        );
    } else if new {
        return ask_new_passphrase(home);
    } else {
        Passphrase::new(
            rpassword::prompt_password(format!(
                "Passphrase for the client in {}: ",
                home.display()
            ))
            .context("reading the passphrase")?,
        )
    };
    if new && passphrase.is_empty() {
        bail!("the passphrase must not be empty");
    }
    Ok(passphrase)
}

/// Asks for a new passphrase on the terminal, twice.
fn ask_new_passphrase(home: &Path) -> Result<Passphrase> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the new passphrase: set {NEW_PASSPHRASE_VAR}");
    }
    let first = Passphrase::new(
        rpassword::prompt_password(format!(
            "New passphrase for the client in {} (it encrypts the client's files): ",
            home.display()
        ))
        .context("reading the passphrase")?,
    );
    let again = Passphrase::new(
        rpassword::prompt_password("The same passphrase again: ")
            .context("reading the passphrase")?,
    );
    if !first.matches(&again) {
        bail!("the two passphrases differ");
    }
    if first.is_empty() {
        bail!("the passphrase must not be empty");
    }
    Ok(first)
}

/// Runs one command: through the daemon when one runs for this client,
/// else with a client of its own for the command's length.
pub(crate) async fn run(home: Option<PathBuf>, command: Command) -> Result<()> {
    let home = home_dir(home)?;
    let request = match command {
        Command::Init {
            network,
            name,
            provider,
        } => return init(&home, &network, &name, provider.as_deref()).await,
        Command::Daemon => return online(&home, false).await,
        Command::Passphrase => return change_passphrase(&home).await,
        Command::Stop => {
            return match daemon::connect(&home).await {
                Some(stream) => daemon::forward(stream, &Request::Stop).await,
                None => {
                    eprintln!("no murmur daemon runs for {}", home.display());
                    Ok(())
                }
            };
        }
        Command::Status => Request::Status,
        Command::Invite { name } => Request::Invite { name },
        Command::Accept { invitation, name } => Request::Accept { invitation, name },
        Command::Contacts => Request::Contacts,
        Command::SafetyNumber { contact } => Request::SafetyNumber { contact },
        Command::Send {
            contact,
            text,
            file,
            timeout,
        } => {
            // Check what can be checked before going online; the daemon
            // reads the file, so give it a path that does not depend on
            // this shell's working directory.
            let file = match file {
                Some(path) => {
                    let meta = std::fs::metadata(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    if !meta.is_file() {
                        bail!("{} is not a regular file", path.display());
                    }
                    Some(
                        std::path::absolute(&path)
                            .with_context(|| format!("cannot resolve {}", path.display()))?,
                    )
                }
                None => None,
            };
            Request::Send {
                contact,
                text,
                file,
                timeout_secs: timeout,
            }
        }
        Command::Inbox { all } => Request::Inbox { all },
        Command::Watch => Request::Watch,
        Command::Devnet { .. } | Command::Demo { .. } => {
            bail!("devnet and demo are not client commands")
        }
    };
    if let Some(stream) = daemon::connect(&home).await {
        return daemon::forward(stream, &request).await;
    }
    match request {
        Request::Status => {
            println!("offline: no murmur daemon runs for {}", home.display());
            Ok(())
        }
        Request::Watch => online(&home, true).await,
        request => {
            let session = Session::open(&home).await?;
            let result = exec(&session.client, request, &Out::Local).await;
            session.close().await;
            result
        }
    }
}

/// Stays online until Ctrl-C, SIGTERM or `murmur stop`, serving the other
/// commands on the local socket; with `watch`, also prints mail as it
/// arrives.
async fn online(home: &Path, watch: bool) -> Result<()> {
    if let Some(stream) = daemon::connect(home).await {
        drop(stream);
        bail!(
            "a murmur daemon already runs for {} (murmur --home {} stop)",
            home.display(),
            home.display()
        );
    }
    let session = Session::open(home).await?;
    let socket = match daemon::Socket::bind(home).await {
        Ok(s) => s,
        Err(e) => {
            session.close().await;
            return Err(e);
        }
    };
    let Session { client, shutdown } = session;
    let client = Arc::new(client);
    let stop = CancellationToken::new();
    let server = tokio::spawn(daemon::serve(socket, client.clone(), stop.clone()));
    let signals = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminated => {}
                _ = stop.cancelled() => {}
            }
            stop.cancel();
        })
    };
    eprintln!(
        "online as {:?}: cover traffic and retrieval run; other murmur commands use this          client (murmur --home {} stop, or Ctrl-C, to stop)",
        client.name(),
        home.display()
    );
    let result = if watch {
        tokio::select! {
            r = exec(&client, Request::Watch, &Out::Local) => r,
            _ = stop.cancelled() => Ok(()),
        }
    } else {
        stop.cancelled().await;
        Ok(())
    };
    stop.cancel();
    let _ = server.await;
    signals.abort();
    match Arc::try_unwrap(client) {
        Ok(client) => client.shutdown().await,
        // A connection task still holds it: dropping cancels its tasks.
        Err(client) => drop(client),
    }
    shutdown.cancel();
    result
}

/// Changes the client's passphrase, offline.
async fn change_passphrase(home: &Path) -> Result<()> {
    if daemon::connect(home).await.is_some() {
        bail!(
            "a murmur daemon runs for {}: stop it first (murmur --home {} stop)",
            home.display(),
            home.display()
        );
    }
    if !Client::exists(home) {
        bail!("no Murmur client in {}", home.display());
    }
    let old = passphrase(home, false)?;
    let new = match std::env::var_os(NEW_PASSPHRASE_VAR) {
        Some(value) => {
            let value = value
                .into_string()
                .map_err(|_| anyhow!("{NEW_PASSPHRASE_VAR} is not valid UTF-8"))?;
            if value.is_empty() {
                bail!("the passphrase must not be empty");
            }
            Passphrase::new(value)
        }
        None => ask_new_passphrase(home)?,
    };
    Client::change_passphrase(home, &old, &new).await?;
    println!(
        "the passphrase of the client in {} is changed",
        home.display()
    );
    Ok(())
}

/// Runs one client command against an open client, writing to `out`.
pub(crate) async fn exec(client: &Client, request: Request, out: &Out) -> Result<()> {
    match request {
        Request::Status => status(client, out),
        Request::Invite { name } => {
            let text = client.invite(name.as_deref()).await?;
            out.line(text);
            out.note(
                "Give this invitation to your contact over a channel you trust; \
                 anyone who has it can write to you. Compare safety numbers once they accept.",
            );
            Ok(())
        }
        Request::Accept { invitation, name } => {
            let contact = client.accept(&invitation, name.as_deref()).await?;
            // Stay until the hello is delivered, so the inviter learns of us.
            out.note(format!(
                "accepted; telling {} through the mixnet...",
                display::clean(&contact)
            ));
            tokio::select! {
                _ = wait_outbox(client, Duration::from_secs(120)) => {}
                _ = out.gone() => {}
            }
            let number = client.safety_number(&contact)?;
            out.line(format!(
                "{} is now a contact. Safety number:\n{number}",
                display::clean(&contact)
            ));
            Ok(())
        }
        Request::Contacts => {
            let contacts = client.contacts()?;
            if contacts.is_empty() {
                out.line("no contacts yet (murmur invite / murmur accept)");
            }
            for c in contacts {
                let state = if c.established {
                    "established"
                } else {
                    "invited, waiting for them to accept"
                };
                out.line(format!("{}\t{state}", display::clean(&c.name)));
            }
            Ok(())
        }
        Request::SafetyNumber { contact } => {
            out.line(client.safety_number(&contact)?);
            Ok(())
        }
        Request::Send {
            contact,
            text,
            file,
            timeout_secs,
        } => {
            send(
                client,
                &contact,
                text,
                file,
                Duration::from_secs(timeout_secs),
                out,
            )
            .await
        }
        Request::Inbox { all } => inbox(client, all, out).await,
        Request::Watch => watch(client, out).await,
        Request::Stop => bail!("no murmur daemon to stop"),
    }
}

fn status(client: &Client, out: &Out) -> Result<()> {
    let stats = client.stats();
    out.line(format!("online as {:?}", client.name()));
    out.line(format!("mailbox provider: {}", client.home_provider()));
    out.line(format!("contacts: {}", client.contacts()?.len()));
    out.line(format!(
        "outbox: {} message(s), {} packet(s) in flight",
        client.outbox_pending()?,
        client.pending_packets()
    ));
    out.line(format!(
        "sent: {} real, {} retransmitted, {} drop cover, {} loop cover ({} returned)",
        stats.real_sent,
        stats.retransmissions,
        stats.drop_cover_sent,
        stats.loop_cover_sent,
        stats.loops_returned
    ));
    out.line(format!("received: {} message(s)", stats.delivered));
    Ok(())
}

/// A started client and what keeps its consensus fresh.
struct Session {
    client: Client,
    shutdown: CancellationToken,
}

impl Session {
    async fn open(home: &Path) -> Result<Self> {
        if !Client::exists(home) {
            bail!(
                "no Murmur client in {} (run `murmur --home {} init --network FILE` first)",
                home.display(),
                home.display()
            );
        }
        let passphrase = passphrase(home, false)?;
        let network = NetworkConfig::load(&home.join(NETWORK_FILE))?;
        let shutdown = CancellationToken::new();
        let consensus = follow(&network, CONSENSUS_WAIT, shutdown.clone()).await?;
        let client = Client::open(home, consensus, ClientOptions::default(), &passphrase).await?;
        Ok(Self { client, shutdown })
    }

    async fn close(self) {
        self.client.shutdown().await;
        self.shutdown.cancel();
    }
}

async fn init(home: &Path, network_file: &Path, name: &str, provider: Option<&str>) -> Result<()> {
    if Client::exists(home) {
        bail!("a Murmur client already exists in {}", home.display());
    }
    let network = NetworkConfig::load(network_file)?;
    let provider: Option<NodeId> = provider
        .map(|p| p.parse().with_context(|| format!("--provider {p:?}")))
        .transpose()?;
    let passphrase = passphrase(home, true)?;
    let shutdown = CancellationToken::new();
    let consensus: Arc<dyn ConsensusSource> = follow(&network, CONSENSUS_WAIT, shutdown.clone())
        .await
        .context("cannot reach the network's directory")?;
    let client = Client::create(
        home,
        name,
        consensus,
        provider,
        ClientOptions::default(),
        &passphrase,
    )
    .await;
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            shutdown.cancel();
            return Err(e.into());
        }
    };
    let written = std::fs::write(home.join(NETWORK_FILE), network.to_toml())
        .with_context(|| format!("writing {}", home.join(NETWORK_FILE).display()));
    println!(
        "Murmur client created in {} (name {:?}, mailbox provider {}).",
        home.display(),
        client.name(),
        client.home_provider()
    );
    client.shutdown().await;
    shutdown.cancel();
    written
}

/// Waits until nothing is left in the outbox (or `limit` passes).
async fn wait_outbox(client: &Client, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if client.pending_packets() == 0 && client.outbox_pending().unwrap_or(0) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn send(
    client: &Client,
    contact: &str,
    text: Option<String>,
    file: Option<PathBuf>,
    timeout: Duration,
    out: &Out,
) -> Result<()> {
    let handle = match (&text, &file) {
        (Some(t), None) => client.send_text(contact, t).await?,
        (None, Some(p)) => client.send_file(contact, p).await?,
        _ => bail!("give either a text or --file PATH"),
    };
    let total = handle.progress().total;
    out.note(format!(
        "queued in {total} packet(s); sending through the mixnet..."
    ));
    tokio::select! {
        delivered = tokio::time::timeout(timeout, handle.delivered()) => match delivered {
            Ok(Ok(_)) => {
                out.line(format!("delivered to {}'s mailbox", display::clean(contact)));
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!(
                "not delivered within {}s; the message stays queued and is sent the next time \
                 this client runs (send, inbox, watch or daemon)",
                timeout.as_secs()
            ),
        },
        // The CLI that asked went away; the message stays queued.
        _ = out.gone() => Ok(()),
    }
}

/// Prints one received message; saves files under the client's files dir.
fn show(files_dir: &Path, r: &Received, out: &Out) -> Result<()> {
    let when = display::time(r.sent_at_ms);
    let from = display::clean(&r.from);
    match &r.body {
        Body::Text(t) => out.line(format!("[{when}] {from}: {}", display::text(t))),
        Body::File { name, data } => {
            let path = save_file(files_dir, &r.from, name, data)?;
            out.line(format!(
                "[{when}] {from}: file \"{}\" ({} bytes) saved to {}",
                display::clean(name),
                data.len(),
                display::clean(&path.display().to_string())
            ));
        }
        Body::Hello { .. } => out.line(format!("[{when}] {from} accepted your invitation")),
    }
    Ok(())
}

/// The longest file or folder name written for a received file, bytes
/// (file systems allow 255; room is left for " (2)").
const MAX_FILE_NAME: usize = 128;

/// A name a contact chose, made into one path component: separators,
/// control and bidi characters replaced, cut to [`MAX_FILE_NAME`] bytes.
fn file_name(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c == '/' || c == '\\' || display::is_unsafe(c) {
            '_'
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_FILE_NAME {
            break;
        }
        out.push(c);
    }
    match out.as_str() {
        "" | "." | ".." => "file".into(),
        _ => out,
    }
}

/// Saves `data` as `dir/<from>/<name>` without overwriting: `name (2)`, ...
fn save_file(dir: &Path, from: &str, name: &str, data: &[u8]) -> Result<PathBuf> {
    use std::io::Write;
    let folder = dir.join(file_name(from));
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let base = file_name(name);
    let mut n = 1;
    loop {
        let path = match n {
            1 => folder.join(&base),
            n => folder.join(format!("{base} ({n})")),
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                file.write_all(data)
                    .and_then(|()| file.sync_all())
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
            Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
        }
    }
}

/// Shows messages and marks them read; one that cannot be shown (its file
/// cannot be saved) stays unread, with a warning, and the rest go on.
fn show_all<'a>(
    client: &Client,
    messages: impl IntoIterator<Item = (u64, &'a Received)>,
    out: &Out,
) -> Result<()> {
    let mut seqs = Vec::new();
    for (seq, r) in messages {
        match show(client.files_dir(), r, out) {
            Ok(()) => seqs.push(seq),
            Err(e) => out.note(format!("warning: a message stays unread: {e:#}")),
        }
    }
    client.mark_read(&seqs)?;
    Ok(())
}

async fn inbox(client: &Client, all: bool, out: &Out) -> Result<()> {
    if let Err(e) = client.fetch_now().await {
        out.note(format!("warning: could not fetch everything: {e}"));
    }
    let messages = client.inbox(!all)?;
    if messages.is_empty() {
        out.line("no new messages");
    }
    show_all(client, messages.iter().map(|(seq, r)| (*seq, r)), out)
}

async fn watch(client: &Client, out: &Out) -> Result<()> {
    let mut incoming = client.incoming();
    out.note(format!(
        "online as {:?}; waiting for messages (Ctrl-C to stop)",
        client.name()
    ));
    let backlog = client.inbox(true)?;
    show_all(client, backlog.iter().map(|(seq, r)| (*seq, r)), out)?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = out.gone() => return Ok(()),
            m = incoming.next() => match m {
                Some(m) => show_all(client, [(m.seq, &m.message)], out)?,
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hostile_file_names_stay_one_short_component() {
        assert_eq!(
            file_name("../../.ssh/authorized_keys"),
            ".._.._.ssh_authorized_keys"
        );
        assert_eq!(file_name(".."), "file");
        assert_eq!(file_name(""), "file");
        assert_eq!(file_name("a\u{1b}[2Jb\u{202e}c"), "a_[2Jb_c");
        let long = "é".repeat(1000);
        let cut = file_name(&long);
        assert!(cut.len() <= MAX_FILE_NAME && cut.len() >= MAX_FILE_NAME - 1);
    }

    #[test]
    fn a_received_file_never_overwrites_and_long_names_save() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(10_000);
        let first = save_file(dir.path(), "bob", &long, b"one").unwrap();
        let second = save_file(dir.path(), "bob", &long, b"two").unwrap();
        assert_ne!(first, second);
        assert_eq!(std::fs::read(&first).unwrap(), b"one");
        assert_eq!(std::fs::read(&second).unwrap(), b"two");
        assert!(second.to_str().unwrap().ends_with(" (2)"));
    }
}
