"""One config source: the spec, `tunewise train`'s flags and the fine-tuning jobs API share one set of bounds
and word a bad value alike; the economics settings have one shape; the fine-tuned arm has one name rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.errors import ConfigError
from tunewise.spec import EconomicsSpec, parse_spec

SPEC = """\
task: {name: t, target: "Given a short review, answer with its sentiment label."}
contract: {type: label, labels: [positive, negative]}
system_prompt: Classify the review.
data: {train: data/train.jsonl}
model: {base: "tiny:random"}
"""


def _spec_problem(hyperparameters: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_spec(SPEC + f"hyperparameters: {{{hyperparameters}}}\n")
    (problem,) = info.value.problems
    return problem


def _cli_problem(run_cli, tmp_path: Path, *flags: str) -> str:
    spec = tmp_path / "tunewise.yaml"
    spec.write_text(SPEC)
    code, _, err = run_cli("train", "--spec", spec, *flags, cwd=tmp_path)
    assert code == 1 and "Traceback" not in err
    (problem,) = [
        line.strip().removeprefix("- ") for line in err.splitlines() if line.strip().startswith("- ")
    ]
    return problem


def _api_problem(**hyperparameters) -> str:
    from tunewise.serve.errors import APIError
    from tunewise.serve.jobs import JobRequest, parse_hyperparameters

    request = JobRequest(model="tiny:random", training_file="file-x", hyperparameters=hyperparameters)
    with pytest.raises(APIError) as info:
        parse_hyperparameters(request)
    return str(info.value.message).removeprefix("hyperparameters: ")


@pytest.mark.parametrize(
    ("spec_value", "flags", "api", "field", "api_field", "why"),
    [
        (
            "epochs: 1001",
            ("--epochs", "1001"),
            {"n_epochs": 1001},
            "epochs",
            "n_epochs",
            "Input should be less than or equal to 1000 or 'auto' (got 1001)",
        ),
        (
            "lora_rank: 0",
            ("--rank", "0"),
            {"tunewise": {"lora_rank": 0}},
            "lora_rank",
            "tunewise.lora_rank",
            "Input should be greater than or equal to 1 or 'auto' (got 0)",
        ),
        (
            "batch_size: 70000",
            ("--batch-size", "70000"),
            {"batch_size": 70000},
            "batch_size",
            "batch_size",
            "Input should be less than or equal to 65536 or 'auto' (got 70000)",
        ),
    ],
)
def test_the_same_bad_value_gets_the_same_error_from_spec_cli_and_api(
    tmp_path, run_cli, spec_value, flags, api, field, api_field, why
):
    assert _spec_problem(spec_value) == f"line 6: hyperparameters.{field}: {why}"
    assert _cli_problem(run_cli, tmp_path, *flags) == f"{field}: {why}"
    assert _api_problem(**api) == f"{api_field}: {why}"


def test_the_training_config_is_the_spec_s_with_overrides():
    from tunewise.train.config import TrainConfig

    spec = parse_spec(
        SPEC + "method: full\nhyperparameters: {epochs: 7, lora_dropout: 0.1, keep_best: false}\n"
    )
    config = TrainConfig.from_spec(spec, batch_size=16)
    assert (config.method, config.epochs, config.lora_dropout, config.keep_best) == ("full", 7, 0.1, False)
    assert (config.base, config.batch_size, config.kernels) == ("tiny:random", 16, "auto")
    with pytest.raises(ConfigError, match="unknown key 'epoch' \\(did you mean 'epochs'\\?\\)"):
        TrainConfig.from_spec(spec, epoch=3)


def test_economics_settings_flags_over_spec_over_defaults(tmp_path):
    from tunewise.economics.settings import economics_settings

    spec = EconomicsSpec(
        queries_per_day=200, platforms=["together"], retrain_every_days=30, pricing_file="p.yaml"
    )
    from_spec = economics_settings(spec, tmp_path)
    assert (from_spec.queries_per_day, from_spec.platforms, from_spec.retrain_every_days) == (
        200,
        ["together"],
        30,
    )
    assert from_spec.pricing_file == tmp_path / "p.yaml"
    flagged = economics_settings(spec, tmp_path, queries_per_day=50, platforms="vertex, azure-openai")
    assert (flagged.queries_per_day, flagged.platforms) == (50, ["vertex", "azure-openai"])
    # Hosting given directly prices the fine-tuned arm on it, not on the spec's platforms.
    hosted = economics_settings(spec, tmp_path, tuned_cost=0.02, prompted_cost=0.08, hosting_per_hour=1.7)
    assert hosted.platforms == []
    request = hosted.cost_request()
    assert (request.queries_per_day, request.hosting_per_hour, request.retrain_every_days) == (200, 1.7, 30)


# --- the fine-tuned arm's name ----------------------------------------------------------------------------


def test_plain_eval_leaves_out_a_fine_tuned_variant_in_the_spec(tmp_path, run_cli):
    """With `fine-tuned+scored` among the spec's arms, `tunewise eval` without --arms evaluates the prompted arms
    (it used to stop: "the fine-tuned arm needs a run")."""
    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{word} film {i}"},
                {"role": "assistant", "content": label},
            ]
        }
        for i in range(10)
        for word, label in (("great", "positive"), ("awful", "negative"))
    ]
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tunewise.yaml").write_text(
        SPEC + "evaluation: {arms: [zero-shot, fine-tuned+scored], consistency_samples: 1, max_new_tokens: 2,"
        " constrained: false}\n"
    )
    code, out, err = run_cli("eval", "--limit", "2", "--json", cwd=root)
    assert code == 0, err
    summary = json.loads(out)
    assert [a["name"] for a in summary["arms"]] == ["zero-shot"] and summary["n_examples"] == 2
    # Asked for by name, the fine-tuned variant still needs its run.
    code, _, err = run_cli("eval", "--arms", "fine-tuned+scored", cwd=root)
    assert code == 1 and "the fine-tuned arm needs a run: fine-tuned+scored:RUN_ID" in err
