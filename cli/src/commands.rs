//! The user commands: init, invite, accept, contacts, safety-number, send,
//! inbox, watch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use murmur_client::network::{NetworkConfig, follow};
use murmur_client::{Body, Client, ClientOptions, ConsensusSource, Passphrase, Received};
use murmur_wire::NodeId;
use tokio_util::sync::CancellationToken;

use crate::Command;

const NETWORK_FILE: &str = "network.toml";
/// The environment variable a passphrase may come from.
const PASSPHRASE_VAR: &str = "MURMUR_PASSPHRASE";
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
    } else if std::io::stdin().is_terminal() {
        let prompt = if new {
            format!(
                "New passphrase for the client in {} (it encrypts the client's files): ",
                home.display()
            )
        } else {
            format!("Passphrase for the client in {}: ", home.display())
        };
        let first =
            Passphrase::new(rpassword::prompt_password(prompt).context("reading the passphrase")?);
        if new {
            let again = Passphrase::new(
                rpassword::prompt_password("The same passphrase again: ")
                    .context("reading the passphrase")?,
            );
            if !first.matches(&again) {
                bail!("the two passphrases differ; nothing was created");
            }
        }
        first
    } else {
        bail!(
            "the client's files are encrypted with a passphrase: set {PASSPHRASE_VAR}, \
             or run murmur in a terminal to be asked for it"
        );
    };
    if new && passphrase.is_empty() {
        bail!("the passphrase must not be empty");
    }
    Ok(passphrase)
}

/// Runs one command.
pub(crate) async fn run(home: Option<PathBuf>, command: Command) -> Result<()> {
    let home = home_dir(home)?;
    match command {
        Command::Init {
            network,
            name,
            provider,
        } => init(&home, &network, &name, provider.as_deref()).await,
        Command::Invite { name } => {
            let session = Session::open(&home).await?;
            let text = session.client.invite(name.as_deref()).await;
            session.close().await;
            let text = text?;
            println!("{text}");
            eprintln!(
                "Give this invitation to your contact over a channel you trust; \
                 anyone who has it can write to you. Compare safety numbers once they accept."
            );
            Ok(())
        }
        Command::Accept { invitation, name } => {
            let session = Session::open(&home).await?;
            let result = session.client.accept(&invitation, name.as_deref()).await;
            let result = match result {
                Ok(contact) => {
                    // Stay until the hello is delivered, so the inviter learns of us.
                    eprintln!("accepted; telling {contact} through the mixnet...");
                    wait_outbox(&session.client, Duration::from_secs(120)).await;
                    let number = session.client.safety_number(&contact)?;
                    println!("{contact} is now a contact. Safety number:\n{number}");
                    Ok(())
                }
                Err(e) => Err(e.into()),
            };
            session.close().await;
            result
        }
        Command::Contacts => {
            let client_home = &home;
            let session = Session::open(client_home).await?;
            let contacts = session.client.contacts();
            session.close().await;
            let contacts = contacts?;
            if contacts.is_empty() {
                println!("no contacts yet (murmur invite / murmur accept)");
            }
            for c in contacts {
                let state = if c.established {
                    "established"
                } else {
                    "invited, waiting for them to accept"
                };
                println!("{}\t{state}", c.name);
            }
            Ok(())
        }
        Command::SafetyNumber { contact } => {
            let session = Session::open(&home).await?;
            let number = session.client.safety_number(&contact);
            session.close().await;
            println!("{}", number?);
            Ok(())
        }
        Command::Send {
            contact,
            text,
            file,
            timeout,
        } => send(&home, &contact, text, file, Duration::from_secs(timeout)).await,
        Command::Inbox { all } => inbox(&home, all).await,
        Command::Watch => watch(&home).await,
        Command::Devnet { .. } | Command::Demo { .. } => {
            bail!("devnet and demo are not client commands")
        }
    }
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
    home: &Path,
    contact: &str,
    text: Option<String>,
    file: Option<PathBuf>,
    timeout: Duration,
) -> Result<()> {
    // Check what can be checked before going online.
    if let Some(path) = &file {
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
    }
    let session = Session::open(home).await?;
    let result = async {
        let handle = match (&text, &file) {
            (Some(t), None) => session.client.send_text(contact, t).await?,
            (None, Some(p)) => session.client.send_file(contact, p).await?,
            _ => bail!("give either a text or --file PATH"),
        };
        let total = handle.progress().total;
        eprintln!("queued in {total} packet(s); sending through the mixnet...");
        match tokio::time::timeout(timeout, handle.delivered()).await {
            Ok(Ok(_)) => {
                println!("delivered to {contact}'s mailbox");
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!(
                "not delivered within {}s; the message stays queued and is sent the next time \
                 this client runs (send, inbox or watch)",
                timeout.as_secs()
            ),
        }
    }
    .await;
    session.close().await;
    result
}

fn format_time(ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Prints one received message; saves files under the client's files dir.
fn show(files_dir: &Path, r: &Received) -> Result<()> {
    let when = format_time(r.sent_at_ms);
    match &r.body {
        Body::Text(t) => println!("[{when}] {}: {t}", r.from),
        Body::File { name, data } => {
            let path = save_file(files_dir, &r.from, name, data)?;
            println!(
                "[{when}] {}: file {name:?} ({} bytes) saved to {}",
                r.from,
                data.len(),
                path.display()
            );
        }
        Body::Hello { .. } => println!("[{when}] {} accepted your invitation", r.from),
    }
    Ok(())
}

/// Saves `data` as `dir/<from>/<name>` without overwriting: `name (2)`, ...
/// Names are reduced to their last path component.
fn save_file(dir: &Path, from: &str, name: &str, data: &[u8]) -> Result<PathBuf> {
    let safe = |s: &str| -> String {
        let s: String = s
            .chars()
            .map(|c| {
                if c == '/' || c == '\\' || c.is_control() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        match s.as_str() {
            "" | "." | ".." => "file".into(),
            _ => s,
        }
    };
    let folder = dir.join(safe(from));
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let base = safe(name);
    let mut path = folder.join(&base);
    let mut n = 2;
    while path.exists() {
        path = folder.join(format!("{base} ({n})"));
        n += 1;
    }
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn inbox(home: &Path, all: bool) -> Result<()> {
    let session = Session::open(home).await?;
    let result = async {
        let fetched = session.client.fetch_now().await;
        if let Err(e) = &fetched {
            eprintln!("warning: could not fetch everything: {e}");
        }
        let messages = session.client.inbox(!all)?;
        if messages.is_empty() {
            println!("no new messages");
        }
        let mut seqs = Vec::new();
        for (seq, r) in &messages {
            show(session.client.files_dir(), r)?;
            seqs.push(*seq);
        }
        session.client.mark_read(&seqs)?;
        Ok(())
    }
    .await;
    session.close().await;
    result
}

async fn watch(home: &Path) -> Result<()> {
    let session = Session::open(home).await?;
    let mut incoming = session.client.incoming();
    eprintln!(
        "online as {:?}; waiting for messages (Ctrl-C to stop)",
        session.client.name()
    );
    let backlog = session.client.inbox(true)?;
    let mut seqs = Vec::new();
    for (seq, r) in &backlog {
        show(session.client.files_dir(), r)?;
        seqs.push(*seq);
    }
    session.client.mark_read(&seqs)?;
    let result = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            m = incoming.next() => match m {
                Some(m) => {
                    if let Err(e) = show(session.client.files_dir(), &m.message) {
                        break Err(e);
                    }
                    session.client.mark_read(&[m.seq])?;
                }
                None => break Ok(()),
            },
        }
    };
    session.close().await;
    result
}
