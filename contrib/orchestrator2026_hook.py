#!/usr/bin/env python3
"""agent-reaper transition hook for the 2026 Claude Orchestrator (SQLite state DB).

When agent-reaper marks an agent terminal in the orchestrator's state DB, the
orchestrator's own workflow does not move on by itself: its detector
(`HealthDaemon._mark_agents_failed`) is what submits a phase for review once all
of its agents are done and asks for reviewers, and what aborts and retries a
review whose reviewers died (`HealthDaemon._check_stalled_reviews`). This
script does those next steps after agent-reaper's transition, through the
orchestrator's own functions, imported from its install path (nothing here is a
copy of its logic):

1. the phase check and auto-submit for review: `_mark_agents_failed(task, ws, [])`
   with no agents to mark runs exactly the detector's phase enforcement (a phase
   in ACTIVE, or FIXING with revision_ready, whose agents are all done goes to
   IN_REVIEW) and its reviewer spawn (`_trigger_phase_review`, which calls
   `real_mcp_server._auto_spawn_phase_reviewers`);
2. the stalled-review check: `_check_stalled_reviews(task, ws, [agent])` aborts
   a review whose reviewers all died without a verdict (retry_count + 1, phase
   back to IN_REVIEW, new reviewers) or finalizes it on partial verdicts, or
   escalates after the orchestrator's retry limit. It acts only when the agent
   is a pending reviewer of an in-progress review, so it is asked for every
   agent;
3. recovery of an interrupted submit: a current phase left in IN_REVIEW with no
   review claimed (a crash between the two steps of 1 or of the retry in 2)
   gets its reviewers through the same `_trigger_phase_review`.

Idempotent, as agent-reaper's hooks must be (they run at least once): each step
acts only on the state it moves on from (an ACTIVE phase, an in-progress
review), and the orchestrator's atomic `claim_phase_for_review` lets one review
start per phase, so a second run for the same transition, or runs for every
agent of a phase, request reviewers once. Both `failed` (what the 2026
detectors write) and `terminated` count as done, for the orchestrator as here.

Usage (as agent-reaper's [[hooks]] command; see README "Using agent-reaper with
the 2026 orchestrator"):

    orchestrator2026_hook.py [--orchestrator DIR] WORKSPACE_BASE TASK_ID AGENT_ID STATUS

DIR is the orchestrator's install path (the folder holding real_mcp_server.py
and orchestrator/); without the flag, $CLAUDE_ORCHESTRATOR_SRC. Omitted
positional arguments are read from agent-reaper's AGENT_REAPER_WORKSPACE_BASE,
AGENT_REAPER_TASK_ID, AGENT_REAPER_AGENT_ID and AGENT_REAPER_STATUS. Run it
with the Python the orchestrator runs with (its virtualenv: fastmcp and the
orchestrator's requirements must import). CLAUDE_EXECUTABLE and the rest of
the orchestrator's environment apply to the reviewers it starts.

Exit status: 0 when done or nothing to do (a task the state DB does not know,
a status that is not terminal); 1 when the orchestrator could not be imported
or logged an error while acting (agent-reaper retries the hook on a later
pass); 2 for bad arguments. The last stdout line is a JSON summary.
"""

import argparse
import json
import logging
import os
import sqlite3
import sys

TERMINAL = {"completed", "failed", "error", "terminated", "killed", "phase_completed"}


class ErrorCounter(logging.Handler):
    """Remembers ERROR records: the orchestrator logs failures instead of raising them."""

    def __init__(self):
        super().__init__(level=logging.ERROR)
        self.messages = []

    def emit(self, record):
        self.messages.append(f"{record.name}: {record.getMessage()}")


def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(
        description="Move the 2026 orchestrator's workflow on after agent-reaper's transition."
    )
    p.add_argument("--orchestrator", default=env("CLAUDE_ORCHESTRATOR_SRC"),
                   help="the orchestrator's install path (default: $CLAUDE_ORCHESTRATOR_SRC)")
    p.add_argument("workspace_base", nargs="?", default=env("AGENT_REAPER_WORKSPACE_BASE"))
    p.add_argument("task_id", nargs="?", default=env("AGENT_REAPER_TASK_ID"))
    p.add_argument("agent_id", nargs="?", default=env("AGENT_REAPER_AGENT_ID"))
    p.add_argument("status", nargs="?", default=env("AGENT_REAPER_STATUS"))
    args = p.parse_args(argv)
    missing = [k for k in ("orchestrator", "workspace_base", "task_id", "agent_id", "status")
               if not getattr(args, k)]
    if missing:
        p.error("missing: " + ", ".join(missing))
    for k in ("task_id", "agent_id"):
        value = getattr(args, k)
        if "/" in value or value in (".", "..") or "\0" in value:
            p.error(f"{k} {value!r} is not an id")
    return args


