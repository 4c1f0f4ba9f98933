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


def bitext_project(
    root, datasets, n: int = 8, arms: tuple[str, str] = SECRET_ARMS
) -> tuple[Project, str, dict]:
    """A project whose evaluation holds `n` held-out bitext_reply examples (prose replies in JSON): arm a answers
    with the reference itself, arm b with the same JSON and a generic reply. Returns (project, run id, for each
    example's input: {arm: output})."""
    import json

    rows = [
        json.loads(line) for line in (datasets / "bitext_reply" / "test-small.jsonl").read_text().splitlines()
    ]
    project = Project(root)
    store = RunStore(project)
    records, answers = [], {}
    for i, row in enumerate(rows[:n]):
        question, reference = row["messages"][0]["content"], row["messages"][1]["content"]
        generic = dict(json.loads(reference), reply="Thank you for your message. We will get back to you.")
        outputs = {arms[0]: reference, arms[1]: json.dumps(generic, sort_keys=True, separators=(",", ":"))}
        answers[question] = outputs
        for arm, output in outputs.items():
            records.append(
                {"id": f"ex-{i}", "input": question, "reference": reference, "arm": arm, "output": output}
            )
    with store.recording("eval", {"arms": list(arms)}, name="bitext-reply") as rec:
        store.write_jsonl(rec.run, "records.jsonl", records)
        run_id = rec.run.id
    return project, run_id, answers
