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

MIGRATIONS.append(
    (
        "005_api_keys",
        """
        CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,           -- the key's first characters, shown in `tunewise keys list`
            salt TEXT NOT NULL,             -- hex, 16 random bytes
            hash TEXT NOT NULL,             -- hex sha256(salt || key); the key itself is never stored
            created_at TEXT NOT NULL,
            revoked_at TEXT,
            last_used_at TEXT
        );
        CREATE INDEX api_keys_prefix ON api_keys(prefix);
        """,
    )
)

MIGRATIONS.append(
    (
        "006_fine_tuning",
        """
        CREATE TABLE files (
            id TEXT PRIMARY KEY,            -- file-<hex>, as OpenAI's Files API names them
            filename TEXT NOT NULL,         -- the name the client uploaded
            purpose TEXT NOT NULL,          -- 'fine-tune' (uploaded) or 'fine-tune-results' (a job's metrics)
            bytes INTEGER NOT NULL,
            created_at INTEGER NOT NULL,    -- unix seconds, as the API returns them
            status TEXT NOT NULL,           -- 'processed': only files that passed the data check are kept
            path TEXT NOT NULL              -- .tunewise/files/<id>
        );
        CREATE TABLE fine_tuning_jobs (
            id TEXT PRIMARY KEY,            -- ftjob-<hex>
            created_at INTEGER NOT NULL,
            model TEXT NOT NULL,            -- the base: embedded:..., tiny:random or a model folder
            status TEXT NOT NULL,           -- validating_files, queued, running, succeeded, failed, cancelled
            training_file TEXT NOT NULL,
            validation_file TEXT,
            hyperparameters TEXT NOT NULL,  -- JSON: as requested (n_epochs, batch_size, ..., 'auto' kept)
            resolved TEXT,                  -- JSON: what they became once the run started
            suffix TEXT,
            seed INTEGER NOT NULL,
            model_name TEXT NOT NULL,       -- the ft: name the job's model gets when it succeeds
            fine_tuned_model TEXT,
            finished_at INTEGER,
            estimated_finish INTEGER,
            error TEXT,                     -- JSON: {code, message, param} when failed
            trained_tokens INTEGER,
            result_files TEXT,              -- JSON list of file ids
            metadata TEXT,                  -- JSON: the client's key-value pairs
            run_id TEXT,                    -- the training run directory under .tunewise/runs
            owner TEXT,                     -- 'pid:start-time' of the process running it (see serve/worker.py)
            attempts INTEGER NOT NULL DEFAULT 0  -- process starts: 1 plus the number of resumes
        );
        CREATE INDEX fine_tuning_jobs_status ON fine_tuning_jobs(status);
        CREATE TABLE fine_tuning_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES fine_tuning_jobs(id),
            created_at INTEGER NOT NULL,
            level TEXT NOT NULL,            -- info, warn, error
            message TEXT NOT NULL,
            type TEXT NOT NULL,             -- message or metrics
            data TEXT                       -- JSON
        );
        CREATE INDEX fine_tuning_events_job ON fine_tuning_events(job_id, id);
        CREATE TABLE fine_tuning_checkpoints (
            id TEXT PRIMARY KEY,            -- ftckpt-<hex>
            job_id TEXT NOT NULL REFERENCES fine_tuning_jobs(id),
            created_at INTEGER NOT NULL,
            step_number INTEGER NOT NULL,
            metrics TEXT NOT NULL,          -- JSON: step, train_loss, valid_loss, ...
            fine_tuned_model_checkpoint TEXT NOT NULL,
            path TEXT NOT NULL,             -- the checkpoint folder in the run directory
            UNIQUE (job_id, step_number)
        );
        """,
    )
)

