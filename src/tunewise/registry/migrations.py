"""Named, ordered schema migrations. Append only: never edit one that has shipped.

Each migration runs once, in order, inside a transaction; `_migrations` records which ran.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_dataset_versions",
        """
        CREATE TABLE dataset_versions (
            id TEXT PRIMARY KEY,            -- sha256 of the normalized examples (content address)
            name TEXT NOT NULL,             -- 'train', 'eval', or a user label
            created_at TEXT NOT NULL,
            source_paths TEXT NOT NULL,     -- JSON list of the files it was read from
            n_examples INTEGER NOT NULL,
            stats TEXT NOT NULL,            -- JSON: token counts, label distribution, ...
            path TEXT NOT NULL              -- the normalized JSONL in the state folder
        );
        """,
    ),
    (
        "002_runs",
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,             -- 'train', 'eval', 'pipeline', ...
            status TEXT NOT NULL,           -- 'running', 'succeeded', 'failed', 'cancelled'
            created_at TEXT NOT NULL,
            finished_at TEXT,
            dataset_version TEXT REFERENCES dataset_versions(id),
            config TEXT NOT NULL,           -- JSON: the resolved config
            result TEXT,                    -- JSON: the run's result.json
            path TEXT NOT NULL              -- the run directory
        );
        CREATE INDEX runs_kind ON runs(kind, created_at);
        """,
    ),
]
