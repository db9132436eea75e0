//! SQLite store (in progress).

pub use crate::common::MigrationError;

/// SQLite store.
pub struct SqliteStore;
