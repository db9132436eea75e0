//! [`SqliteStore`]: every cti-core store trait on an embedded SQLite database.
//!
//! * One file (`sqlite://cti.db`, created when missing) in WAL mode with
//!   `synchronous=NORMAL` (durable against a process crash), `busy_timeout` 5 s and foreign
//!   keys on.
//! * ONE writer behind an async mutex: every write transaction (`BEGIN IMMEDIATE`) runs under
//!   it, so writes are serialised in-process (FIFO) and never fight over the database lock. A
//!   mutex rather than a pool of one: a pool checkout costs two extra round trips to the
//!   connection thread (ping on acquire and on release) plus a spawned task, more than the
//!   statements of a small transaction. The hot write transactions (inbox inserts, inline
//!   processing, completions) run in one synchronous call through rusqlite instead of
//!   statement by statement through sqlx (`direct.rs`); the rest use sqlx. Those writes block,
//!   so the store asks for writer threads (`InboxStore::writer_threads`): `Cti` runs its
//!   ingest writer on a thread of its own. Reads use a small pool (WAL readers never block the writer).
//! * WAL checkpoints run on their own connection in the background
//!   (`PRAGMA wal_checkpoint(PASSIVE)` every 50 ms while writing), so commits never wait for the
//!   checkpoint's `fsync`; the same task makes the log restart every few thousand frames,
//!   pausing the writer only for one short, nearly clean checkpoint (see `Checkpointer`).
//! * In-memory databases (`sqlite::memory:`, `…mode=memory…`) use the writer connection for
//!   reads too, because every connection to an in-memory database would otherwise see its
//!   own empty database.
//! * Schema: `migrations/sqlite`, embedded with `sqlx::migrate!`. Timestamps are `INTEGER`
//!   microseconds since the epoch (UTC), ids `TEXT`, JSON `TEXT`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cti_sqlx::SqliteStore;
//! let store = SqliteStore::open("sqlite://cti.db").await?;
//! # let _ = store; Ok(()) }
//! ```

mod apps;
mod complete;
mod dialpad;
mod direct;
mod inbox;
mod records;
mod rows;
#[cfg(test)]
mod statement_tests;

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use cti_core::model::{AppId, Timestamp};
use cti_core::store::{Store, StoreError, StoreResult};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Sqlite, Transaction};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use self::direct::{DirectOptions, Writer};

pub use crate::common::MigrationError;
use crate::common::map_err;

/// The embedded SQLite migrations (`cti-sqlx/migrations/sqlite`): `0001` the schema,
/// `0002` the by-call index of the inbox (dropped again by `0004`: unused, and a random index
/// page per ingested event), `0003` the trigger-maintained list counters. (A new migration
/// file is only embedded when this crate recompiles; `cargo clean -p cti-sqlx` if it was
/// added without a source change.)
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// Size of the read pool of a file database.
const READ_POOL_SIZE: u32 = 4;

/// Page cache of the writer (`PRAGMA cache_size`, negative = KiB): 8 MiB. SQLite scans the
/// page cache's hash table at every commit (`pcache1TruncateUnsafe`), so a larger cache costs
/// every transaction; the operating system's page cache holds the rest of the hot pages
/// (32 MiB measured ~8 % slower flat out, docs/performance.md).
const WRITER_CACHE: &str = "-8192";

/// Page cache of each reader: 8 MiB.
const READER_CACHE: &str = "-8192";

/// Interval of the background WAL checkpoint while the database is being written. Each
/// checkpoint `fsync`s the WAL (and the database file when it caught up with the log). Before
/// the checkpointer restarted the log itself, the writer's appends stalled behind large
/// checkpoints, and at 2,000 webhooks/s the ingest p99 was 83 ms with 1 s, 27 ms with 100 ms
/// and 16 ms with 10 ms. Since it does, the interval no longer sets the tail, and a longer
/// one copies a page rewritten by several commits once: 50 ms cost 5–10 % less server CPU per
/// request than 10 ms at the same p99 (docs/performance.md, 2026-11-30 g). An idle database
/// is not checkpointed.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);

/// The writer checkpoints by itself past this many WAL pages (40 MiB; SQLite's default is
/// 1000): a bound on the WAL should the background [`Checkpointer`] fall behind. Normally the
/// checkpointer restarts the log long before (see [`RESTART_FRAMES`]). The writer's own
/// checkpoint runs in its commit and `fsync`s the database file, which holds every page copied
/// since the last such flush: when it was the only way the WAL restarted, that `fsync` took
/// 8–14 ms three to five times a second, and set the ingest p99 (docs/performance.md,
/// 2026-11-30 f).
const WRITER_AUTOCHECKPOINT: &str = "10000";

