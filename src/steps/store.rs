//! The durable half of the engine: one redb file, `<state_dir>/obhostd.redb`.
//!
//! redb gives us ACID transactions with an fsync per commit, a crash-safe file
//! format (a `kill -9` mid-commit leaves the previous commit intact), MVCC read
//! transactions (a reader never waits for a writer's fsync) and a file lock, so
//! two daemons can never share a state dir. Records are JSON: small, and
//! readable with any redb tool when an operator needs to look inside.
//!
//! The daemon's memory holds only unfinished steps; everything else is read from
//! here on demand, which is why the store keeps its own indexes: `by_revision`
//! (the order watches page through and retention prunes in) and `active` (the
//! unfinished steps a restart must resolve, found without reading every record).
//!
//! Writes come only from the engine's committer (`steps::engine`), which
//! groups every change ready at one moment into one transaction (one fsync).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table, TableDefinition,
    WriteTransaction,
};

use super::model::StepRecord;

const STEPS: TableDefinition<&str, &[u8]> = TableDefinition::new("steps");
/// A record's current revision → its id.
const BY_REVISION: TableDefinition<u64, &str> = TableDefinition::new("by_revision");
/// Ids of PENDING/RUNNING steps → their revision.
const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("active");
/// home_path → the observer registry's JSON record.
const OBSERVERS: TableDefinition<&str, &[u8]> = TableDefinition::new("observers");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Changes not yet acknowledged by the orchestrator (`[report]`): revision →
/// the record as it was then. A copy, so that retention and later changes of
/// a step never take away a change still to be reported.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const REVISION_KEY: &str = "revision";
/// The last revision the orchestrator acknowledged.
const ACKED_KEY: &str = "report_acked";
/// Changes dropped from a full outbox and not yet announced to the orchestrator.
const DROPPED_KEY: &str = "report_dropped";
const SCHEMA_KEY: &str = "schema_version";
/// Bumped when the stored format changes incompatibly. 2 added the
/// `by_revision`, `active` and `observers` tables; a version-1 file is upgraded
/// in place on open (one scan).
const SCHEMA_VERSION: u64 = 2;

/// How much one page may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    /// Records returned.
    pub records: usize,
    /// Records looked at, matching or not: bounds a filtered page's work.
    pub scan: usize,
    /// Stored bytes of the records returned (the page ends once it reaches this).
    pub bytes: usize,
}

pub const STATE_FILE: &str = "obhostd.redb";
/// redb's page cache by default; `[store] cache_mib` overrides it.
pub const DEFAULT_CACHE_BYTES: usize = 4 << 20;

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
    #[error(
        "the filesystem of state file '{path}' is full ({cause}); nothing was changed. \
         Free space there: obhostd retries by itself and accepts changes again once a write succeeds"
    )]
    NoSpace { path: PathBuf, cause: String },
    #[error(
        "writing state file '{path}' failed: {cause}; nothing was changed. \
         obhostd reopens the file by itself and accepts changes again once a write succeeds; \
         check the disk (dmesg) if this lasts"
    )]
    Write { path: PathBuf, cause: String },
    #[error(
        "state file '{path}' is being reopened after a failed write; nothing was changed. Try again in a moment"
    )]
    Reopening { path: PathBuf },
    #[error("cannot encode step record: {0}")]
    Encode(#[from] serde_json::Error),
    /// Not the file's fault: a task of obhostd's own around the store ended
    /// abnormally (a panic), or the committer is gone (shutting down).
    #[error(
        "{what} ended abnormally ({cause}); nothing was changed. The daemon's log (journalctl -u obhostd) says why; try again"
    )]
    Internal { what: &'static str, cause: String },
}

impl StoreError {
    /// True for the errors that leave the store refusing writes until it is
    /// reopened (redb poisons a database after a failed commit).
    pub fn is_write_failure(&self) -> bool {
        matches!(
            self,
            StoreError::NoSpace { .. } | StoreError::Write { .. } | StoreError::Reopening { .. }
        )
    }

