//! The first format of `client.redb`: postcard values in plaintext under
//! readable keys (contact names, message ids, queue ids), no header. It is
//! only read, to migrate it.
//!
//! Migration seals every row into a new file beside the old one
//! (`client.redb.migrating`) in one write transaction, then renames it over
//! the old file. The rename is atomic: a crash leaves either the old file
//! (the next open migrates again, replacing a leftover `.migrating` file)
//! or the new one. Rewriting in place would not do: the rows deleted from
//! a redb file stay in its freed pages until they are reused, so the
//! plaintext would still be in the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use murmur_wire::{MessageId, QueueId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::{
    Blind, KdfParams, OutMessage, OutboxRow, PartialRecord, Passphrase, Store, T_CHUNKS,
    T_CONTACTS, T_DELIVERED, T_HEADER, T_INBOX, T_META, T_OUT_FRAGMENTS, T_OUTBOX, T_PARTIALS, dec,
    indexed,
};
use crate::error::{Error, Result};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const CONTACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("contacts");
const OUTBOX: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("outbox");
const OUT_FRAGMENTS: TableDefinition<([u8; 16], u32), &[u8]> =
    TableDefinition::new("out_fragments");
/// (queue id, message id, fragment index).
type PartialKey = ([u8; 32], [u8; 16], u32);
/// `PartialKey` → count (u32 BE) ‖ chunk.
const PARTIALS: TableDefinition<PartialKey, &[u8]> = TableDefinition::new("partials");
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
const DELIVERED: TableDefinition<[u8; 16], u64> = TableDefinition::new("delivered");

/// True if a database with these tables (and no header) is of the first
/// format.
pub(super) fn is_legacy(tables: &[String]) -> bool {
    tables.iter().all(|t| t != T_HEADER) && tables.iter().any(|t| t == META.name())
}

/// Migrates the first-format database at `path` to the sealed format under
/// `passphrase` (see the module docs), and opens it.
pub(super) fn migrate(path: &Path, passphrase: &Passphrase) -> Result<Store> {
    let file_error = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::File { path, source }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".migrating");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(file_error(&tmp)(e)),
    }
    let old = Database::open(path)?;
    let store = Store::create_with(&tmp, passphrase, KdfParams::DEFAULT)?;
    if let Err(e) = copy(&old, &store) {
        drop(store);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let Store { db, keys, kdf, .. } = store;
    drop(db);
    drop(old);
    std::fs::rename(&tmp, path).map_err(file_error(path))?;
    sync_parent(path);
    tracing::info!("the client database was migrated to the encrypted format");
    Ok(Store {
        db: super::builder().open(path)?,
        path: path.to_owned(),
        keys,
        kdf,
    })
}

