"""Run every arm on the same held-out examples and record what happened.

    zero-shot / few-shot / retrieved   the base model, prompted (evaluate/arms.py)
    fine-tuned                         a training run's adapter merged into the base (or its full model)

Each arm answers every held-out example once, greedily (the scored answer), and `consistency_samples` more
times at `temperature` (the consistency rate). Every model call is logged in the registry (tokens, latency);
per-example records and the summary are written to the run directory and the registry, so the report, the
review pages and the verdict read them later.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunewise.data.formats import completion
from tunewise.errors import TunewiseError
from tunewise.evaluate.arms import PROMPTED_ARMS, build_prompters, query_messages
from tunewise.project import Project, atomic_write_text
from tunewise.spec import Spec

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    run_id: str
    run_dir: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(repr=False, default_factory=list)


def auto_max_new_tokens(references: list[str], count: Callable[[list[str]], list[int]]) -> int:
    """Room for the longest reference answer plus a margin, so a correct answer is never cut off:
    1.25 x the longest reference in tokens + 8, between 16 and 512.

    >>> auto_max_new_tokens(["a b c"], lambda xs: [len(x.split()) for x in xs])
    16
    >>> auto_max_new_tokens(["w " * 100], lambda xs: [len(x.split()) for x in xs])
    133
    """
    longest = max(count(references), default=0)
    return int(min(512, max(16, longest * 1.25 + 8)))


def _new_run_id() -> str:
    return f"eval-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_fine_tuned(project: Project, run: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, run config) of a finished training run: LoRA adapters are merged into the base, so
    the fine-tuned arm decodes as fast as the base model."""
    from tunewise.models.loading import load_model, load_tokenizer
    from tunewise.train.records import find_run_dir, read_json

    run_dir = find_run_dir(project, run)
    config = read_json(run_dir / "config.json")
    result_path = run_dir / "result.json"
    result = read_json(result_path) if result_path.is_file() else {}
    if result.get("status") not in (None, "succeeded"):
        raise TunewiseError(
            f"training run {run_dir.name} did not succeed ({result.get('status')})",
            hint="resume it with `tunewise train --resume RUN` or train again",
        )
    asked = config.get("config", config)
    base = asked.get("base")
    tokenizer = load_tokenizer(base, asked.get("trust_remote_code", False))
    if (run_dir / "adapter").is_dir():
        from peft import PeftModel

        model = load_model(
            base,
            tokenizer=tokenizer,
            seed=asked.get("seed", 0),
            trust_remote_code=asked.get("trust_remote_code", False),
        )
        model = PeftModel.from_pretrained(model, str(run_dir / "adapter")).merge_and_unload()
    elif (run_dir / "model").is_dir():
        model = load_model(str(run_dir / "model"))
    else:
        raise TunewiseError(
            f"training run {run_dir.name} has no adapter/ or model/ folder", hint="train again"
        )
    model.eval()
    return model, tokenizer, {"run_id": run_dir.name, "run_dir": str(run_dir), "base": base}


