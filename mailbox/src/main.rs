//! `murmur-mailbox`: the mailbox provider daemon.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use murmur_directory::clock::SystemClock;
use murmur_mailbox::{Config, init_dir, load_identity, start_mailbox};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Murmur mailbox provider: holds opaque per-contact queues for people who
/// are offline and serves them to their owners.
#[derive(Parser, Debug)]
#[command(name = "murmur-mailbox", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Writes DIR/mailbox.toml (every option, commented) and a new identity
    /// key DIR/identity.key. Refuses to overwrite existing files.
    Init {
        /// Directory to create the files in.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Runs the provider until SIGINT or SIGTERM.
    Run {
        /// The configuration file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Init { dir } => {
            let (config, node_id) =
                init_dir(&dir).with_context(|| format!("initialising {}", dir.display()))?;
            println!("wrote {} and a new identity key", config.display());
            println!("node id: {node_id}");
            Ok(())
        }
        Command::Run { config } => run(config),
    }
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let identity = load_identity(&config.identity_path())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let handle =
            start_mailbox(config, identity, Arc::new(SystemClock), shutdown.clone()).await?;
        // Tests and scripts read the bound address from stdout.
        println!("http_addr {}", handle.http_addr);
        wait_for_signal().await?;
        tracing::info!("shutting down");
        shutdown.cancel();
        handle.stopped().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
