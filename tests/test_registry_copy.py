"""`tunewise registry copy --to URL`: a SQLite registry filled by the product's own operations (datasets, runs and
model calls, keys, files and jobs through the API, aliases, a review, captured traffic, lineage) copied into a
real PostgreSQL server (tests/postgres_server.py), then read back through the same APIs on the PostgreSQL URL;
a target that holds rows is refused; a failure in the middle leaves the target without rows."""

from __future__ import annotations

import sqlite3

import pytest
from postgres_server import postgres_server

from tunewise.project import Project

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from test_registry_pg import ApiServer  # noqa: E402
from test_serve_jobs import chat_lines, supervised, upload  # noqa: E402

pg = pytest.fixture(scope="module")(postgres_server)


def _with_password(url: str) -> str:
    # The test server trusts loopback: any password is accepted, and none may be printed.
    return url.replace("tunewise@", "tunewise:s3cret@")


def _fill(project: Project) -> dict:
    """The registry of `project` (SQLite) after a little of everything; returns what the checks need."""
    from review_fixtures import eval_project

    from tunewise.lifecycle.capture import CaptureSettings, Exchange, record
    from tunewise.lifecycle.lineage import add_lineage
    from tunewise.registry import aliases
    from tunewise.registry.runs import ModelCall, RunStore
    from tunewise.review.store import ReviewStore
    from tunewise.serve.auth import create_key, revoke_key

    with project.registry() as registry:
        registry.add_dataset_version("ds-train", "train", ["train.jsonl"], 8, {"examples": 8}, "p1")
        registry.add_dataset_version("ds-more", "train", ["more.jsonl"], 4, {"examples": 4}, "p2")
    add_lineage(project, "ds-more", "ds-train", "retrain", {"added": 4})

    _, eval_run = eval_project(project.root, n=3)
    store = RunStore(project)
    store.log_calls(store.get(eval_run), [ModelCall("prompted-arm-xq", "ex-0", 0, 12, 3, 4.0)])
    trained = []
    for name in ("first", "second"):
        run = store.create("train", {"lr": 0.001}, name=name, dataset_versions=["ds-train"])
        store.finish(run, "succeeded", {"train_loss_last": 0.5}, figures={"train_loss": 0.5})
        trained.append(run.id)
    with project.registry() as registry:
        aliases.promote(registry, "support", trained[0], by="ana")
        aliases.promote(registry, "support", trained[1], by="ana")
        aliases.rollback(registry, "support", by="ben")

    reviews = ReviewStore(project)
    review = reviews.create(["prompted-arm-xq", "tuned-arm-zk"], eval_run=eval_run)
    token = reviews.join(review["id"], "ana")["token"]
    reviews.choose(review["id"], token, 0, "left")

    capture = CaptureSettings(models=("support",))
    for i in range(3):
        record(project, Exchange("support", [{"role": "user", "content": f"hello {i}"}], f"hi {i}"), capture)

    _, key = create_key(project, "team")
    revoke_key(project, create_key(project, "gone")[0]["id"])
    with ApiServer(project) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0)
        train = upload(client, chat_lines(8))
        jobs = [
            client.fine_tuning.jobs.create(
                model="tiny:random", training_file=train.id, method=supervised(n_epochs=1), suffix=f"s{i}"
            ).id
            for i in range(2)
        ]
        client.fine_tuning.jobs.cancel(jobs[0])
        seen = _through_the_api(client, jobs)
    return {"key": key, "eval_run": eval_run, "review": review["id"], "api": seen}


def _through_the_api(client, jobs: list[str]) -> dict:
    return {
        "files": [(f.id, f.bytes, f.filename) for f in client.files.list()],
        "jobs": [(j.id, j.status, j.training_file) for j in client.fine_tuning.jobs.list()],
        "events": {j: [e.message for e in client.fine_tuning.jobs.list_events(j)] for j in jobs},
    }


def _read_back(project: Project, facts: dict) -> dict:
    """What the product's APIs say about the registry of `project`, on whichever engine it is."""
    from tunewise.lifecycle.lineage import parents
    from tunewise.registry import aliases
    from tunewise.registry.runs import RunStore
    from tunewise.review.store import ReviewStore
    from tunewise.serve.auth import list_keys

    store = RunStore(project)
    with project.registry() as registry:
        versions = registry.dataset_versions()
        history = [
            (e["seq"], e["action"], e["run_id"], e["changed_by"])
            for e in aliases.history(registry, "support")
        ]
        current = aliases.current(registry, "support")["run_id"]
        traffic = [
            tuple(r)
            for r in registry.conn.execute("SELECT id, model, messages, response FROM traffic ORDER BY rowid")
        ]
    reviews = ReviewStore(project)
    return {
        "versions": versions,
        "lineage": [(p["parent"], p["relation"]) for p in parents(project, "ds-more")],
        "runs": [(r.id, r.kind, r.status, r.name, r.figures) for r in store.list()],
        "calls": store.call_totals(store.get(facts["eval_run"])),
        "keys": [(k["id"], k["name"], k["revoked_at"] is not None) for k in list_keys(project)],
        "aliases": (history, current),
        "review": (
            reviews.get(facts["review"])["n_items"],
            [c["choice"] for c in reviews.choices(facts["review"])],
        ),
        "traffic": traffic,
    }


