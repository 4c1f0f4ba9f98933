"""Scorers and the unsupported-content heuristic against hand-computed values."""

from __future__ import annotations

import doctest
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewise.evaluate import scorers, unsupported
from tunewise.evaluate.scorers import (
    canonical_json,
    consistency,
    field_match,
    format_ok,
    label_metrics,
    parse_json_lenient,
    parse_json_strict,
    parse_label_lenient,
    score,
)
from tunewise.evaluate.unsupported import extract_values, is_unsupported, unsupported_values
from tunewise.spec import parse_spec

LABELS = ["positive", "negative", "very positive", "card_arrival"]
LABEL = {"type": "label", "labels": LABELS}
JSON = {"type": "json"}


@pytest.mark.parametrize("module", [scorers, unsupported])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# --- labels -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output, strict, lenient",
    [
        ("positive", True, True),
        ("  positive\n", True, True),  # surrounding whitespace is not content
        ("Positive", False, True),
        ('"positive."', False, True),
        ("**Positive**", False, True),
        ("The sentiment of this review is positive.", False, True),
        ("positive, not negative", False, False),  # two labels named: refused
        ("It is very positive!", False, False),  # a different label (longest match wins), so wrong
        ("nonpositive", False, False),  # not a word-bounded mention
        ("", False, False),
    ],
)
def test_label_strict_and_lenient(output, strict, lenient):
    s = score(output, "positive", LABEL)
    assert (s.correct, s.correct_lenient) == (strict, lenient)
    assert s.format_ok is strict  # the only valid format is the bare label


def test_lenient_label_prefers_longest_and_maps_underscores():
    assert parse_label_lenient("Answer: Very Positive", LABELS) == "very positive"
    assert parse_label_lenient("card arrival", LABELS) == "card_arrival"
    assert parse_label_lenient("Intent: card-arrival.", LABELS) == "card_arrival"
    # Both 'positive' inside 'very positive' and a separate 'negative': two labels remain, refused.
    assert parse_label_lenient("very positive or negative", LABELS) is None


def test_label_metrics_hand_computed():
    refs = ["a", "a", "a", "b", "b", "c"]
    preds = ["a", "a", "b", "b", None, "a"]
    m = label_metrics(refs, preds, ["a", "b", "c", "d"])
    # a: tp 2, fp 1 (c->a), fn 1 -> F1 4/6; b: tp 1, fp 1, fn 1 -> 2/4; c: tp 0 -> 0. d absent: not averaged.
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["macro_f1"] == pytest.approx((4 / 6 + 2 / 4 + 0) / 3)
    assert m["confusion"] == {
        "rows": ["a", "b", "c"],
        "columns": ["a", "b", "c", None],
        "matrix": [[2, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 0]],
    }


def test_contract_from_spec_model():
    spec = parse_spec(
        "task: {name: t, target: classify the sentiment of a review}\n"
        "contract: {type: label, labels: [positive, negative]}\n"
        "data: {train: [x.jsonl]}\n"
    )
    assert score("Negative.", "negative", spec.contract).correct_lenient
    schema_spec = parse_spec(
        "task: {name: t, target: extract the order id as json}\n"
        "contract: {type: json, schema: {type: object, required: [order]}}\n"
        "data: {train: [x.jsonl]}\n"
    )
    assert format_ok('{"order": "ORD-1"}', schema_spec.contract) is True
    assert format_ok('{"id": "ORD-1"}', schema_spec.contract) is False


# --- JSON -------------------------------------------------------------------------------------------------

REF = '{"intent":"refund","order":{"id":"ORD-998","items":[1,2]},"urgent":false}'


