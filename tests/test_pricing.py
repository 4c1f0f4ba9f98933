"""The dated price catalog, `tunewise pricing` ages and `pricing update`, the all-in cost per query, and the
scaffold's default platforms being priceable. Expected numbers are computed by hand beside each assertion."""

from __future__ import annotations

import datetime as dt
from importlib import resources

import pytest
import yaml

from tunewise.economics.cost import (
    DATA_PREPARATION_COST,
    GUIDE_EXAMPLE,
    RETRAIN_EVERY_DAYS,
    CostOption,
    all_in_cost,
    break_even_all_in,
    payback,
)
from tunewise.economics.plan import ArmTokens, CostRequest, cost_report
from tunewise.economics.pricing import (
    FIGURE_FIELDS,
    load_builtin,
    load_catalog,
    parse_date,
    source_kind,
    stale_figures,
    update_pricing_file,
)
from tunewise.errors import ConfigError, TunewiseError

# --- every shipped figure is sourced and dated -----------------------------------------------------------


def _shipped_figures():
    text = resources.files("tunewise.economics").joinpath("pricing.yaml").read_text(encoding="utf-8")
    for entry in yaml.safe_load(text)["entries"]:
        for field in FIGURE_FIELDS:
            if field in entry:
                yield entry["id"], field, entry[field]


def test_every_shipped_figure_has_a_url_or_guide_source_and_a_date():
    figures = list(_shipped_figures())
    assert len(figures) > 60
    for entry_id, field, fig in figures:
        where = f"{entry_id}.{field}"
        assert source_kind(str(fig.get("source", ""))) is not None, f"{where}: source {fig.get('source')!r}"
        date = fig.get("date")
        date = date.isoformat() if isinstance(date, dt.date) else str(date)
        assert parse_date(date) is not None, f"{where}: date {date!r}"
        if fig.get("value") is None:
            assert fig.get("note"), f"{where}: unknown without a reason"


def test_source_check_refuses_what_is_not_a_url_or_the_guide():
    # the check the test above relies on fails on an unsourced or vaguely sourced figure
    assert source_kind("") is None
    assert source_kind("Azure pricing page") is None
    assert source_kind("https://x.example/a b") is None  # not one URL
    assert source_kind("https://huggingface.co/docs/hub/spaces-gpus") == "url"
    assert source_kind("practitioner's guide (docs/guide.md), citing X") == "guide"


def test_catalog_holds_vendor_page_figures():
    c = load_builtin()
    hf = c.get("hf-endpoints")
    assert hf.id == "hf-endpoints/nvidia-t4-x1" and hf.hosting_applies_to == "all"
    assert hf.hosting_per_hour.value == 0.5
    assert hf.hosting_per_hour.source == "https://huggingface.co/docs/inference-endpoints/support/pricing"
    assert hf.hosting_monthly() == pytest.approx(360.0)  # 0.5 x 24 x 30
    assert c.get("hf-endpoints/nvidia-l4-x1").hosting_per_hour.value == 0.8
    assert c.get("hf-autotrain").training_per_hour.source == "https://huggingface.co/docs/hub/spaces-gpus"
    openai = c.get("openai")
    assert "closed to new users" in openai.description
    assert openai.training_per_million_tokens.value is None and "closed to new users" in (
        openai.training_per_million_tokens.note or ""
    )
    assert "Provisioned Throughput" in (c.get("bedrock").hosting_per_hour.note or "")


# --- ages and warnings -----------------------------------------------------------------------------------


def test_age_and_stale_entries():
    c = load_builtin()
    fig = c.get("azure-openai").hosting_per_hour
    assert (
        fig.age_days(dt.date(2026, 12, 7)) == 220
    )  # 2026-05-01 -> 2026-12-01 is 31+30+31+31+30+31+30 = 214 days, +6
    stale = {e.id: days for e, days in stale_figures(c, today=dt.date(2026, 12, 7))}
    assert stale["azure-openai/gpt-4o-mini"] == 220
    assert "hf-endpoints/nvidia-t4-x1" not in stale  # read 2026-12-07: 0 days old
    assert stale_figures(c, today=dt.date(2026, 7, 1)) == []  # 61 days after 2026-05-01: none over 90


