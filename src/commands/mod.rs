//! The command-line commands other than `serve`: each takes parsed arguments and returns
//! an exit code, printing to stdout/stderr. `main.rs` only dispatches here.

pub mod check;
pub mod dead_letters;
pub mod demo;
pub mod queue;
pub mod route_test;
