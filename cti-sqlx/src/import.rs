//! Import of an ORIGINAL Node-server database (spec §7.1, §9.7) into a [`PgStore`].
//!
//! # What it does
//!
//! The import is a **non-destructive copy inside one database**: it reads the original tables
//! (by default in schema `public`) and inserts them into the store's own schema (default `cti`)
//! in **one transaction**, leaving the original tables untouched — the Node server can keep
//! running until the cut-over, and a failed import changes nothing. Every insert is
//! `ON CONFLICT DO NOTHING`, so running it again is harmless and copies only rows added since
//! (run it once ahead of time, then again right before switching traffic).
//!
//! | original | becomes |
//! |---|---|
//! | `apps` (bcrypt `api_key`) | same ids; `api_key` kept as the legacy hash, so the key keeps authenticating through [`AppStore::legacy_keys`](cti_core::store::AppStore::legacy_keys) and is backfilled on first use (spec §5.4) |
//! | `api_key_audit_log` | same ids, insertion order = `created_at` |
//! | `dialpad_user_mappings` | same ids |
//! | `calls` | same ids; unknown/`NULL` statuses become `ended`; the merge log is seeded with the stored status so late events cannot resurrect an ended call; `voicemail_transcript` → `transcript` |
//! | `messages` | same ids; a Postgres array literal in `to_number` (`{"+1…","+1…"}`) becomes `to_numbers` + its first element |
//! | `voicemails` | same ids; duplicates of one `(app, call)` keep the newest linked, older ones are kept with `dialpad_call_id = NULL` (the new unique rule) |
//! | `webhook_events` | same ids; `processed_at IS NULL` → `pending` inbox rows (processed by the new pipeline), others `done`; `dedupe_key` = `dialpad_event_id` or `import:<id>`; rows without an app are skipped |
//! | `dialpad_connections` | newest row per app; plaintext tokens encrypted with the given [`DataCipher`]; without one they are skipped (re-connect OAuth) |
//! | `dialpad_webhooks` | same ids; plaintext secret encrypted with the given [`DataCipher`]; without one the webhook is kept without its secret (verified by the global secret) |
//! | `dialpad_users` | not imported (never used by the original) |
//!
//! `TIMESTAMP WITHOUT TIME ZONE` values are read in [`ImportOptions::source_time_zone`]
//! (default `UTC`, what a server with the default configuration wrote). Tables or columns that
//! some original install paths lack (spec §7.2: `dialpad_webhooks`, `apps.updated_at`, …) are
//! tolerated.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cti_sqlx::import::{ImportOptions, from_original};
//! use cti_sqlx::pg::{PgOptions, PgStore};
//! let store = PgStore::open("postgres://cti@db/crm", PgOptions::default()).await?;
//! let report = from_original(&store, &ImportOptions::default()).await?;
//! println!("{report:?}");
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};

use cti_core::model::Timestamp;
use cti_core::secrets::{DataCipher, SecretError};
use cti_core::store::StoreError;
use sqlx::Row;
use sqlx::postgres::PgConnection;
use uuid::Uuid;

use crate::pg::rows::pg_err;
use crate::pg::{PgStore, validate_schema_name};

/// Options of [`from_original`].
#[derive(Clone, Debug)]
pub struct ImportOptions<'a> {
    /// Schema holding the original tables (default `public`).
    pub source_schema: String,
    /// Time zone in which the original's `TIMESTAMP WITHOUT TIME ZONE` values were written
    /// (default `UTC`); any name PostgreSQL knows (`Europe/Paris`, `America/New_York`, …).
    pub source_time_zone: String,
    /// Encrypts the original's plaintext OAuth tokens and webhook secrets. Without it, tokens
    /// are not imported and webhook secrets are dropped (each reported and logged).
    pub cipher: Option<&'a DataCipher>,
}

impl Default for ImportOptions<'_> {
    fn default() -> Self {
        Self {
            source_schema: "public".into(),
            source_time_zone: "UTC".into(),
            cipher: None,
        }
    }
}

