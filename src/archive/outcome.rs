//! What archive operations report: an append's outcome, and what recovery did with a
//! journaled step (a leaf, so each kind of step's recovery can return it).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// `bytes` appended and the source unlinked; `rescued` more were written into the
    /// source between the check and the unlink and were appended after it.
    Appended { bytes: u64, rescued: u64 },
    /// The source changed during the append: the archive is as before, the source kept.
    /// Retry once it settles again.
    Changed,
}

/// What recovery did with one pending step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryAction {
    /// Finished now (e.g. the source, already archived, was unlinked).
    Completed,
    /// It had completed before the crash; only its `done` record was missing.
    AlreadyDone,
    /// Rolled back; the source is intact and is handled again once it settles.
    Undone,
    /// An append rolled back and redone at once, with this outcome.
    Redone(AppendOutcome),
    /// Informative record (registry write): nothing to do.
    Noted,
    /// The files are not in any state this step could have left; nothing was removed.
    LeftAlone { reason: String },
}
