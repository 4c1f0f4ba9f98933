"""A pairwise model judge of free-text answers, asked in both orders.

For each held-out example the judge sees the task, the rubric (the spec's `evaluation.judge.rubric`, else one
built from `task.target`), the reference answer and two answers labelled A and B, and answers "A", "B" or "tie".
Judges prefer whichever answer comes first (or second) often enough to decide close calls by position, so each
pair is asked twice, once in each order: an arm wins only when both orders pick it, anything else is a tie. An
answer the judge gives that names no letter (or a request that failed) leaves the pair unjudged, stored without
an outcome, and the next run asks it again; pairs already judged are never asked twice.

The judge is any engine with the evaluation engines' `generate(prompts, max_new_tokens, temperature)`: the local
base model (`local`) or an endpoint of `evaluation.endpoints`. Its tokens go to the registry's model calls under
the evaluation run, as every other model call does, so the judge's cost is counted with the arms'.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.project import Project

__all__ = ["combine", "default_rubric", "judge_messages", "parse_choice", "run_judge"]

# "A", "B" or "tie" and a few characters of slack (a period, quotes); longer answers are parsed for their first word.
JUDGE_MAX_NEW_TOKENS = 8


def default_rubric(target: str) -> str:
    """The rubric used when the spec gives none.

    >>> default_rubric("Reply to a customer in the house style.")[:40]
    'The better answer does what the task ask'
    """
    return (
        f"The better answer does what the task asks ({target.strip().rstrip('.')}): it is correct and "
        "complete, follows the reference answer's content, tone and structure, and adds nothing false."
    )


def judge_messages(
    task: str, rubric: str, question: str, reference: str, first: str, second: str
) -> list[dict]:
    """The chat the judge answers: one user message, the two answers as A (shown first) and B."""
    return [
        {
            "role": "user",
            "content": (
                f"You compare two answers to the same request.\n\nTask: {task}\nRubric: {rubric}\n\n"
                f"Request:\n{question}\n\nReference answer:\n{reference}\n\n"
                f"Answer A:\n{first}\n\nAnswer B:\n{second}\n\n"
                "Which answer is better under the rubric? Reply with exactly one word: A, B, or tie."
            ),
        }
    ]


def parse_choice(text: str) -> str | None:
    """The judge's answer: 'A', 'B', 'tie', or None when it names none of them (or more than one).

    >>> parse_choice("A"), parse_choice(" b."), parse_choice("Tie"), parse_choice("**Answer B**")
    ('A', 'B', 'tie', 'B')
    >>> parse_choice("I cannot decide"), parse_choice("A or B"), parse_choice("")
    (None, None, None)
    """
    words = re.findall(r"[A-Za-z]+", text or "")
    found = {w.upper() if len(w) == 1 else w.lower() for w in words}
    picks = [c for c in ("A", "B", "tie") if c in found]
    return picks[0] if len(picks) == 1 else None


def combine(first: str | None, second: str | None) -> str | None:
    """The pair's outcome from both orders. `first`: arm a shown as A; `second`: arm b shown as A. An arm wins only
    when both orders pick it; any other pair of answers is a tie; None when either order gave no answer.

    >>> combine("A", "B"), combine("B", "A"), combine("A", "A"), combine("tie", "B"), combine(None, "B")
    ('a', 'b', 'tie', 'tie', None)
    """
    if first is None or second is None:
        return None
    if first == "A" and second == "B":
        return "a"
    if first == "B" and second == "A":
        return "b"
    return "tie"


def run_judge(
    project: Project,
    eval_run: str,
    arms: Sequence[str],
    engine: Any,
    judge_name: str,
    task: str,
    rubric: str | None = None,
    narrate: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Judge arm a against arm b on every example both answered in `eval_run`; returns the counts and the judge's
    win rate for a (`review.results.judge_comparison`)."""
    from tunewise.fileio import read_jsonl
    from tunewise.registry.db import utc_now
    from tunewise.registry.runs import ModelCall, RunStore
    from tunewise.review.results import judge_comparison

    a, b = arms
    runs = RunStore(project)
    run = runs.get(eval_run, kinds=("eval",))
    records = read_jsonl(run.path / "records.jsonl")
    by_arm: dict[str, dict[str, Mapping[str, Any]]] = {}
    for r in records:
        by_arm.setdefault(str(r["arm"]), {})[str(r["id"])] = r
    missing = [x for x in (a, b) if x not in by_arm]
    if missing:
        raise TunewiseError(
            f"evaluation {run.id} has no arm {', '.join(missing)}", hint=f"its arms: {', '.join(by_arm)}"
        )
    with project.registry() as registry:
        done = {
            r[0]
            for r in registry.conn.execute(
                "SELECT example_id FROM judgements WHERE eval_run = ? AND arm_a = ? AND arm_b = ? AND judge = ?"
                " AND outcome IS NOT NULL",
                (run.id, a, b, judge_name),
            )
        }
    ids = [i for i in by_arm[a] if i in by_arm[b] and i not in done]
    rubric = rubric or default_rubric(task)
    prompts = []
    for i in ids:
        ra, rb = by_arm[a][i], by_arm[b][i]
        question, reference = str(ra["input"]), str(ra["reference"])
        prompts.append(
            judge_messages(task, rubric, question, reference, str(ra["output"]), str(rb["output"]))
        )
        prompts.append(
            judge_messages(task, rubric, question, reference, str(rb["output"]), str(ra["output"]))
        )
    if narrate:
        narrate(f"judge {judge_name}: {len(ids)} pairs, both orders ({len(done)} judged before)")
    generations = (
        engine.generate(prompts, max_new_tokens=JUDGE_MAX_NEW_TOKENS, temperature=0.0) if ids else []
    )
    rows, calls, unusable = [], [], []
    for k, i in enumerate(ids):
        g1, g2 = generations[2 * k], generations[2 * k + 1]
        first = parse_choice(g1.text) if g1.finish_reason != "error" else None
        second = parse_choice(g2.text) if g2.finish_reason != "error" else None
        if first is None or second is None:
            unusable.append((i, g1.text if first is None else g2.text))
        rows.append(
            (
                f"jg-{secrets.token_hex(8)}",
                run.id,
                a,
                b,
                i,
                judge_name,
                first,
                second,
                combine(first, second),
                g1.prompt_tokens + g2.prompt_tokens,
                g1.completion_tokens + g2.completion_tokens,
                utc_now(),
            )
        )
        for n, g in enumerate((g1, g2)):
            calls.append(
                ModelCall(f"judge:{judge_name}", i, n, g.prompt_tokens, g.completion_tokens, g.latency_ms)
            )
    with project.registry() as registry:
        with registry.transaction() as conn:
            # An unjudged pair from an earlier run is replaced; a judged one was never asked again.
            conn.executemany(
                "DELETE FROM judgements WHERE eval_run = ? AND arm_a = ? AND arm_b = ? AND example_id = ?"
                " AND judge = ?",
                [(run.id, a, b, i, judge_name) for i in ids],
            )
            conn.executemany(
                "INSERT INTO judgements (id, eval_run, arm_a, arm_b, example_id, judge, first, second, outcome,"
                " prompt_tokens, completion_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
    runs.log_calls(run, calls)
    if ids and len(unusable) == len(ids):
        example, text = unusable[0]
        raise TunewiseError(
            f"the judge {judge_name} gave no usable answer on any of {len(ids)} pairs "
            f"(example {example} got {text[:80]!r})",
            hint="the judge must answer A, B or tie; use a stronger instruction-following model, or check the "
            "endpoint",
        )
    summary = judge_comparison(project, run.id, a, b) or {}
    return {
        "eval_run": run.id,
        "arms": [a, b],
        "judge": judge_name,
        "asked": len(ids),
        "unusable_now": len(unusable),
        "judged_before": len(done),
        "prompt_tokens": sum(r[9] for r in rows),
        "completion_tokens": sum(r[10] for r in rows),
        **{k: v for k, v in summary.items() if k in ("preference", "reading", "unusable", "judged")},
    }


def judge_engine(project: Project, spec: Any) -> tuple[Any, str]:
    """(engine, name) of the spec's judge: the local base model or an endpoint of evaluation.endpoints."""
    judge = spec.evaluation.judge
    model = judge.model if judge is not None else "local"
    if model == "local":
        from tunewise.evaluate.engine import LocalEngine
        from tunewise.models.loading import load_model, load_tokenizer

        tokenizer = load_tokenizer(spec.model.base, spec.model.trust_remote_code)
        engine = LocalEngine(
            load_model(spec.model.base, tokenizer=tokenizer, trust_remote_code=spec.model.trust_remote_code),
            tokenizer,
        )
        return engine, f"local:{spec.model.base}"
    from tunewise.evaluate.run import endpoint_engine

    endpoint = next(e for e in spec.evaluation.endpoints if e.name == model)
    return endpoint_engine(endpoint), f"{endpoint.name}:{endpoint.model}"
