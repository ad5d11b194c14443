"""A real, throwaway PostgreSQL server for the tests, started and stopped by pytest fixtures.

Storage code that only ever met SQLite hides bugs that a database server shows: password URLs, lost connections, a
restart in the middle of a study. So the tests run a private server: ``initdb`` into a temporary directory, listen
on 127.0.0.1 at a free port, and delete everything at the end of the session, also when tests fail. Nothing touches
the machine's own cluster. Startup takes well under two seconds.

Enable it in ``tests/conftest.py`` (or at the top of one test module)::

    pytest_plugins = ["tests.postgres"]

    def test_study_persists(postgres_url):  # a fresh, empty database for this test
        storage = optuna.storages.RDBStorage(postgres_url)
        ...

    def test_outage(postgres_server, postgres_url):
        postgres_server.stop()   # fast shutdown: every connection drops, new ones are refused
        postgres_server.start()  # same port, same data

The server binaries are looked up in ``$SWEEPLIGHT_PG_BINDIR``, on ``PATH``, then under ``/usr/lib/postgresql/*/bin``
(Debian/Ubuntu) and ``/usr/pgsql-*/bin`` (RHEL). Missing binaries fail the tests rather than skip them: CI must run
them. PostgreSQL refuses to run as root, so under root the server runs as the ``postgres`` OS user via ``runuser``.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

BINDIR_ENV = "SWEEPLIGHT_PG_BINDIR"
INSTALL_HINT = (
    "install the server with `apt-get install postgresql-15` (Debian/Ubuntu; any version >= 13 works), "
    f"or set {BINDIR_ENV} to the directory that holds initdb and pg_ctl"
)
SUPERUSER = "postgres"  # reached only through the Unix socket, where local auth is 'trust'
OS_USER = "postgres"  # the account that runs the server when the tests run as root
START_TIMEOUT_S = 30
TMPDIR_ENV = "SWEEPLIGHT_PG_TMPDIR"  # where the server's directory goes; see _tmp_root()
_PREFIX = "sweeplight-pg-"
_SHM_MIN_FREE = 2 << 30  # Docker's default /dev/shm is 64 MiB: too small for a cluster (40 MiB) and its databases
_SOCKET_PATH_MAX = 107  # sun_path in struct sockaddr_un, terminating NUL excluded
_MAX_IDENTIFIER_BYTES = 63  # longer names are silently truncated by PostgreSQL, and the URL would not match


class PostgresServerError(RuntimeError):
    """The test server could not be set up, started or stopped; the message ends with the server log's tail."""


