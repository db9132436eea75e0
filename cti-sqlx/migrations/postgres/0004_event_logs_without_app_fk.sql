-- The inbox (`webhook_events`) and the realtime outbox (`cti_events`) lose their foreign key to
-- `apps`, as on SQLite.
--
-- Both are append-mostly logs written only for an app the server has just resolved, in the
-- transaction that also reads and updates that app's row; the server never deletes an app
-- (apps are deactivated), and retention removes old rows of both tables. The key cost a
-- referential-integrity check — an SPI query and a KEY SHARE lock on the app's row — for
-- every inserted event and every realtime message (~9 µs each, measured), inside the app's
-- applier lock. Deleting an app by hand now leaves its inbox and outbox rows behind:
-- `DELETE FROM webhook_events WHERE app_id = …` and the same for `cti_events`.
ALTER TABLE webhook_events DROP CONSTRAINT IF EXISTS webhook_events_app_id_fkey;
ALTER TABLE cti_events DROP CONSTRAINT IF EXISTS cti_events_app_id_fkey;
