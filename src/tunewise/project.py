"""The project folder: `tunewise.yaml` beside a state folder `.tunewise/`.

my-task/
  tunewise.yaml            the task spec (stage 1 of the guide)
  data/                    your training and held-out files
  .tunewise/
    registry.sqlite3       dataset versions, runs and their model calls, pipeline stages, API keys, jobs
                           (or a PostgreSQL server a team shares: `registry: postgresql://...`)
    datasets/<version>/    normalized, content-addressed dataset versions
    runs/<run-id>/         one self-describing directory per run (`tunewise runs` lists them)
  reports/                 HTML and JSON reports
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from tunewise.errors import TunewiseError

SPEC_NAME = "tunewise.yaml"
STATE_NAME = ".tunewise"


REGISTRY_ENV = "TUNEWISE_REGISTRY"


@dataclass(frozen=True)
class Project:
    root: Path
    # --registry: a PostgreSQL URL that overrides the environment and the spec. Keyword-only, so that a
    # subclass's own fields stay where they were in positional construction.
    registry_url: str | None = field(default=None, kw_only=True)

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

    def registry_location(self) -> str | None:
        """The PostgreSQL URL of the project's registry, or None for the embedded SQLite file: --registry, else
        the TUNEWISE_REGISTRY environment variable, else `registry:` in tunewise.yaml."""
        url = self.registry_url or os.environ.get(REGISTRY_ENV) or _spec_registry(self.spec_path)
        from tunewise.registry.postgres import is_url

        if url and not is_url(url):
            raise TunewiseError(
                f"registry '{url}' is not a PostgreSQL URL",
                hint="write postgresql://USER@HOST:PORT/DATABASE, or leave it out for the embedded SQLite file",
            )
        return url or None

    def registry(self):
        from tunewise.registry import open_registry

        return open_registry(self.state_dir, self.registry_location())


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


def project_or_cwd(path: Path | None = None) -> Project:
    """The project at `path` as given, else the one found upward from the working directory, else the working
    directory itself: commands that need no spec (`serve`, `export`, `keys`) keep their state under
    ./.tunewise there, as `tunewise train` does."""
    if path is not None:
        return Project(path.resolve())
    try:
        return find_project()
    except TunewiseError:
        return Project(Path.cwd())


_SPEC_REGISTRY: dict[tuple[str, int, int], str | None] = {}


def _spec_registry(spec_path: Path) -> str | None:
    """`registry:` of the spec file, read without validating the rest (every registry open asks; the answer is
    kept until the file changes)."""
    try:
        stat = spec_path.stat()
    except OSError:
        return None
    key = (str(spec_path), stat.st_mtime_ns, stat.st_size)
    if key not in _SPEC_REGISTRY:
        from tunewise.spec import load_yaml_bounded

        try:
            doc = load_yaml_bounded(spec_path.read_text(encoding="utf-8"), str(spec_path))[0]
        except (OSError, UnicodeDecodeError, TunewiseError):
            doc = None  # the spec's own loader reports what is wrong with it
        value = doc.get("registry") if isinstance(doc, dict) else None
        _SPEC_REGISTRY[key] = value if isinstance(value, str) else None
    return _SPEC_REGISTRY[key]


def cache_dir() -> Path:
    """Where converted models and tokenizers are cached (shared by all projects)."""
    return Path(os.environ.get("TUNEWISE_CACHE", Path.home() / ".cache" / "tunewise"))


__all__ = ["Project", "find_project", "cache_dir", "SPEC_NAME", "STATE_NAME"]
