"""`tunewise eval`'s terminal tables: the measures against the reference that some arm has, and only those."""

from __future__ import annotations

import pytest
from rich.console import Console

from tunewise.evaluate import cli


@pytest.fixture
def console(monkeypatch) -> Console:
    recorded = Console(record=True, width=220)
    monkeypatch.setattr(cli, "out", recorded)
    return recorded


def _m(value: float, low: float, high: float) -> dict:
    return {"value": value, "low": low, "high": high}


def test_a_text_contract_shows_rouge_l_and_chrf_beside_exact_match(console):
    arms = [
        {"name": "zero-shot", "exact_match": _m(0.0, 0.0, 0.1), "token_f1": _m(0.05, 0.01, 0.1),
         "rouge_l": _m(0.0, 0.0, 0.0), "chrf": _m(0.0, 0.0, 0.0)},
        {"name": "few-shot", "exact_match": _m(0.0, 0.0, 0.1), "token_f1": _m(0.2, 0.1, 0.3),
         "rouge_l": _m(0.222, 0.166, 0.272), "chrf": _m(0.28, 0.214, 0.339)},
    ]  # fmt: skip
    cli.render_reference_metrics("reply", arms)
    text = console.export_text()
    assert "reply: against the reference (95% intervals)" in text
    header = next(line for line in text.splitlines() if "arm" in line)
    assert [c in header for c in ("exact match", "token F1", "ROUGE-L", "chrF")] == [True] * 4
    assert "text ROUGE-L" not in header and "recall@k" not in header and "MRR" not in header
    few = next(line for line in text.splitlines() if "few-shot" in line)
    assert "22.2% [17%, 27%]" in few and "28.0% [21%, 34%]" in few


def test_json_text_fields_and_retrieval_get_their_columns_and_nothing_prints_without_them(console):
    arms = [
        {"name": "rag", "text_similarity": _m(0.5, 0.4, 0.6), "text_chrf": None,
         "recall_at_k": _m(0.9, 0.8, 0.95), "k": 5, "mrr": _m(0.864, 0.8, 0.9)},
        {"name": "zero-shot", "text_similarity": _m(0.1, 0.05, 0.2)},
    ]  # fmt: skip
    cli.render_reference_metrics("extract", arms)
    text = console.export_text()
    assert "extract: against the reference and retrieval (95% intervals)" in text
    header = next(line for line in text.splitlines() if "arm" in line)
    assert "text ROUGE-L" in header and "text chrF" not in header and "exact match" not in header
    rag = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("rag"))
    assert "90.0% [80%, 95%] (k=5)" in rag and "86.4% [80%, 90%]" in rag
    zero = next(line for line in text.splitlines() if "zero-shot" in line)
    assert zero.count("-") >= 2  # no retrieval for the closed-book arm
    console.export_text(clear=True)
    cli.render_reference_metrics("labels", [{"name": "few-shot", "accuracy": _m(0.9, 0.8, 0.95)}])
    assert console.export_text() == ""
