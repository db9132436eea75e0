//! [`RecordStore`] and [`MappingStore`] on PostgreSQL.
//!
//! # List totals
//!
//! `Page::total` of calls, messages and voicemails never counts the table when it can be read
//! from the per-app counters that triggers keep exact (migration `0002`):
//! `call_counts (app, status, direction)`, `message_counts (app, direction)`,
//! `voicemail_counts (app)`, each key sharded over up to 8 rows by writing backend (summed
//! here) so concurrent completes of one app do not queue on one counter row. Filters the
//! counters cannot answer (exact numbers, Dialpad user) count their matches over the index of
//! that filter — bounded by the number of matches.

use std::collections::HashMap;

use async_trait::async_trait;
use cti_core::model::*;
use cti_core::store::*;
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::PgStore;
use super::rows::*;

/// ` AND status IN (…)` for a status filter: literals in canonical order (a closed enum, so
/// no injection), never a bound array — the planner must see the values to use the partial
/// index `idx_calls_active` (its predicate is exactly the live view's list) and the per-status
/// index, also under a generic plan.
fn push_statuses(qb: &mut QueryBuilder<'_, Postgres>, f: &CallFilter) {
    if let Some(st) = &f.statuses {
        let list: Vec<String> = CallStatus::ALL
            .iter()
            .filter(|s| st.contains(s))
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        if list.is_empty() {
            qb.push(" AND false");
        } else {
            qb.push(format!(" AND status IN ({})", list.join(", ")));
        }
    }
}

fn call_where(qb: &mut QueryBuilder<'_, Postgres>, app: AppId, f: &CallFilter) {
    qb.push(" FROM calls WHERE app_id = ").push_bind(app.0);
    push_statuses(qb, f);
    if let Some(d) = f.direction {
        qb.push(" AND direction = ").push_bind(d.as_str());
    }
    if let Some(x) = &f.from {
        qb.push(" AND from_number = ").push_bind(x.clone());
    }
    if let Some(x) = &f.to {
        qb.push(" AND to_number = ").push_bind(x.clone());
    }
}

/// The total of a call filter from `call_counts`, when the counters can answer it (no number
/// filter).
fn call_counter(f: &CallFilter) -> bool {
    f.from.is_none() && f.to.is_none()
}

fn call_count_sql(qb: &mut QueryBuilder<'_, Postgres>, app: AppId, f: &CallFilter) {
    qb.push("SELECT COALESCE(sum(n), 0)::bigint FROM call_counts WHERE app_id = ")
        .push_bind(app.0);
    push_statuses(qb, f);
    if let Some(d) = f.direction {
        qb.push(" AND direction = ").push_bind(d.as_str());
    }
}

fn message_where(qb: &mut QueryBuilder<'_, Postgres>, app: AppId, f: &MessageFilter) {
    qb.push(" FROM messages WHERE app_id = ").push_bind(app.0);
    if let Some(d) = f.direction {
        qb.push(" AND direction = ").push_bind(d.as_str());
    }
    if let Some(x) = &f.from {
        qb.push(" AND from_number = ").push_bind(x.clone());
    }
    if let Some(x) = &f.to {
        qb.push(" AND to_number = ").push_bind(x.clone());
    }
    if let Some(u) = f.dialpad_user_id {
        qb.push(" AND dialpad_user_id = ").push_bind(u.as_i64());
    }
}

fn message_counter(f: &MessageFilter) -> bool {
    f.from.is_none() && f.to.is_none() && f.dialpad_user_id.is_none()
}

fn message_count_sql(qb: &mut QueryBuilder<'_, Postgres>, app: AppId, f: &MessageFilter) {
    qb.push("SELECT COALESCE(sum(n), 0)::bigint FROM message_counts WHERE app_id = ")
        .push_bind(app.0);
    if let Some(d) = f.direction {
        qb.push(" AND direction = ").push_bind(d.as_str());
    }
}

fn voicemail_where(qb: &mut QueryBuilder<'_, Postgres>, app: AppId, f: &VoicemailFilter) {
    qb.push(" FROM voicemails WHERE app_id = ").push_bind(app.0);
    if let Some(u) = f.dialpad_user_id {
        qb.push(" AND dialpad_user_id = ").push_bind(u.as_i64());
    }
}

fn voicemail_count_sql(qb: &mut QueryBuilder<'_, Postgres>, app: AppId) {
    qb.push("SELECT COALESCE(sum(n), 0)::bigint FROM voicemail_counts WHERE app_id = ")
        .push_bind(app.0);
}

fn push_page(qb: &mut QueryBuilder<'_, Postgres>, page: PageRequest) {
    qb.push(" LIMIT ")
        .push_bind(i64::from(page.limit))
        .push(" OFFSET ")
        .push_bind(i64_of(page.offset));
}

