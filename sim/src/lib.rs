//! Deterministic simulation harness for `receipt-store`: sim filesystem, seeded executor,
//! plans, a reference model and the invariants, driven by the `receipt-sim` CLI.

#[cfg(feature = "canary")]
pub mod canaries;
pub mod check;
pub mod exec;
pub mod explore;
pub mod fs;
#[cfg(madsim)]
pub mod madsim_env;
pub mod model;
pub mod plan;
pub mod realproc;
pub mod report;
pub mod runtime;
pub mod shrink;
