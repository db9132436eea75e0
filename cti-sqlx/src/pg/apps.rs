//! [`AppStore`] on PostgreSQL: tenants, API keys (lookup hash, grace key, legacy bcrypt) and
//! the audit log.

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::store::*;
use sqlx::Row;
use uuid::Uuid;

use super::PgStore;
use super::rows::*;

/// Inserts an audit row inside `tx`.
async fn insert_audit(
    tx: &mut sqlx::PgConnection,
    app: AppId,
    action: AuditAction,
    old_hint: Option<&str>,
    new_hint: Option<&str>,
    ctx: &AuditContext,
    now: Timestamp,
) -> StoreResult<AuditEntry> {
    let sql = format!(
        "INSERT INTO api_key_audit_log (id, app_id, action, old_key_hint, new_key_hint, actor, \
         request_ip, user_agent, performed_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING {AUDIT_COLS}"
    );
    let row = sqlx::query(&sql)
        .bind(Uuid::new_v4())
        .bind(app.0)
        .bind(action.as_str())
        .bind(old_hint)
        .bind(new_hint)
        .bind(ctx.actor.as_deref())
        .bind(ctx.request_ip.as_deref())
        .bind(ctx.user_agent.as_deref())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(pg_err)?;
    audit_from_row(&row)
}

