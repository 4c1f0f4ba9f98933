"""OpenAI's Files API for fine-tuning data: `POST /v1/files`, `GET /v1/files`, `GET/DELETE /v1/files/{id}`.

A file is stored once, under the project's state folder, and described by a registry row:

    .tunewise/files/file-<24 hex>      the uploaded bytes (streamed to a temporary name, then renamed)

An upload with purpose `fine-tune` is checked by the data stage (`tunewise data check`, OpenAI chat format)
before it is kept: any error answers 400 with every problem and its line number, and nothing is stored.
Warnings (too few examples, duplicates) do not block an upload; `tunewise data check` shows them.

A file belongs to the key that uploaded it (a job's result file to the job's key): other keys get 404 for it,
as for a file that does not exist (`serve.auth.Caller`). Messages never show the server's folders: a problem
in an upload names the file by the name the client gave it.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from tunewise.fileio import publish, temp_path
from tunewise.project import Project
from tunewise.registry.db import lock_rows
from tunewise.serve.auth import Caller, caller, require_key
from tunewise.serve.errors import APIError

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(require_key)])

# OpenAI's fine-tuning files may be up to 512 MB; the same bound keeps one upload from filling the disk.
MAX_FILE_BYTES = 512 * 2**20
CHUNK = 1 << 20
PURPOSES = (
    "fine-tune",
    "fine-tune-results",
)  # the second is written by jobs (their metrics CSV), not uploaded
SHOWN_PROBLEMS = 20  # problems listed in one 400 message; the count says how many more


def files_dir(project: Project) -> Path:
    return project.state_dir / "files"


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI file object of a registry row."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": row["bytes"],
        "created_at": row["created_at"],
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": row["status"],
        "status_details": None,
        "expires_at": None,
    }


def get_file(project: Project, file_id: str) -> dict[str, Any] | None:
    registry = project.registry()
    try:
        row = registry.conn.execute("SELECT * FROM files WHERE id = ?", (file_id,)).fetchone()
        return dict(row) if row is not None else None
    finally:
        registry.close()


def require_file(
    project: Project, file_id: str, param: str = "file_id", who: Caller | None = None
) -> dict[str, Any]:
    """The file's row; 404 when it does not exist, or `who` (None: no check) may not see it."""
    row = get_file(project, file_id)
    if (
        row is None
        or not Path(row["path"]).is_file()
        or (who is not None and not who.sees(row["api_key_id"]))
    ):
        raise APIError(404, f"no file with id '{file_id}'", param=param, code="file_not_found")
    return row


def add_file(
    project: Project,
    path: Path,
    filename: str,
    purpose: str,
    file_id: str | None = None,
    api_key_id: int | None = None,
) -> dict:
    """Record a file already in place under `files_dir(project)`, owned by key `api_key_id` (None: the
    operator); returns its registry row."""
    row = {
        "id": file_id or path.name,
        "filename": filename,
        "purpose": purpose,
        "bytes": path.stat().st_size,
        "created_at": int(time.time()),
        "status": "processed",
        "path": str(path),
        "api_key_id": api_key_id,
    }
    registry = project.registry()
    try:
        with registry.transaction() as conn:
            conn.execute(
                "INSERT INTO files (id, filename, purpose, bytes, created_at, status, path, api_key_id)"
                " VALUES (:id, :filename, :purpose, :bytes, :created_at, :status, :path, :api_key_id)",
                row,
            )
    finally:
        registry.close()
    return row


def check_fine_tune_file(path: Path, filename: str) -> list[str]:
    """Every error the data checker finds in a chat JSONL file, as 'line N, field: message' strings.

    Uses the same checks as `tunewise data check --format openai`; warnings are not returned.
    """
    from tunewise.data.check import CheckOptions
    from tunewise.data.validate import check_files

    report = check_files([path], opts=CheckOptions(fmt="openai", workers=1))
    lines: list[str] = []
    for group in report.problems.sorted():
        if group.severity != "error":
            continue
        # The field (e.g. messages[].role) when the problem has one; '(line)', '(file)' say nothing more.
        field = "" if group.field.startswith("(") else f", {group.field}"
        for _, line, message in group.first:
            where = f"line {line}" if line else filename
            lines.append(f"{where}{field}: {message}")
        if group.count > len(group.first):
            lines.append(f"... and {group.count - len(group.first)} more {group.code} error(s)")
    if not lines:
        lines = _trainer_problems(path)
    return [hide_paths(line, path, filename) for line in lines]


def hide_paths(message: str, path: Path, filename: str) -> str:
    """`message` with the server's path of an upload (and its temporary name, which holds a process id)
    replaced by the name the client gave the file.

    >>> hide_paths("/srv/p/.tunewise/files/.file-1.123-ab.tmp: not UTF-8", Path("/srv/p/.tunewise/files/.file-1.123-ab.tmp"), "t.jsonl")
    't.jsonl: not UTF-8'
    """
    for shown in (str(path), str(path.resolve()), path.name, str(path.parent.resolve()), str(path.parent)):
        message = message.replace(shown, filename)
    return message


def _trainer_problems(path: Path) -> list[str]:
    """What the training stage's reader refuses beyond the checker (e.g. `tool` messages, which it does not
    train): the same 'line N: message' form, so a job never fails on data its upload accepted."""
    from tunewise.errors import TunewiseError
    from tunewise.train.data import read_jsonl

    try:
        read_jsonl(path)
    except TunewiseError as exc:
        prefix = f"  - {path}:"
        return [
            "line " + line.removeprefix(prefix) if line.startswith(prefix) else line.strip()
            for line in exc.message.splitlines()[1:]
        ] or [exc.message]
    return []


