//! Who may be listed: the admission policy an authority applies to node
//! descriptors before it keeps them, and the reachability probe it runs
//! before it votes for them.
//!
//! * **Allow-list** (the default): only node identity keys the authority's
//!   operator admitted. The list is a text file that
//!   `murmur-directory admit` / `revoke` write and sign with the authority's
//!   own key ([`AdmissionList`]); a file changed by anything else does not
//!   verify and is refused (at start: the authority does not start; while
//!   running: the previous list stays in force). Keys can also be listed in
//!   the configuration (`admission.nodes`), which is what in-process callers
//!   such as `murmur devnet` use.
//! * **Open**: any node, but at most `max_per_address` live identities per
//!   packet-address host (an IPv4 address, an IPv6 /64) and
//!   `max_per_subnet` per subnet (IPv4 /24, IPv6 /48), and — unless
//!   `allow_private_addresses` — only globally routable packet addresses
//!   (so that the probe cannot be pointed at the authority's own network).
//!
//! Whatever the mode, a descriptor is voted for only after a
//! [`ReachabilityProbe`] reached its packet address. The default,
//! [`LinkHandshakeProbe`], completes a link handshake there
//! (`docs/protocol.md` §4) expecting the descriptor's link key: the node
//! is reachable *and* holds that key, so nobody can get another node's
//! link key listed as theirs. [`TcpConnectProbe`] only connects.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use murmur_wire::LinkPublicKey;
use murmur_wire::link::Purpose;

use murmur_wire::IdentityKey;
use murmur_wire::ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::Error;

/// Domain separation of the list's signature.
const LIST_CONTEXT: &[u8] = b"murmur/admission-list/v1\0";
const SIGNATURE_PREFIX: &str = "signature ";
const NODE_PREFIX: &str = "node ";
/// Largest list file read (about 20 000 entries with notes).
pub const MAX_LIST_FILE: u64 = 4 << 20;
/// Longest note kept with an entry, characters.
pub const MAX_NOTE: usize = 200;

/// The node identity keys an authority's operator admitted, as
/// `murmur-directory admit` writes them: one `node <base58 key> [note]` line
/// each, then a `signature` line — the authority's Ed25519 signature over
/// every byte before it — so that an edit by anything but the authority's
/// key holder is detected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdmissionList {
    nodes: BTreeMap<IdentityKey, String>,
}

