//! cti-ffi adapter (in progress).
