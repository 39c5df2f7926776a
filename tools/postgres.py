"""A real PostgreSQL server for the stack, the tests and the benchmarks: `tools/postgres.py start`.

Uses the server binaries of Debian's ``postgresql`` package (``initdb``, ``pg_ctl``, ``postgres``
from ``/usr/local/bin`` or ``/usr/lib/postgresql/<major>/bin``; ``tools/system_deps.py`` installs
the package as root when it is missing). PostgreSQL refuses to run as root, so as root every
command runs as the ``postgres`` user through ``runuser`` and the data directory is owned by it.

.. code-block:: bash

    python tools/postgres.py start [--root .run/pg] [--port N]   # prints the URL; idempotent
    python tools/postgres.py url | status | stop

Layout under ``root`` (default ``.run/pg``): ``data/`` (the cluster), ``port`` (the port chosen
at first start, reused while it is free), ``postgres.log``, and the Unix socket. The server
listens on 127.0.0.1 only; authentication is ``trust`` for the ``distmon`` role on loopback,
which is what a throw-away local cluster wants and nothing else should copy.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `python tools/postgres.py ...` runs it as a script

from tools.pidfiles import live_pid  # noqa: E402

DEFAULT_ROOT = REPO / ".run" / "pg"
ROLE = "distmon"
DATABASE = "distmon"
RUN_AS = "postgres"
# Settings for throw-away clusters (tests): durability off, which is several times faster.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresError(Exception):
    """The server could not be initialised, started or stopped (the message says why)."""


def find_bin_dir() -> Path:
    """Where initdb, pg_ctl and postgres live; raises PostgresError when PostgreSQL is not installed."""
    candidates = [Path("/usr/local/bin")]
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresError("PostgreSQL server binaries not found (initdb, pg_ctl, postgres): "
                        "install Debian's postgresql package (tools/system_deps.py does it as root)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PostgresServer:
    """One local cluster under ``root``; every method is idempotent."""

    def __init__(self, root: str | Path = DEFAULT_ROOT, *, port: int | None = None, fast: bool = False):
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port_file = self.root / "port"
        self._port = port
        self.fast = fast

    # -- helpers ---------------------------------------------------------------------------

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    def _argv(self, name: str, *args: str) -> list[str]:
        argv = [str(find_bin_dir() / name), *args]
        return ["runuser", "-u", RUN_AS, "--", *argv] if self.as_root else argv

    def _run(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self._argv(name, *args), capture_output=True, text=True, cwd="/")
        if check and proc.returncode != 0:
            raise PostgresError(f"{name} {' '.join(args[:2])} failed ({proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
        return proc

    @property
    def port(self) -> int:
        if self._port is None:
            with contextlib.suppress(OSError, ValueError):
                self._port = int(self.port_file.read_text().strip())
        if self._port is None:
            self._port = free_port()
        return self._port

    def url(self, database: str = DATABASE) -> str:
        """``postgresql://distmon@127.0.0.1:<port>/<database>``."""
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    # -- lifecycle -------------------------------------------------------------------------

    def init(self) -> None:
        """Create the cluster (role ``distmon``, UTF-8, C collation) unless it exists."""
        if (self.data / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            # The postgres user must reach the root through every parent directory.
            shutil.chown(self.root, RUN_AS, RUN_AS)
            os.chmod(self.root, 0o755)
            parent = self.root.parent
            while parent != parent.parent:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
                parent = parent.parent
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", ROLE, "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def pid(self) -> int | None:
        """The postmaster's pid when it is running, else None."""
        return live_pid(self.data / "postmaster.pid")

    def start(self) -> str:
        """Init if needed, start if not running, create the ``distmon`` database; return its URL."""
        self.init()
        if self.pid() is None:
            if self._port is None and not _port_free(self.port):
                self._port = free_port()
            options = ["-p", str(self.port), "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                       "-c", "max_connections=200"]
            for setting in FAST_SETTINGS if self.fast else ():
                options += ["-c", setting]
            self._run("pg_ctl", "-D", str(self.data), "-o", " ".join(options), "-l", str(self.log),
                      "-w", "-t", "60", "start")
            self.port_file.write_text(f"{self.port}\n")
        else:
            self._port = None  # the running server's port, from the port file
        self.create_database(DATABASE)
        return self.url()

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (optionally from ``template``) unless it exists; return its URL."""
        import psycopg
        from psycopg import sql

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if template:
                    statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
                conn.execute(statement)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> bool:
        """Stop the server (fast shutdown); True when one was running."""
        if self.pid() is None:
            return False
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        return True

    def status(self) -> str:
        pid = self.pid()
        return f"up (pid {pid}) {self.url()}" if pid else "down"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status", "url"])
    parser.add_argument("--root", default=str(DEFAULT_ROOT))
    parser.add_argument("--port", type=int)
    parser.add_argument("--fast", action="store_true", help="fsync off: for throw-away clusters")
    args = parser.parse_args()
    server = PostgresServer(args.root, port=args.port, fast=args.fast)
    try:
        if args.command == "start":
            print(server.start())
        elif args.command == "stop":
            print("stopped" if server.stop() else "not running")
        elif args.command == "status":
            print(server.status())
        else:
            print(server.url())
    except PostgresError as err:
        print(f"distmon: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
