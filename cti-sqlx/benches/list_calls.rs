//! `GET /api/calls` latency at 1,000,000 calls (custom harness: prints one line per scenario).
//!
//! Seeds one app with `LIST_BENCH_ROWS` calls (default 1,000,000) plus 5 other apps with 1,000
//! calls each, by bulk SQL (a recursive CTE on SQLite, `generate_series` on PostgreSQL; the
//! secondary indexes are dropped for the load and rebuilt from their own definitions, the
//! count triggers stay on), then times `RecordStore::list_calls`, one request at a time,
//! round-robin over these scenarios:
//!
//! * `unfiltered` — first page (limit 50);
//! * `status=ended`, `status=missed&direction=inbound`;
//! * `active` — `/api/calls/active` (`ringing` + `active`, ~400 rows);
//! * `offset=1000` — unfiltered, 21st page;
//! * `from=<caller>` — a caller's number (~12 calls);
//! * `from=<company line>` — one of 20 outbound lines (~20,000 calls): a filter the counters
//!   cannot answer, so its total counts the matches over its index;
//! * `reference COUNT(*)` — what every request used to pay on top of the page query.
//!
//! Data: 60 % inbound (caller → one of 20 company lines), 40 % outbound (line → customer),
//! 0.1 % without direction; 72 % ended, 15 % missed, 10 % voicemail, 3 % rejected, 200
//! ringing + 200 active; one call every 30 s, 0.5 % without `started_at`; a 480-byte JSON
//! `raw_payload` per row.
//!
//! SQLite runs on a temporary file; PostgreSQL at `CTI_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) in a scratch schema dropped at the end.
//!
//! ```text
//! cargo bench -p cti-sqlx --bench list_calls                    # 1M rows, 5,000 requests per scenario
//! LIST_BENCH_ROWS=100000 LIST_BENCH_ITERS=1000 cargo bench -p cti-sqlx --bench list_calls
//! LIST_BENCH_BACKENDS=sqlite cargo bench -p cti-sqlx --bench list_calls   # or postgres
//! LIST_BENCH_KEEP=1 cargo bench -p cti-sqlx --bench list_calls   # keep the data (EXPLAIN it)
//! ```
//!
//! Without `--bench` (e.g. `cargo test --benches`) it runs a small smoke test.

use std::time::{Duration, Instant};

use chrono::Utc;
use cti_core::model::{AppId, AuditContext, CallStatus, Direction, PageRequest};
use cti_core::store::*;
use cti_sqlx::SqliteStore;
use cti_sqlx::pg::{PgOptions, PgStore};
use hdrhistogram::Histogram;
use sqlx::{Connection, Executor, Row};
use uuid::Uuid;

/// Other tenants and their calls.
const OTHER_APPS: u64 = 5;
const OTHER_ROWS: u64 = 1_000;

/// The `raw_payload` of every seeded call: a sanitized Dialpad call event of realistic size
/// (one constant: building a distinct JSON value per row would double the seeding time).
const PAYLOAD: &str = r#"{"call_id":5744118934454272,"state":"hangup","direction":"inbound","date_started":1767261601210,"date_ended":1767261721210,"duration":120000,"external_number":"+15550000042","internal_number":"+18000000003","contact":{"id":"5650459049443328","name":"Caller","phone":"+15550000042","type":"local"},"target":{"id":"6204516424159232","name":"Support","phone":"+18000000003","type":"office"},"event_timestamp":1767261721215,"is_transferred":false,"total_duration":120000}"#;

/// 2025-01-01T00:00:00Z in microseconds: first `started_at`.
const BASE_US: i64 = 1_735_689_600_000_000;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("{what}: {e}")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

struct Config {
    rows: u64,
    iters: u64,
    reference_iters: u64,
}

/// The caller and company numbers the scenarios filter on (see the generators).
const CALLER: &str = "+15550000042";
const COMPANY_LINE: &str = "+18000000003";

fn scenarios() -> Vec<(&'static str, CallFilter, u64)> {
    let f = CallFilter::default;
    vec![
        ("unfiltered", f(), 0),
        (
            "status=ended",
            CallFilter {
                statuses: Some(vec![CallStatus::Ended]),
                ..f()
            },
            0,
        ),
        (
            "status=missed&direction=inbound",
            CallFilter {
                statuses: Some(vec![CallStatus::Missed]),
                direction: Some(Direction::Inbound),
                ..f()
            },
            0,
        ),
        (
            "active",
            CallFilter {
                statuses: Some(vec![CallStatus::Ringing, CallStatus::Active]),
                ..f()
            },
            0,
        ),
        ("offset=1000", f(), 1000),
        (
            "from=<caller>",
            CallFilter {
                from: Some(CALLER.into()),
                ..f()
            },
            0,
        ),
        (
            "from=<company line>",
            CallFilter {
                from: Some(COMPANY_LINE.into()),
                ..f()
            },
            0,
        ),
    ]
}

