//! [`RecordStore`] and [`MappingStore`] on SQLite.
//!
//! # List totals
//!
//! `Page::total` of calls, messages and voicemails never counts the table when it can be
//! read from the per-app counters that triggers keep exact (migration `0003`):
//! `call_counts (app, status, direction)`, `message_counts (app, direction)`,
//! `voicemail_counts (app)`. The counter is a scalar subquery of the page query itself, so the
//! page and its total come from one statement (one snapshot, one round trip). Filters the
//! counters cannot answer (exact numbers, Dialpad user) count their matches over the index of
//! that filter — bounded by the number of matches, and skipped when the first page already
//! holds every match.

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::store::*;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::rows::{self, CALL_COLS, MAPPING_COLS, MESSAGE_COLS, VOICEMAIL_COLS, int, map_fk, ts};
use super::{SqliteStore, begin_immediate};
use crate::common::map_err;
use sqlx::Connection;

/// Appends a `WHERE` body (without the keyword) to a query.
type Filter<'f> = &'f (dyn Fn(&mut QueryBuilder<'_, Sqlite>) + Send + Sync);

/// How a list gets its total.
enum Total<'f> {
    /// From a counter table: pushes the whole `SELECT COALESCE(SUM(n), 0) FROM … WHERE …`.
    Counter(Filter<'f>),
    /// `COUNT(*)` over the list's own filter.
    Scan,
}

/// A list query: table, columns, filter, order.
struct ListQuery<'f> {
    table: &'static str,
    cols: &'static str,
    filter: Filter<'f>,
    order: &'static str,
}

impl ListQuery<'_> {
    /// `SELECT cols[, (total) AS total] FROM table WHERE filter ORDER BY … LIMIT … OFFSET …`.
    fn page_sql(
        &self,
        counter: Option<Filter<'_>>,
        page: PageRequest,
    ) -> QueryBuilder<'static, Sqlite> {
        let mut q = QueryBuilder::<Sqlite>::new(format!("SELECT {}", self.cols));
        if let Some(c) = counter {
            q.push(", (");
            c(&mut q);
            q.push(") AS total");
        }
        q.push(format!(" FROM {} WHERE ", self.table));
        (self.filter)(&mut q);
        q.push(format!(" ORDER BY {} LIMIT ", self.order));
        q.push_bind(i64::from(page.limit));
        q.push(" OFFSET ");
        q.push_bind(int(page.offset));
        q
    }

    fn count_sql(&self) -> QueryBuilder<'static, Sqlite> {
        let mut q =
            QueryBuilder::<Sqlite>::new(format!("SELECT COUNT(*) FROM {} WHERE ", self.table));
        (self.filter)(&mut q);
        q
    }
}

