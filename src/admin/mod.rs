//! What operators use beside the doors: the `/metrics` endpoint, `pgway stats` and
//! `pgway probe`.

pub mod metrics;
pub mod probe;
pub mod stats;
