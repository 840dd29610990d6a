//! The pure rules of DESIGN.md §2 (wiring): what to do with each agent and orphan session,
//! given its facts and `now` (`rules`, tests in `rules_tests.rs`).

mod rules;

pub use rules::*;
