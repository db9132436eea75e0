//! Shared helpers of the PostgreSQL tests: a scratch schema per test, dropped at the end.
//!
//! The database comes from `CTI_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it cannot be reached the test prints a
//! warning and returns — except with `CI=true`, where it fails.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use cti_sqlx::pg::{PgOptions, PgStore};
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// Default test database.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// The test database URL.
pub fn db_url() -> String {
    std::env::var("CTI_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_string())
}

/// `true` when running in CI (`CI=true`): an unreachable database is a failure there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// A random, valid schema name with a readable prefix.
pub fn random_schema(prefix: &str) -> String {
    format!(
        "t_{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Drops its schema when dropped (also when the test panics).
pub struct SchemaDropper {
    url: String,
    schema: String,
}

impl Drop for SchemaDropper {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop may run inside the test's runtime: do the blocking work on a thread of its own.
        let t = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = PgConnection::connect(&url).await {
                    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                    if let Err(e) = sqlx::query(&sql).execute(&mut c).await {
                        eprintln!("warning: could not drop test schema {schema}: {e}");
                    }
                    let _ = c.close().await;
                }
            });
        });
        let _ = t.join();
    }
}

/// A scratch schema for one test.
#[derive(Clone)]
pub struct TestDb {
    /// Database URL.
    pub url: String,
    /// The scratch schema.
    pub schema: String,
    guard: Arc<SchemaDropper>,
}

impl TestDb {
    /// `None` (after a printed warning) when the database is unreachable outside CI; panics in CI.
    pub async fn new(prefix: &str) -> Option<Self> {
        let url = db_url();
        let reachable =
            tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await;
        match reachable {
            Ok(Ok(c)) => {
                let _ = c.close().await;
            }
            Ok(Err(e)) => return unreachable(&url, &e.to_string()),
            Err(_) => return unreachable(&url, "connect timed out"),
        }
        let schema = random_schema(prefix);
        let guard = Arc::new(SchemaDropper {
            url: url.clone(),
            schema: schema.clone(),
        });
        Some(Self { url, schema, guard })
    }

    /// Store options on this schema.
    pub fn options(&self) -> PgOptions {
        PgOptions::with_schema(self.schema.clone())
    }

    /// A migrated store on the scratch schema (the schema is dropped with the last store and
    /// the last `TestDb` clone).
    pub async fn store(&self) -> PgStore {
        self.store_with(self.options()).await
    }

    /// Same with options (the schema is forced to this test's).
    pub async fn store_with(&self, mut opts: PgOptions) -> PgStore {
        opts.schema = self.schema.clone();
        PgStore::open(&self.url, opts)
            .await
            .expect("open test store")
            .with_guard(self.guard.clone())
    }

    /// A migrated store on the scratch schema reached through other connect options (e.g. a
    /// proxy); the schema is still dropped at the end.
    ///
    /// The schema is migrated first over the plain URL: sqlx's migration lock is one advisory
    /// lock per database, shared by every test schema, so connect options such as a short
    /// `lock_timeout` would make this migration fail whenever another test is migrating.
    pub async fn store_via(&self, connect: PgConnectOptions, mut opts: PgOptions) -> PgStore {
        opts.schema = self.schema.clone();
        drop(self.store_with(opts.clone()).await);
        let store = PgStore::connect_with(connect, opts)
            .await
            .expect("connect test store");
        store.with_guard(self.guard.clone())
    }

    /// A plain connection (search_path not set).
    pub async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }
}

fn unreachable<T>(url: &str, why: &str) -> Option<T> {
    if in_ci() {
        panic!("CI=true and the test database {url} is unreachable: {why}");
    }
    eprintln!("warning: skipping PostgreSQL test, database {url} unreachable: {why}");
    None
}
