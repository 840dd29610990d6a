//! Fuzz: the watch path mapper never panics and never yields a name that can climb.

use agent_reaper::watch::classify;
use proptest::prelude::*;
use std::path::{Component, Path, PathBuf};

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("registry".to_string()),
        Just("GLOBAL_REGISTRY.json".to_string()),
        Just("AGENT_REGISTRY.json".to_string()),
        Just("AGENT_REGISTRY.json.reaper".to_string()),
        Just("logs".to_string()),
        Just("progress".to_string()),
        Just("findings".to_string()),
        Just("archive".to_string()),
        "TASK-[-A-Za-z0-9_.]{0,12}",
        "TASK-\\.\\.[/.]{0,3}",
        "agent_prompt_[-A-Za-z0-9_./]{0,12}\\.txt",
        "deploy_[-A-Za-z0-9_.]{0,12}\\.json",
        "[-A-Za-z0-9_.]{0,12}_(stream|progress|findings)\\.jsonl",
        "\\.\\._(stream|progress|findings)\\.jsonl",
        any::<String>(),
    ]
}

fn safe_name(name: &str) -> Result<(), String> {
    let comps: Vec<_> = Path::new(name).components().collect();
    if name.is_empty()
        || name.contains('/')
        || name.contains('\0')
        || name == "."
        || name == ".."
        || comps.len() != 1
        || !matches!(comps[0], Component::Normal(_))
    {
        return Err(format!("unsafe name {name:?}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(crate::proptest_config(ProptestConfig::default()))]
    #[test]
    fn classify_never_panics_nor_climbs(
        base_pick in 0usize..3,
        parts in proptest::collection::vec(component(), 0..6),
        raw in any::<String>(),
    ) {
        let bases = vec![PathBuf::from("/ws/a"), PathBuf::from("/ws/a/nested"), PathBuf::from("/ws/b/")];
        let _ = classify(&bases, Path::new(&raw));
        let mut path = bases[base_pick].clone();
        for p in &parts {
            path.push(p);
        }
        let Some(ev) = classify(&bases, &path) else { return Ok(()); };
        prop_assert!(path.starts_with(&ev.base_dir));
        if let Some(task) = ev.kind.task() {
            prop_assert!(safe_name(task).is_ok(), "task {task:?} from {path:?}");
            prop_assert!(!task.contains(".."), "task {task:?} from {path:?}");
        }
        if let Some(agent) = ev.kind.agent() {
            prop_assert!(safe_name(agent.as_str()).is_ok(), "agent {agent:?} from {path:?}");
            prop_assert!(!agent.as_str().contains(".."), "agent {agent:?} from {path:?}");
        }
    }
}
