"""Which weights a run with held-out data keeps: the best evaluation's, when they beat the last step's beyond the
validation set's noise, else the last step's. Early stopping ends a run once the held-out loss stops improving.

The loop's `state` holds the best so far (`best_eval_loss`, `best_step`, `best_example_losses`, `bad_evals`);
it is saved with every checkpoint, so a resumed run keeps choosing among all its steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tunewise.fileio import publish, temp_path
from tunewise.train.config import TrainConfig
from tunewise.train.model import load_trainable, trainable
from tunewise.train.sharded import full_tensors

if TYPE_CHECKING:
    from tunewise.train.context import RunContext

BEST = "best.safetensors"


def keeps_best(config: TrainConfig) -> bool:
    """Early stopping implies keeping the best weights: stopping after N bad evaluations leaves worse ones."""
    return config.keep_best or config.early_stopping_patience is not None


def track_best(
    ctx: RunContext, state: dict[str, Any], step: int, scores: dict[str, float], example_losses: list[float]
) -> bool:
    """Track the best held-out loss; keep its weights on disk; say whether patience ran out."""
    config = ctx.config
    best = state["best_eval_loss"]
    if best is None or scores["eval_loss"] < best:
        state["best_eval_loss"] = scores["eval_loss"]
        state["best_step"] = step
        state["best_example_losses"] = list(example_losses)
        state["bad_evals"] = 0
        if keeps_best(config) and (ctx.writer or ctx.sharded):
            from safetensors.torch import save_file

            weights = full_tensors(trainable(ctx.model))  # sharded: gathered by every process
            if ctx.writer:
                assert ctx.run_dir is not None
                tmp = temp_path(ctx.run_dir / BEST)
                save_file(weights, str(tmp))
                publish(tmp, ctx.run_dir / BEST)
        return False
    state["bad_evals"] += 1
    return config.early_stopping_patience is not None and state["bad_evals"] >= config.early_stopping_patience


def keep_best_or_last(
    ctx: RunContext,
    state: dict[str, Any],
    final: dict[str, float],
    example_losses: list[float],
    extra: dict[str, Any],
    rescore: Callable[[], dict[str, float]],
) -> dict[str, float]:
    """After the last step: load the best evaluation's weights if they beat the last step's beyond the noise
    (`compare_with_best`), and return the held-out scores of the weights kept. `final` and `example_losses` are
    the last step's; `rescore` evaluates the model again; what was compared goes into `extra` (the result's)."""
    best = state["best_eval_loss"]
    assert ctx.run_dir is not None
    if (
        not keeps_best(ctx.config)
        or best is None
        or final["eval_loss"] <= best
        or not (ctx.run_dir / BEST).is_file()
    ):
        return final
    last = final["eval_loss"]
    check = compare_with_best(state.get("best_example_losses"), example_losses, final["eval_tokens"])
    extra["best_check"] = {"best_step": state["best_step"], "best_loss": best, "last_loss": last, **check}
    noise = "" if check["se"] is None else f", standard error {check['se']:.4f}"
    if check["earlier_is_better"]:
        load_trainable(ctx.model, ctx.run_dir / BEST)  # keep the best weights, not the last
        final = rescore()
        extra["kept_step"] = state["best_step"]
        if ctx.writer:
            ctx.say(f"kept the weights of step {state['best_step']} (held-out loss {final['eval_loss']:.4f}) "
                    f"rather than the last step's ({last:.4f}{noise})")  # fmt: skip
    elif ctx.writer:
        ctx.say(f"kept the last step's weights: step {state['best_step']}'s held-out loss {best:.4f} is within "
                f"the noise of the last's {last:.4f} (difference {check['diff']:.4f}{noise})")  # fmt: skip
    return final


def compare_with_best(
    best: list[float] | None, last: list[float], tokens: int, z: float = 1.96
) -> dict[str, Any]:
    """Whether the best evaluation's weights beat the last step's by more than the validation set's noise.

    `best` and `last` are the summed losses of each held-out example under the two sets of weights. The
    difference of the mean token losses is `sum(last - best) / tokens`; its standard error comes from the
    spread of the per-example differences (the same examples under both, so the comparison is paired). On a
    validation set of 30 examples, "lowest loss" alone picked an earlier step over a difference of 0.002 in
    0.22, discarding the low-learning-rate end of the schedule on noise. With fewer than 2 examples (or no
    per-example record, from a checkpoint written before it existed) there is no noise estimate, and the lower
    loss wins.

    >>> compare_with_best([10.0, 20.0, 30.0], [11.0, 21.0, 31.0], 60)["earlier_is_better"]  # always 1 lower
    True
    >>> compare_with_best([10.0, 20.0, 30.0], [14.0, 17.0, 30.0], 60)["earlier_is_better"]  # mixed: noise
    False
    """
    if best is None or len(best) != len(last):
        diff = None
    else:
        diff = (sum(last) - sum(best)) / max(1, tokens)
    if diff is None or len(last) < 2:
        return {"diff": diff, "se": None, "earlier_is_better": diff is None or diff > 0}
    d = [b - a for a, b in zip(best, last, strict=True)]
    mean = sum(d) / len(d)
    se = math.sqrt(len(d) / (len(d) - 1) * sum((x - mean) ** 2 for x in d)) / max(1, tokens)
    return {"diff": diff, "se": se, "earlier_is_better": diff > z * se}
