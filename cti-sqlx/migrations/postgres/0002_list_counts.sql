-- Per-app totals of the list endpoints, kept exact by triggers, so `pagination.total` of
-- `GET /api/calls` (and messages, voicemails) never counts the table.
--
-- * call_counts:      calls per (app, status, direction) — totals of the unfiltered list,
--                     the status/direction filters and /api/calls/active;
-- * message_counts:   messages per (app, direction);
-- * voicemail_counts: voicemails per app.
--
-- A NULL direction is stored as '' (part of the primary key). Rows stay when they reach 0 (a
-- handful per app) and go with their app. The triggers run in the writing statement's
-- transaction, so every writer (inbox_complete, the import, manual SQL) keeps the totals
-- exact; requests with from/to/user filters count over their (selective) index.
--
-- Triggers: inserts and deletes are statement-level with a transition table (one aggregated
-- upsert per statement, cheap for bulk writes such as the import); updates are row-level with
-- a WHEN clause, so an upsert that changes neither the app, the status nor the direction never
-- calls a function. Counter rows are always locked in (app, key) order inside a statement, so
-- concurrent writers cannot deadlock on them. The functions pin search_path to this schema.
--
-- Sharded counters: each key has up to 8 rows (`shard` = the writing backend's pid mod 8, the
-- backfill writes shard 0), summed on read. Concurrent completes of one app's calls thus update
-- different rows instead of queueing on one row lock held until commit. A shard row may go
-- negative (a call counted in one shard, changed from another); only the sums are meaningful.
--
-- Writers of these tables wait for this migration (and the backfill sees all of their rows).
LOCK TABLE calls, messages, voicemails IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE call_counts (
    app_id    UUID   NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    status    TEXT   NOT NULL,
    direction TEXT   NOT NULL,
    shard     SMALLINT NOT NULL DEFAULT 0,
    n         BIGINT NOT NULL,
    PRIMARY KEY (app_id, status, direction, shard)
)
-- Updated by every call insert and status change: leave room for HOT updates.
WITH (fillfactor = 50);

CREATE TABLE message_counts (
    app_id    UUID   NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    direction TEXT   NOT NULL,
    shard     SMALLINT NOT NULL DEFAULT 0,
    n         BIGINT NOT NULL,
    PRIMARY KEY (app_id, direction, shard)
)
WITH (fillfactor = 50);

CREATE TABLE voicemail_counts (
    app_id UUID     NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    shard  SMALLINT NOT NULL DEFAULT 0,
    n      BIGINT   NOT NULL,
    PRIMARY KEY (app_id, shard)
)
WITH (fillfactor = 50);

-- calls -------------------------------------------------------------------------------------

