//! End-to-end and whole-workspace checks live in this crate's tests; see `architecture.rs`.
