-- webhook_events_app_call (0002) indexed every inbox event by (app_id, call_id). No query of
-- the store uses it (per-call ordering reads the partial index webhook_events_call_unfinished,
-- which only holds unfinished events), and Dialpad call ids are scattered, so each insert
-- wrote one more random index page into every commit and every checkpoint — about a fifth of
-- the pages an ingested event dirties. Dropped; PostgreSQL never had it.
DROP INDEX IF EXISTS webhook_events_app_call;
