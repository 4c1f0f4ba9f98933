"""Keys kept apart, and nothing of the server's file system shown: two keys (and an admin key) through the official
`openai` client on a real loopback server. A key sees only the files, jobs and models made with it; anything else
is a 404 worded exactly as for an id that does not exist. A job's base is a served model or one the operator
allows, compared as text, so a client cannot probe paths. Upload errors name the file as the client sent it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.test_serve_inference import BASE, CHAT, client, running  # noqa: E402
from tests.test_serve_jobs import chat_lines, upload  # noqa: E402
from tunewise.project import Project  # noqa: E402
from tunewise.serve.inference import ServeSettings  # noqa: E402


def model_folder(path) -> str:
    """A folder that passes `resolve_base`'s checks (config.json and a safetensors file)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return str(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return Project(tmp_path_factory.mktemp("tenants"))


@pytest.fixture(scope="module")
def allowed_base(tmp_path_factory) -> str:
    return model_folder(tmp_path_factory.mktemp("bases") / "allowed-model")


@pytest.fixture(scope="module")
def keys(project) -> dict[str, tuple[int, str]]:
    from tunewise.serve.auth import create_key

    made = {name: create_key(project, name, admin=name == "admin") for name in ("alice", "bob", "admin")}
    return {name: (row["id"], key) for name, (row, key) in made.items()}


@pytest.fixture(scope="module")
def served(project, keys, allowed_base) -> Iterator[tuple[str, object]]:
    # No job worker: jobs stay queued, which is all these tests need.
    settings = ServeSettings(base=BASE, max_tokens_cap=8, train_bases=(allowed_base,))
    with running(project, settings) as pair:
        yield pair


@pytest.fixture(scope="module")
def apis(served, keys) -> dict[str, openai.OpenAI]:
    return {name: client(served[0], key) for name, (_, key) in keys.items()}


def not_found_message(call, *args) -> tuple[int, str, str | None]:
    """(status, message, code) of the 404 that `call(*args)` raises."""
    with pytest.raises(openai.NotFoundError) as caught:
        call(*args)
    body = caught.value.body
    return caught.value.status_code, body["message"], body["code"]


def finish_job(project: Project, job_id: str, name: str) -> None:
    """Mark a queued job succeeded with a LoRA adapter folder, as the runner would (no training needed to list
    or refuse its model)."""
    from tunewise.serve.jobs import read_registry, update_job, with_registry

    job = read_registry(project, lambda conn: dict(conn.execute("SELECT * FROM fine_tuning_jobs WHERE id = ?", (job_id,)).fetchone()))  # fmt: skip
    (project.runs_dir / job["run_id"] / "adapter").mkdir(parents=True)
    with_registry(
        project,
        lambda conn: update_job(conn, job_id, status="succeeded", fine_tuned_model=name, finished_at=1),
    )


def test_a_key_sees_only_its_own_files_jobs_and_models(apis, project, served):
    alice, bob, admin = apis["alice"], apis["bob"], apis["admin"]
    mine = upload(alice, chat_lines(6))
    job = alice.fine_tuning.jobs.create(model=BASE, training_file=mine.id, suffix="a")
    theirs = upload(bob, chat_lines(4), "bob.jsonl")

    assert [f.id for f in alice.files.list()] == [mine.id]
    assert [f.id for f in bob.files.list()] == [theirs.id]
    assert {f.id for f in admin.files.list()} >= {mine.id, theirs.id}
    assert [j.id for j in bob.fine_tuning.jobs.list()] == []
    assert job.id in [j.id for j in admin.fine_tuning.jobs.list()]
    # Another key's id as a list cursor is no cursor (it pages like an unknown id).
    assert list(bob.files.list(after=mine.id).data) == []

    # Bob gets, for Alice's file and job, the very answer an id that does not exist gets.
    ghost_file, ghost_job = "file-" + "0" * 24, "ftjob-" + "0" * 24
    for call, ghost in [
        (lambda i: bob.files.retrieve(i), ghost_file),
        (lambda i: bob.files.content(i), ghost_file),
        (lambda i: bob.files.delete(i), ghost_file),
    ]:
        status, message, code = not_found_message(call, mine.id)
        assert (status, message.replace(mine.id, ghost), code) == not_found_message(call, ghost)
    for call in [
        lambda i: bob.fine_tuning.jobs.retrieve(i),
        lambda i: bob.fine_tuning.jobs.cancel(i),
        lambda i: bob.fine_tuning.jobs.list_events(i),
        lambda i: bob.fine_tuning.jobs.checkpoints.list(i),
    ]:
        status, message, code = not_found_message(call, job.id)
        assert (status, message.replace(job.id, ghost_job), code) == not_found_message(call, ghost_job)
    # Bob cannot train on Alice's file either.
    status, message, _ = not_found_message(
        lambda: bob.fine_tuning.jobs.create(model=BASE, training_file=mine.id)
    )
    assert mine.id in message and status == 404

    assert alice.files.retrieve(mine.id).filename == "train.jsonl"  # nothing Bob did touched it
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "queued"
    assert admin.files.retrieve(theirs.id).filename == "bob.jsonl"

    # The model Alice's job makes is hers: listed and served for her (and the admin), unknown to Bob.
    name = f"ft:{BASE}:a:{job.id[6:14]}"
    finish_job(project, job.id, name)
    assert name in [m.id for m in alice.models.list()]
    assert name in [m.id for m in admin.models.list()]
    assert [m.id for m in bob.models.list()] == [BASE]
    assert alice.models.retrieve(name).id == name
    ghost_model = f"ft:{BASE}:a:00000000"
    for call in (
        lambda m: bob.models.retrieve(m),
        lambda m: bob.chat.completions.create(model=m, messages=CHAT),
    ):
        status, message, code = not_found_message(call, name)
        assert (status, message.replace(name, ghost_model), code) == not_found_message(call, ghost_model)

    # Admin may delete Bob's file; Bob then no longer has it.
    assert admin.files.delete(theirs.id).deleted
    assert list(bob.files.list()) == []


