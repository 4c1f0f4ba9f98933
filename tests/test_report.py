"""The report stage: sections and numbers on the page, escaping of model text, no network resources, report.json
equal to the state, atomic writes, states with sections missing, states built by the real stages, the CLI."""

from __future__ import annotations

import base64
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tunewise.errors import TunewiseError
from tunewise.report import build as report_build
from tunewise.report.build import build_report, render_html

SCRIPT = "<script>alert('pwned')</script>"
IMG_ATTACK = '"><img src=x onerror="alert(1)">'


def full_state() -> dict:
    """A complete state with hand-picked numbers the tests look for on the page."""
    return {
        "generated_at": "2026-11-29T06:00:00+00:00",
        "tunewise_version": "0.1.0",
        "project": "support-tickets",
        "task": {
            "name": "ticket-triage",
            "target": "Route a support ticket to one of four queues; nothing else.",
            "contract": {"type": "label", "labels": ["billing", "bug", "account", "other"]},
            "system_prompt": "Answer with one label: billing, bug, account or other.",
            "base_model": "SmolLM2-135M-Instruct",
            "method": "lora",
        },
        "data": {
            "ok": True,
            "errors": 0,
            "warnings": 2,
            "files": [
                {
                    "path": "data/train.jsonl",
                    "role": "train",
                    "bytes": 51234,
                    "examples": 300,
                    "format": "openai",
                },
                {
                    "path": "data/eval.jsonl",
                    "role": "eval",
                    "bytes": 10234,
                    "examples": 60,
                    "format": "openai",
                },
            ],
            "problems": [
                {
                    "severity": "warning",
                    "code": "near_duplicate",
                    "field": "(example)",
                    "count": 7,
                    "first": [
                        {"file": "data/train.jsonl", "line": 17, "message": "near-duplicate of line 3"},
                        {"file": "data/train.jsonl", "line": 42, "message": "near-duplicate of line 8"},
                    ],
                },
                {
                    "severity": "warning",
                    "code": "imbalance",
                    "field": "(labels)",
                    "count": 1,
                    "first": [{"file": "data/train.jsonl", "line": 0, "message": "class imbalance: 12x"}],
                },
            ],
            "stats": {
                "examples": 300,
                "eval_examples": 60,
                "labels": {"billing": 120, "bug": 100, "account": 70, "other": 10},
                "tokens": {
                    "sampled": 300,
                    "exact": True,
                    "prompt": {"p50": 42, "p95": 66, "max": 87},
                    "completion": {"p50": 3, "p95": 4, "max": 5},
                    "total": {"p50": 45, "p95": 70, "max": 92, "mean": 47.3},
                    "trained_share": 0.064,
                    "estimated_training_tokens": 14190,
                    "estimated_training_tokens_x_epochs": 42570,
                    "epochs_assumed": 3,
                },
            },
            "notes": ["length limit checked exactly for every example"],
        },
        "training": {
            "run_id": "run-20261129-0001",
            "method": "lora",
            "resolved": {"epochs": 3, "learning_rate": 0.0002, "batch_size": 8, "lora_rank": 16},
            "metrics": [
                {
                    "step": s,
                    "epoch": s / 10,
                    "train_loss": 2.5 / s,
                    "eval_loss": (2.9 / s if s % 5 == 0 else None),
                    "lr": 2e-4,
                }
                for s in range(1, 21)
            ],
            "wall_s": 312.5,
            "tokens_per_s": 187.4,
            "eval_before": {"eval_loss": 3.1, "eval_token_accuracy": 0.12},
            "eval_after": {"eval_loss": 0.58, "eval_token_accuracy": 0.93},
        },
        "evaluation": {
            "n_examples": 60,
            "contract": "label",
            "arms": [
                {
                    "name": "zero-shot",
                    "kind": "prompted",
                    "constrained": False,
                    "accuracy": {"value": 0.4167, "low": 0.2986, "high": 0.5451},
                    "accuracy_lenient": {"value": 0.55, "low": 0.42, "high": 0.67},
                    "format_compliance": {"value": 0.7, "low": 0.57, "high": 0.8},
                    "consistency": {"value": 0.8, "low": 0.68, "high": 0.88},
                    "unsupported_rate": {"value": 0.1, "low": 0.05, "high": 0.2},
                    "macro_f1": 0.38,
                    "field_f1": None,
                    "latency_ms": {"p50": 210.0, "p95": 480.0},
                    "prompt_tokens": 412.0,
                    "completion_tokens": 9.5,
                    "cost_per_query": 0.00041,
                },
                {
                    "name": "few-shot",
                    "kind": "prompted",
                    "constrained": False,
                    "accuracy": {"value": 0.6167, "low": 0.4902, "high": 0.7293},
                    "accuracy_lenient": {"value": 0.7, "low": 0.57, "high": 0.8},
                    "format_compliance": {"value": 0.9, "low": 0.8, "high": 0.95},
                    "consistency": {"value": 0.9, "low": 0.8, "high": 0.95},
                    "unsupported_rate": {"value": 0.05, "low": 0.02, "high": 0.14},
                    "macro_f1": 0.58,
                    "field_f1": None,
                    "latency_ms": {"p50": 260.0, "p95": 530.0},
                    "prompt_tokens": 1210.0,
                    "completion_tokens": 6.1,
                    "cost_per_query": 0.00121,
                },
                {
                    "name": "fine-tuned",
                    "kind": "fine-tuned",
                    "constrained": False,
                    "accuracy": {"value": 0.9133, "low": 0.8412, "high": 0.9555},
                    "accuracy_lenient": {"value": 0.93, "low": 0.86, "high": 0.97},
                    "format_compliance": {"value": 0.99, "low": 0.95, "high": 1.0},
                    "consistency": {"value": 0.97, "low": 0.92, "high": 0.99},
                    "unsupported_rate": {"value": 0.02, "low": 0.0, "high": 0.08},
                    "macro_f1": 0.9,
                    "field_f1": None,
                    "latency_ms": {"p50": 95.0, "p95": 140.0},
                    "prompt_tokens": 60.0,
                    "completion_tokens": 2.0,
                    "cost_per_query": 0.00012,
                },
            ],
            "paired": [
                {
                    "a": "few-shot",
                    "b": "fine-tuned",
                    "metric": "accuracy",
                    "n": 60,
                    "diff": -0.2966,
                    "low": -0.41,
                    "high": -0.18,
                    "mcnemar_p": 0.00031,
                },
                {
                    "a": "fine-tuned",
                    "b": "few-shot",
                    "metric": "accuracy",
                    "n": 60,
                    "diff": 0.2966,
                    "low": 0.18,
                    "high": 0.41,
                    "mcnemar_p": 0.00031,
                },
                {
                    "a": "zero-shot",
                    "b": "few-shot",
                    "metric": "accuracy",
                    "n": 60,
                    "diff": -0.2,
                    "low": -0.35,
                    "high": 0.02,
                    "mcnemar_p": 0.061,
                },
            ],
        },
        "economics": {
            "queries_per_day": 500,
            "options": [
                {
                    "name": "prompted",
                    "per_query": 0.08,
                    "hosting_per_month": 0.0,
                    "training_per_month": 0.0,
                    "total_per_month": 1200.0,
                },
                {
                    "name": "fine-tuned @ together",
                    "per_query": 0.02,
                    "hosting_per_month": 150.0,
                    "training_per_month": 0.0,
                    "total_per_month": 450.0,
                },
                {
                    "name": "fine-tuned @ azure-openai",
                    "per_query": 0.02,
                    "hosting_per_month": 1224.0,
                    "training_per_month": 0.0,
                    "total_per_month": 1524.0,
                },
            ],
            "break_even": [
                {
                    "a": "prompted",
                    "b": "fine-tuned @ together",
                    "volume": 83.333333,
                    "formula": "q = (150.00 - 0.00) / (30 x (0.08 - 0.02)) = 83.3 queries/day",
                    "notes": [],
                },
                {
                    "a": "prompted",
                    "b": "fine-tuned @ azure-openai",
                    "volume": 680.0,
                    "formula": "q = (1,224.00 - 0.00) / (30 x (0.08 - 0.02)) = 680.0 queries/day",
                    "notes": [
                        "the practitioner's guide (docs/guide.md) says azure-openai breaks even at roughly 800 queries/day"
                    ],
                },
                {
                    "a": "fine-tuned @ together",
                    "b": "fine-tuned @ azure-openai",
                    "volume": None,
                    "formula": "no crossing (same cost per query)",
                    "notes": [],
                },
            ],
        },
        "verdict": {
            "recommend_fine_tuning": True,
            "headline": "Fine-tune: +29.7 points over few-shot, and $750/month cheaper on together at 500 queries/day.",
            "platform_rules": [
                {
                    "rule": "small-team",
                    "fires": True,
                    "detail": "a team of 6 (under 25)",
                    "advice": "count the data preparation and the monthly hosting in the cost",
                    "source": "Does that justify $2,000+ in training data preparation?",
                    "as_of": "May 2026",
                },
                {
                    "rule": "azure-small-team",
                    "fires": None,
                    "detail": "undecided",
                    "advice": "",
                    "source": "x",
                },
            ],
            "rules": [
                {
                    "rule": "significant gain",
                    "passed": True,
                    "detail": "fine-tuned - few-shot accuracy = +29.7 points, 95% interval [+18.0, +41.0]: excludes zero",
                },
                {"rule": "accuracy bar", "passed": True, "detail": "fine-tuned accuracy 91.3% >= 85.0%"},
                {
                    "rule": "consistency bar",
                    "passed": True,
                    "detail": "fine-tuned consistency 97.0% >= 95.0%",
                },
                {"rule": "unsupported-content rate", "passed": None, "detail": "not measured for either arm"},
                {
                    "rule": "cost at stated volume",
                    "passed": True,
                    "detail": "fine-tuned @ together $450.00/month <= prompted $1,200.00/month",
                },
            ],
            "cheapest_platform": "together",
            "break_even": "83.3 queries/day against prompted",
            "weakest_point": "small held-out set: 60 examples (under 100)",
        },
        "examples": [
            {
                "id": "ex-7",
                "input": "My invoice is wrong " + IMG_ATTACK,
                "reference": "billing",
                "outputs": {"zero-shot": SCRIPT, "few-shot": "bug", "fine-tuned": "billing"},
                "correct": {"zero-shot": False, "few-shot": False, "fine-tuned": True},
            },
            {
                "id": "ex-8",
                "input": "The app crashes on login",
                "reference": "bug",
                "outputs": {"zero-shot": "bug", "few-shot": "bug", "fine-tuned": "account"},
                "correct": {"zero-shot": True, "few-shot": True, "fine-tuned": False},
            },
            {
                "id": "ex-9",
                "input": "Where do I change my password?",
                "reference": "account",
                "outputs": {"zero-shot": "account", "few-shot": "account", "fine-tuned": "account"},
                "correct": {"zero-shot": True, "few-shot": True, "fine-tuned": True},
            },
        ],
        "examples_total": 3,
        "stage_times": {"data": 1.2, "baseline": 45.0, "train": 312.5, "evaluate": 60.3, "report": 0.8},
    }


