-- The inbox's per-call index holds only unfinished events (as SQLite's since its 0004).
--
-- Every per-call read of the inbox — the claim's "a held event of this call" and "earliest due
-- event of this call", and the inline batch's "this call still has an unfinished event" —
-- asks only for events in 'pending', 'failed' or 'processing'. `idx_webhook_events_call`
-- indexed every event with a call id, finished or not: one more index entry per ingested event
-- on a page chosen by its (scattered) Dialpad call id, and the blocking check read the heap row
-- of each of a call's finished events to see their status. With inline processing most events
-- are stored finished, so the partial index stays small and most inserts skip it.
CREATE INDEX idx_webhook_events_call_unfinished
    ON webhook_events (app_id, call_id, event_timestamp, received_at, arrival)
    WHERE status IN ('pending', 'failed', 'processing');
DROP INDEX IF EXISTS idx_webhook_events_call;
