//! Deterministic simulation harness for `receipt-store`.

pub mod fs;
pub mod runtime;
