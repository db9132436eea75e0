//! The shared store conformance suite against `MemoryStore`.

use std::sync::Arc;

use cti_core::store::{MemoryStore, Store};

async fn make_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new())
}

cti_core::store_conformance_tests!(make_store);
