//! Support of the `cti-server migrate --from-original` test: an ORIGINAL Node-server database
//! (the spec §7.1 DDL that `cti-sqlx/tests/pg_import.rs` uses too) in a scratch PostgreSQL
//! schema, next to a scratch target schema for the server. Both are dropped on drop.

use sqlx::Connection;
use uuid::Uuid;

/// The original server's schema (spec §7.1), shared with `cti-sqlx/tests/pg_import.rs`.
pub const ORIGINAL_DDL: &str = include_str!("../../cti-sqlx/tests/fixtures/original_schema.sql");

/// An original database in schema [`source`](Self::source) and an empty target schema name
/// [`target`](Self::target) (the server creates it when it migrates).
pub struct OriginalDb {
    /// Schema holding the original tables.
    pub source: String,
    /// Schema for the new store (`DATABASE_SCHEMA`).
    pub target: String,
    url: String,
}

impl OriginalDb {
    /// Creates the source schema with the original tables, empty.
    pub async fn create(url: &str) -> OriginalDb {
        let id = Uuid::new_v4().simple().to_string();
        let db = OriginalDb {
            source: format!("cti_e2e_orig_{}", &id[..16]),
            target: format!("cti_e2e_new_{}", &id[..16]),
            url: url.to_string(),
        };
        db.execute(&format!(
            "CREATE SCHEMA \"{0}\"; SET search_path TO \"{0}\"; {ORIGINAL_DDL}",
            db.source
        ))
        .await;
        db
    }

    /// Runs `sql` (several statements allowed) with the source schema first on the search path.
    pub async fn execute(&self, sql: &str) {
        let mut c = match sqlx::PgConnection::connect(&self.url).await {
            Ok(c) => c,
            Err(e) => panic!("connect {}: {e}", self.url),
        };
        let sql = format!("SET search_path TO \"{}\"; {sql}", self.source);
        if let Err(e) = sqlx::raw_sql(&sql).execute(&mut c).await {
            panic!("{e}: {sql}");
        }
        let _ = c.close().await;
    }

    /// Inserts an original app whose `api_key` column holds `bcrypt_hash` (the original stored
    /// bcrypt hashes of its keys).
    pub async fn insert_app(&self, id: Uuid, name: &str, bcrypt_hash: &str) {
        self.execute(&format!(
            "INSERT INTO apps (id, name, api_key, is_active, created_at, updated_at) \
             VALUES ('{id}', '{name}', '{bcrypt_hash}', true, '2025-01-15 09:00:00', '2025-01-15 09:00:00')"
        ))
        .await;
    }

    /// Inserts an original call row of `app`.
    pub async fn insert_call(&self, id: Uuid, app: Uuid, dialpad_call_id: u64, status: &str) {
        self.execute(&format!(
            "INSERT INTO calls (id, app_id, dialpad_call_id, direction, from_number, to_number, \
             status, started_at, ended_at, duration_seconds, created_at) VALUES ('{id}', '{app}', \
             {dialpad_call_id}, 'inbound', '+15550001111', '+15550002222', '{status}', \
             '2025-03-01 12:00:00', '2025-03-01 12:02:00', 120, '2025-03-01 12:00:00')"
        ))
        .await;
    }
}

impl Drop for OriginalDb {
    fn drop(&mut self) {
        crate::drop_schemas(&self.url, &[&self.source, &self.target]);
    }
}
