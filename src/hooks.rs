//! Transition hooks (wiring): what a pass's transitions owe and how they are delivered
//! (`dispatch`), the durable list of runs owed (`pending`), one process (`exec`), the worker
//! threads (`runner`). `config::hooks` is the configuration and argv templates (pure).

mod dispatch;
pub mod exec;
pub mod pending;
pub mod runner;

pub use dispatch::*;
