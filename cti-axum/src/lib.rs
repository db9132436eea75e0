//! cti-axum adapter (in progress).
