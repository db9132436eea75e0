-- Webhook payloads are stored as `json` (their verified text, kept verbatim) instead of `jsonb`.
--
-- Nothing queries inside these columns: the server writes a payload once and hands it back as
-- it came. `jsonb` parsed every payload into its binary form on insert — ~13 µs per 1.3 kB
-- payload, twice per event (inbox row and call row), inside the transaction that holds the
-- app's applier lock — where `json` only checks the syntax (~4 µs). Queries that want to
-- look inside still can: `payload::jsonb ->> 'state'`.
--
-- Rewrites the three tables once (an upgrade of a large inbox takes a while; see
-- docs/operations.md "Upgrading").
ALTER TABLE webhook_events ALTER COLUMN payload TYPE json USING payload::json;
ALTER TABLE calls ALTER COLUMN raw_payload TYPE json USING raw_payload::json;
ALTER TABLE cti_events ALTER COLUMN payload TYPE json USING payload::json;
