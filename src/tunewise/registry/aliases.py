"""Model aliases: the names `tunewise serve` answers with a chosen run, and the log of who changed them.

`promote(registry, "support", run_id, by="ana")` makes the model name `support` answer with that training run
(or fine-tuning job); `rollback(registry, "support", by="ana")` returns it to the run it answered with before.
Every change is a row of `model_aliases` (migration 010), never edited afterwards: who, when, from which run to
which, the verdict the run was judged by and, for a promotion that overrode that verdict, the reason given.

The current run of a name is found by replaying its log: a promotion pushes its run, a rollback pops the top, so
promote A, promote B, promote C, rollback, rollback leaves A (not a toggle between the last two). A promotion
of a run whose pipeline verdict said not to fine-tune ("keep prompting", "use RAG", "not yet") is refused
unless forced, and a forced promotion needs its reason.

The functions take an open `Registry` and do their writes in one transaction; the server reads `current` on
every request, so a change takes effect on the next request without a restart.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.registry.db import Registry, utc_now

# Verdicts under which a fine-tuned model is the recommendation (decide/verdict.py's RECOMMENDATIONS).
FINE_TUNE_VERDICTS = ("fine-tune", "RAG + fine-tuning")
PROMOTABLE_KINDS = ("train", "job")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")


def check_name(name: str) -> str:
    """An alias name as clients will send it, or a TunewiseError saying what a name may hold.

    >>> check_name("support-bot")
    'support-bot'
    >>> check_name("ft:gpt")
    Traceback (most recent call last):
    ...
    tunewise.errors.TunewiseError: alias name 'ft:gpt' is not a valid model name
      hint: use letters, digits, '.', '_', '-' and '/', starting with a letter or digit; 'ft:' names belong to jobs
    """
    if not NAME_PATTERN.match(name or ""):
        raise TunewiseError(
            f"alias name '{name}' is not a valid model name",
            hint="use letters, digits, '.', '_', '-' and '/', starting with a letter or digit; "
            "'ft:' names belong to jobs",
        )
    return name


def replay(events: list[dict[str, Any]]) -> list[str]:
    """The stack of runs a name's log leaves, oldest first (the current run last).

    >>> replay([{"action": "promote", "run_id": "a"}, {"action": "promote", "run_id": "b"},
    ...         {"action": "promote", "run_id": "c"}, {"action": "rollback", "run_id": "b"},
    ...         {"action": "rollback", "run_id": "a"}])
    ['a']
    >>> replay([{"action": "promote", "run_id": "a"}, {"action": "promote", "run_id": "a"}])
    ['a', 'a']
    """
    stack: list[str] = []
    for event in events:
        if event["action"] == "promote":
            stack.append(event["run_id"])
        elif stack:
            stack.pop()
    return stack


def history(registry: Registry, name: str) -> list[dict[str, Any]]:
    """Every change of `name`, oldest first: seq, action, run_id, previous_run_id, changed_by, changed_at,
    verdict, forced (bool), reason."""
    rows = registry.conn.execute(
        "SELECT id, name, seq, action, run_id, previous_run_id, changed_by, changed_at, verdict, forced, reason"
        " FROM model_aliases WHERE name=? ORDER BY seq",
        (name,),
    ).fetchall()
    return [{**dict(r), "forced": bool(r["forced"])} for r in rows]


def current(registry: Registry, name: str) -> dict[str, Any] | None:
    """The run `name` answers with now, or None when the name was never promoted: name, run_id, since (when it
    became current), changed_by, verdict, forced, reason (of the change that made it current), changes."""
    events = history(registry, name)
    stack = replay(events)
    if not stack:
        return None
    last = events[-1]
    return {
        "name": name,
        "run_id": stack[-1],
        "since": last["changed_at"],
        "changed_by": last["changed_by"],
        "action": last["action"],
        "verdict": last["verdict"],
        "forced": last["forced"],
        "reason": last["reason"],
        "changes": len(events),
        "previous_run_id": stack[-2] if len(stack) > 1 else None,
    }


def list_aliases(registry: Registry) -> list[dict[str, Any]]:
    """Every alias with a current run, by name (each as `current` returns it)."""
    names = [r[0] for r in registry.conn.execute("SELECT DISTINCT name FROM model_aliases ORDER BY name")]
    out = [current(registry, n) for n in names]
    return [a for a in out if a is not None]


def verdict_for(registry: Registry, run_id: str) -> str | None:
    """The recommendation of the pipeline verdict that judged the training run `run_id`, or None when no
    pipeline trained it (a run trained by `tunewise train`, a job) or none reached a verdict after it.

    The pipeline's stages are recorded in `pipeline_stages` with their outputs: the train stage names its run,
    and the verdicts that judged it are those recorded after that training started and before the next one
    did. The latest of them is in force (a later `tunewise run` may have judged the same run again)."""
    rows = registry.conn.execute(
        "SELECT stage, started_at, output FROM pipeline_stages"
        " WHERE stage IN ('train', 'verdict') AND status='succeeded' ORDER BY started_at"
    ).fetchall()
    verdict, judging = None, False
    for row in rows:
        output = json.loads(row["output"]) if row["output"] else {}
        if row["stage"] == "train" and output.get("run_id"):
            judging = output["run_id"] == run_id
        elif row["stage"] == "verdict" and judging and output.get("recommendation"):
            verdict = output["recommendation"]
    return verdict


def _promotable_run(registry: Registry, run_id: str) -> dict[str, Any]:
    row = registry.conn.execute("SELECT id, kind, status FROM runs WHERE id=?", (run_id,)).fetchone()
    if row is None:
        raise TunewiseError(f"no run '{run_id}' in the registry", hint="list the runs with `tunewise runs`")
    if row["kind"] not in PROMOTABLE_KINDS:
        raise TunewiseError(
            f"run {run_id} is a {row['kind']} run: only a training run or a fine-tuning job has a model to serve",
            hint="list them with `tunewise runs --kind train`",
        )
    if row["status"] != "succeeded":
        raise TunewiseError(
            f"run {run_id} {row['status']}: only a run that succeeded can be promoted",
            hint="resume it with `tunewise train --resume RUN` or pick another run",
        )
    return dict(row)


def _record(
    registry: Registry,
    name: str,
    action: str,
    run_id: str,
    previous: str | None,
    *,
    by: str,
    verdict: str | None = None,
    forced: bool = False,
    reason: str | None = None,
    expected_seq: int,
) -> dict[str, Any]:
    event = {
        "id": "alias-" + secrets.token_hex(8),
        "name": name,
        "seq": expected_seq,
        "action": action,
        "run_id": run_id,
        "previous_run_id": previous,
        "changed_by": by,
        "changed_at": utc_now(),
        "verdict": verdict,
        "forced": forced,
        "reason": reason,
    }
    with registry.transaction() as conn:
        # The log may have grown since it was read (another writer): the unique (name, seq) would catch a
        # collision, but saying so plainly is kinder than an IntegrityError.
        seq = conn.execute(
            "SELECT coalesce(max(seq), 0) FROM model_aliases WHERE name=?", (name,)
        ).fetchone()[0]
        if seq + 1 != expected_seq:
            raise TunewiseError(
                f"alias '{name}' changed while this change was being made", hint="look at it again and retry"
            )
        conn.execute(
            "INSERT INTO model_aliases (id, name, seq, action, run_id, previous_run_id, changed_by, changed_at,"
            " verdict, forced, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*[event[k] for k in ("id", "name", "seq", "action", "run_id", "previous_run_id", "changed_by")],
             event["changed_at"], verdict, int(forced), reason),
        )  # fmt: skip
    return event


def promote(
    registry: Registry,
    name: str,
    run_id: str,
    *,
    by: str,
    reason: str | None = None,
    force: bool = False,
    verdict: str | None = None,
) -> dict[str, Any]:
    """Make `name` answer with the run `run_id` (a training run or a fine-tuning job that succeeded); returns
    the recorded change. `verdict` is the recommendation the run was judged by when the caller has it (a
    retraining gate); otherwise the pipeline verdict that judged the run, if any. A verdict other than
    fine-tuning refuses the promotion unless `force`, and a forced one needs a `reason`."""
    check_name(name)
    if not by:
        raise TunewiseError("a promotion needs who made it", hint="pass by=<user name>")
    _promotable_run(registry, run_id)
    verdict = verdict if verdict is not None else verdict_for(registry, run_id)
    against = verdict is not None and verdict not in FINE_TUNE_VERDICTS
    if against and not force:
        raise TunewiseError(
            f"run {run_id} was judged '{verdict}': the verdict said not to serve a fine-tuned model",
            hint="promote it anyway with --force --reason '...' (the reason is recorded), or fix what "
            "`tunewise run` reported and train again",
        )
    if against and not (reason or "").strip():
        raise TunewiseError(
            f"promoting run {run_id} against its verdict '{verdict}' needs a reason",
            hint="add --reason '...': it is recorded with the promotion",
        )
    events = history(registry, name)
    stack = replay(events)
    previous = stack[-1] if stack else None
    return _record(
        registry, name, "promote", run_id, previous, by=by, verdict=verdict, forced=against,
        reason=reason, expected_seq=len(events) + 1,
    )  # fmt: skip


def rollback(registry: Registry, name: str, *, by: str) -> dict[str, Any]:
    """Return `name` to the run it answered with before its last promotion still in force; returns the
    recorded change. A name with one promotion has nothing to return to: that is an error, not an empty alias."""
    if not by:
        raise TunewiseError("a rollback needs who made it", hint="pass by=<user name>")
    events = history(registry, name)
    stack = replay(events)
    if not stack:
        raise TunewiseError(
            f"no alias '{name}'",
            hint="list the aliases with `tunewise aliases`; make one with `tunewise promote RUN --as NAME`",
        )
    if len(stack) < 2:
        raise TunewiseError(
            f"alias '{name}' has no earlier run to return to (it answers with {stack[-1]}, its first promotion)",
            hint="promote another run instead",
        )
    return _record(registry, name, "rollback", stack[-2], stack[-1], by=by, expected_seq=len(events) + 1)
