"""What retrieval costs: the vector database, the embeddings and the passages' tokens, priced by hand in the
practitioner's guide's worked example and from measured tokens."""

from __future__ import annotations

import json

import pytest

from tunewise.economics.cost import CostOption, all_in_cost, break_even, monthly_cost, payback
from tunewise.economics.plan import CostRequest, arm_tokens, corpus_tokens, cost_report
from tunewise.economics.pricing import load_builtin, load_catalog
from tunewise.economics.retrieval import closed_book, passage_tokens
from tunewise.economics.settings import economics_settings
from tunewise.errors import TunewiseError
from tunewise.outputs import EvalSummary
from tunewise.spec import EconomicsSpec

CATALOG = load_builtin()


def test_catalog_holds_both_vector_indexes_with_sources():
    embedded, managed = CATALOG.get("vector-db"), CATALOG.get("vector-db/managed")
    assert embedded.id == "vector-db/embedded" and embedded.hosting_monthly() == 0.0
    assert managed.hosting_monthly() == 200.0  # the top of the guide's $50-200/month
    assert "$50 to $200/month" in managed.hosting_per_month.source


def test_rag_in_the_worked_example_by_hand():
    # The guide's worked example at 500 queries/day: prompted $0.08/query; fine-tuned $0.02/query on Azure
    # ($1.70/h = $1,224/month). RAG: the prompted model with passages, say $0.08/query as well, plus a managed
    # vector database at $200/month.
    request = CostRequest(
        queries_per_day=500, prompted_cost=0.08, tuned_cost=0.02, rag_cost=0.08,
        platforms=["azure-openai"], vector_db="managed", data_preparation_cost=3000,
    )  # fmt: skip
    report = cost_report(request, CATALOG)
    monthly = {m.option: m for m in report.monthly}
    assert monthly["rag"].total == pytest.approx(0.08 * 500 * 30 + 200)  # 1,400
    assert monthly["rag"].retrieval == 200.0
    assert monthly["fine-tuned @ azure-openai"].total == pytest.approx(300 + 1224)  # 1,524
    be = next(b for b in report.break_evens if {b.a, b.b} == {"rag", "fine-tuned @ azure-openai"})
    # q = (1224 - 200) / (30 x (0.08 - 0.02)) = 1024 / 1.8
    assert be.volume == pytest.approx(1024 / 1.8)
    assert be.cheaper_below == "rag" and be.cheaper_above == "fine-tuned @ azure-openai"
    all_in = {a.option: a for a in report.all_in}
    assert all_in["rag"].retrieval == pytest.approx(200 / (30 * 500))  # $0.0133 a query
    assert all_in["rag"].total == pytest.approx(0.08 + 200 / 15000)
    # RAG has no training or data preparation to pay back: fine-tuning's one-off $3,000 against a saving of
    # (1,400 - 1,524) < 0 never pays back.
    assert be.payback.invest == "fine-tuned @ azure-openai" and be.payback.months is None


def test_embedded_index_costs_nothing_a_month():
    report = cost_report(CostRequest(queries_per_day=500, prompted_cost=0.08, rag_cost=0.085), CATALOG)
    rag = next(m for m in report.monthly if m.option == "rag")
    assert rag.retrieval == 0.0 and rag.total == pytest.approx(0.085 * 15000)
    assert report.to_dict()["retrieval"][0]["vector_db_per_month"] == 0.0
    assert report.prices[0]["entry"] == "vector-db/embedded"


def test_corpus_embedding_is_one_off_and_amortised_like_training():
    o = CostOption("rag", 0.01, arm="rag", vector_db_per_month=50, corpus_embedding_cost=91.0)
    assert o.retrieval_per_month == pytest.approx(50 + 91 * 30 / 91)  # 80 a month
    assert monthly_cost(o, 100).total == pytest.approx(0.01 * 3000 + 80)
    a = all_in_cost(o, 100)
    assert a.retrieval == pytest.approx(50 / 3000 + 91 / (91 * 100))
    assert o.one_off == 91.0
    p = payback(CostOption("prompted", 0.02), o, 100)  # 91 one-off; saving (60) - (30 + 50) < 0
    assert p.invest == "rag" and p.months is None


