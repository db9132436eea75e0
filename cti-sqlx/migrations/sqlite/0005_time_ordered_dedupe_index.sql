-- The inbox's dedupe index in event-time order.
--
-- `UNIQUE (app_id, dedupe_key)` ordered the index by the key, which for most events is the
-- SHA-256 hex of the body: every ingested event landed on a random leaf of the largest index of
-- the database, and that leaf was one more page in the commit's WAL frames and in the next
-- checkpoint (30 % of the frames an event wrote, docs/performance.md, 2026-11-30 f).
--
-- The index is now `(app_id, dedupe_at, dedupe_key)`, where `dedupe_at` is the event's own
-- `event_timestamp` when the key is a body hash (64 lowercase hex digits) and 0 otherwise
-- (explicit `id:` keys and any other key). A body hash fixes the body, and the body fixes its
-- `event_timestamp`, so two events with the same hash key always have the same `dedupe_at`:
-- the new constraint rejects exactly the pairs the old one did. New events arrive with recent
-- timestamps, so their entries go to the last seconds' leaves at the index's right edge, which
-- stay hot and are shared by the commit's events, instead of anywhere in the index.
--
-- SQLite cannot drop a table's UNIQUE constraint, so the table is rebuilt: this migration
-- rewrites `webhook_events` once (about 45 s per million 2 kB events on a 2-core machine).
-- `dedupe_at` is a virtual generated column: computed from the row, stored only in the index.
CREATE TABLE webhook_events_new (
    -- insertion order (rowid alias): "oldest first" among equal received_at
    seq             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    app_id          TEXT    NOT NULL,
    dedupe_key      TEXT    NOT NULL,
    event_type      TEXT,
    call_id         INTEGER,
    state           TEXT,
    event_timestamp INTEGER,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'done', 'ignored', 'failed', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL,
    locked_until    INTEGER,
    received_at     INTEGER NOT NULL,
    processed_at    INTEGER,
    dedupe_at       INTEGER NOT NULL GENERATED ALWAYS AS (
        CASE WHEN length(dedupe_key) = 64 AND dedupe_key NOT GLOB '*[^0-9a-f]*'
             THEN coalesce(event_timestamp, 0) ELSE 0 END
    ) VIRTUAL,
    UNIQUE (app_id, dedupe_at, dedupe_key)
);
INSERT INTO webhook_events_new (seq, id, app_id, dedupe_key, event_type, call_id, state,
                                event_timestamp, payload, status, attempts, last_error,
                                next_attempt_at, locked_until, received_at, processed_at)
SELECT seq, id, app_id, dedupe_key, event_type, call_id, state, event_timestamp, payload,
       status, attempts, last_error, next_attempt_at, locked_until, received_at, processed_at
FROM webhook_events ORDER BY seq;
DROP TABLE webhook_events;
ALTER TABLE webhook_events_new RENAME TO webhook_events;

CREATE INDEX webhook_events_status_next ON webhook_events (status, next_attempt_at);
-- per-call ordering: the unfinished events of a call in arrival order
CREATE INDEX webhook_events_call_unfinished ON webhook_events (app_id, call_id, received_at, seq)
    WHERE status IN ('pending', 'failed', 'processing');
-- claim scan: unfinished events in arrival order
CREATE INDEX webhook_events_unfinished ON webhook_events (received_at, seq)
    WHERE status IN ('pending', 'failed', 'processing');
-- retention
CREATE INDEX webhook_events_finished ON webhook_events (received_at)
    WHERE status IN ('done', 'ignored');
