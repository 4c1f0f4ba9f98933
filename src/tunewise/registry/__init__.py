"""The project's SQLite registry: dataset versions, runs, evaluations, model calls, reviews and jobs."""

from tunewise.registry.db import Registry, open_registry

__all__ = ["Registry", "open_registry"]