#[async_trait]
impl AppStore for PgStore {
    async fn create_app(&self, app: NewApp, ctx: AuditContext) -> StoreResult<App> {
        let mut tx = self.pool.begin().await.map_err(pg_err)?;
        let sql = format!(
            "INSERT INTO apps (id, name, is_active, api_key_lookup, api_key_hint, api_key_issued_at, \
             created_at, updated_at) VALUES ($1, $2, true, $3, $4, $5, $5, $5) RETURNING {APP_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(app.id.0)
            .bind(&app.name)
            .bind(&app.key.lookup)
            .bind(&app.key.hint)
            .bind(app.now)
            .fetch_one(&mut *tx)
            .await
            .map_err(pg_err)?;
        let created = app_from_row(&row)?;
        insert_audit(
            &mut tx,
            app.id,
            AuditAction::Created,
            None,
            Some(&app.key.hint),
            &ctx,
            app.now,
        )
        .await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(created)
    }

    async fn get_app(&self, id: AppId) -> StoreResult<Option<App>> {
        let sql = format!("SELECT {APP_COLS} FROM apps WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(app_from_row).transpose()
    }

    async fn list_apps(&self, page: PageRequest) -> StoreResult<Page<App>> {
        let sql =
            format!("SELECT {APP_COLS} FROM apps ORDER BY created_at DESC, id LIMIT $1 OFFSET $2");
        let rows = sqlx::query(&sql)
            .bind(i64::from(page.limit))
            .bind(i64_of(page.offset))
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        let total: i64 = sqlx::query_scalar("SELECT count(*) FROM apps")
            .fetch_one(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(Page {
            items: all(&rows, app_from_row)?,
            total: u64_of(total)?,
        })
    }

    async fn update_app(
        &self,
        id: AppId,
        patch: AppPatch,
        now: Timestamp,
    ) -> StoreResult<Option<App>> {
        let sql = format!(
            "UPDATE apps SET name = COALESCE($2, name), is_active = COALESCE($3, is_active), \
             updated_at = $4 WHERE id = $1 RETURNING {APP_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(id.0)
            .bind(patch.name.as_deref())
            .bind(patch.is_active)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(app_from_row).transpose()
    }

    async fn find_app_by_key(&self, lookup: &str, now: Timestamp) -> StoreResult<Option<KeyMatch>> {
        let sql = format!(
            "SELECT {APP_COLS}, (api_key_lookup = $1) AS current FROM apps \
             WHERE api_key_lookup = $1 OR (prev_key_lookup = $1 AND prev_key_expires_at > $2) \
             ORDER BY (api_key_lookup = $1) DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(lookup)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let current: Option<bool> = col(&row, "current")?;
                Ok(Some(KeyMatch {
                    app: app_from_row(&row)?,
                    current: current.unwrap_or(false),
                }))
            }
        }
    }

    async fn legacy_keys(&self) -> StoreResult<Vec<LegacyKey>> {
        let sql = format!(
            "SELECT {APP_COLS}, api_key FROM apps \
             WHERE is_active AND api_key IS NOT NULL AND api_key_lookup IS NULL ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| {
                Ok(LegacyKey {
                    app: app_from_row(r)?,
                    bcrypt_hash: col(r, "api_key")?,
                })
            })
            .collect()
    }

    async fn backfill_key(&self, id: AppId, bcrypt_hash: &str, key: NewKey) -> StoreResult<()> {
        sqlx::query(
            "UPDATE apps SET api_key_lookup = $3, api_key_hint = $4 \
             WHERE id = $1 AND api_key = $2 AND api_key_lookup IS NULL",
        )
        .bind(id.0)
        .bind(bcrypt_hash)
        .bind(&key.lookup)
        .bind(&key.hint)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(())
    }

    async fn change_key(
        &self,
        id: AppId,
        change: KeyChange,
        ctx: AuditContext,
        now: Timestamp,
    ) -> StoreResult<KeyChangeOutcome> {
        let mut tx = self.pool.begin().await.map_err(pg_err)?;
        // The row lock serialises concurrent rotations/revocations of this app: each one reads
        // the hint its predecessor wrote.
        let cur = sqlx::query(
            "SELECT is_active, api_key_lookup, api_key, api_key_hint FROM apps WHERE id = $1 FOR UPDATE",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(pg_err)?
        .ok_or(StoreError::NotFound)?;
        let is_active: bool = col(&cur, "is_active")?;
        let lookup: Option<String> = col(&cur, "api_key_lookup")?;
        let legacy: Option<String> = col(&cur, "api_key")?;
        let old_hint: Option<String> = col(&cur, "api_key_hint")?;
        let had_key = lookup.is_some() || legacy.is_some();

        let (action, new_hint, row) = match change {
            KeyChange::Issue { key, grace_until } => {
                if !is_active {
                    return Err(StoreError::Inactive);
                }
                // The previous lookup hash stays valid until `grace_until` (a legacy bcrypt key
                // has no lookup hash and cannot be kept).
                let (prev, prev_until) = match (grace_until, lookup) {
                    (Some(until), Some(prev)) => (Some(prev), Some(until)),
                    _ => (None, None),
                };
                let sql = format!(
                    "UPDATE apps SET api_key_lookup = $2, api_key_hint = $3, api_key_issued_at = $4, \
                     api_key_rotated_at = $4, api_key = NULL, prev_key_lookup = $5, \
                     prev_key_expires_at = $6, updated_at = $4 WHERE id = $1 RETURNING {APP_COLS}"
                );
                let row = sqlx::query(&sql)
                    .bind(id.0)
                    .bind(&key.lookup)
                    .bind(&key.hint)
                    .bind(now)
                    .bind(prev)
                    .bind(prev_until)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(pg_err)?;
                let action = if had_key {
                    AuditAction::Rotated
                } else {
                    AuditAction::Created
                };
                (action, Some(key.hint), row)
            }
            KeyChange::Revoke => {
                let sql = format!(
                    "UPDATE apps SET api_key_lookup = NULL, api_key_hint = NULL, api_key_issued_at = NULL, \
                     api_key_rotated_at = $2, api_key = NULL, prev_key_lookup = NULL, \
                     prev_key_expires_at = NULL, updated_at = $2 WHERE id = $1 RETURNING {APP_COLS}"
                );
                let row = sqlx::query(&sql)
                    .bind(id.0)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(pg_err)?;
                (AuditAction::Revoked, None, row)
            }
        };
        let app = app_from_row(&row)?;
        let audit = insert_audit(
            &mut tx,
            id,
            action,
            old_hint.as_deref(),
            new_hint.as_deref(),
            &ctx,
            now,
        )
        .await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(KeyChangeOutcome { app, audit })
    }

    async fn list_audit(&self, id: AppId, page: PageRequest) -> StoreResult<Page<AuditEntry>> {
        let sql = format!(
            "SELECT {AUDIT_COLS} FROM api_key_audit_log WHERE app_id = $1 ORDER BY seq DESC LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(&sql)
            .bind(id.0)
            .bind(i64::from(page.limit))
            .bind(i64_of(page.offset))
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        let total: i64 =
            sqlx::query("SELECT count(*) AS n FROM api_key_audit_log WHERE app_id = $1")
                .bind(id.0)
                .fetch_one(&self.pool)
                .await
                .map_err(pg_err)?
                .try_get("n")
                .map_err(pg_err)?;
        Ok(Page {
            items: all(&rows, audit_from_row)?,
            total: u64_of(total)?,
        })
    }
}

impl PgStore {
    /// Inserts an app that only has a legacy bcrypt key, as the import of an original
    /// database does. For tests of the legacy path.
    pub async fn insert_legacy_app(
        &self,
        id: AppId,
        name: &str,
        bcrypt_hash: &str,
        now: Timestamp,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO apps (id, name, is_active, api_key, created_at, updated_at) VALUES ($1, $2, true, $3, $4, $4)",
        )
        .bind(id.0)
        .bind(name)
        .bind(bcrypt_hash)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(())
    }
}
