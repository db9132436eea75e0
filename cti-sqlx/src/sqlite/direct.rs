//! Write transactions executed in one synchronous call through rusqlite, as part of the
//! single writer.
//!
//! sqlx runs every statement on its connection thread: each statement is a channel send, a
//! wake-up of that thread and a wake-up of the calling task, which then waits its turn in the
//! runtime's queue behind the HTTP requests of a busy server. A batch transaction of a dozen
//! statements spent most of its time (and the writer most of its hold) in those hand-offs.
//! The hot write paths — inbox inserts, inline processing, completions — therefore run the
//! whole `BEGIN IMMEDIATE … COMMIT` synchronously through rusqlite (same `libsqlite3-sys`, so
//! the same SQLite library), with cached prepared single-row statements. The ingest writer
//! calls it from a thread of its own (`InboxStore::writer_threads`: `Cti::start` runs it on
//! a current-thread runtime there); a caller on a multi-threaded runtime's worker (the
//! processor, administrative writes) runs it inside `tokio::task::block_in_place`, so the
//! runtime moves that worker's other tasks to another thread.
//!
//! The direct connection is part of the single writer: it is only used under the writer's
//! mutex, so writes stay serialised in-process and the two connections never wait for each
//! other's database lock. (A file database gets a second connection; an in-memory one, where
//! a second connection would see another database, borrows the sqlx connection's handle.)

use std::path::Path;
use std::time::Duration;

use cti_core::store::{StoreError, StoreResult};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use sqlx::SqliteConnection;
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::common;

/// Prepared statements kept per writer (every direct statement has a fixed text).
const STATEMENT_CACHE: usize = 64;

/// The rusqlite side of the writer.
enum Direct {
    /// File databases: a second connection to the same file, with the writer's settings. It
    /// is only used under the writer mutex, like the sqlx connection, so the two never wait
    /// for each other's database lock; it keeps its own statement and page caches warm.
    Own(Connection),
    /// In-memory databases (where a second connection would open another, empty database): a
    /// view of the sqlx connection's own handle, created at first use and only used while
    /// that handle is locked out of sqlx (`SqliteConnection::lock_handle`).
    Shared(Option<Connection>),
}

/// The single writer: the sqlx connection (every other write) and the direct side.
pub(crate) struct Writer {
    /// Declared first: dropped — its statements finalized — before the connection closes.
    direct: Direct,
    /// The sqlx connection.
    pub(crate) conn: SqliteConnection,
}

/// What the direct connection of a file database sets (the rest is the file's: WAL mode).
pub(crate) struct DirectOptions<'a> {
    pub path: &'a Path,
    pub cache_size: &'a str,
    pub wal_autocheckpoint: &'a str,
    pub journal_size_limit: &'a str,
    pub busy_timeout: Duration,
}

impl Writer {
    /// The writer of a file database: `conn` plus its own direct connection.
    pub(crate) fn open(conn: SqliteConnection, o: &DirectOptions<'_>) -> StoreResult<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let direct = Connection::open_with_flags(o.path, flags).map_err(map_err)?;
        configure(&direct, o)?;
        Ok(Self {
            direct: Direct::Own(direct),
            conn,
        })
    }

    /// The writer of an in-memory database: direct transactions run on `conn`'s handle.
    pub(crate) fn in_memory(conn: SqliteConnection) -> Self {
        Self {
            direct: Direct::Shared(None),
            conn,
        }
    }

    /// Runs `f` in one `BEGIN IMMEDIATE … COMMIT`, synchronously: committed when `f` returns
    /// `Ok`, rolled back when it returns `Err` or panics.
    pub(crate) async fn transaction<T>(
        &mut self,
        f: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        match &mut self.direct {
            Direct::Own(direct) => run(direct, f),
            Direct::Shared(view) => {
                let mut handle = self.conn.lock_handle().await.map_err(common::map_err)?;
                let direct = match view {
                    Some(d) => d,
                    empty => {
                        // The crate's one `unsafe`: a view of the handle sqlx opened.
                        // SAFETY: the handle stays open as long as `self.conn` (the view does
                        // not own it and is dropped first, see `Writer`), and the view is only
                        // used here, while `handle` keeps sqlx's worker away from the handle.
                        #[allow(unsafe_code)]
                        let d = unsafe { Connection::from_handle(handle.as_raw_handle().as_ptr()) }
                            .map_err(map_err)?;
                        d.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                        empty.insert(d)
                    }
                };
                let out = run(direct, f);
                drop(handle);
                out
            }
        }
    }
}

