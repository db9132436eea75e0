//! SQLite ingest benchmark (being written).

fn main() {}
