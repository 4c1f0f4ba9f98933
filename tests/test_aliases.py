"""Model aliases: promotion, rollback as a stack, who and when recorded, refusal of a run the verdict judged
against unless forced with a reason, and the migration's SQL kept to what PostgreSQL also runs."""

from __future__ import annotations

import json
import re

import pytest

from tunewise.errors import TunewiseError
from tunewise.project import Project
from tunewise.registry import aliases
from tunewise.registry.migrations import MIGRATIONS
from tunewise.registry.runs import RunStore


@pytest.fixture
def project(tmp_path):
    return Project(tmp_path)


def finished_run(project, kind="train", status="succeeded") -> str:
    store = RunStore(project)
    run = store.create(kind, {"base": "tiny:random"})
    store.finish(run, status, {"status": status})
    return run.id


def record_stage(project, stage, started_at, output):
    registry = project.registry()
    try:
        with registry.transaction() as conn:
            conn.execute(
                "INSERT INTO pipeline_stages (stage, key, status, started_at, finished_at, seconds, output)"
                " VALUES (?, ?, 'succeeded', ?, ?, 1.0, ?)",
                (stage, f"{stage}-{started_at}", started_at, started_at, json.dumps(output)),
            )
    finally:
        registry.close()


def test_promote_then_rollback_walks_back_the_stack_and_records_who_and_when(project):
    a, b, c = (finished_run(project) for _ in range(3))
    registry = project.registry()
    try:
        assert aliases.current(registry, "support") is None
        first = aliases.promote(registry, "support", a, by="ana")
        assert (first["action"], first["run_id"], first["previous_run_id"], first["seq"]) == (
            "promote",
            a,
            None,
            1,
        )
        aliases.promote(registry, "support", b, by="ben")
        aliases.promote(registry, "support", c, by="ana", reason="better on the held-out set")
        now = aliases.current(registry, "support")
        assert (now["run_id"], now["previous_run_id"], now["changed_by"], now["changes"]) == (c, b, "ana", 3)

        back = aliases.rollback(registry, "support", by="cleo")
        assert (back["action"], back["run_id"], back["previous_run_id"]) == ("rollback", b, c)
        assert aliases.current(registry, "support")["run_id"] == b
        # A second rollback goes further back, not forward again to c.
        aliases.rollback(registry, "support", by="cleo")
        assert aliases.current(registry, "support")["run_id"] == a
        with pytest.raises(TunewiseError, match=rf"alias 'support' has no earlier run to return to .*{a}"):
            aliases.rollback(registry, "support", by="cleo")

        log = aliases.history(registry, "support")
        assert [(e["seq"], e["action"], e["run_id"], e["changed_by"]) for e in log] == [
            (1, "promote", a, "ana"),
            (2, "promote", b, "ben"),
            (3, "promote", c, "ana"),
            (4, "rollback", b, "cleo"),
            (5, "rollback", a, "cleo"),
        ]
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", e["changed_at"]) for e in log)
        assert log[2]["reason"] == "better on the held-out set"
    finally:
        registry.close()


def test_aliases_are_listed_by_name_and_survive_reopening(project):
    a, b = finished_run(project), finished_run(project, kind="job")
    registry = project.registry()
    aliases.promote(registry, "zeta", a, by="ana")
    aliases.promote(registry, "alpha", b, by="ana")
    registry.close()
    registry = project.registry()
    try:
        listed = aliases.list_aliases(registry)
        assert [(x["name"], x["run_id"]) for x in listed] == [("alpha", b), ("zeta", a)]
    finally:
        registry.close()


