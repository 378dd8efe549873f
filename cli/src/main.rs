//! `murmur`: send and receive messages through the Murmur mixnet, run a
//! whole network on this machine (`devnet`), or watch one carry messages
//! (`demo`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

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
    /// Stays online (sending cover traffic) and prints messages as they arrive.
    Watch,
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
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