# The run store (registry/runs.py) records every kind of run in `runs`: several dataset versions per run (a
# pipeline reads a training and a held-out version), a display name and the key figures `tunewise runs` shows.
# `evaluations` held a copy of each evaluation's summary.json that nothing read; its per-arm accuracies become
# the eval runs' figures before it is dropped. SQLite cannot drop a column that is a foreign key, so `runs` is
# rebuilt; `model_calls` refers to it and is rebuilt around it (copied aside, then back).
MIGRATIONS.append(
    (
        "007_run_store",
        """
        CREATE TABLE runs_new (
            id TEXT PRIMARY KEY,            -- <kind>-<utc time>-<hex>, or the fine-tuning job's id
            kind TEXT NOT NULL,             -- 'train', 'eval', 'pipeline', 'job'
            name TEXT,                      -- a label: the task's name, the job's model name
            status TEXT NOT NULL,           -- 'running', 'succeeded', 'failed', 'cancelled'
            created_at TEXT NOT NULL,
            finished_at TEXT,
            dataset_versions TEXT NOT NULL DEFAULT '[]',  -- JSON list of dataset version ids it read
            config TEXT NOT NULL,           -- JSON: the resolved config
            result TEXT,                    -- JSON: the run's result.json
            figures TEXT NOT NULL DEFAULT '{}',  -- JSON: key figures (losses, accuracies, the verdict)
            path TEXT NOT NULL              -- the run directory
        );
        INSERT INTO runs_new
            SELECT id, kind, NULL, status, created_at, finished_at,
                   CASE WHEN dataset_version IS NULL THEN '[]' ELSE json_array(dataset_version) END,
                   config, result,
                   CASE
                       WHEN kind = 'train' AND result IS NOT NULL THEN json_object(
                           'steps', json_extract(result, '$.steps'),
                           'train_loss', json_extract(result, '$.train_loss_last'),
                           'validation_loss', json_extract(result, '$.eval_after.eval_loss'),
                           'seconds', json_extract(result, '$.wall_s'))
                       WHEN kind = 'eval' THEN coalesce(
                           (SELECT json_object('accuracy', json_group_object(
                                       json_extract(arm.value, '$.name'),
                                       json_extract(arm.value, '$.accuracy.value')))
                            FROM evaluations AS e, json_each(e.summary, '$.arms') AS arm
                            WHERE e.run_id = runs.id
                            HAVING count(*) > 0),
                           '{}')
                       ELSE '{}'
                   END,
                   path
            FROM runs;
        CREATE TABLE model_calls_kept AS SELECT * FROM model_calls;
        DROP TABLE model_calls;
        DROP TABLE evaluations;
        DROP TABLE runs;
        ALTER TABLE runs_new RENAME TO runs;
        CREATE INDEX runs_kind ON runs(kind, created_at);
        CREATE INDEX runs_status ON runs(status, created_at);
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
        INSERT INTO model_calls SELECT * FROM model_calls_kept;
        DROP TABLE model_calls_kept;
        CREATE INDEX model_calls_run ON model_calls(run_id, arm);
        """,
    )
)

# Each API key owns what it makes: the files it uploads, the jobs it creates (and so the models and result files
# they make). `api_key_id` is the key's id; NULL is the operator: rows made before keys had owners, and rows made
# by a server running with --no-auth. An admin key (and a --no-auth server on loopback) sees every row; any other
# key sees only its own.
MIGRATIONS.append(
    (
        "008_key_owners",
        """
        ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE files ADD COLUMN api_key_id INTEGER REFERENCES api_keys(id);
        ALTER TABLE fine_tuning_jobs ADD COLUMN api_key_id INTEGER REFERENCES api_keys(id);
        CREATE INDEX files_api_key ON files(api_key_id);
        CREATE INDEX fine_tuning_jobs_api_key ON fine_tuning_jobs(api_key_id);
        """,
    )
)

# Model aliases: a name `serve` answers with a run (`tunewise promote RUN --as NAME`). The table is the log of
# every change, never updated in place: promotions push a run, rollbacks pop back to the one before, and the
# alias's current run is the top of that stack when the log is replayed in order (registry/aliases.py). `seq`
# orders one name's changes; the unique pair makes two writers racing for the same name collide, not interleave.
MIGRATIONS.append(
    (
        "010_model_aliases",
        """
        CREATE TABLE model_aliases (
            id TEXT PRIMARY KEY,            -- alias-<hex>
            name TEXT NOT NULL,             -- the model name clients send
            seq INTEGER NOT NULL,           -- 1, 2, ... per name
            action TEXT NOT NULL,           -- 'promote' or 'rollback'
            run_id TEXT NOT NULL,           -- the run the name answers with after this change
            previous_run_id TEXT,           -- the run it answered with before (NULL for a first promotion)
            changed_by TEXT NOT NULL,       -- who: a user name, an API key's name, 'lifecycle', ...
            changed_at TEXT NOT NULL,       -- UTC, ISO 8601
            verdict TEXT,                   -- the recommendation the run was judged by, when one was found
            forced INTEGER NOT NULL DEFAULT 0,  -- 1: promoted against a verdict that said not to fine-tune
            reason TEXT,                    -- why (required with forced)
            UNIQUE (name, seq)
        );
        CREATE INDEX model_aliases_name ON model_aliases(name, seq);
        """,
    )
)
