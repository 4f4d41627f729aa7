//! The durable half of the engine: one redb file, `<state_dir>/obhostd.redb`.
//!
//! redb gives us ACID transactions with an fsync per commit, a crash-safe file
//! format (a `kill -9` mid-commit leaves the previous commit intact) and a file
//! lock, so two daemons can never share a state dir. Records are JSON: small, and
//! readable with any redb tool when an operator needs to look inside.
//!
//! Only the engine calls this module (through `Engine::commit`), which is how "a
//! transition is committed before any client can see it" holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::model::StepRecord;

const STEPS: TableDefinition<&str, &[u8]> = TableDefinition::new("steps");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
const SCHEMA_KEY: &str = "schema_version";
/// Bumped when the stored record format changes incompatibly.
const SCHEMA_VERSION: u64 = 1;

pub const STATE_FILE: &str = "obhostd.redb";

#[derive(Debug, thiserror::Error)]
/// Each message carries its cause inline (the operator reads one line), so no
/// variant exposes it again as `source()`.
pub enum StoreError {
    #[error(
        "state file '{path}' is in use by another process (is another obhostd running with the same state_dir?)"
    )]
    InUse { path: PathBuf },
    #[error(
        "state file '{path}' cannot be read: {cause}. obhostd will not start over it and will not reset it: \
         move it aside (mv '{path}' '{path}.bad') to start with empty state, or restore it from a backup"
    )]
    Unreadable { path: PathBuf, cause: redb::Error },
    #[error(
        "state file '{path}' holds a step record '{key}' that cannot be decoded: {cause}. \
         obhostd will not start over it: move the file aside (mv '{path}' '{path}.bad') or restore a backup"
    )]
    CorruptRecord {
        path: PathBuf,
        key: String,
        cause: serde_json::Error,
    },
    #[error(
        "state file '{path}' was written by a newer obhostd (schema {found}, this one knows {SCHEMA_VERSION}); \
         run the newer obhostd or restore a backup"
    )]
    NewerSchema { path: PathBuf, found: u64 },
    #[error("cannot create state dir '{path}': {cause}; create it or point state_dir elsewhere")]
    CreateDir {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("writing state file '{path}' failed: {cause}")]
    Write { path: PathBuf, cause: redb::Error },
    #[error("cannot encode step record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A cheap, cloneable handle; all methods block (redb fsyncs), so async callers
/// run them on the blocking pool.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

/// Everything the store holds, as loaded at start.
pub struct Loaded {
    pub records: Vec<StepRecord>,
    pub revision: u64,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|cause| StoreError::CreateDir {
            path: state_dir.to_path_buf(),
            cause,
        })?;
        let path = state_dir.join(STATE_FILE);
        let unreadable = |cause: redb::Error| match cause {
            redb::Error::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            cause => StoreError::Unreadable {
                path: path.clone(),
                cause,
            },
        };
        let db = Database::create(&path).map_err(|e| unreadable(e.into()))?;
        let store = Store {
            db: Arc::new(db),
            path: path.clone(),
        };
        store.init_schema().map_err(unreadable)?;
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init_schema(&self) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            txn.open_table(STEPS)?;
            let mut meta = txn.open_table(META)?;
            if meta.get(SCHEMA_KEY)?.is_none() {
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let unreadable = |cause: redb::Error| StoreError::Unreadable {
            path: self.path.clone(),
            cause,
        };
        let txn = self.db.begin_read().map_err(|e| unreadable(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| unreadable(e.into()))?;
        let get = |key| -> Result<Option<u64>, StoreError> {
            Ok(meta
                .get(key)
                .map_err(|e| unreadable(e.into()))?
                .map(|v| v.value()))
        };
        let schema = get(SCHEMA_KEY)?.unwrap_or(SCHEMA_VERSION);
        if schema > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: self.path.clone(),
                found: schema,
            });
        }
        let mut revision = get(REVISION_KEY)?.unwrap_or(0);
        let steps = txn.open_table(STEPS).map_err(|e| unreadable(e.into()))?;
        let mut records = Vec::new();
        for entry in steps.iter().map_err(|e| unreadable(e.into()))? {
            let (key, value) = entry.map_err(|e| unreadable(e.into()))?;
            let record: StepRecord = serde_json::from_slice(value.value()).map_err(|cause| {
                StoreError::CorruptRecord {
                    path: self.path.clone(),
                    key: key.value().to_string(),
                    cause,
                }
            })?;
            // The counter is written in the same transaction as every record, so
            // this never moves it; it guards against a hand-edited file.
            revision = revision.max(record.revision);
            records.push(record);
        }
        Ok(Loaded { records, revision })
    }

    /// Writes one record and the global revision in one transaction.
    pub fn put(&self, record: &StepRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record)?;
        self.write(|txn| {
            txn.open_table(STEPS)?
                .insert(record.id(), bytes.as_slice())?;
            txn.open_table(META)?
                .insert(REVISION_KEY, record.revision)?;
            Ok(())
        })
    }

    /// Writes many records in one transaction (one fsync), and the highest of
    /// their revisions as the global one. For tools and tests that seed or
    /// import a store while no daemon has it open; the engine commits one by one.
    pub fn put_all(&self, records: &[StepRecord]) -> Result<(), StoreError> {
        let encoded = records
            .iter()
            .map(|r| Ok((r.id(), serde_json::to_vec(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let revision = records.iter().map(|r| r.revision).max().unwrap_or(0);
        self.write(|txn| {
            let mut steps = txn.open_table(STEPS)?;
            for (id, bytes) in &encoded {
                steps.insert(*id, bytes.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            let current = meta.get(REVISION_KEY)?.map(|v| v.value()).unwrap_or(0);
            meta.insert(REVISION_KEY, current.max(revision))?;
            Ok(())
        })
    }

    /// Forgets records (retention). Deleting is not a change clients watch for.
    pub fn delete(&self, ids: &[String]) -> Result<(), StoreError> {
        self.write(|txn| {
            let mut steps = txn.open_table(STEPS)?;
            for id in ids {
                steps.remove(id.as_str())?;
            }
            Ok(())
        })
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let wrap = |cause: redb::Error| StoreError::Write {
            path: self.path.clone(),
            cause,
        };
        let txn = self.db.begin_write().map_err(|e| wrap(e.into()))?;
        f(&txn).map_err(wrap)?;
        txn.commit().map_err(|e| wrap(e.into()))
    }
}