class _Page(HTMLParser):
    """Collects element ids, tags and every URL-bearing attribute of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.ids.add(a["id"])


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def section(html: str, sid: str) -> str:
    """The markup of one <section id=...> (sections do not nest)."""
    start = html.index(f'<section id="{sid}">')
    return html[start : html.index("</section>", start)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    # Built once for the read-only tests: drawing three plots is the slow part.
    html_path, json_path = build_report(full_state(), tmp_path_factory.mktemp("report"))
    return html_path.read_text(encoding="utf-8"), html_path, json_path


def test_full_state_has_every_section_in_order(built):
    html, html_path, json_path = built
    assert html_path.name == "report.html" and json_path.name == "report.json"
    page = parse(html)
    order = ["verdict", "task", "data", "training", "arms", "plots", "examples", "stage-times"]
    assert set(order) <= page.ids
    positions = [html.index(f'<section id="{s}">') for s in order]
    assert positions == sorted(positions)  # the verdict first, then the evidence


def test_verdict_section_shows_rules_and_facts(built):
    html = built[0]
    v = section(html, "verdict")
    assert "Recommendation: fine-tune" in v
    assert "+29.7 points over few-shot" in v
    for rule in (
        "significant gain",
        "accuracy bar",
        "consistency bar",
        "unsupported-content rate",
        "cost at stated volume",
    ):
        assert rule in v
    assert "fine-tuned accuracy 91.3% &gt;= 85.0%" in v  # the rule's numbers, escaped
    assert v.count("✓ pass") == 4 and v.count("n/a") >= 1
    assert "together" in v and "83.3 queries/day against prompted" in v
    assert "small held-out set: 60 examples" in v
    # the platform rule that fired, with its source sentence and date; the undecided one is not listed as fired
    assert "a team of 6 (under 25): count the data preparation" in v
    assert "Does that justify $2,000+ in training data preparation?" in v and "(true as of May 2026)" in v
    assert "undecided:" not in v


def test_task_and_data_sections(built):
    html = built[0]
    t = section(html, "task")
    assert "Route a support ticket" in t and "SmolLM2-135M-Instruct" in t and "lora" in t
    assert "<code>billing</code>" in t and "Answer with one label" in t
    d = section(html, "data")
    assert "300</strong> training examples" in d and "60</strong> held-out examples" in d
    assert "near_duplicate" in d and "<strong>7</strong> occurrence(s)" in d
    assert "data/train.jsonl:17" in d and "near-duplicate of line 3" in d
    assert "data/train.jsonl:0" not in d  # a file-level finding (line 0) names the file only
    assert "… 5 more" in d  # 7 occurrences, 2 locations shown
    assert "billing" in d and "40.0%" in d  # 120 of 300
    assert "42,570" in d  # estimated training tokens over the epochs


def test_training_section(built):
    html = built[0]
    tr = section(html, "training")
    assert "run-20261129-0001" in tr
    assert "learning_rate" in tr and "0.0002" in tr and "lora_rank" in tr
    assert "5 min 12 s" in tr and "187.4 tokens/s" in tr
    assert "2.5000 → 0.1250" in tr  # first and last train loss
    assert 'id="plot-training"' in tr
    assert "the last step (validation loss 0.5800)" in tr  # nothing recorded beat the last step


def test_training_names_the_weights_kept_and_the_validation_set(tmp_path):
    training = {**full_state()["training"], "kept_step": 15, "steps_run": 20}
    training.update(fit_examples=270, validation_examples=30)
    tr = section(build_report({"training": training}, tmp_path)[0].read_text(encoding="utf-8"), "training")
    assert "270 trained on, 30 for validation" in tr
    assert "step 15 of 20 (validation loss 0.5800)" in tr


def test_training_says_why_the_last_weights_stayed_over_a_lower_earlier_loss(tmp_path):
    check = {"best_step": 12, "best_loss": 0.571, "last_loss": 0.58, "diff": 0.009, "se": 0.0062}
    kept_last = {
        **full_state()["training"],
        "steps_run": 20,
        "best_check": {**check, "earlier_is_better": False},
    }
    tr = section(build_report({"training": kept_last}, tmp_path)[0].read_text(encoding="utf-8"), "training")
    assert "the last step (step 12 was lower by 0.0090, within the noise: standard error 0.0062)" in tr
    kept_earlier = {
        **kept_last,
        "kept_step": 12,
        "best_check": {**check, "diff": 0.03, "earlier_is_better": True},
    }
    tr = section(
        build_report({"training": kept_earlier}, tmp_path)[0].read_text(encoding="utf-8"), "training"
    )
    assert "step 12 of 20 (lower than the last step by 0.0300, standard error 0.0062)" in tr


def test_training_as_the_trainer_logs_it(tmp_path):
    """metrics.jsonl says `loss`, and the resolved config carries where each value came from."""
    training = full_state()["training"]
    training["metrics"] = [{"step": 0, "eval_loss": 3.0}] + [
        {"step": s, "loss": 4.0 / s} for s in range(1, 5)
    ]
    training["resolved"] = {
        "epochs": 1,
        "learning_rate": 0.001,
        "sources": {"epochs": "user", "learning_rate": "auto"},
    }
    tr = section(build_report({"training": training}, tmp_path)[0].read_text(encoding="utf-8"), "training")
    assert "4.0000 → 1.0000" in tr and 'id="plot-training"' in tr
    row = tr[tr.index(">learning_rate<") :]
    assert row.index("0.001") < row.index("auto") < row.index("</tr>")
    assert "sources" not in tr


def _arm_row(html: str, name: str) -> str:
    arms = section(html, "arms")
    start = arms.index(f'<td class="armname">{name}<')
    return arms[start : arms.index("</tr>", start)]


def test_arms_table_numbers_and_bars(built):
    html = built[0]
    tuned, zero = _arm_row(html, "fine-tuned"), _arm_row(html, "zero-shot")
    assert "91.3%" in tuned and "84.1% – 95.5%" in tuned  # accuracy with its interval
    assert "99.0%" in tuned and "97.0%" in tuned and "$0.000120" in tuned and "95 / 140" in tuned
    # The fine-tuned arm meets the accuracy bar (its interval crosses 85%, so marked unsure), the zero-shot misses.
    assert 'class="num cell pass unsure"' in tuned
    assert 'class="num cell fail"' in zero and "✗" in zero
    # Consistency 97% >= 95% clearly (interval 92-99 crosses it too); format 99% [95, 100] clearly passes.
    assert tuned.count("cell pass") >= 3
    # Cost per query is judged against the reference (best prompted) arm, few-shot.
    few = _arm_row(html, "few-shot")
    assert "reference" in few and "reference" not in zero
    assert 'title="$0.000120 &lt; $0.00121 of few-shot"' in tuned
    assert "Macro-F1" in section(html, "arms") and "Field-F1" not in section(html, "arms")
    assert 'id="bars-legend"' in html and "meets the bar (docs/guide.md)" in html


def test_paired_comparisons_once_per_pair(built):
    arms = section(built[0], "arms")
    table = arms[arms.index('id="paired-table"') :]
    assert table.count("<tr") == 1 + 2  # header + two unordered pairs (the reverse direction folded)
    assert "+29.7 pts" in table and "+18.0 to +41.0" in table and "0.00031" in table
    assert "-20.0 pts" in table and "not significant" in table


def test_plots_are_inline_images_with_content(built):
    html = built[0]
    page = parse(html)
    imgs = [a for tag, a in page.tags if tag == "img"]
    assert len(imgs) == 3  # training curves, quality against cost, monthly cost
    for a in imgs:
        src = a["src"] or ""
        assert src.startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(src.split(",", 1)[1]).decode("utf-8")
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "<path" in svg
    p = section(html, "plots")
    assert 'id="plot-quality"' in p and 'id="plot-cost"' in p
    assert "$1,200.00" in p and "$450.00" in p and "cheapest" in p
    assert "680.0 queries/day" in p and "never (the lines do not cross)" in p
    assert "guide (docs/guide.md) says azure-openai" in p


def test_untrusted_text_is_escaped(built):
    html = built[0]
    page = parse(html)
    # One script element, the page's own inline filter code: none injected, none fetched.
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts == [{}] and html.count("<script") == 1 and "examples-table" in html.split("<script>")[1]
    assert SCRIPT not in html and "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
    assert IMG_ATTACK not in html
    assert not [a for t, a in page.tags if t == "img" and a.get("src") == "x"]
    d = section(html, "examples")
    assert d.count("✓ right") == 6 and d.count("✗ wrong") == 3
    assert "ex-7" in d and "billing" in d


def test_no_network_resources(built):
    html = built[0]
    page = parse(html)
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "action", "poster", "data"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, key, value)
            if key == "href" and value:
                assert value.startswith("#"), (tag, value)  # only in-page links
    assert "@import" not in html and "url(" not in html  # CSS fetches nothing either


def test_report_json_equals_state(built):
    _html, _h, json_path = built
    assert json.loads(json_path.read_text(encoding="utf-8")) == full_state()


def test_stage_times(built):
    st = section(built[0], "stage-times")
    assert "5 min 12 s" in st and "train" in st and "74%" in st  # 312.5 of 419.8 s
    assert "0.3%" in st  # data: 1.2 of 419.8 s, not rounded away to 0%
    assert "6 min 59 s" in st  # the total


def test_writes_are_atomic(tmp_path, monkeypatch):
    out = tmp_path / "out"
    html_path, json_path = build_report(full_state(), out)
    before = html_path.read_text(encoding="utf-8")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert html_path.stat().st_mode & 0o777 == 0o666 & ~umask  # shareable, not the temp file's 0600

    calls: list[tuple[str, str]] = []
    real_replace = os.replace

    def failing_replace(src, dst):
        calls.append((str(src), str(dst)))
        if str(dst).endswith("report.html"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)  # every atomic write renames with it
    state = full_state()
    state["project"] = "changed"
    with pytest.raises(OSError, match="disk full"):
        build_report(state, out)
    # Each file was written beside its target and renamed over it; the failed rename left the old page whole.
    assert all(Path(src).parent == out and Path(src).name.endswith(".tmp") for src, _ in calls)
    assert html_path.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_task_and_data_only(tmp_path):
    state = {"project": "early", "task": full_state()["task"], "data": full_state()["data"]}
    html_path, json_path = build_report(state, tmp_path)
    html = html_path.read_text(encoding="utf-8")
    page = parse(html)
    assert {"verdict", "task", "data", "training", "arms", "plots", "examples"} <= page.ids
    assert "No verdict yet: evaluation has not run." in section(html, "verdict")
    assert "training has not run" in section(html, "training")
    assert "evaluation has not run" in section(html, "arms")
    assert "economics has not run" in section(html, "plots")
    assert "no per-example outputs recorded" in section(html, "examples")
    assert "no stage times recorded" in section(html, "stage-times")
    assert "near_duplicate" in section(html, "data")  # what is there is still shown
    assert not [t for t, _ in page.tags if t == "img"]
    assert json.loads(json_path.read_text(encoding="utf-8")) == state


def test_empty_state_renders(tmp_path):
    html = build_report({}, tmp_path)[0].read_text(encoding="utf-8")
    assert "No verdict yet: the data check has not run." in html
    assert "no task card" in html


def test_bad_sections_are_user_errors(tmp_path):
    with pytest.raises(TunewiseError, match="section 'evaluation' must be an object"):
        render_html({"evaluation": "oops"})
    with pytest.raises(TunewiseError, match="must be a JSON object"):
        render_html(["not", "a", "dict"])  # type: ignore[arg-type]


def test_state_from_the_real_stages(tmp_path):
    """The shapes the data, evaluation, economics and decide stages really produce render, numbers intact."""
    from tunewise.data.check import CheckOptions
    from tunewise.data.validate import check_files
    from tunewise.decide.verdict import Economics, decide
    from tunewise.economics.plan import CostRequest, cost_report
    from tunewise.economics.pricing import load_builtin
    from tunewise.evaluate.summary import build_summary
    from tunewise.outputs import EvalSummary

    labels = ["billing", "bug"]
    train = tmp_path / "train.jsonl"
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"ticket {i}"},
                {"role": "assistant", "content": labels[i % 2]},
            ]
        }
        for i in range(40)
    ]
    lines[5]["messages"][1]["content"] = "refnd"  # not a contract label: an error group with a location
    train.write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    data = check_files([train], opts=CheckOptions(labels=labels, near_duplicates=False)).to_json()

    records = []
    for i in range(30):
        ref = labels[i % 2]
        # Tokens and latency recorded as the engine does (the verdict needs token counts to price arms).
        measured = {"prompt_tokens": 400, "completion_tokens": 3, "latency_ms": 200.0}
        records.append(
            {
                "id": i,
                "input": f"q{i}",
                "reference": ref,
                "arm": "zero-shot",
                "output": ref if i % 3 else "maybe",
                **measured,
            }
        )
        records.append(
            {"id": i, "input": f"q{i}", "reference": ref, "arm": "fine-tuned", "output": ref, **measured}
        )
    summary = build_summary(
        records,
        {"type": "label", "labels": labels},
        task="t",
        arm_info={"fine-tuned": {"kind": "fine-tuned"}},
    )
    econ = cost_report(
        CostRequest(queries_per_day=500, prompted_cost=0.08, tuned_cost=0.02, platforms=["together"]),
        load_builtin(),
    ).to_dict()
    verdict = decide(
        EvalSummary.model_validate(summary),
        Economics(queries_per_day=500, prompted_cost=0.08, tuned_cost=0.02, platforms=["together"]),
        load_builtin(),
    ).to_dict()
    state = {
        "project": "real",
        "data": data,
        "evaluation": summary.model_dump(),
        "economics": econ,
        "verdict": verdict,
    }
    state = json.loads(json.dumps(state))  # the pipeline stores JSON
    html = build_report(state, tmp_path / "r")[0].read_text(encoding="utf-8")

    d = section(html, "data")
    assert "contract_label" in d or "label" in d
    assert f"{train}:6" in d  # the wrong label's location (line 6)
    a = section(html, "arms")
    assert "66.7%" in a and "100.0%" in a  # zero-shot 20/30, fine-tuned 30/30
    # no consistency samples were drawn, so no arm shows it meets the consistency bar: not yet, and why
    v = section(html, "verdict")
    assert "Recommendation: not yet" in v
    assert "fine-tuning is the way" in v and "consistency is unmeasured: measure consistency" in v
    p = section(html, "plots")
    assert "prompted" in p and 'id="plot-cost"' in p
    assert "$1,200.00" in p  # total computed from per-query cost when the option carries none


def test_cli_report(tmp_path, run_cli):
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(full_state()), encoding="utf-8")
    code, out, err = run_cli("report", state_file, "--out", tmp_path / "rep", "--json")
    assert code == 0, err
    paths = json.loads(out)
    assert Path(paths["html"]).is_file() and Path(paths["json"]).is_file()

    code, out, _ = run_cli("report", "--help")
    assert code == 0 and "Example: tunewise report" in out

    code, _, err = run_cli("report", tmp_path / "absent.json")
    assert code == 1 and "error:" in err and "no state file" in err


def test_doctests():
    import doctest

    from tunewise.report import plots

    for module in (report_build, plots):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_many_examples_are_capped_on_the_page(tmp_path, monkeypatch):
    # 3 arms: at most 9 cells on the page is the first 3 examples; report.json keeps all 5.
    monkeypatch.setattr(report_build, "MAX_EXAMPLE_CELLS", 9)
    one = full_state()["examples"][0]
    state = {"examples": [dict(one, id=f"ex-{i}") for i in range(5)]}
    html_path, json_path = build_report(state, tmp_path)
    d = section(html_path.read_text(encoding="utf-8"), "examples")
    assert "ex-2" in d and "ex-3" not in d
    assert "the first 3 are shown" in d and "report.json has all 5" in d
    assert len(json.loads(json_path.read_text(encoding="utf-8"))["examples"]) == 5


def test_costs_from_economics_when_the_evaluation_has_none(tmp_path):
    """The evaluation records tokens, not dollars: the pipeline's options "<arm> @ <platform>" price the arms."""
    state = full_state()
    for arm in state["evaluation"]["arms"]:
        arm["cost_per_query"] = None
    state["economics"]["options"] = [
        {
            "name": "few-shot @ together",
            "per_query": 0.0012,
            "hosting_per_month": 0.0,
            "total_per_month": 18.0,
        },
        {
            "name": "fine-tuned @ together",
            "per_query": 0.0001,
            "hosting_per_month": 150.0,
            "total_per_month": 151.5,
        },
        {
            "name": "fine-tuned @ azure-openai",
            "per_query": 0.0003,
            "hosting_per_month": 1224,
            "total_per_month": 1228.5,
        },
    ]
    state["economics"]["break_even"] = []
    state["economics"]["notes"] = ["hosting for one GPU"]
    html = build_report(state, tmp_path)[0].read_text(encoding="utf-8")
    tuned = _arm_row(html, "fine-tuned")
    assert "$0.000100" in tuned and "on together" in tuned  # the cheapest platform's per-query cost
    assert "cell pass" in tuned.split("$0.000100")[0].rsplit("<td", 1)[1]  # below few-shot's $0.00120
    assert "—" in _arm_row(html, "zero-shot")  # not priced: shown as unknown, not as zero
    p = section(html, "plots")
    assert 'id="plot-quality"' in p and "cheapest priced platform" in p and "hosting for one GPU" in p


