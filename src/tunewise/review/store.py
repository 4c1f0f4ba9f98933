"""Blind pairwise reviews in the registry: create one from an evaluation run, record reviewers' choices, read the
results back.

A review holds a sample of held-out examples with two arms' answers, stored under the pair's positions a and b
(`reviews.arms` names them). Reviewers see "Left" and "Right" only: which arm is on the left is drawn per item and
per reviewer from a random seed kept with the reviewer, and each choice stores that side and its outcome mapped
back to the arms (`stats.OUTCOMES`). A reviewer resumes with a token the page keeps (only its hash is stored).

Every write is one transaction; a choice is unique per reviewer and item, so a double submission is refused,
never counted twice.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from collections.abc import Sequence
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.project import Project
from tunewise.registry.db import Registry, utc_now
from tunewise.review import stats

CHOICES = ("left", "right", "tie", "both_bad")
MAX_NAME = 64
MAX_COMMENT = 2000


class ReviewError(TunewiseError):
    """A review request that cannot be honoured; `status` is the HTTP status the web app answers with."""

    def __init__(self, message: str, hint: str | None = None, status: int = 400):
        super().__init__(message, hint)
        self.status = status


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def left_arm(sides_seed: str, position: int) -> str:
    """Which arm ('a' or 'b') a reviewer sees on the left for an item: a fair coin drawn from their seed.

    >>> left_arm("00", 0) in ("a", "b")
    True
    >>> [left_arm("5eed", i) for i in range(4)] == [left_arm("5eed", i) for i in range(4)]
    True
    """
    digest = hashlib.sha256(f"{sides_seed}:{position}".encode()).digest()
    return "a" if digest[0] & 1 else "b"


def outcome_of(choice: str, left: str) -> str:
    """A choice of sides mapped back to the arms.

    >>> outcome_of("left", "b"), outcome_of("right", "b"), outcome_of("tie", "a"), outcome_of("both_bad", "b")
    ('b', 'a', 'tie', 'both_bad')
    """
    if choice == "left":
        return left
    if choice == "right":
        return "b" if left == "a" else "a"
    return choice


class ReviewStore:
    """The reviews of one project. Each method opens the registry, does its work, closes it."""

    def __init__(self, project: Project):
        self.project = project

    # --- creating -------------------------------------------------------------------------------------------

    def create(
        self,
        arms: Sequence[str],
        eval_run: str | None = None,
        sample: int | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """A review of `arms` (two names) on the held-out answers of `eval_run` (default: the latest succeeded
        evaluation), `sample` examples drawn at random (default: all)."""
        from tunewise.fileio import read_jsonl
        from tunewise.registry.runs import RunStore

        arms = [a.strip() for a in arms if a.strip()]
        if len(arms) != 2 or arms[0] == arms[1]:
            raise TunewiseError(
                f"--arms needs two different arms, got {','.join(arms) or 'none'}",
                hint="e.g. --arms few-shot,fine-tuned",
            )
        runs = RunStore(self.project)
        if eval_run is None:
            done = runs.list(kind="eval", status="succeeded", limit=1)
            if not done:
                raise TunewiseError(
                    "no finished evaluation to review", hint="run `tunewise eval` (or `tunewise run`) first"
                )
            run = done[0]
        else:
            run = runs.get(eval_run, kinds=("eval",))
        path = run.path / "records.jsonl"
        if not path.is_file():
            raise TunewiseError(
                f"evaluation {run.id} has no records.jsonl", hint="pick a finished evaluation"
            )
        records = read_jsonl(path)
        by_arm: dict[str, dict[str, dict[str, Any]]] = {}
        for r in records:
            by_arm.setdefault(str(r["arm"]), {})[str(r["id"])] = r
        missing = [a for a in arms if a not in by_arm]
        if missing:
            raise TunewiseError(
                f"evaluation {run.id} has no arm {', '.join(missing)}",
                hint=f"its arms: {', '.join(by_arm)}",
            )
        ids = [i for i in by_arm[arms[0]] if i in by_arm[arms[1]]]
        if not ids:
            raise TunewiseError(f"arms {arms[0]} and {arms[1]} answered no example in common in {run.id}")
        if sample is not None:
            if sample < 1:
                raise TunewiseError(f"--sample must be at least 1, got {sample}")
            ids = random.Random(seed).sample(ids, min(sample, len(ids)))
        task = _task_text(self.project, run)
        review_id = _new_id("rv")
        with self.project.registry() as registry, registry.transaction() as conn:
            conn.execute(
                "INSERT INTO reviews (id, created_at, eval_run, arms, task, n_items) VALUES (?, ?, ?, ?, ?, ?)",
                (review_id, utc_now(), run.id, json.dumps(arms), task, len(ids)),
            )
            conn.executemany(
                "INSERT INTO review_items (review_id, position, example_id, input, reference, answer_a, answer_b)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        review_id,
                        pos,
                        i,
                        str(by_arm[arms[0]][i]["input"]),
                        str(by_arm[arms[0]][i]["reference"]),
                        str(by_arm[arms[0]][i]["output"]),
                        str(by_arm[arms[1]][i]["output"]),
                    )
                    for pos, i in enumerate(ids)
                ],
            )
        return self.get(review_id)

    # --- reading --------------------------------------------------------------------------------------------

    def get(self, review_id: str) -> dict[str, Any]:
        with self.project.registry() as registry:
            row = registry.conn.execute("SELECT * FROM reviews WHERE id = ?", (review_id,)).fetchone()
        if row is None:
            raise ReviewError(
                f"no review '{review_id}'", hint="`tunewise review results` lists the reviews", status=404
            )
        out = dict(row)
        out["arms"] = json.loads(out["arms"])
        return out

    def list(self) -> list[dict[str, Any]]:
        with self.project.registry() as registry:
            rows = registry.conn.execute("SELECT * FROM reviews ORDER BY created_at DESC, id").fetchall()
        return [{**dict(r), "arms": json.loads(r["arms"])} for r in rows]

    def latest(self) -> dict[str, Any]:
        reviews = self.list()
        if not reviews:
            raise TunewiseError("no review yet", hint="create one with `tunewise review create --arms A,B`")
        return reviews[0]

    def choices(self, review_id: str) -> list[dict[str, Any]]:
        """Every choice of a review, with the reviewer's name and the item's example id."""
        with self.project.registry() as registry:
            rows = registry.conn.execute(
                "SELECT c.*, r.name AS reviewer, i.example_id FROM review_choices c"
                " JOIN reviewers r ON r.id = c.reviewer_id"
                " JOIN review_items i ON i.review_id = c.review_id AND i.position = c.position"
                " WHERE c.review_id = ? ORDER BY c.position, r.name",
                (review_id,),
            ).fetchall()
        return [dict(r) for r in rows]

    # --- reviewers ------------------------------------------------------------------------------------------

    def join(self, review_id: str, name: str) -> dict[str, Any]:
        """A new reviewer: {reviewer, token}. The token resumes the review on this device; a name already taken
        in the review is refused (409), so two people never mix their choices."""
        self.get(review_id)
        name = " ".join(str(name).split())
        if not name or len(name) > MAX_NAME:
            raise ReviewError(f"a reviewer's name is 1 to {MAX_NAME} characters")
        token = secrets.token_urlsafe(24)
        reviewer_id = _new_id("rr")
        with self.project.registry() as registry, registry.transaction() as conn:
            taken = conn.execute(
                "SELECT 1 FROM reviewers WHERE review_id = ? AND lower(name) = lower(?)", (review_id, name)
            ).fetchone()
            if taken:
                raise ReviewError(
                    f"a reviewer named '{name}' already takes part in this review",
                    hint="pick another name; to go on with your own reviews, use the device and browser you "
                    "started on",
                    status=409,
                )
            conn.execute(
                "INSERT INTO reviewers (id, review_id, name, token_hash, sides_seed, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (reviewer_id, review_id, name, _hash(token), secrets.token_hex(16), utc_now()),
            )
        return {"name": name, "token": token}

    def _reviewer(self, registry: Registry, review_id: str, token: str) -> dict[str, Any]:
        row = registry.conn.execute(
            "SELECT * FROM reviewers WHERE review_id = ? AND token_hash = ?", (review_id, _hash(token or ""))
        ).fetchone()
        if row is None:
            raise ReviewError("unknown reviewer", hint="enter your name to start reviewing", status=401)
        return dict(row)

    # --- the page's view ------------------------------------------------------------------------------------

    def state(self, review_id: str, token: str) -> dict[str, Any]:
        """What the reviewer sees now: progress and the next item without a choice (None when done), its answers
        under "left" and "right" only."""
        review = self.get(review_id)
        with self.project.registry() as registry:
            reviewer = self._reviewer(registry, review_id, token)
            done = {
                r[0]
                for r in registry.conn.execute(
                    "SELECT position FROM review_choices WHERE reviewer_id = ?", (reviewer["id"],)
                )
            }
            nxt = next((p for p in range(review["n_items"]) if p not in done), None)
            item = None
            if nxt is not None:
                row = registry.conn.execute(
                    "SELECT * FROM review_items WHERE review_id = ? AND position = ?", (review_id, nxt)
                ).fetchone()
                left = left_arm(reviewer["sides_seed"], nxt)
                answers = {"a": row["answer_a"], "b": row["answer_b"]}
                item = {
                    "position": nxt,
                    "input": row["input"],
                    "reference": row["reference"],
                    "left": answers[left],
                    "right": answers["b" if left == "a" else "a"],
                }
        return {
            "name": reviewer["name"],
            "task": review["task"],
            "total": review["n_items"],
            "done": len(done),
            "item": item,
        }

    def choose(
        self, review_id: str, token: str, position: int, choice: str, comment: str | None = None
    ) -> dict[str, Any]:
        """Record a reviewer's choice on an item; a second choice on the same item is refused (409)."""
        if choice not in CHOICES:
            raise ReviewError(f"unknown choice '{choice}'", hint=f"one of {', '.join(CHOICES)}")
        comment = (comment or "").strip() or None
        if comment is not None and len(comment) > MAX_COMMENT:
            raise ReviewError(f"a comment is at most {MAX_COMMENT} characters")
        review = self.get(review_id)
        if not isinstance(position, int) or not 0 <= position < review["n_items"]:
            raise ReviewError(f"no item {position} in this review", status=404)
        with self.project.registry() as registry, registry.transaction() as conn:
            reviewer = self._reviewer(registry, review_id, token)
            if conn.execute(
                "SELECT 1 FROM review_choices WHERE reviewer_id = ? AND position = ?",
                (reviewer["id"], position),
            ).fetchone():
                raise ReviewError(
                    f"item {position + 1} already has your choice",
                    hint="undo it first to choose again",
                    status=409,
                )
            seq = conn.execute(
                "SELECT coalesce(max(seq), 0) + 1 FROM review_choices WHERE reviewer_id = ?",
                (reviewer["id"],),
            ).fetchone()[0]
            left = left_arm(reviewer["sides_seed"], position)
            conn.execute(
                "INSERT INTO review_choices (id, review_id, reviewer_id, position, seq, left_arm, choice, outcome,"
                " comment, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    _new_id("rc"),
                    review_id,
                    reviewer["id"],
                    position,
                    seq,
                    left,
                    choice,
                    outcome_of(choice, left),
                    comment,
                    utc_now(),
                ),
            )
        return self.state(review_id, token)

    def undo(self, review_id: str, token: str) -> dict[str, Any]:
        """Take back the reviewer's last choice; its item is the next one shown again."""
        with self.project.registry() as registry, registry.transaction() as conn:
            reviewer = self._reviewer(registry, review_id, token)
            last = conn.execute(
                "SELECT id FROM review_choices WHERE reviewer_id = ? ORDER BY seq DESC LIMIT 1",
                (reviewer["id"],),
            ).fetchone()
            if last is None:
                raise ReviewError("nothing to undo", status=409)
            conn.execute("DELETE FROM review_choices WHERE id = ?", (last["id"],))
        return self.state(review_id, token)


def _task_text(project: Project, run: Any) -> str:
    """What reviewers are told the answers are for: the spec's behavioural target, else the task's name."""
    from tunewise.spec import load_spec

    if not project.spec_path.is_file():
        return str(run.name or "the task")
    try:
        return load_spec(project.spec_path).task.target
    except TunewiseError:  # a spec that no longer loads: the task's name still tells reviewers something
        return str(run.name or "the task")


def review_outcomes(choices: Sequence[dict[str, Any]]) -> dict[int, list[str]]:
    """Outcomes per item position."""
    per_item: dict[int, list[str]] = {}
    for c in choices:
        per_item.setdefault(int(c["position"]), []).append(c["outcome"])
    return per_item


def item_outcomes(choices: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Each reviewed example's outcome, by majority of its reviewers (`stats.majority`)."""
    per_item: dict[str, list[str]] = {}
    for c in choices:
        per_item.setdefault(str(c["example_id"]), []).append(c["outcome"])
    return {i: stats.majority(o) for i, o in per_item.items()}
