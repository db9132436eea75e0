//! PostgreSQL store (in progress).

/// PostgreSQL store.
pub struct PgStore;
/// LISTEN/NOTIFY bus.
pub struct PgBus;
