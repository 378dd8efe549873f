//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` in a
//! temporary directory, the server on a free loopback port, gone when the
//! handle is dropped or the process ends.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Run by `sh` (as the `postgres` user when we are root: `initdb` refuses
/// to run as root). It prints `ready` once the server accepts connections,
/// then waits for its standard input to close — when the handle is dropped,
/// or when the process that started it ends in any way — and then stops
/// the server and removes the directory.
const SCRIPT: &str = r#"
set -eu
bin=$1 port=$2 parent=$3
dir=$(mktemp -d "$parent/murmur-pg.XXXXXX")
stop() {
    "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap stop EXIT
trap 'exit 1' HUP INT TERM
"$bin/initdb" -D "$dir/data" -U murmur -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
    || { tail -n 20 "$dir/initdb.log" >&2; exit 1; }
"$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >/dev/null 2>&1 \
    || { tail -n 20 "$dir/server.log" >&2; exit 1; }
echo ready
exec 2>/dev/null
read -r _ || true
"#;

/// A PostgreSQL server in a temporary directory, listening on 127.0.0.1
/// only, with the superuser `murmur` and no password (trust
/// authentication). For tests and benchmarks: never for a provider's data.
#[derive(Debug)]
pub struct TempCluster {
    url: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl TempCluster {
    /// Starts a cluster with the PostgreSQL binaries [`bin_dir`] finds;
    /// `Ok(None)` if it finds none. Blocks for the few seconds `initdb` and
    /// the start take.
    ///
    /// [`bin_dir`]: Self::bin_dir
    pub fn start() -> Result<Option<Self>> {
        let Some(bin) = Self::bin_dir() else {
            return Ok(None);
        };
        let mut reason = String::new();
        // A port found free can be taken before the server binds it: try
        // another.
        for _ in 0..3 {
            let port = free_port()?;
            match start(&bin, port) {
                Ok(cluster) => return Ok(Some(cluster)),
                Err(why) => reason = why,
            }
        }
        Err(Error::TempCluster { reason })
    }

    /// Where `initdb` and `pg_ctl` are: the directory in
    /// `MURMUR_POSTGRES_BIN`, else the first directory on `PATH` that has
    /// both, else the newest `/usr/lib/postgresql/VERSION/bin` (Debian's
    /// packages, which put neither on `PATH`), else `/usr/local/pgsql/bin`.
    pub fn bin_dir() -> Option<PathBuf> {
        let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
        if let Some(dir) = std::env::var_os("MURMUR_POSTGRES_BIN") {
            return Some(PathBuf::from(dir)).filter(|d| has_both(d));
        }
        if let Some(path) = std::env::var_os("PATH")
            && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
        {
            return Some(dir);
        }
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, d)| has_both(d))
            .collect();
        debian.sort();
        if let Some((_, dir)) = debian.pop() {
            return Some(dir);
        }
        Some(PathBuf::from("/usr/local/pgsql/bin")).filter(|d| has_both(d))
    }

    /// The connection URL of the cluster's `postgres` database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        // Closing its standard input tells the script to stop the server.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Ok(Some(_)) | Err(_) => return,
            }
        }
        tracing::warn!("a temporary PostgreSQL cluster took more than 30 s to stop");
    }
}

fn free_port() -> Result<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::Bind { addr, source })
}

/// Whether this process runs as root (effective user id 0).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            // Real, effective, saved, filesystem.
            Some(line.split_whitespace().nth(2)? == "0")
        })
        .unwrap_or(false)
}

fn start(bin: &Path, port: u16) -> std::result::Result<TempCluster, String> {
    let root = is_root();
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh"]);
        c
    } else {
        Command::new("sh")
    };
    // The postgres user cannot enter root's private temporary directories.
    let parent = if root {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let mut child = command
        .args(["-c", SCRIPT, "murmur-temp-postgres"])
        .arg(bin)
        .arg(port.to_string())
        .arg(&parent)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "could not run sh{}: {e}",
                if root { " as postgres" } else { "" }
            )
        })?;
    let stdin = child.stdin.take();
    let mut line = String::new();
    if let Some(stdout) = child.stdout.take() {
        // Ends at "ready", or empty when the script failed and exited.
        let _ = BufReader::new(stdout).read_line(&mut line);
    }
    if line.trim() == "ready" {
        return Ok(TempCluster {
            url: format!("postgresql://murmur@127.0.0.1:{port}/postgres"),
            child,
            stdin,
        });
    }
    drop(stdin);
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    Err(format!(
        "initdb or pg_ctl in {} failed ({status}): {}",
        bin.display(),
        err.trim()
    ))
}
