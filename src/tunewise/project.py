"""The project folder: `tunewise.yaml` beside a state folder `.tunewise/`.

my-task/
  tunewise.yaml            the task spec (stage 1 of the guide)
  data/                    your training and held-out files
  .tunewise/
    registry.sqlite3       dataset versions, runs and their model calls, pipeline stages, API keys, jobs
    datasets/<version>/    normalized, content-addressed dataset versions
    runs/<run-id>/         one self-describing directory per run (`tunewise runs` lists them)
  reports/                 HTML and JSON reports
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tunewise.errors import TunewiseError

SPEC_NAME = "tunewise.yaml"
STATE_NAME = ".tunewise"


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def spec_path(self) -> Path:
        return self.root / SPEC_NAME

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_NAME

    @property
    def datasets_dir(self) -> Path:
        return self.state_dir / "datasets"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def registry(self):
        from tunewise.registry import open_registry

        return open_registry(self.state_dir)


def find_project(start: Path | None = None) -> Project:
    """The project holding `start` (default: the working directory), found by walking up to tunewise.yaml."""
    here = (start or Path.cwd()).resolve()
    if start is not None and not here.exists():
        # A mistyped spec path must not silently resolve to some project further up.
        raise TunewiseError(f"no such file or folder: {start}", hint=f"pass the path of your {SPEC_NAME}")
    if here.is_file():
        return Project(here.parent)
    for folder in (here, *here.parents):
        if (folder / SPEC_NAME).is_file():
            return Project(folder)
    raise TunewiseError(
        f"no {SPEC_NAME} in {here} or any folder above it",
        hint="run `tunewise init` to scaffold a project, or pass --project PATH",
    )


def cache_dir() -> Path:
    """Where converted models and tokenizers are cached (shared by all projects)."""
    return Path(os.environ.get("TUNEWISE_CACHE", Path.home() / ".cache" / "tunewise"))


__all__ = ["Project", "find_project", "cache_dir", "SPEC_NAME", "STATE_NAME"]
