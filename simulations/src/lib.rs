#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

pub mod engine;
mod error;
mod heap;
pub mod params;
pub mod plot;
pub mod protocol;
pub mod report;
pub mod study;

pub use engine::{Samples, simulate, simulate_with_samples};
pub use error::{Error, Result};
pub use params::{LinkDelay, Params};
pub use report::Report;
pub use study::{Study, SweepAxis, SweepPoint};