/// Copies every row of `old` into `store`, sealed, in one transaction.
fn copy(old: &Database, store: &Store) -> Result<()> {
    let r = old.begin_read()?;
    let names: Vec<String> = r.list_tables()?.map(|t| t.name().to_owned()).collect();
    let has = |t: &str| names.iter().any(|n| n == t);
    let keys = &store.keys;
    let txn = store.db.begin_write()?;
    {
        if has(META.name()) {
            let mut new = txn.open_table(super::META)?;
            for row in r.open_table(META)?.iter()? {
                let (k, v) = row?;
                let key = keys.blind(T_META, k.value().as_bytes());
                new.insert(key, keys.seal(T_META, &key, v.value())?.as_slice())?;
            }
        }
        if has(CONTACTS.name()) {
            let mut new = txn.open_table(super::CONTACTS)?;
            for row in r.open_table(CONTACTS)?.iter()? {
                let (k, v) = row?;
                let key = store.contact_key(k.value());
                new.insert(key, keys.seal(T_CONTACTS, &key, v.value())?.as_slice())?;
            }
        }
        if has(OUTBOX.name()) {
            let mut new = txn.open_table(super::OUTBOX)?;
            for row in r.open_table(OUTBOX)?.iter()? {
                let (k, v) = row?;
                let id = MessageId::from_bytes(k.value());
                let message: OutMessage = dec(v.value(), "outgoing message")?;
                let key = store.out_key(&id);
                let row = OutboxRow { id, message };
                let sealed = store.seal(T_OUTBOX, &key, &row, "outgoing message")?;
                new.insert(key, sealed.as_slice())?;
            }
        }
        if has(OUT_FRAGMENTS.name()) {
            let mut new = txn.open_table(super::OUT_FRAGMENTS)?;
            for row in r.open_table(OUT_FRAGMENTS)?.iter()? {
                let (k, v) = row?;
                let (id, index) = k.value();
                let key = store.out_key(&MessageId::from_bytes(id));
                let sealed = keys.seal(T_OUT_FRAGMENTS, &indexed(&key, index), v.value())?;
                new.insert((key, index), sealed.as_slice())?;
            }
        }
        if has(PARTIALS.name()) {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let mut records: HashMap<Blind, PartialRecord> = HashMap::new();
            let mut chunks = txn.open_table(super::CHUNKS)?;
            for row in r.open_table(PARTIALS)?.iter()? {
                let (k, v) = row?;
                let (q, m, index) = k.value();
                let v = v.value();
                let (Some(count), Some(chunk)) = (v.get(..4), v.get(4..)) else {
                    continue;
                };
                let count = u32::from_be_bytes([count[0], count[1], count[2], count[3]]);
                let (queue, message) = (QueueId::from_bytes(q), MessageId::from_bytes(m));
                let key = store.partial_key(&queue, &message);
                let record = records.entry(key).or_insert(PartialRecord {
                    queue,
                    message,
                    count,
                    stored: 0,
                    bytes: 0,
                    first_ms: now_ms,
                });
                // The first format refused fragments that disagreed on the
                // count, so this only drops what it would not have used.
                if record.count != count || index >= count {
                    continue;
                }
                let sealed = keys.seal(T_CHUNKS, &indexed(&key, index), chunk)?;
                chunks.insert((key, index), sealed.as_slice())?;
                record.stored = record.stored.saturating_add(1);
                record.bytes = record.bytes.saturating_add(chunk.len() as u64);
            }
            let mut new = txn.open_table(super::PARTIALS)?;
            for (key, record) in &records {
                let sealed = store.seal(T_PARTIALS, key, record, "partial message")?;
                new.insert(*key, sealed.as_slice())?;
            }
        }
        if has(INBOX.name()) {
            let mut new = txn.open_table(super::INBOX)?;
            for row in r.open_table(INBOX)?.iter()? {
                let (k, v) = row?;
                let seq = k.value();
                let sealed = keys.seal(T_INBOX, &seq.to_be_bytes(), v.value())?;
                new.insert(seq, sealed.as_slice())?;
            }
        }
        if has(DELIVERED.name()) {
            let mut new = txn.open_table(super::DELIVERED)?;
            for row in r.open_table(DELIVERED)?.iter()? {
                let (k, v) = row?;
                let key = store.delivered_key(&MessageId::from_bytes(k.value()));
                let sealed = keys.seal(T_DELIVERED, &key, &v.value().to_be_bytes())?;
                new.insert(key, sealed.as_slice())?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Makes the rename durable (best effort; Unix only).
fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Err(e) = std::fs::File::open(parent).and_then(|d| d.sync_all()) {
            tracing::warn!(error = %e, "could not sync the client database's directory");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::Body;
    use crate::store::{
        ContactRecord, ContactState, OutFragment, OutState, OwnedQueue, Profile, Received,
    };
    use murmur_wire::{DEPOSIT_BODY_SIZE, NodeId};

    /// Writes a database as the first format did.
    fn write_legacy(path: &Path) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let profile = Profile {
                identity_secret: [9; 32],
                name: "legacy-profile-name".into(),
                home_provider: NodeId::from_bytes([1; 32]),
                ack_queue: OwnedQueue {
                    provider: NodeId::from_bytes([1; 32]),
                    queue: QueueId::from_bytes([0xa1; 32]),
                    owner_secret: [2; 32],
                },
                loop_queue: OwnedQueue {
                    provider: NodeId::from_bytes([1; 32]),
                    queue: QueueId::from_bytes([0xa2; 32]),
                    owner_secret: [3; 32],
                },
            };
            txn.open_table(META)
                .unwrap()
                .insert("profile", postcard::to_stdvec(&profile).unwrap().as_slice())
                .unwrap();
            let contact = ContactRecord {
                name: "zebra-legacy-contact".into(),
                state: ContactState::Established,
                identity: None,
                address: Some((NodeId::from_bytes([1; 32]), QueueId::from_bytes([0xa3; 32]))),
                secret: [4; 32],
                inbox: OwnedQueue {
                    provider: NodeId::from_bytes([1; 32]),
                    queue: QueueId::from_bytes([0xa4; 32]),
                    owner_secret: [5; 32],
                },
                created_ms: 7,
                provisional_name: false,
                pq_identity: None,
                known_to_them: true,
            };
            txn.open_table(CONTACTS)
                .unwrap()
                .insert(
                    "zebra-legacy-contact",
                    postcard::to_stdvec(&contact).unwrap().as_slice(),
                )
                .unwrap();
            let out = OutMessage {
                contact: "zebra-legacy-contact".into(),
                fragments: 2,
                acked: 1,
                state: OutState::Sending,
                created_ms: 11,
                provider: NodeId::from_bytes([1; 32]),
                queue: QueueId::from_bytes([0xa3; 32]),
            };
            txn.open_table(OUTBOX)
                .unwrap()
                .insert([0xb1; 16], postcard::to_stdvec(&out).unwrap().as_slice())
                .unwrap();
            let mut frags = txn.open_table(OUT_FRAGMENTS).unwrap();
            for (i, acked) in [(0u32, true), (1, false)] {
                let f = OutFragment {
                    deposit_id: MessageId::from_bytes([0xc0 + i as u8; 16]),
                    body: if acked {
                        Vec::new()
                    } else {
                        vec![0x77; DEPOSIT_BODY_SIZE]
                    },
                    acked,
                };
                frags
                    .insert(([0xb1; 16], i), postcard::to_stdvec(&f).unwrap().as_slice())
                    .unwrap();
            }
            let mut partials = txn.open_table(PARTIALS).unwrap();
            let mut v = 3u32.to_be_bytes().to_vec();
            v.extend_from_slice(b"legacy-partial-chunk-text");
            partials
                .insert(([0xa4; 32], [0xb2; 16], 1), v.as_slice())
                .unwrap();
            let received = Received {
                from: "zebra-legacy-contact".into(),
                message_id: MessageId::from_bytes([0xb3; 16]),
                sent_at_ms: 1,
                received_at_ms: 2,
                body: Body::Text("legacy-inbox-secret-text".into()),
                read: false,
            };
            txn.open_table(INBOX)
                .unwrap()
                .insert(1, postcard::to_stdvec(&received).unwrap().as_slice())
                .unwrap();
            txn.open_table(DELIVERED)
                .unwrap()
                .insert([0xb3; 16], 2)
                .unwrap();
        }
        txn.commit().unwrap();
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_first_format_database_is_migrated_sealed_and_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.redb");
        write_legacy(&path);
        let secrets: [&[u8]; 7] = [
            b"zebra-legacy-contact",
            b"legacy-inbox-secret-text",
            b"legacy-partial-chunk-text",
            b"legacy-profile-name",
            &[0xb1; 16],
            &[0xa4; 32],
            &[0xb3; 16],
        ];
        // The control: the first format has them in the clear.
        let before = std::fs::read(&path).unwrap();
        for s in secrets {
            assert!(contains(&before, s));
        }

        let pass = Passphrase::new("migrate me");
        {
            let s = Store::open(&path, &pass).unwrap();
            let p = s.profile().unwrap().unwrap();
            assert_eq!(p.name, "legacy-profile-name");
            assert_eq!(p.identity_secret, [9; 32]);
            let c = s.contact("zebra-legacy-contact").unwrap().unwrap();
            assert_eq!(c.secret, [4; 32]);
            let id = MessageId::from_bytes([0xb1; 16]);
            assert_eq!(s.out_message(&id).unwrap().unwrap().acked, 1);
            assert_eq!(s.unacked().unwrap(), vec![(id, 1)]);
            assert_eq!(
                s.out_fragment(&id, 1).unwrap().unwrap().body,
                vec![0x77; DEPOSIT_BODY_SIZE]
            );
            let inbox = s.inbox(false).unwrap();
            assert_eq!(inbox.len(), 1);
            assert!(matches!(&inbox[0].1.body, Body::Text(t) if t == "legacy-inbox-secret-text"));
            assert!(s.was_delivered(&MessageId::from_bytes([0xb3; 16])).unwrap());
            let partials = s.partials().unwrap();
            assert_eq!(partials.len(), 1);
            assert_eq!(partials[0].queue, QueueId::from_bytes([0xa4; 32]));
            assert_eq!(partials[0].count, 3);
            assert_eq!(partials[0].have, vec![1]);
        }
        assert!(!dir.path().join("client.redb.migrating").exists());
        let after = std::fs::read(&path).unwrap();
        for s in secrets {
            assert!(!contains(&after, s), "{s:?} is still in the file");
        }
        assert!(matches!(
            Store::open(&path, &Passphrase::new("other")),
            Err(Error::WrongPassphrase { .. })
        ));
        let s = Store::open(&path, &pass).unwrap();
        assert!(s.contact("zebra-legacy-contact").unwrap().is_some());
    }

    #[test]
    fn a_leftover_migration_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.redb");
        write_legacy(&path);
        std::fs::write(dir.path().join("client.redb.migrating"), b"half-written").unwrap();
        let s = Store::open(&path, &Passphrase::new("p")).unwrap();
        assert!(s.profile().unwrap().is_some());
        assert!(!dir.path().join("client.redb.migrating").exists());
    }
}
