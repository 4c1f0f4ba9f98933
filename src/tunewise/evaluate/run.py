"""Run every arm on the same held-out examples and record what happened.

    zero-shot / few-shot / retrieved   the base model, prompted (evaluate/arms.py)
    fine-tuned                         a training run's adapter merged into the base (or its full model)
    rag / rag+fine-tuned               the zero-shot / fine-tuned prompt with the top_k passages retrieved from
                                       the spec's knowledge documents (evaluate/knowledge.py); retrieval runs
                                       once per held-out question and every rag arm reads the same passages

Each arm answers every held-out example once, greedily (the scored answer), and `consistency_samples` more
times at `temperature` (the consistency rate).

Variants that meet the contract by construction (evaluate/constrain.py) run next to their free arm, on the
same prompts: `ARM+scored` ranks a label contract's labels by likelihood, `ARM+constrained` decodes under the
JSON Schema or regex. `evaluation.constrained` (auto: the prompted arms; true: the fine-tuned arm too; false:
none) adds them; an arm list may also name them (`few-shot+scored`). A scored arm's consistency samples are
labels drawn from its label scores at `temperature` (see `constrain.label_samples`).

The evaluation is a run of the run store (kind 'eval'): per-example records (`records.jsonl`) and the summary
(`summary.json`) are written to its folder, every model call (tokens, latency) to the registry, and each arm's
accuracy to the run's key figures (`tunewise runs`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.data.formats import completion
from tunewise.errors import TunewiseError
from tunewise.evaluate.arms import (
    PROMPTED_ARMS,
    RAG_TUNED_ARM,
    build_prompters,
    is_rag_arm,
    is_tuned_arm,
    query_messages,
)
from tunewise.evaluate.constrain import (
    CONSTRAINED,
    SCORED,
    constraint_for_contract,
    label_samples,
    split_arm,
    variant_for_contract,
)
from tunewise.project import Project
from tunewise.registry.runs import ModelCall, RunStore, eval_figures
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


def plan_arms(
    arms: list[str], contract: Any, constrained: str | bool = "auto", endpoints: Collection[str] = ()
) -> list[str]:
    """The arms to run, in order: each asked arm, then its contract-meeting variant when `constrained` says
    (auto: prompted arms; True: the fine-tuned arm too; False: none; never endpoints, whose logits we do not
    see). Variants named explicitly are kept; unknown arms and a variant the contract does not allow are errors.

    >>> plan_arms(["zero-shot", "fine-tuned"], {"type": "label", "labels": ["a", "b"]})
    ['zero-shot', 'zero-shot+scored', 'fine-tuned']
    >>> plan_arms(["few-shot", "fine-tuned"], {"type": "json"}, constrained=True)
    ['few-shot', 'few-shot+constrained', 'fine-tuned', 'fine-tuned+constrained']
    >>> plan_arms(["few-shot"], {"type": "text"})
    ['few-shot']
    """
    allowed = variant_for_contract(contract)
    local = [a for a in arms if a not in endpoints]
    unknown = [a for a in local if split_arm(a)[0] not in (*PROMPTED_ARMS, "fine-tuned", RAG_TUNED_ARM)]
    if unknown:
        raise TunewiseError(
            f"unknown arm(s): {', '.join(unknown)}",
            hint="use zero-shot, few-shot, retrieved, rag, fine-tuned, rag+fine-tuned (optionally +scored for a "
            "label contract, +constrained for json or regex), or an endpoint named in evaluation.endpoints",
        )
    bad = [a for a in local if split_arm(a)[1] not in (None, allowed)]
    if bad:
        kind = contract.get("type") if isinstance(contract, dict) else getattr(contract, "type", "text")
        raise TunewiseError(
            f"arm(s) {', '.join(bad)} do not fit a {kind} contract",
            hint=f"use +{allowed}" if allowed else "a text contract has no format to enforce",
        )
    planned: list[str] = []
    for arm in arms:
        planned.append(arm)
        base, variant = split_arm(arm)
        wanted = constrained is True or (constrained == "auto" and not is_tuned_arm(base))
        if arm not in endpoints and variant is None and allowed and wanted:
            planned.append(f"{base}+{allowed}")
    return list(dict.fromkeys(planned))


def load_fine_tuned(project: Project, run: str, base: str | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, its source) of a finished training run or of a PEFT adapter folder trained anywhere
    (its base from its adapter_config.json, else `base`: `evaluate.arms.find_fine_tuned`). LoRA adapters are
    merged into the base, so the fine-tuned arm decodes as fast as the base model."""
    from tunewise.evaluate.arms import find_fine_tuned
    from tunewise.models.loading import load_adapter_model, load_model, load_tokenizer

    tuned = find_fine_tuned(project, run, base)
    assert tuned.base is not None
    tokenizer = load_tokenizer(tuned.base, tuned.trust_remote_code)
    if tuned.kind == "adapter":
        model = load_adapter_model(tuned.folder, tuned.base, tokenizer, tuned.trust_remote_code, tuned.seed)
    else:
        model = load_model(str(tuned.folder))
    model.eval()
    run_dir = str(tuned.run_dir) if tuned.run_dir is not None else None
    # A run trained with passages in its prompts (the pipeline's rag+fine-tuned run) says so beside its weights.
    retrieval = tuned.run_dir / "retrieval.json" if tuned.run_dir is not None else None
    trained_with = (
        json.loads(retrieval.read_text()) if retrieval is not None and retrieval.is_file() else None
    )
    return (
        model,
        tokenizer,
        {
            "run_id": tuned.name,
            "run_dir": run_dir,
            "base": tuned.base,
            "folder": str(tuned.folder),
            "trained_with_retrieval": trained_with,
        },
    )