/// What [`from_original`] copied (rows inserted by this run; a re-run reports only new rows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Apps copied.
    pub apps: u64,
    /// Of which still authenticate with a legacy bcrypt key.
    pub legacy_keys: u64,
    /// Audit rows copied.
    pub audit_rows: u64,
    /// User mappings copied.
    pub mappings: u64,
    /// Calls copied.
    pub calls: u64,
    /// Calls whose status was not one of the six (or `NULL`) and became `ended`.
    pub calls_status_remapped: u64,
    /// Messages copied.
    pub messages: u64,
    /// Voicemails copied.
    pub voicemails: u64,
    /// Voicemails copied without their call id (older duplicates of one call).
    pub voicemails_unlinked: u64,
    /// Unprocessed webhook events copied as `pending` inbox rows.
    pub events_pending: u64,
    /// Processed webhook events copied as `done`.
    pub events_done: u64,
    /// Webhook events not copied because they have no app.
    pub events_without_app: u64,
    /// Dialpad connections copied (tokens encrypted).
    pub connections: u64,
    /// Connections not copied: no cipher to encrypt their tokens.
    pub connections_skipped: u64,
    /// Connections copied without their Dialpad company id (already linked to another app).
    pub connections_org_dropped: u64,
    /// Webhooks copied.
    pub webhooks: u64,
    /// Webhook secrets encrypted.
    pub webhook_secrets_encrypted: u64,
    /// Webhook secrets dropped: no cipher.
    pub webhook_secrets_skipped: u64,
    /// Rows of the unused `dialpad_users` table (not imported).
    pub dialpad_users_ignored: u64,
}

/// Why an import failed (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The source schema does not look like an original database, or the options are invalid.
    #[error("not an importable original database: {0}")]
    Source(String),
    /// A database error (see [`StoreError::is_unavailable`]).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Encrypting a secret failed.
    #[error("encrypting a secret: {0}")]
    Secret(#[from] SecretError),
}

/// Column name → data type of a source table (empty when the table is missing).
struct Source {
    schema: String,
    tables: HashMap<String, HashMap<String, String>>,
}

impl Source {
    async fn load(conn: &mut PgConnection, schema: &str) -> Result<Self, ImportError> {
        let rows = sqlx::query(
            "SELECT table_name::text AS t, column_name::text AS c, data_type::text AS d \
             FROM information_schema.columns WHERE table_schema = $1",
        )
        .bind(schema)
        .fetch_all(&mut *conn)
        .await
        .map_err(pg_err)?;
        let mut tables: HashMap<String, HashMap<String, String>> = HashMap::new();
        for r in &rows {
            let t: String = r.try_get("t").map_err(pg_err)?;
            let c: String = r.try_get("c").map_err(pg_err)?;
            let d: String = r.try_get("d").map_err(pg_err)?;
            tables.entry(t).or_default().insert(c, d);
        }
        Ok(Self {
            schema: schema.to_string(),
            tables,
        })
    }

    fn has_table(&self, t: &str) -> bool {
        self.tables.contains_key(t)
    }

    fn has(&self, t: &str, c: &str) -> bool {
        self.tables.get(t).is_some_and(|cols| cols.contains_key(c))
    }

    /// `s.<c>` or `fallback` when the column is missing.
    fn col(&self, t: &str, c: &str, fallback: &str) -> String {
        if self.has(t, c) {
            format!("s.{c}")
        } else {
            fallback.to_string()
        }
    }

    /// A timestamp column as `timestamptz` (`$1` is the source time zone), `NULL` if missing.
    fn ts(&self, t: &str, c: &str) -> String {
        match self.tables.get(t).and_then(|cols| cols.get(c)) {
            Some(d) if d == "timestamp without time zone" => format!("(s.{c} AT TIME ZONE $1)"),
            Some(_) => format!("s.{c}::timestamptz"),
            None => "NULL::timestamptz".into(),
        }
    }

    fn table(&self, t: &str) -> String {
        format!("\"{}\".{t}", self.schema)
    }
}

/// Replaces `@name@` placeholders (SQL keeps its braces readable).
fn render(sql: &str, vars: &[(&str, String)]) -> String {
    let mut out = sql.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("@{k}@"), v);
    }
    out
}

