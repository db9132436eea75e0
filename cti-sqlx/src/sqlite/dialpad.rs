//! [`DialpadStore`] on SQLite: connections, webhooks and subscriptions of tenants.

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::store::*;

use super::rows::{self, CONNECTION_COLS, SUBSCRIPTION_COLS, WEBHOOK_COLS, map_fk, ts};
use super::{SqliteStore, begin_immediate};
use crate::common::{self, map_err};

#[async_trait]
impl DialpadStore for SqliteStore {
    async fn upsert_connection(&self, conn: DialpadConnection) -> StoreResult<DialpadConnection> {
        let app = conn.app_id.0.to_string();
        let mut w = self.write_conn().await;
        let mut tx = begin_immediate(&mut w).await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM apps WHERE id = ?1")
            .bind(&app)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        if let Some(org) = conn.dialpad_org_id {
            let taken: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM dialpad_connections WHERE dialpad_org_id = ?1 AND app_id <> ?2",
            )
            .bind(org.as_i64())
            .bind(&app)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
            if taken.is_some() {
                return Err(StoreError::Conflict(
                    "dialpad org already linked to another app".into(),
                ));
            }
        }
        // One connection per app: the new row replaces the old one entirely.
        sqlx::query(
            "INSERT INTO dialpad_connections (id, app_id, dialpad_org_id, access_token_enc,
                                             refresh_token_enc, token_expires_at, environment,
                                             status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (app_id) DO UPDATE SET
                id = excluded.id, dialpad_org_id = excluded.dialpad_org_id,
                access_token_enc = excluded.access_token_enc,
                refresh_token_enc = excluded.refresh_token_enc,
                token_expires_at = excluded.token_expires_at, environment = excluded.environment,
                status = excluded.status, created_at = excluded.created_at,
                updated_at = excluded.updated_at",
        )
        .bind(conn.id.to_string())
        .bind(&app)
        .bind(conn.dialpad_org_id.map(DialpadId::as_i64))
        .bind(&conn.access_token_enc)
        .bind(&conn.refresh_token_enc)
        .bind(ts(&conn.token_expires_at))
        .bind(conn.environment.as_str())
        .bind(&conn.status)
        .bind(ts(&conn.created_at))
        .bind(ts(&conn.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(map_fk)?;
        tx.commit().await.map_err(map_err)?;
        Ok(conn)
    }

    async fn get_connection(&self, app: AppId) -> StoreResult<Option<DialpadConnection>> {
        let sql = format!("SELECT {CONNECTION_COLS} FROM dialpad_connections WHERE app_id = ?1");
        let row = sqlx::query(&sql)
            .bind(app.0.to_string())
            .fetch_optional(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?;
        row.as_ref().map(rows::connection).transpose()
    }

    async fn find_app_by_org(&self, org: DialpadId) -> StoreResult<Option<AppId>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT c.app_id FROM dialpad_connections c JOIN apps a ON a.id = c.app_id
             WHERE c.dialpad_org_id = ?1 AND a.is_active = 1",
        )
        .bind(org.as_i64())
        .fetch_optional(&mut *self.read_conn().await?)
        .await
        .map_err(map_err)?;
        id.map(|s| common::uuid_from_text("app_id", &s).map(AppId))
            .transpose()
    }

    async fn delete_connection(&self, app: AppId) -> StoreResult<bool> {
        let n = sqlx::query("DELETE FROM dialpad_connections WHERE app_id = ?1")
            .bind(app.0.to_string())
            .execute(&mut *self.write_conn().await)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn upsert_webhook(&self, hook: DialpadWebhook) -> StoreResult<DialpadWebhook> {
        // Replaces the whole row of `(app_id, webhook_id)`, as a re-registration does.
        sqlx::query(
            "INSERT INTO dialpad_webhooks (id, app_id, webhook_id, hook_url, secret_enc, algo,
                                          signature_type, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (app_id, webhook_id) DO UPDATE SET
                id = excluded.id, hook_url = excluded.hook_url, secret_enc = excluded.secret_enc,
                algo = excluded.algo, signature_type = excluded.signature_type,
                created_at = excluded.created_at, updated_at = excluded.updated_at",
        )
        .bind(hook.id.to_string())
        .bind(hook.app_id.0.to_string())
        .bind(hook.webhook_id.as_i64())
        .bind(&hook.hook_url)
        .bind(hook.secret_enc.as_deref())
        .bind(hook.algo.as_deref())
        .bind(hook.signature_type.as_deref())
        .bind(ts(&hook.created_at))
        .bind(ts(&hook.updated_at))
        .execute(&mut *self.write_conn().await)
        .await
        .map_err(map_fk)?;
        Ok(hook)
    }

    async fn list_webhooks(&self, app: AppId) -> StoreResult<Vec<DialpadWebhook>> {
        let sql = format!(
            "SELECT {WEBHOOK_COLS} FROM dialpad_webhooks WHERE app_id = ?1 ORDER BY created_at DESC, id"
        );
        sqlx::query(&sql)
            .bind(app.0.to_string())
            .fetch_all(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::webhook)
            .collect()
    }

    async fn get_webhook(&self, webhook_id: DialpadId) -> StoreResult<Option<DialpadWebhook>> {
        let sql = format!(
            "SELECT {WEBHOOK_COLS} FROM dialpad_webhooks WHERE webhook_id = ?1
             ORDER BY created_at, id LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(webhook_id.as_i64())
            .fetch_optional(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?;
        row.as_ref().map(rows::webhook).transpose()
    }

    async fn delete_webhook(&self, webhook_id: DialpadId) -> StoreResult<bool> {
        let n = sqlx::query("DELETE FROM dialpad_webhooks WHERE webhook_id = ?1")
            .bind(webhook_id.as_i64())
            .execute(&mut *self.write_conn().await)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn insert_subscription(
        &self,
        sub: DialpadSubscription,
    ) -> StoreResult<DialpadSubscription> {
        sqlx::query(
            "INSERT INTO dialpad_subscriptions (id, app_id, webhook_id, kind,
                                               dialpad_subscription_id, config, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(sub.id.to_string())
        .bind(sub.app_id.0.to_string())
        .bind(sub.webhook_id.as_i64())
        .bind(sub.kind.as_str())
        .bind(sub.dialpad_subscription_id.as_i64())
        .bind(common::json_to_text(&sub.config))
        .bind(ts(&sub.created_at))
        .execute(&mut *self.write_conn().await)
        .await
        .map_err(map_fk)?;
        Ok(sub)
    }

    async fn list_subscriptions(&self, app: AppId) -> StoreResult<Vec<DialpadSubscription>> {
        let sql = format!(
            "SELECT {SUBSCRIPTION_COLS} FROM dialpad_subscriptions WHERE app_id = ?1
             ORDER BY created_at DESC, id"
        );
        sqlx::query(&sql)
            .bind(app.0.to_string())
            .fetch_all(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?
            .iter()
            .map(rows::subscription)
            .collect()
    }
}