def test_rows_made_before_keys_owned_them_belong_to_the_operator(tmp_path):
    """A registry from before owners (migrations up to 007) with a stored file: after the upgrade only an admin
    key sees it."""
    from tunewise.registry import db
    from tunewise.registry.migrations import MIGRATIONS
    from tunewise.serve.auth import create_key

    project = Project(tmp_path)
    old = [m for m in MIGRATIONS if m[0] < "008"]
    db.MIGRATIONS, saved = old, db.MIGRATIONS
    try:
        registry = project.registry()
        stored = project.state_dir / "files" / "file-old"
        stored.parent.mkdir(parents=True)
        stored.write_text(chat_lines(2))
        with registry.transaction() as conn:
            conn.execute(
                "INSERT INTO files VALUES ('file-old', 'old.jsonl', 'fine-tune', 10, 1, 'processed', ?)",
                (str(stored),),
            )
        registry.close()
    finally:
        db.MIGRATIONS = saved
    user, admin = create_key(project, "user")[1], create_key(project, "ops", admin=True)[1]
    with running(project, ServeSettings(base=BASE)) as (url, _):
        assert list(client(url, user).files.list()) == []
        with pytest.raises(openai.NotFoundError):
            client(url, user).files.retrieve("file-old")
        assert [f.id for f in client(url, admin).files.list()] == ["file-old"]


def test_docs_and_openapi_need_a_key_unless_no_auth_on_loopback(served, keys, tmp_path):
    root = served[0].removesuffix("/v1")
    for path in ("/docs", "/openapi.json", "/redoc"):
        answer = httpx.get(root + path)
        assert answer.status_code in (401, 404), path
    assert httpx.get(root + "/openapi.json").status_code == 401
    assert httpx.get(root + "/docs").status_code == 401
    headers = {"Authorization": f"Bearer {keys['bob'][1]}"}
    spec = httpx.get(root + "/openapi.json", headers=headers)
    assert spec.status_code == 200 and "/v1/chat/completions" in spec.json()["paths"]
    assert httpx.get(root + "/docs", headers=headers).status_code == 200
    with running(Project(tmp_path), ServeSettings(base=BASE), no_auth=True) as (url, _):
        open_root = url.removesuffix("/v1")
        assert httpx.get(open_root + "/openapi.json").status_code == 200
        assert "swagger" in httpx.get(open_root + "/docs").text.lower()


def test_a_job_base_is_the_served_model_or_an_allowed_one_never_a_path(apis, allowed_base, tmp_path, project):
    alice = apis["alice"]
    train = upload(alice, chat_lines(6))
    existing = model_folder(tmp_path / "elsewhere")  # a real model folder the operator did not allow
    missing = str(tmp_path / "nowhere")
    answers = {}
    for model in (existing, missing, "~", "~/models", "/etc", "embedded:nope", "gpt-4o-mini"):
        status, message, code = not_found_message(
            lambda m=model: alice.fine_tuning.jobs.create(model=m, training_file=train.id)
        )
        answers[model] = (status, message.replace(model, "MODEL"), code)
        assert str(project.root) not in message.replace(model, "")
    assert len(set(answers.values())) == 1, answers  # exists or not, a path or a name: one answer
    status, message, code = answers[existing]
    assert (status, code) == (404, "model_not_found") and f"'{BASE}'" in message
    with pytest.raises(openai.BadRequestError, match="fine-tuned model"):
        alice.fine_tuning.jobs.create(model=f"ft:{BASE}:x:12345678", training_file=train.id)
    assert alice.fine_tuning.jobs.create(model=allowed_base, training_file=train.id).model == allowed_base
    assert alice.fine_tuning.jobs.create(model=BASE, training_file=train.id).model == BASE


