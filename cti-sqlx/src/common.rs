//! Helpers shared by both backends.
