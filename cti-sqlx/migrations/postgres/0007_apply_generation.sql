-- Optimistic inline writes: an app's apply generation, and the error that rolls back a stale
-- batch.
--
-- Every transaction that applies events of an app (an inline batch, a processor's completion)
-- now locks the app's row and adds one to `apply_gen`. An inline batch reads what it needs with
-- the generations of its apps, applies its events in memory, and writes everything in one
-- statement that locks the apps' rows (in id order) and checks that their generations are
-- still the ones it read: two round trips, no explicit transaction. If another applier
-- committed in between, or a redelivered event turns out to be stored already, the statement
-- raises SQLSTATE 'CT001' through `cti_stale_batch()`, nothing of it stays, and the batch runs
-- again under the apps' row locks.
--
-- Not indexed, like `last_event_seq`: the update stays HOT.
--
-- Instances of an earlier release serialise their appliers with advisory locks and do not move
-- `apply_gen`: stop them before starting this release on the same schema (docs/operations.md
-- "Upgrading").
ALTER TABLE apps ADD COLUMN apply_gen BIGINT NOT NULL DEFAULT 0;

CREATE FUNCTION cti_stale_batch() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION 'batch read stale state: the apps changed or an event was already stored'
        USING ERRCODE = 'CT001';
END
$$;
