"""Captured traffic: redaction, capture on and off, retention, and the export/import round trip with lineage."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from tunewise.errors import TunewiseError
from tunewise.lifecycle.capture import CaptureSettings, Exchange, record, traffic
from tunewise.lifecycle.redact import luhn_ok, redact
from tunewise.project import Project

# --- redaction ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("write to ann.lee+work@mail.example.co.uk today", "write to [EMAIL] today"),
        ("call 555-123-4567 please", "call [PHONE] please"),
        ("call (555) 123-4567", "call [PHONE]"),
        ("ring +44 20 7946 0958", "ring [PHONE]"),
        ("card 4111 1111 1111 1111 expired", "card [CARD] expired"),
        ("card 5500-0000-0000-0004", "card [CARD]"),
        ("amex 378282246310005.", "amex [CARD]."),
    ],
)
def test_redaction_masks_each_pattern(text, masked):
    assert redact(text) == (masked, 1)


@pytest.mark.parametrize(
    "text",
    [
        "my order 123456 arrived on 2024-01-15",
        "reference 4111111111111112",  # 16 digits that fail the Luhn check: not a card, too long for a phone
        "version 1.2.3, pi is 3.14159, 1,234,567 users",
        "my parcel is late, email me back @ the shop",
    ],
)
def test_redaction_keeps_other_text(text):
    assert redact(text) == (text, 0)


def test_luhn_by_hand():
    # 79927398713: the Luhn algorithm's textbook number; doubling every second digit from the right sums to 70.
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")


# --- capture ---------------------------------------------------------------------------------------------


def _exchange(model: str = "support", text: str = "hi", at: str | None = None) -> Exchange:
    ex = Exchange(
        model=model,
        messages=[{"role": "user", "content": text}],
        response="refund",
        latency_ms=12.5,
        prompt_tokens=7,
        completion_tokens=2,
        finish_reason="stop",
    )
    if at is not None:
        ex.created_at = at
    return ex


def test_capture_is_off_unless_the_model_is_named(tmp_path):
    project = Project(tmp_path)
    assert record(project, _exchange(), CaptureSettings()) is None  # default: nothing captured
    assert record(project, _exchange("other"), CaptureSettings(models=("support",))) is None
    assert traffic(project) == []
    row_id = record(project, _exchange(), CaptureSettings(models=("support",)))
    rows = traffic(project)
    assert [r["id"] for r in rows] == [row_id]
    assert rows[0]["model"] == "support"
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"], rows[0]["latency_ms"]) == (7, 2, 12.5)


def test_capture_redacts_by_default_and_raw_when_asked(tmp_path):
    project = Project(tmp_path)
    text = "I am bob@example.com, card 4111 1111 1111 1111"
    record(project, _exchange(text=text), CaptureSettings(models=("support",)))
    record(project, _exchange(text=text), CaptureSettings(models=("support",), redact=False))
    masked, raw = traffic(project)
    assert masked["messages"][0]["content"] == "I am [EMAIL], card [CARD]"
    assert masked["redactions"] == 2
    assert raw["messages"][0]["content"] == text and raw["redactions"] == 0


def test_retention_keeps_the_newest_rows_and_drops_old_ones(tmp_path):
    project = Project(tmp_path)
    settings = CaptureSettings(models=("support",), max_rows=3, max_days=30)
    now = datetime.now(timezone.utc)
    old = (now - timedelta(days=40)).isoformat(timespec="microseconds")
    # A row older than max_days goes at the next write.
    record(project, _exchange(text="ancient", at=old), CaptureSettings(models=("support",), max_days=None))
    for i in range(5):
        at = (now - timedelta(minutes=10 - i)).isoformat(timespec="microseconds")
        record(project, _exchange(text=f"q{i}", at=at), settings)
    assert [r["messages"][0]["content"] for r in traffic(project)] == ["q2", "q3", "q4"]
    # Another model's rows are not counted against this one's limit.
    record(project, _exchange("other", "x"), CaptureSettings(models=("other",), max_rows=1))
    assert len(traffic(project, model="support")) == 3


def test_since_filters_and_bad_dates_name_the_flag(tmp_path):
    from tunewise.lifecycle.capture import check_date

    project = Project(tmp_path)
    settings = CaptureSettings(models=("support",), max_days=None)  # fixed dates: no age limit
    record(project, _exchange(text="early", at="2026-01-01T10:00:00.000000+00:00"), settings)
    record(project, _exchange(text="late", at="2026-03-01T10:00:00.000000+00:00"), settings)
    assert [r["messages"][0]["content"] for r in traffic(project, since="2026-02-01")] == ["late"]
    with pytest.raises(TunewiseError, match="--since 'last week' is not a date"):
        check_date("last week", "--since")


# --- export and import -------------------------------------------------------------------------------------


def test_export_import_round_trip_records_a_version_with_lineage(tmp_path):
    from tunewise.lifecycle.lineage import parents
    from tunewise.lifecycle.traffic import export_traffic, import_labelled

    project = Project(tmp_path)
    settings = CaptureSettings(models=("support",))
    for text in ("where is my refund", "my card was charged twice", "change my avatar"):
        record(project, _exchange(text=text), settings)
    out = tmp_path / "to-label.jsonl"
    assert export_traffic(project, out, model="support") == 3
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["messages"] == [
        {"role": "user", "content": "where is my refund"},
        {"role": "assistant", "content": "refund"},  # the model's answer, as a draft
    ]
    assert lines[0]["metadata"]["draft"] is True
    # A labeller corrects two drafts.
    lines[1]["messages"][-1]["content"] = "billing"
    lines[2]["messages"][-1]["content"] = "other"
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(x) + "\n" for x in lines))

    got = import_labelled(project, labelled)
    assert (got.examples, got.matched, got.changed, got.created) == (3, 3, 2, True)
    stored = [json.loads(x) for x in got.path.read_text().splitlines()]
    assert [s["messages"][-1]["content"] for s in stored] == ["refund", "billing", "other"]
    (edge,) = parents(project, got.version)
    assert edge["relation"] == "import" and edge["parent"].startswith("file:")
    assert edge["detail"]["traffic_ids"] == [x["metadata"]["traffic_id"] for x in lines]
    # The same file again is the same version, not a new one.
    assert import_labelled(project, labelled).created is False


def test_export_without_traffic_says_how_to_capture(tmp_path):
    from tunewise.lifecycle.traffic import export_traffic

    with pytest.raises(TunewiseError) as exc:
        export_traffic(Project(tmp_path), tmp_path / "x.jsonl")
    assert "--capture" in str(exc.value)


def test_cli_errors_are_one_line_naming_what_was_typed(tmp_path, run_cli):
    from tests.conftest import tiny_label_project

    project = tiny_label_project(tmp_path / "p", examples=8, samples=1)
    code, out, err = run_cli(
        "traffic", "export", "--to", tmp_path / "x.jsonl", "--since", "yesterday", cwd=project.root
    )
    assert code == 1 and out == ""
    assert "error: --since 'yesterday' is not a date" in err and "Traceback" not in err
    code, _, err = run_cli("drift", cwd=project.root)
    assert code == 1 and "no model to compare with" in err
    for command in (["traffic", "export"], ["traffic", "import"], ["drift"], ["retrain"], ["lineage"]):
        code, out, _ = run_cli(*command, "--help")
        assert code == 0 and "Usage" in out