def test_cli_pricing_warns_one_line_per_stale_entry(run_cli):
    code, out, err = run_cli("pricing")
    assert code == 0
    assert "d old)" in out  # each figure shows its age
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    expected = {e.id for e, _ in stale_figures(load_builtin())}
    assert {w.split(":")[1].strip() for w in warnings} == expected
    assert len(warnings) == len(expected)


# --- pricing update --------------------------------------------------------------------------------------

GOOD_UPDATE = """\
entries:
  - id: together/lora-up-to-16b
    inference_input_per_million_tokens: {value: 0.2, source: "https://www.together.ai/pricing", date: 2026-12-01}
    inference_output_per_million_tokens: {value: 0.2, source: "https://www.together.ai/pricing", date: 2026-12-01}
  - id: acme/small
    hosting_per_hour: {value: 1.25, source: "https://acme.example/pricing", date: 2026-11-30}
"""


def test_update_merges_sourced_figures_into_the_users_file(tmp_path):
    target = tmp_path / "prices.yaml"
    target.write_text(
        "entries:\n  - id: self-hosted/gpu\n"
        "    hosting_per_hour: {value: 2.1, source: my invoice, date: 2026-10-01}\n"
    )
    update = tmp_path / "new.yaml"
    update.write_text(GOOD_UPDATE)
    updated, added = update_pricing_file(target, update)
    assert (updated, added) == ([], ["together/lora-up-to-16b", "acme/small"])
    c = load_catalog(target)
    assert c.get("self-hosted").hosting_per_hour.value == 2.1  # kept
    t = c.get("together")
    assert t.inference_input_per_million_tokens.value == 0.2
    assert t.inference_input_per_million_tokens.date == "2026-12-01"
    assert t.training_per_million_tokens.value == 0.48  # untouched built-in field
    assert c.get("acme").hosting_monthly() == pytest.approx(900.0)  # 1.25 x 24 x 30
    # a second update of a known id replaces the fields it names
    update.write_text(
        "entries:\n  - id: acme/small\n"
        "    hosting_per_hour: {value: 1.5, source: 'https://acme.example/pricing', date: 2026-12-05}\n"
    )
    assert update_pricing_file(target, update) == (["acme/small"], [])
    assert load_catalog(target).get("acme").hosting_per_hour.value == 1.5
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temp file, nothing left behind


@pytest.mark.parametrize(
    "figure, message",
    [
        (
            "0.2",
            "entry 'together/lora-up-to-16b': inference_input_per_million_tokens: give {value, source, date}",
        ),
        ("{value: 0.2, date: 2026-12-01}", "inference_input_per_million_tokens: has no source"),
        ("{value: 0.2, source: 'https://x.example'}", "inference_input_per_million_tokens: has no date"),
    ],
)
def test_update_refuses_a_figure_without_source_or_date(tmp_path, figure, message):
    target = tmp_path / "prices.yaml"
    update = tmp_path / "new.yaml"
    update.write_text(
        f"entries:\n  - id: together/lora-up-to-16b\n    inference_input_per_million_tokens: {figure}\n"
    )
    with pytest.raises(ConfigError) as exc:
        update_pricing_file(target, update)
    assert message in str(exc.value)
    assert not target.exists()  # nothing written


def test_cli_pricing_update_into_the_specs_pricing_file(run_cli, tmp_path):
    (tmp_path / "new.yaml").write_text(GOOD_UPDATE)
    (tmp_path / "tunewise.yaml").write_text(
        "task: {name: t, target: t}\ndata: {train: d.jsonl}\neconomics: {pricing_file: my-prices.yaml}\n"
    )
    code, out, _ = run_cli(
        "pricing", "update", str(tmp_path / "new.yaml"), "--spec", str(tmp_path / "tunewise.yaml")
    )
    assert code == 0, out
    assert "2 added" in out
    code, out, _ = run_cli("pricing", "--spec", str(tmp_path / "tunewise.yaml"), "--platform", "acme")
    assert code == 0 and "https://acme.example/pricing (2026-11-30" in out
    # a bare number: one error line naming the entry and the field
    (tmp_path / "bad.yaml").write_text("entries:\n  - id: acme/small\n    hosting_per_hour: 3\n")
    code, _, err = run_cli(
        "pricing", "update", str(tmp_path / "bad.yaml"), "--into", str(tmp_path / "x.yaml")
    )
    assert code == 1
    assert "entry 'acme/small': hosting_per_hour" in err and "Traceback" not in err