/// Appends ` FROM … WHERE …` (or, for a counter, a whole `SELECT`) to a query.
type Sql<'f> = &'f (dyn Fn(&mut QueryBuilder<'_, Postgres>) + Send + Sync);

/// How a list gets its total.
enum Total<'f> {
    /// From a counter table (the whole scalar `SELECT`), read by the page query itself.
    Counter(Sql<'f>),
    /// `count(*)` over the list's filter.
    Scan,
}

impl PgStore {
    /// One filtered, ordered page and its total.
    ///
    /// With a counter, the total is a scalar subquery of the page query: one statement, one
    /// snapshot, one round trip (a second query only for a page past the end). Otherwise the
    /// matches are counted — unless the first page already holds them all.
    async fn paged<T>(
        &self,
        cols: &str,
        filter: Sql<'_>,
        total: Total<'_>,
        order: &str,
        page: PageRequest,
        decode: fn(&sqlx::postgres::PgRow) -> StoreResult<T>,
    ) -> StoreResult<Page<T>> {
        let mut qb = QueryBuilder::<Postgres>::new("SELECT ");
        qb.push(cols);
        if let Total::Counter(counter) = &total {
            qb.push(", (");
            counter(&mut qb);
            qb.push(") AS total");
        }
        filter(&mut qb);
        qb.push(" ORDER BY ").push(order);
        push_page(&mut qb, page);
        let rows = qb.build().fetch_all(&self.pool).await.map_err(pg_err)?;
        let items = all(&rows, decode)?;
        let total = match (total, rows.first()) {
            (Total::Counter(_), Some(row)) => u64_of(col::<i64>(row, "total")?)?,
            // An empty first page: no match in that snapshot.
            (_, None) if page.offset == 0 && page.limit > 0 => 0,
            (Total::Scan, _) if page.offset == 0 && items.len() < page.limit as usize => {
                // The page holds every match: no need to count.
                items.len() as u64
            }
            (total, _) => {
                let mut qb = QueryBuilder::<Postgres>::new("");
                match total {
                    Total::Counter(counter) => counter(&mut qb),
                    Total::Scan => {
                        qb.push("SELECT count(*)");
                        filter(&mut qb);
                    }
                }
                let n: i64 = qb
                    .build_query_scalar()
                    .fetch_one(&self.pool)
                    .await
                    .map_err(pg_err)?;
                u64_of(n)?
            }
        };
        Ok(Page { items, total })
    }
}

#[async_trait]
impl RecordStore for PgStore {
    async fn list_calls(
        &self,
        app: AppId,
        filter: &CallFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Call>> {
        let counter = |qb: &mut QueryBuilder<'_, Postgres>| call_count_sql(qb, app, filter);
        self.paged(
            CALL_COLS,
            &|qb| call_where(qb, app, filter),
            if call_counter(filter) {
                Total::Counter(&counter)
            } else {
                Total::Scan
            },
            "started_at DESC NULLS LAST, created_at DESC, id",
            page,
            call_from_row,
        )
        .await
    }

    async fn get_call(&self, app: AppId, id: Uuid) -> StoreResult<Option<Call>> {
        let sql = format!("SELECT {CALL_COLS} FROM calls WHERE app_id = $1 AND id = $2");
        let row = sqlx::query(&sql)
            .bind(app.0)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(call_from_row).transpose()
    }

    async fn get_call_by_dialpad_id(
        &self,
        app: AppId,
        call_id: DialpadId,
    ) -> StoreResult<Option<Call>> {
        let sql =
            format!("SELECT {CALL_COLS} FROM calls WHERE app_id = $1 AND dialpad_call_id = $2");
        let row = sqlx::query(&sql)
            .bind(app.0)
            .bind(call_id.as_i64())
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(call_from_row).transpose()
    }

    async fn list_messages(
        &self,
        app: AppId,
        filter: &MessageFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Message>> {
        let counter = |qb: &mut QueryBuilder<'_, Postgres>| message_count_sql(qb, app, filter);
        self.paged(
            MESSAGE_COLS,
            &|qb| message_where(qb, app, filter),
            if message_counter(filter) {
                Total::Counter(&counter)
            } else {
                Total::Scan
            },
            "sent_at DESC NULLS LAST, created_at DESC, id",
            page,
            message_from_row,
        )
        .await
    }

    async fn get_message(&self, app: AppId, id: Uuid) -> StoreResult<Option<Message>> {
        let sql = format!("SELECT {MESSAGE_COLS} FROM messages WHERE app_id = $1 AND id = $2");
        let row = sqlx::query(&sql)
            .bind(app.0)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(message_from_row).transpose()
    }

    async fn list_voicemails(
        &self,
        app: AppId,
        filter: &VoicemailFilter,
        page: PageRequest,
    ) -> StoreResult<Page<Voicemail>> {
        let counter = |qb: &mut QueryBuilder<'_, Postgres>| voicemail_count_sql(qb, app);
        self.paged(
            VOICEMAIL_COLS,
            &|qb| voicemail_where(qb, app, filter),
            if filter.dialpad_user_id.is_none() {
                Total::Counter(&counter)
            } else {
                Total::Scan
            },
            "created_at DESC, id",
            page,
            voicemail_from_row,
        )
        .await
    }

    async fn get_voicemail(&self, app: AppId, id: Uuid) -> StoreResult<Option<Voicemail>> {
        let sql = format!("SELECT {VOICEMAIL_COLS} FROM voicemails WHERE app_id = $1 AND id = $2");
        let row = sqlx::query(&sql)
            .bind(app.0)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(voicemail_from_row).transpose()
    }

    async fn delete_voicemail(&self, app: AppId, id: Uuid) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM voicemails WHERE app_id = $1 AND id = $2")
            .bind(app.0)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl MappingStore for PgStore {
    async fn upsert_mapping(
        &self,
        app: AppId,
        dialpad_user_id: DialpadId,
        crm_user_id: &str,
        now: Timestamp,
    ) -> StoreResult<UserMapping> {
        let sql = format!(
            "INSERT INTO dialpad_user_mappings (id, app_id, dialpad_user_id, crm_user_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (app_id, dialpad_user_id) DO UPDATE SET crm_user_id = EXCLUDED.crm_user_id, \
             updated_at = EXCLUDED.updated_at RETURNING {MAPPING_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(Uuid::new_v4())
            .bind(app.0)
            .bind(dialpad_user_id.as_i64())
            .bind(crm_user_id)
            .bind(now)
            .fetch_one(&self.pool)
            .await
            .map_err(pg_err)?;
        mapping_from_row(&row)
    }

    async fn upsert_mappings(
        &self,
        app: AppId,
        pairs: &[(DialpadId, String)],
        now: Timestamp,
    ) -> StoreResult<usize> {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM apps WHERE id = $1)")
            .bind(app.0)
            .fetch_one(&self.pool)
            .await
            .map_err(pg_err)?;
        if !exists {
            return Err(StoreError::NotFound);
        }
        if pairs.is_empty() {
            return Ok(0);
        }
        // A user repeated in the batch: the last pair wins (as sequential upserts would), and
        // one statement may not update a row twice.
        let mut last: HashMap<DialpadId, usize> = HashMap::with_capacity(pairs.len());
        for (i, (u, _)) in pairs.iter().enumerate() {
            last.insert(*u, i);
        }
        let mut idx: Vec<usize> = last.into_values().collect();
        idx.sort_unstable();
        let ids: Vec<Uuid> = idx.iter().map(|_| Uuid::new_v4()).collect();
        let users: Vec<i64> = idx.iter().map(|&i| pairs[i].0.as_i64()).collect();
        let crms: Vec<String> = idx.iter().map(|&i| pairs[i].1.clone()).collect();
        // One statement: all or nothing.
        sqlx::query(
            "INSERT INTO dialpad_user_mappings (id, app_id, dialpad_user_id, crm_user_id, created_at, updated_at) \
             SELECT u.id, $4, u.dialpad_user_id, u.crm_user_id, $5, $5 \
             FROM UNNEST($1::uuid[], $2::int8[], $3::text[]) AS u(id, dialpad_user_id, crm_user_id) \
             ON CONFLICT (app_id, dialpad_user_id) DO UPDATE SET crm_user_id = EXCLUDED.crm_user_id, \
             updated_at = EXCLUDED.updated_at",
        )
        .bind(&ids)
        .bind(&users)
        .bind(&crms)
        .bind(app.0)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(pairs.len())
    }

    async fn get_mapping_by_dialpad(
        &self,
        app: AppId,
        dialpad_user_id: DialpadId,
    ) -> StoreResult<Option<UserMapping>> {
        let sql = format!(
            "SELECT {MAPPING_COLS} FROM dialpad_user_mappings WHERE app_id = $1 AND dialpad_user_id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(app.0)
            .bind(dialpad_user_id.as_i64())
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(mapping_from_row).transpose()
    }

    async fn get_mapping_by_crm(
        &self,
        app: AppId,
        crm_user_id: &str,
    ) -> StoreResult<Option<UserMapping>> {
        let sql = format!(
            "SELECT {MAPPING_COLS} FROM dialpad_user_mappings WHERE app_id = $1 AND crm_user_id = $2 \
             ORDER BY created_at, id LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(app.0)
            .bind(crm_user_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_err)?;
        row.as_ref().map(mapping_from_row).transpose()
    }

    async fn list_mappings(&self, app: AppId, page: PageRequest) -> StoreResult<Page<UserMapping>> {
        self.paged(
            MAPPING_COLS,
            &|qb| {
                qb.push(" FROM dialpad_user_mappings WHERE app_id = ")
                    .push_bind(app.0);
            },
            Total::Scan,
            "created_at DESC, id",
            page,
            mapping_from_row,
        )
        .await
    }

    async fn delete_mapping(&self, app: AppId, id: Uuid) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM dialpad_user_mappings WHERE app_id = $1 AND id = $2")
            .bind(app.0)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(pg_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_mapping_by_dialpad(
        &self,
        app: AppId,
        dialpad_user_id: DialpadId,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM dialpad_user_mappings WHERE app_id = $1 AND dialpad_user_id = $2",
        )
        .bind(app.0)
        .bind(dialpad_user_id.as_i64())
        .execute(&self.pool)
        .await
        .map_err(pg_err)?;
        Ok(done.rows_affected() > 0)
    }
}