class PostgresServer:
    """A private PostgreSQL server in a temporary directory, listening on ``host:port``.

    ``user``/``password`` own ``dbname``; ``url`` is the SQLAlchemy URL with the password percent-encoded (it holds
    '@' and '/' on purpose). ``new_database(name)`` makes another database owned by ``user`` and returns its URL.
    """

    host = "127.0.0.1"
    user = "sweeplight"
    password = "s3cret-P@ss/word"
    dbname = "sweeplight_test"

    def __init__(self, *, bindir: Path, base: Path) -> None:
        self.bindir = bindir
        self.base = base  # holds data/, server.log and the Unix socket
        self.data_dir = base / "data"
        self.log_path = base / "server.log"
        self.port = 0
        self.start_seconds = 0.0  # initdb + first start + role and database, for the curious

    # ----------------------------------------------------------------- URLs

    def url_for(self, dbname: str, *, with_password: bool = True) -> str:
        """The SQLAlchemy URL of database ``dbname`` on this server, logged in as ``user``."""
        secret = f":{quote(self.password, safe='')}" if with_password else ""
        return f"postgresql+psycopg2://{quote(self.user, safe='')}{secret}@{self.host}:{self.port}/{quote(dbname)}"

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    @property
    def url_without_password(self) -> str:
        return self.url_for(self.dbname, with_password=False)

    # ----------------------------------------------------------------- lifecycle

    def initialize(self) -> None:
        """initdb, start on a free port, create ``user`` and ``dbname``."""
        began = time.monotonic()
        self._run_as_server("initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--auth-local=trust",
                            "--auth-host=scram-sha-256", "--locale=C", "--encoding=UTF8",
                            # The data directory dies with the session: skip the fsync of every file.
                            "--no-sync", "--no-instructions", what="initdb")
        for attempt in range(3):  # another process may take the free port between our probe and the bind
            self.port = _free_port(self.host)
            try:
                self._start()
                break
            except PostgresServerError:
                if attempt == 2 or "could not bind" not in self.log_tail():
                    raise
        from psycopg2 import sql

        with self._admin() as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(self.user),
                                                                         sql.Literal(self.password)))
        self.new_database(self.dbname)
        self.start_seconds = time.monotonic() - began

    @property
    def running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        return self._run_as_server("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode == 0

    def start(self) -> None:
        """Start the server again on the same port and data directory; return once it accepts connections.

        Does nothing when it is already running, so a fixture can call it to undo a test's ``stop()``.
        """
        if not self.running:
            self._start()

    def stop(self) -> None:
        """Fast shutdown, as in an outage: open connections are cut, new ones refused until ``start()``."""
        if self.running:
            self._pg_ctl_stop("fast")

    def destroy(self) -> None:
        """Stop the server (if it runs) and delete its directory; safe to call on a half-built server."""
        try:
            if self.running:
                self._pg_ctl_stop("immediate")  # the data is about to be deleted: no shutdown checkpoint
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    # ----------------------------------------------------------------- databases

    def new_database(self, name: str) -> str:
        """Create an empty database ``name`` owned by ``user``; return its URL."""
        if len(name.encode()) > _MAX_IDENTIFIER_BYTES:
            raise ValueError(f"database name {name!r} is {len(name.encode())} bytes; PostgreSQL allows at most "
                             f"{_MAX_IDENTIFIER_BYTES} and would truncate it silently. Use a shorter name.")
        from psycopg2 import sql

        with self._admin() as conn, conn.cursor() as cur:
            # PostgreSQL 15 copies the template through the WAL by default; a plain file copy (the only strategy,
            # and no keyword, before 15) takes half the time or less: 10 against 20 ms on tmpfs.
            strategy = " STRATEGY FILE_COPY" if conn.server_version >= 150000 else ""
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}" + strategy).format(sql.Identifier(name),
                                                                                  sql.Identifier(self.user)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, cutting any connection a test left open."""
        from psycopg2 import sql

        with self._admin() as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no server log at {self.log_path}: {exc})"

    # ----------------------------------------------------------------- internals

    def _start(self) -> None:
        # Everything on the command line, nothing in postgresql.conf: the server's settings are readable here.
        options = (f"-c listen_addresses={self.host} -p {self.port} -c unix_socket_directories={self.base} "
                   "-c fsync=off -c max_connections=200")
        self._run_as_server("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", options,
                            "-w", "-t", str(START_TIMEOUT_S), what=f"pg_ctl start (port {self.port})")
        self._wait_until_ready()

    def _pg_ctl_stop(self, mode: str) -> None:
        self._run_as_server("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(START_TIMEOUT_S),
                            what=f"pg_ctl stop -m {mode}")

    def _wait_until_ready(self) -> None:
        # pg_ctl -w already waited, through the socket; this checks what the tests use: TCP on host:port.
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ready = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port),
                                    "-t", "1"], env=_clean_env(), capture_output=True, check=False)
            if ready.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise PostgresServerError(f"PostgreSQL on {self.host}:{self.port} did not accept connections within "
                                          f"{START_TIMEOUT_S} s (pg_isready exit {ready.returncode}). "
                                          f"Server log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.05)

    def _admin(self) -> Any:
        """An autocommit connection as the superuser over the Unix socket (trust: no password needed)."""
        import psycopg2

        try:
            conn = psycopg2.connect(host=str(self.base), port=self.port, user=SUPERUSER, dbname="postgres",
                                    connect_timeout=5)
        except psycopg2.OperationalError as exc:
            raise PostgresServerError(f"cannot reach the test PostgreSQL server on port {self.port} (stopped? call "
                                      f"start() first): {str(exc).strip()}\nServer log:\n{self.log_tail()}") from exc
        conn.autocommit = True
        return closing(conn)

    def _run_as_server(self, program: str, *args: str, what: str = "", check: bool = True
                       ) -> subprocess.CompletedProcess[str]:
        command = [str(self.bindir / program), *args]
        if os.geteuid() == 0:  # postgres will not run as root
            command = ["runuser", "-u", OS_USER, "--", *command]
        # cwd: the server user may not be allowed into the caller's working directory (e.g. /root).
        result = subprocess.run(command, cwd=self.base, env=_clean_env(), capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=START_TIMEOUT_S + 30, check=False)
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise PostgresServerError(f"{what or program} failed (exit {result.returncode}): {output}\n"
                                      f"Server log {self.log_path}:\n{self.log_tail()}")
        return result


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and pg_isready, or None when PostgreSQL's server is not installed."""
    if os.environ.get(BINDIR_ENV):
        return Path(os.environ[BINDIR_ENV])  # checked by the caller, which names the variable in its error
    candidates = [Path(found).parent for found in [shutil.which("initdb")] if found]

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", str(path)))

    # Debian and RHEL keep the server binaries off PATH, one directory per major version: newest first.
    for parent, pattern in (("/usr/lib/postgresql", "*/bin"), ("/usr", "pgsql-*/bin")):
        candidates += sorted(Path(parent).glob(pattern), key=version, reverse=True)
    return next((c for c in candidates if not _missing_programs(c)), None)


