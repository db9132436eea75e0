-- Per-app totals of the list endpoints, kept exact by triggers, so `pagination.total` of
-- `GET /api/calls` (and messages, voicemails) never counts the table.
--
-- * call_counts:      calls per (app, status, direction) — totals of the unfiltered list,
--                     the status/direction filters and /api/calls/active;
-- * message_counts:   messages per (app, direction);
-- * voicemail_counts: voicemails per app.
--
-- A NULL direction is stored as '' (part of the primary key). Rows are never deleted when
-- they reach 0 (a handful per app), except with their app. The triggers run in the writing
-- statement's transaction, so every writer (inbox_complete, imports, manual SQL) keeps the
-- totals exact; requests with from/to/user filters count over their (selective) index.

CREATE TABLE call_counts (
    app_id    TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    status    TEXT    NOT NULL,
    direction TEXT    NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (app_id, status, direction)
) WITHOUT ROWID;

CREATE TABLE message_counts (
    app_id    TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    direction TEXT    NOT NULL,
    n         INTEGER NOT NULL,
    PRIMARY KEY (app_id, direction)
) WITHOUT ROWID;

CREATE TABLE voicemail_counts (
    app_id TEXT    NOT NULL PRIMARY KEY REFERENCES apps (id) ON DELETE CASCADE,
    n      INTEGER NOT NULL
) WITHOUT ROWID;

-- calls -------------------------------------------------------------------------------------

CREATE TRIGGER calls_count_insert AFTER INSERT ON calls
BEGIN
    INSERT INTO call_counts (app_id, status, direction, n)
    VALUES (new.app_id, new.status, COALESCE(new.direction, ''), 1)
    ON CONFLICT (app_id, status, direction) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER calls_count_update AFTER UPDATE OF app_id, status, direction ON calls
WHEN old.app_id IS NOT new.app_id OR old.status IS NOT new.status
  OR old.direction IS NOT new.direction
BEGIN
    UPDATE call_counts SET n = n - 1
     WHERE app_id = old.app_id AND status = old.status
       AND direction = COALESCE(old.direction, '');
    INSERT INTO call_counts (app_id, status, direction, n)
    VALUES (new.app_id, new.status, COALESCE(new.direction, ''), 1)
    ON CONFLICT (app_id, status, direction) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER calls_count_delete AFTER DELETE ON calls
BEGIN
    UPDATE call_counts SET n = n - 1
     WHERE app_id = old.app_id AND status = old.status
       AND direction = COALESCE(old.direction, '');
END;

-- messages ----------------------------------------------------------------------------------

CREATE TRIGGER messages_count_insert AFTER INSERT ON messages
BEGIN
    INSERT INTO message_counts (app_id, direction, n)
    VALUES (new.app_id, COALESCE(new.direction, ''), 1)
    ON CONFLICT (app_id, direction) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER messages_count_update AFTER UPDATE OF app_id, direction ON messages
WHEN old.app_id IS NOT new.app_id OR old.direction IS NOT new.direction
BEGIN
    UPDATE message_counts SET n = n - 1
     WHERE app_id = old.app_id AND direction = COALESCE(old.direction, '');
    INSERT INTO message_counts (app_id, direction, n)
    VALUES (new.app_id, COALESCE(new.direction, ''), 1)
    ON CONFLICT (app_id, direction) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER messages_count_delete AFTER DELETE ON messages
BEGIN
    UPDATE message_counts SET n = n - 1
     WHERE app_id = old.app_id AND direction = COALESCE(old.direction, '');
END;

-- voicemails --------------------------------------------------------------------------------

CREATE TRIGGER voicemails_count_insert AFTER INSERT ON voicemails
BEGIN
    INSERT INTO voicemail_counts (app_id, n) VALUES (new.app_id, 1)
    ON CONFLICT (app_id) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER voicemails_count_update AFTER UPDATE OF app_id ON voicemails
WHEN old.app_id IS NOT new.app_id
BEGIN
    UPDATE voicemail_counts SET n = n - 1 WHERE app_id = old.app_id;
    INSERT INTO voicemail_counts (app_id, n) VALUES (new.app_id, 1)
    ON CONFLICT (app_id) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER voicemails_count_delete AFTER DELETE ON voicemails
BEGIN
    UPDATE voicemail_counts SET n = n - 1 WHERE app_id = old.app_id;
END;

-- backfill (the migration runs under the database write lock: no writer can slip between) --

INSERT INTO call_counts (app_id, status, direction, n)
SELECT app_id, status, COALESCE(direction, ''), COUNT(*) FROM calls GROUP BY 1, 2, 3;

INSERT INTO message_counts (app_id, direction, n)
SELECT app_id, COALESCE(direction, ''), COUNT(*) FROM messages GROUP BY 1, 2;

INSERT INTO voicemail_counts (app_id, n)
SELECT app_id, COUNT(*) FROM voicemails GROUP BY 1;

-- Exact-number filters: one index serves both the equality and the list order (no sort of
-- the matches, and the count of a filter reads only its own index range).
DROP INDEX calls_app_from;
DROP INDEX calls_app_to;
CREATE INDEX calls_app_from_started ON calls (app_id, from_number, started_at DESC, created_at DESC, id);
CREATE INDEX calls_app_to_started ON calls (app_id, to_number, started_at DESC, created_at DESC, id);
DROP INDEX messages_app_from;
DROP INDEX messages_app_to;
CREATE INDEX messages_app_from_sent ON messages (app_id, from_number, sent_at DESC, created_at DESC, id);
CREATE INDEX messages_app_to_sent ON messages (app_id, to_number, sent_at DESC, created_at DESC, id);
