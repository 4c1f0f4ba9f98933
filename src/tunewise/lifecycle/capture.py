"""The traffic store: chat completions a served model answered, kept in the registry's `traffic` table.

Capture is opt-in per model (`tunewise serve --capture MODEL`); every row is redacted before it is written
(`lifecycle.redact`, on unless the operator passes --capture-raw) and the store keeps at most
`CaptureSettings.max_rows` rows per model and none older than `max_days`.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.lifecycle.redact import Redactor, no_redaction, redact
from tunewise.project import Project


def now_micro() -> str:
    """UTC, ISO 8601 to the microsecond: rows captured within one second keep their order."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class CaptureSettings:
    """Which served models have their traffic recorded, and how long it is kept."""

    models: tuple[str, ...] = ()  # empty: capture is off
    redact: bool = True
    max_rows: int = 100_000  # per model; the oldest go first
    max_days: float | None = 90.0  # None: no age limit

    def __post_init__(self) -> None:
        if self.max_rows < 1:
            raise TunewiseError(f"capture max_rows is {self.max_rows}", hint="keep at least 1 row")
        if self.max_days is not None and self.max_days <= 0:
            raise TunewiseError(f"capture max_days is {self.max_days}", hint="a positive number of days")

    def captures(self, model: str) -> bool:
        return model in self.models

    @property
    def redactor(self) -> Redactor:
        return redact if self.redact else no_redaction


@dataclass
class Exchange:
    """One request and its answer, as the server saw them."""

    model: str
    messages: list[dict[str, Any]]
    response: str
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    created_at: str = field(default_factory=now_micro)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def record(project: Project, exchange: Exchange, settings: CaptureSettings) -> str | None:
    """Store one exchange (redacted), then apply the retention limits; returns the row id, or None when the
    model is not captured."""
    if not settings.captures(exchange.model):
        return None
    hook = settings.redactor
    masked = 0
    messages = []
    for m in exchange.messages:
        text, n = hook(_text(m.get("content")))
        masked += n
        messages.append({"role": m.get("role", "user"), "content": text})
    response, n = hook(exchange.response)
    masked += n
    row_id = "tr-" + uuid.uuid4().hex[:16]
    with project.registry() as registry:
        with registry.transaction() as conn:
            conn.execute(
                "INSERT INTO traffic (id, created_at, model, messages, response, latency_ms, prompt_tokens,"
                " completion_tokens, finish_reason, redactions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row_id,
                    exchange.created_at,
                    exchange.model,
                    json.dumps(messages, ensure_ascii=False),
                    response,
                    exchange.latency_ms,
                    exchange.prompt_tokens,
                    exchange.completion_tokens,
                    exchange.finish_reason,
                    masked,
                ),
            )
            _retain(conn, exchange.model, settings)
    return row_id


def _retain(conn: Any, model: str, settings: CaptureSettings) -> None:
    if settings.max_days is not None:
        cutoff = datetime.now(timezone.utc) - timedelta(days=settings.max_days)
        conn.execute(
            "DELETE FROM traffic WHERE model = ? AND created_at < ?",
            (model, cutoff.isoformat(timespec="microseconds")),
        )
    # The max_rows-th newest row's time; everything older goes (portable SQL: no LIMIT in DELETE).
    row = conn.execute(
        "SELECT created_at FROM traffic WHERE model = ? ORDER BY created_at DESC LIMIT 1 OFFSET ?",
        (model, settings.max_rows - 1),
    ).fetchone()
    if row is not None:
        conn.execute("DELETE FROM traffic WHERE model = ? AND created_at < ?", (model, row[0]))


def traffic(
    project: Project, *, model: str | None = None, since: str | None = None, until: str | None = None
) -> list[dict[str, Any]]:
    """Captured rows, oldest first; `since` / `until` are ISO dates or times (UTC), `until` exclusive."""
    where, args = [], []
    for clause, value in (("model = ?", model), ("created_at >= ?", since), ("created_at < ?", until)):
        if value:
            where.append(clause)
            args.append(value)
    sql = "SELECT * FROM traffic" + (" WHERE " + " AND ".join(where) if where else "")
    with project.registry() as registry:
        rows = registry.conn.execute(sql + " ORDER BY created_at, id", args).fetchall()
    out = []
    for r in rows:
        d = dict(r)
        d["messages"] = json.loads(d["messages"])
        out.append(d)
    return out


def check_date(value: str | None, flag: str) -> str | None:
    """`value` as given when it reads as an ISO date or time, else a TunewiseError naming `flag`.

    >>> check_date("2026-01-31", "--since")
    '2026-01-31'
    """
    if value is None:
        return None
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise TunewiseError(
            f"{flag} {value!r} is not a date",
            hint=f"write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM, e.g. {flag} 2026-01-31",
        ) from None
    return value