# --- all-in cost per query -------------------------------------------------------------------------------


def test_all_in_cost_of_the_worked_example_by_hand():
    q = GUIDE_EXAMPLE["queries_per_day"]  # 500
    azure = CostOption(
        "fine-tuned @ azure",
        GUIDE_EXAMPLE["tuned_per_query"],
        hosting_per_month=GUIDE_EXAMPLE["hosting_per_month"]["azure-openai"],
        data_preparation_cost=DATA_PREPARATION_COST,
    )
    a = all_in_cost(azure, q)
    # inference 0.02; hosting 1,224 / (30 x 500) = 0.0816; no training figure in the example;
    # data preparation 3,000 / (91 x 500) = 0.065934...; total 0.167534...
    assert a.inference == pytest.approx(0.02)
    assert a.hosting == pytest.approx(0.0816)
    assert a.training == 0.0
    assert a.data_preparation == pytest.approx(3000 / 45500)
    assert a.total == pytest.approx(0.02 + 0.0816 + 3000 / 45500)
    assert RETRAIN_EVERY_DAYS == 91.0
    # with a training run: 2M tokens x 3 epochs x $25/M = $150 -> 150 / (91 x 500) per query
    trained = CostOption(
        "t", 0.02, hosting_per_month=1224.0, training_cost=150.0, data_preparation_cost=3000.0
    )
    assert all_in_cost(trained, q).training == pytest.approx(150 / 45500)
    # the prompted arm pays inference only
    assert all_in_cost(CostOption("prompted", 0.08), q).total == pytest.approx(0.08)
    with pytest.raises(TunewiseError, match="more than 0 queries/day"):
        all_in_cost(azure, 0)


def test_payback_and_all_in_break_even_by_hand():
    prompted = CostOption("prompted", 0.08)
    together = CostOption("ft", 0.02, hosting_per_month=150.0, data_preparation_cost=3000.0)
    # saving at 500/day: 1,200 - (300 + 150) = 750 a month; 3,000 / 750 = 4 months
    p = payback(prompted, together, 500)
    assert (p.invest, p.saving_per_month, p.months) == ("ft", 750.0, pytest.approx(4.0))
    # azure: 1,200 - (300 + 1,224) < 0 -> never pays back
    azure = CostOption("az", 0.02, hosting_per_month=1224.0, data_preparation_cost=3000.0)
    assert payback(prompted, azure, 500).months is None
    # all-in break-even: (150 + 3,000 x 30 / 91) / 1.8 = (150 + 989.01...) / 1.8 = 632.78...
    assert break_even_all_in(prompted, together) == pytest.approx((150 + 3000 * 30 / 91) / 1.8)
    assert payback(prompted, CostOption("p2", 0.05), 500) is None  # no one-off cost on either side


def test_cost_report_carries_all_in_payback_and_sources():
    req = CostRequest(
        queries_per_day=500,
        prompted_cost=0.08,
        tuned_cost=0.02,
        platforms=["together"],
        data_preparation_cost=3000,
    )
    report = cost_report(req, load_builtin())
    d = report.to_dict()
    tuned = next(a for a in d["all_in"] if a["option"] == "fine-tuned @ together")
    assert tuned["total"] == pytest.approx(0.02 + 150 / 15000 + 3000 / 45500)
    be = d["break_even"][0]
    assert be["payback"]["months"] == pytest.approx(4.0)
    assert {"entry": "together/lora-up-to-16b", "field": "hosting_per_month"}.items() <= d["prices"][
        0
    ].items()
    assert d["prices"][0]["source"].startswith("practitioner's guide")


