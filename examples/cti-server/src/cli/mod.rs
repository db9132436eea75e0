//! Subcommands other than `serve`.

pub mod admin;
pub mod simulate;