    /// Same error, for another waiter of the same failed commit.
    pub fn duplicate(&self) -> StoreError {
        match self {
            StoreError::NoSpace { path, cause } => StoreError::NoSpace {
                path: path.clone(),
                cause: cause.clone(),
            },
            StoreError::Reopening { path } => StoreError::Reopening { path: path.clone() },
            StoreError::Write { path, cause } => StoreError::Write {
                path: path.clone(),
                cause: cause.clone(),
            },
            other => StoreError::Internal {
                what: "a commit",
                cause: other.to_string(),
            },
        }
    }
}

/// One change the committer applies; many go into one transaction.
pub enum Write {
    /// A step's new version. `previous` is the revision the engine based it on,
    /// whose index entry it replaces.
    Put {
        id: String,
        revision: u64,
        previous: Option<u64>,
        active: bool,
        bytes: Vec<u8>,
    },
    /// Retention: forgets a record if it is still at `revision` and finished.
    Delete { id: String, revision: u64 },
    /// The observer registry's record of a home (None removes it).
    Observer {
        home: String,
        bytes: Option<Vec<u8>>,
    },
    /// The orchestrator acknowledged every change up to `through`, and the
    /// announcement of `announced` dropped ones.
    Ack { through: u64, announced: u64 },
}

/// The changes waiting to be reported, oldest first.
#[derive(Debug, Default)]
pub struct Outbox {
    pub changes: Vec<StepRecord>,
    /// The last revision acknowledged.
    pub acked: u64,
    /// Dropped unsent (outbox full) since the last acknowledged announcement.
    pub dropped: u64,
}

/// A cheap, cloneable handle. Reads take an MVCC snapshot and never wait for a
/// commit; writes block (fsync), so only the committer's thread makes them.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// None while the file is being reopened after a failed write.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    cache_bytes: usize,
    /// Set by [`Store::close`]: the daemon is stopping, never reopen.
    closed: std::sync::atomic::AtomicBool,
    /// Commits so far: a read taken at one value is current until it moves.
    generation: std::sync::atomic::AtomicU64,
    /// Changes the outbox keeps (`[report] max_unacked`); 0: no outbox.
    outbox_cap: std::sync::atomic::AtomicUsize,
}

/// What a start needs from the store: never the finished records.
pub struct Loaded {
    pub active: Vec<StepRecord>,
    pub revision: u64,
    pub count: u64,
}

/// A page of finished-or-not records in index order.
pub struct Page {
    pub records: Vec<StepRecord>,
    /// The last key the scan looked at.
    pub cursor: Option<String>,
    /// The scan reached the end of the table.
    pub exhausted: bool,
}