def run_evaluation(
    spec: Spec,
    project: Project,
    train: list[dict],
    held_out: list[dict],
    arms: list[str],
    fine_tuned_run: str | None = None,
    dataset_version: str | None = None,
    narrate: Callable[[str], None] | None = None,
    seed: int = 0,
) -> EvalResult:
    from tunewise.evaluate.engine import LocalEngine
    from tunewise.evaluate.summary import build_summary
    from tunewise.models.loading import load_model, load_tokenizer

    say = narrate or log.info
    unknown = [a for a in arms if a not in (*PROMPTED_ARMS, "fine-tuned")]
    if unknown:
        raise TunewiseError(
            f"unknown arm(s): {', '.join(unknown)}", hint="use zero-shot, few-shot, retrieved, fine-tuned"
        )
    if "fine-tuned" in arms and not fine_tuned_run:
        raise TunewiseError(
            "the fine-tuned arm needs a training run", hint="pass fine-tuned:RUN_ID, or train first"
        )
    if spec.evaluation.limit:
        held_out = held_out[: spec.evaluation.limit]
    if not held_out:
        raise TunewiseError("no held-out examples to evaluate on", hint="set data.eval or data.eval_fraction")
    base = spec.model.base
    tokenizer = load_tokenizer(base, spec.model.trust_remote_code)

    def count_tokens(messages: list[dict]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompters = build_prompters(spec, train, count_tokens, seed)
    references = [completion(ex["messages"]) or "" for ex in held_out]
    if spec.evaluation.max_new_tokens == "auto":
        train_refs = [completion(ex["messages"]) or "" for ex in train] or references
        max_new = auto_max_new_tokens(
            train_refs, lambda xs: [len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in xs]
        )
    else:
        max_new = spec.evaluation.max_new_tokens
    n_samples = spec.evaluation.consistency_samples
    contract = spec.contract.model_dump(by_alias=True)

    run_id = _new_run_id()
    run_dir = project.runs_dir / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "arms": arms,
        "fine_tuned_run": fine_tuned_run,
        "base": base,
        "max_new_tokens": max_new,
        "consistency_samples": n_samples,
        "temperature": spec.evaluation.temperature,
        "n_examples": len(held_out),
        "dataset_version": dataset_version,
        "seed": seed,
    }
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    registry = project.registry()
    with registry.transaction() as conn:
        conn.execute(
            "INSERT INTO runs (id, kind, status, created_at, finished_at, dataset_version, config, result, path)"
            " VALUES (?, 'eval', 'running', ?, NULL, NULL, ?, NULL, ?)",
            (run_id, _utc_now(), json.dumps(config), str(run_dir)),
        )
    records: list[dict[str, Any]] = []
    arm_info: dict[str, dict[str, Any]] = {}
    calls: list[tuple] = []
    try:
        base_engine = None
        for arm in arms:
            if arm == "fine-tuned":
                model, tok, info = load_fine_tuned(project, fine_tuned_run)
                engine = LocalEngine(model, tok)
                name = "fine-tuned"
                arm_info[name] = {"kind": "fine-tuned", "constrained": False, "run": info["run_id"]}
            else:
                if base_engine is None:
                    base_engine = LocalEngine(
                        load_model(
                            base,
                            tokenizer=tokenizer,
                            seed=seed,
                            trust_remote_code=spec.model.trust_remote_code,
                        ),
                        tokenizer,
                    )
                engine = base_engine
                name = arm
                arm_info[name] = {"kind": "prompted", "constrained": False}
            prompter = prompters[arm]
            prompts = [prompter.messages(ex) for ex in held_out]
            say(
                f"{name}: {len(prompts)} prompts, greedy"
                + (f" + {n_samples} samples each" if n_samples > 1 else "")
            )
            answers = engine.generate(prompts, max_new_tokens=max_new, seed=seed)
            samples = (
                engine.sample(
                    prompts,
                    n_samples,
                    temperature=spec.evaluation.temperature,
                    seed=seed,
                    max_new_tokens=max_new,
                )
                if n_samples > 1
                else [[] for _ in prompts]
            )
            for i, (ex, answer, extra) in enumerate(zip(held_out, answers, samples)):
                records.append(
                    {
                        "id": str(i),
                        "input": "\n".join(m["content"] for m in query_messages(ex)),
                        "reference": references[i],
                        "arm": name,
                        "output": answer.text,
                        "samples": [g.text for g in extra],
                        "latency_ms": answer.latency_ms,
                        "prompt_tokens": answer.prompt_tokens,
                        "completion_tokens": answer.completion_tokens,
                        "finish_reason": answer.finish_reason,
                    }
                )
                now = _utc_now()
                calls.append(
                    (
                        run_id,
                        name,
                        str(i),
                        0,
                        answer.prompt_tokens,
                        answer.completion_tokens,
                        answer.latency_ms,
                        now,
                    )
                )
                calls.extend(
                    (run_id, name, str(i), j + 1, g.prompt_tokens, g.completion_tokens, g.latency_ms, now)
                    for j, g in enumerate(extra)
                )
        summary = build_summary(records, contract, task=spec.task.name, arm_info=arm_info, seed=seed)
        summary["run_id"] = run_id
        summary["max_new_tokens"] = max_new
        atomic_write_text(
            run_dir / "records.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        )
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        result = {"status": "succeeded", "summary": str(run_dir / "summary.json")}
        with registry.transaction() as conn:
            conn.executemany(
                "INSERT INTO model_calls (run_id, arm, example_id, sample, prompt_tokens, completion_tokens, latency_ms, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                calls,
            )
            conn.execute(
                "INSERT INTO evaluations VALUES (?, ?, ?, ?)",
                (run_id, dataset_version, json.dumps(arms), json.dumps(summary)),
            )
            conn.execute(
                "UPDATE runs SET status='succeeded', finished_at=?, result=? WHERE id=?",
                (_utc_now(), json.dumps(result), run_id),
            )
    except BaseException as exc:
        status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
        result = {"status": status, "error": str(exc) or type(exc).__name__}
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
        with registry.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status=?, finished_at=?, result=? WHERE id=?",
                (status, _utc_now(), json.dumps(result), run_id),
            )
        registry.close()
        raise
    atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
    registry.close()
    return EvalResult(run_id, run_dir, summary, records)
