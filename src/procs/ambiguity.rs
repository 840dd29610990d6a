//! Ambiguous agent ids: listed by more than one task (or twice by one), or sharing a session name.
//!
//! For such an id nobody can tell whose agent a session or a process is: stopping it on one
//! task's word would kill another task's live agent. Nothing destructive is done for them.

use crate::model::AgentId;
use std::collections::{BTreeMap, BTreeSet};

/// Each ambiguous id with why, in a stable order. Pure: `listings` is every `(task, id)`
/// pair of the pass, duplicates included.
pub fn ambiguous_ids<'a>(
    listings: impl IntoIterator<Item = (&'a str, &'a AgentId)>,
) -> BTreeMap<AgentId, String> {
    let mut tasks: BTreeMap<&AgentId, Vec<&str>> = BTreeMap::new();
    for (task, id) in listings {
        tasks.entry(id).or_default().push(task);
    }
    let mut by_session: BTreeMap<String, BTreeSet<&AgentId>> = BTreeMap::new();
    for id in tasks.keys() {
        by_session.entry(id.session_name()).or_default().insert(id);
    }
    let mut out = BTreeMap::new();
    for (id, listed) in &tasks {
        if listed.len() > 1 {
            let distinct: BTreeSet<&str> = listed.iter().copied().collect();
            let why = if distinct.len() == 1 {
                format!("listed {} times in task {}", listed.len(), listed[0])
            } else {
                format!(
                    "listed in {} tasks ({})",
                    distinct.len(),
                    distinct.into_iter().collect::<Vec<_>>().join(", ")
                )
            };
            out.insert((*id).clone(), why);
        }
    }
    for (session, ids) in by_session {
        if ids.len() > 1 {
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
    }
    out
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
