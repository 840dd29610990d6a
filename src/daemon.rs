//! The daemon (wiring): the `select!` loop that owns the state (`event_loop`), what it does
//! with an event or a signal, decided without I/O (`handler`), the pass schedule
//! (`schedule`), the watchdog's view of a pass in flight (`progress`), the health file
//! (`health`), the idle steady state (`steady`).

mod event_loop;
mod handler;
mod health;
mod progress;
mod report_log;
mod schedule;
mod steady;

pub use event_loop::run;
