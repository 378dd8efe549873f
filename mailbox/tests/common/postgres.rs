//! A PostgreSQL database for a test: a fresh schema in the cluster named by
//! `MURMUR_TEST_POSTGRES_URL`, else in a throwaway cluster this test binary
//! starts itself (`initdb` + `pg_ctl` on a free loopback port, stopped when
//! the binary exits) when PostgreSQL is installed.
//!
//! With neither, the PostgreSQL tests print that they did not run, on the
//! terminal (not the captured output), and return — unless
//! `MURMUR_REQUIRE_POSTGRES=1` (CI sets it), when they fail.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use murmur_mailbox::postgres::{PostgresSettings, TempCluster};

pub const URL_ENV: &str = "MURMUR_TEST_POSTGRES_URL";
pub const REQUIRE_ENV: &str = "MURMUR_REQUIRE_POSTGRES";

enum Server {
    External(String),
    Temporary(TempCluster),
    None(String),
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        if let Ok(url) = std::env::var(URL_ENV)
            && !url.is_empty()
        {
            return Server::External(url);
        }
        match TempCluster::start() {
            Ok(Some(cluster)) => Server::Temporary(cluster),
            Ok(None) => Server::None(format!(
                "no PostgreSQL: {URL_ENV} is not set and no initdb/pg_ctl was found"
            )),
            // PostgreSQL is installed but does not start: that is a
            // failure, not a reason to skip.
            Err(e) => panic!("PostgreSQL is installed but a test cluster did not start: {e}"),
        }
    })
}

/// A schema of its own in the test cluster, dropped at the end of the
/// test. `None` (after saying so on the terminal) when there is no
/// PostgreSQL and it is not required.
pub struct TestDb {
    base: String,
    schema: String,
}

impl TestDb {
    pub fn new(test: &str) -> Option<Self> {
        let base = match server() {
            Server::External(url) => url.as_str(),
            Server::Temporary(cluster) => cluster.url(),
            Server::None(why) => {
                Self::not_run(test, why);
                return None;
            }
        };
        static N: AtomicU64 = AtomicU64::new(0);
        let schema = format!(
            "t{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        admin(base, &format!("CREATE SCHEMA {schema}"));
        Some(Self {
            base: base.to_owned(),
            schema,
        })
    }

    fn not_run(test: &str, why: &str) {
        if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
            panic!("{REQUIRE_ENV}=1 but {why}");
        }
        // Straight to the terminal: the test harness captures print!.
        let _ = writeln!(
            std::io::stderr(),
            "\nNOT RUN: {test} on PostgreSQL ({why}; set {URL_ENV} or install PostgreSQL, and {REQUIRE_ENV}=1 to make this a failure)"
        );
    }

    /// The connection string of this test's schema, with `-c` settings
    /// added to the connection's options.
    pub fn url_with(&self, settings: &[&str]) -> String {
        let mut options = format!("-c search_path={}", self.schema);
        for s in settings {
            options.push_str(" -c ");
            options.push_str(s);
        }
        with_options(&self.base, &options)
    }

    /// The connection string of this test's schema.
    pub fn url(&self) -> String {
        self.url_with(&[])
    }

    pub fn settings(&self) -> PostgresSettings {
        let mut s = PostgresSettings::new(self.url());
        s.pool_size = 4;
        s
    }

    /// Runs SQL in this test's schema (outside any store).
    pub fn execute(&self, sql: &str) {
        admin(&self.url(), sql);
    }

    /// Runs a query returning an `int4` and a `text` column in this test's
    /// schema.
    pub fn query_pairs(&self, sql: &str) -> Vec<(i32, String)> {
        let (url, sql) = (self.url(), sql.to_owned());
        on_own_runtime(async move {
            let (client, task) = connect(&url).await;
            let rows = client
                .query(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            drop(client);
            let _ = task.await;
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            admin(
                &self.base,
                &format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema),
            );
        }
    }
}

/// `base` with `options` (percent-encoded in a URL).
fn with_options(base: &str, options: &str) -> String {
    if base.starts_with("postgres://") || base.starts_with("postgresql://") {
        let encoded: String = options
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}options={encoded}")
    } else {
        format!("{base} options='{options}'")
    }
}

/// Runs `sql` on a connection of its own.
fn admin(url: &str, sql: &str) {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    on_own_runtime(async move {
        let (client, task) = connect(&url).await;
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        drop(client);
        let _ = task.await;
    });
}

async fn connect(url: &str) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL: {e}"));
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own
/// (the caller may be inside a tokio runtime).
fn on_own_runtime<T: Send + 'static>(f: impl Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}
