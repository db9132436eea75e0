//! The shared store conformance suite on [`PgStore`] with `optimistic_inline = false`: inline
//! batches always take their apps' row locks first (the path an optimistic batch falls back
//! to when it finds its apps changed), one scratch schema per test.

mod pg_support;

use std::sync::Arc;

use cti_core::store::{MemoryStore, Store};

/// A fresh, migrated store on its own schema that never writes optimistically.
///
/// Without a reachable database (and `CI` unset) the case runs against [`MemoryStore`] after a
/// printed warning — the macro has no way to skip a case.
async fn make_store() -> Arc<dyn Store> {
    match pg_support::TestDb::new("confl").await {
        Some(db) => {
            let mut opts = db.options();
            opts.optimistic_inline = false;
            Arc::new(db.store_with(opts).await)
        }
        None => {
            eprintln!("warning: PostgreSQL conformance case NOT run against PostgreSQL");
            Arc::new(MemoryStore::new())
        }
    }
}

cti_core::store_conformance_tests!(make_store);