/// Sets up the direct connection of a file database: the writer's durability, cache and
/// checkpoint settings, and no evaluation of `CHECK` constraints.
///
/// SQLite codes a `CHECK (status IN (…))` of three or more values as a temporary b-tree of
/// the values, built afresh for every row written: the inbox's and the calls' status checks
/// cost the single writer about 5 % of its CPU per event (docs/performance.md, 2026-11-30 i).
/// Every value this connection writes comes from a Rust type (`EventStatus::as_str`,
/// `CallStatus::as_str`, …), so the checks cannot fail here; the test
/// `sqlite::statement_tests::writes_of_the_direct_connection_pass_the_check_constraints`
/// checks the rows it wrote with `PRAGMA integrity_check`, which verifies the `CHECK`
/// constraints. The checks stay in force on every other connection (the sqlx writer,
/// imports, anyone's own SQL) and in-memory databases keep them.
pub(crate) fn configure(direct: &Connection, o: &DirectOptions<'_>) -> StoreResult<()> {
    direct.busy_timeout(o.busy_timeout).map_err(map_err)?;
    direct
        .execute_batch(&format!(
            "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = {}; \
             PRAGMA wal_autocheckpoint = {}; PRAGMA journal_size_limit = {}; \
             PRAGMA ignore_check_constraints = ON;",
            o.cache_size, o.wal_autocheckpoint, o.journal_size_limit
        ))
        .map_err(map_err)?;
    direct.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// [`Writer::transaction`] on `direct`, inside `block_in_place` on a multi-threaded runtime
/// (the runtime hands this worker's other tasks to another thread meanwhile).
fn run<T>(
    direct: &mut Connection,
    f: impl FnOnce(&Connection) -> StoreResult<T>,
) -> StoreResult<T> {
    let run = move || {
        let tx = direct
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let out = f(&tx)?;
        tx.commit().map_err(map_err)?;
        Ok(out)
    };
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
        _ => run(),
    }
}

/// The cached prepared statement of `sql` on the writer's direct connection `tx`. Every
/// direct statement goes through here; in this crate's tests the texts are recorded, so a
/// test can examine every statement the writer ran (`recorded_statements`).
pub(crate) fn prepare<'c>(
    tx: &'c Connection,
    sql: &str,
) -> StoreResult<rusqlite::CachedStatement<'c>> {
    #[cfg(test)]
    record(sql);
    tx.prepare_cached(sql).map_err(map_err)
}

#[cfg(test)]
static RECORDED: std::sync::Mutex<Option<std::collections::BTreeSet<String>>> =
    std::sync::Mutex::new(None);

#[cfg(test)]
fn record(sql: &str) {
    let mut set = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
    set.get_or_insert_with(Default::default)
        .insert(sql.to_string());
}

/// Every statement text [`prepare`] saw in this test process.
#[cfg(test)]
pub(crate) fn recorded_statements() -> Vec<String> {
    let set = RECORDED.lock().unwrap_or_else(|e| e.into_inner());
    set.iter().flatten().cloned().collect()
}

/// Maps a rusqlite error like [`common::map_err`] maps sqlx's: "cannot write now" codes →
/// [`StoreError::Unavailable`], unique violations → [`StoreError::Conflict`], the rest →
/// [`StoreError::Backend`]. SQLite's messages never contain parameter values.
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => {
            let msg = msg.as_deref().unwrap_or("");
            let code = f.extended_code;
            match f.code {
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::OutOfMemory
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::CannotOpen => StoreError::Unavailable(format!("sqlite {code}: {msg}")),
                // 1555 PRIMARYKEY, 2067 UNIQUE.
                ErrorCode::ConstraintViolation if matches!(code, 1555 | 2067) => {
                    StoreError::Conflict(format!("unique constraint violated: {msg}"))
                }
                _ => StoreError::Backend(format!("sqlite {code}: {msg}")),
            }
        }
        rusqlite::Error::FromSqlConversionFailure(i, _, source) => {
            StoreError::Backend(format!("decoding column {i}: {source}"))
        }
        rusqlite::Error::InvalidColumnType(i, name, _) => {
            StoreError::Backend(format!("decoding column {i} ({name}): unexpected type"))
        }
        rusqlite::Error::IntegralValueOutOfRange(i, _) => {
            StoreError::Backend(format!("decoding column {i}: out of range"))
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn failure(extended: i32, msg: &str) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(extended), Some(msg.into()))
    }

    #[test]
    fn cannot_write_now_is_unavailable() {
        for code in [
            ffi::SQLITE_BUSY,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_FULL,
        ] {
            let e = map_err(failure(code, "database is locked"));
            assert!(matches!(e, StoreError::Unavailable(_)), "{code}: {e:?}");
        }
    }

    #[test]
    fn unique_violations_are_conflicts_other_constraints_backend_errors() {
        for code in [
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            ffi::SQLITE_CONSTRAINT_PRIMARYKEY,
        ] {
            let e = map_err(failure(code, "UNIQUE constraint failed: calls.id"));
            assert!(matches!(e, StoreError::Conflict(_)), "{code}: {e:?}");
        }
        let e = map_err(failure(
            ffi::SQLITE_CONSTRAINT_CHECK,
            "CHECK constraint failed",
        ));
        assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    }

    #[test]
    fn a_real_statement_error_maps_and_rolls_back() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY)")
            .unwrap();
        let out = run(&mut conn, |tx| {
            tx.execute("INSERT INTO t VALUES ('a')", [])
                .map_err(map_err)?;
            tx.execute("INSERT INTO t VALUES ('a')", [])
                .map_err(map_err)?;
            Ok(())
        });
        assert!(matches!(out, Err(StoreError::Conflict(_))), "{out:?}");
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            n, 0,
            "the first insert was rolled back with the transaction"
        );
        run(&mut conn, |tx| {
            tx.execute("INSERT INTO t VALUES ('b')", [])
                .map_err(map_err)
        })
        .unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "committed when the closure succeeds");
    }
}
