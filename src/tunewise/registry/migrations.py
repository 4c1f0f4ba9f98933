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

MIGRATIONS.append(
    (
        "003_evaluations_and_model_calls",
        """
        CREATE TABLE evaluations (
            run_id TEXT PRIMARY KEY REFERENCES runs(id),
            dataset_version TEXT,           -- the held-out split's dataset version
            arms TEXT NOT NULL,             -- JSON list of arm names
            summary TEXT NOT NULL           -- JSON: the evaluation summary (evaluate/summary.py)
        );
        CREATE TABLE model_calls (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            arm TEXT NOT NULL,
            example_id TEXT NOT NULL,
            sample INTEGER NOT NULL,        -- 0: the scored answer; 1..n: consistency samples
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms REAL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX model_calls_run ON model_calls(run_id, arm);
        """,
    )
)

MIGRATIONS.append(
    (
        "004_pipeline_stages",
        """
        CREATE TABLE pipeline_stages (
            stage TEXT NOT NULL,
            key TEXT NOT NULL,              -- hash of the stage's inputs: data, config and code version
            status TEXT NOT NULL,           -- 'running', 'succeeded', 'failed', 'cancelled'
            started_at TEXT NOT NULL,
            finished_at TEXT,
            seconds REAL,
            output TEXT,                    -- JSON: what later stages read (paths, run ids, summaries)
            PRIMARY KEY (stage, key)
        );
        """,
    )
)