def problems_message(filename: str, problems: list[str]) -> str:
    """The 400 message for a rejected upload: one problem per line, each with its line number.

    >>> print(problems_message("train.jsonl", ["line 2: invalid JSON", "line 5: no assistant message"]))
    train.jsonl is not valid fine-tuning data (fix these problems and upload again):
      line 2: invalid JSON
      line 5: no assistant message
    """
    shown = problems[:SHOWN_PROBLEMS]
    more = len(problems) - len(shown)
    text = f"{filename} is not valid fine-tuning data (fix these problems and upload again):\n"
    text += "\n".join(f"  {p}" for p in shown)
    return text + (f"\n  ... and {more} more" if more > 0 else "")


async def _receive(upload: UploadFile, tmp: Path) -> int:
    """Stream the upload into `tmp`, refusing it past MAX_FILE_BYTES; returns its size."""
    size = 0
    with open(tmp, "wb") as f:
        while chunk := await upload.read(CHUNK):
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise APIError(
                    413,
                    f"file too large: over {MAX_FILE_BYTES // 2**20} MB (the limit for fine-tuning files)",
                    param="file",
                    code="file_too_large",
                )
            f.write(chunk)
    return size


@router.post("/v1/files")
async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> dict:
    project: Project = request.app.state.project
    who = caller(request)
    if purpose != "fine-tune":
        raise APIError(
            400,
            f"purpose '{purpose}' is not supported here: this server stores fine-tuning data (purpose 'fine-tune')",
            param="purpose",
        )
    filename = Path(file.filename or "upload.jsonl").name
    folder = files_dir(project)
    folder.mkdir(parents=True, exist_ok=True)
    file_id = new_file_id()
    final = folder / file_id
    tmp = temp_path(final)
    try:
        size = await _receive(file, tmp)
        if size == 0:
            raise APIError(400, f"{filename} is empty", param="file", code="empty_file")
        # The checker is CPU-bound and the registry may wait for a lock: both run off the event loop.
        problems = await run_in_threadpool(check_fine_tune_file, tmp, filename)
        if problems:
            raise APIError(400, problems_message(filename, problems), param="file", code="invalid_file")
        publish(tmp, final)  # synced and renamed: a stored file is whole, or absent
    finally:
        tmp.unlink(missing_ok=True)
    row = await run_in_threadpool(add_file, project, final, filename, purpose, file_id, who.key_id)
    log.info("stored %s (%s, %d bytes)", file_id, filename, size)
    return file_object(row)


@router.get("/v1/files")
def list_files(
    request: Request,
    purpose: str | None = None,
    limit: int = 10000,
    order: str = "desc",
    after: str | None = None,
) -> dict:
    project: Project = request.app.state.project
    if order not in ("asc", "desc"):
        raise APIError(400, f"order must be asc or desc (got '{order}')", param="order")
    if not 1 <= limit <= 10000:
        raise APIError(400, f"limit must be in 1..10000 (got {limit})", param="limit")
    owned, owner_args = caller(request).where()
    where, args = [owned], list(owner_args)
    if purpose is not None:
        where.append("purpose = ?")
        args.append(purpose)
    cmp = "<" if order == "desc" else ">"
    if after is not None:
        # Another key's file id is no cursor: it pages like an unknown id (nothing after it).
        where.append(f"rowid {cmp} (SELECT rowid FROM files WHERE id = ? AND {owned})")
        args.extend([after, *owner_args])
    registry = project.registry()
    try:
        rows = registry.conn.execute(
            f"SELECT * FROM files WHERE {' AND '.join(where)} ORDER BY rowid {order.upper()} LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
    finally:
        registry.close()
    data = [file_object(dict(r)) for r in rows[:limit]]
    return {
        "object": "list",
        "data": data,
        "has_more": len(rows) > limit,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


@router.get("/v1/files/{file_id}")
def retrieve_file(request: Request, file_id: str) -> dict:
    return file_object(require_file(request.app.state.project, file_id, who=caller(request)))


@router.get("/v1/files/{file_id}/content")
def file_content(request: Request, file_id: str) -> Any:
    from fastapi.responses import FileResponse

    row = require_file(request.app.state.project, file_id, who=caller(request))
    media = "text/csv" if row["filename"].endswith(".csv") else "application/jsonl"
    return FileResponse(row["path"], media_type=media, filename=row["filename"])


@router.delete("/v1/files/{file_id}")
def delete_file(request: Request, file_id: str) -> dict:
    project: Project = request.app.state.project
    row = require_file(project, file_id, who=caller(request))
    registry = project.registry()
    try:
        with registry.transaction() as conn:
            # Locked, so that a job being created with it on another server waits, then finds it gone; or
            # commits first, and is then among the users below.
            conn.execute("SELECT id FROM files WHERE id = ?" + lock_rows(conn), (file_id,))
            users = conn.execute(
                "SELECT id FROM fine_tuning_jobs WHERE status IN ('validating_files', 'queued', 'running')"
                " AND (training_file = ? OR validation_file = ?)",
                (file_id, file_id),
            ).fetchall()
            if users:
                raise APIError(
                    400,
                    f"{file_id} is used by the active fine-tuning job {users[0]['id']}; "
                    "cancel the job (or let it finish) before deleting the file",
                    param="file_id",
                    code="file_in_use",
                )
            conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
    finally:
        registry.close()
    Path(row["path"]).unlink(missing_ok=True)
    return {"id": file_id, "object": "file", "deleted": True}