def test_economics_error_is_shown(tmp_path):
    state = {
        "economics": {
            "error": "no option could be priced: together lacks a price",
            "hint": "add a pricing override",
        }
    }
    p = section(build_report(state, tmp_path)[0].read_text(encoding="utf-8"), "plots")
    assert "Costs could not be computed: no option could be priced: together lacks a price" in p
    assert "add a pricing override" in p


def test_text_fields_get_a_rouge_l_column_and_a_paired_row(tmp_path):
    state = full_state()
    arms = {a["name"]: a for a in state["evaluation"]["arms"]}
    arms["fine-tuned"]["text_similarity"] = {"value": 0.61, "low": 0.55, "high": 0.66}
    arms["few-shot"]["text_similarity"] = {"value": 0.42, "low": 0.37, "high": 0.47}
    for p in state["evaluation"]["paired"]:
        if {p["a"], p["b"]} == {"fine-tuned", "few-shot"}:
            sign = 1 if p["a"] == "fine-tuned" else -1
            p["text_similarity_diff"] = {"value": sign * 0.19, "low": sign * (0.12 if sign > 0 else 0.26),
                                         "high": sign * (0.26 if sign > 0 else 0.12)}  # fmt: skip
    html = build_report(state, tmp_path)[0].read_text(encoding="utf-8")
    assert "Text ROUGE-L" in section(html, "arms")
    tuned = _arm_row(html, "fine-tuned")
    assert "61.0%" in tuned and "55.0% – 66.0%" in tuned
    arms_html = section(html, "arms")
    table = arms_html[arms_html.index('id="paired-table"') :]
    row = next(r for r in table.split("<tr")[1:] if "text ROUGE-L" in r)
    assert "fine-tuned" in row and "+19.0 pts" in row and "+12.0 to +26.0" in row