async fn count(
    conn: &mut PgConnection,
    sql: &str,
    tz: &str,
    now: Timestamp,
) -> Result<u64, ImportError> {
    let n: i64 = sqlx::query_scalar(sql)
        .bind(tz)
        .bind(now)
        .fetch_one(&mut *conn)
        .await
        .map_err(pg_err)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Imports an original database found in `opts.source_schema` of the store's database into the
/// store's schema, in one transaction. See the [module documentation](self).
pub async fn from_original(
    store: &PgStore,
    opts: &ImportOptions<'_>,
) -> Result<ImportReport, ImportError> {
    validate_schema_name(&opts.source_schema).map_err(|e| ImportError::Source(e.to_string()))?;
    if opts.source_schema == store.schema() {
        return Err(ImportError::Source(
            "source and target schema are the same".into(),
        ));
    }
    let now = chrono::Utc::now();
    let tz = opts.source_time_zone.as_str();
    let mut tx = store.pool().begin().await.map_err(pg_err)?;
    // Validate the time zone name up front (a clear error instead of a failing statement).
    sqlx::query("SELECT now() AT TIME ZONE $1")
        .bind(tz)
        .execute(&mut *tx)
        .await
        .map_err(|e| ImportError::Source(format!("time zone {tz:?}: {e}")))?;
    let src = Source::load(&mut tx, &opts.source_schema).await?;
    if !src.has("apps", "api_key") || !src.has("apps", "id") {
        return Err(ImportError::Source(format!(
            "schema {:?} has no original `apps` table (with `api_key`)",
            opts.source_schema
        )));
    }
    let mut report = ImportReport::default();

    // --- apps ---------------------------------------------------------------------------
    let vars = vec![
        ("apps", src.table("apps")),
        ("active", src.col("apps", "is_active", "NULL::boolean")),
        ("rotated", src.ts("apps", "api_key_rotated_at")),
        ("created", src.ts("apps", "created_at")),
        ("updated", src.ts("apps", "updated_at")),
    ];
    let row = sqlx::query(&render(
        "WITH ins AS (
            INSERT INTO apps (id, name, is_active, api_key, api_key_issued_at, api_key_rotated_at,
                              created_at, updated_at)
            SELECT * FROM (
                SELECT s.id, s.name, COALESCE(@active@, true), NULLIF(s.api_key, ''),
                       CASE WHEN NULLIF(s.api_key, '') IS NOT NULL
                            THEN COALESCE(@rotated@, @created@, $2) END,
                       @rotated@, COALESCE(@created@, $2), COALESCE(@updated@, @created@, $2)
                FROM @apps@ s
                ORDER BY @created@ NULLS FIRST, s.id OFFSET 0
            ) x
            ON CONFLICT DO NOTHING
            RETURNING api_key
        )
        SELECT count(*) AS n, count(api_key) AS legacy FROM ins",
        &vars,
    ))
    .bind(tz)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(pg_err)?;
    report.apps = u64::try_from(row.try_get::<i64, _>("n").map_err(pg_err)?).unwrap_or(0);
    report.legacy_keys =
        u64::try_from(row.try_get::<i64, _>("legacy").map_err(pg_err)?).unwrap_or(0);

    // --- audit log ----------------------------------------------------------------------
    if src.has_table("api_key_audit_log") {
        let t = "api_key_audit_log";
        let vars = vec![
            ("audit", src.table(t)),
            ("old", src.col(t, "old_key_hint", "NULL::text")),
            ("new", src.col(t, "new_key_hint", "NULL::text")),
            ("performed", src.ts(t, "performed_at")),
            ("created", src.ts(t, "created_at")),
        ];
        report.audit_rows = count(
            &mut tx,
            &render(
                "WITH ins AS (
                    INSERT INTO api_key_audit_log (id, app_id, action, old_key_hint, new_key_hint,
                                                   actor, performed_at, created_at)
                    SELECT * FROM (
                        SELECT s.id, s.app_id, s.action, @old@, @new@, 'import',
                               COALESCE(@performed@, @created@, $2), COALESCE(@created@, @performed@, $2)
                        FROM @audit@ s JOIN apps a ON a.id = s.app_id
                        WHERE s.action IN ('created', 'rotated', 'revoked')
                        ORDER BY COALESCE(@created@, @performed@) NULLS FIRST, s.id OFFSET 0
                    ) x
                    ON CONFLICT DO NOTHING RETURNING 1
                )
                SELECT count(*) FROM ins",
                &vars,
            ),
            tz,
            now,
        )
        .await?;
    }

    // --- user mappings ------------------------------------------------------------------
    if src.has_table("dialpad_user_mappings") {
        let t = "dialpad_user_mappings";
        let vars = vec![
            ("maps", src.table(t)),
            ("created", src.ts(t, "created_at")),
            ("updated", src.ts(t, "updated_at")),
        ];
        report.mappings = count(
            &mut tx,
            &render(
                "WITH ins AS (
                    INSERT INTO dialpad_user_mappings (id, app_id, dialpad_user_id, crm_user_id,
                                                       created_at, updated_at)
                    SELECT s.id, s.app_id, s.dialpad_user_id, s.crm_user_id,
                           COALESCE(@created@, $2), COALESCE(@updated@, @created@, $2)
                    FROM @maps@ s JOIN apps a ON a.id = s.app_id
                    WHERE s.dialpad_user_id > 0
                    ON CONFLICT DO NOTHING RETURNING 1
                )
                SELECT count(*) FROM ins",
                &vars,
            ),
            tz,
            now,
        )
        .await?;
    }

    // --- calls --------------------------------------------------------------------------
    if src.has_table("calls") {
        let t = "calls";
        let vars = vec![
            ("calls", src.table(t)),
            ("status", src.col(t, "status", "NULL::text")),
            ("direction", src.col(t, "direction", "NULL::text")),
            ("from", src.col(t, "from_number", "NULL::text")),
            ("to", src.col(t, "to_number", "NULL::text")),
            ("user", src.col(t, "dialpad_user_id", "NULL::bigint")),
            ("started", src.ts(t, "started_at")),
            ("ended", src.ts(t, "ended_at")),
            ("created", src.ts(t, "created_at")),
            ("duration", src.col(t, "duration_seconds", "NULL::bigint")),
            ("recording", src.col(t, "recording_url", "NULL::text")),
            ("is_vm", src.col(t, "is_voicemail", "NULL::boolean")),
            ("vm_audio", src.col(t, "voicemail_audio_url", "NULL::text")),
            (
                "vm_transcript",
                src.col(t, "voicemail_transcript", "NULL::text"),
            ),
            ("raw", src.col(t, "raw_payload", "NULL::jsonb")),
        ];
        report.calls_status_remapped = count(
            &mut tx,
            &render(
                "SELECT count(*) FROM @calls@ s JOIN apps a ON a.id = s.app_id
                 WHERE s.dialpad_call_id > 0 AND $1::text IS NOT NULL AND $2::timestamptz IS NOT NULL
                   AND (@status@ IS NULL OR lower(btrim(@status@)) NOT IN
                        ('ringing', 'active', 'ended', 'missed', 'rejected', 'voicemail'))
                   AND NOT EXISTS (SELECT 1 FROM calls c WHERE c.id = s.id)",
                &vars,
            ),
            tz,
            now,
        )
        .await?;
        report.calls = count(
            &mut tx,
            &render(
                "WITH src AS (
                    SELECT s.id, s.app_id, s.dialpad_call_id,
                           CASE WHEN lower(btrim(@direction@)) IN ('inbound', 'outbound')
                                THEN lower(btrim(@direction@)) END AS direction,
                           @from@ AS from_number, @to@ AS to_number,
                           CASE WHEN lower(btrim(@status@)) IN
                                     ('ringing', 'active', 'ended', 'missed', 'rejected', 'voicemail')
                                THEN lower(btrim(@status@)) ELSE 'ended' END AS st,
                           CASE WHEN @user@ > 0 THEN @user@ END AS dialpad_user_id,
                           @started@ AS started_at, @ended@ AS ended_at,
                           @duration@::bigint AS duration_seconds, @recording@ AS recording_url,
                           COALESCE(@is_vm@, false) AS is_voicemail, @vm_audio@ AS voicemail_audio_url,
                           @vm_transcript@ AS transcript, @raw@::jsonb::text AS raw_payload,
                           COALESCE(@created@, $2) AS created_at
                    FROM @calls@ s JOIN apps a ON a.id = s.app_id
                    WHERE s.dialpad_call_id > 0
                ),
                seeded AS (
                    SELECT x.*, (extract(epoch FROM COALESCE(
                        CASE WHEN x.st IN ('ended', 'missed', 'rejected', 'voicemail') THEN x.ended_at END,
                        x.started_at, x.created_at)) * 1000)::bigint AS ms
                    FROM src x
                ),
                ins AS (
                    INSERT INTO calls (id, app_id, dialpad_call_id, direction, from_number, to_number,
                        status, dialpad_user_id, started_at, ended_at, duration_seconds, recording_url,
                        is_voicemail, voicemail_audio_url, transcript, held, merge_log, last_event_ms,
                        raw_payload, created_at, updated_at)
                    SELECT y.id, y.app_id, y.dialpad_call_id, y.direction, y.from_number, y.to_number,
                        y.st, y.dialpad_user_id, y.started_at, y.ended_at, y.duration_seconds,
                        y.recording_url, y.is_voicemail, y.voicemail_audio_url, y.transcript, false,
                        jsonb_build_object(
                            'first', jsonb_build_object(y.st, y.ms),
                            'fields', jsonb_strip_nulls(jsonb_build_object(
                                'direction', CASE WHEN y.direction IS NOT NULL THEN y.ms END,
                                'from_number', CASE WHEN y.from_number IS NOT NULL THEN y.ms END,
                                'to_number', CASE WHEN y.to_number IS NOT NULL THEN y.ms END,
                                'dialpad_user_id', CASE WHEN y.dialpad_user_id IS NOT NULL THEN y.ms END,
                                'started_at', CASE WHEN y.started_at IS NOT NULL THEN y.ms END,
                                'ended_at', CASE WHEN y.ended_at IS NOT NULL THEN y.ms END,
                                'duration_seconds', CASE WHEN y.duration_seconds IS NOT NULL THEN y.ms END,
                                'recording_url', CASE WHEN y.recording_url IS NOT NULL THEN y.ms END,
                                'transcript', CASE WHEN y.transcript IS NOT NULL THEN y.ms END,
                                'voicemail_audio_url', CASE WHEN y.voicemail_audio_url IS NOT NULL THEN y.ms END)))::text,
                        y.ms, y.raw_payload, y.created_at, y.created_at
                    FROM seeded y
                    ON CONFLICT DO NOTHING RETURNING 1
                )
                SELECT count(*) FROM ins",
                &vars,
            ),
            tz,
            now,
        )
        .await?;
    }

    // --- messages -----------------------------------------------------------------------
    if src.has_table("messages") {
        let t = "messages";
        let vars = vec![
            ("messages", src.table(t)),
            ("direction", src.col(t, "direction", "NULL::text")),
            ("from", src.col(t, "from_number", "NULL::text")),
            ("to", src.col(t, "to_number", "NULL::text")),
            ("text", src.col(t, "text", "NULL::text")),
            ("user", src.col(t, "dialpad_user_id", "NULL::bigint")),
            ("sent", src.ts(t, "sent_at")),
            ("created", src.ts(t, "created_at")),
        ];
        report.messages = count(
            &mut tx,
            &render(
                r#"WITH ins AS (
                    INSERT INTO messages (id, app_id, dialpad_message_id, direction, from_number,
                        to_number, to_numbers, text, dialpad_user_id, sent_at, created_at, updated_at)
                    SELECT s.id, s.app_id, s.dialpad_message_id,
                           CASE WHEN lower(btrim(@direction@)) IN ('inbound', 'outbound')
                                THEN lower(btrim(@direction@)) END,
                           @from@, COALESCE(tn.arr ->> 0, @to@), tn.arr, @text@,
                           CASE WHEN @user@ > 0 THEN @user@ END, @sent@,
                           COALESCE(@created@, $2), COALESCE(@created@, $2)
                    FROM @messages@ s
                    JOIN apps a ON a.id = s.app_id
                    CROSS JOIN LATERAL (
                        SELECT COALESCE(jsonb_agg(v ORDER BY o) FILTER (WHERE v <> ''), '[]'::jsonb) AS arr
                        FROM unnest(CASE
                                WHEN @to@ IS NULL THEN ARRAY[]::text[]
                                WHEN @to@ ~ '^\{.*\}$'
                                    THEN string_to_array(substr(@to@, 2, length(@to@) - 2), ',')
                                ELSE ARRAY[@to@] END) WITH ORDINALITY AS u(p, o)
                        CROSS JOIN LATERAL (SELECT btrim(btrim(u.p), '"') AS v) q
                    ) tn
                    WHERE s.dialpad_message_id > 0
                    ON CONFLICT DO NOTHING RETURNING 1
                )
                SELECT count(*) FROM ins"#,
                &vars,
            ),
            tz,
            now,
        )
        .await?;
    }

    // --- voicemails ---------------------------------------------------------------------
    if src.has_table("voicemails") {
        let t = "voicemails";
        let vars = vec![
            ("voicemails", src.table(t)),
            ("call", src.col(t, "dialpad_call_id", "NULL::bigint")),
            ("user", src.col(t, "dialpad_user_id", "NULL::bigint")),
            ("from", src.col(t, "from_number", "NULL::text")),
            ("to", src.col(t, "to_number", "NULL::text")),
            ("recording", src.col(t, "recording_url", "NULL::text")),
            ("transcript", src.col(t, "transcript", "NULL::text")),
            ("duration", src.col(t, "duration_seconds", "NULL::bigint")),
            ("created", src.ts(t, "created_at")),
            ("updated", src.ts(t, "updated_at")),
        ];
        let row = sqlx::query(&render(
            "WITH ranked AS (
                SELECT s.id, s.app_id,
                       CASE WHEN @call@ > 0 THEN @call@ END AS call_id,
                       row_number() OVER (PARTITION BY s.app_id, @call@
                           ORDER BY COALESCE(@updated@, @created@) DESC NULLS LAST, s.id DESC) AS rn,
                       CASE WHEN @user@ > 0 THEN @user@ END AS user_id, @from@ AS from_number,
                       @to@ AS to_number, @recording@ AS recording_url, @transcript@ AS transcript,
                       @duration@::bigint AS duration_seconds, COALESCE(@created@, $2) AS created_at,
                       COALESCE(@updated@, @created@, $2) AS updated_at
                FROM @voicemails@ s JOIN apps a ON a.id = s.app_id
            ),
            ins AS (
                INSERT INTO voicemails (id, app_id, dialpad_call_id, dialpad_user_id, from_number,
                    to_number, recording_url, transcript, duration_seconds, created_at, updated_at)
                SELECT r.id, r.app_id, CASE WHEN r.rn = 1 THEN r.call_id END, r.user_id, r.from_number,
                       r.to_number, r.recording_url, r.transcript, r.duration_seconds, r.created_at,
                       r.updated_at
                FROM ranked r
                ON CONFLICT DO NOTHING
                RETURNING id
            )
            SELECT count(*) AS n,
                   count(*) FILTER (WHERE r.call_id IS NOT NULL AND r.rn > 1) AS unlinked
            FROM ins JOIN ranked r ON r.id = ins.id",
            &vars,
        ))
        .bind(tz)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(pg_err)?;
        report.voicemails = u64::try_from(row.try_get::<i64, _>("n").map_err(pg_err)?).unwrap_or(0);
        report.voicemails_unlinked =
            u64::try_from(row.try_get::<i64, _>("unlinked").map_err(pg_err)?).unwrap_or(0);
    }

    // --- webhook events → inbox ---------------------------------------------------------
    if src.has_table("webhook_events") {
        let t = "webhook_events";
        let vars = vec![
            ("events", src.table(t)),
            ("event_id", src.col(t, "dialpad_event_id", "NULL::text")),
            ("event_type", src.col(t, "event_type", "NULL::text")),
            ("processed", src.ts(t, "processed_at")),
            ("received", src.ts(t, "received_at")),
            ("app", src.col(t, "app_id", "NULL::uuid")),
        ];
        let row = sqlx::query(&render(
            r#"WITH ins AS (
                INSERT INTO webhook_events (id, app_id, dedupe_key, event_type, call_id, state,
                    event_timestamp, payload, status, attempts, next_attempt_at, received_at, processed_at)
                SELECT * FROM (
                    SELECT s.id, a.id, COALESCE(NULLIF(@event_id@::text, ''), 'import:' || s.id::text),
                           @event_type@,
                           CASE WHEN c.v ~ '^[1-9][0-9]{0,18}$' THEN
                               CASE WHEN c.v::numeric <= 9223372036854775807 THEN c.v::bigint END END,
                           p.j ->> 'state',
                           CASE WHEN p.j ->> 'event_timestamp' ~ '^[0-9]{1,18}$'
                                THEN (p.j ->> 'event_timestamp')::bigint END,
                           p.j::text,
                           CASE WHEN s.processed_at IS NULL THEN 'pending' ELSE 'done' END,
                           0, COALESCE(@received@, $2), COALESCE(@received@, $2), @processed@
                    FROM @events@ s
                    JOIN apps a ON a.id = @app@
                    CROSS JOIN LATERAL (SELECT s.payload::jsonb AS j) p
                    CROSS JOIN LATERAL (SELECT COALESCE(p.j ->> 'call_id', p.j -> 'call' ->> 'id',
                                                        p.j -> 'data' -> 'call' ->> 'id') AS v) c
                    ORDER BY @received@ NULLS FIRST, s.id OFFSET 0
                ) x
                ON CONFLICT DO NOTHING
                RETURNING status
            )
            SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
                   count(*) FILTER (WHERE status = 'done') AS done FROM ins"#,
            &vars,
        ))
        .bind(tz)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(pg_err)?;
        report.events_pending =
            u64::try_from(row.try_get::<i64, _>("pending").map_err(pg_err)?).unwrap_or(0);
        report.events_done =
            u64::try_from(row.try_get::<i64, _>("done").map_err(pg_err)?).unwrap_or(0);
        report.events_without_app = count(
            &mut tx,
            &render(
                "SELECT count(*) FROM @events@ s
                 WHERE $1::text IS NOT NULL AND $2::timestamptz IS NOT NULL
                   AND (@app@ IS NULL OR NOT EXISTS (SELECT 1 FROM apps a WHERE a.id = @app@))",
                &vars,
            ),
            tz,
            now,
        )
        .await?;
    }

    // --- Dialpad connections (tokens encrypted in Rust) ---------------------------------
    if src.has_table("dialpad_connections") {
        import_connections(&mut tx, &src, opts, now, &mut report).await?;
    }

    // --- Dialpad webhooks (secret encrypted in Rust) ------------------------------------
    if src.has_table("dialpad_webhooks") {
        import_webhooks(&mut tx, &src, opts, now, &mut report).await?;
    }

    if src.has_table("dialpad_users") {
        report.dialpad_users_ignored = count(
            &mut tx,
            &format!(
                "SELECT count(*) FROM {} WHERE $1::text IS NOT NULL AND $2::timestamptz IS NOT NULL",
                src.table("dialpad_users")
            ),
            tz,
            now,
        )
        .await?;
    }

    tx.commit().await.map_err(pg_err)?;
    tracing::info!(?report, source = %opts.source_schema, target = %store.schema(), "imported original database");
    Ok(report)
}

