"""The evaluation summary built from per-example records, checked against hand-computed numbers."""

from __future__ import annotations

import doctest
import json

import pytest

from tunewise.errors import TunewiseError
from tunewise.evaluate import summary
from tunewise.evaluate.stats import mcnemar_exact, wilson
from tunewise.evaluate.summary import build_summary, score_records

LABEL = {"type": "label", "labels": ["yes", "no", "maybe"]}


def summary_json(*args, **kwargs) -> dict:
    """The summary as stored (`model_dump()`): its JSON shape is what decide, report and economics read."""
    return build_summary(*args, **kwargs).model_dump()


def test_doctests():
    result = doctest.testmod(summary)
    assert result.attempted > 0 and result.failed == 0


def _label_records():
    refs = ["yes", "no", "yes", "maybe", "no"]
    arms = {
        # strict 2/5 (ids 0, 3); lenient 4/5 ('Yes.', 'NO' parse; 'yes or no' is refused)
        "few-shot": ["Yes.", "NO", "yes or no", "maybe", "no"],
        # strict 4/5; id 2 says 'no'
        "fine-tuned": ["yes", "no", "no", "maybe", "no"],
    }
    # few-shot strict: 'Yes.' no, 'NO' no, 'yes or no' no, 'maybe' yes, 'no' yes -> 2/5
    latencies = {"few-shot": [100, 200, 300, 400, 500], "fine-tuned": [10, 20, 30, 40, 1000]}
    records = []
    for arm, outputs in arms.items():
        for i, (ref, out) in enumerate(zip(refs, outputs, strict=True)):
            records.append(
                {
                    "id": f"ex{i}",
                    "input": f"question {i}",
                    "reference": ref,
                    "arm": arm,
                    "output": out,
                    "samples": [out, out] if arm == "fine-tuned" else ([out, "yes"] if i < 2 else []),
                    "latency_ms": latencies[arm][i],
                    "prompt_tokens": 800 + i if arm == "few-shot" else 50,
                    "completion_tokens": 3,
                }
            )
    return records


