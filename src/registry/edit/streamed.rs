//! The task and global registry edits as streamed rewrites of the registry's text: ids and
//! statuses are read from each entry's text, and only the entries a change applies to are
//! parsed and edited, one at a time (no `Value` of the whole registry). The text written is
//! the one the whole-`Value` edits and `to_python_json` would give.

use super::{
    AgentChange, Applied, GlobalChange, RecordMaker, apply_global, apply_to_entry, count_active,
    follows_transition, record_of,
};
use crate::model::{StatusClass, classify_status};
use crate::registry::cas::Rewrite;
use crate::registry::json_doc::{Doc, Field, fields, string_fields};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::borrow::Cow;
use std::collections::HashMap;

/// Applies the change at an index of the edit's changes to an entry.
type ApplyChange<'c> = Box<dyn Fn(&mut Map<String, Value>, usize) + 'c>;

/// What both streamed edits keep between `prepare` and `render`: the changes, the entries
/// they apply to, and the count member to set.
struct Targets<'c, C> {
    changes: &'c [C],
    /// `(entry index, change index)`: the changes applied to each entry, by entry and
    /// then in change order once [`Targets::sort`] ran. A map of vectors was 4 MB for
    /// 40,000 changes, held through the rewrite; these pairs are 0.6 MB.
    targets: Vec<(usize, usize)>,
    /// The count member (`active_count` / `active_agents`) and its value, when the registry
    /// has it.
    active: Option<(&'static str, i64)>,
    apply: ApplyChange<'c>,
}

impl<'c, C> Targets<'c, C> {
    fn new(changes: &'c [C], apply: ApplyChange<'c>) -> Self {
        Targets {
            changes,
            targets: Vec::new(),
            active: None,
            apply,
        }
    }

    fn clear(&mut self) {
        self.targets.clear();
        self.active = None;
    }

    /// Change `c` applies to entry `at`.
    fn target(&mut self, at: usize, c: usize) {
        self.targets.push((at, c));
    }

    /// Orders the targets by entry, each entry's changes staying in change order.
    fn sort(&mut self) {
        self.targets.sort_by_key(|&(at, _)| at);
    }

    /// The changes applied to entry `index`, in order.
    fn changes_of(&self, index: usize) -> impl Iterator<Item = usize> + '_ {
        let start = self.targets.partition_point(|&(at, _)| at < index);
        self.targets[start..]
            .iter()
            .take_while(move |&&(at, _)| at == index)
            .map(|&(_, c)| c)
    }

    /// The entry as rendered: as read, with its changes applied.
    fn entry(&self, index: usize, raw: &RawValue) -> serde_json::Result<Value> {
        let mut entry: Value = serde_json::from_str(raw.get())?;
        if let Some(obj) = entry.as_object_mut() {
            for c in self.changes_of(index) {
                (self.apply)(obj, c);
            }
        }
        Ok(entry)
    }

    /// Sets the count member `key` to `active` when the document has it; whether that
    /// changes it.
    fn count(&mut self, doc: &Doc<'_>, key: &'static str, active: i64) -> bool {
        if !doc.has_member(key) {
            return false;
        }
        self.active = Some((key, active));
        member_differs(doc, key, &json!(active))
    }

    /// Whether an edited entry of `items` differs from what it was (stops at the first).
    fn entries_change(&self, items: &[(Option<Cow<'_, str>>, &RawValue)]) -> Result<bool, String> {
        let mut last = None;
        for &(at, _) in &self.targets {
            if last.replace(at) == Some(at) {
                continue;
            }
            let raw = items[at].1;
            let before: Value = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
            if self.entry(at, raw).map_err(|e| e.to_string())? != before {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn render(&self, bytes: &[u8], out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let doc = Doc::parse(bytes).map_err(std::io::Error::other)?;
        let sets: Vec<(String, Value)> = self
            .active
            .map(|(key, n)| (key.to_string(), json!(n)))
            .into_iter()
            .collect();
        doc.render(&sets, &mut |i, raw| self.entry(i, raw), out)
    }
}

/// [`super::edit_task_registry`] as a streamed rewrite.
pub struct TaskEdit<'c>(Targets<'c, AgentChange>);

impl<'c> TaskEdit<'c> {
    pub fn new(changes: &'c [AgentChange]) -> Self {
        Self::edit(changes, None)
    }

    /// The edit of `changes` whose records are [`super::Record::Made`] by `maker`, each
    /// when its entry is written (and dropped after).
    pub fn with_records(changes: &'c [AgentChange], maker: &'c RecordMaker<'c>) -> Self {
        Self::edit(changes, Some(maker))
    }

    fn edit(changes: &'c [AgentChange], maker: Option<&'c RecordMaker<'c>>) -> Self {
        TaskEdit(Targets::new(
            changes,
            Box::new(move |obj, c| {
                let change = &changes[c];
                apply_to_entry(obj, change, record_of(change, c, maker).as_deref());
            }),
        ))
    }
}

impl Rewrite for TaskEdit<'_> {
    type Out = Vec<Applied>;

    fn prepare(&mut self, bytes: &[u8]) -> Result<(Vec<Applied>, bool), String> {
        let t = &mut self.0;
        t.clear();
        let doc = Doc::parse(bytes).map_err(|e| e.to_string())?;
        let Some(list) = doc.list.as_ref().filter(|l| !l.object) else {
            return Ok((vec![Applied::Missing; t.changes.len()], false));
        };
        // The changes by id, each id's later changes chained after its first (`then`). One
        // scan of the entries meets them at the first entry of their id: an index of every
        // entry's id and status, as owned strings, was 5 MB at the edit's peak for 40,000.
        let changes = t.changes;
        let mut first: HashMap<&str, usize> = HashMap::with_capacity(changes.len());
        let mut then = vec![usize::MAX; changes.len()];
        for (c, change) in changes.iter().enumerate().rev() {
            if let Some(next) = first.insert(&change.id, c) {
                then[c] = next;
            }
        }
        let mut applied = vec![Applied::Missing; changes.len()];
        let mut active = 0;
        for (at, (_, raw)) in list.items.iter().enumerate() {
            let (id, mut status) = match string_fields(raw, &["id", "status"]) {
                Some(mut found) => (found.remove(0), found.remove(0)),
                None => (None, None),
            };
            // The first entry of a changed id takes its changes, in order; a later one of
            // the same id none.
            let mut next = id.as_deref().and_then(|id| first.remove(id));
            while let Some(c) = next {
                let change = &changes[c];
                if status.as_deref() != Some(&*change.expect_status) {
                    applied[c] = Applied::StatusMoved;
                } else {
                    if let Some((new, _)) = change.set_status {
                        status = Some(new.to_string());
                    }
                    t.target(at, c);
                    applied[c] = Applied::Done;
                }
                next = Some(then[c]).filter(|&n| n != usize::MAX);
            }
            active += count_active(std::iter::once(status.as_deref()));
        }
        t.sort();
        let changed = t.count(&doc, "active_count", active) || t.entries_change(&list.items)?;
        Ok((applied, changed))
    }

    fn render(&mut self, bytes: &[u8], out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.0.render(bytes, out)
    }
}

/// Whether the current value of member `key` differs from `value`.
fn member_differs(doc: &Doc<'_>, key: &str, value: &Value) -> bool {
    let current = doc
        .members
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, raw)| raw.get());
    current
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .as_ref()
        != Some(value)
}

