//! When the next pass runs and over which task folders: per-task due times plus full reconciles.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Schedule {
    /// Per task folder, the earliest time it wants a look.
    tasks: HashMap<PathBuf, Instant>,
    full: Option<Instant>,
}

impl Schedule {
    pub fn full_now(&mut self) {
        self.full_at(Instant::now());
    }

    pub fn full_at(&mut self, at: Instant) {
        self.full = Some(self.full.map_or(at, |f| f.min(at)));
    }

    /// Asks for a look at `task` at `at`, or earlier if already asked.
    pub fn task_at(&mut self, task: PathBuf, at: Instant) {
        let entry = self.tasks.entry(task).or_insert(at);
        *entry = (*entry).min(at);
    }

    pub fn has_work(&self) -> bool {
        self.full.is_some() || !self.tasks.is_empty()
    }

    /// The earliest due time (far in the future when nothing is due).
    pub fn next_due(&self) -> Instant {
        self.tasks
            .values()
            .copied()
            .chain(self.full)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Takes what is due at `now`: `None` for a full pass (which covers every task), else the
    /// task folders whose time has come. Tasks not yet due stay scheduled.
    pub fn take_due(&mut self, now: Instant) -> Option<HashSet<PathBuf>> {
        if self.full.is_some_and(|f| f <= now) {
            self.full = None;
            self.tasks.retain(|_, at| *at > now);
            return None;
        }
        let due: HashSet<PathBuf> = self
            .tasks
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(t, _)| t.clone())
            .collect();
        self.tasks.retain(|_, at| *at > now);
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_come_due_in_time_and_full_passes_cover_all() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert!(!s.has_work());
        s.task_at("a".into(), t0 + Duration::from_secs(2));
        s.task_at("a".into(), t0 + Duration::from_secs(1));
        s.task_at("b".into(), t0 + Duration::from_secs(5));
        assert_eq!(s.next_due(), t0 + Duration::from_secs(1));
        let due = s.take_due(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(due, HashSet::from([PathBuf::from("a")]));
        assert_eq!(s.next_due(), t0 + Duration::from_secs(5));
        s.full_at(t0 + Duration::from_secs(3));
        assert_eq!(s.next_due(), t0 + Duration::from_secs(3));
        assert_eq!(s.take_due(t0 + Duration::from_secs(3)), None);
        // b was not yet due: it stays.
        assert!(s.has_work());
        assert_eq!(s.next_due(), t0 + Duration::from_secs(5));
    }
}
