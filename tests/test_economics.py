"""Economics: the pricing catalog, the cost arithmetic, break-even, the sweep plot and `tunewise cost/pricing`.

Every expected number is computed by hand in the comment beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunewise.economics.cost import (
    CostOption,
    break_even,
    cheapest,
    default_volumes,
    hosting_per_month,
    monthly_cost,
    per_query_cost,
    sweep,
    training_cost,
)
from tunewise.economics.plan import ArmTokens, CostRequest, build_options, cost_report
from tunewise.economics.pricing import FIGURE_FIELDS, load_builtin, load_catalog
from tunewise.errors import ConfigError, TunewiseError

# --- the guide's worked example --------------------------------------------------------------------------

PROMPTED = CostOption("prompted", 0.08)
AZURE = CostOption("fine-tuned @ azure", 0.02, hosting_per_month=hosting_per_month(per_hour=1.70))
TOGETHER = CostOption("fine-tuned @ together", 0.02, hosting_per_month=hosting_per_month(per_month=150))


def test_worked_example_monthly_totals():
    # 1.70 $/h x 24 h x 30 days = 1,224 $/month, as the guide says.
    assert hosting_per_month(per_hour=1.70) == pytest.approx(1224.0, abs=1e-9)
    # prompted: 0.08 x 500 x 30 = 1,200; fine-tuned usage 0.02 x 500 x 30 = 300, plus hosting.
    assert monthly_cost(PROMPTED, 500).total == pytest.approx(1200.0)
    azure = monthly_cost(AZURE, 500)
    assert azure.usage == pytest.approx(300.0)
    assert azure.hosting == pytest.approx(1224.0)
    assert azure.total == pytest.approx(1524.0)
    assert monthly_cost(TOGETHER, 500).total == pytest.approx(450.0)


def test_worked_example_break_even_is_680_on_azure_and_83_on_together():
    # q = 1224 / (30 x (0.08 - 0.02)) = 1224 / 1.8 = 680; q = 150 / 1.8 = 83.33...
    azure = break_even(PROMPTED, AZURE)
    together = break_even(PROMPTED, TOGETHER)
    assert azure.volume == pytest.approx(680.0)
    assert together.volume == pytest.approx(250 / 3)
    assert "(1,224.00 - 0.00) / (30 x (0.08 - 0.02)) = 680.0 queries/day" in azure.formula
    assert azure.cheaper_below == "prompted" and azure.cheaper_above == "fine-tuned @ azure"
    # At the break-even volume the two bills are equal.
    assert monthly_cost(PROMPTED, azure.volume).total == pytest.approx(
        monthly_cost(AZURE, azure.volume).total
    )


def test_worked_example_report_notes_the_guides_rounding():
    catalog = load_builtin()
    report = cost_report(
        CostRequest(
            queries_per_day=500, prompted_cost=0.08, tuned_cost=0.02, platforms=["azure-openai", "together"]
        ),
        catalog,
    )
    by_name = {m.option: m.total for m in report.monthly}
    assert by_name == pytest.approx(
        {"prompted": 1200.0, "fine-tuned @ azure-openai": 1524.0, "fine-tuned @ together": 450.0}
    )
    notes = [n for be in report.break_evens for n in be.notes]
    assert any("roughly 800" in n and "680.0" in n for n in notes)
    assert any("around 200" in n and "83.3" in n for n in notes)
    assert report.cheapest.option == "fine-tuned @ together"


# --- break-even cases ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, volume",
    [
        (CostOption("a", 0.08), CostOption("b", 0.02, hosting_per_month=1224), 680.0),
        (
            CostOption("a", 0.05, hosting_per_month=100),
            CostOption("b", 0.01, hosting_per_month=700),
            500.0,
        ),  # 600/(30x0.04)
        (
            CostOption("a", 0.10, training_cost=91.0, retrain_every_days=91),
            CostOption("b", 0.0, hosting_per_month=330),
            100.0,
        ),  # (330-30)/3
    ],
)
def test_break_even_is_symmetric(a, b, volume):
    ab, ba = break_even(a, b), break_even(b, a)
    assert ab.volume == pytest.approx(volume)
    assert ba.volume == pytest.approx(volume)
    assert (ab.cheaper_below, ab.cheaper_above) == (ba.cheaper_below, ba.cheaper_above)
    assert ab.cheaper_below != ab.cheaper_above


def test_break_even_without_crossing():
    same_rate = break_even(
        CostOption("x", 0.02, hosting_per_month=150), CostOption("y", 0.02, hosting_per_month=1224)
    )
    assert same_rate.volume is None and same_rate.cheaper_below == same_rate.cheaper_above == "x"
    identical = break_even(CostOption("x", 0.02), CostOption("y", 0.02))
    assert identical.volume is None and "same at every volume" in identical.summary
    # y is cheaper per query AND has lower fixed cost: it dominates, whatever the order.
    dominated = break_even(
        CostOption("x", 0.05, hosting_per_month=100), CostOption("y", 0.01, hosting_per_month=50)
    )
    assert dominated.volume is None and dominated.cheaper_above == "y"
    assert (
        break_even(
            CostOption("y", 0.01, hosting_per_month=50), CostOption("x", 0.05, hosting_per_month=100)
        ).cheaper_below
        == "y"
    )


def test_zero_volume_costs_only_fixed():
    # At 0 queries/day only hosting and amortized training remain: 1224 + 300 x 30/91.
    option = CostOption("ft", 0.02, hosting_per_month=1224, training_cost=300, retrain_every_days=91)
    assert monthly_cost(option, 0).total == pytest.approx(1224 + 300 * 30 / 91)
    assert monthly_cost(PROMPTED, 0).total == 0.0
    assert cheapest([PROMPTED, AZURE], 0).option == "prompted"


def test_zero_hosting_fine_tuned_is_cheaper_at_every_volume():
    free = CostOption("ft", 0.02)  # hosting 0, no training: a lower line from the origin
    be = break_even(PROMPTED, free)
    assert be.volume is None
    assert be.cheaper_below == be.cheaper_above == "ft"
    assert cheapest([PROMPTED, free], 1).option == "ft"


def test_training_is_amortized_over_the_retraining_cadence():
    # 2M tokens x 3 epochs x $25/M = $150 per run; quarterly (91 days) -> 150 x 30/91 per month.
    cost = training_cost(2_000_000, 3, 25.0)
    assert cost == pytest.approx(150.0)
    quarterly = CostOption("ft", 0.0, training_cost=cost)
    monthly = CostOption("ft", 0.0, training_cost=cost, retrain_every_days=30)
    assert quarterly.training_per_month == pytest.approx(150 * 30 / 91)
    assert monthly.training_per_month == pytest.approx(150.0)
    # evaluation tokens are added at their own price: 1M x $0.5/M = $0.50
    assert training_cost(
        2_000_000, 3, 25.0, eval_tokens=1_000_000, eval_price_per_million=0.5
    ) == pytest.approx(150.5)


def test_per_query_cost_from_measured_tokens():
    # 812.4 x 2.5/1e6 + 21.3 x 10/1e6 = 0.002031 + 0.000213 = 0.002244
    assert per_query_cost(812.4, 21.3, 2.5, 10.0) == pytest.approx(0.002244)


def test_sweep_and_default_volumes():
    rows = sweep([PROMPTED, TOGETHER], [0, 100])
    # 100/day: prompted 0.08 x 100 x 30 = 240; together 0.02 x 100 x 30 + 150 = 210
    assert rows[1] == pytest.approx(
        {"queries_per_day": 100.0, "prompted": 240.0, "fine-tuned @ together": 210.0}
    )
    volumes = default_volumes([PROMPTED, AZURE], 500, points=5)
    assert volumes[0] == 0 and volumes[-1] == pytest.approx(1360.0)  # twice the 680 break-even


# --- refusals --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["per_query", "hosting_per_month", "training_cost"])
def test_negative_prices_are_refused(field):
    with pytest.raises(TunewiseError, match="option 'bad'.*0 or more"):
        CostOption("bad", **({"per_query": 0.01} | {field: -1.0}))


def test_missing_price_is_refused():
    with pytest.raises(TunewiseError, match="prompt tokens is missing"):
        per_query_cost(None, 10, 1.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TunewiseError, match="per hour and per month"):
        hosting_per_month(per_hour=1.0, per_month=100)


# --- the catalog -----------------------------------------------------------------------------------------


def test_builtin_catalog_holds_the_guides_figures():
    c = load_builtin()
    assert c.get("azure-openai").training_per_million_tokens.value == 25.0
    assert c.get("azure-openai/gpt-4o").training_per_million_tokens.value == 80.0
    assert c.get("azure-openai").hosting_per_hour.value == 1.70
    assert c.get("azure-openai").hosting_monthly() == pytest.approx(1224.0)
    assert c.get("together").training_per_million_tokens.value == 0.48
    assert c.get("together").hosting_monthly() == 150.0
    assert c.get("vertex").hosting_monthly() == 0.0  # "no separate hosting fee" listed
    assert {"azure-openai", "together", "vertex", "bedrock", "hf-autotrain", "self-hosted"} <= set(
        c.platforms
    )


def test_every_figure_has_provenance_and_unknowns_say_why():
    for entry in load_builtin().entries:
        for name in FIGURE_FIELDS:
            fig = getattr(entry, name)
            assert fig.source and fig.date, f"{entry.id}.{name}"
            if fig.value is None:
                assert fig.note, f"{entry.id}.{name} is unknown without a note"
    # where the guide gives no number, the catalog records none
    c = load_builtin()
    assert c.get("bedrock").hosting_per_hour.value is None
    assert c.get("vertex").training_per_million_tokens.value is None
    assert c.get("self-hosted").hosting_per_hour.value is None
    # AutoTrain on Spaces: the Spaces hardware page gives an hourly rate (T4 small), no per-token price
    assert c.get("hf-autotrain").training_per_hour.value == 0.40
    assert c.get("hf-autotrain").training_per_million_tokens.value is None


def test_unknown_figure_is_refused_naming_entry_and_field():
    with pytest.raises(TunewiseError, match=r"'self-hosted/gpu': hosting_per_hour is unknown"):
        load_builtin().get("self-hosted").hosting_monthly()
    with pytest.raises(TunewiseError, match="did you mean 'together'"):
        load_builtin().get("togther")


def test_override_file_updates_and_adds_entries(tmp_path):
    f = tmp_path / "prices.yaml"
    f.write_text(
        "entries:\n"
        "  - id: self-hosted/gpu\n"
        "    hosting_per_hour: 2.0\n"
        "  - id: together/lora-up-to-16b\n"
        "    hosting_per_hour: {value: 0.5, source: my contract, date: 2026-06-01}\n"
        "  - id: acme/small\n"
        "    default: true\n"
        "    hosting_per_month: {value: 99, source: quote, date: 2026-06}\n"
    )
    c = load_catalog(f)
    assert c.get("self-hosted").hosting_monthly() == pytest.approx(2.0 * 24 * 30)
    assert str(f) in c.get("self-hosted").hosting_per_hour.source
    # per hour replaces the built-in per-month figure instead of clashing with it
    assert c.get("together").hosting_monthly() == pytest.approx(0.5 * 720)
    assert c.get("together").hosting_per_hour.date == "2026-06-01"
    assert c.get("acme").hosting_monthly() == 99.0
    assert c.sources[-1] == str(f)


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "entries:\n  - id: together/lora-up-to-16b\n    hosting_per_month: -5\n",
            "entry 'together/lora-up-to-16b': hosting_per_month.value: a price cannot be negative",
        ),
        (
            "entries:\n  - id: acme/x\n    hosting_per_hour: {source: s, date: d}\n",
            "entry 'acme/x': hosting_per_hour.value: has no value",
        ),
        (
            "entries:\n  - id: acme/x\n    hosting_per_hour: {value: null, source: s, date: d}\n",
            "entry 'acme/x': hosting_per_hour: value is null: add a note",
        ),
        (
            "entries:\n  - id: acme/x\n    hosting_per_hour: {value: 1.0, date: d}\n",
            "entry 'acme/x': hosting_per_hour.source: is required",
        ),
        ("entries:\n  - id: acme/x\n    hosting_per_houre: 1.0\n", "did you mean 'hosting_per_hour'"),
        ("entries:\n  - hosting_per_hour: 1.0\n", "entry #1: needs an 'id'"),
    ],
)
def test_bad_override_is_refused_naming_entry_and_field(tmp_path, body, message):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_catalog(f)
    assert message in str(info.value)


def test_measured_tokens_are_priced_per_platform(tmp_path):
    f = tmp_path / "prices.yaml"
    f.write_text(
        "entries:\n  - id: together/lora-up-to-16b\n"
        "    inference_input_per_million_tokens: 0.2\n    inference_output_per_million_tokens: 0.4\n"
    )
    request = CostRequest(
        queries_per_day=1000,
        platforms=["together", "azure-openai"],
        arms=[ArmTokens("few-shot", "prompted", 1000, 50), ArmTokens("fine-tuned", "fine-tuned", 100, 50)],
    )
    options, skipped, _ = build_options(request, load_catalog(f))
    by_name = {o.name: o for o in options}
    # few-shot: 1000 x 0.2e-6 + 50 x 0.4e-6 = 0.00022; fine-tuned: 100 x 0.2e-6 + 50 x 0.4e-6 = 0.00004
    assert by_name["few-shot @ together"].per_query == pytest.approx(0.00022)
    assert by_name["few-shot @ together"].hosting_per_month == 0.0
    assert by_name["fine-tuned @ together"].per_query == pytest.approx(0.00004)
    assert by_name["fine-tuned @ together"].hosting_per_month == 150.0
    # Azure has no per-token inference price in the guide: skipped, naming entry and field
    assert "few-shot @ azure-openai" not in by_name
    assert any("azure-openai/gpt-4o-mini" in s and "inference_input_per_million_tokens" in s for s in skipped)


def test_no_priceable_option_is_an_error():
    request = CostRequest(
        queries_per_day=10, arms=[ArmTokens("few-shot", "prompted", 100, 10)], platforms=["bedrock"]
    )
    with pytest.raises(TunewiseError, match="no option could be priced.*bedrock/custom-model"):
        build_options(request, load_builtin())


# --- the plot --------------------------------------------------------------------------------------------


def test_sweep_plot_writes_png_and_svg_with_break_even_marked(tmp_path):
    from tunewise.economics.plot import plot_sweep

    files = plot_sweep([PROMPTED, AZURE, TOGETHER], tmp_path / "cost.png", queries_per_day=500)
    assert [p.suffix for p in files] == [".png", ".svg"]
    assert files[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = files[1].read_text()
    assert "680/day" in svg and "83/day" in svg  # both break-even points annotated


# --- the CLI ---------------------------------------------------------------------------------------------

WORKED = ["cost", "--prompted-cost", "0.08", "--tuned-cost", "0.02", "--queries-per-day", "500"]


def test_cli_cost_worked_example_with_catalog_platforms(run_cli):
    code, out, err = run_cli(*WORKED, "--platform", "azure-openai,together")
    assert code == 0, err
    assert "$1,200.00" in out  # prompted per month
    assert "$300.00" in out and "$1,224.00" in out and "$1,524.00" in out  # 300 + 1,224 on Azure
    assert "$150.00" in out and "$450.00" in out  # 300 + 150 on Together
    assert "prompted vs fine-tuned @ azure-openai: 680.0 queries/day" in out
    assert "prompted vs fine-tuned @ together: 83.3 queries/day" in out
    assert "roughly 800" in out and "around 200" in out
    assert "Cheapest at 500 queries/day: fine-tuned @ together ($450.00/month)" in out


def test_cli_cost_explicit_hosting(run_cli):
    code, out, _ = run_cli(*WORKED, "--hosting-per-hour", "1.70")
    assert code == 0
    assert "$1,524.00" in out and "680.0 queries/day" in out
    code, out, _ = run_cli(*WORKED, "--hosting-per-month", "150", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["break_even"][0]["volume"] == pytest.approx(250 / 3)
    assert {m["option"]: m["total"] for m in payload["monthly"]} == pytest.approx(
        {"prompted": 1200.0, "fine-tuned": 450.0}
    )


def test_cli_cost_zero_volume(run_cli):
    code, out, _ = run_cli(
        "cost",
        "--prompted-cost",
        "0.08",
        "--tuned-cost",
        "0.02",
        "--hosting-per-hour",
        "1.70",
        "--queries-per-day",
        "0",
    )
    assert code == 0
    assert "Cheapest at 0 queries/day: prompted ($0.00/month)" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--prompted-cost", "-0.08", "--tuned-cost", "0.02", "--queries-per-day", "500"],
            "cost per query must be a number of 0 or more",
        ),
        (["--prompted-cost", "0.08", "--tuned-cost", "0.02"], "no volume given"),
        (
            ["--tuned-cost", "0.02", "--platform", "self-hosted", "--queries-per-day", "5"],
            "'self-hosted/gpu': hosting_per_hour is unknown",
        ),
        (["--queries-per-day", "5"], "nothing to price"),
    ],
)
def test_cli_cost_refuses_bad_inputs(run_cli, args, message):
    code, out, err = run_cli("cost", *args)
    assert code == 1
    assert err.startswith("error:") and message in err
    assert "Traceback" not in err and out == ""


def test_cli_cost_from_spec_with_pricing_file(run_cli, tmp_path):
    (tmp_path / "prices.yaml").write_text("entries:\n  - id: self-hosted/gpu\n    hosting_per_hour: 0.5\n")
    (tmp_path / "tunewise.yaml").write_text(
        "task: {name: t, target: Given a ticket reply with its intent label}\n"
        "data: {train: data/train.jsonl}\n"
        "economics:\n  queries_per_day: 200\n  platforms: [together, self-hosted]\n  pricing_file: prices.yaml\n"
    )
    code, out, err = run_cli(
        "cost",
        "--spec",
        str(tmp_path / "tunewise.yaml"),
        "--prompted-cost",
        "0.08",
        "--tuned-cost",
        "0.02",
        "--json",
    )
    assert code == 0, err
    totals = {m["option"]: m["total"] for m in json.loads(out)["monthly"]}
    # 200/day: prompted 0.08 x 6000 = 480; together 0.02 x 6000 + 150 = 270; self-hosted 120 + 0.5 x 720 = 480
    assert totals == pytest.approx(
        {"prompted": 480.0, "fine-tuned @ together": 270.0, "fine-tuned @ self-hosted": 480.0}
    )


def test_cli_cost_writes_plot(run_cli, tmp_path):
    code, _, err = run_cli(*WORKED, "--platform", "azure-openai,together", "--plot", str(tmp_path / "sweep"))
    assert code == 0
    assert (tmp_path / "sweep.png").stat().st_size > 0 and (tmp_path / "sweep.svg").stat().st_size > 0
    assert "sweep.svg" in err


def test_cli_pricing_lists_sources(run_cli):
    code, out, _ = run_cli("pricing", "--platform", "azure-openai")
    assert code == 0
    assert "azure-openai/gpt-4o-mini (default for azure-openai)" in out
    assert "$25.00" in out and "$1.70" in out and "$80.00" in out
    assert "Azure OpenAI pricing page (2026-05, " in out  # then the figure's age in days
    assert "together" not in out.split("\n", 1)[1]  # filtered to one platform
    code, out, _ = run_cli("pricing", "--json")
    ids = [e["id"] for e in json.loads(out)["entries"]]
    assert "together/lora-up-to-16b" in ids and "self-hosted/gpu" in ids


@pytest.mark.parametrize("command", ["cost", "pricing", "advise", "decide"])
def test_help_has_an_example(run_cli, command):
    code, out, _ = run_cli(command, "--help")
    assert code == 0
    assert "Example" in out and f"tunewise {command}" in out


def test_economics_and_decide_never_import_torch():
    code = (
        "import sys\n"
        "import tunewise.economics.cost, tunewise.economics.pricing, tunewise.economics.plan, tunewise.economics.plot\n"
        "import tunewise.decide.advisor, tunewise.decide.verdict\n"
        "import tunewise.economics.cli, tunewise.decide.cli\n"
        "bad = [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"imported eagerly: {result.stdout}"


def test_pricing_yaml_ships_in_the_package():
    import tomllib

    import tunewise.economics

    assert (Path(tunewise.economics.__file__).parent / "pricing.yaml").is_file()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "**/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["tunewise"]


def test_cli_cost_prices_measured_tokens_from_an_evaluation(run_cli, tmp_path):
    (tmp_path / "p.yaml").write_text(
        "entries:\n  - id: together/lora-up-to-16b\n"
        "    inference_input_per_million_tokens: 1.0\n    inference_output_per_million_tokens: 2.0\n"
    )
    summary = {
        "task": "t",
        "n_examples": 100,
        "contract": "label",
        "arms": [
            {
                "name": "few-shot",
                "kind": "prompted",
                "accuracy": {"value": 0.7},
                "prompt_tokens": 1000,
                "completion_tokens": 50,
            },
            {
                "name": "fine-tuned",
                "kind": "fine-tuned",
                "accuracy": {"value": 0.9},
                "prompt_tokens": 100,
                "completion_tokens": 50,
            },
        ],
    }
    (tmp_path / "s.json").write_text(json.dumps(summary))
    code, out, err = run_cli(
        "cost", "--eval", str(tmp_path / "s.json"), "--platform", "together,azure-openai",
        "--pricing", str(tmp_path / "p.yaml"), "--queries-per-day", "1000", "--json",
    )  # fmt: skip
    assert code == 0, err
    totals = {m["option"]: m["total"] for m in json.loads(out)["monthly"]}
    # few-shot: (1000 x 1 + 50 x 2)/1e6 = 0.0011 x 30,000 = 33; fine-tuned: (100 + 100)/1e6 x 30,000 = 6 + 150
    assert totals == pytest.approx({"few-shot @ together": 33.0, "fine-tuned @ together": 156.0})
    skipped = json.loads(out)["skipped"]
    assert any("azure-openai/gpt-4o-mini" in s for s in skipped)  # no per-token price in the guide


def test_self_hosted_gpu_pays_hosting_for_every_arm_and_warns_past_capacity(tmp_path):
    f = tmp_path / "gpu.yaml"
    f.write_text(
        "entries:\n  - id: self-hosted/gpu\n    hosting_per_hour: 1.0\n    throughput_tokens_per_second: 10\n"
    )
    request = CostRequest(
        queries_per_day=5000,
        platforms=["self-hosted"],
        arms=[ArmTokens("few-shot", "prompted", 150, 50), ArmTokens("fine-tuned", "fine-tuned", 50, 50)],
    )
    options, skipped, notes = build_options(request, load_catalog(f))
    # $1/h x 720 h = $720/month for both arms; tokens are free on an hourly GPU
    assert [(o.name, o.per_query, o.hosting_per_month) for o in options] == [
        ("few-shot @ self-hosted", 0.0, pytest.approx(720.0)),
        ("fine-tuned @ self-hosted", 0.0, pytest.approx(720.0)),
    ]
    # capacity: 10 tokens/s x 86,400 s / 200 tokens = 4,320/day < 5,000; fine-tuned: / 100 = 8,640/day
    assert len(notes) == 1 and "capacity of 4,320/day" in notes[0] and notes[0].startswith("few-shot")
    assert skipped == []


@pytest.mark.parametrize(
    "module",
    [
        "tunewise.economics.cost",
        "tunewise.economics.plan",
        "tunewise.decide.advisor",
        "tunewise.decide.verdict",
    ],
)
def test_docstring_examples_hold(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


def test_a_hostile_pricing_file_is_one_error_line(run_cli, tmp_path):
    """The pricing file is read under the spec's bounds: an alias bomb is refused, not expanded, and bytes that
    are not UTF-8 are named; each is one `error:` line."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):  # 10^9 values once every alias is expanded
        lines.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    lines.append("entries: [*i]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"entries: []\n# \xff\xfe\n")
    for path, expected in ((bomb, "alias"), (binary, "not UTF-8")):
        code, _, stderr = run_cli(
            "cost", "--queries-per-day", "500", "--platform", "together", "--pricing", str(path)
        )
        assert code == 1 and "Traceback" not in stderr, stderr
        assert stderr.count("error:") == 1 and str(path) in stderr and expected in stderr, stderr
