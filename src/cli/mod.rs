//! The command line: argument parsing and dispatch, rendering of reports, the demo. Wiring only.

pub(crate) mod demo;
pub mod dispatch;
pub(crate) mod render;
