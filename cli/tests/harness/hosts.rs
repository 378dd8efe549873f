//! A multi-host test bed on one machine: every daemon in its own network
//! namespace (`ip netns`), with its own address on a bridge, so that nodes
//! talk to each other over real interfaces between distinct addresses, and
//! a host's link can be cut (`ip link set … down`) and restored.
//!
//! Layout: a bridge in the test's own namespace holds `10.213.n.1/24` (the
//! test process and its in-process clients reach the nodes through it; `n`
//! numbers the test beds of this process, so tests can run in parallel);
//! each host `h` is a namespace with `lo` up and `eth0` = `10.213.n.(10+h)`,
//! the other end of a veth pair whose bridge side is named here. Needs root
//! (CAP_NET_ADMIN, CAP_SYS_ADMIN) and `ip`; everything is removed on drop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

/// Why the test bed cannot run here, if it cannot (checked once per
/// process: tests run in parallel).
pub fn unavailable() -> Option<String> {
    static CHECKED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    CHECKED.get_or_init(check).clone()
}

fn check() -> Option<String> {
    // Root: the effective uid on /proc/self/status's Uid line.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    if !root {
        return Some("not root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no `ip` command".into());
    }
    // A namespace of our own proves the capabilities.
    let probe = format!("mm-probe-{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(o) => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("`ip netns add` failed: {e}")),
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The hosts of one test, and the bridge between them.
#[derive(Debug)]
pub struct Hosts {
    /// The third octet of this bed's subnet.
    net: u8,
    tag: String,
    bridge: String,
    names: Mutex<Vec<String>>,
}

impl Hosts {
    /// The bridge; hosts are added with [`Hosts::add`].
    pub fn new() -> Self {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let net = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:x}n{net}", std::process::id() % 0xffff);
        let bridge = format!("mmbr{tag}");
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.213.{net}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        Self {
            net,
            tag,
            bridge,
            names: Mutex::new(Vec::new()),
        }
    }

    /// The test process's own address on the bridge.
    pub fn local_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.net, 1))
    }

    /// A new host; returns its index.
    pub fn add(&self) -> usize {
        let mut names = self.names.lock().unwrap();
        let h = names.len();
        assert!(h < 200, "too many hosts");
        let ns = format!("mm{}h{h}", self.tag);
        let veth = self.veth(h);
        ip(&["netns", "add", &ns]);
        names.push(ns.clone());
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &veth, "master", &self.bridge]);
        ip(&["link", "set", &veth, "up"]);
        let addr = format!("{}/24", self.ip(h));
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        h
    }

    fn veth(&self, h: usize) -> String {
        format!("mm{}v{h}", self.tag)
    }

    /// Host `h`'s address.
    pub fn ip(&self, h: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.net, 10 + h as u8))
    }

    /// An address of host `h`: its IP, `port`.
    pub fn addr(&self, h: usize, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(h), port)
    }

    /// Host `h`'s namespace name (for `ip netns exec`).
    pub fn namespace(&self, h: usize) -> String {
        self.names.lock().unwrap()[h].clone()
    }

    /// Cuts host `h` off the network (its link goes down: packets to and
    /// from it are lost, connections hang until their timeouts).
    pub fn cut(&self, h: usize) {
        ip(&["link", "set", &self.veth(h), "down"]);
    }

    /// Brings host `h`'s link back.
    pub fn restore(&self, h: usize) {
        ip(&["link", "set", &self.veth(h), "up"]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth, and so the pair.
        for ns in self.names.lock().unwrap().iter() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}