fn unreadable(path: &Path) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |cause| match cause {
        redb::Error::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_path_buf(),
        },
        cause => StoreError::Unreadable {
            path: path.to_path_buf(),
            cause,
        },
    }
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<(Store, Loaded), StoreError> {
        Store::open_with_cache(state_dir, DEFAULT_CACHE_BYTES)
    }

    pub fn open_with_cache(
        state_dir: &Path,
        cache_bytes: usize,
    ) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(state_dir).map_err(|cause| StoreError::CreateDir {
            path: state_dir.to_path_buf(),
            cause,
        })?;
        let path = state_dir.join(STATE_FILE);
        let db = create_db(&path, cache_bytes).map_err(unreadable(&path))?;
        let store = Store {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(Arc::new(db))),
                path,
                cache_bytes,
                closed: Default::default(),
                generation: Default::default(),
                outbox_cap: Default::default(),
            }),
        };
        store.upgrade()?;
        let loaded = store.load()?;
        Ok((store, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Reopening {
                path: self.inner.path.clone(),
            })
    }

    fn read_err(&self) -> impl Fn(redb::Error) -> StoreError + '_ {
        move |e| self.classify(e)
    }

    /// Writes: no space is its own error (RESOURCE_EXHAUSTED to callers);
    /// anything else is a failed write (UNAVAILABLE).
    fn classify(&self, e: redb::Error) -> StoreError {
        let path = self.inner.path.clone();
        let no_space = match &e {
            redb::Error::Io(io) => matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
            _ => false,
        };
        if no_space {
            StoreError::NoSpace {
                path,
                cause: e.to_string(),
            }
        } else {
            StoreError::Write {
                path,
                cause: e.to_string(),
            }
        }
    }

    /// Creates the tables and upgrades a version-1 file (steps only) by
    /// building its indexes in one transaction.
    fn upgrade(&self) -> Result<(), StoreError> {
        let path = self.inner.path.clone();
        let bad = unreadable(&path);
        let db = self.db()?;
        if self.current_schema(&db).map_err(&bad)? {
            return Ok(());
        }
        let txn = db.begin_write().map_err(|e| bad(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| bad(e.into()))?;
            let schema = meta
                .get(SCHEMA_KEY)
                .map_err(|e| bad(e.into()))?
                .map(|v| v.value());
            if let Some(found) = schema.filter(|s| *s > SCHEMA_VERSION) {
                return Err(StoreError::NewerSchema {
                    path: self.inner.path.clone(),
                    found,
                });
            }
            if schema != Some(SCHEMA_VERSION) {
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                    .map_err(|e| bad(e.into()))?;
            }
            let steps = txn.open_table(STEPS).map_err(|e| bad(e.into()))?;
            let mut by_revision = txn.open_table(BY_REVISION).map_err(|e| bad(e.into()))?;
            let mut active = txn.open_table(ACTIVE).map_err(|e| bad(e.into()))?;
            txn.open_table(OBSERVERS).map_err(|e| bad(e.into()))?;
            if schema.is_some_and(|s| s < 2) {
                let mut revision = meta
                    .get(REVISION_KEY)
                    .map_err(|e| bad(e.into()))?
                    .map_or(0, |v| v.value());
                for entry in steps.iter().map_err(|e| bad(e.into()))? {
                    let (key, value) = entry.map_err(|e| bad(e.into()))?;
                    let r = decode(&path, key.value(), value.value())?;
                    by_revision
                        .insert(r.revision, r.id())
                        .map_err(|e| bad(e.into()))?;
                    if !r.state.is_terminal() {
                        active
                            .insert(r.id(), r.revision)
                            .map_err(|e| bad(e.into()))?;
                    }
                    revision = revision.max(r.revision);
                }
                meta.insert(REVISION_KEY, revision)
                    .map_err(|e| bad(e.into()))?;
            }
        }
        txn.commit().map_err(|e| bad(e.into()))
    }

    /// True when the file already has this version's tables: then opening
    /// writes nothing. (A write transaction on every open also left redb's
    /// close unrecorded, so the next open rebuilt its allocator state: seconds
    /// for a large file.)
    fn current_schema(&self, db: &Database) -> Result<bool, redb::Error> {
        let txn = db.begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        if meta.get(SCHEMA_KEY)?.map(|v| v.value()) != Some(SCHEMA_VERSION) {
            return Ok(false);
        }
        let exists = |r: Result<(), redb::TableError>| {
            !matches!(r, Err(redb::TableError::TableDoesNotExist(_)))
        };
        Ok(exists(txn.open_table(STEPS).map(|_| ()))
            && exists(txn.open_table(OBSERVERS).map(|_| ()))
            && exists(txn.open_table(BY_REVISION).map(|_| ()))
            && exists(txn.open_table(ACTIVE).map(|_| ())))
    }

    /// The unfinished records, the revision and the count: what a start needs.
    fn load(&self) -> Result<Loaded, StoreError> {
        let path = self.inner.path.clone();
        let bad = unreadable(&path);
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| bad(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| bad(e.into()))?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(|e| bad(e.into()))?
            .map_or(0, |v| v.value());
        let steps = txn.open_table(STEPS).map_err(|e| bad(e.into()))?;
        let active_ids = txn.open_table(ACTIVE).map_err(|e| bad(e.into()))?;
        let mut active = Vec::new();
        for entry in active_ids.iter().map_err(|e| bad(e.into()))? {
            let (key, _) = entry.map_err(|e| bad(e.into()))?;
            if let Some(value) = steps.get(key.value()).map_err(|e| bad(e.into()))? {
                active.push(decode(&path, key.value(), value.value())?);
            }
        }
        let count = steps.len().map_err(|e| bad(e.into()))?;
        Ok(Loaded {
            active,
            revision,
            count,
        })
    }

    /// One record, from a read snapshot (committed state only).
    pub fn get(&self, id: &str) -> Result<Option<StepRecord>, StoreError> {
        let err = self.read_err();
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let steps = txn.open_table(STEPS).map_err(|e| err(e.into()))?;
        let Some(value) = steps.get(id).map_err(|e| err(e.into()))? else {
            return Ok(None);
        };
        decode(&self.inner.path, id, value.value()).map(Some)
    }

    /// The highest revision committed.
    pub fn revision(&self) -> Result<u64, StoreError> {
        let err = self.read_err();
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| err(e.into()))?;
        Ok(meta
            .get(REVISION_KEY)
            .map_err(|e| err(e.into()))?
            .map_or(0, |v| v.value()))
    }

    pub fn count(&self) -> Result<u64, StoreError> {
        let err = self.read_err();
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let steps = txn.open_table(STEPS).map_err(|e| err(e.into()))?;
        steps.len().map_err(|e| err(e.into()))
    }

    /// Records in id order after `after` that match `keep`, within `limit`.
    /// Decoding is most of a page's cost, so a page ends as soon as its stored
    /// bytes reach the limit rather than decoding records a caller would drop.
    pub fn page_by_id(
        &self,
        after: Option<&str>,
        limit: PageLimit,
        keep: impl Fn(&StepRecord) -> bool,
    ) -> Result<Page, StoreError> {
        use std::ops::Bound;
        let err = self.read_err();
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let steps = txn.open_table(STEPS).map_err(|e| err(e.into()))?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = Page {
            records: Vec::new(),
            cursor: after.map(str::to_string),
            exhausted: true,
        };
        let range = steps
            .range::<&str>((start, Bound::Unbounded))
            .map_err(|e| err(e.into()))?;
        let mut bytes = 0;
        for (scanned, entry) in range.enumerate() {
            if scanned == limit.scan || page.records.len() == limit.records || bytes >= limit.bytes
            {
                page.exhausted = false;
                break;
            }
            let (key, value) = entry.map_err(|e| err(e.into()))?;
            let r = decode(&self.inner.path, key.value(), value.value())?;
            page.cursor = Some(key.value().to_string());
            if keep(&r) {
                bytes += value.value().len();
                page.records.push(r);
            }
        }
        Ok(page)
    }

    /// Records whose current revision is past `after`, in revision order, at
    /// most `take` matching `keep`, looking at no more than `scan` index entries.
    /// Returns them and the last revision looked at.
    pub fn page_by_revision(
        &self,
        after: u64,
        take: usize,
        scan: usize,
        keep: impl Fn(&StepRecord) -> bool,
    ) -> Result<(Vec<StepRecord>, u64, bool), StoreError> {
        let err = self.read_err();
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let index = txn.open_table(BY_REVISION).map_err(|e| err(e.into()))?;
        let steps = txn.open_table(STEPS).map_err(|e| err(e.into()))?;
        let mut records = Vec::new();
        let mut cursor = after;
        let mut exhausted = true;
        for (scanned, entry) in index
            .range((after.saturating_add(1))..)
            .map_err(|e| err(e.into()))?
            .enumerate()
        {
            if scanned == scan || records.len() == take {
                exhausted = false;
                break;
            }
            let (revision, id) = entry.map_err(|e| err(e.into()))?;
            cursor = revision.value();
            if let Some(value) = steps.get(id.value()).map_err(|e| err(e.into()))? {
                let r = decode(&self.inner.path, id.value(), value.value())?;
                // A stale entry (the record moved on) is skipped: the record
                // comes at its current revision.
                if r.revision == cursor && keep(&r) {
                    records.push(r);
                }
            }
        }
        Ok((records, cursor, exhausted))
    }

    /// Finished records retention may forget, oldest first (a finished record
    /// no longer changes, so revision order is finishing order): the first
    /// `excess`, then any finished before `max_age` ago; at most `batch`.
    pub fn prune_candidates(
        &self,
        excess: u64,
        max_age: Duration,
        batch: usize,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let err = self.read_err();
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let index = txn.open_table(BY_REVISION).map_err(|e| err(e.into()))?;
        let active = txn.open_table(ACTIVE).map_err(|e| err(e.into()))?;
        let steps = txn.open_table(STEPS).map_err(|e| err(e.into()))?;
        let now = SystemTime::now();
        let mut doomed = Vec::new();
        for entry in index.iter().map_err(|e| err(e.into()))? {
            if doomed.len() == batch {
                break;
            }
            let (revision, id) = entry.map_err(|e| err(e.into()))?;
            if active.get(id.value()).map_err(|e| err(e.into()))?.is_some() {
                continue;
            }
            if (doomed.len() as u64) < excess {
                doomed.push((id.value().to_string(), revision.value()));
                continue;
            }
            let Some(value) = steps.get(id.value()).map_err(|e| err(e.into()))? else {
                continue;
            };
            let r = decode(&self.inner.path, id.value(), value.value())?;
            let finished = r.finished_at.unwrap_or(r.created_at);
            if now.duration_since(finished).unwrap_or_default() <= max_age {
                break;
            }
            doomed.push((id.value().to_string(), revision.value()));
        }
        Ok(doomed)
    }

    /// Every observer registry record (home → JSON).
    pub fn observers(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let err = self.read_err();
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(OBSERVERS).map_err(|e| err(e.into()))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| err(e.into()))? {
            let (k, v) = entry.map_err(|e| err(e.into()))?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Applies many changes in one transaction: one fsync for all of them.
    pub fn apply(&self, writes: &[Write]) -> Result<(), StoreError> {
        let db = self.db()?;
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            let cap = self
                .inner
                .outbox_cap
                .load(std::sync::atomic::Ordering::Acquire);
            apply_writes(&txn, writes, cap)?;
            txn.commit()?;
            Ok(())
        })();
        // Bumped after the commit whatever its outcome, so a reader that saw
        // the old value may only over-invalidate, never miss a change.
        self.inner
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        result.map_err(|e| self.classify(e))
    }

    /// Changes whenever a commit ends; see the read-ahead in `steps::engine`.
    pub fn generation(&self) -> u64 {
        self.inner
            .generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Closes the file cleanly (redb records its allocator state), so the
    /// next start need not rebuild it by walking every page. Later reads and
    /// writes fail with `Reopening`.
    pub fn close(&self) -> bool {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.release()
    }

    /// Takes the database out and drops it once no reader holds it (readers
    /// hold it for one read); false if one still did after 2 s.
    fn release(&self) -> bool {
        let old = self
            .inner
            .db
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut old) = old else {
            return true;
        };
        let until = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db);
                    return true;
                }
                Err(still) if std::time::Instant::now() < until => {
                    old = still;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(still) => {
                    *self.inner.db.write().unwrap_or_else(|p| p.into_inner()) = Some(still);
                    return false;
                }
            }
        }
    }

    /// Drops the poisoned database and opens the file again, then proves a
    /// write succeeds (a small commit). Called by the committer while the store
    /// refuses writes.
    pub fn reopen(&self) -> Result<(), StoreError> {
        let closed = self.inner.closed.load(std::sync::atomic::Ordering::Acquire);
        if closed || !self.release() {
            return Err(StoreError::Reopening {
                path: self.inner.path.clone(),
            });
        }
        let db =
            create_db(&self.inner.path, self.inner.cache_bytes).map_err(|e| self.classify(e))?;
        let db = Arc::new(db);
        *self.inner.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db);
        // A write that needs no new space proves little on a full disk, so the
        // probe also wants some room on the filesystem.
        if let Ok(fs) = nix::sys::statvfs::statvfs(&self.inner.path)
            && fs.blocks_available().saturating_mul(fs.fragment_size()) < 256 * 1024
        {
            return Err(StoreError::NoSpace {
                path: self.inner.path.clone(),
                cause: "less than 256 KiB free".into(),
            });
        }
        self.apply(&[])
    }

    /// From now on every change is also kept in the outbox until acknowledged,
    /// at most `cap` of them.
    pub fn keep_outbox(&self, cap: usize) {
        self.inner
            .outbox_cap
            .store(cap, std::sync::atomic::Ordering::Release);
    }

    /// Up to `max` changes after the last acknowledged one, oldest first.
    pub fn outbox(&self, max: usize) -> Result<Outbox, StoreError> {
        self.outbox_after(0, max)
    }

    /// As [`Store::outbox`], skipping changes up to `after` (those a batch
    /// still in flight carries).
    pub fn outbox_after(&self, after: u64, max: usize) -> Result<Outbox, StoreError> {
        let err = self.read_err();
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| err(e.into()))?;
        let mut out = Outbox::default();
        match txn.open_table(META) {
            Ok(meta) => {
                let get = |k| -> Result<u64, StoreError> {
                    Ok(meta
                        .get(k)
                        .map_err(|e| err(e.into()))?
                        .map_or(0, |v| v.value()))
                };
                out.acked = get(ACKED_KEY)?;
                out.dropped = get(DROPPED_KEY)?;
            }
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
            Err(e) => return Err(err(e.into())),
        }
        let outbox = match txn.open_table(OUTBOX) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
            Err(e) => return Err(err(e.into())),
        };
        let from = after.max(out.acked).saturating_add(1);
        for entry in outbox.range(from..).map_err(|e| err(e.into()))?.take(max) {
            let (rev, bytes) = entry.map_err(|e| err(e.into()))?;
            let key = format!("outbox/{}", rev.value());
            out.changes
                .push(decode(&self.inner.path, &key, bytes.value())?);
        }
        Ok(out)
    }

    /// Writes many records in one transaction (one fsync), with their indexes,
    /// and the highest of their revisions as the global one. For tools and
    /// tests that seed or import a store while no daemon has it open.
    pub fn put_all(&self, records: &[StepRecord]) -> Result<(), StoreError> {
        let writes = records
            .iter()
            .map(|r| {
                Ok(Write::Put {
                    id: r.id().to_string(),
                    revision: r.revision,
                    previous: None,
                    active: !r.state.is_terminal(),
                    bytes: serde_json::to_vec(r)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.apply(&writes)
    }
}

fn create_db(path: &Path, cache_bytes: usize) -> Result<Database, redb::Error> {
    Ok(redb::Builder::new()
        .set_cache_size(cache_bytes)
        .create(path)?)
}

fn decode(path: &Path, key: &str, bytes: &[u8]) -> Result<StepRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|cause| StoreError::CorruptRecord {
        path: path.to_path_buf(),
        key: key.to_string(),
        cause,
    })
}

/// The body of [`Store::apply`]: each write in order, then the outbox's cap,
/// then the global revision (the highest put so far).
fn apply_writes(
    txn: &WriteTransaction,
    writes: &[Write],
    outbox_cap: usize,
) -> Result<(), redb::Error> {
    let mut tables = Tables::open(txn, outbox_cap)?;
    let mut top = tables.meta.get(REVISION_KEY)?.map_or(0, |v| v.value());
    for write in writes {
        match write {
            Write::Put {
                id,
                revision,
                previous,
                active,
                bytes,
            } => {
                tables.put(id, *revision, *previous, *active, bytes)?;
                top = top.max(*revision);
            }
            Write::Delete { id, revision } => tables.delete(id, *revision)?,
            Write::Observer { home, bytes } => tables.observer(home, bytes.as_deref())?,
            Write::Ack { through, announced } => tables.ack(*through, *announced)?,
        }
    }
    tables.trim_outbox()?;
    tables.meta.insert(REVISION_KEY, top)?;
    Ok(())
}

/// Every table one commit may write, opened once for all its changes.
struct Tables<'txn> {
    outbox: Table<'txn, u64, &'static [u8]>,
    steps: Table<'txn, &'static str, &'static [u8]>,
    index: Table<'txn, u64, &'static str>,
    active: Table<'txn, &'static str, u64>,
    observers: Table<'txn, &'static str, &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
    /// Changes the outbox keeps; 0: no outbox.
    outbox_cap: usize,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction, outbox_cap: usize) -> Result<Self, redb::Error> {
        Ok(Tables {
            outbox: txn.open_table(OUTBOX)?,
            steps: txn.open_table(STEPS)?,
            index: txn.open_table(BY_REVISION)?,
            active: txn.open_table(ACTIVE)?,
            observers: txn.open_table(OBSERVERS)?,
            meta: txn.open_table(META)?,
            outbox_cap,
        })
    }

    /// A step's new version, with its index entries and (with an outbox) a
    /// copy to report.
    fn put(
        &mut self,
        id: &str,
        revision: u64,
        previous: Option<u64>,
        is_active: bool,
        bytes: &[u8],
    ) -> Result<(), redb::Error> {
        // The engine's idea of the previous revision, and the stored
        // one of an unfinished step: both entries go, so the index
        // holds each record once.
        let stored = self.active.get(id)?.map(|v| v.value());
        for prev in [previous, stored].into_iter().flatten() {
            let same = self.index.get(prev)?.is_some_and(|v| v.value() == id);
            if same && prev != revision {
                self.index.remove(prev)?;
            }
        }
        self.steps.insert(id, bytes)?;
        self.index.insert(revision, id)?;
        if self.outbox_cap > 0 {
            self.outbox.insert(revision, bytes)?;
        }
        if is_active {
            self.active.insert(id, revision)?;
        } else {
            self.active.remove(id)?;
        }
        Ok(())
    }

    /// Retention: only a record still at `revision` and finished goes.
    fn delete(&mut self, id: &str, revision: u64) -> Result<(), redb::Error> {
        let current = self.index.get(revision)?.is_some_and(|v| v.value() == id);
        if current && self.active.get(id)?.is_none() {
            self.index.remove(revision)?;
            self.steps.remove(id)?;
        }
        Ok(())
    }

    fn observer(&mut self, home: &str, bytes: Option<&[u8]>) -> Result<(), redb::Error> {
        match bytes {
            Some(b) => {
                self.observers.insert(home, b)?;
            }
            None => {
                self.observers.remove(home)?;
            }
        }
        Ok(())
    }

    /// Forgets the acknowledged changes, and counts the announced drops as told.
    fn ack(&mut self, through: u64, announced: u64) -> Result<(), redb::Error> {
        while self
            .outbox
            .first()?
            .is_some_and(|(k, _)| k.value() <= through)
        {
            self.outbox.pop_first()?;
        }
        let acked = self.meta.get(ACKED_KEY)?.map_or(0, |v| v.value());
        self.meta.insert(ACKED_KEY, acked.max(through))?;
        let dropped = self.meta.get(DROPPED_KEY)?.map_or(0, |v| v.value());
        self.meta
            .insert(DROPPED_KEY, dropped.saturating_sub(announced))?;
        Ok(())
    }

    /// Past the cap the oldest go: memory and disk stay bounded when the
    /// orchestrator is away for long, and the next batch says how many.
    fn trim_outbox(&mut self) -> Result<(), redb::Error> {
        if self.outbox_cap == 0 {
            // No outbox kept: nothing is over a cap that does not exist.
            return Ok(());
        }
        let over = self.outbox.len()?.saturating_sub(self.outbox_cap as u64);
        if over > 0 {
            for _ in 0..over {
                self.outbox.pop_first()?;
            }
            let dropped = self.meta.get(DROPPED_KEY)?.map_or(0, |v| v.value());
            self.meta.insert(DROPPED_KEY, dropped + over)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that failed around the store is not a failed write: it names
    /// what failed (never "writing state file ''") and does not make the API
    /// answer UNAVAILABLE as if the disk were at fault.
    #[test]
    fn an_internal_failure_names_itself_and_is_no_write_failure() {
        let e = StoreError::Internal {
            what: "a step read",
            cause: "task 7 panicked".into(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("a step read ended abnormally (task 7 panicked)"),
            "{text}"
        );
        assert!(!text.contains("''"), "{text}");
        assert!(!e.is_write_failure());
        let encode = StoreError::Encode(serde_json::from_str::<u8>("x").unwrap_err());
        assert!(matches!(
            encode.duplicate(),
            StoreError::Internal {
                what: "a commit",
                ..
            }
        ));
    }
}
