//! The daemon (wiring): the `select!` loop that owns the state (`event_loop`), what it does
//! with an event or a signal, decided without I/O (`handler`), the pass schedule
//! (`schedule`), the watchdog's view of a pass in flight (`progress`), the health file
//! (`health`).

mod event_loop;
mod handler;
mod health;
mod progress;
mod schedule;

pub use event_loop::run;
