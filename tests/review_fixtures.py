"""An evaluation run with two arms' answers, for the review and judge tests (no model is loaded)."""

from __future__ import annotations

from tunewise.project import Project
from tunewise.registry.runs import RunStore

SECRET_ARMS = ("prompted-arm-xq", "tuned-arm-zk")  # names that must never reach a reviewer's page


def eval_project(root, n: int = 6, arms: tuple[str, str] = SECRET_ARMS) -> tuple[Project, str]:
    """A project whose one finished evaluation holds `n` examples answered by both arms: arm a's answers say
    ANSWER-A-<i>, arm b's ANSWER-B-<i>, so a test can tell from a page which arm is on which side."""
    project = Project(root)
    store = RunStore(project)
    records = []
    for i in range(n):
        for arm, tag in zip(arms, ("A", "B")):
            records.append(
                {
                    "id": f"ex-{i}",
                    "input": f"Customer message {i}",
                    "reference": f"Reference reply {i}",
                    "arm": arm,
                    "output": f"ANSWER-{tag}-{i}",
                }
            )
    with store.recording("eval", {"arms": list(arms)}, name="support-replies") as rec:
        store.write_jsonl(rec.run, "records.jsonl", records)
        run_id = rec.run.id
    return project, run_id
