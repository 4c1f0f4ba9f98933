"""`tunewise train`: reads tunewise.yaml, applies flag overrides, calls `tunewise.train.run`, renders the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunewise.cli import app, err, out, print_json
from tunewise.errors import TunewiseError


def _number(value: str | None, kind: type, flag: str) -> Any:
    """'auto' stays 'auto'; anything else must parse as `kind`."""
    if value is None or value == "auto":
        return value
    try:
        return kind(value)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise TunewiseError(f"{flag} must be 'auto' or {noun} (got {value!r})") from None


def config_from_spec(spec_path: Path | None) -> tuple[dict[str, Any], Any, Any]:
    """Training settings from tunewise.yaml (`train.config.spec_values`, the mapping `TrainConfig.from_spec`
    uses), the project that holds it and the spec (None when there is none)."""
    from tunewise.project import Project, find_project
    from tunewise.spec import load_spec

    if spec_path is not None:
        spec_path = spec_path.resolve()
        project = Project(spec_path.parent)
    else:
        try:
            project = find_project()
        except TunewiseError:
            return {}, Project(Path.cwd()), None  # no spec: flags only, state recorded under ./.tunewise
        spec_path = project.spec_path
    from tunewise.train.config import spec_values

    spec = load_spec(spec_path)
    values = spec_values(spec)
    # Until the data stage produces normalized dataset versions, files already in chat JSONL are used directly.
    train = [str((project.root / p).resolve()) for p in spec.data.train]
    if all(p.endswith(".jsonl") for p in train):
        values["data"] = train
        values["eval_data"] = [str((project.root / p).resolve()) for p in spec.data.eval]
        if spec.data.eval:
            # The spec's eval files are the test set the arms are judged on: training reports its loss but must
            # not choose weights by it (`tunewise run` carves a validation set from the training split).
            values["keep_best"] = False
    return values, project, spec


def dry_run_pricing(
    spec: Any, root: Path, platform: str | None, pricing: Path | None
) -> tuple[Any, list[str]]:
    """The pricing catalog and the platforms a dry run is priced on: --platform, else the spec's
    economics.platforms, else the defaults. Names are checked here, before the measured step, not after it."""
    from tunewise.economics.settings import economics_settings
    from tunewise.spec import EconomicsSpec

    econ = economics_settings(
        spec.economics if spec is not None else EconomicsSpec(), root, platforms=platform
    )
    catalog = econ.catalog(pricing)
    for name in econ.platforms:
        catalog.get(name)  # raises with the nearest known name
    return catalog, econ.platforms


def price_plan(plan: Any, catalog: Any, platforms: list[str]) -> None:
    """Attach one training run's estimated cost on each platform to a dry run's plan."""
    from dataclasses import asdict

    from tunewise.economics.plan import training_estimates

    hours = plan.estimated_time_s / 3600 if plan.estimated_time_s is not None else None
    estimates = training_estimates(plan.tokens_per_epoch, plan.epochs, platforms, catalog, hours=hours)
    plan.training_costs = [asdict(e) for e in estimates]


@app.command(
    help="Fine-tune the base model (LoRA or full) on chat JSONL data; flags override tunewise.yaml.\n\n"
    "Examples:\n\n"
    "  tunewise train --data data/train.jsonl --eval data/eval.jsonl --dry-run\n\n"
    "  tunewise train --dry-run --platform together,self-hosted --pricing my-prices.yaml\n\n"
    "  tunewise train --method lora --epochs 3 --lr 2e-4 --rank 8\n\n"
    "  tunewise train --resume train-20250101-120000-ab12"
)
def train(
    spec: Path | None = typer.Option(
        None, "--spec", metavar="FILE", help="The task spec (default: tunewise.yaml found upward)."
    ),
    data: list[Path] | None = typer.Option(
        None,
        "--data",
        metavar="FILE",
        help="Training data: chat JSONL ({'messages': [...]}); repeat for more files.",
    ),
    eval_data: list[Path] | None = typer.Option(
        None,
        "--eval",
        metavar="FILE",
        help="Validation chat JSONL (repeatable): held-out loss and accuracy, best-weights choice.",
    ),
    base: str | None = typer.Option(
        None, "--base", metavar="MODEL", help="embedded:smollm2-135m-instruct, a folder or a Hub id."
    ),
    method: str | None = typer.Option(
        None, "--method", metavar="lora|qlora|full", help="lora, qlora (4-bit base, CUDA) or full."
    ),
    epochs: str | None = typer.Option(None, "--epochs", metavar="N|auto", help="Number of epochs, or auto."),
    lr: str | None = typer.Option(None, "--lr", metavar="RATE|auto", help="Peak learning rate, or auto."),
    batch_size: str | None = typer.Option(
        None, "--batch-size", metavar="N|auto", help="Examples per optimizer step, or auto."
    ),
    rank: str | None = typer.Option(None, "--rank", metavar="N|auto", help="LoRA rank, or auto."),
    alpha: str | None = typer.Option(
        None, "--alpha", metavar="A|auto", help="LoRA alpha, or auto (2 x rank)."
    ),
    dropout: float | None = typer.Option(None, "--dropout", metavar="P", help="LoRA dropout."),
    max_length: str | None = typer.Option(
        None, "--max-length", metavar="N|auto", help="Tokens per example, or auto."
    ),
    micro_batch_tokens: str | None = typer.Option(
        None,
        "--micro-batch-tokens",
        metavar="N|auto",
        help="Tokens per packed micro-batch (bounds activation memory), or auto.",
    ),
    micro_batch_workers: str | None = typer.Option(
        None,
        "--micro-batch-workers",
        metavar="N|auto",
        help="Micro-batches computed at once, one thread each (fp32 LoRA on CPU), or auto.",
    ),
    seed: int | None = typer.Option(
        None, "--seed", metavar="N", help="Seed for initialization and data order."
    ),
    eval_every: int | None = typer.Option(
        None, "--eval-every", metavar="STEPS", help="Steps between held-out evaluations."
    ),
    early_stopping: int | None = typer.Option(
        None, "--early-stopping", metavar="N", help="Stop after N evaluations without held-out improvement."
    ),
    keep_best: bool | None = typer.Option(
        None,
        "--keep-best/--keep-last",
        help="Output an earlier step's weights when their --eval loss (a validation set, not your test set) is "
        "lower than the last step's beyond the noise, or always the last.",
    ),
    checkpoint_every: int | None = typer.Option(
        None, "--checkpoint-every", metavar="STEPS", help="Steps between checkpoints."
    ),
    precision: str | None = typer.Option(
        None, "--precision", metavar="auto|float32|bfloat16", help="auto (measured), float32 or bfloat16."
    ),
    threads: int | None = typer.Option(
        None, "--threads", metavar="N", help="torch threads (default: torch's choice)."
    ),
    gradient_checkpointing: str | None = typer.Option(
        None,
        "--gradient-checkpointing",
        metavar="auto|on|off",
        help="Recompute activations in the backward pass; auto: where the memory estimate needs it.",
    ),
    launcher_config: str | None = typer.Option(
        None,
        "--launcher-config",
        metavar="accelerate|torchrun",
        help="Write that launcher's config for a multi-process run (under .tunewise/launch) and print the "
        "command that starts it with the other flags given here; do not train.",
    ),
    strategy: str | None = typer.Option(
        None,
        "--strategy",
        metavar="ddp|fsdp",
        help="Under a launcher: ddp, every process holds the whole model (the default); fsdp, weights, gradients "
        "and optimizer state are sharded across the processes.",
    ),
    processes: int = typer.Option(
        1,
        "--processes",
        metavar="N",
        help="With --launcher-config: processes per machine (one per GPU); with --dry-run --strategy fsdp, the "
        "memory estimate is per process of processes x machines.",
    ),
    machines: int = typer.Option(
        1, "--machines", metavar="N", help="With --launcher-config (or a sharded --dry-run): machines."
    ),
    machine_rank: int = typer.Option(
        0, "--machine-rank", metavar="N", help="With --launcher-config: this machine's number (0 first)."
    ),
    main_address: str = typer.Option(
        "127.0.0.1", "--main-address", metavar="HOST", help="With --launcher-config: machine 0's address."
    ),
    main_port: int = typer.Option(
        29500, "--main-port", metavar="PORT", help="With --launcher-config: its port."
    ),
    cpu: bool = typer.Option(False, "--cpu", help="With --launcher-config: CPU processes (gloo), not GPUs."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan with a measured step; do not train."
    ),
    platform: str | None = typer.Option(
        None,
        "--platform",
        metavar="NAMES",
        help="With --dry-run: comma-separated platforms or catalog entries to price the run on "
        "(default: the spec's economics.platforms).",
    ),
    pricing: Path | None = typer.Option(
        None,
        "--pricing",
        metavar="FILE",
        help="With --dry-run: a pricing override YAML (as for tunewise cost).",
    ),
    resume: str | None = typer.Option(
        None, "--resume", metavar="RUN", help="Continue run RUN from its last checkpoint."
    ),
    with_passages: bool = typer.Option(
        False,
        "--with-passages",
        help="Put the passages retrieved from the spec's knowledge documents in every training prompt, as the "
        "rag arms ask (for `tunewise eval --arms rag+fine-tuned:RUN`).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result (or plan) as JSON on stdout."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    from tunewise.train import TrainConfig, run

    values, project, loaded_spec = config_from_spec(spec)
    if resume is not None:
        result = run(
            None, project, resume=resume, narrate=lambda m: err.print(m, highlight=False, markup=False)
        )
        _render(result, json_out)
        return
    flags = {
        "data": [str(p.resolve()) for p in data] if data else None,
        "eval_data": [str(p.resolve()) for p in eval_data] if eval_data else None,
        "base": base,
        "method": method,
        "epochs": _number(epochs, int, "--epochs"),
        "learning_rate": _number(lr, float, "--lr"),
        "batch_size": _number(batch_size, int, "--batch-size"),
        "lora_rank": _number(rank, int, "--rank"),
        "lora_alpha": _number(alpha, float, "--alpha"),
        "lora_dropout": dropout,
        "max_length": _number(max_length, int, "--max-length"),
        "micro_batch_tokens": _number(micro_batch_tokens, int, "--micro-batch-tokens"),
        "micro_batch_workers": _number(micro_batch_workers, int, "--micro-batch-workers"),
        "seed": seed,
        "eval_every": eval_every,
        "early_stopping_patience": early_stopping,
        "keep_best": keep_best,
        "checkpoint_every": checkpoint_every,
        "precision": precision,
        "threads": threads,
        "gradient_checkpointing": gradient_checkpointing,
        "strategy": strategy,
    }
    if eval_data and keep_best is None and loaded_spec is not None:
        # --eval names a validation set, not the spec's test set: the spec's choice holds again.
        values["keep_best"] = loaded_spec.hyperparameters.keep_best
    values.update({k: v for k, v in flags.items() if v is not None})
    values["progress"] = not no_progress
    retrieval = _add_passages(values, project, loaded_spec) if with_passages else None
    config = TrainConfig.from_dict(values)
    if launcher_config is not None:  # after the flags are checked: each process would fail on a bad one
        from tunewise.train.launcher import Launch

        launch = Launch(
            launcher_config, config.strategy, processes, machines, machine_rank, main_address, main_port, cpu
        )  # fmt: skip
        _write_launcher(launch, project)
        return
    if dry_run:
        catalog, platforms = dry_run_pricing(loaded_spec, project.root, platform, pricing)
    result = run(
        config, project, dry_run=dry_run, narrate=lambda m: err.print(m, highlight=False, markup=False),
        planned_processes=processes * machines,  # a sharded dry run's estimate is per process
    )  # fmt: skip
    if dry_run:
        price_plan(result, catalog, platforms)
    elif retrieval is not None and getattr(result, "status", None) == "succeeded":
        import json

        from tunewise.fileio import atomic_write_text

        atomic_write_text(Path(result.run_dir) / "retrieval.json", json.dumps(retrieval, indent=2) + "\n")
    _render(result, json_out)


# Flags that describe the launch, not the run: left out of the command each process runs (--strategy is both).
LAUNCH_OPTIONS = ("--launcher-config", "--processes", "--machines", "--machine-rank", "--main-address",
                  "--main-port")  # fmt: skip


def train_args(argv: list[str]) -> list[str]:
    """The `tunewise train` arguments each launched process gets: `argv` without the launch's own flags.

    >>> train_args(["--spec", "t.yaml", "--launcher-config", "torchrun", "--processes=4", "--cpu", "--epochs", "2"])
    ['--spec', 't.yaml', '--epochs', '2']
    """
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_OPTIONS:
            skip = True
        elif arg == "--cpu" or arg.split("=", 1)[0] in LAUNCH_OPTIONS:
            continue
        else:
            kept.append(arg)
    return kept


def _write_launcher(launch: Any, project: Any) -> None:
    import shlex
    import sys

    from tunewise.train.launcher import write_launcher

    argv = sys.argv[sys.argv.index("train") + 1 :] if "train" in sys.argv else []
    path, command = write_launcher(launch, Path(project.state_dir) / "launch", train_args(argv))
    err.print(
        f"{launch.launcher} config for {launch.world_size} process(es) ({launch.strategy}) written to {path}; "
        f"run this on each machine{' (NODE_RANK=N for machine N)' if launch.launcher == 'torchrun' else ''}:",
        highlight=False,
        markup=False,
    )
    out.print(shlex.join(command), highlight=False, markup=False, soft_wrap=True)


def _add_passages(values: dict[str, Any], project: Any, spec: Any) -> dict[str, Any]:
    """Replace the training (and validation) files by copies whose prompts carry the retrieved passages, recorded
    as dataset versions; returns what the run's retrieval.json records."""
    from tunewise.data.load import load_examples
    from tunewise.data.versions import save_version
    from tunewise.evaluate.knowledge import PassageCache, open_knowledge
    from tunewise.train.data import with_retrieved_passages

    if spec is None or spec.knowledge is None:
        raise TunewiseError(
            "--with-passages needs the spec's knowledge section",
            hint="add `knowledge: {docs: DOCS_FOLDER}` to tunewise.yaml",
        )
    cache = PassageCache(open_knowledge(spec, project.root, project.state_dir), spec.knowledge.top_k)
    retrieval = {"index": cache.version, "top_k": cache.k, "retriever": spec.knowledge.retriever}
    for key in ("data", "eval_data"):
        paths = []
        for path in values.get(key) or []:
            examples = with_retrieved_passages(load_examples(Path(path)), cache)
            name = f"{Path(path).stem}-rag"
            _, copy, _ = save_version(
                project, name, examples, [str(path)], {"examples": len(examples), **retrieval}
            )
            paths.append(str(copy))
        values[key] = paths
    err.print(f"training prompts carry the top {cache.k} passages of index {cache.version}", highlight=False)
    return retrieval


def _render(result: Any, json_out: bool) -> None:
    from tunewise.train import Plan

    if json_out:
        print_json(result.to_dict())
    elif isinstance(result, Plan):
        out.print(result.describe(), highlight=False, markup=False)
    else:
        out.print(f"{result.status}: run {result.run_id}", highlight=False, markup=False)
        if result.output:
            out.print(f"output: {result.output}", highlight=False, markup=False)