/// Statuses as SQL literals in canonical order (a closed enum: no injection), so the text
/// for the live view is exactly the predicate of the partial index `calls_app_active`.
/// `None` when the set is empty.
fn status_list(statuses: &[CallStatus]) -> Option<String> {
    let v: Vec<String> = CallStatus::ALL
        .iter()
        .filter(|st| statuses.contains(st))
        .map(|st| format!("'{}'", st.as_str()))
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

/// ` AND status IN (…)` (or ` AND 0` for an empty set) when the filter restricts statuses.
fn push_statuses(q: &mut QueryBuilder<'_, Sqlite>, statuses: Option<&Option<String>>) {
    match statuses {
        None => {}
        Some(None) => {
            q.push(" AND 0");
        }
        Some(Some(list)) => {
            q.push(format!(" AND status IN ({list})"));
        }
    }
}

impl SqliteStore {
    /// One page and its total (see the module documentation).
    async fn page_of<T>(
        &self,
        list: ListQuery<'_>,
        total: Total<'_>,
        page: PageRequest,
        decode: fn(&SqliteRow) -> StoreResult<T>,
    ) -> StoreResult<Page<T>> {
        let mut r = self.read_conn().await?;
        match total {
            Total::Counter(counter) => {
                let rows = list
                    .page_sql(Some(counter), page)
                    .build()
                    .fetch_all(&mut *r)
                    .await
                    .map_err(map_err)?;
                let total: i64 = match rows.first() {
                    Some(row) => row.try_get("total").map_err(map_err)?,
                    // Nothing on a first page: nothing at all (same snapshot).
                    None if page.offset == 0 && page.limit > 0 => 0,
                    // Past the end (or an empty page asked for): the total alone.
                    None => {
                        let mut q = QueryBuilder::<Sqlite>::new("");
                        counter(&mut q);
                        q.build_query_scalar()
                            .fetch_one(&mut *r)
                            .await
                            .map_err(map_err)?
                    }
                };
                let items = rows.iter().map(decode).collect::<StoreResult<Vec<_>>>()?;
                Ok(Page {
                    items,
                    total: rows::count(total),
                })
            }
            Total::Scan => {
                // Page and count in one read snapshot.
                let mut tx = r.begin().await.map_err(map_err)?;
                let items = list
                    .page_sql(None, page)
                    .build()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(map_err)?
                    .iter()
                    .map(decode)
                    .collect::<StoreResult<Vec<_>>>()?;
                let total = if page.offset == 0 && items.len() < page.limit as usize {
                    // The page holds every match.
                    items.len() as u64
                } else {
                    let n: i64 = list
                        .count_sql()
                        .build_query_scalar()
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                    rows::count(n)
                };
                tx.commit().await.map_err(map_err)?;
                Ok(Page { items, total })
            }
        }
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
        let statuses = filter.statuses.as_deref().map(status_list);
        let direction = filter.direction.map(Direction::as_str);
        let f = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("app_id = ").push_bind(app_s.clone());
            push_statuses(q, statuses.as_ref());
            if let Some(d) = direction {
                q.push(" AND direction = ").push_bind(d);
            }
            if let Some(from) = &filter.from {
                q.push(" AND from_number = ").push_bind(from.clone());
            }
            if let Some(to) = &filter.to {
                q.push(" AND to_number = ").push_bind(to.clone());
            }
        };
        let counter = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("SELECT COALESCE(SUM(n), 0) FROM call_counts WHERE app_id = ")
                .push_bind(app_s.clone());
            push_statuses(q, statuses.as_ref());
            if let Some(d) = direction {
                q.push(" AND direction = ").push_bind(d);
            }
        };
        let total = if filter.from.is_none() && filter.to.is_none() {
            Total::Counter(&counter)
        } else {
            Total::Scan
        };
        let list = ListQuery {
            table: "calls",
            cols: CALL_COLS,
            filter: &f,
            order: "started_at DESC, created_at DESC, id",
        };
        self.page_of(list, total, page, rows::call).await
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
        let direction = filter.direction.map(Direction::as_str);
        let f = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("app_id = ").push_bind(app_s.clone());
            if let Some(d) = direction {
                q.push(" AND direction = ").push_bind(d);
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
        let counter = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("SELECT COALESCE(SUM(n), 0) FROM message_counts WHERE app_id = ")
                .push_bind(app_s.clone());
            if let Some(d) = direction {
                q.push(" AND direction = ").push_bind(d);
            }
        };
        let total =
            if filter.from.is_none() && filter.to.is_none() && filter.dialpad_user_id.is_none() {
                Total::Counter(&counter)
            } else {
                Total::Scan
            };
        let list = ListQuery {
            table: "messages",
            cols: MESSAGE_COLS,
            filter: &f,
            order: "sent_at DESC, created_at DESC, id",
        };
        self.page_of(list, total, page, rows::message).await
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
        let counter = |q: &mut QueryBuilder<'_, Sqlite>| {
            q.push("SELECT COALESCE(SUM(n), 0) FROM voicemail_counts WHERE app_id = ")
                .push_bind(app_s.clone());
        };
        let total = if filter.dialpad_user_id.is_none() {
            Total::Counter(&counter)
        } else {
            Total::Scan
        };
        let list = ListQuery {
            table: "voicemails",
            cols: VOICEMAIL_COLS,
            filter: &f,
            order: "created_at DESC, id",
        };
        self.page_of(list, total, page, rows::voicemail).await
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
        let list = ListQuery {
            table: "dialpad_user_mappings",
            cols: MAPPING_COLS,
            filter: &f,
            order: "created_at DESC, id",
        };
        self.page_of(list, Total::Scan, page, rows::mapping).await
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
