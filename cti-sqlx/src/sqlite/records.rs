//! [`RecordStore`] and [`MappingStore`] on SQLite.

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::store::*;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::rows::{self, CALL_COLS, MAPPING_COLS, MESSAGE_COLS, VOICEMAIL_COLS, int, map_fk, ts};
use super::{SqliteStore, begin_immediate};
use crate::common::map_err;
use sqlx::Connection;

impl SqliteStore {
    /// Runs `SELECT COUNT(*)` and the page query over the same filter, in one read snapshot.
    async fn page_of<T>(
        &self,
        table: &str,
        cols: &str,
        filter: impl Fn(&mut QueryBuilder<'_, Sqlite>),
        order: &str,
        page: PageRequest,
        decode: fn(&SqliteRow) -> StoreResult<T>,
    ) -> StoreResult<Page<T>> {
        let mut r = self.read_conn().await?;
        let mut tx = r.begin().await.map_err(map_err)?;
        let mut count = QueryBuilder::<Sqlite>::new(format!("SELECT COUNT(*) FROM {table} WHERE "));
        filter(&mut count);
        let total: i64 = count
            .build_query_scalar()
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {cols} FROM {table} WHERE "));
        filter(&mut q);
        q.push(format!(" ORDER BY {order} LIMIT "));
        q.push_bind(i64::from(page.limit));
        q.push(" OFFSET ");
        q.push_bind(int(page.offset));
        let items = q
            .build()
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?
            .iter()
            .map(decode)
            .collect::<StoreResult<Vec<_>>>()?;
        tx.commit().await.map_err(map_err)?;
        Ok(Page {
            items,
            total: rows::count(total),
        })
    }

    async fn one<T>(
        &self,
        sql: &str,
        app: AppId,
        id: impl ToString + Send,
        decode: fn(&SqliteRow) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        let row = sqlx::query(sql)
            .bind(app.0.to_string())
            .bind(id.to_string())
            .fetch_optional(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?;
        row.as_ref().map(decode).transpose()
    }
}

#[async_trait]
impl RecordStore for SqliteStore {
    async fn list_calls(
        &self,
        app: AppId,
        filter: &CallFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Call>> {
        let app_s = app.0.to_string();
        // Statuses are a closed enum: written as literals in canonical order, so the query
        // text for the live view is exactly the partial index `calls_app_active`'s predicate.
        let statuses = filter.statuses.as_ref().map(|s| {
            CallStatus::ALL
                .iter()
                .filter(|st| s.contains(st))
                .map(|st| format!("'{}'", st.as_str()))
                .collect::<Vec<_>>()
        });
        let f = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("app_id = ").push_bind(app_s.clone());
            if let Some(st) = &statuses {
                if st.is_empty() {
                    q.push(" AND 0");
                } else {
                    q.push(format!(" AND status IN ({})", st.join(",")));
                }
            }
            if let Some(d) = filter.direction {
                q.push(" AND direction = ").push_bind(d.as_str());
            }
            if let Some(from) = &filter.from {
                q.push(" AND from_number = ").push_bind(from.clone());
            }
            if let Some(to) = &filter.to {
                q.push(" AND to_number = ").push_bind(to.clone());
            }
        };
        self.page_of(
            "calls",
            CALL_COLS,
            f,
            "started_at DESC, created_at DESC, id",
            page,
            rows::call,
        )
        .await
    }

    async fn get_call(&self, app: AppId, id: Uuid) -> StoreResult<Option<Call>> {
        let sql = format!("SELECT {CALL_COLS} FROM calls WHERE app_id = ?1 AND id = ?2");
        self.one(&sql, app, id, rows::call).await
    }

    async fn get_call_by_dialpad_id(
        &self,
        app: AppId,
        call_id: DialpadId,
    ) -> StoreResult<Option<Call>> {
        let sql =
            format!("SELECT {CALL_COLS} FROM calls WHERE app_id = ?1 AND dialpad_call_id = ?2");
        let row = sqlx::query(&sql)
            .bind(app.0.to_string())
            .bind(call_id.as_i64())
            .fetch_optional(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?;
        row.as_ref().map(rows::call).transpose()
    }

    async fn list_messages(
        &self,
        app: AppId,
        filter: &MessageFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Message>> {
        let app_s = app.0.to_string();
        let f = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("app_id = ").push_bind(app_s.clone());
            if let Some(d) = filter.direction {
                q.push(" AND direction = ").push_bind(d.as_str());
            }
            if let Some(from) = &filter.from {
                q.push(" AND from_number = ").push_bind(from.clone());
            }
            if let Some(to) = &filter.to {
                q.push(" AND to_number = ").push_bind(to.clone());
            }
            if let Some(u) = filter.dialpad_user_id {
                q.push(" AND dialpad_user_id = ").push_bind(u.as_i64());
            }
        };
        self.page_of(
            "messages",
            MESSAGE_COLS,
            f,
            "sent_at DESC, created_at DESC, id",
            page,
            rows::message,
        )
        .await
    }

    async fn get_message(&self, app: AppId, id: Uuid) -> StoreResult<Option<Message>> {
        let sql = format!("SELECT {MESSAGE_COLS} FROM messages WHERE app_id = ?1 AND id = ?2");
        self.one(&sql, app, id, rows::message).await
    }

    async fn list_voicemails(
        &self,
        app: AppId,
        filter: &VoicemailFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Voicemail>> {
        let app_s = app.0.to_string();
        let f = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("app_id = ").push_bind(app_s.clone());
            if let Some(u) = filter.dialpad_user_id {
                q.push(" AND dialpad_user_id = ").push_bind(u.as_i64());
            }
        };
        self.page_of(
            "voicemails",
            VOICEMAIL_COLS,
            f,
            "created_at DESC, id",
            page,
            rows::voicemail,
        )
        .await
    }

    async fn get_voicemail(&self, app: AppId, id: Uuid) -> StoreResult<Option<Voicemail>> {
        let sql = format!("SELECT {VOICEMAIL_COLS} FROM voicemails WHERE app_id = ?1 AND id = ?2");
        self.one(&sql, app, id, rows::voicemail).await
    }

    async fn delete_voicemail(&self, app: AppId, id: Uuid) -> StoreResult<bool> {
        let n = sqlx::query("DELETE FROM voicemails WHERE app_id = ?1 AND id = ?2")
            .bind(app.0.to_string())
            .bind(id.to_string())
            .execute(&mut *self.write_conn().await)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n > 0)
    }
}

/// Inserts or updates one mapping, keeping the row id and `created_at` on update.
async fn upsert_one(
    conn: &mut sqlx::SqliteConnection,
    app: &str,
    user: DialpadId,
    crm: &str,
    now: i64,
) -> StoreResult<UserMapping> {
    let sql = format!(
        "INSERT INTO dialpad_user_mappings (id, app_id, dialpad_user_id, crm_user_id, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (app_id, dialpad_user_id) DO UPDATE SET
            crm_user_id = excluded.crm_user_id, updated_at = excluded.updated_at
         RETURNING {MAPPING_COLS}"
    );
    let row = sqlx::query(&sql)
        .bind(Uuid::new_v4().to_string())
        .bind(app)
        .bind(user.as_i64())
        .bind(crm)
        .bind(now)
        .fetch_one(conn)
        .await
        .map_err(map_fk)?;
    rows::mapping(&row)
}

#[async_trait]
impl MappingStore for SqliteStore {
    async fn upsert_mapping(
        &self,
        app: AppId,
        dialpad_user_id: DialpadId,
        crm_user_id: &str,
        now: Timestamp,
    ) -> StoreResult<UserMapping> {
        let mut w = self.write_conn().await;
        let mut tx = begin_immediate(&mut w).await?;
        let m = upsert_one(
            &mut tx,
            &app.0.to_string(),
            dialpad_user_id,
            crm_user_id,
            ts(&now),
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(m)
    }

    async fn upsert_mappings(
        &self,
        app: AppId,
        pairs: &[(DialpadId, String)],
        now: Timestamp,
    ) -> StoreResult<usize> {
        let app_s = app.0.to_string();
        let mut w = self.write_conn().await;
        let mut tx = begin_immediate(&mut w).await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM apps WHERE id = ?1")
            .bind(&app_s)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let now = ts(&now);
        for (user, crm) in pairs {
            upsert_one(&mut tx, &app_s, *user, crm, now).await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(pairs.len())
    }

    async fn get_mapping_by_dialpad(
        &self,
        app: AppId,
        dialpad_user_id: DialpadId,
    ) -> StoreResult<Option<UserMapping>> {
        let sql = format!(
            "SELECT {MAPPING_COLS} FROM dialpad_user_mappings WHERE app_id = ?1 AND dialpad_user_id = ?2"
        );
        let row = sqlx::query(&sql)
            .bind(app.0.to_string())
            .bind(dialpad_user_id.as_i64())
            .fetch_optional(&mut *self.read_conn().await?)
            .await
            .map_err(map_err)?;
        row.as_ref().map(rows::mapping).transpose()
    }

    async fn get_mapping_by_crm(
        &self,
        app: AppId,
        crm_user_id: &str,
    ) -> StoreResult<Option<UserMapping>> {
        let sql = format!(
            "SELECT {MAPPING_COLS} FROM dialpad_user_mappings WHERE app_id = ?1 AND crm_user_id = ?2
             ORDER BY created_at, id LIMIT 1"
        );
        self.one(&sql, app, crm_user_id, rows::mapping).await
    }

    async fn list_mappings(&self, app: AppId, page: PageRequest) -> StoreResult<Page<UserMapping>> {
        let app_s = app.0.to_string();
        let f = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("app_id = ").push_bind(app_s.clone());
        };
        self.page_of(
            "dialpad_user_mappings",
            MAPPING_COLS,
            f,
            "created_at DESC, id",
            page,
            rows::mapping,
        )
        .await
    }

    async fn delete_mapping(&self, app: AppId, id: Uuid) -> StoreResult<bool> {
        let n = sqlx::query("DELETE FROM dialpad_user_mappings WHERE app_id = ?1 AND id = ?2")
            .bind(app.0.to_string())
            .bind(id.to_string())
            .execute(&mut *self.write_conn().await)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(n > 0)
    }

    async fn delete_mapping_by_dialpad(
        &self,
        app: AppId,
        dialpad_user_id: DialpadId,
    ) -> StoreResult<bool> {
        let n = sqlx::query(
            "DELETE FROM dialpad_user_mappings WHERE app_id = ?1 AND dialpad_user_id = ?2",
        )
        .bind(app.0.to_string())
        .bind(dialpad_user_id.as_i64())
        .execute(&mut *self.write_conn().await)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(n > 0)
    }
}