def test_not_yet_leads_and_no_failing_arm_is_marked_cheapest(tmp_path):
    state = full_state()
    arms = {a["name"]: a for a in state["evaluation"]["arms"]}
    arms["fine-tuned"]["accuracy"] = {
        "value": 0.70,
        "low": 0.56,
        "high": 0.81,
    }  # under the 85% bar, as is few-shot
    reason = (
        "no option meets the bars; fine-tuning is the way (+29.7 accuracy points over few-shot, significant)"
    )
    state["verdict"] = {
        "recommendation": "not yet", "headline": f"Not yet: {reason}", "reason": reason,
        "rules": [{"rule": "accuracy bar", "passed": False, "detail": "fine-tuned accuracy 70.0% < 85.0%"}],
        "cheapest": "none named: no option meets the quality bars",
    }  # fmt: skip
    html = build_report(state, tmp_path)[0].read_text(encoding="utf-8")
    v = section(html, "verdict")
    assert "Recommendation: not yet" in v
    # the sentence and its reason come before the rules
    assert v.index("Not yet: no option meets the bars") < v.index('id="rules"')
    assert "none named: no option meets the quality bars" in v
    p = section(html, "plots")
    # prompted $1,200 and fine-tuned $450 both miss the bars: neither carries the cheapest badge
    assert "$450.00" in p and 'badge pass">cheapest' not in p
    assert "no option meets the quality bars, so none is marked cheapest" in p


