"""The retraining gate, flipped both ways by scripted evaluations; the retrain's data, decision record,
promotion and lineage; the retraining cadence."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.conftest import tiny_label_project
from tunewise.lifecycle.gate import decide


def test_gate_promotes_a_model_better_on_new_and_no_worse_on_old():
    d = decide(
        [True] * 40 + [False] * 10,  # current, old set: 80%
        [True] * 40 + [False] * 10,  # candidate, old set: 80%
        [True] * 10 + [False] * 30,  # current, new sample: 25%
        [True] * 34 + [False] * 6,  # candidate, new sample: 85%
    )
    assert d.promote
    assert d.old.difference == 0.0 and d.new.difference == pytest.approx(0.6)
    assert d.new.low > 0
    text = d.text()
    assert "rule: promote when the candidate is not significantly worse on the old held-out set" in text
    assert "old held-out set (n=50): current 80.0%, candidate 80.0%, difference +0.0 pts" in text
    assert "new labelled sample (n=40): current 25.0%, candidate 85.0%, difference +60.0 pts" in text
    assert text.endswith("decision: promote the candidate (not significantly worse on the old held-out set and "
                         "better on the new labelled sample)")  # fmt: skip


def test_gate_refuses_a_model_worse_on_the_old_set():
    d = decide(
        [True] * 45 + [False] * 5,  # current 90%
        [True] * 25 + [False] * 25,  # candidate 50%: forgot the old task
        [False] * 40,
        [True] * 40,  # much better on the new sample, but that does not buy a forgotten old task
    )
    assert not d.promote
    assert d.old.high < 0
    assert d.why == "significantly worse on the old held-out set (-40.0 pts)"
    assert "-> significantly worse" in d.text() and "keep the current model" in d.text()


def test_gate_refuses_a_model_not_better_on_the_new_sample():
    d = decide([True] * 50, [True] * 50, [True] * 5 + [False] * 15, [True] * 6 + [False] * 14)
    assert not d.promote
    assert d.why.startswith("not significantly better on the new labelled sample (+5.0 pts")


def test_margin_tolerates_a_small_loss_on_the_old_set():
    current = [True] * 90 + [False] * 10
    candidate = [True] * 84 + [False] * 16  # 6 points worse: each loss is a discordant pair
    new_cur, new_cand = [False] * 30, [True] * 30
    assert not decide(current, candidate, new_cur, new_cand).promote
    assert decide(current, candidate, new_cur, new_cand, margin=0.15).promote


# --- retrain with scripted training and evaluation ------------------------------------------------------------


def _train_run(project, data: list[str], version: str | None = None) -> str:
    from tunewise.registry.runs import RunStore
    from tunewise.train.config import TrainConfig

    store = RunStore(project)
    config = TrainConfig(data=data, base="tiny:random", epochs=1, dataset_version=version)
    run = store.create("train", {"config": config.to_dict()}, name="tickets")
    store.finish(run, "succeeded", {}, dataset_versions=[version])
    return run.id


def _fit_file(project, spec) -> Path:
    """The training half of the spec's split, as the pipeline trains on it."""
    from tunewise.data.load import load_spec_split

    train, _, _ = load_spec_split(project.root, spec)
    fit = project.root / "data" / "fit.jsonl"
    fit.write_text("".join(json.dumps(e) + "\n" for e in train))
    return fit


