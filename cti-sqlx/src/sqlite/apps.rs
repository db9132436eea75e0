//! [`AppStore`] on SQLite: tenants, API keys and the key audit log.

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::store::*;
use sqlx::Row;
use uuid::Uuid;

use super::rows::{self, APP_COLS, AUDIT_COLS, int, ts};
use super::{SqliteStore, begin_immediate};
use crate::common::map_err;
use sqlx::Connection;

async fn insert_audit(conn: &mut sqlx::SqliteConnection, entry: &AuditEntry) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO api_key_audit_log
            (id, app_id, action, old_key_hint, new_key_hint, actor, request_ip, user_agent, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(entry.id.to_string())
    .bind(entry.app_id.0.to_string())
    .bind(entry.action.as_str())
    .bind(entry.old_key_hint.as_deref())
    .bind(entry.new_key_hint.as_deref())
    .bind(entry.context.actor.as_deref())
    .bind(entry.context.request_ip.as_deref())
    .bind(entry.context.user_agent.as_deref())
    .bind(ts(&entry.created_at))
    .execute(conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn fetch_app(conn: &mut sqlx::SqliteConnection, id: AppId) -> StoreResult<Option<App>> {
    let sql = format!("SELECT {APP_COLS} FROM apps WHERE id = ?1");
    let row = sqlx::query(&sql)
        .bind(id.0.to_string())
        .fetch_optional(conn)
        .await
        .map_err(map_err)?;
    row.as_ref().map(rows::app).transpose()
}

#[async_trait]
impl AppStore for SqliteStore {
    async fn create_app(&self, new: NewApp, ctx: AuditContext) -> StoreResult<App> {
        let mut w = self.write_conn().await;
        let mut tx = begin_immediate(&mut w).await?;
        let now = ts(&new.now);
        sqlx::query(
            "INSERT INTO apps (id, name, api_key_lookup, api_key_hint, api_key_issued_at,
                               is_active, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 1, ?5, ?5)",
        )
        .bind(new.id.0.to_string())
        .bind(&new.name)
        .bind(&new.key.lookup)
        .bind(&new.key.hint)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(
            &mut tx,
            &AuditEntry {
                id: Uuid::new_v4(),
                app_id: new.id,
                action: AuditAction::Created,
                old_key_hint: None,
                new_key_hint: Some(new.key.hint.clone()),
                context: ctx,
                created_at: new.now,
            },
        )
        .await?;
        let app = fetch_app(&mut tx, new.id)
            .await?
            .ok_or(StoreError::NotFound)?;
        tx.commit().await.map_err(map_err)?;
        Ok(app)
    }

    async fn get_app(&self, id: AppId) -> StoreResult<Option<App>> {
        let mut conn = self.read_conn().await?;
        fetch_app(&mut conn, id).await
    }

    async fn list_apps(&self, page: PageRequest) -> StoreResult<Page<App>> {
        let mut r = self.read_conn().await?;
        let mut tx = r.begin().await.map_err(map_err)?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM apps")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let sql =
            format!("SELECT {APP_COLS} FROM apps ORDER BY created_at DESC, id LIMIT ?1 OFFSET ?2");
        let items = sqlx::query(&sql)
            .bind(i64::from(page.limit))
            .bind(int(page.offset))
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::app)
            .collect::<StoreResult<Vec<_>>>()?;
        tx.commit().await.map_err(map_err)?;
        Ok(Page {
            items,
            total: rows::count(total),
        })
    }

    async fn update_app(
        &self,
        id: AppId,
        patch: AppPatch,
        now: Timestamp,
    ) -> StoreResult<Option<App>> {
        let sql = format!(
            "UPDATE apps SET name = COALESCE(?1, name), is_active = COALESCE(?2, is_active),
                             updated_at = ?3
             WHERE id = ?4 RETURNING {APP_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(patch.name)
            .bind(patch.is_active.map(i64::from))
            .bind(ts(&now))
            .bind(id.0.to_string())
            .fetch_optional(&mut *self.write_conn().await)
            .await
            .map_err(map_err)?;
        row.as_ref().map(rows::app).transpose()
    }

    async fn find_app_by_key(&self, lookup: &str, now: Timestamp) -> StoreResult<Option<KeyMatch>> {
        let sql = format!(
            "SELECT {APP_COLS}, 1 AS current FROM apps WHERE api_key_lookup = ?1
             UNION ALL
             SELECT {APP_COLS}, 0 AS current FROM apps
              WHERE prev_key_lookup = ?1 AND prev_key_expires_at > ?2
             ORDER BY current DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(lookup)
            .bind(ts(&now))
            .fetch_optional(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let current: i64 = row.try_get("current").map_err(map_err)?;
        Ok(Some(KeyMatch {
            app: rows::app(&row)?,
            current: current != 0,
        }))
    }

    async fn legacy_keys(&self) -> StoreResult<Vec<LegacyKey>> {
        let sql = format!(
            "SELECT {APP_COLS}, api_key FROM apps
             WHERE is_active = 1 AND api_key IS NOT NULL AND api_key_lookup IS NULL
             ORDER BY created_at, id"
        );
        sqlx::query(&sql)
            .fetch_all(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?
            .iter()
            .map(|r| {
                Ok(LegacyKey {
                    app: rows::app(r)?,
                    bcrypt_hash: r.try_get("api_key").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn backfill_key(&self, id: AppId, bcrypt_hash: &str, key: NewKey) -> StoreResult<()> {
        sqlx::query(
            "UPDATE apps SET api_key_lookup = ?1, api_key_hint = ?2
             WHERE id = ?3 AND api_key = ?4 AND api_key_lookup IS NULL",
        )
        .bind(&key.lookup)
        .bind(&key.hint)
        .bind(id.0.to_string())
        .bind(bcrypt_hash)
        .execute(&mut *self.write_conn().await)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn change_key(
        &self,
        id: AppId,
        change: KeyChange,
        ctx: AuditContext,
        now: Timestamp,
    ) -> StoreResult<KeyChangeOutcome> {
        // The single writer connection serialises concurrent changes: the row read here is
        // the state the update below replaces.
        let mut w = self.write_conn().await;
        let mut tx = begin_immediate(&mut w).await?;
        let row = sqlx::query(
            "SELECT is_active, api_key, api_key_lookup, api_key_hint FROM apps WHERE id = ?1",
        )
        .bind(id.0.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?
        .ok_or(StoreError::NotFound)?;
        let is_active: i64 = row.try_get("is_active").map_err(map_err)?;
        let legacy: Option<String> = row.try_get("api_key").map_err(map_err)?;
        let lookup: Option<String> = row.try_get("api_key_lookup").map_err(map_err)?;
        let old_hint: Option<String> = row.try_get("api_key_hint").map_err(map_err)?;
        let had_key = lookup.is_some() || legacy.is_some();
        let now_us = ts(&now);
        let (action, new_hint) = match change {
            KeyChange::Issue { key, grace_until } => {
                if is_active == 0 {
                    return Err(StoreError::Inactive);
                }
                let (prev, prev_until) = match (grace_until, lookup) {
                    (Some(until), Some(prev)) => (Some(prev), Some(ts(&until))),
                    _ => (None, None),
                };
                sqlx::query(
                    "UPDATE apps SET api_key_lookup = ?1, api_key_hint = ?2, api_key_issued_at = ?3,
                                     api_key = NULL, prev_key_lookup = ?4, prev_key_expires_at = ?5,
                                     updated_at = ?3
                     WHERE id = ?6",
                )
                .bind(&key.lookup)
                .bind(&key.hint)
                .bind(now_us)
                .bind(prev)
                .bind(prev_until)
                .bind(id.0.to_string())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                let action = if had_key {
                    AuditAction::Rotated
                } else {
                    AuditAction::Created
                };
                (action, Some(key.hint))
            }
            KeyChange::Revoke => {
                sqlx::query(
                    "UPDATE apps SET api_key_lookup = NULL, api_key_hint = NULL,
                                     api_key_issued_at = NULL, api_key = NULL,
                                     prev_key_lookup = NULL, prev_key_expires_at = NULL,
                                     updated_at = ?1
                     WHERE id = ?2",
                )
                .bind(now_us)
                .bind(id.0.to_string())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                (AuditAction::Revoked, None)
            }
        };
        let audit = AuditEntry {
            id: Uuid::new_v4(),
            app_id: id,
            action,
            old_key_hint: old_hint,
            new_key_hint: new_hint,
            context: ctx,
            created_at: now,
        };
        insert_audit(&mut tx, &audit).await?;
        let app = fetch_app(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
        tx.commit().await.map_err(map_err)?;
        Ok(KeyChangeOutcome { app, audit })
    }

    async fn list_audit(&self, id: AppId, page: PageRequest) -> StoreResult<Page<AuditEntry>> {
        // Newest first = insertion order, newest first: concurrent changes may carry `now`
        // values out of order, but the hint chain (old hint = previous row's new hint) follows
        // the order the single writer applied them in.
        let mut r = self.read_conn().await?;
        let mut tx = r.begin().await.map_err(map_err)?;
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM api_key_audit_log WHERE app_id = ?1")
                .bind(id.0.to_string())
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
        let sql = format!(
            "SELECT {AUDIT_COLS} FROM api_key_audit_log WHERE app_id = ?1
             ORDER BY seq DESC LIMIT ?2 OFFSET ?3"
        );
        let items = sqlx::query(&sql)
            .bind(id.0.to_string())
            .bind(i64::from(page.limit))
            .bind(int(page.offset))
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::audit)
            .collect::<StoreResult<Vec<_>>>()?;
        tx.commit().await.map_err(map_err)?;
        Ok(Page {
            items,
            total: rows::count(total),
        })
    }
}
