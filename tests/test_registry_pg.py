"""The registry on a real PostgreSQL server that the test starts (tests/postgres_server.py): every migration
applies and gives the schema SQLite has; datasets, runs, keys, files and jobs round-trip through the same code;
servers starting together migrate once; and the SQL dialect rewrite on its own."""

from __future__ import annotations

import json
import re
import sqlite3
import threading

import pytest
from postgres_server import postgres_server

import tunewise.registry.db as db
from tunewise.project import Project
from tunewise.registry import Registry, open_registry
from tunewise.registry.dialect import to_postgres
from tunewise.registry.migrations import MIGRATIONS

pg = pytest.fixture(scope="module")(postgres_server)


def _columns_sqlite(conn: sqlite3.Connection) -> dict[str, set[str]]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {
        t: {r[1] for r in conn.execute(f"PRAGMA table_info({t})")} for t in tables if t != "sqlite_sequence"
    }


def _columns_pg(registry: Registry) -> dict[str, set[str]]:
    rows = registry.conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
    ).fetchall()
    out: dict[str, set[str]] = {}
    for table, column in rows:
        if column != "rowid":  # SQLite's implicit rowid, a column on PostgreSQL (registry/dialect.py)
            out.setdefault(table, set()).add(column)
    return out


def _indexes_pg(registry: Registry) -> set[str]:
    # Those made by CREATE INDEX (a primary key's or a UNIQUE constraint's has the constraint's name).
    rows = registry.conn.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
    )
    return {r[0] for r in rows}


def test_every_migration_applies_and_gives_sqlites_schema(pg, tmp_path):
    url = pg.new_database()
    registry = open_registry(tmp_path, url)
    assert registry.dialect == "postgresql"
    assert registry.applied_migrations() == [name for name, _ in MIGRATIONS]
    assert registry.migrate() == []
    on_pg, pg_indexes = _columns_pg(registry), _indexes_pg(registry)
    registry.close()
    assert open_registry(tmp_path, url).migrate() == []  # a second open applies nothing
    assert not (tmp_path / "registry.sqlite3").exists()  # nothing written to the embedded file

    open_registry(tmp_path).close()
    raw = sqlite3.connect(tmp_path / "registry.sqlite3")
    on_sqlite = _columns_sqlite(raw)
    sqlite_indexes = {
        r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
    }
    assert on_pg == on_sqlite
    assert "fine_tuning_jobs" in on_pg and {"worker", "heartbeat_at"} <= on_pg["fine_tuning_jobs"]
    assert pg_indexes == sqlite_indexes


def test_run_store_migration_gives_the_same_figures_on_both(pg, tmp_path):
    """007_run_store computes runs' figures with SQLite's JSON functions; PostgreSQL runs its equivalent. Both,
    given the same rows of the schema before it, record the same runs."""
    before = [n for n, _ in MIGRATIONS if n < "007"]
    summary = {
        "arms": [{"name": "base", "accuracy": {"value": 0.5}}, {"name": "tuned", "accuracy": {"value": 0.75}}]
    }
    result = {"steps": 12, "train_loss_last": 0.25, "eval_after": {"eval_loss": 0.5}, "wall_s": 3.5}
    rows = [
        ("train-1", "train", "succeeded", "2025-01-01T00:00:00", "ds1", json.dumps(result)),
        ("eval-1", "eval", "succeeded", "2025-01-01T00:01:00", None, "{}"),
        ("eval-2", "eval", "failed", "2025-01-01T00:02:00", None, None),
    ]
    recorded = {}
    for name, url in (("sqlite", None), ("postgresql", pg.new_database())):
        folder = tmp_path / name
        kept = db.MIGRATIONS
        db.MIGRATIONS = [(n, sql) for n, sql in kept if n in before]  # the registry as it was before 007
        try:
            registry = open_registry(folder, url)
        finally:
            db.MIGRATIONS = kept
        with registry.transaction() as conn:
            conn.execute("INSERT INTO dataset_versions VALUES ('ds1', 'train', 't', '[]', 3, '{}', 'p')")
            for id, kind, status, created, version, res in rows:
                conn.execute(
                    "INSERT INTO runs (id, kind, status, created_at, dataset_version, config, result, path)"
                    " VALUES (?, ?, ?, ?, ?, '{}', ?, ?)",
                    (id, kind, status, created, version, res, f"/runs/{id}"),
                )
            conn.execute(
                "INSERT INTO evaluations VALUES ('eval-1', 'ds1', '[\"base\", \"tuned\"]', ?)",
                (json.dumps(summary),),
            )
            conn.execute(
                "INSERT INTO model_calls (run_id, arm, example_id, sample, created_at) VALUES ('eval-1', 'base',"
                " 'e1', 0, 't')"
            )
        assert registry.migrate()[0] == "007_run_store"
        recorded[name] = {
            r["id"]: (json.loads(r["figures"]), json.loads(r["dataset_versions"]))
            for r in registry.conn.execute("SELECT * FROM runs").fetchall()
        }
        # The rebuilt model_calls table goes on numbering after the row it kept.
        with registry.transaction() as conn:
            conn.execute(
                "INSERT INTO model_calls (run_id, arm, example_id, sample, created_at) VALUES ('eval-1', 'tuned',"
                " 'e1', 0, 't')"
            )
        ids = [r[0] for r in registry.conn.execute("SELECT id FROM model_calls ORDER BY id").fetchall()]
        assert ids == [1, 2], name
        registry.close()
    assert recorded["postgresql"] == recorded["sqlite"]
    assert recorded["sqlite"] == {
        "train-1": ({"steps": 12, "train_loss": 0.25, "validation_loss": 0.5, "seconds": 3.5}, ["ds1"]),
        "eval-1": ({"accuracy": {"base": 0.5, "tuned": 0.75}}, []),
        "eval-2": ({}, []),
    }