def test_knowledge_task_shows_exact_match_retrieval_and_mistakes(tmp_path):
    state = full_state()
    arms = {a["name"]: a for a in state["evaluation"]["arms"]}
    arms["fine-tuned"]["exact_match"] = {"value": 0.1, "low": 0.03, "high": 0.27}
    arms["fine-tuned"]["token_f1"] = {"value": 0.2, "low": 0.12, "high": 0.3}
    rag = dict(arms["zero-shot"], name="rag", kind="prompted")
    rag.update(
        exact_match={"value": 0.6, "low": 0.42, "high": 0.76},
        token_f1={"value": 0.71, "low": 0.6, "high": 0.8},
        grounded_rate={"value": 0.8, "low": 0.62, "high": 0.9},
        recall_at_k={"value": 0.9, "low": 0.74, "high": 0.97},
        mrr={"value": 0.85, "low": 0.7, "high": 0.95},
        k=4,
        retrieval={"index": "0123456789abcdef", "top_k": 4, "retriever": "hybrid"},
        retrieval_latency_ms={"p50": 12.0, "p95": 31.0},
    )
    state["evaluation"]["arms"].append(rag)
    state["evaluation"]["paired"].append(
        {"a": "rag", "b": "fine-tuned", "n": 30, "diff": 0.0, "low": -0.1, "high": 0.1,
         "exact_match_diff": {"value": 0.5, "low": 0.3, "high": 0.7}, "exact_match_mcnemar_p": 0.0012}
    )  # fmt: skip
    state["verdict"]["mistakes"] = ["Fine-tuning when RAG solves the problem."]
    html = build_report(state, tmp_path)[0].read_text(encoding="utf-8")
    arms_html = section(html, "arms")
    assert "Exact match" in arms_html and "Token F1" in arms_html and "Recall@k" in arms_html
    row = _arm_row(html, "rag")
    assert "60.0%" in row and "42.0% – 76.0%" in row and "71.0%" in row
    # The retrieval table: only the arm that retrieved, with its index (shortened), k, recall, MRR and latency.
    table = arms_html[
        arms_html.index('id="retrieval-table"') : arms_html.index(
            "</table>", arms_html.index('id="retrieval-table"')
        )
    ]
    assert table.count("<tr") == 1 + 1
    assert "hybrid" in table and "0123456789ab<" in table and "90.0%" in table and "85.0%" in table
    assert "12 / 31" in table
    paired = arms_html[arms_html.index('id="paired-table"') :]
    em_row = next(r for r in paired.split("<tr")[1:] if "exact match" in r)
    assert "+50.0 pts" in em_row and "+30.0 to +70.0" in em_row and "0.0012" in em_row
    mistakes = section(html, "verdict")
    assert 'id="mistakes"' in mistakes and "Fine-tuning when RAG solves the problem." in mistakes