def _missing_programs(bindir: Path) -> list[str]:
    return [name for name in ("initdb", "pg_ctl", "pg_isready", "postgres") if not (bindir / name).is_file()]


def _clean_env() -> dict[str, str]:
    # PGDATA, PGPORT, PGHOST, ... from the developer's shell would redirect pg_ctl and pg_isready.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _free_port(host: str) -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tmp_root() -> str:
    """$SWEEPLIGHT_PG_TMPDIR, else /dev/shm when it is a roomy tmpfs, else /tmp.

    Not $TMPDIR or pytest's tmp_path: the Unix socket path must stay short, and every parent directory must be
    searchable by the postgres user (pytest's root-owned 0700 directories are not). On a VM disk, RAM makes initdb
    2x and CREATE DATABASE 7x faster (0.7 s and 15 ms, against 1.7 s and 110 ms), even with fsync=off.
    """
    if os.environ.get(TMPDIR_ENV):
        return os.environ[TMPDIR_ENV]
    try:
        shm = os.statvfs("/dev/shm")
        if shm.f_bavail * shm.f_frsize >= _SHM_MIN_FREE and os.stat("/dev/shm").st_mode & 0o1777 == 0o1777:
            return "/dev/shm"
    except OSError:
        pass
    return "/tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _reap_orphans(bindir: Path) -> None:
    """Stop and delete servers left by sessions that were killed (SIGTERM, SIGKILL, a CI timeout) before teardown."""
    roots = {_tmp_root(), "/dev/shm", "/tmp"}
    for owner in (owner for root in roots for owner in Path(root).glob(f"{_PREFIX}*/owner.pid")):
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            try:
                PostgresServer(bindir=bindir, base=owner.parent).destroy()
            except (PostgresServerError, OSError, subprocess.SubprocessError) as exc:  # not this session's server
                warnings.warn(f"could not remove the orphaned test server in {owner.parent}: {exc}", stacklevel=2)


def _prepare_base() -> Path:
    """A fresh directory the server's OS user owns, marked with this process's id for ``_reap_orphans``."""
    account = None
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(OS_USER)
        except KeyError:
            pytest.fail(f"the tests run as root, and PostgreSQL refuses to run as root, but there is no "
                        f"'{OS_USER}' OS user to run it as; {INSTALL_HINT} (the package creates the user), or "
                        f"`useradd --system {OS_USER}`", pytrace=False)
        if shutil.which("runuser") is None:
            pytest.fail("the tests run as root and need `runuser` (util-linux) to start PostgreSQL as "
                        f"'{OS_USER}'; install util-linux", pytrace=False)
    root = _tmp_root()
    if len(f"{root}/{_PREFIX}12345678/.s.PGSQL.65535") > _SOCKET_PATH_MAX:
        pytest.fail(f"the server's socket path under {root} would exceed {_SOCKET_PATH_MAX} bytes; set {TMPDIR_ENV} "
                    "to a shorter directory", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=root))
    (base / "owner.pid").write_text(str(os.getpid()))
    if account is not None:
        os.chown(base, account.pw_uid, account.pw_gid)
    return base


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the whole session; stopped and deleted at the end, also when tests fail."""
    bindir = find_bindir()
    if bindir is None or _missing_programs(bindir):
        where = (f"{BINDIR_ENV}={bindir} (missing: {', '.join(_missing_programs(bindir))})" if bindir
                 else f"${BINDIR_ENV}, PATH, /usr/lib/postgresql/*/bin or /usr/pgsql-*/bin")
        pytest.fail(f"PostgreSQL server binaries not found in {where}; the PostgreSQL tests need a real server: "
                    f"{INSTALL_HINT}", pytrace=False)
    try:
        import psycopg2  # noqa: F401 - fail here, once, rather than in every test
    except ImportError:
        pytest.fail('psycopg2 is not installed; the PostgreSQL tests need it: pip install -e ".[test]"',
                    pytrace=False)
    with throwaway_server(bindir) as server:
        yield server


@contextmanager
def throwaway_server(bindir: Path) -> Iterator[PostgresServer]:
    """A private server initialised in a new temporary directory, stopped and deleted on the way out (also used by
    benchmarks/trial_overhead.py, outside pytest)."""
    _reap_orphans(bindir)
    server = PostgresServer(bindir=bindir, base=_prepare_base())
    try:
        server.initialize()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database owned by ``postgres_server.user``; dropped after the test."""
    postgres_server.start()  # an earlier test may have stopped the server and failed before restarting it
    name = f"t_{uuid.uuid4().hex}"
    url = postgres_server.new_database(name)
    yield url
    postgres_server.start()
    postgres_server.drop_database(name)