/// WAL length (frames) past which the background [`Checkpointer`] makes the log restart:
/// it flushes the database file beside the writer, then pauses the writer for one last short
/// checkpoint. 4,000 frames are about a seventh of a second of ingest at 2,000 webhooks/s
/// (small commits log many pages each), less flat out.
const RESTART_FRAMES: i64 = 4000;

/// Before pausing the writer, the checkpointer flushes the database file up to this many
/// times, until a flush takes less than [`SHORT_FLUSH`].
const FLUSH_ROUNDS: usize = 3;

/// A flush this short leaves little for the paused step.
const SHORT_FLUSH: Duration = Duration::from_millis(2);

/// The WAL file is truncated back to this size (bytes) after it was reset.
const JOURNAL_SIZE_LIMIT: &str = "67108864";

/// How long a connection waits for the database lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A cti-core [`Store`] on SQLite. Cheap to clone (connections are shared).
#[derive(Clone)]
pub struct SqliteStore {
    /// The single writer connection.
    writer: Arc<Mutex<Writer>>,
    /// Count of writer acquisitions: the checkpointer skips ticks when it has not moved.
    writes: Arc<AtomicU64>,
    /// Readers; `None` for in-memory databases (reads use the writer).
    reader: Option<SqlitePool>,
    /// Background WAL checkpoints (file databases), stopped with the last clone.
    _checkpointer: Option<Arc<Checkpointer>>,
    /// Directory of a [`temporary`](Self::open_temporary) database, removed with the last clone.
    _temp: Option<Arc<tempfile::TempDir>>,
}

/// Copies committed WAL frames into the database file (`PRAGMA wal_checkpoint(PASSIVE)`) on
/// its own connection every [`CHECKPOINT_INTERVAL`] while the writer is in use, so the writer's
/// commits do not pay for the checkpoint's writes and `fsync`s. PASSIVE never blocks the writer
/// or readers.
///
/// Copying is not enough to keep the WAL short: SQLite restarts the log only when a write
/// transaction begins while every frame is copied, and under steady writes the writer has
/// always committed more since the last checkpoint. So once the log passes
/// [`RESTART_FRAMES`], the checkpointer restarts it in two steps: it `fsync`s the database file
/// itself (the pages its checkpoints copied; the writer keeps committing meanwhile), then takes
/// the writer's mutex for one more PASSIVE checkpoint, which copies the few frames committed
/// since and, having caught up, `fsync`s the WAL and the database — both nearly clean by
/// then — so the writer's next transaction starts the log over. The writer pauses for that
/// last step only (about a millisecond), instead of paying its own autocheckpoint's full
/// `fsync` ([`WRITER_AUTOCHECKPOINT`]). If a reader's snapshot keeps the checkpoint from
/// catching up, the next attempt waits until the log has grown by another [`RESTART_FRAMES`].
struct Checkpointer {
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    fn start(
        mut conn: SqliteConnection,
        writes: Arc<AtomicU64>,
        writer: Weak<Mutex<Writer>>,
        db: Option<std::fs::File>,
    ) -> Self {
        let db = db.map(Arc::new);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen = 0;
            // Ticks still to checkpoint: a few more after the last write, so a transaction that
            // was still running at the previous tick is copied too.
            let mut pending = 1u8;
            // WAL length from which the next restart is attempted.
            let mut restart_at = RESTART_FRAMES;
            // The write count when the last restart was prepared: until the next write the log
            // keeps its length (the writer restarts it), and there is nothing to prepare.
            let mut prepared_at = None;
            let mut flush_failed = false;
            loop {
                tick.tick().await;
                let now = writes.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    pending = 3;
                }
                if pending == 0 {
                    continue;
                }
                pending -= 1;
                let Some(wal) = passive_checkpoint(&mut conn).await else {
                    continue;
                };
                if wal.log < RESTART_FRAMES {
                    // The log restarted (or is short): the next attempt is due at the limit.
                    restart_at = RESTART_FRAMES;
                    continue;
                }
                if wal.log < restart_at || prepared_at == Some(now) {
                    // Waiting for the log to grow after a failed attempt, or for the writer to
                    // restart it.
                    continue;
                }
                if let Some(db) = &db {
                    // Flush until a flush is short: what was copied during a long one is
                    // copied and flushed again, so the paused step has almost nothing left.
                    for _ in 0..FLUSH_ROUNDS {
                        let started = std::time::Instant::now();
                        let db = db.clone();
                        let flushed = tokio::task::spawn_blocking(move || db.sync_data()).await;
                        if let Err(e) = flushed
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                        {
                            // Without the flush the paused step flushes more; said once.
                            if !flush_failed {
                                tracing::warn!(error = %e, "sqlite database flush failed");
                                flush_failed = true;
                            }
                            break;
                        }
                        if started.elapsed() < SHORT_FLUSH {
                            break;
                        }
                        passive_checkpoint(&mut conn).await;
                    }
                }
                let Some(writer) = writer.upgrade() else {
                    return;
                };
                let paused = writer.lock().await;
                let last = passive_checkpoint(&mut conn).await;
                let written = writes.load(Ordering::Relaxed);
                drop(paused);
                restart_at = match last {
                    Some(w) if w.copied >= w.log => {
                        prepared_at = Some(written);
                        RESTART_FRAMES
                    }
                    // A reader's snapshot held it back: try again after as many frames more.
                    Some(w) => w.log + RESTART_FRAMES,
                    None => wal.log + RESTART_FRAMES,
                };
            }
        });
        Self { task }
    }
}