def test_rollback_of_an_unknown_alias_and_bad_names_and_runs_are_errors(project):
    ok = finished_run(project)
    failed = finished_run(project, status="failed")
    evaluation = finished_run(project, kind="eval")
    registry = project.registry()
    try:
        with pytest.raises(TunewiseError, match="no alias 'nobody'"):
            aliases.rollback(registry, "nobody", by="ana")
        with pytest.raises(TunewiseError, match="'ft:x' is not a valid model name"):
            aliases.promote(registry, "ft:x", ok, by="ana")
        with pytest.raises(TunewiseError, match=f"run {failed} failed"):
            aliases.promote(registry, "support", failed, by="ana")
        with pytest.raises(TunewiseError, match=f"run {evaluation} is a eval run"):
            aliases.promote(registry, "support", evaluation, by="ana")
        with pytest.raises(TunewiseError, match="no run 'train-nope'"):
            aliases.promote(registry, "support", "train-nope", by="ana")
        with pytest.raises(TunewiseError, match="needs who made it"):
            aliases.promote(registry, "support", ok, by="")
        assert aliases.history(registry, "support") == []
    finally:
        registry.close()


def test_a_run_the_verdict_judged_against_is_refused_unless_forced_with_a_reason(project):
    judged, earlier = finished_run(project), finished_run(project)
    # The pipeline trained `earlier`, judged it, then trained `judged` and judged that one "keep prompting".
    record_stage(project, "train", "2026-12-01T10:00:00+00:00", {"run_id": earlier})
    record_stage(project, "verdict", "2026-12-01T10:20:00+00:00", {"recommendation": "not yet"})
    # The same run judged again later (new rules, say): the later verdict is in force.
    record_stage(project, "verdict", "2026-12-01T10:30:00+00:00", {"recommendation": "fine-tune"})
    record_stage(project, "train", "2026-12-02T10:00:00+00:00", {"run_id": judged})
    record_stage(project, "verdict", "2026-12-02T10:30:00+00:00", {"recommendation": "keep prompting"})
    registry = project.registry()
    try:
        assert aliases.verdict_for(registry, earlier) == "fine-tune"
        assert aliases.verdict_for(registry, judged) == "keep prompting"
        with pytest.raises(TunewiseError, match=f"run {judged} was judged 'keep prompting'") as refused:
            aliases.promote(registry, "support", judged, by="ana")
        assert "--force" in refused.value.hint
        with pytest.raises(TunewiseError, match="needs a reason"):
            aliases.promote(registry, "support", judged, by="ana", force=True)
        assert aliases.history(registry, "support") == []

        kept = aliases.promote(registry, "support", earlier, by="ana")
        assert (kept["verdict"], kept["forced"]) == ("fine-tune", False)
        forced = aliases.promote(
            registry, "support", judged, by="ana", force=True, reason="the demo needs it"
        )
        assert (forced["verdict"], forced["forced"], forced["reason"]) == (
            "keep prompting",
            True,
            "the demo needs it",
        )
        logged = aliases.history(registry, "support")[-1]
        assert (logged["forced"], logged["reason"], logged["verdict"]) == (
            True,
            "the demo needs it",
            "keep prompting",
        )
        # A caller that judged the run itself (a retraining gate) passes its verdict.
        with pytest.raises(TunewiseError, match="judged 'not yet'"):
            aliases.promote(registry, "other", earlier, by="gate", verdict="not yet")
    finally:
        registry.close()


def test_a_run_no_pipeline_judged_is_promoted_with_no_verdict(project):
    run = finished_run(project)
    registry = project.registry()
    try:
        assert aliases.verdict_for(registry, run) is None
        assert aliases.promote(registry, "support", run, by="ana")["verdict"] is None
    finally:
        registry.close()


def test_the_migration_is_portable_sql():
    sql = dict(MIGRATIONS)["010_model_aliases"]
    assert "AUTOINCREMENT" not in sql.upper()
    types = set(re.findall(r"^\s+[a-z_]+ ([A-Z]+)", sql, flags=re.M))
    assert types <= {"TEXT", "INTEGER", "REAL"}, types
    assert not re.search(r"json_|datetime\(|strftime", sql)
