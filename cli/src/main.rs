//! `murmur`: send and receive messages through the Murmur mixnet, run a
//! whole network on this machine (`devnet`), or watch one carry messages
//! (`demo`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod daemon;
mod display;

use murmur::{demo, devnet};

/// Anonymous, asynchronous messaging through the Murmur mixnet.
#[derive(Debug, Parser)]
#[command(name = "murmur", version, about, long_about = None)]
struct Cli {
    /// The client's home directory (keys, contacts, mail).
    /// Default: $MURMUR_HOME, else ~/.murmur.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,

    /// More log output (repeat for more); logs go to stderr.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a client: an identity, and queues at a mailbox provider.
    Init {
        /// The network's client config (e.g. the client.toml `murmur devnet` writes).
        #[arg(long, value_name = "FILE")]
        network: PathBuf,
        /// The name you suggest for yourself in invitations.
        #[arg(long, default_value = "me")]
        name: String,
        /// The mailbox provider to use (node id); default: one at random.
        #[arg(long, value_name = "NODE_ID")]
        provider: Option<String>,
    },
    /// Creates an invitation to hand to a new contact out of band.
    Invite {
        /// Your local name for the contact (default: the name they suggest).
        #[arg(long)]
        name: Option<String>,
    },
    /// Accepts a contact's invitation.
    Accept {
        /// The invitation string (murmur-invite:...).
        invitation: String,
        /// Your local name for the contact (default: the name they suggest).
        #[arg(long)]
        name: Option<String>,
    },
    /// Lists contacts.
    Contacts,
    /// Shows the safety number of a contact, to compare out of band.
    SafetyNumber {
        /// The contact.
        contact: String,
    },
    /// Sends a text or a file and waits until it is delivered.
    Send {
        /// The contact.
        contact: String,
        /// The text to send.
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        text: Option<String>,
        /// Send this file instead of a text.
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
        /// Give up waiting after this many seconds (the message stays queued
        /// and is sent the next time the client runs).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Fetches new mail and prints it; received files are saved.
    Inbox {
        /// Print all mail, not only what is new.
        #[arg(long)]
        all: bool,
    },
    /// Stays online (sending cover traffic) and prints messages as they
    /// arrive; while it runs, other commands use it as they would a daemon.
    /// With a daemon running, prints the daemon's mail as it arrives.
    Watch,
    /// Stays online in the background of your session: cover traffic,
    /// retrieval and retransmissions keep running, and the other commands
    /// (send, inbox, ...) use this client through a local socket instead of
    /// going online for their own length.
    Daemon,
    /// Shows whether the client is online (a daemon runs) and what it does.
    Status,
    /// Stops the client's daemon.
    Stop,
    /// Changes the passphrase that encrypts the client's files (asks for
    /// the current one, then the new one twice; or reads $MURMUR_PASSPHRASE
    /// and $MURMUR_NEW_PASSPHRASE). Stop the daemon first.
    Passphrase,
    /// Runs a whole network on this machine, in one process, until Ctrl-C:
    /// directory authorities, three layers of mix nodes, mailbox providers.
    Devnet {
        /// Where the network keeps its keys and data; `DIR/client.toml` is
        /// the file to give `murmur init --network`. Starting again in the
        /// same folder brings the same network back.
        #[arg(long, value_name = "DIR", default_value = "murmur-devnet")]
        dir: std::path::PathBuf,
        #[command(flatten)]
        net: NetArgs,
    },
    /// Shows Murmur working: starts a network in a temporary folder, makes
    /// two clients contacts, sends messages and a file each way, and prints
    /// what arrived.
    Demo {
        /// Text messages each way.
        #[arg(long, default_value_t = 10)]
        messages: usize,
        /// Size of the file sent each way, bytes (0: none).
        #[arg(long, default_value_t = 1_200_000)]
        file_size: usize,
        /// Stop one mix node while messages are in flight (retransmission).
        #[arg(long)]
        kill_mix: bool,
        /// Print one JSON object instead of the summary.
        #[arg(long)]
        json: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// How often the clients poll their mailboxes, ms.
        #[arg(long, default_value_t = 50)]
        fetch_interval_ms: u64,
        /// Pause between one text each way and the next, ms (0: all at once).
        #[arg(long, default_value_t = 0)]
        message_interval_ms: u64,
        #[command(flatten)]
        net: NetArgs,
    },
}

/// Network parameters of a devnet.
#[derive(Debug, clap::Args)]
struct NetArgs {
    /// Epoch length, seconds.
    #[arg(long, default_value_t = 600)]
    epoch_secs: u64,
    /// Mean per-hop delay, ms (exponential).
    #[arg(long, default_value_t = 50)]
    mean_delay_ms: u64,
    /// Largest per-hop delay nodes accept, ms.
    #[arg(long, default_value_t = 2000)]
    max_delay_ms: u64,
    /// λ: each client's send stream (real or drop cover), packets/s.
    #[arg(long, default_value_t = 50.0)]
    client_rate: f64,
    /// λ_L: each client's loop cover, packets/s.
    #[arg(long, default_value_t = 2.0)]
    loop_rate: f64,
    /// Each mix node's loop cover, packets/s.
    #[arg(long, default_value_t = 0.5)]
    mix_loop_rate: f64,
    /// No cover traffic at all: real packets are sent as soon as they are
    /// queued (overrides the rates).
    #[arg(long)]
    no_cover: bool,
    /// Mix nodes per layer.
    #[arg(long, default_value_t = 3)]
    width: usize,
}

impl NetArgs {
    fn options(&self, dir: std::path::PathBuf) -> devnet::DevnetOptions {
        let (client_rate, loop_rate, mix_loop_rate) = if self.no_cover {
            (0.0, 0.0, 0.0)
        } else {
            (self.client_rate, self.loop_rate, self.mix_loop_rate)
        };
        devnet::DevnetOptions {
            dir,
            width: self.width,
            epoch_secs: self.epoch_secs,
            mean_delay_ms: self.mean_delay_ms,
            max_delay_ms: self.max_delay_ms,
            client_rate,
            client_loop_rate: loop_rate,
            mix_loop_rate,
            ..devnet::DevnetOptions::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MURMUR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Cli { home, command, .. } = cli;
    let work = async move {
        match command {
            Command::Devnet { dir, net } => devnet::run(net.options(dir)).await,
            Command::Demo {
                messages,
                file_size,
                kill_mix,
                json,
                timeout,
                fetch_interval_ms,
                message_interval_ms,
                net,
            } => demo::run(demo::DemoOptions {
                messages,
                file_size,
                kill_mix,
                json,
                timeout: std::time::Duration::from_secs(timeout),
                fetch_interval: std::time::Duration::from_millis(fetch_interval_ms.max(1)),
                message_interval: std::time::Duration::from_millis(message_interval_ms),
                net: net.options(std::path::PathBuf::new()),
            })
            .await
            .map(|_| ()),
            other => commands::run(home, other).await,
        }
    };
    match runtime.block_on(work) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