@pytest.mark.parametrize(
    "output, strict, lenient",
    [
        (REF, True, True),
        # key order and whitespace are not content
        (
            '{ "urgent": false,\n  "order": {"items": [1, 2], "id": "ORD-998"}, "intent": "refund" }',
            True,
            True,
        ),
        # 1.0 is the JSON number 1
        ('{"intent":"refund","order":{"id":"ORD-998","items":[1.0,2]},"urgent":false}', True, True),
        # nested value differs / list order differs / false is not 0
        ('{"intent":"refund","order":{"id":"ORD-999","items":[1,2]},"urgent":false}', False, False),
        ('{"intent":"refund","order":{"id":"ORD-998","items":[2,1]},"urgent":false}', False, False),
        ('{"intent":"refund","order":{"id":"ORD-998","items":[1,2]},"urgent":0}', False, False),
        # an extra key is a different answer
        ('{"intent":"refund","order":{"id":"ORD-998","items":[1,2]},"urgent":false,"x":1}', False, False),
        # fences and prose: lenient only
        (f"```json\n{REF}\n```", False, True),
        (f"```\n{REF}\n```", False, True),
        (f"Here is the JSON you asked for: {REF} Let me know!", False, True),
        # invalid JSON
        ('{"intent": "refund", "order": {"id": "ORD-998"', False, False),
        ("{'intent': 'refund'}", False, False),
        ("", False, False),
    ],
)
def test_json_exact_match(output, strict, lenient):
    s = score(output, REF, JSON)
    assert (s.correct, s.correct_lenient) == (strict, lenient)


def test_json_field_level_hand_computed():
    # Reference leaves: intent, order.id, order.items[0], order.items[1], urgent = 5.
    # Prediction leaves: intent (right), order.id (wrong), order.items[0] (right), extra (not in ref) = 4.
    out = '{"intent": "refund", "order": {"id": "ORD-1", "items": [1]}, "extra": "x"}'
    s = score(out, REF, JSON)
    assert (s.fields.true_positives, s.fields.n_predicted, s.fields.n_reference) == (2, 4, 5)
    assert s.fields.precision == pytest.approx(0.5)
    assert s.fields.recall == pytest.approx(0.4)
    assert s.fields.f1 == pytest.approx(2 * 0.5 * 0.4 / 0.9)
    # Invalid JSON predicts nothing: precision 0 by convention, recall 0, F1 0.
    bad = score("not json", REF, JSON)
    assert (bad.fields.true_positives, bad.fields.n_predicted, bad.fields.f1) == (0, 0, 0.0)
    # Field credit uses the lenient parse: a fenced perfect answer gets F1 1 but fails format compliance.
    fenced = score(f"```json\n{REF}\n```", REF, JSON)
    assert fenced.fields.f1 == 1.0 and fenced.format_ok is False


REPLY_CONTRACT = {"type": "json", "text_fields": ["reply", "meta.note"]}
REPLY_REF = (
    '{"intent": "refund", "reply": "We will refund your order", "meta": {"note": "call back", "id": 7}}'
)


def test_text_fields_leave_exact_match_and_field_f1_and_are_scored_by_rouge_l():
    # Structured fields all right, the prose worded differently: correct, with a hand-computed ROUGE-L.
    out = '{"intent": "refund", "reply": "We will refund the order today", "meta": {"id": 7, "note": "call"}}'
    s = score(out, REPLY_REF, REPLY_CONTRACT)
    assert s.correct and s.correct_lenient
    # Leaves compared: intent, meta.id (the two prose fields are out): both right.
    assert (s.fields.true_positives, s.fields.n_predicted, s.fields.n_reference) == (2, 2, 2)
    # reply: LCS "we will refund order" = 4 words; P = 4/6, R = 4/5, F1 = 8/11.
    # meta.note: LCS "call" = 1; P = 1/1, R = 1/2, F1 = 2/3.
    assert s.text_similarity == pytest.approx((8 / 11 + 2 / 3) / 2, abs=1e-4)
    # Without text fields the same output is wrong and every leaf counts.
    plain = score(out, REPLY_REF, JSON)
    assert not plain.correct and plain.text_similarity is None
    assert (plain.fields.true_positives, plain.fields.n_reference) == (2, 4)


def test_text_fields_a_wrong_structured_field_or_missing_prose():
    wrong = score('{"intent": "cancel", "reply": "We will refund your order", "meta": {"note": "call back", "id": 7}}',
                  REPLY_REF, REPLY_CONTRACT)  # fmt: skip
    assert not wrong.correct and wrong.text_similarity == 1.0
    # Prose missing from the answer: still exact on the structure (the schema decides whether that is allowed),
    # similarity 0 for the missing field.
    missing = score('{"intent": "refund", "meta": {"id": 7, "note": "call back"}}', REPLY_REF, REPLY_CONTRACT)
    assert missing.correct and missing.text_similarity == pytest.approx(0.5)
    # Not JSON at all: nothing right, similarity 0; non-English prose still has words.
    assert score("sorry", REPLY_REF, REPLY_CONTRACT).text_similarity == 0.0
    assert scorers.text_similarity(
        "Wir erstatten Ihre Bestellung", "wir erstatten die Bestellung"
    ) == pytest.approx(0.75)