/// What `PRAGMA wal_checkpoint` reports (frames): the WAL's length in the checkpoint's
/// snapshot, taken when it started, and how much of the WAL is copied into the database file.
/// `copied == log` means caught up with that snapshot only: the writer may have committed
/// more meanwhile, unless it was paused.
struct WalState {
    log: i64,
    copied: i64,
}

/// One `PRAGMA wal_checkpoint(PASSIVE)` on `conn`; `None` (logged) when it failed.
async fn passive_checkpoint(conn: &mut SqliteConnection) -> Option<WalState> {
    match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(conn)
        .await
    {
        Ok((_busy, log, copied)) => Some(WalState { log, copied }),
        Err(e) => {
            tracing::warn!(error = %map_err(e), "sqlite background checkpoint failed");
            None
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// A connection for reading: from the read pool, or the writer (in-memory databases).
pub(crate) enum ReadConn<'a> {
    /// Pooled reader.
    Pool(PoolConnection<Sqlite>),
    /// The writer, locked.
    Writer(MappedMutexGuard<'a, SqliteConnection>),
}

impl Deref for ReadConn<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        match self {
            ReadConn::Pool(c) => c,
            ReadConn::Writer(c) => c,
        }
    }
}

impl DerefMut for ReadConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            ReadConn::Pool(c) => c,
            ReadConn::Writer(c) => c,
        }
    }
}

/// Starts a write transaction that takes the database write lock up front (`BEGIN
/// IMMEDIATE`), so a read-then-write never fails half-way on a lock held by another process.
pub(crate) async fn begin_immediate(
    conn: &mut SqliteConnection,
) -> StoreResult<Transaction<'_, Sqlite>> {
    conn.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)
}