/// Encrypts a plaintext secret (values that already look encrypted are kept).
fn seal(cipher: &DataCipher, v: &str) -> Result<String, SecretError> {
    if DataCipher::is_encrypted(v) {
        Ok(v.to_string())
    } else {
        cipher.try_encrypt(v)
    }
}

async fn import_connections(
    tx: &mut PgConnection,
    src: &Source,
    opts: &ImportOptions<'_>,
    now: Timestamp,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let t = "dialpad_connections";
    let vars = vec![
        ("conns", src.table(t)),
        ("org", src.col(t, "dialpad_org_id", "NULL::bigint")),
        ("env", src.col(t, "environment", "NULL::text")),
        ("expires", src.ts(t, "token_expires_at")),
        ("created", src.ts(t, "created_at")),
        ("updated", src.ts(t, "updated_at")),
    ];
    // Newest row per app (the original had no unique rule on app_id), not yet imported.
    let rows = sqlx::query(&render(
        "SELECT DISTINCT ON (s.app_id) s.id, s.app_id, CASE WHEN @org@ > 0 THEN @org@ END AS org,
                s.access_token, s.refresh_token, COALESCE(@expires@, $2) AS expires,
                CASE WHEN @env@ IN ('sandbox', 'production') THEN @env@ ELSE 'production' END AS env,
                COALESCE(@created@, $2) AS created_at, COALESCE(@updated@, @created@, $2) AS updated_at
         FROM @conns@ s JOIN apps a ON a.id = s.app_id
         WHERE NOT EXISTS (SELECT 1 FROM dialpad_connections c WHERE c.app_id = s.app_id)
         ORDER BY s.app_id, @updated@ DESC NULLS LAST, @created@ DESC NULLS LAST, s.id",
        &vars,
    ))
    .bind(&opts.source_time_zone)
    .bind(now)
    .fetch_all(&mut *tx)
    .await
    .map_err(pg_err)?;
    let Some(cipher) = opts.cipher else {
        if !rows.is_empty() {
            tracing::warn!(
                count = rows.len(),
                "import: no data encryption key, Dialpad connections (plaintext tokens) not imported; \
                 tenants must reconnect Dialpad"
            );
        }
        report.connections_skipped = rows.len() as u64;
        return Ok(());
    };
    let mut taken: HashSet<i64> = sqlx::query_scalar::<_, i64>(
        "SELECT dialpad_org_id FROM dialpad_connections WHERE dialpad_org_id IS NOT NULL",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(pg_err)?
    .into_iter()
    .collect();
    for r in &rows {
        let mut org: Option<i64> = r.try_get("org").map_err(pg_err)?;
        if let Some(o) = org
            && !taken.insert(o)
        {
            org = None;
            report.connections_org_dropped += 1;
        }
        let access: String = r.try_get("access_token").map_err(pg_err)?;
        let refresh: String = r.try_get("refresh_token").map_err(pg_err)?;
        let done = sqlx::query(
            "INSERT INTO dialpad_connections (id, app_id, dialpad_org_id, access_token_enc, refresh_token_enc,
                 token_expires_at, environment, status, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(r.try_get::<Uuid, _>("id").map_err(pg_err)?)
        .bind(r.try_get::<Uuid, _>("app_id").map_err(pg_err)?)
        .bind(org)
        .bind(seal(cipher, &access)?)
        .bind(seal(cipher, &refresh)?)
        .bind(r.try_get::<Timestamp, _>("expires").map_err(pg_err)?)
        .bind(r.try_get::<String, _>("env").map_err(pg_err)?)
        .bind(r.try_get::<Timestamp, _>("created_at").map_err(pg_err)?)
        .bind(r.try_get::<Timestamp, _>("updated_at").map_err(pg_err)?)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?;
        report.connections += done.rows_affected();
    }
    Ok(())
}

async fn import_webhooks(
    tx: &mut PgConnection,
    src: &Source,
    opts: &ImportOptions<'_>,
    now: Timestamp,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let t = "dialpad_webhooks";
    let vars = vec![
        ("hooks", src.table(t)),
        ("secret", src.col(t, "secret", "NULL::text")),
        ("algo", src.col(t, "algo", "NULL::text")),
        ("sig", src.col(t, "signature_type", "NULL::text")),
        ("created", src.ts(t, "created_at")),
        ("updated", src.ts(t, "updated_at")),
    ];
    let rows = sqlx::query(&render(
        "SELECT s.id, s.app_id, s.webhook_id, s.hook_url, @secret@ AS secret, @algo@ AS algo,
                @sig@ AS signature_type, COALESCE(@created@, $2) AS created_at,
                COALESCE(@updated@, @created@, $2) AS updated_at
         FROM @hooks@ s JOIN apps a ON a.id = s.app_id
         WHERE s.webhook_id > 0 AND NOT EXISTS (SELECT 1 FROM dialpad_webhooks w WHERE w.id = s.id)
         ORDER BY @created@ NULLS FIRST, s.id",
        &vars,
    ))
    .bind(&opts.source_time_zone)
    .bind(now)
    .fetch_all(&mut *tx)
    .await
    .map_err(pg_err)?;
    let mut skipped = 0u64;
    for r in &rows {
        let secret: Option<String> = r.try_get("secret").map_err(pg_err)?;
        let secret = secret.filter(|s| !s.is_empty());
        let (secret_enc, encrypted) = match (secret, opts.cipher) {
            (Some(s), Some(c)) => (Some(seal(c, &s)?), true),
            (Some(_), None) => {
                skipped += 1;
                (None, false)
            }
            (None, _) => (None, false),
        };
        let done = sqlx::query(
            "INSERT INTO dialpad_webhooks (id, app_id, webhook_id, hook_url, secret_enc, algo, signature_type,
                 created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(r.try_get::<Uuid, _>("id").map_err(pg_err)?)
        .bind(r.try_get::<Uuid, _>("app_id").map_err(pg_err)?)
        .bind(r.try_get::<i64, _>("webhook_id").map_err(pg_err)?)
        .bind(r.try_get::<String, _>("hook_url").map_err(pg_err)?)
        .bind(secret_enc)
        .bind(r.try_get::<Option<String>, _>("algo").map_err(pg_err)?)
        .bind(r.try_get::<Option<String>, _>("signature_type").map_err(pg_err)?)
        .bind(r.try_get::<Timestamp, _>("created_at").map_err(pg_err)?)
        .bind(r.try_get::<Timestamp, _>("updated_at").map_err(pg_err)?)
        .execute(&mut *tx)
        .await
        .map_err(pg_err)?;
        if done.rows_affected() > 0 {
            report.webhooks += 1;
            if encrypted {
                report.webhook_secrets_encrypted += 1;
            }
        }
    }
    if skipped > 0 {
        tracing::warn!(
            count = skipped,
            "import: no data encryption key, plaintext Dialpad webhook secrets dropped; those webhooks \
             verify with the global secret until re-created"
        );
    }
    report.webhook_secrets_skipped = skipped;
    Ok(())
}
