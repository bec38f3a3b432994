"""A real PostgreSQL server for the store tests, and ``db``: one fresh database per test, SQLite or PostgreSQL.

The server is a throwaway cluster per test session (``initdb`` + ``pg_ctl`` on a loopback
port in a temporary folder, found with ``pg_config --bindir``). ``initdb`` refuses to run as
root, so as root the server runs as the ``postgres`` user. Where no server can start the
PostgreSQL cases skip with the reason, unless ``MIXBENCH_REQUIRE_POSTGRES=1`` (CI) makes that
a failure.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

PASSWORD = "mixbench-test"
_databases = itertools.count()


def _unavailable(reason: str) -> None:
    if os.environ.get("MIXBENCH_REQUIRE_POSTGRES"):
        pytest.fail(f"MIXBENCH_REQUIRE_POSTGRES is set but no PostgreSQL server can start: {reason}")
    pytest.skip(f"no PostgreSQL server here: {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A running server; yields the admin URL (database ``postgres``) with a password."""
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        _unavailable("pg_config is not on PATH (apt-get install postgresql)")
    bindir = Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip())
    if not (bindir / "initdb").exists():
        _unavailable(f"{bindir}/initdb is missing (apt-get install postgresql, not only libpq)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("the psycopg driver is not installed (pip install -e .[postgres])")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="mixbench-pg-"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no postgres user for initdb")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    pwfile = folder / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if as_user:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    try:
        subprocess.run(
            [
                *as_user,
                bindir / "initdb",
                "-D",
                data,
                "-U",
                "mixbench",
                "-A",
                "scram-sha-256",
                f"--pwfile={pwfile}",
                "-N",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        subprocess.run(
            [*as_user, bindir / "pg_ctl", "-D", data, "-o", options, "-l", folder / "log", "-w", "start"],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        _unavailable(f"{Path(exc.cmd[len(as_user)]).name} failed: {(exc.stderr or exc.stdout).strip()[-300:]}")
    try:
        yield f"postgresql+psycopg://mixbench:{PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_postgres_database(admin_url: str) -> str:
    """A new, empty database on the server; returns its URL."""
    import psycopg

    name = f"t{os.getpid()}_{next(_databases)}"
    with psycopg.connect(admin_url.replace("postgresql+psycopg", "postgresql"), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def postgres_db(postgres_server) -> str:
    """The URL of a new, empty database on the test server."""
    return fresh_postgres_database(postgres_server)


@pytest.fixture(params=["sqlite", "postgresql"])
def new_db(request, tmp_path) -> Callable[[], str]:
    """``new_db()`` gives the URL of a new, empty store database each call: SQLite files, or databases on the server."""
    if request.param == "sqlite":
        files = itertools.count()
        return lambda: f"sqlite:///{tmp_path / f'store{next(files)}.db'}"
    server = request.getfixturevalue("postgres_server")
    return lambda: fresh_postgres_database(server)


@pytest.fixture
def db(new_db) -> str:
    """The URL of a new, empty store database (the test runs once on SQLite, once on PostgreSQL)."""
    return new_db()
