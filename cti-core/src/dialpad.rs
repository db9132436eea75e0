//! Typed Dialpad payloads. STUB: being implemented.