def test_servers_starting_together_migrate_once(pg, tmp_path):
    url = pg.new_database()
    applied: list[list[str]] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            registry = open_registry(tmp_path, url)
            applied.append(registry.applied_migrations())
            registry.close()
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert applied == [[n for n, _ in MIGRATIONS]] * 4
    registry = open_registry(tmp_path, url)
    count = registry.conn.execute("SELECT count(*) FROM _migrations").fetchone()[0]
    registry.close()
    assert count == len(MIGRATIONS)


def test_datasets_and_runs_round_trip(pg, tmp_path):
    from tunewise.registry.runs import ModelCall, RunStore

    project = Project(tmp_path, registry_url=pg.new_database())
    registry = project.registry()
    assert registry.add_dataset_version("abc123", "train", ["a.jsonl"], 3, {"examples": 3}, "p")
    assert not registry.add_dataset_version("abc123", "train", ["b.jsonl"], 3, {"examples": 3}, "p")
    assert registry.add_dataset_version("abd999", "eval", ["e.jsonl"], 2, {"examples": 2}, "q")
    assert registry.dataset_version("abc")["source_paths"] == ["a.jsonl"]
    assert registry.dataset_version("ab") is None  # ambiguous
    assert sorted(d["id"] for d in registry.dataset_versions()) == ["abc123", "abd999"]
    registry.close()

    store = RunStore(project)
    first = store.create("train", {"lr": 0.001}, name="support", dataset_versions=["abc123"])
    second = store.create("eval", {"arms": ["base"]}, dataset_versions=["abc123", "abd999"])
    store.log_calls(
        second,
        [
            ModelCall("base", "e1", 0, 10, 2, 5.0),
            ModelCall("base", "e2", 0, 20, 4, 7.0),
            ModelCall("tuned", "e1", 0, 11, 3, 6.0),
        ],
    )
    totals = store.call_totals(second)
    assert totals == {
        "base": {"calls": 2, "prompt_tokens": 30, "completion_tokens": 6, "latency_ms": 6.0},
        "tuned": {"calls": 1, "prompt_tokens": 11, "completion_tokens": 3, "latency_ms": 6.0},
    }
    assert json.dumps(totals)  # plain numbers, as SQLite gives them
    done = store.finish(first, "succeeded", {"train_loss_last": 0.5}, figures={"train_loss": 0.5})
    assert done.status == "succeeded" and done.figures == {"train_loss": 0.5}
    assert json.loads((first.path / "result.json").read_text())["status"] == "succeeded"
    # Newest first; in the same second, the later recorded first (SQLite's rowid order, a column on PostgreSQL).
    assert [r.id for r in store.list()] == [second.id, first.id]
    assert [r.id for r in store.list(kind="train")] == [first.id]
    assert store.get(first.id[:-2]).id == first.id
    assert store.get(second.id).dataset_versions == ["abc123", "abd999"]
    again = store.register("train", {"lr": 0.002}, run_id=first.id, name="other")  # a resumed run
    assert (again.status, again.name, again.config) == ("running", "support", {"lr": 0.002})