def test_a_task_without_retrieval_has_no_retrieval_table(built):
    assert 'id="retrieval-table"' not in built[0] and "Exact match" not in section(built[0], "arms")


# --- every held-out example -----------------------------------------------------------------------------------

TICKET = {"type": "json", "text_fields": ["reply"]}
TICKET_REFS = [
    {"category": "billing", "priority": "high", "reply": "We are sorry about the invoice."},
    {"category": "bug", "priority": "low", "reply": "Thanks for the report."},
    {"category": "account", "priority": "low", "reply": "Your account is unlocked."},
    {"category": "bug", "priority": "high", "reply": "We are on it."},
]
TICKET_OUTPUTS = {
    "few-shot": [
        '{"category": "billing", "priority": "low", "reply": "Sorry about the invoice."}',
        'Sure: {"category": "bug", "priority": "low", "reply": "Thanks for the report."}',
        "no idea " + SCRIPT,
        '{"category": "bug", "priority": "high", "reply": "We are on it."}',
    ],
    "fine-tuned": [
        '{"category": "billing", "priority": "high", "reply": "We are sorry about the bill."}',
        '{"category": "bug", "priority": "high", "reply": "Thanks for the report.", "extra": 1}',
        '{"category": "account", "priority": "low", "reply": "Your account is unlocked."}',
        '{"category": "other", "priority": "high", "reply": "We are on it <b>now</b>."}',
    ],
}