def summary() -> EvalSummary:
    arm = {"accuracy": {"value": 0.5}, "completion_tokens": 10.0}
    return EvalSummary.model_validate(
        {
            "n_examples": 100,
            "arms": [
                {"name": "zero-shot", "kind": "prompted", "prompt_tokens": 200.0, **arm},
                {"name": "rag", "kind": "prompted", "prompt_tokens": 1400.0, **arm},
                {"name": "fine-tuned", "kind": "fine-tuned", "prompt_tokens": 100.0, **arm},
                {"name": "rag+fine-tuned", "kind": "fine-tuned", "prompt_tokens": 1300.0, **arm},
            ],
            "arm_info": {"rag": {"corpus_tokens": 5_000_000}},
        }
    )


def test_passages_measured_against_the_closed_book_arm():
    assert closed_book("rag+scored") == "zero-shot+scored"
    assert passage_tokens(1400, 200) == 1200.0
    rows = {a.name: a for a in arm_tokens(summary())}
    assert rows["rag"].passage_tokens == 1200.0 and rows["rag"].query_tokens == 200.0
    assert rows["rag+fine-tuned"].passage_tokens == 1200.0  # 1300 - fine-tuned's 100
    assert rows["zero-shot"].passage_tokens is None
    assert corpus_tokens(summary()) == 5_000_000


def test_measured_rag_arms_priced_with_every_component(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "entries:\n  - id: together/lora-up-to-16b\n    inference_input_per_million_tokens: 0.2\n"
        "    inference_output_per_million_tokens: 0.6\n"
    )
    catalog = load_catalog(prices)
    s = summary()
    request = CostRequest(
        queries_per_day=1000, platforms=["together"], arms=arm_tokens(s), vector_db_per_month=120.0,
        embedding_per_million_tokens=0.02, corpus_tokens=corpus_tokens(s), data_preparation_cost=3000,
    )  # fmt: skip
    report = cost_report(request, catalog)
    opts = {o.arm: o for o in report.options}
    zero, rag, ft, ragft = opts["zero-shot"], opts["rag"], opts["fine-tuned"], opts["rag+fine-tuned"]
    # rag: 1400 x 0.2/1e6 + 10 x 0.6/1e6 = 0.000286, + the query embedding 200 x 0.02/1e6 = 0.000004
    assert rag.per_query == pytest.approx(0.000286 + 0.000004)
    assert rag.passage_cost == pytest.approx(1200 * 0.2 / 1e6)
    assert rag.corpus_embedding_cost == pytest.approx(5_000_000 * 0.02 / 1e6)  # $0.10 one-off
    assert rag.vector_db_per_month == 120.0 and rag.hosting_per_month == 0.0
    assert zero.vector_db_per_month == 0.0 and zero.per_query == pytest.approx(200 * 0.2e-6 + 10 * 0.6e-6)
    # rag+fine-tuned is hosted and trained like fine-tuned, and pays for retrieval too
    assert ragft.hosting_per_month == ft.hosting_per_month == 150.0
    assert ragft.data_preparation_cost == 3000 and rag.data_preparation_cost == 0
    assert ragft.fixed_per_month == pytest.approx(150 + 120 + 0.10 * 30 / 91)
    # break-even between every two options: 4 arms, 6 pairs
    assert len(report.break_evens) == 6
    be = next(b for b in report.break_evens if {b.a, b.b} == {rag.name, ft.name})
    assert be.volume == pytest.approx(
        (ft.fixed_per_month - rag.fixed_per_month) / (30 * (rag.per_query - ft.per_query))
    )


def test_cost_cli_shows_the_rag_components(run_cli, tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(summary().model_dump_json())
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "entries:\n  - id: together/lora-up-to-16b\n    inference_input_per_million_tokens: 0.2\n"
        "    inference_output_per_million_tokens: 0.6\n"
    )
    code, out, _ = run_cli(
        "cost", "--eval", path, "--platform", "together", "--pricing", prices, "--queries-per-day", "500",
        "--vector-db", "managed",
    )  # fmt: skip
    assert code == 0, out
    assert "retrieval/mo" in out and "RAG components" in out
    assert "rag @ together: passages +1,200 prompt tokens/query ($0.000240/query, in inference)" in out
    assert "vector database $200.00/month" in out
    assert "vector-db/managed hosting_per_month: $200.00/month" in out
    code, out, _ = run_cli(
        "cost",
        "--eval",
        path,
        "--platform",
        "together",
        "--pricing",
        prices,
        "--queries-per-day",
        "500",
        "--json",
    )
    rows = {r["option"]: r for r in json.loads(out)["retrieval"]}
    assert rows["rag @ together"]["vector_db_per_month"] == 0.0  # the embedded index by default


