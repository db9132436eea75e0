//! The ingest writer's own connection.
//!
//! [`PgStore`] asks `Cti` to run each ingest writer on a thread of its own
//! ([`InboxStore::writer_threads`](cti_core::store::InboxStore::writer_threads)), and on such a
//! thread ([`on_writer_thread`]) it sends the writer's batches over a connection of the
//! thread's own, opened there: its socket is then driven by that thread's runtime, which runs
//! nothing but the writer. A batch is a chain of round trips (read, write); each reply wakes
//! the writer at once.
//!
//! Through a pooled connection opened by the server's runtime, each reply waited until one of
//! that runtime's workers — busy parsing, verifying and answering requests — next polled for
//! I/O, and then behind the requests queued on it: PostgreSQL stood idle meanwhile
//! (docs/performance.md, 2026-12-01 m). One connection also keeps the writer's statements on
//! one backend, whose caches stay warm, instead of spreading them over the pool.
//!
//! The connection lives in a thread-local slot for as long as the writer thread (`Cti`'s
//! shutdown ends it), and only while its batches succeed: after an error it is dropped and the
//! next batch opens a new one. It comes on top of the pool's `max_connections`, one per writer
//! thread, and shows in `pg_stat_activity` as the pool's `application_name` followed by
//! `/writer` (`cti/writer` when the pool has none).
//!
//! # Cached plans
//!
//! The writer runs the same few prepared statements over and over on this one connection, so
//! PostgreSQL soon plans them once (a generic plan) instead of at every execution: that saved
//! about a fifth of PostgreSQL's CPU per event (docs/performance.md, 2026-12-01 m). Its reads
//! look rows up through `LATERAL` subqueries by their unique keys. But a generic plan is kept
//! until something invalidates it — an `ANALYZE` does, a table's growth does not — and one
//! made while a table is nearly empty (a fresh database, before autovacuum has analysed it)
//! may look a call up through another index that starts with `app_id` (PostgreSQL sees them
//! as equally cheap then) and so scan all of the app's calls per lookup, more and more of them
//! as the table grows: at 2,000 webhooks/s that took the p99 to seconds. So the connection
//! drops its cached plans (`DISCARD PLANS`) 1 s after it opened, then after 2, 4, 8, 16 and
//! 32 s more, then every minute ([`Replan`]): a plan made on near-empty tables lives about as
//! long as the tables have existed, and the next one sees them as they are by then.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cti_core::store::{StoreError, StoreResult, on_writer_thread};
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection, Executor};

use super::pipeline::Pipeline;
use super::rows::pg_err;
use super::{PING_IF_IDLE_FOR, PgStore, set_search_path};

/// When the writer's connection next drops its cached plans (see "Cached plans" above).
#[derive(Clone, Copy, Debug)]
struct Replan {
    /// Since the connection opened or last dropped its plans.
    since: Instant,
    /// How long after `since`.
    after: Duration,
}

impl Replan {
    /// The first interval, doubled after each drop up to [`Replan::LAST`].
    const FIRST: Duration = Duration::from_secs(1);
    const LAST: Duration = Duration::from_secs(60);

    fn new(now: Instant) -> Self {
        Replan {
            since: now,
            after: Self::FIRST,
        }
    }

    fn due(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= self.after
    }

    /// The schedule after a drop at `now`.
    fn next(self, now: Instant) -> Self {
        Replan {
            since: now,
            after: (self.after * 2).min(Self::LAST),
        }
    }
}

/// A writer thread's connection: whose store it serves (the store's pipeline, shared by its
/// clones), when it was last handed back, and when it drops its cached plans next.
struct Slot {
    store: Weak<Pipeline>,
    conn: PgConnection,
    idle_since: Instant,
    replan: Replan,
}

thread_local! {
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
}

/// The writer thread's connection while a batch uses it. Dropped, it is closed (the batch
/// failed, or the caller gave up on it); [`Own::keep`] hands it back for the next batch.
pub(super) struct Own {
    store: Weak<Pipeline>,
    conn: PgConnection,
    replan: Replan,
}

impl Own {
    /// Hands the connection back to the thread for its next batch.
    pub(super) fn keep(self) {
        let slot = Slot {
            store: self.store,
            conn: self.conn,
            idle_since: Instant::now(),
            replan: self.replan,
        };
        SLOT.with(|s| *s.borrow_mut() = Some(slot));
    }
}