def test_a_train_base_that_cannot_be_loaded_stops_the_server_at_startup(tmp_path):
    from tunewise.errors import TunewiseError
    from tunewise.serve.app import create_app

    with pytest.raises(TunewiseError, match="--train-base"):
        create_app(
            Project(tmp_path), settings=ServeSettings(base=BASE, train_bases=(str(tmp_path / "none"),))
        )
    with pytest.raises(TunewiseError, match="unknown embedded model"):
        create_app(Project(tmp_path), settings=ServeSettings(base=BASE, train_bases=("embedded:nope",)))
    embedded = "embedded:smollm2-135m-instruct"
    app = create_app(Project(tmp_path), settings=ServeSettings(base=BASE, train_bases=(embedded, BASE)))
    assert app.state.trainable == [BASE, embedded]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe\x00binary\x00", "train.jsonl"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}\n', "line 1"),
        (b"{not json\n", "line 1: invalid JSON"),
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {
                            "role": "assistant",
                            "content": "",
                            "tool_calls": [
                                {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                            ],
                        },
                        {"role": "tool", "tool_call_id": "1", "content": "x"},
                        {"role": "assistant", "content": "ok"},
                    ]
                }
            ).encode()
            + b"\n",
            "line 1",
        ),
    ],
)
def test_upload_errors_show_no_server_path_or_process_id(apis, project, content, expected):
    with pytest.raises(openai.BadRequestError) as caught:
        apis["alice"].files.create(file=("train.jsonl", content, "application/jsonl"), purpose="fine-tune")
    message = caught.value.message
    assert expected in message
    assert str(project.root) not in message and ".tmp" not in message and "file-" not in message
    assert f"{os.getpid()}" not in message


def test_a_reader_error_naming_the_stored_path_is_shown_with_the_client_filename(apis, project, monkeypatch):
    """Whatever a checker says about the stored upload (its folder, its temporary name with the server's process
    id), the client reads the name it sent."""
    import tunewise.train.data as data
    from tunewise.errors import TunewiseError

    def reader(path, *args, **kwargs):
        raise TunewiseError(f"{path} holds no examples (read by process {os.getpid()} in {path.parent})")

    monkeypatch.setattr(data, "read_jsonl", reader)
    with pytest.raises(openai.BadRequestError) as caught:
        upload(apis["alice"], chat_lines(3), "mine.jsonl")
    message = caught.value.message
    assert "mine.jsonl holds no examples" in message
    assert str(project.root) not in message and ".tmp" not in message and "file-" not in message


def test_cli_creates_admin_keys_and_lists_them(run_cli, tmp_path):
    assert run_cli("keys", "create", "--name", "user", cwd=tmp_path)[0] == 0
    code, _, err = run_cli("keys", "create", "--name", "ops", "--admin", cwd=tmp_path)
    assert code == 0 and "admin key" in err
    code, out, _ = run_cli("keys", "list", "--json", cwd=tmp_path)
    assert [(r["name"], r["admin"]) for r in json.loads(out)] == [("user", 0), ("ops", 1)]
    code, out, _ = run_cli("keys", "list", cwd=tmp_path)
    assert "admin" in out and "yes" in out


def test_a_job_error_names_its_log_inside_the_project_not_the_server_folder(tmp_path):
    """A job given up after its last start: the error the client reads points at the job's log relative to the
    project, never at where the server keeps the project."""
    from tunewise.serve.auth import create_key
    from tunewise.serve.jobs import update_job, with_registry
    from tunewise.serve.worker import MAX_ATTEMPTS, JobWorker

    project = Project(tmp_path)
    key = create_key(project, "alice")[1]
    with running(project, ServeSettings(base=BASE)) as (url, _):
        alice = client(url, key)
        job = alice.fine_tuning.jobs.create(model=BASE, training_file=upload(alice, chat_lines(4)).id)
        # As a server killed for the last time leaves it: running, its process gone (no such pid), every start used.
        with_registry(
            project,
            lambda conn: update_job(
                conn, job.id, status="running", owner=f"{2**22 + 1}:0", attempts=MAX_ATTEMPTS
            ),
        )
        assert JobWorker(project)._claim() is None
        failed = alice.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error.code == "too_many_attempts"
    assert failed.error.message.endswith(f"see .tunewise/jobs/{job.id}.log")
    assert str(project.root) not in failed.error.message
