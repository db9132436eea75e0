#![forbid(unsafe_code)]
#![doc = include_str!("../README.md")]

pub mod clock;
pub mod dialpad;
mod digest;
pub mod error;
pub mod fanout;
pub mod inbox;
pub mod json;
pub mod keys;
pub mod model;
pub mod normalize;
pub mod relay;
pub mod secrets;
pub mod store;
pub mod verify;

pub use inbox::{Cti, CtiBuilder, CtiConfig};