/// [`super::edit_global_registry`] as a streamed rewrite.
pub struct GlobalEdit<'c>(Targets<'c, GlobalChange>);

impl<'c> GlobalEdit<'c> {
    pub fn new(changes: &'c [GlobalChange]) -> Self {
        GlobalEdit(Targets::new(
            changes,
            Box::new(move |obj, c| apply_global(obj, &changes[c])),
        ))
    }
}

impl Rewrite for GlobalEdit<'_> {
    type Out = ();

    fn prepare(&mut self, bytes: &[u8]) -> Result<((), bool), String> {
        let t = &mut self.0;
        t.clear();
        let doc = Doc::parse(bytes).map_err(|e| e.to_string())?;
        let Some(list) = doc.list.as_ref().filter(|l| l.object) else {
            return Ok(((), false));
        };
        // Each entry's status as `global_active_agents` and the transition look at it;
        // `None`: not an object (counted active, as a `Value` without a status is).
        let mut statuses: Vec<Option<Field>> = list
            .items
            .iter()
            .map(|(_, raw)| fields(raw, &["status"]).and_then(|mut f| f.pop()))
            .collect();
        let index: HashMap<&str, usize> = list
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, (key, _))| key.as_deref().map(|k| (k, i)))
            .collect();
        for (c, change) in t.changes.iter().enumerate() {
            let Some(&at) = index.get(&*change.id) else {
                continue;
            };
            let Some(status) = &statuses[at] else {
                continue;
            };
            if !follows_transition(status.as_str()) {
                continue;
            }
            statuses[at] = Some(Field::Str(change.status.to_string()));
            t.target(at, c);
        }
        drop(index);
        t.sort();
        let active = statuses
            .iter()
            .filter(|s| match s {
                None | Some(Field::Absent | Field::Null) => true,
                Some(Field::Str(s)) => classify_status(s) == StatusClass::Active,
                Some(Field::Other) => false,
            })
            .count() as i64;
        let changed = t.count(&doc, "active_agents", active) || t.entries_change(&list.items)?;
        Ok(((), changed))
    }

    fn render(&mut self, bytes: &[u8], out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.0.render(bytes, out)
    }
}