async fn create_apps(store: &dyn AppStore, n: u64) -> Vec<AppId> {
    let mut apps = Vec::new();
    for _ in 0..n {
        let app = AppId::new();
        store
            .create_app(
                NewApp {
                    id: app,
                    name: "bench".into(),
                    key: NewKey {
                        lookup: format!("{:0>64}", app.0.simple()),
                        hint: "raw_bench...0000".into(),
                    },
                    now: Utc::now(),
                },
                AuditContext::default(),
            )
            .await
            .unwrap_or_else(|e| fail("create app", e));
        apps.push(app);
    }
    apps
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|e| fail("histogram", e))
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(v: u64) -> f64 {
    v as f64 / 1000.0
}

fn report(backend: &str, name: &str, h: &Histogram<u64>, total: u64, items: usize) {
    println!(
        "{backend:<8} {name:<32} p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>7.3} ms  max {:>7.3} ms  \
         ({} requests, total {total}, {items} items)",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        h.len(),
    );
}

/// Times every scenario on `store`, then the reference `COUNT(*)` through `count`.
async fn measure<S, F, Fut>(backend: &str, store: &S, app: AppId, cfg: &Config, count: F)
where
    S: RecordStore + ?Sized,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let scenarios = scenarios();
    let mut hs: Vec<Histogram<u64>> = scenarios.iter().map(|_| histogram()).collect();
    let mut last = vec![(0, 0); scenarios.len()];
    // Round-robin over the scenarios (a mixed workload; background noise such as other
    // processes' bursts spreads over all of them). The first rounds warm caches, prepared
    // statements and plans up and are not recorded.
    let warm_up = (cfg.iters / 10).max(5);
    for round in 0..warm_up + cfg.iters {
        for (i, (name, filter, offset)) in scenarios.iter().enumerate() {
            let page = PageRequest::new(50, *offset);
            let t = Instant::now();
            let p = store
                .list_calls(app, filter, page)
                .await
                .unwrap_or_else(|e| fail(name, e));
            if round >= warm_up {
                hs[i].saturating_record(us(t.elapsed()));
            }
            last[i] = (p.total, p.items.len());
        }
    }
    for (i, (name, _, _)) in scenarios.iter().enumerate() {
        report(backend, name, &hs[i], last[i].0, last[i].1);
    }
    let mut h = histogram();
    let mut n = 0;
    for _ in 0..cfg.reference_iters {
        let t = Instant::now();
        n = count().await;
        h.saturating_record(us(t.elapsed()));
    }
    report(
        backend,
        "reference COUNT(*) of the app",
        &h,
        u64::try_from(n).unwrap_or(0),
        0,
    );
}

// --- SQLite ----------------------------------------------------------------------------------

/// One app's calls: `x` in `0..n`, ids ordered by `x` (`app_no` in the first group).
const SQLITE_SEED: &str = "
WITH RECURSIVE g(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM g WHERE x + 1 < ?3),
r AS (
    SELECT x,
        CASE WHEN x % 997 = 0 THEN NULL
             WHEN (x * 2654435761) % 1000003 % 10 < 6 THEN 'inbound' ELSE 'outbound' END AS direction,
        printf('+1555%07d', (x * 7919) % 50000) AS customer,
        printf('+1800%07d', x % 20) AS line,
        CASE WHEN x % 5000 = 0 THEN 'ringing' WHEN x % 5000 = 1 THEN 'active'
             WHEN (x * 40503) % 1000003 % 1000 < 150 THEN 'missed'
             WHEN (x * 40503) % 1000003 % 1000 < 180 THEN 'rejected'
             WHEN (x * 40503) % 1000003 % 1000 < 280 THEN 'voicemail' ELSE 'ended' END AS status,
        ?4 + x * 30000000 + ((x * 2654435761) % 1000) * 1000 AS t
    FROM g
)
INSERT INTO calls (id, app_id, dialpad_call_id, direction, from_number, to_number, status,
                   dialpad_user_id, started_at, ended_at, duration_seconds, raw_payload,
                   created_at, updated_at)
