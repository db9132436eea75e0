-- The partial indexes of unfinished inbox events, with a predicate SQLite evaluates in place.
--
-- SQLite codes `x IN (a, b, c)` with three or more constant values as a temporary b-tree of
-- the values, built afresh every time the statement runs. The predicate of a partial index is
-- evaluated on every insert into the table, so `status IN ('pending', 'failed', 'processing')`
-- built two temporary b-trees (a pager, a page cache, three inserts, a close) per stored event:
-- measured, about a tenth of the single writer's CPU per event together with the status CHECK
-- constraints (docs/performance.md, 2026-11-30 i). The same set written as equalities joined by
-- OR is three comparisons.
--
-- A query can use a partial index only when one of its WHERE terms is the index's predicate,
-- so the store's queries spell the predicate exactly like this (`cti_sqlx` keeps the text in
-- one place, `sqlite::inbox::UNFINISHED`). Recreating the two indexes reads `webhook_events`
-- once; they hold only the unfinished events, so they are small.
DROP INDEX webhook_events_call_unfinished;
CREATE INDEX webhook_events_call_unfinished ON webhook_events (app_id, call_id, received_at, seq)
    WHERE (status = 'pending' OR status = 'failed' OR status = 'processing');

DROP INDEX webhook_events_unfinished;
CREATE INDEX webhook_events_unfinished ON webhook_events (received_at, seq)
    WHERE (status = 'pending' OR status = 'failed' OR status = 'processing');