impl SqliteStore {
    /// Connects to (and creates, if missing) the database at `url` — `sqlite://cti.db`,
    /// `sqlite:///abs/path.db`, `sqlite::memory:` — without migrating it.
    ///
    /// Errors: an invalid URL is [`StoreError::Backend`]; a database that cannot be opened is
    /// [`StoreError::Unavailable`].
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid sqlite url: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("temp_store", "MEMORY");
        if is_in_memory(url) {
            let writer = opts
                .pragma("cache_size", WRITER_CACHE)
                .connect()
                .await
                .map_err(map_err)?;
            return Ok(Self {
                writer: Arc::new(Mutex::new(Writer::in_memory(writer))),
                writes: Arc::new(AtomicU64::new(0)),
                reader: None,
                _checkpointer: None,
                _temp: None,
            });
        }
        let writer = opts
            .clone()
            .pragma("cache_size", WRITER_CACHE)
            .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT)
            .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT)
            .connect()
            .await
            .map_err(map_err)?;
        let writer = Writer::open(
            writer,
            &DirectOptions {
                path: opts.get_filename(),
                cache_size: WRITER_CACHE,
                wal_autocheckpoint: WRITER_AUTOCHECKPOINT,
                journal_size_limit: JOURNAL_SIZE_LIMIT,
                busy_timeout: BUSY_TIMEOUT,
            },
        )?;
        let checkpointer = opts.clone().connect().await.map_err(map_err)?;
        // Flushed by the checkpointer (`fsync` needs no write access).
        let db_file = std::fs::File::open(opts.get_filename()).ok();
        let writes = Arc::new(AtomicU64::new(0));
        let reader = SqlitePoolOptions::new()
            .max_connections(READ_POOL_SIZE)
            .test_before_acquire(false)
            .connect_with(
                opts.pragma("cache_size", READER_CACHE)
                    .pragma("query_only", "ON"),
            )
            .await
            .map_err(map_err)?;
        let writer = Arc::new(Mutex::new(writer));
        let checkpointer = Checkpointer::start(
            checkpointer,
            writes.clone(),
            Arc::downgrade(&writer),
            db_file,
        );
        Ok(Self {
            writer,
            writes,
            reader: Some(reader),
            _checkpointer: Some(Arc::new(checkpointer)),
            _temp: None,
        })
    }

    /// [`connect`](Self::connect) then [`migrate`](Self::migrate).
    pub async fn open(url: &str) -> Result<Self, MigrationError> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens a fresh, migrated database in a new temporary directory that is deleted when the
    /// last clone of the store is dropped. A real file database (WAL, separate writer and
    /// readers) — for tests, demos and throw-away runs.
    pub async fn open_temporary() -> Result<Self, MigrationError> {
        let dir = tempfile::Builder::new()
            .prefix("cti-sqlite-")
            .tempdir()
            .map_err(|e| {
                StoreError::Unavailable(format!("creating a temporary directory: {}", e.kind()))
            })?;
        let path = dir.path().join("cti.db");
        let url = format!("sqlite://{}", path.display());
        let mut store = Self::open(&url).await?;
        store._temp = Some(Arc::new(dir));
        Ok(store)
    }

    /// Applies the embedded migrations that are not applied yet (idempotent).
    ///
    /// Refuses with [`MigrationError::SchemaTooNew`] — before touching anything — when the
    /// database records a migration newer than the newest one this binary embeds.
    pub async fn migrate(&self) -> Result<(), MigrationError> {
        let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        if let Some(applied) = self.applied_version().await?
            && applied > known
        {
            return Err(MigrationError::SchemaTooNew { applied, known });
        }
        let mut w = self.writer.lock().await;
        MIGRATOR
            .run(&mut w.conn)
            .await
            .map_err(|e| MigrationError::Store(map_err(e.into())))
    }

    /// The newest migration version recorded in the database (`None` for a fresh database).
    pub async fn applied_version(&self) -> StoreResult<Option<i64>> {
        let ledger: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&mut *self.write_conn().await)
        .await
        .map_err(map_err)?;
        if ledger.is_none() {
            return Ok(None);
        }
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut *self.write_conn().await)
            .await
            .map_err(map_err)
    }

    /// Closes the read pool (waits for checked-out readers) and tidies the writer, which
    /// closes when the last clone of the store is dropped.
    pub async fn close(&self) {
        if let Some(r) = &self.reader {
            r.close().await;
        }
        // The writer closes with the last clone; `PRAGMA optimize` is SQLite's advice for a
        // connection about to close (refreshes planner statistics where useful).
        let _ = sqlx::query("PRAGMA optimize")
            .execute(&mut *self.write_conn().await)
            .await;
    }

    /// Inserts an app that only has a legacy bcrypt key (`$2a$/$2b$/$2y$`), as imported from a
    /// database of the original server (spec §9.7). It authenticates through
    /// [`legacy_keys`](cti_core::store::AppStore::legacy_keys) until a lookup hash is
    /// backfilled. [`StoreError::Conflict`] when the id or the hash already exists.
    pub async fn insert_legacy_app(
        &self,
        id: AppId,
        name: &str,
        bcrypt_hash: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO apps (id, name, api_key, is_active, created_at, updated_at)
             VALUES (?1, ?2, ?3, 1, ?4, ?4)",
        )
        .bind(id.0.to_string())
        .bind(name)
        .bind(bcrypt_hash)
        .bind(rows::ts(&now))
        .execute(&mut *self.write_conn().await)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    /// The writer connection (waits for the current write to finish).
    pub(crate) async fn write_conn(&self) -> MappedMutexGuard<'_, SqliteConnection> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        MutexGuard::map(self.writer.lock().await, |w| &mut w.conn)
    }

    /// Runs `f` as one write transaction (`BEGIN IMMEDIATE … COMMIT`, rolled back when `f`
    /// fails) synchronously on the writer's handle — no per-statement hand-off to sqlx's
    /// connection thread (see `direct.rs`).
    pub(crate) async fn write_direct<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.writer.lock().await.transaction(f).await
    }

    /// A connection for reading (pooled reader, or the writer of an in-memory database).
    pub(crate) async fn read_conn(&self) -> StoreResult<ReadConn<'_>> {
        match &self.reader {
            Some(pool) => Ok(ReadConn::Pool(pool.acquire().await.map_err(map_err)?)),
            None => Ok(ReadConn::Writer(MutexGuard::map(
                self.writer.lock().await,
                |w| &mut w.conn,
            ))),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