def test_cli_cost_shows_all_in_components_and_price_sources(run_cli):
    code, out, _ = run_cli(
        "cost", "--prompted-cost", "0.08", "--tuned-cost", "0.02", "--platform", "azure-openai,together",
        "--queries-per-day", "500",
    )  # fmt: skip
    assert code == 0
    assert "All-in cost per query at 500 queries/day" in out
    # azure: 0.02 + 0.0816 + 0.0659 = 0.1675
    assert "fine-tuned @ azure-openai     $0.0200     $0.0816     $0.0000     $0.0659     $0.1675" in out
    assert "payback of fine-tuned @ together's one-off costs at 500 queries/day: 4.0 months" in out
    assert "Prices used" in out and "azure-openai/gpt-4o-mini hosting_per_hour: $1.70/hour" in out


# --- a fresh project can be priced -----------------------------------------------------------------------


def test_scaffold_and_default_platforms_are_priceable(tmp_path):
    from tunewise.scaffold import scaffold
    from tunewise.spec import EconomicsSpec, load_spec

    project = scaffold(tmp_path / "proj")
    spec = load_spec(project.spec_path)
    assert spec.economics.platforms == list(EconomicsSpec().platforms)
    catalog = load_builtin()
    arms = [ArmTokens("few-shot", "prompted", 900, 4), ArmTokens("fine-tuned", "fine-tuned", 60, 4)]
    for platform in spec.economics.platforms:
        req = CostRequest(
            queries_per_day=spec.economics.queries_per_day,
            platforms=[platform],
            arms=arms,
            training_tokens=200_000,
            epochs=3,
            training_hours=0.5,
            data_preparation_cost=spec.economics.data_preparation_cost,
        )
        report = cost_report(req, catalog)
        assert report.skipped == [], platform
        assert {o.arm for o in report.options} == {"few-shot", "fine-tuned"}
    # hf-endpoints by hand: each arm pays 0.5 x 24 x 30 = $360/month hosting; the fine-tuned arm also
    # 0.5 h x $0.40 = $0.20 training and $3,000 data preparation, amortised over 91 days at 500/day
    tuned = next(a for a in report.all_in if a.option == "fine-tuned @ hf-endpoints")
    assert tuned.hosting == pytest.approx(360 / 15000)
    assert tuned.training == pytest.approx(0.2 / 45500)
    assert tuned.data_preparation == pytest.approx(3000 / 45500)


def test_report_cost_section_lists_all_in_payback_and_sources():
    from tunewise.report.build import _economics_view

    req = CostRequest(
        queries_per_day=500,
        prompted_cost=0.08,
        tuned_cost=0.02,
        platforms=["together"],
        data_preparation_cost=3000,
    )
    view = _economics_view(cost_report(req, load_builtin()).to_dict(), [])
    notes = "\n".join(view["notes"])
    # 0.02 + 150 / 15,000 + 3,000 / 45,500 = 0.0959...
    assert (
        "all-in cost per query of fine-tuned @ together: $0.0959 = inference $0.0200 + hosting $0.0100"
        in notes
    )
    assert "payback of fine-tuned @ together's one-off costs against prompted: 4.0 months" in notes
    assert "price used: together/lora-up-to-16b hosting_per_month $150.00, practitioner's guide" in notes


def test_cli_decide_shows_all_in_cost_per_arm(run_cli, tmp_path):
    import json

    from tests.test_verdict import both_meet_bars

    path = tmp_path / "eval_summary.json"
    path.write_text(json.dumps(both_meet_bars()))
    code, out, err = run_cli(
        "decide", str(path), "--prompted-cost", "0.08", "--tuned-cost", "0.02",
        "--platform", "together", "--queries-per-day", "500",
    )  # fmt: skip
    assert code == 0, err
    assert "All-in cost per query at 500 queries/day" in out
    # 0.02 + 150 / 15,000 + 3,000 / (91 x 500) = 0.0959
    assert "fine-tuned @ together     $0.0200     $0.0100     $0.0000     $0.0659     $0.0959" in out
    code, out, _ = run_cli(
        "decide", str(path), "--prompted-cost", "0.08", "--tuned-cost", "0.02",
        "--platform", "together", "--queries-per-day", "500", "--json",
    )  # fmt: skip
    rows = {r["option"]: r for r in json.loads(out)["all_in"]}
    assert rows["fine-tuned @ together"]["data_preparation"] == pytest.approx(3000 / 45500)