def ticket_state() -> dict:
    """A json contract's examples as the pipeline builds them: records scored, then grouped by example."""
    from tunewise.evaluate.summary import score_records
    from tunewise.pipeline.state import examples_from_scored

    records = [
        {"id": f"t-{i}", "input": f"ticket {i}", "reference": json.dumps(ref), "arm": arm, "output": outs[i]}
        for i, ref in enumerate(TICKET_REFS)
        for arm, outs in TICKET_OUTPUTS.items()
    ]
    examples = examples_from_scored(score_records(records, TICKET), TICKET)
    arms = [{"name": "few-shot", "kind": "prompted"}, {"name": "fine-tuned", "kind": "fine-tuned"}]
    return json.loads(
        json.dumps(
            {
                "project": "tickets",
                "evaluation": {"contract": "json", "n_examples": 4, "arms": arms},
                "examples": examples,
                "examples_total": 4,
            }
        )
    )


def rows_of(html: str) -> list[str]:
    body = section(html, "examples").split("<tbody>")[-1]
    return [r for r in body.split('<tr class="ex"')[1:]]


def arm_cells(row: str) -> list[str]:
    return row.split('<td class="out')[1:]


def test_examples_from_scored_keeps_every_arm_and_names_the_wrong_fields():
    examples = ticket_state()["examples"]
    assert [e["id"] for e in examples] == ["t-0", "t-1", "t-2", "t-3"]
    assert all(set(e["outputs"]) == {"few-shot", "fine-tuned"} for e in examples)
    assert [e["correct"]["fine-tuned"] for e in examples] == [True, False, True, False]
    assert [e["correct"]["few-shot"] for e in examples] == [False, False, False, True]
    # The reply is free text (ROUGE-L), not a field compared exactly.
    assert examples[0]["fields"] == ["category", "priority"]
    assert examples[0]["wrong_fields"] == {"few-shot": ["priority"], "fine-tuned": []}
    assert examples[1]["wrong_fields"] == {"few-shot": [], "fine-tuned": ["priority", "extra"]}
    assert examples[2]["wrong_fields"]["few-shot"] == ["category", "priority"]  # no JSON at all
    assert examples[1]["format_ok"] == {"few-shot": False, "fine-tuned": True}
    assert examples[2]["similarity"]["fine-tuned"] == 1.0


def test_every_example_is_a_row_with_the_fine_tuned_arms_own_mistakes(tmp_path):
    html_path, json_path = build_report(ticket_state(), tmp_path)
    html = html_path.read_text(encoding="utf-8")
    rows = rows_of(html)
    assert len(rows) == 4  # every held-out example, agreed on or not
    assert "4 held-out example(s)" in section(html, "examples") and "the first" not in section(
        html, "examples"
    )
    # t-3: few-shot right, fine-tuned wrong on the category: its own mistake is on the page, marked.
    few, tuned = arm_cells(rows[3])
    assert "✓ right" in few and "✗ wrong" in tuned and "wrong: <code>category</code>" in tuned
    assert 'data-ok="0"' in tuned and "data-wf='[\"category\"]'" in tuned
    assert 'data-disagree="1"' in rows[3] and 'data-disagree="0"' in rows[1]  # t-1: both wrong
    assert len(json.loads(json_path.read_text(encoding="utf-8"))["examples"]) == 4