def test_text_fields_do_not_break_answer_consistency():
    samples = [
        '{"intent": "refund", "reply": "Sorry, refunding now."}',
        '{"intent": "refund", "reply": "Done."}',
    ]
    assert consistency(samples, {"type": "json", "text_fields": ["reply"]}).answer
    assert not consistency(samples, JSON).answer


def _reply_spec(contract: str):
    return parse_spec(
        "task: {name: t, target: reply to a support ticket as json}\n"
        f"contract: {contract}\n"
        "data: {train: [x.jsonl]}\n"
    )


def test_text_fields_from_the_spec_and_their_validation():
    from tunewise.errors import ConfigError

    spec = _reply_spec("{type: json, schema: {type: object}, text_fields: [reply]}")
    assert score('{"a": 1, "reply": "hi"}', '{"a": 1, "reply": "hello"}', spec.contract).correct
    with pytest.raises(ConfigError, match="dotted key paths"):
        _reply_spec("{type: json, text_fields: ['reply..x']}")
    # A typo against the schema's properties names the nearest one; a non-string field is refused.
    schema = "{type: object, properties: {reply: {type: string}, n: {type: integer}}}"
    for fields, message in (("[replly]", "did you mean 'reply'"), ("[n]", "types it as integer")):
        with pytest.raises(ConfigError, match=message):
            _reply_spec(f"{{type: json, schema: {schema}, text_fields: {fields}}}")


def test_field_match_nested_empty_containers_are_leaves():
    m = field_match({"a": {}, "b": []}, {"a": {"x": 1}, "b": []})
    assert (m.true_positives, m.n_predicted, m.n_reference) == (1, 2, 2)


def test_json_schema_compliance():
    contract = {
        "type": "json",
        "schema": {
            "type": "object",
            "properties": {"priority": {"type": "integer", "minimum": 1, "maximum": 3}},
            "required": ["priority"],
            "additionalProperties": False,
        },
    }
    assert format_ok('{"priority": 2}', contract) is True
    assert format_ok('{"priority": 4}', contract) is False
    assert format_ok('{"priority": 2, "x": 1}', contract) is False
    assert format_ok('```json\n{"priority": 2}\n```', contract) is False  # strict: JSON and nothing else
    # Exact match does not need the schema to pass, format compliance does: the two are reported apart.
    s = score('{"priority": 4}', '{"priority": 4}', contract)
    assert s.correct and s.format_ok is False


def test_canonical_json_and_lenient_parser_details():
    assert canonical_json({"b": [1.0, {"y": 2, "x": 1}], "a": "é"}) == '{"a":"é","b":[1,{"x":1,"y":2}]}'
    assert parse_json_lenient("null") == (True, None)  # a valid document whose value is None
    assert parse_json_lenient("The count is 3.") == (False, None)  # scalars in prose are not answers
    assert parse_json_lenient('Bad {"a": } then good [1, 2]') == (True, [1, 2])


def test_repeated_keys_and_non_json_numbers_break_the_format():
    contract = {"type": "json", "schema": {"type": "object", "properties": {"priority": {"type": "integer"}}}}
    # Python would read the last value (2, the right answer); another reader the first: not a contract answer.
    repeated = score('{"priority": 1, "priority": 2}', '{"priority": 2}', contract)
    assert (repeated.format_ok, repeated.correct, repeated.correct_lenient) == (False, False, False)
    assert format_ok('{"priority": NaN}', contract) is False
    assert format_ok('{"priority": Infinity}', contract) is False
    assert parse_json_lenient('say {"a": 1, "a": 1} or [-Infinity]') == (False, None)
    assert parse_json_strict('{"a": {"b": 1}, "c": {"b": 2}}') == (True, {"a": {"b": 1}, "c": {"b": 2}})


def test_regex_and_text_contracts():
    rx = {"type": "regex", "pattern": r"TCK-\d{5}"}
    assert score("TCK-12345", "TCK-12345", rx).correct
    s = score("Your ticket is TCK-12345.", "TCK-12345", rx)
    assert (s.correct, s.correct_lenient, s.format_ok) == (False, True, False)
    assert not score("TCK-1234", "TCK-1234", rx).correct  # the reference itself breaks the pattern
    t = score("  Hello,  World! ", "hello, world", "text")
    assert (t.correct, t.correct_lenient, t.format_ok) == (False, True, None)


