//! Outbox → hub relay. STUB.
