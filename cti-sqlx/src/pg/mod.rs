//! PostgreSQL store ([`PgStore`]) and `LISTEN/NOTIFY` bus ([`PgBus`]).
//!
//! # Layout
//!
//! All tables live in their own schema (default `cti`, see [`PgOptions::schema`]); every pooled
//! connection runs `SET search_path TO "<schema>"` right after connecting, so the embedded
//! migrations — and sqlx's `_sqlx_migrations` ledger — are created inside that schema and never
//! collide with a host application's tables or migrations.
//!
//! # Concurrency
//!
//! * Inbox claims run one at a time per schema (a transaction-scoped advisory lock) and use
//!   `FOR UPDATE SKIP LOCKED`; the per-call rules (no two events of one call under a lease, one
//!   event per call per claim) are evaluated inside that serialised statement, so they hold with
//!   any number of workers and instances.
//! * [`InboxStore::inbox_complete_batch`](cti_core::store::InboxStore::inbox_complete_batch)
//!   (and `inbox_complete`, a batch of one) first locks the rows of the batch's apps, in id
//!   order, and moves their apply generations: appliers of one app serialise, so the rows a
//!   batch reads cannot change before it commits, batches never deadlock, and each app's outbox
//!   sequence numbers (`apps.last_event_seq`, moved under that lock) are gap-free and in commit
//!   order. The merge itself is the pure [`cti_core::store::apply_event`]; a batch costs a
//!   constant number of statements (`crate::batch`).
//! * An inline batch
//!   ([`InboxStore::inbox_insert_processed`](cti_core::store::InboxStore::inbox_insert_processed))
//!   reads first, without locks, and writes everything in one statement that takes the same row
//!   locks and checks that no applier moved its apps' generations since the read (see
//!   [`PgOptions::optimistic_inline`]); if one did, or an event turns out to be stored already,
//!   the statement leaves nothing behind and the batch runs again under the locks.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cti_sqlx::pg::{PgOptions, PgStore};
//! let store = PgStore::open("postgres://postgres@127.0.0.1/cti", PgOptions::default()).await?;
//! # let _ = store; Ok(()) }
//! ```

mod apps;
mod bus;
mod complete;
mod dialpad;
mod inbox;
mod own;
mod pipeline;
mod records;
pub(crate) mod rows;
mod write;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cti_core::store::{Store, StoreError, StoreResult};
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};

pub use crate::common::MigrationError;
pub use bus::{PgBus, PgBusOptions};

use rows::pg_err;

/// The embedded PostgreSQL migrations (`cti-sqlx/migrations/postgres`).
pub static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Idle time after which a pooled connection is pinged before being handed out. Connections in
/// constant use skip the round trip; one that sat idle (and may have been cut by a restart or a
/// firewall) is checked.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

/// The statement that points a connection at `schema` (validated by
/// [`validate_schema_name`]): run by every pooled connection and by each ingest writer's own.
fn set_search_path(schema: &str) -> String {
    format!("SET search_path TO \"{schema}\"")
}

/// Options of [`PgStore::connect`].
///
/// ```
/// let opts = cti_sqlx::pg::PgOptions { schema: "crm_cti".into(), ..Default::default() };
/// assert_eq!(opts.max_connections, 10);
/// ```
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Schema holding every table and the migration ledger (default `cti`). Must match
    /// `[a-z_][a-z0-9_]*` and be at most 63 bytes.
    pub schema: String,
    /// Maximum pooled connections (default 10). Each ingest writer thread of a started `Cti`
    /// holds one more connection of its own, outside the pool (see
    /// [`InboxStore::writer_threads`](cti_core::store::InboxStore::writer_threads)).
    pub max_connections: u32,
    /// How long a call waits for a connection before failing with
    /// [`StoreError::Unavailable`] (default 5 s).
    pub acquire_timeout: Duration,
    /// Inline batches (`inbox_insert_processed`) read first and write in one statement that
    /// checks the apps' apply generations: two round trips, and a batch that finds its apps
    /// changed runs again under their row locks (default `true`). `false` always takes the row
    /// locks first (five round trips per batch): for deployments where several instances
    /// ingest for the same apps at once and batches would often run twice.
    pub optimistic_inline: bool,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            schema: "cti".into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            optimistic_inline: true,
        }
    }
}

impl PgOptions {
    /// Default options with another schema.
    pub fn with_schema(schema: impl Into<String>) -> Self {
        Self {
            schema: schema.into(),
            ..Self::default()
        }
    }
}

/// Checks a schema name: `[a-z_][a-z0-9_]*`, at most 63 bytes (no quoting surprises).
pub fn validate_schema_name(schema: &str) -> StoreResult<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Backend(format!(
            "invalid configuration: schema name {schema:?} must match [a-z_][a-z0-9_]* \
             (max 63 bytes, not pg_*)"
        )))
    }
}