# --- consistency ------------------------------------------------------------------------------------------


def test_consistency_cases():
    assert consistency(["positive", "positive", "positive"], LABEL).both
    # same answer, different format validity: consistent in answer, not in structure
    c = consistency(["positive", "Positive."], LABEL)
    assert (c.structure, c.answer) == (False, True)
    # all invalid: they agree in structure (all non-compliant) but there is no answer
    c = consistency(["hmm", "no idea"], LABEL)
    assert (c.structure, c.answer) == (True, False)
    # JSON: same keys, different values
    c = consistency(['{"a": 1, "b": [1]}', '{"b": [2, 3], "a": 5}'], JSON)
    assert (c.structure, c.answer) == (True, False)
    # JSON: different keys
    c = consistency(['{"a": 1}', '{"a": 1, "b": 2}'], JSON)
    assert (c.structure, c.answer) == (False, False)


# --- unsupported content ----------------------------------------------------------------------------------


def test_unsupported_identifiers_numbers_names():
    inp = "Hi, my order ORD-998 from Acme Store has not arrived after 12 days. Ticket tck-12345."
    assert unsupported_values("Order ORD-998 is late; see TCK-12345.", inp) == []
    assert unsupported_values("Order ORD-999 is late.", inp) == [("identifier", "ORD-999")]
    assert unsupported_values("Sorry for the 12-day wait.", inp) == []  # 12 as a number in the input
    assert unsupported_values("Refunded 1,000.50 dollars.", inp, "refund of 1000.5") == []
    assert unsupported_values("Acme Store apologizes.", inp) == []
    assert unsupported_values("John Smith from Acme Store will call.", inp) == [("name", "John Smith")]
    # A sentence-initial capital is not a name; one capitalized word alone is not a name either.
    assert unsupported_values("The Store will reply. Thanks.", inp) == []
    assert is_unsupported("Your refund of 40 dollars is on its way.", inp)


def test_unsupported_json_leaves():
    inp = "Book a table for 4 people at 7 pm tomorrow"
    ref = '{"people":"4","time":"7 pm"}'
    assert unsupported_values('{"people": 4, "time": "7 PM", "date": "tomorrow"}', inp, ref) == []
    assert unsupported_values('{"people": 5, "time": "7 pm", "name": "Bob"}', inp, ref) == [
        ("number", "5"),
        ("string", "Bob"),
    ]
    # Booleans, null and keys are never values.
    assert unsupported_values('{"confirmed": true, "note": null}', inp, ref) == []
    # A long string leaf is prose: only the values inside it are checked.
    long = json.dumps({"reply": "We have booked your table for 4 people, see you at 7 pm at Luigi Pizza."})
    assert unsupported_values(long, inp, ref) == [("name", "Luigi Pizza")]


def test_unsupported_allows_labels_and_reference():
    assert not is_unsupported("card_arrival", "where is my card?", "", allowed=["card_arrival"])
    assert extract_values("Ask for Mary Jane in Room 42B") == [("identifier", "42B"), ("name", "Mary Jane")]
    assert not is_unsupported("Ticket TCK-777", "help", reference="TCK-777")


# --- properties -------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(output=st.text(), reference=st.sampled_from(LABELS))
def test_label_lenient_never_crashes_and_strict_implies_lenient(output, reference):
    s = score(output, reference, LABEL)
    assert s.correct_lenient in (True, False)
    if s.correct:
        assert s.correct_lenient
    if s.answer_lenient is not None:
        assert s.answer_lenient in LABELS


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, noise=st.text(max_size=20), indent=st.sampled_from([None, 2]))
def test_json_scoring_properties(value, noise, indent):
    reference = json.dumps(value, sort_keys=True)
    # Any serialization of the same value is strictly correct; strict-correct implies lenient-correct.
    s = score(json.dumps(value, indent=indent), reference, JSON)
    assert s.correct and s.correct_lenient and s.fields.f1 == 1.0
    # Arbitrary text never crashes the parsers or the heuristic.
    t = score(noise, reference, JSON)
    assert not t.correct or t.correct_lenient
    unsupported_values(noise, "input", reference)
