//! The command line: argument parsing and dispatch, rendering of reports, the demo. Wiring only.

pub mod demo;
pub mod dispatch;
pub mod render;