def _labelled(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "labelled.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"crypto wallet question {i}"}, {"role": "assistant", "content": "other"}]}
        for i in range(n)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("better", [True, False])
def test_retrain_records_the_decision_promotes_only_a_better_model_and_shows_lineage(tmp_path, better):
    from tunewise.lifecycle.lineage import lineage
    from tunewise.lifecycle.retrain import retrain
    from tunewise.registry.aliases import current, promote
    from tunewise.spec import load_spec

    project = tiny_label_project(tmp_path / "p", examples=24, samples=1)
    spec = load_spec(project.spec_path)
    old = _train_run(project, [str(_fit_file(project, spec))])
    registry = project.registry()
    promote(registry, "tickets", old, by="test")
    registry.close()

    trained: list = []

    def train(config):
        trained.append(config)
        return _train_run(project, config.data, config.dataset_version)

    def evaluate(run_id: str, examples: list[dict], version: str) -> list[bool]:
        n = len(examples)
        if run_id == old:
            return [True] * n if "crypto" not in examples[0]["messages"][0]["content"] else [False] * n
        return [True] * n if better else [False] * n  # the scripted candidate: right everywhere, or nowhere

    result = retrain(
        project, spec, "tickets", with_=str(_labelled(tmp_path, 20)), evaluate=evaluate, train=train
    )
    # The candidate trained with the current run's settings on old data plus half the new examples.
    (config,) = trained
    assert (
        config.epochs == 1
        and config.base == "tiny:random"
        and config.dataset_version == result.dataset_version
    )
    combined = [json.loads(x) for x in Path(config.data[0]).read_text().splitlines()]
    assert len(combined) == 19 + 10  # the 19 of 24 the split trains on, plus half the 20 labelled
    assert result.promoted is better
    registry = project.registry()
    try:
        served = current(registry, "tickets")["run_id"]
        row = registry.conn.execute("SELECT promoted, rule FROM retrain_decisions").fetchone()
    finally:
        registry.close()
    assert served == (result.candidate if better else old)
    assert row["promoted"] == int(better) and "new labelled sample (n=10)" in row["rule"]

    got = lineage(project, "tickets")
    assert [r["id"] for r in got.runs] == [old, result.candidate]
    (retrained,) = [d for d in got.datasets if d["id"] == result.dataset_version]
    assert {p["relation"] for p in retrained["parents"]} == {"retrain"}
    assert any(p["relation"] == "import" for d in got.datasets for p in d["parents"])
    assert len(got.decisions) == 1 and got.decisions[0]["promoted"] is better
    assert [p["run_id"] for p in got.promotions] == ([old, result.candidate] if better else [old])


def test_retrain_refuses_labelled_traffic_that_leaks_the_held_out_set(tmp_path):
    from tunewise.data.load import load_spec_split
    from tunewise.errors import TunewiseError
    from tunewise.lifecycle.retrain import retrain
    from tunewise.spec import load_spec

    project = tiny_label_project(tmp_path / "p", examples=24, samples=1)
    spec = load_spec(project.spec_path)
    _, held, _ = load_spec_split(project.root, spec)
    _train_run(project, [str(_fit_file(project, spec))])
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text("".join(json.dumps(e) + "\n" for e in held * 2))  # the held-out examples, twice
    with pytest.raises(TunewiseError, match="the data check of the retraining set found"):
        retrain(project, spec, "tickets", with_=str(leaky), evaluate=lambda *a: [], train=lambda c: "x")


# --- cadence ----------------------------------------------------------------------------------------------------


def test_cadence_warns_when_retraining_is_more_often_than_quarterly_and_when_overdue():
    from tunewise.lifecycle.cadence import cadence

    quarterly = cadence(
        ["2026-01-01T00:00:00+00:00", "2026-04-02T00:00:00+00:00"],
        120,
        datetime(2026, 5, 1, tzinfo=timezone.utc),
    )
    assert quarterly["mean_interval_days"] == 91.0 and quarterly["warnings"] == []
    often = cadence(
        ["2026-01-01T00:00:00+00:00", "2026-01-11T00:00:00+00:00"],
        30,
        datetime(2026, 3, 1, tzinfo=timezone.utc),
    )
    assert often["mean_interval_days"] == 10.0 and often["days_since_last"] == 49.0
    assert len(often["warnings"]) == 2
    assert often["warnings"][0].startswith(
        "retrained every 10 days on average (2 trainings): more often than quarterly"
    )
    assert "over the spec's retrain_every_days (30)" in often["warnings"][1]


def test_report_shows_the_retraining_frequency_and_its_warnings(tmp_path):
    from tests.test_report import full_state, section
    from tunewise.lifecycle.cadence import cadence
    from tunewise.report.build import render_html

    state = full_state()
    state["retraining"] = cadence(
        ["2026-01-01T00:00:00+00:00", "2026-01-11T00:00:00+00:00"],
        30,
        datetime(2026, 3, 1, tzinfo=timezone.utc),
    )
    training = section(render_html(state), "training")
    assert (
        "Retraining: 2 training(s), every 10.0 days on average (36.5 a year); the last 49.0 days ago"
        in training
    )
    assert (
        "more often than quarterly" in training and "over the spec&#39;s retrain_every_days (30)" in training
    )


def test_report_reads_the_cadence_from_the_project(tmp_path):
    from tests.test_report import full_state
    from tunewise.report.build import view

    project = tiny_label_project(tmp_path / "p", examples=24, samples=1)
    state = dict(full_state(), project_path=str(project.root))
    assert view(state)["retraining"] is None  # no training yet
    run = _train_run(project, ["x.jsonl"])
    got = view(state)["retraining"]
    assert got["trainings"] == 1 and got["mean_interval_days"] is None and got["warnings"] == []
    from tunewise.registry.runs import RunStore

    assert datetime.fromisoformat(got["last"]) == datetime.fromisoformat(
        RunStore(project).get(run).created_at
    )