def test_vector_db_choice_is_checked():
    s = economics_settings(EconomicsSpec(vector_db="managed"), queries_per_day=10)
    assert s.vector_db == "managed"
    assert economics_settings(EconomicsSpec(), queries_per_day=10).vector_db == "embedded"
    with pytest.raises(TunewiseError, match="unknown vector database 'manged'.*did you mean 'managed'"):
        economics_settings(None, queries_per_day=10, vector_db="manged")
    assert break_even(CostOption("a", 0.1), CostOption("b", 0.1)).volume is None


def test_variants_of_the_retrieval_arms():
    from tunewise.economics.retrieval import is_rag_tuned

    assert closed_book("rag+fine-tuned+scored") == "fine-tuned+scored"
    assert closed_book("rag+fine-tuned:train-1") == "fine-tuned"
    assert is_rag_tuned("rag+fine-tuned+constrained") and not is_rag_tuned("rag+constrained")
    s = summary()
    s.arm_info = {"rag": {"retrieval": {"index": "abc", "tokens": 4321}}}
    assert corpus_tokens(s) == 4321.0  # the index's size, as the evaluation records it


def test_given_rag_tuned_cost_is_hosted_like_the_fine_tuned_model():
    request = CostRequest(
        queries_per_day=500, prompted_cost=0.08, tuned_cost=0.02, rag_cost=0.09, rag_tuned_cost=0.025,
        platforms=["together"], vector_db_per_month=75.0, data_preparation_cost=3000,
    )  # fmt: skip
    monthly = {m.option: m for m in cost_report(request, CATALOG).monthly}
    # 0.025 x 15,000 + Together's $150 hosting + the $75 vector database
    assert monthly["rag+fine-tuned @ together"].total == pytest.approx(375 + 150 + 75)
    assert monthly["rag"].total == pytest.approx(1350 + 75)
    # without a fine-tuned cost there is no hosting to copy: skipped, with the flag to give
    report = cost_report(CostRequest(queries_per_day=500, prompted_cost=0.08, rag_tuned_cost=0.025), CATALOG)
    assert [o.name for o in report.options] == ["prompted"]
    assert "rag+fine-tuned: give --tuned-cost too" in report.skipped[0]


def test_the_run_trained_with_passages_is_priced_from_its_own_tokens_and_hours(tmp_path):
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "entries:\n  - id: together/lora-up-to-16b\n    inference_input_per_million_tokens: 0.2\n"
        "    inference_output_per_million_tokens: 0.6\n    training_per_million_tokens: 0.5\n"
        "  - id: hf-endpoints/t4\n    inference_input_per_million_tokens: 0\n"
        "    inference_output_per_million_tokens: 0\n    training_per_hour: 0.4\n    hosting_per_hour: 0.5\n"
    )
    catalog = load_catalog(prices)
    base = dict(queries_per_day=1000, arms=arm_tokens(summary()), vector_db_per_month=0.0, epochs=3)
    closed_only = dict(training_tokens=200_000, training_hours=0.5)
    with_rag = dict(closed_only, rag_training_tokens=1_400_000, rag_training_hours=2.0)
    for platform, closed_cost, rag_cost in (("together", 0.3, 2.1), ("hf-endpoints", 0.2, 0.8)):
        # per token: 200,000 x 3 epochs x $0.5/M = $0.30 closed-book; 1,400,000 x 3 x 0.5/M = $2.10 with passages
        # per hour: 0.5 h x $0.40 = $0.20; 2 h x $0.40 = $0.80
        report = cost_report(CostRequest(platforms=[platform], **base, **with_rag), catalog)
        opts = {o.arm: o for o in report.options}
        assert opts["fine-tuned"].training_cost == pytest.approx(closed_cost)
        assert opts["rag+fine-tuned"].training_cost == pytest.approx(rag_cost)
        assert opts["rag"].training_cost == 0.0
        # Without the passage run's own figures, both arms are priced from the closed-book run.
        report = cost_report(CostRequest(platforms=[platform], **base, **closed_only), catalog)
        opts = {o.arm: o for o in report.options}
        assert opts["rag+fine-tuned"].training_cost == pytest.approx(closed_cost)