def endpoint_engine(endpoint: Any) -> Any:
    """The engine that asks an `evaluation.endpoints` entry of the spec (an OpenAI-compatible server)."""
    from tunewise.evaluate.endpoint import EndpointConfig, EndpointEngine

    return EndpointEngine(
        EndpointConfig(
            name=endpoint.name,
            base_url=endpoint.base_url,
            model=endpoint.model,
            api_key_env=endpoint.api_key_env,
            concurrency=endpoint.concurrency,
            timeout_s=endpoint.timeout_s,
            max_retries=endpoint.max_retries,
        )
    )


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
    retriever: Any | None = None,
    rag_fine_tuned_run: str | None = None,
    progress: Any | None = None,
) -> EvalResult:
    """Every arm on `held_out`. `fine_tuned_run` is the training run of the fine-tuned arms,
    `rag_fine_tuned_run` the one of `rag+fine-tuned` when it differs (a run trained with passages; default
    `fine_tuned_run`). `retriever` (a `tunewise.rag.passages.Retriever`) serves the rag arms; None opens the
    spec's knowledge index. `progress` (a `tunewise.pipeline.progress.NullProgress`) gets each generated
    arm's rows answered, tokens/s and time left."""
    from tunewise.evaluate.engine import ArmRequest, LocalEngine
    from tunewise.evaluate.knowledge import (
        PassageCache,
        meta_for,
        open_knowledge,
        passage_records,
        question_of,
        with_passages,
    )
    from tunewise.evaluate.summary import build_summary
    from tunewise.models.loading import load_model, load_tokenizer
    from tunewise.runtime import tune_process

    tune_process()  # before any weight is loaded: oneDNN reads its cache sizes once

    say = narrate or log.info
    endpoints = {e.name: e for e in spec.evaluation.endpoints}
    arms = plan_arms(list(arms), spec.contract, spec.evaluation.constrained, endpoints)
    rag_fine_tuned_run = rag_fine_tuned_run or fine_tuned_run
    for a in arms:
        if (
            a not in endpoints
            and is_tuned_arm(a)
            and not (rag_fine_tuned_run if is_rag_arm(a) else fine_tuned_run)
        ):
            raise TunewiseError(
                f"the {split_arm(a)[0]} arm needs a training run",
                hint=f"pass {split_arm(a)[0]}:RUN_ID, or train first",
            )
    if spec.evaluation.limit:
        held_out = held_out[: spec.evaluation.limit]
    if not held_out:
        raise TunewiseError("no held-out examples to evaluate on", hint="set data.eval or data.eval_fraction")
    cache = None
    if any(a not in endpoints and is_rag_arm(a) for a in arms):
        if retriever is None:
            retriever = open_knowledge(spec, project.root, project.state_dir)
        top_k = spec.knowledge.top_k if spec.knowledge is not None else 4
        cache = PassageCache(retriever, top_k)
    # Acceptable answers and gold documents (keys on the examples or sidecar files beside the data).
    metas = meta_for(held_out, [project.root / p for p in (*spec.data.eval, *spec.data.train)])
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
    labels = list(contract.get("labels") or [])
    constraint = constraint_for_contract(spec.contract)

    config = {
        "arms": arms,
        "fine_tuned_run": fine_tuned_run,
        "base": base,
        "max_new_tokens": max_new,
        "consistency_samples": n_samples,
        "temperature": spec.evaluation.temperature,
        "n_examples": len(held_out),
        "constrained": spec.evaluation.constrained,
        "dataset_version": dataset_version,
        "seed": seed,
        **({"rag_fine_tuned_run": rag_fine_tuned_run} if rag_fine_tuned_run != fine_tuned_run else {}),
        **({"index_version": cache.version, "top_k": cache.k} if cache is not None else {}),
    }
    store = RunStore(project)
    records: list[dict[str, Any]] = []
    arm_info: dict[str, dict[str, Any]] = {}
    calls: list[ModelCall] = []
    # Finished as failed (or cancelled, on Ctrl-C) with the error when anything below raises.
    with store.recording("eval", config, name=spec.task.name, dataset_versions=[dataset_version]) as record:
        run = record.run
        run_id, run_dir = run.id, run.path
        base_engine = None
        tuned: dict[str, tuple[Any, str, Any]] = {}  # run -> (engine, run id, its retrieval): loaded once
        jobs: list[_Job] = []  # the arms to answer, in order, each with its engine and prompts
        for name in arms:
            # `few-shot+scored` is the few-shot prompt, answered by label scoring (see the module docstring).
            arm, variant = (name, None) if name in endpoints else split_arm(name)
            if arm in ("fine-tuned", RAG_TUNED_ARM):
                ref = rag_fine_tuned_run if arm == RAG_TUNED_ARM else fine_tuned_run
                assert ref is not None
                if ref not in tuned:
                    model, tok, info = load_fine_tuned(project, ref, base)
                    tuned[ref] = (LocalEngine(model, tok), info["run_id"], info.get("trained_with_retrieval"))
                engine, tuned_run, trained_with = tuned[ref]
                arm_info[name] = {"kind": "fine-tuned", "constrained": False, "run": tuned_run}
                if arm == RAG_TUNED_ARM:
                    arm_info[name]["trained_with_retrieval"] = trained_with
                    if trained_with is None:
                        say(f"{name}: run {tuned_run} was trained without passages; it is asked with them")
            elif arm in endpoints:
                engine = endpoint_engine(endpoints[arm])
                name = arm
                arm_info[name] = {
                    "kind": "endpoint",
                    "constrained": False,
                    "model": endpoints[arm].model,
                    "base_url": endpoints[arm].base_url,
                    "prompt": endpoints[arm].prompt,
                    "pricing": endpoints[arm].pricing,
                }
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
                arm_info[name] = {"kind": "prompted", "constrained": False}
            arm_info[name].update(constrained=variant is not None, variant=variant or "free")
            if variant == CONSTRAINED and not engine.can_enforce(constraint):
                say(f"{name}: skipped, the contract's {constraint.kind} cannot be enforced while decoding")
                del arm_info[name]
                continue
            prompter = prompters[endpoints[arm].prompt if arm in endpoints else arm]
            prompts = [prompter.messages(ex) for ex in held_out]
            found: list[list[Any]] = [[] for _ in held_out]
            if cache is not None and arm not in endpoints and is_rag_arm(arm):
                found = [cache(question_of(ex["messages"])) for ex in held_out]
                prompts = [with_passages(p, f) for p, f in zip(prompts, found, strict=True)]
                arm_info[name]["retrieval"] = {
                    "index": cache.version,
                    "top_k": cache.k,
                    "retriever": spec.knowledge.retriever if spec.knowledge is not None else None,
                }
            limit_to: dict[str, Any] = {}
            if variant != SCORED:
                limit_to = {"constraint": constraint} if variant == CONSTRAINED else {}
                # Free local decoding only: a grammar state cannot rewind, an endpoint is not ours to steer.
                guarded = spec.evaluation.json_guard and spec.contract.type == "json" and variant is None
                if guarded and arm not in endpoints:
                    limit_to["json_guard"] = True
                arm_info[name]["json_guard"] = guarded and arm not in endpoints
            jobs.append(_Job(name, arm, variant, engine, prompts, found, limit_to))

        # The generated arms of each local engine are answered together (LocalEngine.generate_arms): a prompt
        # asked by an arm and its constrained variant is prefilled once, and one batch serves all their rows.
        answered: dict[str, tuple[list[Any], list[list[Any]]]] = {}
        together: dict[int, list[_Job]] = {}
        for job in jobs:
            if job.variant != SCORED and hasattr(job.engine, "generate_arms"):
                together.setdefault(id(job.engine), []).append(job)
        for group in together.values():
            engine = group[0].engine
            for job in group:
                say(_generating(job, n_samples, constraint))
            if progress is not None:
                from tunewise.pipeline.progress import ArmMeter

                rows = sum(len(job.prompts) for job in group) * (1 + n_samples * (n_samples > 1))
                engine.progress = ArmMeter(progress, ", ".join(job.name for job in group), rows)
            try:
                results = engine.generate_arms(
                    [
                        ArmRequest(
                            job.prompts,
                            job.limit_to.get("constraint"),
                            job.limit_to.get("json_guard", False),
                        )
                        for job in group
                    ],
                    n_samples,
                    temperature=spec.evaluation.temperature,
                    seed=seed,
                    max_new_tokens=max_new,
                )
            finally:
                engine.progress = None
            answered.update({job.name: result for job, result in zip(group, results, strict=True)})

        for job in jobs:
            name, arm, variant, engine, prompts, found, limit_to = (
                job.name, job.arm, job.variant, job.engine, job.prompts, job.found, job.limit_to
            )  # fmt: skip
            if name in answered:
                answers, samples = answered[name]
            elif variant == SCORED:
                how = spec.evaluation.label_scoring
                say(f"{name}: {len(prompts)} prompts, {len(labels)} labels ranked by likelihood ({how})")
                answers, samples = _score_arm(
                    engine, prompts, labels, n_samples, spec.evaluation.temperature, seed, how == "mean"
                )
            else:
                say(_generating(job, n_samples, constraint))
                if progress is not None and hasattr(engine, "progress"):
                    from tunewise.pipeline.progress import ArmMeter

                    engine.progress = ArmMeter(
                        progress, name, len(prompts) * (1 + n_samples * (n_samples > 1))
                    )
                if n_samples > 1 and hasattr(engine, "generate_with_samples"):
                    # The local engine decodes the greedy answer and the samples from one prefill per prompt.
                    answers, samples = engine.generate_with_samples(
                        prompts,
                        n_samples,
                        temperature=spec.evaluation.temperature,
                        seed=seed,
                        max_new_tokens=max_new,
                        **limit_to,
                    )
                else:
                    answers = engine.generate(prompts, max_new_tokens=max_new, seed=seed, **limit_to)
                    samples = (
                        engine.sample(
                            prompts,
                            n_samples,
                            temperature=spec.evaluation.temperature,
                            seed=seed,
                            max_new_tokens=max_new,
                            **limit_to,
                        )
                        if n_samples > 1
                        else [[] for _ in prompts]
                    )
                if hasattr(engine, "progress"):
                    engine.progress = None
            if arm in endpoints:
                arm_info[name].update(failed_requests=engine.errors, retries=engine.retries)
                if engine.errors:
                    say(
                        f"  {name}: {engine.errors} request(s) still failed after retries; "
                        "their answers count as wrong (finish_reason 'error' in the records)"
                    )
            for i, (ex, answer, extra) in enumerate(zip(held_out, answers, samples)):
                records.append(
                    {
                        "id": str(i),
                        "input": "\n".join(m["content"] for m in query_messages(ex)),
                        "reference": references[i],
                        "arm": name,
                        "kind": arm_info[name]["kind"],
                        "constrained": arm_info[name]["constrained"],
                        "output": answer.text,
                        "samples": [g.text for g in extra],
                        "latency_ms": answer.latency_ms,
                        "prompt_tokens": answer.prompt_tokens,
                        "completion_tokens": answer.completion_tokens,
                        "finish_reason": answer.finish_reason,
                        **({"guard_rewinds": rewinds} if (rewinds := getattr(answer, "rewinds", 0)) else {}),
                        **({"guard_refusals": n} if (n := getattr(answer, "refusals", 0)) else {}),
                        **({"label_scores": answer.scores} if variant == SCORED else {}),
                        **metas[i],
                        **(
                            {
                                "passages": passage_records(found[i]),
                                "retrieval_ms": cache.latency_ms(question_of(ex["messages"])),
                            }
                            if found[i] or (cache is not None and is_rag_arm(name))
                            else {}
                        ),
                    }
                )
                calls.append(
                    ModelCall(
                        name, str(i), 0, answer.prompt_tokens, answer.completion_tokens, answer.latency_ms
                    )
                )
                calls.extend(
                    ModelCall(name, str(i), j + 1, g.prompt_tokens, g.completion_tokens, g.latency_ms)
                    for j, g in enumerate(extra)
                    if variant != SCORED  # a scored arm's samples are drawn from its scores: no model call
                )
        summary = build_summary(
            records, contract, task=spec.task.name, arm_info=arm_info, seed=seed
        ).model_dump()
        summary["run_id"] = run_id
        # What each arm was, so the pipeline merges summaries without guessing.
        summary["arm_info"] = arm_info
        summary["max_new_tokens"] = max_new
        store.write_jsonl(run, "records.jsonl", records)
        record.result["summary"] = str(store.write_json(run, "summary.json", summary))
        record.figures = eval_figures(summary)
        store.log_calls(run, calls)
    return EvalResult(run_id, run_dir, summary, records)


