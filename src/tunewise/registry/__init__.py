"""The project's SQLite registry: dataset versions, runs and their model calls, pipeline stages, API keys and
fine-tuning jobs. Runs are created, finished and found through the run store (registry/runs.py)."""

from tunewise.registry.db import Registry, open_registry, utc_now

__all__ = ["Registry", "open_registry", "utc_now"]