def _fresh_pool(url: str):
    """This process's pool for `url` once its first connection is ready (and so, with nothing borrowed, its only
    one): which connection a borrow gets is then known."""
    from tunewise.registry import postgres

    found = postgres.pool(url)
    found.wait(30)
    assert found.get_stats()["pool_available"] == postgres.POOL_MIN == 1
    return found


def _backends(url: str) -> set[int]:
    """The server processes connected to `url`'s database, but the one asking."""
    import psycopg

    with psycopg.connect(url) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return {r[0] for r in rows}


def test_registry_opens_borrow_from_the_process_pool(pg, tmp_path):
    """Opening and closing the registry, as a worker's poll or an API request does, reuses one server
    connection; registries open at once get one each; a connection given back in the middle of a transaction
    comes out again rolled back; one dropped without close() is handed back."""
    import gc

    from tunewise.registry import postgres

    url = pg.new_database()
    pool = _fresh_pool(url)
    pids = set()
    for i in range(20):
        with open_registry(tmp_path, url) as registry:
            pids.add(registry.conn._conn.info.backend_pid)
            if i == 0:
                registry.add_dataset_version("d1", "train", [], 1, {}, "p")
    assert len(pids) == 1 and _backends(url) == pids
    assert pool.get_stats()["connections_num"] == 1  # twenty opens, one connection made

    first, second = open_registry(tmp_path, url), open_registry(tmp_path, url)
    both = {first.conn._conn.info.backend_pid, second.conn._conn.info.backend_pid}
    assert len(both) == 2 and pids < both
    second.close()
    first.close()
    first.close()  # a second close does nothing
    with pytest.raises(Exception, match="the registry connection is closed"):
        first.conn.execute("SELECT 1")

    left = open_registry(tmp_path, url)
    left.conn.execute("BEGIN")
    left.conn.execute("INSERT INTO dataset_versions VALUES ('d2', 'train', 't', '[]', 1, '{}', 'p')")
    pid = left.conn._conn.info.backend_pid
    left.close()  # inside the transaction: rolled back on the way into the pool
    again = [open_registry(tmp_path, url) for _ in range(2)]
    assert pid in {r.conn._conn.info.backend_pid for r in again}
    assert all(not r.conn.in_transaction for r in again)
    assert [d["id"] for d in again[0].dataset_versions()] == ["d1"]
    for r in again:
        r.close()

    before = pool.get_stats().get("connections_num", 0)
    dropped = [postgres.Connection(url) for _ in range(2)]
    del dropped
    gc.collect()
    for _ in range(3):  # neither connection was lost: the pool did not have to open a new one
        with open_registry(tmp_path, url), open_registry(tmp_path, url):
            pass
    assert pool.get_stats().get("connections_num", 0) == before
    assert len(_backends(url)) == 2


def test_a_server_restart_does_not_poison_the_pool(pg, tmp_path):
    """A restart closes every pooled connection while it sits idle in the pool; each fails the pool's check on
    the way out and is replaced, so even a write outside a transaction (which the connection itself does not
    retry) goes through on the first try."""
    url = pg.new_database()
    _fresh_pool(url)
    held = [open_registry(tmp_path, url) for _ in range(3)]
    before = {r.conn._conn.info.backend_pid for r in held}
    for r in held:
        r.close()
    assert len(before) == 3 and _backends(url) == before
    pg._run(
        "pg_ctl", "-D", str(pg.data), "-l", str(pg.dir / "server.log"), "-m", "fast", "-w", "restart"
    )  # fmt: skip
    after = set()
    for n in range(4):
        with open_registry(tmp_path, url) as registry:
            registry.conn.execute(
                "INSERT INTO dataset_versions VALUES (?, 'train', 't', '[]', 1, '{}', 'p')", (f"d{n}",)
            )
            after.add(registry.conn._conn.info.backend_pid)
    assert not after & before
    with open_registry(tmp_path, url) as registry:
        assert sorted(d["id"] for d in registry.dataset_versions()) == ["d0", "d1", "d2", "d3"]


def test_a_busy_pool_says_so_in_one_line(pg, tmp_path, monkeypatch):
    from tunewise.errors import TunewiseError
    from tunewise.registry import postgres

    monkeypatch.setattr(postgres, "POOL_MAX", 2)
    monkeypatch.setattr(postgres, "POOL_WAIT_S", 0.2)
    url = pg.new_database().replace("tunewise@", "tunewise:s3cret@")  # trust: any password is accepted
    held = [open_registry(tmp_path, url) for _ in range(2)]
    with pytest.raises(
        TunewiseError, match=r"no registry connection to postgresql://tunewise:\*\*\*@"
    ) as got:
        open_registry(tmp_path, url)
    assert "came free in 0.2 s: all 2 of this process's are in use" in str(got.value)
    assert "s3cret" not in str(got.value)
    held[0].close()
    open_registry(tmp_path, url).close()  # one given back: the next open gets it
    held[1].close()


