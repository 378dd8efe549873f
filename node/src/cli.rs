//! The `init` options both node daemons share (`murmur-mixnode init`,
//! `murmur-mailbox init`), so that they read and behave alike.

use murmur_directory::AuthorityPin;

/// The directory and identity options of a node daemon's `init`; flatten
/// it into the daemon's own `init` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct NodeInitArgs {
    /// A directory authority, as ADDR=BASE58KEY (repeat for each).
    #[arg(long = "authority", value_name = "ADDR=KEY")]
    pub authorities: Vec<AuthorityPin>,
    /// How many authorities must sign a consensus (0: a majority of
    /// those given).
    #[arg(long, default_value_t = 0)]
    pub threshold: usize,
    /// Overwrite an existing configuration. An existing identity key
    /// is kept (see --new-identity).
    #[arg(long)]
    pub force: bool,
    /// Replace an existing identity key with a new one, and say which
    /// public key it replaced: the node gets a new node id, which the
    /// directory operators must admit again (a provider's clients must
    /// make new queues).
    #[arg(long)]
    pub new_identity: bool,
}