SELECT printf('%08x-0000-4000-8000-%012x', ?1, x), ?2, ?1 * 100000000 + x + 1, direction,
       CASE WHEN direction = 'outbound' THEN line ELSE customer END,
       CASE WHEN direction = 'outbound' THEN customer ELSE line END,
       status, 1000 + x % 200,
       CASE WHEN x % 211 = 5 THEN NULL ELSE t END,
       CASE WHEN status IN ('ringing', 'active') THEN NULL ELSE t + 120000000 END,
       CASE WHEN status IN ('ringing', 'active') THEN NULL ELSE 120 END,
       ?5,
       t, t
FROM r";

async fn sqlite_seed(url: &str, apps: &[AppId], rows: u64) -> (Duration, Duration) {
    let start = Instant::now();
    let mut c = sqlx::sqlite::SqliteConnection::connect(url)
        .await
        .unwrap_or_else(|e| fail("sqlite seed connect", e));
    for p in [
        "PRAGMA synchronous = OFF",
        "PRAGMA cache_size = -524288",
        "PRAGMA temp_store = MEMORY",
    ] {
        c.execute(p).await.unwrap_or_else(|e| fail(p, e));
    }
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master
          WHERE type = 'index' AND tbl_name = 'calls' AND sql IS NOT NULL",
    )
    .fetch_all(&mut c)
    .await
    .unwrap_or_else(|e| fail("sqlite indexes", e));
    let mut tx = c.begin().await.unwrap_or_else(|e| fail("begin", e));
    for (name, _) in &indexes {
        (&mut *tx)
            .execute(format!("DROP INDEX {name}").as_str())
            .await
            .unwrap_or_else(|e| fail("drop index", e));
    }
    for (i, app) in apps.iter().enumerate() {
        let n = if i == 0 { rows } else { OTHER_ROWS };
        sqlx::query(SQLITE_SEED)
            .bind(i as i64 + 1)
            .bind(app.0.to_string())
            .bind(n as i64)
            .bind(BASE_US)
            .bind(PAYLOAD)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| fail("sqlite seed", e));
    }
    let loaded = start.elapsed();
    for (_, sql) in &indexes {
        (&mut *tx)
            .execute(sql.as_str())
            .await
            .unwrap_or_else(|e| fail("create index", e));
    }
    tx.commit().await.unwrap_or_else(|e| fail("commit", e));
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        .await
        .unwrap_or_else(|e| fail("checkpoint", e));
    let _ = c.close().await;
    (loaded, start.elapsed())
}

async fn run_sqlite(cfg: &Config) {
    let dir = tempfile::Builder::new()
        .prefix("cti-list-bench-")
        .tempdir()
        .unwrap_or_else(|e| fail("tempdir", e));
    let url = format!("sqlite://{}", dir.path().join("cti.db").display());
    let store = SqliteStore::open(&url)
        .await
        .unwrap_or_else(|e| fail("open sqlite", e));
    let apps = create_apps(&store, 1 + OTHER_APPS).await;
    let (loaded, seeded) = sqlite_seed(&url, &apps, cfg.rows).await;
    println!(
        "sqlite   seeded {} + {}×{} calls in {:.1} s (rows {:.1} s, then indexes and checkpoint)",
        cfg.rows,
        OTHER_APPS,
        OTHER_ROWS,
        seeded.as_secs_f64(),
        loaded.as_secs_f64()
    );
    let app = apps[0];
    let counter = sqlx::SqlitePool::connect(&url)
        .await
        .unwrap_or_else(|e| fail("sqlite connect", e));
    measure("sqlite", &store, app, cfg, || async {
        sqlx::query_scalar("SELECT COUNT(*) FROM calls WHERE app_id = ?1")
            .bind(app.0.to_string())
            .fetch_one(&counter)
            .await
            .unwrap_or_else(|e| fail("count", e))
    })
    .await;
    counter.close().await;
    check_totals_sqlite(&url, app).await;
    store.close().await;
    if keep() {
        println!("sqlite   kept {url}");
        let _ = dir.keep();
    }
}

/// `LIST_BENCH_KEEP=1`: keep the SQLite file and the PostgreSQL schema.
fn keep() -> bool {
    std::env::var("LIST_BENCH_KEEP").is_ok_and(|v| v == "1")
}

/// The counters against real counts, after the bulk load.
async fn check_totals_sqlite(url: &str, app: AppId) {
    let mut c = sqlx::sqlite::SqliteConnection::connect(url)
        .await
        .unwrap_or_else(|e| fail("sqlite connect", e));
    let bad: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (
            SELECT app_id, status, COALESCE(direction, '') AS direction, COUNT(*) AS n
              FROM calls GROUP BY 1, 2, 3
         ) r FULL JOIN (SELECT app_id, status, direction, SUM(n) AS n FROM call_counts
                GROUP BY 1, 2, 3 HAVING SUM(n) <> 0) c USING (app_id, status, direction)
         WHERE r.n IS NOT c.n",
    )
    .fetch_one(&mut c)
    .await
    .unwrap_or_else(|e| fail("check totals", e));
    assert_eq!(bad, 0, "call_counts differ from the calls of {}", app.0);
}