class ApiServer:
    """uvicorn serving the API over `project` in a thread, without a job worker (jobs stay queued)."""

    def __init__(self, project: Project):
        import uvicorn

        from tunewise.serve.app import create_app
        from tunewise.serve.inference import ServeSettings

        app = create_app(project, settings=ServeSettings(base="tiny:random"), start_worker=False)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ApiServer:
        from test_serve_jobs import wait_for

        self.thread.start()
        wait_for(lambda: self.server.started, 30, 0.05, "the server to start")
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_keys_files_and_jobs_through_the_api(pg, tmp_path):
    """The API server on a PostgreSQL registry: keys, uploads, job creation, listing with `after`, events and
    cancelling run the same code as on SQLite, and each key sees only its own."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from test_serve_jobs import chat_lines, supervised, upload

    from tunewise.serve.auth import create_key, list_keys, revoke_key

    project = Project(tmp_path, registry_url=pg.new_database())
    row, key = create_key(project, "team")
    other = create_key(project, "other")[1]
    assert [(k["id"], k["name"]) for k in list_keys(project)] == [(1, "team"), (2, "other")] and row[
        "id"
    ] == 1
    assert "salt" not in row and "rowid" not in row
    with ApiServer(project) as server:
        base = f"http://127.0.0.1:{server.port}/v1"
        client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
        theirs = openai.OpenAI(base_url=base, api_key=other, max_retries=0)
        train = upload(client, chat_lines(8))
        assert [f.id for f in client.files.list()] == [train.id]
        assert list(theirs.files.list()) == []
        jobs = [
            client.fine_tuning.jobs.create(
                model="tiny:random", training_file=train.id, method=supervised(n_epochs=1), suffix=f"s{i}"
            )
            for i in range(3)
        ]
        listed = client.fine_tuning.jobs.list(limit=2)
        assert [j.id for j in listed.data] == [jobs[2].id, jobs[1].id] and listed.has_more
        after = client.fine_tuning.jobs.list(limit=2, after=jobs[1].id)
        assert [j.id for j in after.data] == [jobs[0].id] and not after.has_more
        assert {j.status for j in listed.data} == {"queued"}
        with pytest.raises(openai.NotFoundError):
            theirs.fine_tuning.jobs.retrieve(jobs[0].id)
        events = client.fine_tuning.jobs.list_events(jobs[0].id, limit=1)
        assert events.data[0].message == "Fine-tuning job queued" and events.has_more
        older = client.fine_tuning.jobs.list_events(jobs[0].id, after=events.data[0].id)
        assert [e.message for e in older.data] == [f"Validated training file: {train.id}"]
        assert client.fine_tuning.jobs.cancel(jobs[0].id).status == "cancelled"
        with pytest.raises(openai.BadRequestError, match="file_in_use|used by the active"):
            client.files.delete(train.id)
        revoke_key(project, "2")
        with pytest.raises(openai.AuthenticationError):
            theirs.files.list()


def test_the_dialect_rewrite():
    # Comments go (an apostrophe or '?' in one must not start a string or a parameter); strings stay as written.
    assert to_postgres("SELECT 'it''s ?' -- the job's ?\n FROM t WHERE a = ?") == (
        "SELECT 'it''s ?' \n FROM t WHERE a = %s"
    )
    assert to_postgres("SELECT x::text FROM t WHERE id = :id") == "SELECT x::text FROM t WHERE id = %(id)s"
    assert to_postgres("BEGIN IMMEDIATE") == "BEGIN"
    assert to_postgres("INSERT OR IGNORE INTO t (a) VALUES (?) RETURNING id") == (
        "INSERT INTO t (a) VALUES (%s) ON CONFLICT DO NOTHING RETURNING id"
    )
    assert to_postgres("CREATE TABLE e (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL)") == (
        "CREATE TABLE e (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, n BIGINT NOT NULL,"
        " rowid BIGINT GENERATED BY DEFAULT AS IDENTITY)"
    )
    assert to_postgres("CREATE TABLE k AS SELECT * FROM e") == "CREATE TABLE k AS SELECT * FROM e"
    assert to_postgres("ALTER TABLE t ADD COLUMN at INTEGER;  -- unix seconds") == (
        "ALTER TABLE t ADD COLUMN at BIGINT"
    )
    with pytest.raises(ValueError, match="ON CONFLICT"):
        to_postgres("INSERT OR REPLACE INTO t VALUES (?)")


def test_a_registry_that_is_not_postgres_is_refused(tmp_path, monkeypatch):
    from tunewise.errors import TunewiseError

    monkeypatch.setenv("TUNEWISE_REGISTRY", "mysql://db/x")
    with pytest.raises(TunewiseError, match="not a PostgreSQL URL"):
        Project(tmp_path).registry()
    monkeypatch.delenv("TUNEWISE_REGISTRY")
    (tmp_path / "tunewise.yaml").write_text("task: {name: t}\nregistry: postgresql://team@db.invalid/t\n")
    assert Project(tmp_path).registry_location() == "postgresql://team@db.invalid/t"
    assert Project(tmp_path, registry_url="postgresql://a@b/c").registry_location() == "postgresql://a@b/c"
    with pytest.raises(
        TunewiseError, match="cannot reach the registry at postgresql://team:\\*\\*\\*@127.0.0.1:1/t"
    ):
        Project(tmp_path, registry_url="postgresql://team:secret@127.0.0.1:1/t").registry()


def test_the_spec_checks_its_registry_key(tmp_path):
    from tunewise.errors import ConfigError
    from tunewise.spec import load_spec

    spec = tmp_path / "tunewise.yaml"
    head = "task: {name: t, target: reply with the ticket's label}\ndata: {train: train.jsonl}\n"
    spec.write_text(head + "registry: postgresql://team@db.internal/tunewise\n")
    assert load_spec(spec).registry == "postgresql://team@db.internal/tunewise"
    spec.write_text(head + "registry: sqlite:///tmp/r.db\n")
    with pytest.raises(ConfigError, match=r"line 3.*registry.*not a PostgreSQL URL"):
        load_spec(spec)


def _statements_in_the_code() -> list[tuple[str, str]]:
    """(where, SQL) of every statement the code passes to execute()/executemany() as a literal."""
    import ast
    from pathlib import Path

    import tunewise

    found = []
    for path in sorted(Path(tunewise.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("execute", "executemany")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append((f"{path.name}:{node.lineno}", node.args[0].value))
    return found


def _numbered(sql: str) -> str:
    """psycopg's placeholders as PREPARE's: `%s` and `%(name)s` -> $1, $2, ...; `%%` -> `%`.

    >>> _numbered("SELECT * FROM t WHERE a = %s AND b LIKE 'x%%' AND c = %(c)s")
    "SELECT * FROM t WHERE a = $1 AND b LIKE 'x%' AND c = $2"
    """
    numbers = iter(range(1, 1000))
    return re.sub(r"%%|%s|%\(\w+\)s", lambda m: "%" if m.group() == "%%" else f"${next(numbers)}", sql)


def test_every_statement_in_the_code_is_valid_on_postgres(pg, tmp_path):
    """PostgreSQL parses and plans each literal statement of the code, rewritten, against the migrated schema
    (PREPARE: checked, not run), so a SQLite-only function or clause in new code fails here, naming its line."""

    statements = _statements_in_the_code()
    assert len(statements) > 30  # the scan finds the code's SQL
    registry = open_registry(tmp_path, pg.new_database())
    problems = []
    for n, (where, sql) in enumerate(statements):
        if sql.split()[0].upper() not in ("SELECT", "INSERT", "UPDATE", "DELETE"):
            continue  # BEGIN, COMMIT, PRAGMA (SQLite's side only), CREATE (the migrations' test applies them)
        if "sqlite_master" in sql:
            continue  # SQLite's own catalog, read only from a SQLite file (the source of `registry copy`)
        text = _numbered(to_postgres(sql))
        try:
            with registry.transaction() as conn:
                conn._conn.execute(f"PREPARE check_{n} AS {text}")
                conn._conn.execute(f"DEALLOCATE check_{n}")
        except Exception as exc:  # noqa: BLE001 (collected, reported together below)
            problems.append(f"{where}: {str(exc).splitlines()[0]}: {sql[:100]}")
    registry.close()
    assert problems == []


def test_a_file_deleted_while_a_job_is_created_on_another_server(pg, tmp_path):
    """Two servers on one registry: deleting a file and creating a job with it lock the file's row, so either the
    deletion sees the job (and refuses) or the creation sees the file gone (and refuses); never a job whose
    file was deleted."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from test_serve_jobs import chat_lines, supervised, upload

    from tunewise.serve.auth import create_key

    project = Project(tmp_path, registry_url=pg.new_database())
    key = create_key(project, "team")[1]
    with ApiServer(project) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0)
        kept, dropped = upload(client, chat_lines(8)), upload(client, chat_lines(8))
        outcome: list = []

        def attempt(call) -> None:
            try:
                outcome.append(call())
            except openai.APIStatusError as exc:
                outcome.append(exc)

        # A job being created elsewhere holds the file (as create_job's transaction does): the deletion waits,
        # then sees the job.
        other = project.registry()
        with other.transaction() as conn:
            conn.execute("SELECT id FROM files WHERE id = ? FOR SHARE", (kept.id,))
            deleting = threading.Thread(target=attempt, args=(lambda: client.files.delete(kept.id),))
            deleting.start()
            deleting.join(1.0)
            assert deleting.is_alive()  # waiting on the lock
            conn.execute(
                "INSERT INTO fine_tuning_jobs (id, created_at, model, status, training_file, hyperparameters, seed,"
                " model_name, run_id) VALUES ('ftjob-elsewhere', 0, 'tiny:random', 'queued', ?, '{}', 0, 'm', 'r')",
                (kept.id,),
            )
        deleting.join()
        other.close()
        assert isinstance(outcome[-1], openai.BadRequestError) and "ftjob-elsewhere" in str(outcome[-1])

        # A deletion in progress elsewhere: the job's creation waits, then finds the file gone.
        other = project.registry()
        with other.transaction() as conn:
            conn.execute("SELECT id FROM files WHERE id = ? FOR UPDATE", (dropped.id,))
            creating = threading.Thread(
                target=attempt,
                args=(
                    lambda: client.fine_tuning.jobs.create(
                        model="tiny:random", training_file=dropped.id, method=supervised()
                    ),
                ),
            )
            creating.start()
            creating.join(1.0)
            assert creating.is_alive()
            conn.execute("DELETE FROM files WHERE id = ?", (dropped.id,))
        creating.join()
        other.close()
        assert isinstance(outcome[-1], openai.NotFoundError) and "it was deleted" in str(outcome[-1])
        assert [
            j.id for j in client.fine_tuning.jobs.list()
        ] == []  # ftjob-elsewhere has no owner key: not listed


