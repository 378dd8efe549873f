//! `murmur-directory`: the directory authority daemon.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use murmur_directory::admission::AdmissionList;
use murmur_directory::config::{AdmissionMode, example_config};
use murmur_directory::{AuthorityConfig, start_authority};
use murmur_net::clock::SystemClock;
use murmur_net::keyfile;
use murmur_wire::IdentityKey;
use murmur_wire::ed25519_dalek::SigningKey;
use tokio_util::sync::CancellationToken;

/// Murmur directory authority: collects node descriptors, agrees on a
/// threshold-signed consensus per epoch with its peers, and serves it.
#[derive(Parser)]
#[command(name = "murmur-directory", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented configuration (directory.toml) and a fresh
    /// authority key (authority.key, mode 0600) into DIR, and print the
    /// public key to give to the other authorities and to clients.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// HTTP address to put in the configuration.
        #[arg(long, default_value = "127.0.0.1:8700")]
        listen: SocketAddr,
        /// Overwrite an existing configuration. An existing authority key
        /// is kept (see --new-identity).
        #[arg(long)]
        force: bool,
        /// Replace an existing authority key with a new one, and say which
        /// public key it replaced. Peers and clients pin the old key: they
        /// must be given the new one.
        #[arg(long)]
        new_identity: bool,
    },
    /// Run the authority until SIGINT or SIGTERM.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the authority's public key (base58) from its configuration.
    PublicKey {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Admit node identity keys (base58, as `murmur-mixnode init` and
    /// `murmur-mailbox init` print them): writes the admission list
    /// (`admission.list_file`), signed with the authority key. A running
    /// authority picks the change up within a second.
    Admit {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// A note kept with the keys (who runs the node, ...).
        #[arg(long, default_value = "")]
        note: String,
        /// The node identity keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Revoke admitted node identity keys: the running authority forgets
    /// their descriptors and no longer votes for them.
    Revoke {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The node identity keys.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// List the admitted node identity keys (list file and configuration).
    Admitted {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init {
            dir,
            listen,
            force,
            new_identity,
        } => init(&dir, listen, force, new_identity),
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .init();
            let rt = tokio::runtime::Runtime::new().context("could not start the runtime")?;
            rt.block_on(run(&config))
        }
        Command::PublicKey { config } => {
            let cfg = AuthorityConfig::load(&config)?;
            let key = load_key(&cfg.key_file)?;
            println!("{}", IdentityKey::from(&key.verifying_key()));
            Ok(())
        }
        Command::Admit { config, note, keys } => edit_admission(&config, &keys, |list, key| {
            if list.admit(key, &note) {
                println!("admitted {key}");
            } else {
                println!("{key} was already admitted");
            }
        }),
        Command::Revoke { config, keys } => edit_admission(&config, &keys, |list, key| {
            if list.revoke(&key) {
                println!("revoked {key}");
            } else {
                println!("{key} was not admitted (by the list file)");
            }
        }),
        Command::Admitted { config } => {
            let cfg = AuthorityConfig::load(&config)?;
            let key = load_key(&cfg.key_file)?;
            let me = IdentityKey::from(&key.verifying_key());
            let list = AdmissionList::load(&cfg.admission.list_file, &me)?;
            println!(
                "mode {:?}; {} admitted in {}:",
                cfg.admission.mode,
                list.len(),
                cfg.admission.list_file.display()
            );
            for (k, note) in list.iter() {
                println!("  {k} {note}");
            }
            println!(
                "{} admitted in the configuration (admission.nodes):",
                cfg.admission.nodes.len()
            );
            for k in cfg.admission.node_keys()? {
                println!("  {k}");
            }
            Ok(())
        }
    }
}

/// Loads the signed admission list of the authority configured in
/// `config_path`, applies `edit` to each of `keys`, signs it again and
/// writes it atomically.
fn edit_admission(
    config_path: &Path,
    keys: &[String],
    mut edit: impl FnMut(&mut AdmissionList, IdentityKey),
) -> anyhow::Result<()> {
    let cfg = AuthorityConfig::load(config_path)?;
    let key = load_key(&cfg.key_file)?;
    let me = IdentityKey::from(&key.verifying_key());
    let parsed = keys
        .iter()
        .map(|k| {
            IdentityKey::from_base58(k)
                .with_context(|| format!("{k} is not a base58 node identity key"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let path = &cfg.admission.list_file;
    let mut list = AdmissionList::load(path, &me)?;
    for k in parsed {
        edit(&mut list, k);
    }
    list.save(path, &key)?;
    println!("{} node(s) admitted in {}", list.len(), path.display());
    if cfg.admission.mode == AdmissionMode::Open {
        println!(
            "note: admission.mode is \"open\": the list exempts nodes from the per-address limits"
        );
    }
    Ok(())
}

fn init(dir: &Path, listen: SocketAddr, force: bool, new_identity: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let config_path = dir.join("directory.toml");
    let key_path = dir.join("authority.key");
    if !force && config_path.exists() {
        bail!(
            "{} already exists; pass --force to overwrite it (the authority key is kept)",
            config_path.display()
        );
    }
    let identity = keyfile::init_identity(&key_path, new_identity)?;
    println!("{}", identity.describe(&key_path));
    let text = example_config(listen, "data", "authority.key");
    std::fs::write(&config_path, text)
        .with_context(|| format!("could not write {}", config_path.display()))?;
    let public = IdentityKey::from(&identity.key().verifying_key());
    println!("wrote {}", config_path.display());
    println!("authority public key: {public}");
    println!("peers list this authority as:");
    println!("  [[peers]]\n  addr = \"{listen}\"\n  key = \"{public}\"");
    println!(
        "nodes are listed only once admitted: murmur-directory admit --config {} <node identity key>",
        config_path.display()
    );
    Ok(())
}

fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    Ok(keyfile::read_signing_key(path)?)
}

async fn run(config_path: &Path) -> anyhow::Result<()> {
    let cfg = AuthorityConfig::load(config_path)?;
    let key = load_key(&cfg.key_file)?;
    let shutdown = CancellationToken::new();
    let handle = start_authority(cfg, key, Arc::new(SystemClock), shutdown.clone()).await?;
    println!("murmur-directory listening on {}", handle.addr);
    println!("authority public key: {}", handle.key);
    let _ = std::io::stdout().flush();
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    handle.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