/// [`cti_core::store::Store`] on PostgreSQL. Cheap to clone (shares the pool).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: Arc<str>,
    /// Advisory lock key serialising inbox claims of this schema.
    claim_lock: i64,
    /// See [`PgOptions::optimistic_inline`].
    optimistic_inline: bool,
    /// The optimistic inline batches in flight (shared by the clones).
    pipeline: Arc<pipeline::Pipeline>,
    /// Value kept alive as long as any clone of the store (see [`PgStore::with_guard`]).
    #[allow(dead_code)] // held only for its drop
    guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects (without migrating): creates the schema if missing and points every pooled
    /// connection's `search_path` at it.
    /// Fails with [`StoreError::Unavailable`] when the server cannot be reached within
    /// `acquire_timeout`.
    pub async fn connect(url: &str, opts: PgOptions) -> StoreResult<Self> {
        let connect: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Backend(format!("invalid configuration: {e}")))?;
        Self::connect_with(connect, opts).await
    }

    /// Like [`PgStore::connect`] with parsed connect options.
    pub async fn connect_with(connect: PgConnectOptions, opts: PgOptions) -> StoreResult<Self> {
        validate_schema_name(&opts.schema)?;
        // No JIT: on a large backlog the claim statement's cost estimate crosses
        // `jit_above_cost`, and compiling it costs tens of milliseconds per execution — far more
        // than running it (docs/performance.md).
        let connect = connect.options([("jit", "off")]);
        let set_path: Arc<str> = set_search_path(&opts.schema).into();
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _meta| {
                let sql = set_path.clone();
                Box::pin(async move {
                    conn.execute(&*sql).await?;
                    Ok(())
                })
            })
            .connect_with(connect)
            .await
            .map_err(pg_err)?;
        let mut store = Self::from_pool_unchecked(pool, &opts.schema);
        store.optimistic_inline = opts.optimistic_inline;
        store.create_schema().await?;
        Ok(store)
    }

    /// Wraps an existing pool whose connections already use `schema` as `search_path`.
    /// Prefer [`PgStore::connect`], which configures the pool.
    pub fn from_pool(pool: PgPool, schema: &str) -> StoreResult<Self> {
        validate_schema_name(schema)?;
        Ok(Self::from_pool_unchecked(pool, schema))
    }

    fn from_pool_unchecked(pool: PgPool, schema: &str) -> Self {
        let claim_lock = rows::lock_key(&[b"cti", b"claim", schema.as_bytes()]);
        Self {
            pool,
            schema: schema.into(),
            claim_lock,
            optimistic_inline: true,
            pipeline: Arc::default(),
            guard: None,
        }
    }

    /// Ties a value's lifetime to the store: it is dropped with the last clone of the store.
    /// Tests use it to drop their scratch schema when the store goes away.
    #[doc(hidden)]
    pub fn with_guard(mut self, guard: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        self.guard = Some(guard);
        self
    }

    async fn create_schema(&self) -> StoreResult<()> {
        let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
        match self.pool.execute(sql.as_str()).await {
            Ok(_) => Ok(()),
            // Two processes creating the schema at once: the loser sees a unique violation.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("23505" | "42P06")) =>
            {
                Ok(())
            }
            Err(e) => Err(pg_err(e)),
        }
    }

    /// Connects and migrates.
    pub async fn open(url: &str, opts: PgOptions) -> Result<Self, MigrationError> {
        let store = Self::connect(url, opts).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the embedded migrations (idempotent; concurrent callers serialise on sqlx's
    /// migration lock, one advisory lock per database, so migrations of different schemas in
    /// one database also wait for each other, and a `lock_timeout` set on the connection bounds
    /// that wait). Refuses with [`MigrationError::SchemaTooNew`] when the ledger records a
    /// version this binary does not know (a newer release migrated the database), before
    /// touching anything.
    pub async fn migrate(&self) -> Result<(), MigrationError> {
        let known = Self::binary_version();
        if let Some(applied) = self.applied_version().await?
            && applied > known
        {
            return Err(MigrationError::SchemaTooNew { applied, known });
        }
        MIGRATOR.run(&self.pool).await.map_err(|e| match e {
            // Another process applied a newer migration between the check and the run.
            MigrateError::VersionMissing(applied) => {
                MigrationError::SchemaTooNew { applied, known }
            }
            other => MigrationError::Store(pg_err(other.into())),
        })
    }

    /// Highest successfully applied migration version, `None` before the first migration.
    pub async fn applied_version(&self) -> StoreResult<Option<i64>> {
        let ledger = format!("\"{}\"._sqlx_migrations", self.schema);
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&ledger)
            .fetch_one(&self.pool)
            .await
            .map_err(pg_err)?;
        if !exists {
            return Ok(None);
        }
        let v: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await
                .map_err(pg_err)?;
        Ok(v)
    }

    /// The highest migration version embedded in this binary.
    pub fn binary_version() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// The connection pool (every connection's `search_path` is the store's schema).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// How many optimistic inline batches of this store (and its clones) found that another
    /// applier had changed their apps, or that an event was stored already, and ran again
    /// under the apps' row locks (see [`PgOptions::optimistic_inline`]). A steadily rising
    /// count means instances contend for the same apps.
    pub fn inline_reruns(&self) -> u64 {
        self.pipeline.reruns()
    }

    /// Optimistic inline batches that have planned and not finished writing (tests use it to
    /// line batches up).
    #[doc(hidden)]
    pub fn inline_batches_in_flight(&self) -> usize {
        self.pipeline.in_flight().len()
    }

    /// Closes the pool, waiting for checked-out connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
