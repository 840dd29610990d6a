//! The daemon (wiring): the `select!` loop that owns the state (`event_loop`), the pass
//! schedule (`schedule`), the watchdog's view of a pass in flight (`progress`), the health
//! file (`health`).

mod event_loop;
mod health;
mod progress;
mod schedule;

pub use event_loop::run;
