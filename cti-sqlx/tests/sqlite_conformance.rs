//! The shared store conformance suite on SQLite: one fresh temporary database file per test.

use std::sync::Arc;

use cti_core::store::Store;
use cti_sqlx::SqliteStore;

async fn make_store() -> Arc<dyn Store> {
    match SqliteStore::open_temporary().await {
        Ok(s) => Arc::new(s),
        Err(e) => panic!("cannot open a temporary sqlite store: {e}"),
    }
}

cti_core::store_conformance_tests!(make_store);

mod in_memory {
    //! The same suite on `sqlite::memory:` (one shared connection).
    use super::*;

    async fn make_store() -> Arc<dyn Store> {
        match SqliteStore::open("sqlite::memory:").await {
            Ok(s) => Arc::new(s),
            Err(e) => panic!("cannot open an in-memory sqlite store: {e}"),
        }
    }

    cti_core::store_conformance_tests!(make_store);
}
