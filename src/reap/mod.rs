//! One reap pass: observe, decide, act (apply) and report. Wiring only.

pub mod apply;
mod cache;
mod lean;
pub mod pass;
mod read;
mod report;