def phase_state(state_db, base, task_id):
    task = state_db.load_task_snapshot(workspace_base=base, task_id=task_id) or {}
    index = task.get("current_phase_index", 0) or 0
    phase = state_db.load_phase_snapshot(workspace_base=base, task_id=task_id, phase_index=index)
    return index, phase


def reviews_of(state_db, base, task_id):
    """review id -> (status, retry_count), for the summary line."""
    # The orchestrator's readers (get_review, get_reviews_for_task) leave retry_count out.
    with sqlite3.connect(f"file:{state_db.get_state_db_path(base)}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT review_id, status, COALESCE(retry_count, 0) FROM reviews WHERE task_id=?",
            (task_id,)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def main(argv):
    args = parse_args(argv)
    base = os.path.abspath(args.workspace_base)
    summary = {"task_id": args.task_id, "agent_id": args.agent_id, "status": args.status,
               "actions": []}
    if args.status not in TERMINAL:
        summary["actions"].append("none: status is not terminal")
        print(json.dumps(summary))
        return 0
    # The orchestrator reads its workspace base from the environment at import time.
    os.environ["CLAUDE_ORCHESTRATOR_WORKSPACE"] = base
    sys.path.insert(0, os.path.abspath(args.orchestrator))
    errors = ErrorCounter()
    logging.getLogger().addHandler(errors)
    try:
        # First: the reviewer spawn needs it, and a failed import must change nothing.
        import real_mcp_server  # noqa: F401
        from orchestrator import state_db
        from orchestrator.health_daemon import HealthDaemon
    except BaseException as e:  # SystemExit from its fastmcp guard included
        print(f"cannot import the orchestrator from {args.orchestrator}: {e}", file=sys.stderr)
        return 1

    workspace = os.path.join(base, args.task_id)
    if not os.path.exists(state_db.get_state_db_path(base)):
        summary["actions"].append("none: no state DB in this workspace base")
        print(json.dumps(summary))
        return 0
    if not state_db.load_task_snapshot(workspace_base=base, task_id=args.task_id):
        summary["actions"].append("none: the state DB has no such task")
        print(json.dumps(summary))
        return 0

    # Built, not started: no thread, no scan; only its methods are used.
    detector = HealthDaemon(base)
    index, before = phase_state(state_db, base, args.task_id)
    reviews_before = reviews_of(state_db, base, args.task_id)

    # 1. The detector's phase enforcement and reviewer spawn, with no agent to mark.
    detector._mark_agents_failed(args.task_id, workspace, [])
    # 2. The detector's stalled-review handling for this agent (a no-op unless it is a
    #    pending reviewer of an in-progress review).
    detector._check_stalled_reviews(args.task_id, workspace, [args.agent_id])
    # 3. An IN_REVIEW phase nobody claimed waits for reviewers that were never asked for.
    index, phase = phase_state(state_db, base, args.task_id)
    if phase.get("status") == "IN_REVIEW" and not phase.get("last_review_id"):
        counts = phase.get("counts") or {}
        detector._trigger_phase_review({
            "task_id": args.task_id,
            "phase_index": index,
            "phase_name": phase.get("name") or f"Phase {index + 1}",
            "completed_agents": counts.get("completed", 0),
            "failed_agents": counts.get("failed", 0),
            "workspace": workspace,
        })
        summary["actions"].append(f"phase {index}: reviewers requested for an unclaimed review")

    index, after = phase_state(state_db, base, args.task_id)
    if before.get("status") != after.get("status"):
        summary["actions"].append(
            f"phase {index}: {before.get('status')} -> {after.get('status')}")
    for review_id, (status, retries) in reviews_of(state_db, base, args.task_id).items():
        old = reviews_before.get(review_id)
        if old is None:
            summary["actions"].append(f"review {review_id} started")
        elif old != (status, retries):
            summary["actions"].append(
                f"review {review_id}: {old[0]} -> {status} (retry_count {retries})")
    summary["phase_index"] = index
    summary["phase_status"] = after.get("status")
    summary["errors"] = errors.messages
    print(json.dumps(summary))
    if errors.messages:
        print("the orchestrator logged errors; agent-reaper will run this hook again",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
