-- Payloads are stored as `text` instead of `json`, and the calls' merge logs as `text` instead of
-- `jsonb` (docs/performance.md "2026-12-01 n").
--
-- Every value written to these columns is JSON the store already holds as verified text:
-- the signed webhook body (checked when its signature was), the sanitized call payload cut
-- from it, and outbox messages serialized by serde. `json` checked the syntax of each one
-- again on insert: about 2.6 µs per 1.5 kB payload, three times per event (inbox row, call
-- row, outbox row), inside the single statement every ingest batch is serialized on — the
-- largest single item (7–10 %) of that statement's CPU under flat-out ingest. `text` stores
-- the same bytes without the second check. Queries that look inside still can, exactly as
-- before: `payload::jsonb ->> 'state'`.
--
-- `calls.merge_log` (the per-field event times the merge keeps, 200–400 bytes of JSON) goes
-- from `jsonb` to `text` for the same reason: `jsonb` parsed it into its binary form on every
-- call write (another 3–4 % of that statement) and printed it back on every read, where only
-- the store reads or writes it, always through serde.
--
-- `calls` is rewritten with `fillfactor = 80`: a live call's later events (recording,
-- transcription, summary, hold) update its row without changing an indexed column, and with
-- room left on the row's page PostgreSQL makes such an update HOT — no new entry in any of the
-- table's eight indexes. Measured in psql on a copy of the table with its indexes and 1.5 kB
-- payloads: 10,000 such updates took 315 ms with half of them HOT, against 640 ms and none at
-- the default 100 (docs/performance.md "2026-12-01 n"); the table was 2 % larger.
--
-- Rewrites the three tables once, like 0003 (an upgrade of a large inbox takes a while, under
-- ACCESS EXCLUSIVE; see docs/operations.md "Upgrading"). The type change resets each column's
-- compression method, so `lz4` (0008) is set again where the server supports it.
ALTER TABLE webhook_events ALTER COLUMN payload TYPE text;
ALTER TABLE calls
    SET (fillfactor = 80),
    ALTER COLUMN raw_payload TYPE text,
    ALTER COLUMN merge_log DROP DEFAULT,
    ALTER COLUMN merge_log TYPE text,
    ALTER COLUMN merge_log SET DEFAULT '{}';
ALTER TABLE cti_events ALTER COLUMN payload TYPE text;

DO $$
BEGIN
    ALTER TABLE webhook_events ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE calls ALTER COLUMN raw_payload SET COMPRESSION lz4;
    ALTER TABLE cti_events ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not supported by this server: payloads stay compressed with pglz';
END
$$;