def _sqlite_counts(path) -> dict[str, int]:
    raw = sqlite3.connect(path)
    tables = [
        r[0]
        for r in raw.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != '_migrations'"
        )
    ]
    counts = {t: raw.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    raw.close()
    return counts


def _pg_counts(url: str, tables) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as conn:
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_a_copied_registry_reads_back_the_same_through_the_apis(pg, tmp_path, run_cli):
    from tunewise.serve.auth import create_key

    project = Project(tmp_path)
    facts = _fill(project)
    counts = _sqlite_counts(project.state_dir / "registry.sqlite3")
    assert all(counts[t] > 0 for t in ("runs", "model_calls", "files", "fine_tuning_events", "model_aliases",
                                       "review_choices", "traffic", "dataset_lineage", "api_keys"))  # fmt: skip
    before = _read_back(project, facts)

    url = _with_password(pg.new_database())
    code, out, err = run_cli("registry", "copy", "--to", url, "--project", str(tmp_path))
    assert code == 0, err
    assert "s3cret" not in out + err and "postgresql://tunewise:***@" in err
    # The summary: one line per table with its rows, every table of the source.
    shown = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").replace("┃", "│").split("│")]
        if len(cells) == 2 and cells[1].replace(",", "").isdigit():
            shown[cells[0]] = int(cells[1].replace(",", ""))
    assert shown == counts
    assert _pg_counts(url, counts) == counts

    on_pg = Project(tmp_path, registry_url=url)
    assert _read_back(on_pg, facts) == before
    with ApiServer(on_pg) as server:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{server.port}/v1", api_key=facts["key"], max_retries=0
        )
        assert _through_the_api(client, list(facts["api"]["events"])) == facts["api"]
        # New rows go on after the copied ones: ids past the largest, and newest first in the listings.
        added = upload(client, chat_lines(4), name="more.jsonl")
        assert client.files.list().data[0].id == added.id
    assert create_key(on_pg, "after")[0]["id"] == counts["api_keys"] + 1


def test_a_target_with_rows_is_refused(pg, tmp_path, run_cli):
    from tunewise.registry import open_registry

    with open_registry(tmp_path / "src") as registry:
        registry.add_dataset_version("d1", "train", [], 1, {}, "p")
    url = _with_password(pg.new_database())
    with open_registry(tmp_path / "other", url) as registry:
        registry.add_dataset_version("x1", "train", [], 1, {}, "p")
        registry.add_dataset_version("x2", "train", [], 1, {}, "p")
    source = tmp_path / "src" / "registry.sqlite3"
    code, out, err = run_cli("registry", "copy", "--to", url, "--from", str(source))
    assert code == 1 and "Traceback" not in err and "s3cret" not in err
    assert "error: the registry at postgresql://tunewise:***@" in err
    assert "already holds rows (dataset_versions 2)" in err and "createdb" in err
    with open_registry(tmp_path / "other", url) as registry:
        assert sorted(d["id"] for d in registry.dataset_versions()) == ["x1", "x2"]

    code, _, err = run_cli("registry", "copy", "--to", url, "--from", str(tmp_path / "none.sqlite3"))
    assert code == 1 and f"error: no SQLite registry at {tmp_path / 'none.sqlite3'}" in err
    code, _, err = run_cli("registry", "copy", "--to", "mysql://db/x", "--from", str(source))
    assert code == 1 and "error: --to 'mysql://db/x' is not a PostgreSQL URL" in err


def test_a_failure_in_the_middle_leaves_the_target_without_rows(pg, tmp_path, run_cli):
    from tunewise.lifecycle.capture import CaptureSettings, Exchange, record
    from tunewise.registry.runs import RunStore

    project = Project(tmp_path)
    with project.registry() as registry:
        registry.add_dataset_version("d1", "train", [], 1, {}, "p")
    RunStore(project).create("train", {}, dataset_versions=["d1"])
    record(
        project, Exchange("m", [{"role": "user", "content": "hi"}], "hello"), CaptureSettings(models=("m",))
    )
    source = project.state_dir / "registry.sqlite3"
    raw = sqlite3.connect(source)
    # A NUL character: SQLite keeps it, PostgreSQL's text refuses it.
    raw.execute("UPDATE traffic SET response = 'a' || char(0) || 'b'")
    raw.commit()
    raw.close()
    counts = _sqlite_counts(source)

    url = pg.new_database()
    code, _, err = run_cli("registry", "copy", "--to", url, "--project", str(tmp_path))
    assert code == 1 and "Traceback" not in err
    assert "copied dataset_versions: 1 rows" in err and "copied runs: 1 rows" in err  # before the failure
    assert "error: copying table traffic into postgresql://tunewise@" in err and "nothing was copied" in err
    assert _pg_counts(url, counts) == dict.fromkeys(counts, 0)
