//! Reference server.
fn main() {}
