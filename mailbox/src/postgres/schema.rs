//! The PostgreSQL store's tables: versioned migrations, applied at open
//! under an advisory lock, and the durability check.
//!
//! Each migration is a version number and the SQL that brings the tables
//! from the previous version to it. `mailbox_schema` has one row per
//! applied version. A released migration is never edited: a change to the
//! tables is a new migration with the next number, and [`SCHEMA_VERSION`]
//! follows it.

use deadpool_postgres::Object;

use super::pg;
use crate::error::{Error, Result};

/// The schema version this build reads and writes: the last migration's.
pub const SCHEMA_VERSION: u32 = 1;

/// Key of the advisory lock held while migrating ("murmur" ‖ 0x0001), so
/// that processes starting at once on one database migrate one after the
/// other.
const MIGRATION_LOCK: i64 = 0x6d75_726d_7572_0001;

struct Migration {
    version: u32,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "queues (with their last use), entries, dedup records, counters",
    // Entries are at most 2513 bytes (a sealed reply): with
    // toast_tuple_target at its maximum, PostgreSQL keeps them in the row
    // instead of trying to compress ciphertext and moving it to a TOAST
    // table, which would cost a second heap and index insert per deposit.
    sql: "
        CREATE TABLE mailbox_queues (
            id         bytea  PRIMARY KEY,
            owner      bytea  NOT NULL,
            created_at bigint NOT NULL,
            messages   bigint NOT NULL,
            bytes      bigint NOT NULL,
            next_seq   bigint NOT NULL,
            last_used  bigint NOT NULL
        );
        CREATE INDEX mailbox_queues_last_used ON mailbox_queues (last_used);
        CREATE TABLE mailbox_entries (
            queue bytea  NOT NULL,
            seq   bigint NOT NULL,
            item  bytea  NOT NULL,
            PRIMARY KEY (queue, seq)
        ) WITH (toast_tuple_target = 8160);
        CREATE TABLE mailbox_dedup (
            queue     bytea    NOT NULL,
            kind      smallint NOT NULL,
            id        bytea    NOT NULL,
            seq       bigint   NOT NULL,
            stored_at bigint   NOT NULL,
            PRIMARY KEY (queue, kind, id)
        );
        CREATE INDEX mailbox_dedup_stored_at ON mailbox_dedup (stored_at);
        CREATE TABLE mailbox_counters (
            name  text   PRIMARY KEY,
            value bigint NOT NULL
        );
        INSERT INTO mailbox_counters (name, value) VALUES ('queues', 0);
    ",
}];

/// Refuses a server on which a returned `COMMIT` might not be on disk.
pub(super) async fn check_durability(client: &Object) -> Result<()> {
    const D: &str = "reading the server's settings";
    let row = client
        .query_one(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
            &[],
        )
        .await
        .map_err(pg(D))?;
    for (i, setting) in ["fsync", "synchronous_commit"].into_iter().enumerate() {
        let value: String = row.try_get(i).map_err(pg(D))?;
        if value == "off" {
            return Err(Error::NotDurable { setting, value });
        }
    }
    Ok(())
}

/// Brings the tables to [`SCHEMA_VERSION`] in one transaction; returns the
/// version. A database at the current version needs no privilege beyond
/// reading `mailbox_schema`; creating or upgrading the tables needs the
/// right to create tables in the schema.
pub(super) async fn migrate(client: &mut Object) -> Result<u32> {
    const D: &str = "migrating the database schema";
    let txn = client.transaction().await.map_err(pg(D))?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg(D))?;
    let exists: bool = txn
        .query_one("SELECT to_regclass('mailbox_schema') IS NOT NULL", &[])
        .await
        .map_err(pg(D))?
        .try_get(0)
        .map_err(pg(D))?;
    let found: u32 = if exists {
        let v: i32 = txn
            .query_one("SELECT coalesce(max(version), 0) FROM mailbox_schema", &[])
            .await
            .map_err(pg(D))?
            .try_get(0)
            .map_err(pg(D))?;
        u32::try_from(v).map_err(|_| Error::Corrupt {
            what: "schema version",
        })?
    } else {
        0
    };
    if found > SCHEMA_VERSION {
        return Err(Error::Schema {
            found: u64::from(found),
            expected: u64::from(SCHEMA_VERSION),
        });
    }
    if found == SCHEMA_VERSION {
        txn.commit().await.map_err(pg(D))?;
        return Ok(found);
    }
    if !exists {
        txn.batch_execute(
            "CREATE TABLE mailbox_schema (
                version     integer PRIMARY KEY,
                applied_at  timestamptz NOT NULL DEFAULT now(),
                description text NOT NULL
            )",
        )
        .await
        .map_err(pg(D))?;
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        txn.batch_execute(m.sql).await.map_err(pg(D))?;
        let version = i32::try_from(m.version).map_err(|_| Error::Corrupt {
            what: "schema version",
        })?;
        txn.execute(
            "INSERT INTO mailbox_schema (version, description) VALUES ($1, $2)",
            &[&version, &m.description],
        )
        .await
        .map_err(pg(D))?;
        tracing::info!(
            version = m.version,
            description = m.description,
            "applied a mailbox schema migration"
        );
    }
    txn.commit().await.map_err(pg(D))?;
    Ok(SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_by_one_up_to_the_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