def test_per_field_accuracy_equals_hand_computed(tmp_path):
    html = build_report(ticket_state(), tmp_path)[0].read_text(encoding="utf-8")
    table = section(html, "examples").split('id="field-accuracy"')[1].split("</table>")[0]
    got = {}
    for row in table.split("<tr>")[2:]:
        cells = [c.split("</td>")[0].split(">", 1)[1] for c in row.split("<td")[1:]]
        got[cells[0]] = [c.split(" <span")[0] for c in cells[1:]]
    # few-shot: category wrong on t-2 only (3/4); priority wrong on t-0 and t-2 (2/4); never adds a field.
    # fine-tuned: category wrong on t-3 (3/4); priority wrong on t-1 (3/4); adds "extra" on t-1 (3/4).
    assert got == {
        "category": ["75.0%", "75.0%"],
        "priority": ["50.0%", "75.0%"],
        "extra": ["100.0%", "75.0%"],
    }


def test_json_diff_marks_exactly_the_changed_fields_and_words(tmp_path):
    rows = rows_of(build_report(ticket_state(), tmp_path)[0].read_text(encoding="utf-8"))
    few, tuned = arm_cells(rows[0])
    few_diff = few.split('<div class="diff mono">')[1].split("<details>")[0]
    # priority changed; the reply lost three words and gained one; category equal.
    assert (
        '<div class="f diff"><span class="k">priority</span>: "<del>high</del><ins>low</ins>"</div>'
        in few_diff
    )
    assert few_diff.count("<del>") == 2 and few_diff.count("<ins>") == 2
    assert '"<del>We are sorry</del><ins>Sorry</ins> about the invoice."' in few_diff
    assert '<div class="f same"><span class="k">category</span>: &#34;billing&#34;</div>' in few_diff
    tuned_diff = arm_cells(rows[1])[1].split('<div class="diff mono">')[1].split("<details>")[0]
    assert '<div class="f add"><span class="k">extra</span>: <ins>1</ins></div>' in tuned_diff
    assert tuned_diff.count("<ins>") == 2 and tuned_diff.count("<del>") == 1  # priority changed, extra added
    # Untrusted text inside a diff stays text: the output with no JSON, and markup inside a JSON string.
    no_json = arm_cells(rows[2])[0]
    assert "no JSON found" in no_json and SCRIPT not in no_json and "&lt;script&gt;" in no_json
    assert "<b>now</b>" not in rows[3] and "&lt;b&gt;now&lt;/b&gt;" in rows[3]


def test_text_diff_is_word_by_word(tmp_path):
    state = {
        "evaluation": {"contract": "text", "arms": [{"name": "ft", "kind": "fine-tuned"}]},
        "examples": [
            {
                "id": "1",
                "input": "q",
                "reference": "Reset it from the account page.",
                "outputs": {"ft": "Reset it from the  <i>settings</i> page."},
                "correct": {"ft": False},
            }
        ],
    }
    (row,) = rows_of(build_report(state, tmp_path)[0].read_text(encoding="utf-8"))
    diff = row.split('<div class="diff mono">')[1].split("</div>")[0]
    assert diff == "Reset it from the  <del>account</del><ins>&lt;i&gt;settings&lt;/i&gt;</ins> page."


def test_labels_show_the_answer_without_a_diff(built):
    d = section(built[0], "examples")
    assert 'class="diff' not in d and "field-accuracy" not in d and 'id="f-field"' not in d


def test_an_older_state_with_disagreements_still_renders(tmp_path):
    old = {"disagreements": full_state()["examples"][:1]}
    html = build_report(old, tmp_path)[0].read_text(encoding="utf-8")
    d = section(html, "examples")
    assert "only the 1 example(s) where the arms disagreed" in d and len(rows_of(html)) == 1
    assert "no per-example outputs recorded" not in html


def test_the_pipeline_keeps_every_example_or_names_the_records_file(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tunewise.pipeline import state as pipeline_state
    from tunewise.spec import JsonContract

    records = tmp_path / "records.jsonl"
    lines = [
        {"id": f"t-{i}", "input": "x", "reference": json.dumps(ref), "arm": arm, "output": outs[i]}
        for i, ref in enumerate(TICKET_REFS)
        for arm, outs in TICKET_OUTPUTS.items()
    ]
    records.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    contract = JsonContract(type="json", schema={"type": "object"})
    pipeline = SimpleNamespace(
        outputs={"evaluate": SimpleNamespace(records_path=records)}, spec=SimpleNamespace(contract=contract)
    )
    examples, total, path = pipeline_state._examples(pipeline)
    assert [e["id"] for e in examples] == ["t-0", "t-1", "t-2", "t-3"] and total == 4 and path == str(records)
    monkeypatch.setattr(report_build, "MAX_EXAMPLE_CELLS", 5)  # 2 arms: 2 examples fit
    examples, total, path = pipeline_state._examples(pipeline)
    assert [e["id"] for e in examples] == ["t-0", "t-1"] and total == 4
    html = build_report({"examples": examples, "examples_total": total, "examples_records": path}, tmp_path)[
        0
    ]
    d = section(html.read_text(encoding="utf-8"), "examples")
    assert "the first 2 are shown" in d and str(records) in d
