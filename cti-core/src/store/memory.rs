//! In-memory store. STUB.

/// In-memory store.
#[derive(Default)]
pub struct MemoryStore;
