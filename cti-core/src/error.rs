//! Public error types at the library boundary.
//!
//! Each module has its own detailed error ([`crate::verify::VerifyError`],
//! [`crate::store::StoreError`], …); the facade converts them into these small enums whose
//! variants are the cases a caller (HTTP layer, FFI) handles differently.
