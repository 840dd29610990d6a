//! The 2026 SQLite generation: the orchestrator's own `state_db` writes tasks and agents, agent-reaper reaps, its readers judge.

use crate::harness::{Generation, World};

const TASK: &str = "TASK-20260427-120000-a1b2c3d4";
const ZOMBIE: &str = "fixer-120001-0a0b0c";

/// A task made the way the 2026 `create_real_task` + `deploy_headless_agent` make one:
/// `create_task_with_phases`, the task folders, the backward-compatible (empty) registry,
/// then `deploy_agent_atomic` per agent.
const CREATE_TASK: &str = r#"
import json, sys
from orchestrator import state_db
task, agents = sys.argv[1], sys.argv[2:]
ws = os.path.join(BASE, task)
for sub in ("progress", "logs", "findings", "output", "handovers"):
    os.makedirs(os.path.join(ws, sub), exist_ok=True)
r = state_db.create_task_with_phases(
    workspace_base=BASE, task_id=task, workspace=ws, description="reaper test",
    phases=[{"name": "Build", "description": "build it"}, {"name": "Check"}])
assert r["success"], r
with open(os.path.join(ws, "AGENT_REGISTRY.json"), "w") as f:
    json.dump({"task_id": task, "workspace": ws, "status": "INITIALIZED", "agents": [],
               "total_spawned": 0, "active_count": 0, "completed_count": 0}, f, indent=2)
for agent in agents:
    r = state_db.deploy_agent_atomic(
        workspace_base=BASE, task_id=task, agent_id=agent, agent_type=agent.split("-")[0],
        model="sonnet", parent="orchestrator", depth=1, phase_index=0,
        tmux_session="agent_" + agent, prompt_preview="You are a test agent.")
    assert r["success"], r
print(json.dumps(state_db.get_agents_for_task(workspace_base=BASE, task_id=task)))
"#;

#[test]
fn plan_names_a_zombie_the_orchestrator_deployed() {
    let Some(w) = World::new(Generation::Sqlite2026) else {
        return;
    };
    let agents = w.python_json(CREATE_TASK, &[TASK, ZOMBIE]);
    assert_eq!(agents[0]["agent_id"], ZOMBIE, "{agents}");
    assert_eq!(agents[0]["status"], "running");
    w.write_config("settle = \"0s\"\nzombie_grace = \"0s\"\n");
    let plan = w.reaper_ok(&["plan"]);
    assert!(plan.contains(ZOMBIE), "{plan}");
}