CREATE FUNCTION call_counts_inserted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO call_counts AS c (app_id, status, direction, shard, n)
    SELECT i.app_id, i.status, COALESCE(i.direction, ''), pg_backend_pid() % 8, count(*)
      FROM inserted_calls i GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (app_id, status, direction, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION call_counts_updated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO call_counts AS c (app_id, status, direction, shard, n)
    SELECT k.app_id, k.status, k.direction, pg_backend_pid() % 8, k.d
      FROM (VALUES (OLD.app_id, OLD.status, COALESCE(OLD.direction, ''), -1::bigint),
                   (NEW.app_id, NEW.status, COALESCE(NEW.direction, ''), 1::bigint))
           AS k (app_id, status, direction, d)
     ORDER BY 1, 2, 3
    ON CONFLICT (app_id, status, direction, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

-- Deletes only decrement existing rows (the key's lowest shard): an app's cascade may have
-- removed them already (and inserting one for an app being deleted would violate the foreign
-- key).
CREATE FUNCTION call_counts_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.app_id, d.status, COALESCE(d.direction, '') AS direction, count(*) AS n
               FROM deleted_calls d GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    LOOP
        UPDATE call_counts SET n = n - r.n
         WHERE app_id = r.app_id AND status = r.status AND direction = r.direction
           AND shard = (SELECT min(shard) FROM call_counts
                         WHERE app_id = r.app_id AND status = r.status
                           AND direction = r.direction);
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER calls_counts_insert AFTER INSERT ON calls
    REFERENCING NEW TABLE AS inserted_calls
    FOR EACH STATEMENT EXECUTE FUNCTION call_counts_inserted();
CREATE TRIGGER calls_counts_update AFTER UPDATE OF app_id, status, direction ON calls
    FOR EACH ROW
    WHEN (OLD.app_id IS DISTINCT FROM NEW.app_id OR OLD.status IS DISTINCT FROM NEW.status
          OR OLD.direction IS DISTINCT FROM NEW.direction)
    EXECUTE FUNCTION call_counts_updated();
CREATE TRIGGER calls_counts_delete AFTER DELETE ON calls
    REFERENCING OLD TABLE AS deleted_calls
    FOR EACH STATEMENT EXECUTE FUNCTION call_counts_deleted();

-- messages ----------------------------------------------------------------------------------

CREATE FUNCTION message_counts_inserted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO message_counts AS c (app_id, direction, shard, n)
    SELECT i.app_id, COALESCE(i.direction, ''), pg_backend_pid() % 8, count(*)
      FROM inserted_messages i GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (app_id, direction, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION message_counts_updated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO message_counts AS c (app_id, direction, shard, n)
    SELECT k.app_id, k.direction, pg_backend_pid() % 8, k.d
      FROM (VALUES (OLD.app_id, COALESCE(OLD.direction, ''), -1::bigint),
                   (NEW.app_id, COALESCE(NEW.direction, ''), 1::bigint))
           AS k (app_id, direction, d)
     ORDER BY 1, 2
    ON CONFLICT (app_id, direction, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION message_counts_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.app_id, COALESCE(d.direction, '') AS direction, count(*) AS n
               FROM deleted_messages d GROUP BY 1, 2 ORDER BY 1, 2
    LOOP
        UPDATE message_counts SET n = n - r.n
         WHERE app_id = r.app_id AND direction = r.direction
           AND shard = (SELECT min(shard) FROM message_counts
                         WHERE app_id = r.app_id AND direction = r.direction);
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER messages_counts_insert AFTER INSERT ON messages
    REFERENCING NEW TABLE AS inserted_messages
    FOR EACH STATEMENT EXECUTE FUNCTION message_counts_inserted();
CREATE TRIGGER messages_counts_update AFTER UPDATE OF app_id, direction ON messages
    FOR EACH ROW
    WHEN (OLD.app_id IS DISTINCT FROM NEW.app_id OR OLD.direction IS DISTINCT FROM NEW.direction)
    EXECUTE FUNCTION message_counts_updated();
CREATE TRIGGER messages_counts_delete AFTER DELETE ON messages
    REFERENCING OLD TABLE AS deleted_messages
    FOR EACH STATEMENT EXECUTE FUNCTION message_counts_deleted();

-- voicemails --------------------------------------------------------------------------------

CREATE FUNCTION voicemail_counts_inserted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO voicemail_counts AS c (app_id, shard, n)
    SELECT i.app_id, pg_backend_pid() % 8, count(*)
      FROM inserted_voicemails i GROUP BY 1 ORDER BY 1
    ON CONFLICT (app_id, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION voicemail_counts_updated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO voicemail_counts AS c (app_id, shard, n)
    SELECT k.app_id, pg_backend_pid() % 8, k.d
      FROM (VALUES (OLD.app_id, -1::bigint), (NEW.app_id, 1::bigint)) AS k (app_id, d)
     ORDER BY 1
    ON CONFLICT (app_id, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
    RETURN NULL;
END $$;

CREATE FUNCTION voicemail_counts_deleted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT d.app_id, count(*) AS n FROM deleted_voicemails d GROUP BY 1 ORDER BY 1
    LOOP
        UPDATE voicemail_counts SET n = n - r.n
         WHERE app_id = r.app_id
           AND shard = (SELECT min(shard) FROM voicemail_counts WHERE app_id = r.app_id);
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER voicemails_counts_insert AFTER INSERT ON voicemails
    REFERENCING NEW TABLE AS inserted_voicemails
    FOR EACH STATEMENT EXECUTE FUNCTION voicemail_counts_inserted();
CREATE TRIGGER voicemails_counts_update AFTER UPDATE OF app_id ON voicemails
    FOR EACH ROW WHEN (OLD.app_id IS DISTINCT FROM NEW.app_id)
    EXECUTE FUNCTION voicemail_counts_updated();
CREATE TRIGGER voicemails_counts_delete AFTER DELETE ON voicemails
    REFERENCING OLD TABLE AS deleted_voicemails
    FOR EACH STATEMENT EXECUTE FUNCTION voicemail_counts_deleted();

-- TRUNCATE (no row triggers fire): the table is empty afterwards, so are its counters.
CREATE FUNCTION list_counts_truncated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    EXECUTE format('DELETE FROM %I', TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE TRIGGER calls_counts_truncate AFTER TRUNCATE ON calls
    FOR EACH STATEMENT EXECUTE FUNCTION list_counts_truncated('call_counts');
CREATE TRIGGER messages_counts_truncate AFTER TRUNCATE ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION list_counts_truncated('message_counts');
CREATE TRIGGER voicemails_counts_truncate AFTER TRUNCATE ON voicemails
    FOR EACH STATEMENT EXECUTE FUNCTION list_counts_truncated('voicemail_counts');

-- backfill ----------------------------------------------------------------------------------

INSERT INTO call_counts (app_id, status, direction, n)
SELECT app_id, status, COALESCE(direction, ''), count(*) FROM calls GROUP BY 1, 2, 3;

INSERT INTO message_counts (app_id, direction, n)
SELECT app_id, COALESCE(direction, ''), count(*) FROM messages GROUP BY 1, 2;

INSERT INTO voicemail_counts (app_id, n)
SELECT app_id, count(*) FROM voicemails GROUP BY 1;

-- Exact-number filters: one index serves both the equality and the list order (no sort of
-- the matches, and the count of a filter reads only its own index range). Messages had no
-- index for the direction and number filters.
DROP INDEX idx_calls_from_number;
DROP INDEX idx_calls_to_number;
CREATE INDEX idx_calls_app_from_started
    ON calls (app_id, from_number, started_at DESC NULLS LAST, created_at DESC, id);
CREATE INDEX idx_calls_app_to_started
    ON calls (app_id, to_number, started_at DESC NULLS LAST, created_at DESC, id);
CREATE INDEX idx_messages_app_direction_sent
    ON messages (app_id, direction, sent_at DESC NULLS LAST, created_at DESC, id);
CREATE INDEX idx_messages_app_from_sent
    ON messages (app_id, from_number, sent_at DESC NULLS LAST, created_at DESC, id);
CREATE INDEX idx_messages_app_to_sent
    ON messages (app_id, to_number, sent_at DESC NULLS LAST, created_at DESC, id);