@dataclass
class _Job:
    """One arm to answer: its name, base arm and variant, the engine that answers it, its prompts, the passages
    retrieved for each (rag arms), and how its generated answers are decoded (constraint, json_guard)."""

    name: str
    arm: str
    variant: str | None
    engine: Any
    prompts: list
    found: list[list[Any]]
    limit_to: dict[str, Any]


def _generating(job: _Job, n_samples: int, constraint: Any) -> str:
    """The line that says how an arm is generated."""
    return (
        f"{job.name}: {len(job.prompts)} prompts, greedy"
        + (f" + {n_samples} samples each" if n_samples > 1 else "")
        + (f", decoding constrained to the contract's {constraint.kind}" if job.variant else "")
    )


@dataclass(frozen=True)
class _Scored:
    """A scored arm's answer in the shape the records need (text: the chosen label)."""

    text: str
    scores: dict[str, float]
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "scored"


@dataclass(frozen=True)
class _Drawn:
    """A consistency sample of a scored arm: a label drawn from its scores, no model call."""

    text: str
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def _score_arm(
    engine: Any, prompts: list, labels: list[str], n_samples: int, temperature: float, seed: int,
    normalize: bool = True,
) -> tuple[list[_Scored], list[list[_Drawn]]]:  # fmt: skip
    """Label scoring of every prompt, and its consistency samples drawn from each prompt's label scores."""
    import random

    ranked = engine.score_labels(prompts, labels, normalize=normalize)
    answers = [_Scored(r.label, r.scores, r.latency_ms, r.prompt_tokens, r.completion_tokens) for r in ranked]
    samples = [
        [
            _Drawn(x)
            for x in label_samples(r.scores, n_samples, temperature, random.Random(seed * 100_003 + i))
        ]
        if n_samples > 1
        else []
        for i, r in enumerate(ranked)
    ]
    return answers, samples
