//! [`DialpadStore`] on PostgreSQL: connections (ciphertexts only), webhooks, subscriptions.

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::store::*;

use super::PgStore;
use super::rows::*;

#[async_trait]
impl DialpadStore for PgStore {
    async fn upsert_connection(&self, conn: DialpadConnection) -> StoreResult<DialpadConnection> {
        // Replaces the app's row (one per app). The partial unique index on dialpad_org_id
        // turns "company already linked to another app" into a unique violation → Conflict;
        // the foreign key turns an unknown app into NotFound.
        let sql = format!(
            "INSERT INTO dialpad_connections (id, app_id, dialpad_org_id, access_token_enc, \
             refresh_token_enc, token_expires_at, environment, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (app_id) DO UPDATE SET id = EXCLUDED.id, dialpad_org_id = EXCLUDED.dialpad_org_id, \
             access_token_enc = EXCLUDED.access_token_enc, refresh_token_enc = EXCLUDED.refresh_token_enc, \
             token_expires_at = EXCLUDED.token_expires_at, environment = EXCLUDED.environment, \
             status = EXCLUDED.status, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at \
             RETURNING {CONNECTION_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(conn.id)
            .bind(conn.app_id.0)
            .bind(conn.dialpad_org_id.map(DialpadId::as_i64))
            .bind(&conn.access_token_enc)
            .bind(&conn.refresh_token_enc)
            .bind(conn.token_expires_at)
            .bind(conn.environment.as_str())
            .bind(&conn.status)
            .bind(conn.created_at)
            .bind(conn.updated_at)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match pg_err(e) {
                StoreError::Conflict(_) => {
                    StoreError::Conflict("dialpad org already linked to another app".into())
                }
                other => other,
            })?;
        connection_from_row(&row)
    }

    async fn get_connection(&self, app: AppId) -> StoreResult<Option<DialpadConnection>> {
        let sql = format!("SELECT {CONNECTION_COLS} FROM dialpad_connections WHERE app_id = $1");
        let row = sqlx::query(&sql)
            .bind(app.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(connection_from_row).transpose()
    }

    async fn find_app_by_org(&self, org: DialpadId) -> StoreResult<Option<AppId>> {
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT c.app_id FROM dialpad_connections c JOIN apps a ON a.id = c.app_id \
             WHERE c.dialpad_org_id = $1 AND a.is_active",
        )
        .bind(org.as_i64())
        .fetch_optional(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(id.map(AppId))
    }

    async fn delete_connection(&self, app: AppId) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM dialpad_connections WHERE app_id = $1")
            .bind(app.0)
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn upsert_webhook(&self, hook: DialpadWebhook) -> StoreResult<DialpadWebhook> {
        let sql = format!(
            "INSERT INTO dialpad_webhooks (id, app_id, webhook_id, hook_url, secret_enc, algo, \
             signature_type, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (app_id, webhook_id) DO UPDATE SET id = EXCLUDED.id, hook_url = EXCLUDED.hook_url, \
             secret_enc = EXCLUDED.secret_enc, algo = EXCLUDED.algo, signature_type = EXCLUDED.signature_type, \
             created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at RETURNING {WEBHOOK_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(hook.id)
            .bind(hook.app_id.0)
            .bind(hook.webhook_id.as_i64())
            .bind(&hook.hook_url)
            .bind(hook.secret_enc.as_deref())
            .bind(hook.algo.as_deref())
            .bind(hook.signature_type.as_deref())
            .bind(hook.created_at)
            .bind(hook.updated_at)
            .fetch_one(&self.pool)
            .await
            .map_err(pg_err)?;
        webhook_from_row(&row)
    }

    async fn list_webhooks(&self, app: AppId) -> StoreResult<Vec<DialpadWebhook>> {
        let sql = format!(
            "SELECT {WEBHOOK_COLS} FROM dialpad_webhooks WHERE app_id = $1 ORDER BY created_at DESC, id"
        );
        let rows = sqlx::query(&sql)
            .bind(app.0)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        all(&rows, webhook_from_row)
    }

    async fn get_webhook(&self, webhook_id: DialpadId) -> StoreResult<Option<DialpadWebhook>> {
        // Webhook ids are unique per app; Dialpad ids are global in practice. With several
        // tenants holding the same id, the oldest registration answers.
        let sql = format!(
            "SELECT {WEBHOOK_COLS} FROM dialpad_webhooks WHERE webhook_id = $1 ORDER BY created_at, id LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(webhook_id.as_i64())
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    async fn delete_webhook(&self, webhook_id: DialpadId) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM dialpad_webhooks WHERE webhook_id = $1")
            .bind(webhook_id.as_i64())
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn insert_subscription(
        &self,
        sub: DialpadSubscription,
    ) -> StoreResult<DialpadSubscription> {
        let sql = format!(
            "INSERT INTO dialpad_subscriptions (id, app_id, webhook_id, kind, dialpad_subscription_id, \
             config, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {SUBSCRIPTION_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(sub.id)
            .bind(sub.app_id.0)
            .bind(sub.webhook_id.as_i64())
            .bind(sub.kind.as_str())
            .bind(sub.dialpad_subscription_id.as_i64())
            .bind(&sub.config)
            .bind(sub.created_at)
            .fetch_one(&self.pool)
            .await
            .map_err(pg_err)?;
        subscription_from_row(&row)
    }

    async fn list_subscriptions(&self, app: AppId) -> StoreResult<Vec<DialpadSubscription>> {
        let sql = format!(
            "SELECT {SUBSCRIPTION_COLS} FROM dialpad_subscriptions WHERE app_id = $1 ORDER BY created_at DESC, id"
        );
        let rows = sqlx::query(&sql)
            .bind(app.0)
            .fetch_all(&self.pool)
            .await
            .map_err(pg_err)?;
        all(&rows, subscription_from_row)
    }
}