def test_a_connection_the_server_closed_is_replaced(pg, tmp_path):
    """A server restart or failover closes every connection: a read or a new transaction goes on with a new
    connection; a transaction cut in the middle fails, records nothing, and the next one works."""
    import psycopg

    from tunewise.serve.auth import KeyStore, create_key

    url = pg.new_database()
    admin = psycopg.connect(url, autocommit=True)

    def cut(conn) -> None:
        # The second argument makes the call wait (up to 10 s) until the backend is gone.
        assert admin.execute(
            "SELECT pg_terminate_backend(%s, 10000)", (conn._conn.info.backend_pid,)
        ).fetchone()[0]

    registry = open_registry(tmp_path, url)
    cut(registry.conn)
    assert registry.conn.execute("SELECT count(*) FROM dataset_versions").fetchone()[0] == 0
    cut(registry.conn)
    with registry.transaction() as conn:
        conn.execute("INSERT INTO dataset_versions VALUES ('d1', 'train', 't', '[]', 1, '{}', 'p')")
    with pytest.raises(psycopg.OperationalError):
        with registry.transaction() as conn:
            conn.execute("INSERT INTO dataset_versions VALUES ('d2', 'train', 't', '[]', 1, '{}', 'p')")
            cut(registry.conn)
            conn.execute("INSERT INTO dataset_versions VALUES ('d3', 'train', 't', '[]', 1, '{}', 'p')")
    assert registry.add_dataset_version("d4", "eval", [], 1, {}, "p")
    assert sorted(d["id"] for d in registry.dataset_versions()) == ["d1", "d4"]
    registry.close()

    project = Project(tmp_path, registry_url=url)
    key = create_key(project, "team")[1]
    keys = KeyStore(tmp_path / "registry.sqlite3", url)
    assert keys.verify(key)["name"] == "team"
    cut(keys._conn)
    assert keys.verify(key)["name"] == "team"  # the server's next request after a restart is served
    keys.close()
    admin.close()
