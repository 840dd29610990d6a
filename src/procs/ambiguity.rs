//! Ambiguous agent ids: listed by more than one task (or twice by one), or sharing a session name.
//!
//! For such an id nobody can tell whose agent a session or a process is: stopping it on one
//! task's word would kill another task's live agent. Nothing destructive is done for them.

use crate::model::AgentId;
use std::collections::{BTreeMap, BTreeSet};

/// Each ambiguous id with why, in a stable order. Pure: `listings` is every `(task, id)`
/// pair of the pass, duplicates included. Costs one sorted list of the pairs (no map node
/// or string per id): a pass over 600,000 ids stays small.
pub fn ambiguous_ids<'a>(
    listings: impl IntoIterator<Item = (&'a str, &'a AgentId)>,
) -> BTreeMap<AgentId, String> {
    let mut listed: Vec<(&AgentId, &str)> = listings.into_iter().map(|(t, id)| (id, t)).collect();
    // Stable: an id's tasks keep the order they were listed in.
    listed.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = BTreeMap::new();
    let mut distinct: Vec<&AgentId> = Vec::new();
    for group in listed.chunk_by(|a, b| a.0 == b.0) {
        let id = group[0].0;
        distinct.push(id);
        if group.len() > 1 {
            let tasks: BTreeSet<&str> = group.iter().map(|(_, t)| *t).collect();
            let why = if tasks.len() == 1 {
                format!("listed {} times in task {}", group.len(), group[0].1)
            } else {
                format!(
                    "listed in {} tasks ({})",
                    tasks.len(),
                    tasks.into_iter().collect::<Vec<_>>().join(", ")
                )
            };
            out.insert(id.clone(), why);
        }
    }
    drop(listed);
    for (session, ids) in shared_sessions(&distinct) {
        let names: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        for id in ids {
            let why = format!(
                "ids {} share the tmux session name {session}",
                names.join(", ")
            );
            out.entry(id.clone())
                .and_modify(|w: &mut String| {
                    w.push_str("; ");
                    w.push_str(&why);
                })
                .or_insert(why);
        }
    }
    out
}

/// Session names two or more of the `distinct` ids share, with those ids in order. tmux
/// turns `.` and `:` into `_`, so only an id holding one can share its session with
/// another: the others are looked up among those, not each given a session name.
fn shared_sessions<'i>(distinct: &[&'i AgentId]) -> BTreeMap<String, BTreeSet<&'i AgentId>> {
    let renamed = |id: &AgentId| id.as_str().contains(['.', ':']);
    let mut by_session: BTreeMap<String, BTreeSet<&AgentId>> = BTreeMap::new();
    for id in distinct.iter().filter(|id| renamed(id)) {
        by_session.entry(id.session_name()).or_default().insert(id);
    }
    if by_session.is_empty() {
        return by_session;
    }
    let mut name = String::new();
    for id in distinct.iter().filter(|id| !renamed(id)) {
        name.clear();
        name.push_str("agent_");
        name.push_str(id.as_str());
        if let Some(ids) = by_session.get_mut(name.as_str()) {
            ids.insert(id);
        }
    }
    by_session.retain(|_, ids| ids.len() > 1);
    by_session
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AgentId {
        AgentId::parse(s).unwrap()
    }

    #[test]
    fn cross_task_duplicate_and_colliding_ids_are_ambiguous() {
        let (a, b, c, d, e, f) = (
            id("a-1"),
            id("b-1"),
            id("api.v2-1"),
            id("api_v2-1"),
            id("solo-1"),
            id("twice-1"),
        );
        let got = ambiguous_ids([
            ("T1", &a),
            ("T2", &a),
            ("T1", &b),
            ("T1", &c),
            ("T2", &d),
            ("T3", &e),
            ("T3", &f),
            ("T3", &f),
        ]);
        assert_eq!(
            got.keys().map(AgentId::as_str).collect::<Vec<_>>(),
            vec!["a-1", "api.v2-1", "api_v2-1", "twice-1"]
        );
        assert!(got[&a].contains("2 tasks (T1, T2)"), "{}", got[&a]);
        assert!(got[&c].contains("agent_api_v2-1"), "{}", got[&c]);
        assert!(got[&f].contains("2 times in task T3"), "{}", got[&f]);
    }

    #[test]
    fn nothing_is_ambiguous_in_a_clean_pass() {
        let (a, b) = (id("a-1"), id("b-1"));
        assert!(ambiguous_ids([("T1", &a), ("T1", &b)]).is_empty());
        assert!(ambiguous_ids(std::iter::empty()).is_empty());
    }
}