// --- PostgreSQL ------------------------------------------------------------------------------

const PG_SEED: &str = "
INSERT INTO calls (id, app_id, dialpad_call_id, direction, from_number, to_number, status,
                   dialpad_user_id, started_at, ended_at, duration_seconds, raw_payload,
                   created_at, updated_at)
SELECT (lpad(to_hex($1::bigint), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(x), 12, '0'))::uuid,
       $2, $1 * 100000000 + x + 1, direction,
       CASE WHEN direction = 'outbound' THEN line ELSE customer END,
       CASE WHEN direction = 'outbound' THEN customer ELSE line END,
       status, 1000 + x % 200,
       CASE WHEN x % 211 = 5 THEN NULL ELSE t END,
       CASE WHEN status IN ('ringing', 'active') THEN NULL ELSE t + interval '120 seconds' END,
       CASE WHEN status IN ('ringing', 'active') THEN NULL ELSE 120 END,
       $5::jsonb,
       t, t
FROM (
    SELECT x,
        CASE WHEN x % 997 = 0 THEN NULL
             WHEN (x * 2654435761) % 1000003 % 10 < 6 THEN 'inbound' ELSE 'outbound' END AS direction,
        '+1555' || lpad(((x * 7919) % 50000)::text, 7, '0') AS customer,
        '+1800' || lpad((x % 20)::text, 7, '0') AS line,
        CASE WHEN x % 5000 = 0 THEN 'ringing' WHEN x % 5000 = 1 THEN 'active'
             WHEN (x * 40503) % 1000003 % 1000 < 150 THEN 'missed'
             WHEN (x * 40503) % 1000003 % 1000 < 180 THEN 'rejected'
             WHEN (x * 40503) % 1000003 % 1000 < 280 THEN 'voicemail' ELSE 'ended' END AS status,
        $4::timestamptz + x * interval '30 seconds'
            + ((x * 2654435761) % 1000) * interval '1 millisecond' AS t
    FROM generate_series(0::bigint, $3::bigint - 1) AS x
) r";