impl Deref for Own {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for Own {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

impl PgStore {
    /// On an ingest writer's thread, its own connection to this store's database (opened on
    /// first use with the pool's connect options and this store's `search_path`; pinged first
    /// when it sat idle for a while; its cached plans dropped as [`Replan`] says); `None`
    /// elsewhere.
    pub(super) async fn own_connection(&self) -> StoreResult<Option<Own>> {
        if !on_writer_thread() {
            return Ok(None);
        }
        let store = Arc::downgrade(&self.pipeline);
        let kept = SLOT
            .with(|s| s.borrow_mut().take())
            .filter(|slot| slot.store.ptr_eq(&store));
        if let Some(slot) = kept {
            if let Some(own) = Self::reuse(slot).await {
                return Ok(Some(own));
            }
        }
        let conn = self.open_own().await?;
        Ok(Some(Own {
            store,
            conn,
            replan: Replan::new(Instant::now()),
        }))
    }

    /// The kept connection, checked and with fresh plans as due; `None` when it failed.
    async fn reuse(mut slot: Slot) -> Option<Own> {
        if slot.idle_since.elapsed() >= PING_IF_IDLE_FOR {
            slot.conn.ping().await.ok()?;
        }
        let now = Instant::now();
        if slot.replan.due(now) {
            slot.conn.execute("DISCARD PLANS").await.ok()?;
            slot.replan = slot.replan.next(now);
        }
        Some(Own {
            store: slot.store,
            conn: slot.conn,
            replan: slot.replan,
        })
    }

    /// Opens a connection like the pool's, pointed at this store's schema and named after the
    /// writer ([`writer_name`]), within the pool's acquire timeout.
    async fn open_own(&self) -> StoreResult<PgConnection> {
        let options = self.pool.connect_options();
        let name = writer_name(options.get_application_name());
        let options = options.as_ref().clone().application_name(&name);
        let timeout = self.pool.options().get_acquire_timeout();
        let open = async {
            let mut conn = options.connect().await?;
            conn.execute(&*set_search_path(&self.schema)).await?;
            Ok::<_, sqlx::Error>(conn)
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(conn) => conn.map_err(pg_err),
            Err(_) => Err(StoreError::Unavailable(format!(
                "could not connect the ingest writer to PostgreSQL within {timeout:?}"
            ))),
        }
    }
}

/// The `application_name` of a writer's connection, as `pg_stat_activity` shows it: the pool's
/// with `/writer` appended (`cti/writer` when the pool has none), within PostgreSQL's 63 bytes.
fn writer_name(pool: Option<&str>) -> String {
    const SUFFIX: &str = "/writer";
    let base = pool.filter(|n| !n.is_empty()).unwrap_or("cti");
    let mut end = base.len().min(63 - SUFFIX.len());
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{SUFFIX}", &base[..end])
}

#[cfg(test)]
mod tests {
    use super::{Replan, writer_name};
    use std::time::{Duration, Instant};

    #[test]
    fn plans_are_dropped_after_1_2_4_8_16_32_then_every_60_seconds() {
        let t0 = Instant::now();
        let s = |n: u64| Duration::from_secs(n);
        let mut r = Replan::new(t0);
        let mut drops = Vec::new();
        // Every 100 ms over ten minutes, as batches would come.
        for tick in 1..=6000u64 {
            let now = t0 + Duration::from_millis(100 * tick);
            if r.due(now) {
                drops.push(now.duration_since(t0));
                r = r.next(now);
            }
        }
        let expect: Vec<Duration> = [1, 3, 7, 15, 31, 63, 123, 183, 243, 303, 363, 423, 483, 543]
            .into_iter()
            .map(s)
            .collect();
        assert_eq!(drops, expect);
    }

    #[test]
    fn the_writer_is_named_after_the_pool() {
        assert_eq!(writer_name(None), "cti/writer");
        assert_eq!(writer_name(Some("")), "cti/writer");
        assert_eq!(writer_name(Some("crm")), "crm/writer");
        let long = "é".repeat(40); // 80 bytes
        let name = writer_name(Some(&long));
        assert!(name.len() <= 63, "{}", name.len());
        assert_eq!(name, format!("{}/writer", "é".repeat(28)));
    }
}
