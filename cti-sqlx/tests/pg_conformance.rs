//! The shared store conformance suite on [`PgStore`], one scratch schema per test.

mod pg_support;

use std::sync::Arc;

use cti_core::store::{MemoryStore, Store};

/// A fresh, migrated store on its own schema (dropped when the store is dropped).
///
/// Without a reachable database (and `CI` unset) the case runs against [`MemoryStore`] after a
/// printed warning — the macro has no way to skip a case.
async fn make_store() -> Arc<dyn Store> {
    match pg_support::TestDb::new("conf").await {
        Some(db) => Arc::new(db.store().await),
        None => {
            eprintln!("warning: PostgreSQL conformance case NOT run against PostgreSQL");
            Arc::new(MemoryStore::new())
        }
    }
}

cti_core::store_conformance_tests!(make_store);
