-- Cheaper inbox, call and outbox rows: the same values for less CPU in the statement that
-- writes them (docs/performance.md "2026-11-30 k").
--
-- 1. `webhook_events.dedupe_at` (migration 0005) decided whether a key is a body hash with the
--    regular expression `^[0-9a-f]{64}$`. PostgreSQL's regex engine takes about 9.6 µs per
--    row for that bounded repetition on a 2-core machine: 11 % of the database's CPU under
--    flat-out ingest. `octet_length(k) = 64 AND k !~ '[^0-9a-f]'` selects exactly the same
--    keys (64 bytes, none of them outside `0-9a-f`: 64 ASCII hex digits) in about 0.6 µs.
--    PostgreSQL 15 cannot change a generated column's expression in place: the column is
--    dropped and added again, which rewrites `webhook_events` once (like 0005, about 20 s per
--    million 2 kB events) and rebuilds the dedupe constraint on the same columns. Every
--    existing row gets the value the old expression gave it.
--
-- 2. Payloads over about 2 kB are compressed inline. `lz4` compresses JSON several times
--    faster than the default `pglz` for a similar size. Only values written from now on are
--    compressed with it (old values stay readable as they are; nothing is rewritten for it).
--    A server built without lz4 support keeps `pglz`.
--
-- Readers and writers of the inbox wait for this migration (ACCESS EXCLUSIVE while the table
-- is rewritten).
ALTER TABLE webhook_events
    DROP CONSTRAINT webhook_events_app_id_dedupe_at_dedupe_key_key,
    DROP COLUMN dedupe_at,
    ADD COLUMN dedupe_at BIGINT NOT NULL GENERATED ALWAYS AS (
        CASE WHEN octet_length(dedupe_key) = 64 AND dedupe_key !~ '[^0-9a-f]'
             THEN COALESCE(event_timestamp, 0) ELSE 0 END
    ) STORED,
    ADD CONSTRAINT webhook_events_app_id_dedupe_at_dedupe_key_key
        UNIQUE (app_id, dedupe_at, dedupe_key);

DO $$
BEGIN
    ALTER TABLE webhook_events ALTER COLUMN payload SET COMPRESSION lz4;
    ALTER TABLE calls ALTER COLUMN raw_payload SET COMPRESSION lz4;
    ALTER TABLE cti_events ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not supported by this server: payloads stay compressed with pglz';
END
$$;
