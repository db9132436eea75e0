-- cti SQLite schema, version 1.
--
-- Conventions:
--   * ids (UUID) are TEXT in canonical lowercase hyphenated form, so text order = byte order;
--   * timestamps are INTEGER microseconds since the Unix epoch, UTC (the precision of
--     PostgreSQL TIMESTAMPTZ, so both backends round-trip the same values);
--   * Dialpad ids are INTEGER (64-bit, always positive);
--   * booleans are INTEGER 0/1; JSON is TEXT.
--   SQLite sorts NULL first ascending, i.e. last descending: `x DESC` is `x DESC NULLS LAST`.

CREATE TABLE apps (
    id                  TEXT    PRIMARY KEY NOT NULL,
    name                TEXT    NOT NULL,
    -- legacy bcrypt hash imported from the original server (NULL for new-style keys)
    api_key             TEXT    UNIQUE,
    -- hex HMAC-SHA256(pepper, key) of the current key
    api_key_lookup      TEXT    UNIQUE,
    api_key_hint        TEXT,
    api_key_issued_at   INTEGER,
    -- previous key, valid until prev_key_expires_at (rotation grace period)
    prev_key_lookup     TEXT,
    prev_key_expires_at INTEGER,
    is_active           INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    -- last realtime sequence number assigned to the app (outbox `cti_events.seq`)
    last_event_seq      INTEGER NOT NULL DEFAULT 0,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX apps_created ON apps (created_at DESC, id);
CREATE INDEX apps_prev_key_lookup ON apps (prev_key_lookup) WHERE prev_key_lookup IS NOT NULL;
CREATE INDEX apps_legacy ON apps (is_active) WHERE api_key IS NOT NULL AND api_key_lookup IS NULL;
CREATE INDEX apps_event_heads ON apps (last_event_seq) WHERE last_event_seq > 0;

CREATE TABLE api_key_audit_log (
    -- insertion order = the order the single writer applied the changes: lists are newest
    -- first by seq (the old_key_hint chain follows it even when callers' clocks disagree)
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    app_id       TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    action       TEXT    NOT NULL CHECK (action IN ('created', 'rotated', 'revoked')),
    old_key_hint TEXT,
    new_key_hint TEXT,
    actor        TEXT,
    request_ip   TEXT,
    user_agent   TEXT,
    created_at   INTEGER NOT NULL
);
CREATE INDEX api_key_audit_app ON api_key_audit_log (app_id, seq DESC);

CREATE TABLE dialpad_user_mappings (
    id              TEXT    PRIMARY KEY NOT NULL,
    app_id          TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    dialpad_user_id INTEGER NOT NULL,
    crm_user_id     TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (app_id, dialpad_user_id)
);
CREATE INDEX user_mappings_app_created ON dialpad_user_mappings (app_id, created_at DESC, id);
CREATE INDEX user_mappings_app_crm ON dialpad_user_mappings (app_id, crm_user_id, created_at, id);

CREATE TABLE calls (
    id                  TEXT    PRIMARY KEY NOT NULL,
    app_id              TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    dialpad_call_id     INTEGER NOT NULL,
    direction           TEXT    CHECK (direction IN ('inbound', 'outbound')),
    from_number         TEXT,
    to_number           TEXT,
    status              TEXT    NOT NULL
        CHECK (status IN ('ringing', 'active', 'ended', 'missed', 'rejected', 'voicemail')),
    dialpad_user_id     INTEGER,
    target_type         TEXT,
    target_id           INTEGER,
    started_at          INTEGER,
    answered_at         INTEGER,
    ended_at            INTEGER,
    duration_seconds    INTEGER,
    recording_url       TEXT,
    is_voicemail        INTEGER NOT NULL DEFAULT 0 CHECK (is_voicemail IN (0, 1)),
    voicemail_audio_url TEXT,
    transcript          TEXT,
    held                INTEGER NOT NULL DEFAULT 0 CHECK (held IN (0, 1)),
    merge_log           TEXT    NOT NULL DEFAULT '{}',
    last_event_ms       INTEGER NOT NULL DEFAULT 0,
    raw_payload         TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    UNIQUE (app_id, dialpad_call_id)
);
-- list order: started_at DESC NULLS LAST, created_at DESC, id
CREATE INDEX calls_app_started ON calls (app_id, started_at DESC, created_at DESC, id);
CREATE INDEX calls_app_status_started ON calls (app_id, status, started_at DESC, created_at DESC, id);
CREATE INDEX calls_app_direction_started ON calls (app_id, direction, started_at DESC, created_at DESC, id);
CREATE INDEX calls_app_active ON calls (app_id, started_at DESC, created_at DESC, id)
    WHERE status IN ('ringing', 'active');
CREATE INDEX calls_app_from ON calls (app_id, from_number);
CREATE INDEX calls_app_to ON calls (app_id, to_number);

CREATE TABLE voicemails (
    id               TEXT    PRIMARY KEY NOT NULL,
    app_id           TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    dialpad_call_id  INTEGER,
    dialpad_user_id  INTEGER,
    from_number      TEXT,
    to_number        TEXT,
    recording_url    TEXT,
    transcript       TEXT,
    duration_seconds INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX voicemails_app_call ON voicemails (app_id, dialpad_call_id)
    WHERE dialpad_call_id IS NOT NULL;
CREATE INDEX voicemails_app_created ON voicemails (app_id, created_at DESC, id);
CREATE INDEX voicemails_app_user ON voicemails (app_id, dialpad_user_id, created_at DESC, id);

CREATE TABLE messages (
    id                 TEXT    PRIMARY KEY NOT NULL,
    app_id             TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    dialpad_message_id INTEGER NOT NULL,
    direction          TEXT    CHECK (direction IN ('inbound', 'outbound')),
    from_number        TEXT,
    to_number          TEXT,
    to_numbers         TEXT    NOT NULL DEFAULT '[]',
    text               TEXT,
    dialpad_user_id    INTEGER,
    sent_at            INTEGER,
    message_status     TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    UNIQUE (app_id, dialpad_message_id)
);
-- list order: sent_at DESC NULLS LAST, created_at DESC, id
CREATE INDEX messages_app_sent ON messages (app_id, sent_at DESC, created_at DESC, id);
CREATE INDEX messages_app_direction_sent ON messages (app_id, direction, sent_at DESC, created_at DESC, id);
CREATE INDEX messages_app_user_sent ON messages (app_id, dialpad_user_id, sent_at DESC, created_at DESC, id);
CREATE INDEX messages_app_from ON messages (app_id, from_number);
CREATE INDEX messages_app_to ON messages (app_id, to_number);

-- The durable inbox. No foreign key to apps: rows are written only for resolved tenants, and
-- the inbox must never refuse an event because of an unrelated table.
CREATE TABLE webhook_events (
    -- insertion order (rowid alias): "oldest first" among equal received_at
    seq             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    app_id          TEXT    NOT NULL,
    dedupe_key      TEXT    NOT NULL,
    event_type      TEXT,
    call_id         INTEGER,
    state           TEXT,
    event_timestamp INTEGER,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'done', 'ignored', 'failed', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL,
    locked_until    INTEGER,
    received_at     INTEGER NOT NULL,
    processed_at    INTEGER,
    UNIQUE (app_id, dedupe_key)
);
CREATE INDEX webhook_events_status_next ON webhook_events (status, next_attempt_at);
-- per-call ordering: the unfinished events of a call in arrival order
CREATE INDEX webhook_events_call_unfinished ON webhook_events (app_id, call_id, received_at, seq)
    WHERE status IN ('pending', 'failed', 'processing');
-- claim scan: unfinished events in arrival order
CREATE INDEX webhook_events_unfinished ON webhook_events (received_at, seq)
    WHERE status IN ('pending', 'failed', 'processing');
-- retention
CREATE INDEX webhook_events_finished ON webhook_events (received_at)
    WHERE status IN ('done', 'ignored');

-- The realtime outbox: per-app gap-free sequence numbers.
CREATE TABLE cti_events (
    app_id          TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    event           TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    target_crm_user TEXT,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (app_id, seq)
);
CREATE INDEX cti_events_created ON cti_events (created_at);

CREATE TABLE dialpad_connections (
    id                TEXT    PRIMARY KEY NOT NULL,
    app_id            TEXT    NOT NULL UNIQUE REFERENCES apps (id) ON DELETE CASCADE,
    dialpad_org_id    INTEGER,
    access_token_enc  TEXT    NOT NULL,
    refresh_token_enc TEXT    NOT NULL,
    token_expires_at  INTEGER NOT NULL,
    environment       TEXT    NOT NULL CHECK (environment IN ('sandbox', 'production')),
    status            TEXT    NOT NULL DEFAULT 'active',
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
-- one tenant per Dialpad company
CREATE UNIQUE INDEX dialpad_connections_org ON dialpad_connections (dialpad_org_id)
    WHERE dialpad_org_id IS NOT NULL;

CREATE TABLE dialpad_webhooks (
    id             TEXT    PRIMARY KEY NOT NULL,
    app_id         TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    webhook_id     INTEGER NOT NULL,
    hook_url       TEXT    NOT NULL,
    secret_enc     TEXT,
    algo           TEXT,
    signature_type TEXT,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    UNIQUE (app_id, webhook_id)
);
CREATE INDEX dialpad_webhooks_app_created ON dialpad_webhooks (app_id, created_at DESC, id);
CREATE INDEX dialpad_webhooks_webhook ON dialpad_webhooks (webhook_id);

CREATE TABLE dialpad_subscriptions (
    id                      TEXT    PRIMARY KEY NOT NULL,
    app_id                  TEXT    NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    webhook_id              INTEGER NOT NULL,
    kind                    TEXT    NOT NULL CHECK (kind IN ('call', 'sms')),
    dialpad_subscription_id INTEGER NOT NULL,
    config                  TEXT    NOT NULL DEFAULT '{}',
    created_at              INTEGER NOT NULL
);
CREATE INDEX dialpad_subscriptions_app_created ON dialpad_subscriptions (app_id, created_at DESC, id);
