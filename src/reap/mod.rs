//! One reap pass: observe, decide, act (apply) and report. Wiring only.

pub mod apply;
pub mod cache;
pub mod clock;
pub mod events;
#[cfg(test)]
mod fakes;
mod lean;
mod mirror;
pub mod outcome;
mod parallel;
pub mod pass;
#[cfg(test)]
mod pass_fixture_tests;
#[cfg(test)]
mod pass_guard_tests;
#[cfg(test)]
mod pass_sqlite_tests;
#[cfg(test)]
mod pass_tests;
mod read;
pub(crate) mod report;
