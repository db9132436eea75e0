//! SQLite store (in progress).

/// SQLite store.
pub struct SqliteStore;