async fn pg_seed(store: &PgStore, apps: &[AppId], rows: u64) -> (Duration, Duration) {
    let start = Instant::now();
    let mut c = store
        .pool()
        .acquire()
        .await
        .unwrap_or_else(|e| fail("pg acquire", e));
    c.execute("SET maintenance_work_mem = '256MB'")
        .await
        .unwrap_or_else(|e| fail("set", e));
    // Secondary indexes only: the primary key and unique constraints stay.
    let indexes: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexname::text, i.indexdef FROM pg_indexes i
          WHERE i.schemaname = current_schema() AND i.tablename = 'calls'
            AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                             WHERE k.conrelid = 'calls'::regclass AND k.conname = i.indexname)",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap_or_else(|e| fail("pg indexes", e));
    // Foreign keys too (validated in one pass when added back): checking the app of each
    // row one by one costs more than inserting it.
    let fks: Vec<(String, String)> = sqlx::query_as(
        "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = 'calls'::regclass AND contype = 'f'",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap_or_else(|e| fail("pg foreign keys", e));
    let base =
        chrono::DateTime::from_timestamp_micros(BASE_US).unwrap_or_else(|| fail("base", "time"));
    let mut tx = c.begin().await.unwrap_or_else(|e| fail("begin", e));
    let mut ddl = Vec::new();
    for (name, _) in &indexes {
        ddl.push(format!("DROP INDEX \"{name}\""));
    }
    for (name, _) in &fks {
        ddl.push(format!("ALTER TABLE calls DROP CONSTRAINT \"{name}\""));
    }
    for sql in &ddl {
        (&mut *tx)
            .execute(sql.as_str())
            .await
            .unwrap_or_else(|e| fail(sql, e));
    }
    for (i, app) in apps.iter().enumerate() {
        let n = if i == 0 { rows } else { OTHER_ROWS };
        sqlx::query(PG_SEED)
            .bind(i as i64 + 1)
            .bind(app.0)
            .bind(n as i64)
            .bind(base)
            .bind(PAYLOAD)
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| fail("pg seed", e));
    }
    let loaded = start.elapsed();
    let mut ddl: Vec<String> = indexes.into_iter().map(|(_, sql)| sql).collect();
    for (name, def) in &fks {
        ddl.push(format!("ALTER TABLE calls ADD CONSTRAINT \"{name}\" {def}"));
    }
    for sql in &ddl {
        (&mut *tx)
            .execute(sql.as_str())
            .await
            .unwrap_or_else(|e| fail(sql, e));
    }
    tx.commit().await.unwrap_or_else(|e| fail("commit", e));
    // Statistics and the visibility map, as autovacuum would leave them. A transaction open
    // elsewhere in the database (another test run) keeps pages from becoming all-visible:
    // retry a few times, then go on with a warning (number filters then read the heap).
    for attempt in 0.. {
        c.execute("VACUUM (ANALYZE) calls")
            .await
            .unwrap_or_else(|e| fail("vacuum", e));
        let (visible, pages): (i32, i32) = sqlx::query_as(
            "SELECT relallvisible, relpages FROM pg_class WHERE oid = 'calls'::regclass",
        )
        .fetch_one(&mut *c)
        .await
        .unwrap_or_else(|e| fail("pg_class", e));
        if visible >= pages * 99 / 100 {
            break;
        }
        if attempt == 10 {
            eprintln!("warning: only {visible} of {pages} heap pages all-visible");
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Write the load's dirty buffers out now rather than during the measurement (needs
    // superuser or pg_checkpoint; skipped otherwise).
    if let Err(e) = c.execute("CHECKPOINT").await {
        eprintln!("warning: CHECKPOINT: {e}");
    }
    (loaded, start.elapsed())
}

async fn run_pg(cfg: &Config) {
    let url = std::env::var("CTI_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    if let Err(e) = sqlx::postgres::PgConnection::connect(&url).await {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            fail("database unreachable under CI=true", e);
        }
        eprintln!("warning: skipping PostgreSQL, database {url} unreachable: {e}");
        return;
    }
    let schema = format!("bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let store = PgStore::open(&url, PgOptions::with_schema(schema.clone()))
        .await
        .unwrap_or_else(|e| fail("open pg", e));
    let apps = create_apps(&store, 1 + OTHER_APPS).await;
    let (loaded, seeded) = pg_seed(&store, &apps, cfg.rows).await;
    println!(
        "postgres seeded {} + {}×{} calls in {:.1} s (rows {:.1} s, then indexes, foreign key, \
         vacuum; schema {schema})",
        cfg.rows,
        OTHER_APPS,
        OTHER_ROWS,
        seeded.as_secs_f64(),
        loaded.as_secs_f64()
    );
    let app = apps[0];
    let pool = store.pool().clone();
    measure("postgres", &store, app, cfg, || async {
        sqlx::query("SELECT count(*) FROM calls WHERE app_id = $1")
            .bind(app.0)
            .fetch_one(&pool)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .unwrap_or_else(|e| fail("count", e))
    })
    .await;
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
            SELECT app_id, status, COALESCE(direction, '') AS direction, count(*) AS n
              FROM calls GROUP BY 1, 2, 3
         ) r FULL JOIN (SELECT app_id, status, direction, SUM(n) AS n FROM call_counts
                GROUP BY 1, 2, 3 HAVING SUM(n) <> 0) c USING (app_id, status, direction)
         WHERE r.n IS DISTINCT FROM c.n",
    )
    .fetch_one(store.pool())
    .await
    .unwrap_or_else(|e| fail("check totals", e));
    assert_eq!(bad, 0, "call_counts differ from the calls");
    store.close().await;
    if keep() {
        println!("postgres kept schema {schema}");
        return;
    }
    if let Ok(mut c) = sqlx::postgres::PgConnection::connect(&url).await {
        let _ = c
            .execute(format!("DROP SCHEMA \"{schema}\" CASCADE").as_str())
            .await;
    }
}

async fn run(full: bool) {
    let cfg = if full {
        Config {
            rows: env_u64("LIST_BENCH_ROWS", 1_000_000),
            iters: env_u64("LIST_BENCH_ITERS", 5_000),
            reference_iters: 20,
        }
    } else {
        Config {
            rows: 5_000,
            iters: 20,
            reference_iters: 2,
        }
    };
    let backends =
        std::env::var("LIST_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    println!(
        "list_calls: {} calls in the measured app, {} requests per scenario, limit 50",
        cfg.rows, cfg.iters
    );
    if backends.contains("sqlite") {
        run_sqlite(&cfg).await;
    }
    if backends.contains("postgres") {
        run_pg(&cfg).await;
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("tokio runtime", e));
    rt.block_on(run(full));
}
