"""A real PostgreSQL server for the registry's tests, started in a temporary folder on a free loopback port.

The server binaries come from the system (Debian's `postgresql` package: /usr/lib/postgresql/<version>/bin, or
on PATH). initdb refuses to run as root: as root the server runs as the `postgres` system user (runuser), which
owns its data folder. Where no server can be started the tests that need one are skipped, with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: PATH's (links resolved), else the newest Debian one."""
    found = shutil.which("initdb")
    folders = [Path(found).resolve().parent] if found else []
    folders += sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")), reverse=True)
    for folder in folders:
        if all((folder / b).exists() for b in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        bin_dir = _binaries()
        if bin_dir is None:
            pytest.skip(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres): install the postgresql package"
            )
        try:
            import psycopg  # noqa: F401
        except ImportError:
            pytest.skip("psycopg is not installed (pip install 'tunewise[postgres]')")
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip(
                    "running as root, and initdb refuses root; no `postgres` user to run the server as"
                )
            if shutil.which("runuser") is None:
                pytest.skip("running as root, and initdb refuses root; no runuser to start it as `postgres`")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="tunewise-pg-"))
        if self.prefix:
            shutil.chown(self.dir, "postgres")
        self.port = _free_port()
        self.data = self.dir / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "tunewise", "-E", "UTF8", "--no-sync")
        # -F: no fsync (a test database); the unix socket in the temporary folder, TCP on loopback only.
        options = f"-F -k {self.dir} -h 127.0.0.1 -p {self.port}"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-o", options, "start"
        )

    def _run(self, binary: str, *args: str) -> None:
        done = subprocess.run(
            [*self.prefix, str(self.bin / binary), *args], capture_output=True, text=True, cwd=self.dir
        )
        if done.returncode != 0:
            log = self.dir / "server.log"
            tail = log.read_text()[-2000:] if log.is_file() else ""
            shutil.rmtree(self.dir, ignore_errors=True)
            pytest.skip(
                f"could not start PostgreSQL ({binary} exited {done.returncode}): {done.stderr}{tail}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://tunewise@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on the server; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            cwd=self.dir,
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def postgres_server() -> Iterator[PostgresServer]:
    """The body of a module-scoped fixture: one server for the module, stopped and removed after it."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.stop()
