//! PostgreSQL and SQLite implementations of the cti-core store traits, their embedded
//! migrations, and [`PgBus`], a PostgreSQL `LISTEN/NOTIFY` event bus for running several
//! instances on one database.

mod batch;
mod common;
pub mod import;
pub mod pg;
pub mod sqlite;

pub use pg::{PgBus, PgStore};
pub use sqlite::SqliteStore;