def test_label_summary_hand_computed():
    s = summary_json(_label_records(), LABEL, task="triage")
    assert (s["task"], s["n_examples"], s["contract"]) == ("triage", 5, "label")
    few, ft = s["arms"]
    assert (few["name"], few["kind"], few["constrained"]) == ("few-shot", "prompted", False)
    assert (ft["name"], ft["kind"]) == ("fine-tuned", "fine-tuned")

    assert few["accuracy"]["value"] == pytest.approx(2 / 5)
    assert few["accuracy"]["low"] == pytest.approx(wilson(2, 5).low)
    assert few["accuracy_lenient"]["value"] == pytest.approx(4 / 5)
    assert few["format_compliance"]["value"] == pytest.approx(2 / 5)
    assert ft["accuracy"]["value"] == pytest.approx(4 / 5)
    assert ft["format_compliance"]["value"] == 1.0

    # Consistency: few-shot has samples for ex0 ('Yes.' vs 'yes': same answer, different validity -> no) and
    # ex1 ('NO' vs 'yes': no); the other three have none and are not counted. Fine-tuned: 5/5 identical.
    assert few["consistency"]["value"] == 0.0 and few["consistency"]["n"] == 2
    assert few["consistency_answer"]["value"] == 0.5
    assert ft["consistency"]["value"] == 1.0 and ft["consistency"]["n"] == 5

    # Latency percentiles (numpy linear): few-shot p50 300, p95 = 400 + 0.8 * 100; fine-tuned p95 = 40 + .8 * 960
    assert few["latency_ms"] == pytest.approx({"p50": 300.0, "p95": 480.0})
    assert ft["latency_ms"] == pytest.approx({"p50": 30.0, "p95": 808.0})
    assert few["prompt_tokens"] == pytest.approx(802.0)
    assert ft["completion_tokens"] == 3.0
    assert few["cost_per_query"] is None

    # Macro-F1 of the fine-tuned arm: yes tp1 fn1 -> 2/3; no tp2 fp1 -> 4/5; maybe 1.
    assert ft["macro_f1"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    assert ft["confusion"]["rows"] == ["yes", "no", "maybe"]
    assert ft["confusion"]["matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0]]
    assert ft["field_f1"] is None
    assert few["unsupported_rate"]["value"] == 0.0  # label answers invent nothing

    # Paired: every ordered pair. fine-tuned vs few-shot: ft right & fs wrong on ex0, ex1 (b=2); fs right and
    # ft wrong on none -> diff 0.4, McNemar p = 2 * 1/4 = 0.5.
    pairs = {(p["a"], p["b"]): p for p in s["paired"]}
    assert set(pairs) == {("few-shot", "fine-tuned"), ("fine-tuned", "few-shot")}
    p = pairs[("fine-tuned", "few-shot")]
    assert p["metric"] == "accuracy" and p["n"] == 5
    assert p["diff"] == pytest.approx(0.4) and p["mcnemar_p"] == pytest.approx(0.5)
    assert p["low"] <= p["diff"] <= p["high"]
    assert p["latency_p50_ratio"] == pytest.approx(30 / 300)
    assert p["prompt_tokens_ratio"] == pytest.approx(50 / 802)
    assert pairs[("few-shot", "fine-tuned")]["diff"] == pytest.approx(-0.4)
    assert pairs[("few-shot", "fine-tuned")]["low"] == pytest.approx(-p["high"])
    json.dumps(s)  # the summary is plain JSON


def test_json_summary_field_f1_and_unsupported():
    contract = {"type": "json", "schema": {"type": "object", "required": ["id"]}}
    rows = [
        # exact (key order differs), compliant
        ("Order ORD-1 please", '{"id":"ORD-1","n":2}', '{"n": 2, "id": "ORD-1"}'),
        # fenced: lenient-correct only; 2 of 2 fields
        ("Order ORD-2", '{"id":"ORD-2","n":1}', '```json\n{"id": "ORD-2", "n": 1}\n```'),
        # wrong id (invented) and schema ok: 1 of 2 fields right
        ("Order ORD-3", '{"id":"ORD-3","n":1}', '{"id": "ORD-4", "n": 1}'),
        # not JSON: nothing predicted
        ("Order ORD-5", '{"id":"ORD-5","n":1}', "sorry"),
    ]
    records = [
        {"id": i, "input": inp, "reference": ref, "arm": "zero-shot", "output": out}
        for i, (inp, ref, out) in enumerate(rows)
    ]
    s = summary_json(records, contract, task="orders")
    arm = s["arms"][0]
    assert arm["accuracy"]["value"] == 0.25
    assert arm["accuracy_lenient"]["value"] == 0.5
    assert arm["format_compliance"]["value"] == 0.5  # the fence and 'sorry' fail
    # Field micro F1: TP = 2 + 2 + 1 + 0 = 5; predicted = 2 + 2 + 2 + 0 = 6; reference = 8 -> 10 / 14.
    assert arm["field_f1"] == pytest.approx(10 / 14)
    assert arm["field_precision"] == pytest.approx(5 / 6) and arm["field_recall"] == pytest.approx(5 / 8)
    # Unsupported: only ORD-4 is invented; "n": 2 is in the reference.
    assert arm["unsupported_rate"]["value"] == 0.25
    assert arm["macro_f1"] is None and arm["consistency"] is None
    assert s["paired"] == []
    assert arm["latency_ms"] is None  # no latency recorded


def test_json_text_fields_give_a_rouge_l_mean_per_arm_and_a_paired_difference():
    contract = {"type": "json", "text_fields": ["reply"]}
    refs = [
        '{"intent": "refund", "reply": "we will refund your order"}',
        '{"intent": "cancel", "reply": "done"}',
    ]
    outputs = {
        # intent right both times; reply F1 8/11 (hand-computed in test_scorers) and 1.0
        "fine-tuned": ['{"intent": "refund", "reply": "We will refund the order today"}',
                       '{"intent": "cancel", "reply": "Done."}'],
        # intent wrong once; reply 0 (no common word) and 0 (not JSON)
        "few-shot": ['{"intent": "cancel", "reply": "Hello there"}', "sorry"],
    }  # fmt: skip
    records = [
        {"id": i, "input": "msg", "reference": ref, "arm": arm, "output": out}
        for arm, outs in outputs.items()
        for i, (ref, out) in enumerate(zip(refs, outs, strict=True))
    ]
    s = summary_json(records, contract, task="replies")
    arms = {a["name"]: a for a in s["arms"]}
    assert arms["fine-tuned"]["accuracy"]["value"] == 1.0 and arms["few-shot"]["accuracy"]["value"] == 0.0
    assert arms["fine-tuned"]["text_similarity"]["value"] == pytest.approx((8 / 11 + 1.0) / 2, abs=1e-4)
    assert arms["few-shot"]["text_similarity"]["value"] == 0.0
    # Field F1 over the structured leaves only: fine-tuned 2 of 2, few-shot 0 of 1 predicted, 2 in the references.
    assert arms["fine-tuned"]["field_f1"] == 1.0 and arms["few-shot"]["field_f1"] == 0.0
    pair = next(p for p in s["paired"] if p["a"] == "fine-tuned")
    assert pair["text_similarity_diff"]["value"] == pytest.approx((8 / 11 + 1.0) / 2, abs=1e-4)
    assert pair["text_similarity_diff"]["low"] <= pair["text_similarity_diff"]["value"]
    # Without text fields there is nothing to compare.
    plain = summary_json(records, {"type": "json"}, task="replies")
    assert plain["arms"][0]["text_similarity"] is None and plain["paired"][0]["text_similarity_diff"] is None


def test_text_contract_has_no_format_compliance_and_missing_usage_is_null():
    records = [
        {"id": 1, "input": "hi", "reference": "Hello!", "arm": "gpt", "output": "hello", "latency_ms": None},
    ]
    arm = summary_json(records, "text", task="t")["arms"][0]
    assert arm["format_compliance"] is None
    assert arm["kind"] == "endpoint"  # not a local arm name
    assert arm["latency_ms"] is None and arm["prompt_tokens"] is None
    assert (arm["accuracy"]["value"], arm["accuracy_lenient"]["value"]) == (0.0, 1.0)


def test_arm_info_and_partial_overlap():
    records = [{"id": i, "input": "q", "reference": "yes", "arm": "a", "output": "yes"} for i in range(4)] + [
        {"id": i, "input": "q", "reference": "yes", "arm": "b", "output": "no"} for i in range(2, 6)
    ]
    s = summary_json(records, LABEL, task="t", arm_info={"b": {"kind": "prompted", "constrained": True}})
    assert s["n_examples"] == 6
    assert (s["arms"][1]["kind"], s["arms"][1]["constrained"]) == ("prompted", True)
    p = next(p for p in s["paired"] if p["a"] == "a")
    # Only ids 2 and 3 are shared: a right, b wrong on both -> diff 1.0, p = 2 / 4.
    assert p["n"] == 2 and p["diff"] == 1.0
    assert p["mcnemar_p"] == mcnemar_exact([1, 1], [0, 0]) == 0.5


def test_variant_arms_carry_their_variant_and_kind():
    records = [
        {"id": i, "input": "q", "reference": "yes", "arm": arm, "output": out, **extra}
        for i in range(2)
        for arm, out, extra in [
            ("few-shot", "Yes!", {}),
            ("few-shot+scored", "yes", {"constrained": True, "variant": "scored"}),
            ("fine-tuned+scored", "yes", {}),
        ]
    ]
    s = summary_json(records, LABEL, task="t")
    arms = {a["name"]: a for a in s["arms"]}
    assert [(a["kind"], a["variant"], a["constrained"]) for a in arms.values()] == [
        ("prompted", "free", False),
        ("prompted", "scored", True),
        ("fine-tuned", "scored", False),  # from the name alone; the runner also sets constrained
    ]
    assert arms["few-shot"]["format_compliance"]["value"] == 0.0
    assert arms["few-shot+scored"]["format_compliance"]["value"] == 1.0


def test_bad_records_are_user_errors():
    with pytest.raises(TunewiseError, match="lacks reference"):
        score_records([{"id": 1, "input": "q", "arm": "a", "output": "x"}], LABEL)
    with pytest.raises(TunewiseError, match="several records"):
        summary_json([{"id": 1, "input": "q", "reference": "yes", "arm": "a", "output": "x"}] * 2, LABEL, "t")
    with pytest.raises(TunewiseError, match="no evaluation records"):
        summary_json([], LABEL, "t")


def test_banking77_small_reference_arm(shared_datasets):
    """On real data: an arm that echoes the reference scores 1.0 everywhere; a constant arm scores its share."""
    folder = shared_datasets / "banking77"
    labels = json.loads((folder / "labels-small.json").read_text())
    rows = [json.loads(line) for line in (folder / "test-small.jsonl").read_text().splitlines() if line]
    records = []
    for i, row in enumerate(rows):
        user, ref = row["messages"][0]["content"], row["messages"][-1]["content"]
        records.append({"id": i, "input": user, "reference": ref, "arm": "oracle", "output": ref})
        records.append({"id": i, "input": user, "reference": ref, "arm": "constant", "output": labels[0]})
    s = summary_json(records, {"type": "label", "labels": labels}, task="banking77")
    oracle, constant = s["arms"]
    share = sum(1 for r in rows if r["messages"][-1]["content"] == labels[0]) / len(rows)
    assert oracle["accuracy"]["value"] == 1.0 and oracle["macro_f1"] == 1.0
    assert oracle["unsupported_rate"]["value"] == 0.0
    assert constant["accuracy"]["value"] == pytest.approx(share)
    assert s["n_examples"] == len(rows) == 100


def test_schema_enum_values_are_not_unsupported_content():
    from tunewise.evaluate.summary import score_records

    contract = {
        "type": "json",
        "schema": {"type": "object", "properties": {"category": {"enum": ["billing", "refund"]}}},
    }
    rows = score_records(
        [
            {
                "id": 1,
                "input": "my card was charged twice",
                "reference": '{"category": "billing"}',
                "arm": "a",
                "output": '{"category": "refund"}',
            },
            {
                "id": 2,
                "input": "my card was charged twice",
                "reference": '{"category": "billing"}',
                "arm": "a",
                "output": '{"category": "Acme Corp"}',
            },
        ],
        contract,
    )
    assert (
        rows[0]["correct"] is False and rows[0]["unsupported"] is False
    )  # wrong, but a value the contract offers
    assert rows[1]["unsupported"] is True  # invented