impl AdmissionList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads and verifies the list at `path` under `authority` (the key of
    /// the authority that signed it). A missing file is an empty list.
    pub fn load(path: &Path, authority: &IdentityKey) -> Result<Self, Error> {
        let io = |source| Error::Io {
            what: "could not read the admission list",
            path: path.to_owned(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX_LIST_FILE => {
                return Err(Error::AdmissionList {
                    path: path.to_owned(),
                    reason: format!("larger than {MAX_LIST_FILE} bytes"),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(e) => return Err(io(e)),
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        Self::parse(&text, authority).map_err(|reason| Error::AdmissionList {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses and verifies a list's text.
    pub fn parse(text: &str, authority: &IdentityKey) -> Result<Self, String> {
        let Some(at) = text
            .rfind(SIGNATURE_PREFIX)
            .filter(|&at| at == 0 || text.as_bytes().get(at.wrapping_sub(1)) == Some(&b'\n'))
        else {
            return Err("no signature line: not written by `murmur-directory admit`".into());
        };
        let (body, sig_line) = text.split_at(at);
        let sig_text = sig_line[SIGNATURE_PREFIX.len()..].trim();
        let mut sig = [0u8; 64];
        match bs58::decode(sig_text).onto(&mut sig[..]) {
            Ok(64) => {}
            _ => return Err("the signature line is not a base58 signature".into()),
        }
        let key = VerifyingKey::from_bytes(&authority.0)
            .map_err(|_| "the authority key is not a valid Ed25519 key".to_owned())?;
        key.verify_strict(&signed_bytes(body), &Signature::from_bytes(&sig))
            .map_err(|_| {
                "the signature does not verify under this authority's key: the file was changed \
                 outside `murmur-directory admit`/`revoke`, or belongs to another authority"
                    .to_owned()
            })?;
        let mut nodes = BTreeMap::new();
        for (i, line) in body.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(rest) = line.strip_prefix(NODE_PREFIX) else {
                return Err(format!("line {}: expected `node <key> [note]`", i + 1));
            };
            let (key, note) = rest.split_once(' ').unwrap_or((rest, ""));
            let key = IdentityKey::from_base58(key)
                .map_err(|e| format!("line {}: node key: {e}", i + 1))?;
            nodes.insert(key, note.trim().to_owned());
        }
        Ok(Self { nodes })
    }

    /// The list's text, signed with `key`.
    pub fn to_signed_text(&self, key: &SigningKey) -> String {
        let mut body = String::from(
            "# murmur-directory: node identity keys this authority admits.\n\
             # Written by `murmur-directory admit` and `revoke` and signed with the\n\
             # authority's key: a file edited by hand no longer verifies and is refused.\n",
        );
        for (k, note) in &self.nodes {
            body.push_str(NODE_PREFIX);
            body.push_str(&k.to_base58());
            if !note.is_empty() {
                body.push(' ');
                body.push_str(note);
            }
            body.push('\n');
        }
        let sig = key.sign(&signed_bytes(&body));
        format!(
            "{body}{SIGNATURE_PREFIX}{}\n",
            bs58::encode(sig.to_bytes()).into_string()
        )
    }

    /// Signs the list with `key` and writes it to `path` atomically
    /// (temporary file, fsync, rename).
    pub fn save(&self, path: &Path, key: &SigningKey) -> Result<(), Error> {
        let io = |source| Error::Io {
            what: "could not write the admission list",
            path: path.to_owned(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(self.to_signed_text(key).as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Admits `key` (with a one-line note); false if it was admitted already
    /// (the note is then replaced if one is given).
    pub fn admit(&mut self, key: IdentityKey, note: &str) -> bool {
        let note: String = note
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(MAX_NOTE)
            .collect();
        let note = note.trim().to_owned();
        match self.nodes.get_mut(&key) {
            Some(old) => {
                if !note.is_empty() {
                    *old = note;
                }
                false
            }
            None => {
                self.nodes.insert(key, note);
                true
            }
        }
    }

    /// Revokes `key`; false if it was not admitted.
    pub fn revoke(&mut self, key: &IdentityKey) -> bool {
        self.nodes.remove(key).is_some()
    }

    /// Whether `key` is admitted.
    pub fn contains(&self, key: &IdentityKey) -> bool {
        self.nodes.contains_key(key)
    }

    /// The admitted keys and their notes.
    pub fn iter(&self) -> impl Iterator<Item = (&IdentityKey, &str)> {
        self.nodes.iter().map(|(k, n)| (k, n.as_str()))
    }

    /// How many keys are admitted.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no key is admitted.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

fn signed_bytes(body: &str) -> Vec<u8> {
    let mut msg = LIST_CONTEXT.to_vec();
    msg.extend_from_slice(body.as_bytes());
    msg
}

/// The allow-list file's identity on disk, to notice that `admit` changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileStamp(Option<(SystemTime, u64)>);

impl FileStamp {
    pub(crate) fn of(path: &Path) -> Self {
        Self(
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len())),
        )
    }
}

/// The host part of an address for the per-address limit: the IPv4
/// address, or the /64 of an IPv6 address.
pub(crate) fn host_key(ip: IpAddr) -> IpAddr {
    prefix(ip, 32, 64)
}

/// The subnet of an address for the per-subnet limit: IPv4 /24, IPv6 /48.
pub(crate) fn subnet_key(ip: IpAddr) -> IpAddr {
    prefix(ip, 24, 48)
}

fn prefix(ip: IpAddr, v4_bits: u32, v6_bits: u32) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - v4_bits).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - v6_bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` can be a node's public address: not loopback, private,
/// shared (CGN), link-local, unspecified, multicast, broadcast or reserved.
pub(crate) fn is_routable(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Checks that a node can be reached where its descriptor says, before an
/// authority votes for it.
pub trait ReachabilityProbe: Send + Sync + 'static {
    /// Probes the node whose packet address is `addr`, identity `node` and
    /// link key `link_key`. `Err` says why it is not reachable.
    fn probe(
        &self,
        node: IdentityKey,
        addr: SocketAddr,
        link_key: LinkPublicKey,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// The reachability probe the authority uses by default: a link handshake
/// to the packet address, as a client, expecting the descriptor's link
/// key, within a timeout. It completes only if the node there holds that
/// key; the link is closed at once (an inner-layer mix or a provider closes
/// a client's link after the handshake anyway).
#[derive(Clone, Copy, Debug)]
pub struct LinkHandshakeProbe {
    /// How long the connection and handshake may take.
    pub timeout: Duration,
}

impl ReachabilityProbe for LinkHandshakeProbe {
    fn probe(
        &self,
        _node: IdentityKey,
        addr: SocketAddr,
        link_key: LinkPublicKey,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let settings = murmur_net::LinkSettings {
                handshake_timeout: self.timeout,
                ..murmur_net::LinkSettings::default()
            };
            murmur_net::connect(addr, Purpose::Packets, None, &link_key, &settings)
                .await
                .map(drop)
                .map_err(|e| format!("link handshake failed: {e}"))
        })
    }
}

/// The reachability probe the authority uses by default: a TCP connection
/// to the packet address within a timeout, closed at once.
#[derive(Clone, Copy, Debug)]
pub struct TcpConnectProbe {
    /// How long a connection may take.
    pub timeout: Duration,
}

impl ReachabilityProbe for TcpConnectProbe {
    fn probe(
        &self,
        _node: IdentityKey,
        addr: SocketAddr,
        _link_key: LinkPublicKey,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_stream)) => Ok(()),
                Ok(Err(e)) => Err(format!("connection failed: {e}")),
                Err(_) => Err(format!("no connection within {:?}", self.timeout)),
            }
        })
    }
}

/// What the authority knows of a node's reachability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProbeState {
    /// The address probed.
    pub(crate) addr: SocketAddr,
    /// When the last probe finished (ms) and whether it reached the node;
    /// `None` while the first is pending.
    pub(crate) last: Option<(u64, bool)>,
    /// A probe is running.
    pub(crate) in_flight: bool,
}

impl ProbeState {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            last: None,
            in_flight: false,
        }
    }

    /// Reachable at `addr` by the last probe.
    pub(crate) fn reachable_at(&self, addr: SocketAddr) -> bool {
        self.addr == addr && matches!(self.last, Some((_, true)))
    }

    /// Whether to probe again at `now`.
    pub(crate) fn due(&self, now: u64, reprobe_ms: u64, retry_ms: u64) -> bool {
        if self.in_flight {
            return false;
        }
        match self.last {
            None => true,
            Some((at, true)) => now.saturating_sub(at) >= reprobe_ms,
            Some((at, false)) => now.saturating_sub(at) >= retry_ms,
        }
    }
}

/// The keys admitted in the configuration and in the signed list.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    pub(crate) config: BTreeSet<IdentityKey>,
    pub(crate) list: AdmissionList,
    pub(crate) stamp: Option<FileStamp>,
}

impl Admitted {
    pub(crate) fn contains(&self, key: &IdentityKey) -> bool {
        self.config.contains(key) || self.list.contains(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.config.len()
            + self
                .list
                .iter()
                .filter(|(k, _)| !self.config.contains(k))
                .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn ident(k: &SigningKey) -> IdentityKey {
        IdentityKey::from(&k.verifying_key())
    }

    #[test]
    fn a_list_round_trips_and_any_edit_is_refused() {
        let auth = key(1);
        let mut list = AdmissionList::new();
        assert!(list.admit(ident(&key(2)), "alice's mix\nsecond line"));
        assert!(list.admit(ident(&key(3)), ""));
        assert!(!list.admit(ident(&key(3)), "bob"));
        let text = list.to_signed_text(&auth);
        let back = AdmissionList::parse(&text, &ident(&auth)).unwrap();
        assert_eq!(back, list);
        assert_eq!(
            back.iter().next().map(|(_, n)| n.contains('\n')),
            Some(false)
        );

        // Another authority's key, a changed byte, an added line, a missing
        // signature: all refused.
        assert!(AdmissionList::parse(&text, &ident(&key(9))).is_err());
        let added = text.replacen(
            "node ",
            &format!("node {}\nnode ", ident(&key(4)).to_base58()),
            1,
        );
        assert!(AdmissionList::parse(&added, &ident(&auth)).is_err());
        let comment = text.replacen("# ", "#", 1);
        assert!(AdmissionList::parse(&comment, &ident(&auth)).is_err());
        let unsigned = &text[..text.rfind("signature").unwrap()];
        assert!(AdmissionList::parse(unsigned, &ident(&auth)).is_err());
        assert!(AdmissionList::parse("", &ident(&auth)).is_err());

        let mut list = back;
        assert!(list.revoke(&ident(&key(2))));
        assert!(!list.revoke(&ident(&key(2))));
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn saved_lists_load_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admitted.list");
        let auth = key(1);
        assert!(
            AdmissionList::load(&path, &ident(&auth))
                .unwrap()
                .is_empty()
        );
        let mut list = AdmissionList::new();
        list.admit(ident(&key(5)), "note");
        list.save(&path, &auth).unwrap();
        let loaded = AdmissionList::load(&path, &ident(&auth)).unwrap();
        assert!(loaded.contains(&ident(&key(5))));
        std::fs::write(&path, "node x\nsignature y\n").unwrap();
        let err = AdmissionList::load(&path, &ident(&auth)).unwrap_err();
        assert!(err.to_string().contains("admission list"), "{err}");
    }

    #[test]
    fn hosts_and_subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(host_key(ip("198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(subnet_key(ip("198.51.100.7")), ip("198.51.100.0"));
        assert_eq!(subnet_key(ip("::ffff:198.51.100.7")), ip("198.51.100.0"));
        assert_eq!(host_key(ip("2001:db8:1:2:3::9")), ip("2001:db8:1:2::"));
        assert_eq!(subnet_key(ip("2001:db8:1:2:3::9")), ip("2001:db8:1::"));
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_routable(ip(bad)), "{bad}");
        }
        for good in ["198.51.100.7", "8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(is_routable(ip(good)), "{good}");
        }
    }

    #[test]
    fn probe_schedule() {
        let addr: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let mut s = ProbeState::new(addr);
        assert!(s.due(0, 1000, 100) && !s.reachable_at(addr));
        s.in_flight = true;
        assert!(!s.due(0, 1000, 100));
        s.in_flight = false;
        s.last = Some((50, false));
        assert!(!s.due(100, 1000, 100) && s.due(150, 1000, 100));
        s.last = Some((50, true));
        assert!(s.reachable_at(addr) && !s.reachable_at("192.0.2.1:2".parse().unwrap()));
        assert!(!s.due(1000, 1000, 100) && s.due(1050, 1000, 100));
    }
}
